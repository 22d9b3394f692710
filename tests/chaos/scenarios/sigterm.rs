//! SIGTERM to each role and to `platform all` under keep-alive load (the drain of
//! src/server.rs, as tests/api/drain.rs checks it once per role): every request a client has
//! written gets a whole 2xx answer, and the process exits 0 within its shutdown timeout.
//!
//! Clients write raw HTTP/1.1 on kept-alive connections, so the suite knows when a request was
//! all written. Refused or closed before that is an honest close (a client would send
//! elsewhere); written and then left without an answer, or answered non-2xx, is a failure.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::PATIENCE;
use crate::Report;
use crate::harness::{BIN, Platform, Redis, free_port, loopback, signal};
use crate::http::read_response;
use crate::load::ms;

const CLIENTS: usize = 16;
const ISSUER: &str = "http://chaos.test/api/auth";
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);
const ENVS: &[(&str, &str)] = &[
    ("SHUTDOWN_TIMEOUT", "8s"),
    ("DRAIN_TIME", "2s"),
    ("WORKERS", "2"),
];

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    in_flight: AtomicUsize,
    failed: AtomicUsize,
    not_sent: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut f) = self.failures.lock() {
            f.push(what);
        }
    }
}

/// What the load sends: a GET, or a POST body to create a unique user.
#[derive(Clone, Copy)]
enum Load {
    /// GET/POST alternately on `{prefix}/users`.
    Users(&'static str),
    /// GET of the JWKS.
    Jwks(&'static str),
}

fn request(load: Load, n: usize, i: usize) -> String {
    match load {
        Load::Users(prefix) if i % 2 == 0 => {
            let body = format!(
                r#"{{"name":"Client {n}","email":"t{n}-{i}-{}@example.com"}}"#,
                std::process::id()
            );
            format!(
                "POST {prefix}/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        Load::Users(prefix) => format!("GET {prefix}/users?limit=5 HTTP/1.1\r\nHost: x\r\n\r\n"),
        Load::Jwks(prefix) => {
            format!("GET {prefix}/.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
        }
    }
}

fn client(
    n: usize,
    addr: SocketAddr,
    load: Load,
    stopping: Arc<AtomicBool>,
    tally: Arc<Tally>,
    deadline: Instant,
) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        let reader = match conn.as_mut() {
            Some(reader) => reader,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(PATIENCE));
                    conn.insert(BufReader::new(stream))
                }
                Err(_) if stopping.load(Ordering::SeqCst) => {
                    tally.not_sent.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    tally.fail(format!("client {n}: connect before SIGTERM: {e}"));
                    return;
                }
            },
        };
        let stream = reader.get_mut();
        if stream
            .write_all(request(load, n, i).as_bytes())
            .and_then(|()| stream.flush())
            .is_err()
        {
            tally.not_sent.fetch_add(1, Ordering::SeqCst);
            conn = None;
            continue;
        }
        tally.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = read_response(reader, false);
        tally.in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok(r) => {
                tally.answered.fetch_add(1, Ordering::SeqCst);
                if !(200..300).contains(&r.status) {
                    tally.fail(format!("client {n} request {i}: status {}", r.status));
                }
                if r.close {
                    conn = None;
                }
            }
            Err(e) => {
                tally.fail(format!("client {n} request {i}: no answer ({e})"));
                conn = None;
            }
        }
    }
}

fn under_load(report: &mut Report, mut process: Platform, load: Load) {
    let addr = process.addr;
    let stopping = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(20);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (stopping, tally) = (stopping.clone(), tally.clone());
            std::thread::spawn(move || client(n, addr, load, stopping, tally, deadline))
        })
        .collect();
    let started = Instant::now();
    while tally.answered.load(Ordering::SeqCst) < 300 && started.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let in_flight = tally.in_flight.load(Ordering::SeqCst);
    let before = tally.answered.load(Ordering::SeqCst);
    stopping.store(true, Ordering::SeqCst);
    let sent = Instant::now();
    signal(process.pid(), "-TERM");
    let exit = process.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(4));
    let took = sent.elapsed();
    for c in clients {
        c.join().expect("client thread");
    }
    let failed = tally.failed.load(Ordering::SeqCst);
    report.figure("in flight at SIGTERM", in_flight);
    report.figure(
        "answered",
        format!(
            "{before} before + {} after",
            tally.answered.load(Ordering::SeqCst) - before
        ),
    );
    report.figure("not sent", tally.not_sent.load(Ordering::SeqCst));
    report.figure("failed", failed);
    report.figure(
        "exit",
        exit.map(|c| format!("{c:?}")).unwrap_or("none".into()),
    );
    report.figure("in", ms(took));
    report.promise(
        failed == 0,
        format!(
            "every written request answered 2xx: {:?}",
            tally.failures.lock().map(|f| f.clone()).unwrap_or_default()
        ),
    );
    report.promise(exit == Some(Some(0)), format!("exit 0: {exit:?}"));
    report.promise(
        took <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        format!("exit within the shutdown timeout: {}", ms(took)),
    );
    if !report.broken.is_empty() {
        eprintln!("log tail:\n{}", process.tail());
    }
}

pub fn users(report: &mut Report) {
    let redis = Redis::start();
    let process = Platform::users(None, loopback(free_port()), &redis.url(), &[], ENVS);
    under_load(report, process, Load::Users(""));
}

pub fn gateway(report: &mut Report) {
    let redis = Redis::start();
    let users = Platform::users(None, loopback(free_port()), &redis.url(), &[], ENVS);
    let gateway = Platform::gateway(&users.url(), &[], ENVS);
    under_load(report, gateway, Load::Users("/api"));
}

/// A signing keys directory with one key, made by the binary itself.
fn keys_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(BIN)
        .args(["auth", "generate-key"])
        .arg(dir.path())
        .output()
        .expect("platform auth generate-key runs");
    assert!(
        out.status.success(),
        "generate-key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

pub fn auth(report: &mut Report) {
    let redis = Redis::start();
    let keys = keys_dir();
    let addr = loopback(free_port());
    let (port, dir) = (
        addr.port().to_string(),
        keys.path().to_string_lossy().into_owned(),
    );
    let url = redis.url();
    let args = [
        "auth",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--redis-url",
        &url,
        "--signing-keys-dir",
        &dir,
        "--issuer",
        ISSUER,
    ];
    let process = Platform::spawn(None, &args, ENVS, addr);
    under_load(report, process, Load::Jwks(""));
}

pub fn all(report: &mut Report) {
    let redis = Redis::start();
    let keys = keys_dir();
    let (g, u, a) = (free_port(), free_port(), free_port());
    let (gs, us, as_) = (g.to_string(), u.to_string(), a.to_string());
    let dir = keys.path().to_string_lossy().into_owned();
    let url = redis.url();
    let args = [
        "all",
        "--host",
        "127.0.0.1",
        "--gateway-port",
        &gs,
        "--users-port",
        &us,
        "--auth-port",
        &as_,
        "--redis-url",
        &url,
        "--signing-keys-dir",
        &dir,
        "--issuer",
        ISSUER,
    ];
    let process = Platform::spawn(None, &args, ENVS, loopback(g));
    assert!(crate::harness::wait_for(Duration::from_secs(20), || {
        crate::harness::accepts(loopback(u))
    }));
    under_load(report, process, Load::Users("/api"));
}
