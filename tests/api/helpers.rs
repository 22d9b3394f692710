//! Test harness: a real `redis-server` per test, the users role in-process on port 0, HTTP helpers.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::Client;
use platform::config::{Cli, Role};
use platform::telemetry::logging::{self, LogBuffer};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_platform");

/// The auth role's issuer in tests (as clients would see it behind a gateway).
pub const AUTH_ISSUER: &str = "http://gateway.test/api/auth";
/// Argon2 cheaper than OWASP's parameters (the test binary is unoptimised), still measurable.
pub const ARGON2: platform::config::Argon2Settings = platform::config::Argon2Settings {
    argon2_memory_kib: 4096,
    argon2_iterations: 2,
    argon2_parallelism: 1,
};
/// The same parameters as the auth role's flags.
pub const ARGON2_FLAGS: [&str; 6] = [
    "--argon2-memory-kib",
    "4096",
    "--argon2-iterations",
    "2",
    "--argon2-parallelism",
    "1",
];

/// A real Redis on a free loopback port, with its own data directory; killed on drop.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_owned()))
    }

    fn start_with(password: Option<String>) -> Self {
        let mut server = Self {
            port: free_port(),
            password,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server must be installed (make test installs it)"),
        );
        wait_until(Duration::from_secs(10), || {
            self.try_cli(&["PING"]).is_some_and(|o| o == "PONG")
        });
    }

    /// Kills it (SIGKILL, as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Freezes it now and resumes it from a thread after `period`: a Redis that answers late.
    pub fn pause_for(&self, period: Duration) -> std::thread::JoinHandle<()> {
        self.pause();
        let pid = self.child.as_ref().map(Child::id);
        std::thread::spawn(move || {
            std::thread::sleep(period);
            if let Some(pid) = pid {
                signal(pid, "-CONT");
            }
        })
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            signal(child.id(), sig);
        }
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "--no-auth-warning"]);
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw]);
        }
        let out = cmd.args(args).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Runs one command with `redis-cli` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(sig).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill {sig} {pid} failed");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it is true or `deadline` passes (then panics).
pub fn wait_until(deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it is true or `deadline` passes (then panics, naming `what`), yielding
/// to the test's runtime between tries: the in-process roles keep serving while it waits.
pub async fn poll_until(deadline: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The users role running in this test's runtime, with its log captured.
pub struct TestApp {
    pub http: Http,
    pub redis: RedisServer,
    pub logs: LogBuffer,
}

impl std::ops::Deref for TestApp {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

/// An HTTP client bound to one base address.
pub struct Http {
    pub address: String,
    pub port: u16,
    pub client: Client,
}

impl Http {
    pub fn new(port: u16) -> Self {
        Self {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client: Client::builder().timeout(Duration::from_secs(10)).finish(),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(RedisServer::start(), &[]).await
}

/// Starts the users role against `redis`, with extra command-line flags.
pub async fn spawn_app_with(redis: RedisServer, extra: &[&str]) -> TestApp {
    let url = redis.url();
    let (http, logs) = spawn_role("users", &[&["--redis-url", &url], extra].concat()).await;
    TestApp { http, redis, logs }
}

/// Builds `platform ROLE --host 127.0.0.1 --port 0 --workers 1 EXTRA…` as `main` would and
/// runs it in this test's runtime, its log captured.
async fn spawn_role(role: &str, extra: &[&str]) -> (Http, LogBuffer) {
    let args = [
        &[
            "platform",
            role,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "1",
        ],
        extra,
    ]
    .concat();
    let cli = <Cli as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("test arguments must parse: {args:?}: {e}"));
    let logs = LogBuffer::default();
    let log = logging::capture(logs.clone());
    let app = match cli.role {
        Role::Users(cmd) => platform::users::build(&cmd.settings, log),
        Role::Gateway(settings) => platform::gateway::build(&settings, log),
        Role::Auth(cmd) => platform::auth::build(&cmd.settings, log),
        Role::All(_) => panic!("`platform all` runs as a process: Process::all"),
    }
    .expect("the role builds");
    (serve(app.port(), app.run_until_stopped()).await, logs)
}

/// A response reduced to what tests look at.
pub struct Reply {
    pub status: u16,
    pub headers: awc::http::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Asserts the §2 error shape and code; returns the body.
    pub fn assert_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["error"], code, "body: {}", self.body);
        assert!(self.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        let id = self.body["request_id"]
            .as_str()
            .expect("request_id in error body");
        assert_eq!(Some(id.to_owned()), self.header("x-request-id"));
        &self.body
    }
}

impl Http {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn send(&self, req: awc::ClientRequest, body: Option<&str>) -> Reply {
        let mut res = match body {
            Some(b) => req.send_body(b.to_owned()).await,
            None => req.send().await,
        }
        .expect("request answered");
        let bytes = res.body().limit(64 * 1024 * 1024).await.expect("body read");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)), None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path)), None).await
    }

    /// A JSON request with `Content-Type: application/json`.
    pub async fn json(&self, method: &str, path: &str, body: &str) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let req = self
            .client
            .request(method, self.url(path))
            .insert_header(("Content-Type", "application/json"));
        self.send(req, Some(body)).await
    }

    pub async fn create_user(&self, name: &str, email: &str) -> Value {
        self.create_user_at("/users", name, email).await
    }

    pub async fn create_user_at(&self, path: &str, name: &str, email: &str) -> Value {
        let body = serde_json::json!({"name": name, "email": email}).to_string();
        let reply = self.json("POST", path, &body).await;
        assert_eq!(reply.status, 201, "create failed: {}", reply.body);
        reply.body
    }
}

impl TestApp {
    /// Number of users as Redis itself sees them (all four keys of §3 must agree).
    pub fn stored_counts(&self) -> (usize, usize, usize, usize) {
        let users = self
            .redis
            .cli(&["--scan", "--pattern", "user:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        let emails = self
            .redis
            .cli(&["--scan", "--pattern", "users:email:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        let index: usize = self
            .redis
            .cli(&["SCARD", "users:index"])
            .parse()
            .unwrap_or(0);
        let ordered: usize = self
            .redis
            .cli(&["ZCARD", "users:by_created"])
            .parse()
            .unwrap_or(0);
        (users, index, ordered, emails)
    }

    /// Lines the role logged, each parsed as JSON.
    pub fn log_lines(&self) -> Vec<Value> {
        json_lines(&self.logs)
    }
}

/// Every line of a captured log, each parsed as JSON.
pub fn json_lines(logs: &LogBuffer) -> Vec<Value> {
    logs.contents()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The real `platform` binary in a child process, its stdout captured line by line.
pub struct Process {
    pub child: Child,
    pub port: u16,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread reading stdout; it ends when the process has exited and its stdout is drained.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// `platform users` on a free port against `redis_url`, plus `args` and `envs`.
    pub fn users(redis_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let mut all_args = vec![
            "users",
            "--host",
            "127.0.0.1",
            "--port",
            &port_text,
            "--redis-url",
            redis_url,
        ];
        all_args.extend_from_slice(args);
        Self::spawn(&all_args, envs, port)
    }

    /// `platform all` on two free ports against `redis_url`: (process on the gateway's port,
    /// the users role's port).
    pub fn all(redis_url: &str) -> (Self, u16) {
        Self::all_with(redis_url, &[])
    }

    /// `platform all` as `all`, with `envs` set (e.g. authentication settings).
    pub fn all_with(redis_url: &str, envs: &[(&str, &str)]) -> (Self, u16) {
        let (gateway_port, users_port) = (free_port(), free_port());
        let (g, u) = (gateway_port.to_string(), users_port.to_string());
        let args = [
            "all",
            "--host",
            "127.0.0.1",
            "--gateway-port",
            &g,
            "--users-port",
            &u,
            "--redis-url",
            redis_url,
        ];
        let process = Self::spawn(&args, envs, gateway_port);
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", users_port)).is_ok()
        });
        (process, users_port)
    }

    /// The binary with `args`, waiting until `port` accepts connections.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], port: u16) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .envs(envs.iter().copied())
            .env_remove("LOG_LEVEL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("platform binary starts");
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = child.stdout.take().map(|out| {
            let sink = stdout.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            })
        });
        let process = Self {
            child,
            port,
            stdout,
            reader,
        };
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()));
    }

    /// Waits for the exit (at most `deadline`) and returns its code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its stdout has ended: once the reader has it all, `stdout()` is complete.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.code();
            }
            assert!(
                start.elapsed() < deadline,
                "process did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    run_binary_with_env(args, &[])
}

/// Runs the binary to completion with extra environment variables: (exit code, stdout, stderr).
pub fn run_binary_with_env(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("platform binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The gateway role running in this test's runtime in front of `users_url`, log captured.
pub struct TestGateway {
    pub http: Http,
    pub logs: LogBuffer,
}

impl TestGateway {
    /// The access line of the request to `path`, once the gateway has written it.
    pub fn access_line(&self, path: &str) -> Option<Value> {
        json_lines(&self.logs)
            .into_iter()
            .find(|l| l["msg"] == "request" && l["path"] == path)
    }
}

impl std::ops::Deref for TestGateway {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

/// The auth role running in this test's runtime with `flags`, its log captured.
pub async fn spawn_auth(flags: &[&str]) -> TestGateway {
    let (http, logs) = spawn_role("auth", flags).await;
    TestGateway { http, logs }
}

pub async fn spawn_gateway(users_url: &str, extra: &[&str]) -> TestGateway {
    let (http, logs) = spawn_role("gateway", &[&["--users-url", users_url], extra].concat()).await;
    TestGateway { http, logs }
}

/// Runs a role's server in this test's runtime and returns a client once it serves
/// (the server only starts when the runtime first polls it).
async fn serve(port: u16, run: impl Future<Output = anyhow::Result<()>> + 'static) -> Http {
    actix_web::rt::spawn(run);
    let http = Http::new(port);
    assert_eq!(http.get("/health/live").await.status, 200);
    http
}
