//! What the host did to the machine while a benchmark ran.
//!
//! On a virtual machine two things move latencies that no code of ours causes: *steal*, the
//! time a virtual CPU wanted to run and the hypervisor ran something else, and the cost of
//! waking an idle virtual CPU, which is far lower when the guest polls for a while before it
//! halts (guest halt polling; Linux's `haltpoll` idle driver). Each report says both, so a
//! result from a disturbed minute reads as one.

use serde::Serialize;

/// The machine's CPU time counters (`/proc/stat`, all CPUs, in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time spent running something: user, nice, system, irq and softirq.
    pub busy: u64,
    /// Idle, I/O wait included.
    pub idle: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// Parses the aggregate `cpu` line of `/proc/stat`.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_ascii_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        // already counted in user and nice.
        let [user, nice, system, idle, iowait, irq, softirq, steal] = *fields.get(..8)? else {
            return None;
        };
        Some(CpuTimes {
            busy: user + nice + system + irq + softirq,
            idle: idle + iowait,
            steal,
        })
    }

    /// Now, where the system has `/proc/stat` (Linux); `None` elsewhere.
    pub fn now() -> Option<CpuTimes> {
        CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Shares of the time from `start` (a reading taken earlier, if one could be) to now.
    pub fn shares_since(start: Option<CpuTimes>) -> Option<CpuShares> {
        start?.until(&CpuTimes::now()?)
    }

    /// Shares of the time between `self` (earlier) and `later`, in percent.
    pub fn until(&self, later: &CpuTimes) -> Option<CpuShares> {
        let busy = later.busy.checked_sub(self.busy)?;
        let idle = later.idle.checked_sub(self.idle)?;
        let steal = later.steal.checked_sub(self.steal)?;
        let total = busy + idle + steal;
        if total == 0 {
            return None;
        }
        let pct = |x: u64| 100.0 * x as f64 / total as f64;
        Some(CpuShares {
            busy_pct: pct(busy),
            steal_pct: pct(steal),
        })
    }
}

/// How the machine's CPU time was spent over a stretch of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuShares {
    /// Running anything (this process, the server, everything else on the machine).
    pub busy_pct: f64,
    /// Taken by the hypervisor while a virtual CPU was ready to run.
    pub steal_pct: f64,
}

/// The host's conditions over a whole `ferrite bench` invocation.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub cpu: Option<CpuShares>,
    /// The guest's halt-polling limit in ns (`/sys/module/haltpoll/parameters/
    /// guest_halt_poll_ns`) when the haltpoll idle driver is loaded; 0 is off.
    pub guest_halt_poll_ns: Option<u64>,
    /// The CPUs this load generator may run on, when not every online CPU (`taskset`).
    pub client_cpus: Option<String>,
}

impl HostReport {
    pub fn read_halt_poll() -> Option<u64> {
        std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// This process's allowed CPUs (`Cpus_allowed_list` of /proc/self/status) if they are
    /// fewer than the online ones (/sys/devices/system/cpu/online).
    pub fn read_client_cpus() -> Option<String> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
        restricted_cpus(&status, &online)
    }

    pub fn to_text(&self) -> String {
        let cpu = match self.cpu {
            Some(c) => format!("steal {:.1} % of CPU time, busy {:.1} %", c.steal_pct, c.busy_pct),
            None => "CPU time not available".to_string(),
        };
        let poll = match self.guest_halt_poll_ns {
            Some(0) => "; guest halt polling off".to_string(),
            Some(ns) => format!("; guest halt polling up to {ns} ns"),
            None => String::new(),
        };
        let pinned = match &self.client_cpus {
            Some(list) => format!("; load generator on CPUs {list}"),
            None => String::new(),
        };
        format!("host   {cpu}{poll}{pinned}\n")
    }
}

/// The `Cpus_allowed_list` of a /proc/<pid>/status text, if it differs from `online`.
fn restricted_cpus(status: &str, online: &str) -> Option<String> {
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    (allowed != online.trim()).then(|| allowed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  100 5 50 1000 20 3 2 10 0 0\ncpu0 50 2 25 500 10 1 1 5 0 0\nintr 1 2 3\n";
    const AFTER: &str = "cpu  200 5 90 1100 30 5 4 60 7 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";

    #[test]
    fn the_aggregate_line_is_read_and_guest_time_not_counted_twice() {
        assert_eq!(
            CpuTimes::parse(BEFORE),
            Some(CpuTimes {
                busy: 100 + 5 + 50 + 3 + 2,
                idle: 1000 + 20,
                steal: 10
            })
        );
    }

    #[test]
    fn shares_are_of_all_time_between_two_readings() {
        let (a, b) = (CpuTimes::parse(BEFORE).unwrap(), CpuTimes::parse(AFTER).unwrap());
        // busy +144 (100 user, 40 system, 2 irq, 2 softirq), idle +110, steal +50: 304 ticks.
        let s = a.until(&b).unwrap();
        assert!((s.busy_pct - 100.0 * 144.0 / 304.0).abs() < 1e-9, "{s:?}");
        assert!((s.steal_pct - 100.0 * 50.0 / 304.0).abs() < 1e-9, "{s:?}");
        // No time between two equal readings, and counters never run backwards.
        assert_eq!(a.until(&a), None);
        assert_eq!(b.until(&a), None);
    }

    #[test]
    fn short_or_foreign_lines_are_refused() {
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn the_text_names_steal_and_halt_polling() {
        let r = HostReport {
            cpu: Some(CpuShares {
                busy_pct: 48.04,
                steal_pct: 3.24,
            }),
            guest_halt_poll_ns: Some(0),
            client_cpus: None,
        };
        assert_eq!(
            r.to_text(),
            "host   steal 3.2 % of CPU time, busy 48.0 %; guest halt polling off\n"
        );
        let r = HostReport {
            cpu: None,
            guest_halt_poll_ns: Some(200_000),
            client_cpus: Some("0".into()),
        };
        assert_eq!(
            r.to_text(),
            "host   CPU time not available; guest halt polling up to 200000 ns; load generator on CPUs 0\n"
        );
    }

    #[test]
    fn a_pinned_load_generator_is_named() {
        let status = "Name:\tferrite\nCpus_allowed:\t1\nCpus_allowed_list:\t0\nMems_allowed:\t1\n";
        assert_eq!(restricted_cpus(status, "0-1\n"), Some("0".into()));
        let free = "Cpus_allowed_list:\t0-1\n";
        assert_eq!(restricted_cpus(free, "0-1\n"), None);
        assert_eq!(restricted_cpus("Name:\tx\n", "0-1\n"), None);
    }
}
