//! `--server-pid`: the CPU time the server's processes spent over each measured leg, read from
//! /proc (Linux), so that stacks of several processes (a server and its Redis; a Python glue
//! service, a model server and theirs) compare by CPU time per call.
//!
//! Two readings per process, both of them lower bounds: `utime + stime` of /proc/PID/stat
//! counts every thread, the exited ones too, but in whole clock ticks (10 ms); the run time of
//! /proc/PID/task/*/schedstat is in nanoseconds but only of the threads alive at the second
//! reading. A leg's CPU time is the larger of the two.

use std::collections::BTreeMap;

use serde::Serialize;

/// Linux reports /proc times in USER_HZ ticks, 100 per second on every architecture it runs
/// Ferrite on (the value is fixed by the kernel ABI, whatever the kernel's own HZ).
const NS_PER_TICK: u64 = 10_000_000;

/// One process's CPU counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub name: String,
    /// utime + stime of /proc/PID/stat, in ns (whole ticks).
    pub stat_ns: u64,
    /// Run time of each live thread (/proc/PID/task/TID/schedstat), in ns.
    pub threads_ns: BTreeMap<u32, u64>,
}

/// Parses a /proc/PID/stat line: the command name in parentheses (which may hold spaces and
/// parentheses itself), then utime and stime as the 14th and 15th fields.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_ascii_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, (utime + stime) * NS_PER_TICK))
}

impl Sample {
    /// Reads process `pid`; `None` if it is gone (or this is not Linux).
    pub fn read(pid: u32) -> Option<Sample> {
        let (name, stat_ns) = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        let mut threads_ns = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let ns = std::fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_ascii_whitespace().next()?.parse().ok());
                if let Some(ns) = ns {
                    threads_ns.insert(tid, ns);
                }
            }
        }
        Some(Sample {
            name,
            stat_ns,
            threads_ns,
        })
    }

    /// CPU time from `self` (earlier) to `later`, in ns: the larger of the two lower bounds.
    /// A thread that started in between counts whole.
    pub fn until(&self, later: &Sample) -> u64 {
        let stat = later.stat_ns.saturating_sub(self.stat_ns);
        let threads: u64 = later
            .threads_ns
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.threads_ns.get(tid).copied().unwrap_or(0)))
            .sum();
        stat.max(threads)
    }
}

/// Readings of every process given, in order.
pub fn read_all(pids: &[u32]) -> Vec<Option<Sample>> {
    pids.iter().map(|&p| Sample::read(p)).collect()
}

/// One process's CPU time over the measured legs.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub name: String,
    pub cpu_s: f64,
    /// The process was gone at the end of a leg: its time in that leg is missing.
    pub exited: bool,
}

/// The CPU time of each process between two readings of `read_all`.
pub fn between(before: &[Option<Sample>], after: &[Option<Sample>], pids: &[u32]) -> Vec<ProcessCpu> {
    pids.iter()
        .enumerate()
        .map(|(i, &pid)| match (&before[i], &after[i]) {
            (Some(b), Some(a)) => ProcessCpu {
                pid,
                name: a.name.clone(),
                cpu_s: b.until(a) as f64 / 1e9,
                exited: false,
            },
            (b, _) => ProcessCpu {
                pid,
                name: b.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
                cpu_s: 0.0,
                exited: true,
            },
        })
        .collect()
}

/// Adds the CPU time of a later leg of the same processes.
pub fn add(into: &mut [ProcessCpu], other: &[ProcessCpu]) {
    for (a, b) in into.iter_mut().zip(other) {
        a.cpu_s += b.cpu_s;
        a.exited |= b.exited;
        if a.name.is_empty() {
            a.name.clone_from(&b.name);
        }
    }
}

/// The server's CPU time over a run, per call.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCpu {
    pub processes: Vec<ProcessCpu>,
    pub cpu_s: f64,
    /// CPU time per answered call (ok or error), in µs.
    pub us_per_call: f64,
    /// Cores kept busy on average over the run.
    pub cores: f64,
}

impl ServerCpu {
    pub fn new(processes: Vec<ProcessCpu>, calls: u64, elapsed_s: f64) -> ServerCpu {
        let cpu_s: f64 = processes.iter().map(|p| p.cpu_s).sum();
        ServerCpu {
            us_per_call: 1e6 * cpu_s / calls.max(1) as f64,
            cores: cpu_s / elapsed_s.max(1e-9),
            cpu_s,
            processes,
        }
    }

    /// `per` divides the CPU time per call further (transactions per call), named `unit`.
    pub fn to_text(&self, calls: u64, per: Option<(usize, &str)>) -> String {
        let each = |s: f64| 1e6 * s / calls.max(1) as f64;
        let parts: Vec<String> = self
            .processes
            .iter()
            .map(|p| {
                let gone = if p.exited { " (exited: time missing)" } else { "" };
                format!("{}[{}] {:.1}µs{gone}", p.name, p.pid, each(p.cpu_s))
            })
            .collect();
        let per = match per {
            Some((n, unit)) if n > 1 => format!(", {:.1}µs per {unit}", self.us_per_call / n as f64),
            _ => String::new(),
        };
        format!(
            "server CPU per call: {:.1}µs{per} ({:.3} s over {calls} calls, {:.2} cores): {}\n",
            self.us_per_call,
            self.cpu_s,
            self.cores,
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 123 45 0 0 20 0 9 0 100 \
                    1000 50 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(("my (odd) name".into(), 168 * NS_PER_TICK))
        );
        assert_eq!(parse_stat("4242 (short) S 1 2 3"), None);
    }

    fn sample(stat_ticks: u64, threads: &[(u32, u64)]) -> Sample {
        Sample {
            name: "p".into(),
            stat_ns: stat_ticks * NS_PER_TICK,
            threads_ns: threads.iter().copied().collect(),
        }
    }

    #[test]
    fn the_larger_lower_bound_is_taken() {
        // Threads in nanoseconds beat the 10 ms ticks: 1 + 2.5 ms, one thread new.
        let before = sample(10, &[(1, 5_000_000), (2, 1_000_000)]);
        let after = sample(10, &[(1, 6_000_000), (2, 1_000_000), (3, 2_500_000)]);
        assert_eq!(before.until(&after), 3_500_000);
        // A thread that exited took its time with it: the ticks still count it.
        let after = sample(13, &[(1, 6_000_000)]);
        assert_eq!(before.until(&after), 30_000_000);
    }

    #[test]
    fn this_process_is_read_and_legs_add_up() {
        let me = std::process::id();
        let before = read_all(&[me, u32::MAX]);
        assert!(before[0].as_ref().is_some_and(|s| !s.threads_ns.is_empty()));
        assert!(before[1].is_none());
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = read_all(&[me, u32::MAX]);
        let mut cpu = between(&before, &after, &[me, u32::MAX]);
        assert!(cpu[0].cpu_s > 0.0 && !cpu[0].exited, "{cpu:?}");
        assert!(cpu[1].exited, "{cpu:?}");
        let first = cpu[0].cpu_s;
        add(&mut cpu, &between(&before, &after, &[me, u32::MAX]));
        assert_eq!(cpu[0].cpu_s, 2.0 * first);
        let server = ServerCpu::new(cpu, 4, 1.0);
        assert_eq!(server.us_per_call, 1e6 * 2.0 * first / 4.0);
        let text = server.to_text(4, Some((8, "transaction")));
        assert!(text.starts_with("server CPU per call: "), "{text}");
        assert!(
            text.contains("per transaction") && text.contains("exited"),
            "{text}"
        );
    }
}
