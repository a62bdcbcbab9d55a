//! Helpers for tests only: real `redis-server` processes on free loopback ports and the
//! paths of the repository's committed assets. Nothing here is a mock.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the directory holding the workspace `Cargo.toml`).
///
/// Read from the `CARGO_MANIFEST_DIR` that cargo sets when it runs a test (every crate lives at
/// `crates/<name>`), so that a build shared between two clones through one target directory
/// never points a test at the other clone; the compile-time value is the fallback.
pub fn repo_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    crate_dir
        .join("../..")
        .canonicalize()
        .expect("repository root exists")
}

/// Copies the repository's `pipelines/*.toml` into `dir` with every `budget_ms` set to
/// `budget_ms` (functional tests must not depend on how fast a debug build runs on a busy
/// machine) and every other line passed through `edit` (`None` drops it).
pub fn copy_pipelines(dir: &Path, budget_ms: u64, edit: impl Fn(&str) -> Option<String>) {
    for entry in std::fs::read_dir(repo_root().join("pipelines")).expect("pipelines/ exists") {
        let path = entry.expect("a readable directory entry").path();
        copy_pipeline_file(&path, dir, budget_ms, &edit);
    }
}

/// Copies the repository's `pipelines/<name>.toml` alone into `dir`, its `budget_ms` set to
/// `budget_ms`.
pub fn copy_pipeline(dir: &Path, name: &str, budget_ms: u64) {
    let path = repo_root().join("pipelines").join(format!("{name}.toml"));
    copy_pipeline_file(&path, dir, budget_ms, &|l| Some(l.to_string()));
}

fn copy_pipeline_file(path: &Path, dir: &Path, budget_ms: u64, edit: &dyn Fn(&str) -> Option<String>) {
    let text = std::fs::read_to_string(path).expect("a readable pipeline file");
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| match l.starts_with("budget_ms") {
            true => Some(format!("budget_ms = {budget_ms}")),
            false => edit(l),
        })
        .collect();
    let name = path.file_name().expect("a file name");
    std::fs::write(dir.join(name), lines.join("\n")).expect("the copy is written");
}

/// The project virtualenv's Python, which the set-up scripts create with a pinned
/// `onnxruntime` and the Python gRPC clients the tests drive.
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (the README's test command does)",
        python.display()
    );
    python
}

/// A free TCP port on 127.0.0.1, found by binding port 0 and releasing it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A `redis-server` on a free loopback port, in its own temporary directory, killed on drop.
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with_args(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        // A port can be taken between `free_port` and the server's bind: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_redis(port, dir.path(), &args) {
                return RedisServer {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    args,
                    dir,
                };
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (an outage); `restart` brings it back on the same port, empty.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its port after `stop`.
    pub fn restart(&mut self) {
        self.stop();
        let dir = self.dir.path().to_path_buf();
        for _ in 0..50 {
            if let Some(child) = spawn_redis(self.addr.port(), &dir, &self.args) {
                self.child = child;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on {}", self.addr);
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, as when a
    /// host hangs. `resume` undoes it.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// Starts `redis-server` on `port` and waits for PING; `None` if it did not come up.
fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-server is not installed: run scripts/setup.sh");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if wait_for_ping(&mut child, addr) {
        return Some(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn wait_for_ping(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            eprintln!("redis-server exited early: {err}");
            return false;
        }
        if ping(addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    use std::io::Write;
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// A three-primary Redis Cluster on loopback (`redis-server --cluster-enabled yes` three
/// times, joined by `redis-cli --cluster create`), stopped on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                RedisServer::start_with_args(&["--cluster-enabled", "yes", "--cluster-port", &bus])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is not installed: run scripts/setup.sh");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.addr().port().to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// Seed URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// How many keys each node holds (`DBSIZE`), in node order.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let out = Command::new("redis-cli")
                    .args(["-p", &n.addr().port().to_string(), "dbsize"])
                    .output()
                    .expect("redis-cli");
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
            })
            .collect()
    }
}

/// A child process that is killed when the guard is dropped, so that a failing test never
/// leaves a server running (which would also hold the test runner's output pipe open).
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_server_starts_and_stops() {
        let server = RedisServer::start();
        let addr = server.addr();
        assert!(ping(addr));
        drop(server);
        assert!(!ping(addr), "redis-server still answers after drop");
    }
}
