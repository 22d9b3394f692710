//! Real processes for the chaos suite: `redis-server` (optionally on its AOF, optionally in a
//! network namespace) and the `platform` binary, each killed on drop.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_platform");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every 10 ms; true if it held before `deadline`.
pub fn wait_for(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// A command run inside `netns` when there is one (`ip netns exec` execs it: same pid).
fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, program]);
            cmd
        }
        None => Command::new(program),
    }
}

/// A real Redis with its own data directory.
pub struct Redis {
    pub addr: SocketAddr,
    netns: Option<String>,
    aof: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// On loopback, no persistence.
    pub fn start() -> Self {
        Self::start_with(false, None, "127.0.0.1".parse().expect("ip"))
    }

    /// On loopback, `appendonly yes`, `appendfsync everysec` (the deployed settings).
    pub fn start_aof() -> Self {
        Self::start_with(true, None, "127.0.0.1".parse().expect("ip"))
    }

    /// Inside `netns`, listening on `ip` there.
    pub fn start_in(netns: &str, ip: std::net::IpAddr) -> Self {
        Self::start_with(false, Some(netns.to_owned()), ip)
    }

    fn start_with(aof: bool, netns: Option<String>, ip: std::net::IpAddr) -> Self {
        let mut redis = Self {
            addr: SocketAddr::new(ip, free_port()),
            netns,
            aof,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("redis is running")
    }

    /// Starts (again) on the same port and directory (so on its AOF) and waits until it answers.
    pub fn restart(&mut self) {
        let mut cmd = command_in(self.netns.as_deref(), "redis-server");
        cmd.args(["--port", &self.addr.port().to_string()])
            .args(["--bind", &self.addr.ip().to_string()])
            .args(["--save", "", "--protected-mode", "no"])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args([
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .expect("redis-server is installed (make chaos installs it)"),
        );
        let addr = self.addr;
        let up = wait_for(Duration::from_secs(15), || {
            crate::resp::Conn::open(addr)
                .and_then(|mut c| c.cmd(&["PING"]))
                .is_ok_and(|v| v.text() == Some("PONG"))
        });
        assert!(up, "redis-server on {addr} did not answer within 15 s");
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn conn(&self) -> crate::resp::Conn {
        crate::resp::Conn::open(self.addr).expect("redis answers")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen Redis must be thawed to die promptly; SIGKILL works either way.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// The `platform` binary in a child process; its last log lines kept for a failure's report.
pub struct Platform {
    pub child: Child,
    pub addr: SocketAddr,
    tail: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Platform {
    /// `platform ARGS…` (inside `netns` if given), waiting until `addr` accepts connections.
    pub fn spawn(
        netns: Option<&str>,
        args: &[&str],
        envs: &[(&str, &str)],
        addr: SocketAddr,
    ) -> Self {
        let mut cmd = command_in(netns, BIN);
        cmd.args(args)
            .envs(envs.iter().copied())
            .env_remove("LOG_LEVEL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the platform binary starts");
        let tail = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stdout.take().map(|out| {
            let tail = tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut t) = tail.lock() {
                        if t.len() >= 64 {
                            t.remove(0);
                        }
                        t.push(line);
                    }
                }
            })
        });
        let mut process = Self {
            child,
            addr,
            tail,
            reader,
        };
        let mut exited = None;
        let listening = wait_for(Duration::from_secs(20), || {
            exited = process.child.try_wait().ok().flatten();
            exited.is_some() || accepts(addr)
        });
        if let Some(status) = exited {
            let mut err = String::new();
            if let Some(mut stderr) = process.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            }
            panic!("platform {args:?} exited ({status}): {}", err.trim());
        }
        assert!(
            listening,
            "platform {args:?} did not listen on {addr} within 20 s"
        );
        process
    }

    /// `platform users` on `ip:port` against `redis_url`.
    pub fn users(
        netns: Option<&str>,
        addr: SocketAddr,
        redis_url: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let (host, port) = (addr.ip().to_string(), addr.port().to_string());
        let args = [
            &[
                "users",
                "--host",
                &host,
                "--port",
                &port,
                "--redis-url",
                redis_url,
            ][..],
            extra,
        ]
        .concat();
        Self::spawn(netns, &args, envs, addr)
    }

    /// `platform gateway` on loopback in front of `users_url`.
    pub fn gateway(users_url: &str, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let addr = loopback(free_port());
        let port = addr.port().to_string();
        let args = [
            &[
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--users-url",
                users_url,
            ][..],
            extra,
        ]
        .concat();
        Self::spawn(None, &args, envs, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits at most `deadline` for the exit: its code (None if it did not exit in time).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<Option<i32>> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Some(status.code());
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its last log lines (for a failure's report).
    pub fn tail(&self) -> String {
        self.tail.lock().map(|t| t.join("\n")).unwrap_or_default()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
