//! Launchers for test servers on free loopback ports, stopped on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; a race is possible but rare).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Finds `program` on `PATH`. When missing: panics if `LODE_REQUIRE_SERVERS=1`,
/// else prints `skipped: <why>` and returns `None`.
pub fn require_tool(program: &str, why: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = format!("skipped: {why}: `{program}` is not installed");
        if std::env::var("LODE_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("{msg} and LODE_REQUIRE_SERVERS=1");
        }
        println!("{msg}");
    }
    found
}

fn wait_connectable(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} on {addr} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} on {addr} did not start listening within 20 s");
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A `memcached` process on a loopback port.
#[derive(Debug)]
pub struct MemcachedServer {
    program: PathBuf,
    addr: SocketAddr,
    memory_mb: u32,
    child: Option<Child>,
}

impl MemcachedServer {
    /// Starts memcached with `memory_mb` of cache; `None` (with a skip
    /// message) when memcached is not installed.
    pub fn start(memory_mb: u32) -> Option<Self> {
        let program = require_tool("memcached", "memcached tests")?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut s = Self {
            program,
            addr,
            memory_mb,
            child: None,
        };
        s.restart();
        Some(s)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the process with SIGSTOP (`false`) or resumes it with SIGCONT
    /// (`true`): a stopped server still accepts connections (the kernel
    /// completes the handshake) but never answers, like a hung node.
    pub fn set_running(&self, running: bool) {
        let Some(child) = &self.child else { return };
        let signal = if running { "-CONT" } else { "-STOP" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} failed: {status}");
        // A signal is delivered asynchronously: until every thread has
        // stopped (or resumed), the server may still answer (or not yet).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while all_threads_stopped(child.id()) == running {
            assert!(
                std::time::Instant::now() < deadline,
                "memcached {} did not {} within 5 s",
                child.id(),
                if running { "resume" } else { "stop" }
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Kills the server (its data is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new(&self.program);
        cmd.args(["-l", "127.0.0.1", "-U", "0", "-t", "1"])
            .args(["-p", &self.addr.port().to_string()])
            .args(["-m", &self.memory_mb.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.args(["-u", "root"]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting memcached: {e}"));
        wait_connectable(self.addr, &mut child, "memcached");
        self.child = Some(child);
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `moto_server` (S3-compatible, in memory) on a loopback port.
#[derive(Debug)]
pub struct MotoServer {
    program: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl MotoServer {
    /// Starts moto; `None` (with a skip message) when it is not installed.
    pub fn start() -> Option<Self> {
        let program = require_tool(
            "moto_server",
            "S3-compatible tests (pip install 'moto[server]')",
        )?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut s = Self {
            program,
            addr,
            child: None,
        };
        s.restart();
        Some(s)
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kills the server (moto keeps everything in memory: all is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new(&self.program)
            .args(["-H", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto_server: {e}"));
        wait_connectable(self.addr, &mut child, "moto_server");
        self.child = Some(child);
    }

    /// Creates a bucket (moto does not check signatures, so a plain request does).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s =
            TcpStream::connect(self.addr).unwrap_or_else(|e| panic!("connect to moto: {e}"));
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("create bucket: {e}"));
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
            "creating bucket {bucket} failed: {}",
            resp.lines().next().unwrap_or("")
        );
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in
/// `/proc/PID/task/TID/stat`, the field after the command name).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        if !matches!(state, Some("T" | "t")) {
            return false;
        }
        any = true;
    }
    any
}
