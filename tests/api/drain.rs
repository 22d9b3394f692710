//! SIGTERM under keep-alive load (issue 17, `make chaos`): every request a client has written
//! gets its whole answer, and the process exits 0 within its shutdown timeout.
//!
//! Clients speak raw HTTP/1.1 over kept-alive TCP connections, so the test knows exactly when a
//! request's bytes were all written. A connection refused or closed before that is an honest
//! close (the client would send elsewhere); a request written and then left without a complete
//! answer, or answered with anything but 2xx, is a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{Process, RedisServer, free_port};

const CLIENTS: usize = 16;
/// Shutdown timeout given to the process; it must exit within it (plus start-up slack).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    /// Written, not yet answered.
    in_flight: AtomicUsize,
    /// Written, then no complete answer, or not a 2xx: what must never happen.
    failed: AtomicUsize,
    /// The connection was refused or closed before the request was written.
    not_sent: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut f) = self.failures.lock() {
            f.push(what);
        }
    }
}

/// Reads one response: (status, whether the server closes the connection after it).
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value.contains("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let size = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(length) = length {
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
    }
    Ok((status, close))
}

/// One client: requests on one kept-alive connection, a new one when the server closes it,
/// until a connection is refused after SIGTERM (or `deadline`).
fn client(
    n: usize,
    port: u16,
    prefix: &'static str,
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
            None => match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(12)))
                        .expect("timeout");
                    conn.insert(BufReader::new(stream))
                }
                Err(_) if stopping.load(Ordering::SeqCst) => {
                    tally.not_sent.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Err(e) => panic!("connect before SIGTERM: {e}"),
            },
        };
        let request = if i % 2 == 0 {
            let body = format!(r#"{{"name":"Client {n}","email":"c{n}-{i}@example.com"}}"#);
            format!(
                "POST {prefix}/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!("GET {prefix}/users?limit=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        };
        let stream = reader.get_mut();
        if stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.flush())
            .is_err()
        {
            // Closed before the request was written: not sent.
            tally.not_sent.fetch_add(1, Ordering::SeqCst);
            conn = None;
            continue;
        }
        tally.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = read_response(reader);
        tally.in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok((status, close)) => {
                tally.answered.fetch_add(1, Ordering::SeqCst);
                if !(200..300).contains(&status) {
                    tally.fail(format!("client {n} request {i}: status {status}"));
                }
                if close {
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

/// Runs 16 clients against `port` (paths under `prefix`), sends SIGTERM once they have been
/// served for a while, and checks every written request was answered and the exit.
fn sigterm_under_load(mut process: Process, prefix: &'static str) {
    let port = process.port;
    let stopping = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(20);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (stopping, tally) = (stopping.clone(), tally.clone());
            std::thread::spawn(move || client(n, port, prefix, stopping, tally, deadline))
        })
        .collect();
    // Load for a moment (and at least a few hundred answers) before the signal.
    let started = Instant::now();
    while tally.answered.load(Ordering::SeqCst) < 300 && started.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let in_flight_at_sigterm = tally.in_flight.load(Ordering::SeqCst);
    let answered_before = tally.answered.load(Ordering::SeqCst);
    stopping.store(true, Ordering::SeqCst);
    process.sigterm();
    let code = process.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(4));
    for c in clients {
        c.join().expect("client thread");
    }
    let failed = tally.failed.load(Ordering::SeqCst);
    eprintln!(
        "drain figures: in flight at SIGTERM {in_flight_at_sigterm}, answered before {answered_before}, answered in all {}, not sent {}, failed {failed}",
        tally.answered.load(Ordering::SeqCst),
        tally.not_sent.load(Ordering::SeqCst),
    );
    assert_eq!(
        failed,
        0,
        "written requests without a 2xx answer: {:?}",
        tally.failures.lock().map(|f| f.clone()).unwrap_or_default()
    );
    assert_eq!(code, Some(0), "exit code");
}

fn envs() -> [(&'static str, &'static str); 3] {
    [
        ("SHUTDOWN_TIMEOUT", "8s"),
        ("DRAIN_TIME", "2s"),
        ("WORKERS", "2"),
    ]
}

#[test]
fn sigterm_to_platform_all_under_keep_alive_load_answers_every_written_request() {
    let redis = RedisServer::start();
    let (process, _) = Process::all_with(&redis.url(), &envs());
    sigterm_under_load(process, "/api");
}

#[test]
fn sigterm_to_the_users_role_under_keep_alive_load_answers_every_written_request() {
    let redis = RedisServer::start();
    let process = Process::users(&redis.url(), &[], &envs());
    sigterm_under_load(process, "");
}

#[test]
fn sigterm_to_the_gateway_under_keep_alive_load_answers_every_written_request() {
    let redis = RedisServer::start();
    let users = Process::users(&redis.url(), &[], &envs());
    let port = free_port();
    let (port_text, users_url) = (port.to_string(), users.url("/"));
    let gateway = Process::spawn(
        &[
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            &port_text,
            "--users-url",
            &users_url,
        ],
        &envs(),
        port,
    );
    sigterm_under_load(gateway, "/api");
    drop(users);
}

#[test]
fn a_request_on_a_kept_alive_connection_during_the_drain_is_answered_with_connection_close() {
    let redis = RedisServer::start();
    let mut process = Process::users(&redis.url(), &[], &envs());
    let stream = TcpStream::connect(("127.0.0.1", process.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut conn = BufReader::new(stream);
    let request = b"GET /users?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    conn.get_mut().write_all(request).expect("write");
    assert_eq!(read_response(&mut conn).expect("answer"), (200, false));

    // The connection is idle and kept alive when SIGTERM arrives; the client sends again.
    process.sigterm();
    crate::helpers::wait_until(Duration::from_secs(5), || {
        process.stdout().contains("shutting down")
    });
    // New connections are refused from now on: nothing was sent, the client goes elsewhere.
    crate::helpers::wait_until(Duration::from_secs(5), || {
        TcpStream::connect(("127.0.0.1", process.port)).is_err()
    });
    conn.get_mut().write_all(request).expect("write");
    assert_eq!(
        read_response(&mut conn).expect("answered during the drain"),
        (200, true),
        "answered, and told the connection closes"
    );
    let mut rest = Vec::new();
    assert_eq!(conn.read_to_end(&mut rest).ok(), Some(0), "closed after it");
    // Its only connection gone, the role stops without waiting out the drain time.
    assert_eq!(process.wait_exit(SHUTDOWN_TIMEOUT), Some(0));
    assert!(process.stdout().contains(r#""msg":"drained""#));
}
