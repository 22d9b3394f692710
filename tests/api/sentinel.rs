//! Test harness: a Redis master, two replicas and three sentinels on loopback free ports, all
//! real processes (`redis-server`, `redis-server --sentinel`), each killed on drop. Data and
//! sentinels have passwords of their own, as in production.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{free_port, wait_until};

pub const MASTER_NAME: &str = "mymaster";
pub const DATA_PASSWORD: &str = "data-secret";
pub const SENTINEL_PASSWORD: &str = "sentinel-secret";

/// One `redis-server` process (data node or sentinel) with its own directory.
pub struct Node {
    pub port: u16,
    password: &'static str,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    /// Starts `redis-server` with the arguments `args` gives for a free port (or `fixed`) and a
    /// directory; on another free port again if it exits at once (`free_port` may hand a port
    /// to two parallel tests, and the second one's bind fails).
    fn spawn(
        password: &'static str,
        fixed: Option<u16>,
        args: impl Fn(u16, &std::path::Path) -> Vec<String>,
    ) -> Self {
        let attempts = if fixed.is_some() { 1 } else { 3 };
        for _ in 0..attempts {
            let port = fixed.unwrap_or_else(free_port);
            let dir = tempfile::tempdir().expect("temp dir");
            let child = Command::new("redis-server")
                .args(args(port, dir.path()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (make test installs it)");
            let mut node = Self {
                port,
                password,
                dir,
                child: Some(child),
            };
            let mut exited = false;
            wait_until(Duration::from_secs(10), || {
                exited = node
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                exited || node.try_cli(&["PING"]).is_some_and(|o| o == "PONG")
            });
            if !exited {
                return node;
            }
        }
        panic!("redis-server exited at start (port {fixed:?} taken?)")
    }

    /// A data node: the master (`replica_of` none) or a replica of the master on that port;
    /// `stubborn`: never promoted, and it cannot be made to follow another master (`SLAVEOF`
    /// renamed), so a failover waits its `failover-timeout` for it before its switch.
    fn data(replica_of: Option<u16>, stubborn: bool) -> Self {
        Self::spawn(DATA_PASSWORD, None, |port, dir| {
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir.display().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
                "--requirepass",
                DATA_PASSWORD,
                "--masterauth",
                DATA_PASSWORD,
                // Else the first sync waits 5 s for more replicas.
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(str::to_owned)
            .to_vec();
            if stubborn {
                args.extend(
                    ["--replica-priority", "0", "--rename-command", "SLAVEOF"].map(str::to_owned),
                );
                args.push("slaveof-renamed".into());
            }
            if let Some(master_port) = replica_of {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    master_port.to_string(),
                ]);
            }
            args
        })
    }

    /// A sentinel watching the master on `master_port`, quick to decide (1 s to call it down),
    /// on `port` if given, with the configuration lines `extra` at the end.
    fn sentinel(master_port: u16, port: Option<u16>, extra: &str) -> Self {
        Self::spawn(SENTINEL_PASSWORD, port, |port, dir| {
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel auth-pass {MASTER_NAME} {DATA_PASSWORD}\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 2\n\
                     requirepass {SENTINEL_PASSWORD}\n\
                     sentinel sentinel-pass {SENTINEL_PASSWORD}\n{extra}",
                    dir = dir.display(),
                ),
            )
            .expect("sentinel config written");
            vec![conf.display().to_string(), "--sentinel".into()]
        })
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-auth-warning"])
            .args(["-a", self.password])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Runs one command with `redis-cli` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli -p {} {args:?} failed", self.port))
    }

    /// Freezes it (SIGSTOP) or lets it go on (SIGCONT): connections stay open, nothing answers.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
        }
    }

    /// Kills it (SIGKILL, as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A `key value` reply of `redis-cli` (one item a line) as a map.
    fn fields(&self, args: &[&str]) -> HashMap<String, String> {
        let text = self.try_cli(args).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks_exact(2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect()
    }

    /// `INFO replication` as a map.
    fn replication(&self) -> HashMap<String, String> {
        self.try_cli(&["INFO", "replication"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = &self.dir;
    }
}

/// The topology: data nodes by port (the master first at start) and three sentinels.
pub struct Topology {
    pub data: Vec<Node>,
    pub sentinels: Vec<Node>,
    /// Held while the topology lives (dropped after its nodes): one topology at a time, as
    /// six processes with 1 s `down-after-milliseconds` next to another six on a busy CPU
    /// start false failovers.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// What a test needs of its topology beyond the usual one.
#[derive(Default)]
pub struct Options {
    /// The turn already taken (`one_at_a_time`), by a test that picks its sentinels' ports
    /// before the topology starts: no other topology may take them meanwhile.
    pub serial: Option<std::sync::MutexGuard<'static, ()>>,
    /// The sentinels' ports (a role may be told them before they are up).
    pub sentinel_ports: Option<[u16; 3]>,
    /// Configuration lines added to every sentinel's.
    pub sentinel_conf: String,
    /// The second replica (`data[2]`) is never promoted and cannot be reconfigured: a failover
    /// waits `failover-timeout` (4 s) for it between the promotion and `+switch-master`.
    pub stubborn_replica: bool,
}

/// Serialises the tests that start a topology (`cargo test` runs tests in parallel).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for this test's turn to run a topology (see `Options::serial`).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked poisons it; the next one may still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

impl Topology {
    /// Starts the master and two replicas, waits until both are in sync, then the sentinels,
    /// and waits until each sentinel knows both replicas and the two other sentinels (a leader
    /// that does not know a replica aborts the failover).
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// As `start`, with `options`.
    pub fn start_with(options: Options) -> Self {
        let Options {
            serial,
            sentinel_ports,
            sentinel_conf,
            stubborn_replica,
        } = options;
        let serial = serial.unwrap_or_else(one_at_a_time);
        let master = Node::data(None, false);
        let replicas = [
            Node::data(Some(master.port), false),
            Node::data(Some(master.port), stubborn_replica),
        ];
        wait_until(Duration::from_secs(15), || {
            let info = master.replication();
            info.get("connected_slaves").map(String::as_str) == Some("2")
                && (0..2).all(|i| {
                    info.get(&format!("slave{i}"))
                        .is_some_and(|s| s.contains("state=online"))
                })
        });
        let sentinels: Vec<Node> = (0..3)
            .map(|i| Node::sentinel(master.port, sentinel_ports.map(|p| p[i]), &sentinel_conf))
            .collect();
        wait_until(Duration::from_secs(20), || {
            sentinels.iter().all(|s| {
                let master = s.fields(&["SENTINEL", "MASTER", MASTER_NAME]);
                master.get("num-slaves").map(String::as_str) == Some("2")
                    && master.get("num-other-sentinels").map(String::as_str) == Some("2")
            })
        });
        let mut data = vec![master];
        data.extend(replicas);
        Self {
            data,
            sentinels,
            _serial: serial,
        }
    }

    /// `host:port,…` of the sentinels, as `--redis-sentinels` takes them.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(Node::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let text = s.try_cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME])?;
            text.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// The data node on `port`.
    pub fn node(&self, port: u16) -> &Node {
        self.data
            .iter()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    pub fn node_mut(&mut self, port: u16) -> &mut Node {
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    /// Whether the node on `port` answers `ROLE` as a master.
    pub fn is_master(&self, port: u16) -> bool {
        self.node(port)
            .try_cli(&["ROLE"])
            .is_some_and(|r| r.lines().next() == Some("master"))
    }
}
