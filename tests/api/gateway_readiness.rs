//! The gateway's readiness asks the users service's `/health/ready` at most once per cache
//! period (1 s), however many probes arrive together: one upstream probe in flight, the
//! others wait for its answer (never longer than the probe's 1 s timeout).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::helpers::{Process, free_port};

/// Callers sent together in each round.
const CALLERS: usize = 16;
/// More than the gateway's readiness cache period (1 s): a round after this much time finds
/// the cached answer expired (a lower bound, so a slow machine only makes it truer).
const AFTER_THE_CACHE_PERIOD: Duration = Duration::from_millis(1_300);

/// A users-service stand-in that counts the `/health/ready` requests it receives and answers
/// each one 200 after `delay` (a probe in flight that long), on keep-alive connections.
struct CountingUpstream {
    port: u16,
    probes: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().map(|a| a.port()).expect("port");
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let counted = counted.clone();
                std::thread::spawn(move || serve(stream, delay, &counted));
            }
        });
        Self { port, probes }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

/// Answers the requests of one connection (heads only: probes have no body) until it closes.
fn serve(stream: TcpStream, delay: Duration, probes: &AtomicUsize) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        if request_line.starts_with("GET /health/ready ") {
            probes.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(delay);
        let body = r#"{"status":"ready"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The real gateway binary with 4 workers (callers land on different workers, so waiting for
/// another worker's probe is exercised) in front of `users_url`.
fn gateway(users_url: &str) -> Process {
    let port = free_port();
    let port_text = port.to_string();
    let args = [
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        &port_text,
        "--users-url",
        users_url,
        "--workers",
        "4",
    ];
    Process::spawn(&args, &[], port)
}

/// `CALLERS` `GET /health/ready`, each on its own connection, all connected before any is
/// written; each caller's status code and how long its answer took.
fn probe_together(port: u16) -> Vec<(Option<u16>, Duration)> {
    let barrier = Arc::new(Barrier::new(CALLERS));
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let conn = TcpStream::connect(("127.0.0.1", port));
                barrier.wait();
                let started = Instant::now();
                let status = conn.ok().and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                    c.write_all(
                        b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .ok()?;
                    let mut answer = String::new();
                    c.read_to_string(&mut answer).ok()?;
                    answer.get(9..12)?.parse().ok()
                });
                (status, started.elapsed())
            })
        })
        .collect();
    callers
        .into_iter()
        .map(|c| c.join().expect("caller thread"))
        .collect()
}

#[test]
fn concurrent_readiness_probes_share_one_upstream_probe_per_cache_period() {
    // The upstream takes 200 ms to answer: every caller of a round arrives while it works.
    let upstream = CountingUpstream::start(Duration::from_millis(200));
    let gw = gateway(&upstream.url());
    for round in 1..=2 {
        let answers = probe_together(gw.port);
        assert!(
            answers.iter().all(|(status, _)| *status == Some(200)),
            "round {round}: every caller gets the one probe's answer: {answers:?}"
        );
        assert_eq!(
            upstream.probes(),
            round,
            "round {round}: one upstream probe for {CALLERS} callers"
        );
        std::thread::sleep(AFTER_THE_CACHE_PERIOD);
    }
}

#[test]
fn callers_waiting_for_a_probe_that_hangs_are_answered_503_within_its_timeout() {
    // The upstream holds every probe far beyond the gateway's 1 s probe timeout.
    let upstream = CountingUpstream::start(Duration::from_secs(30));
    let gw = gateway(&upstream.url());
    for round in 1..=2 {
        let answers = probe_together(gw.port);
        assert!(
            answers
                .iter()
                .all(|(status, took)| *status == Some(503) && *took < Duration::from_secs(5)),
            "round {round}: not ready, answered within the probe's timeout: {answers:?}"
        );
        // A hung probe does not hold the next period's probe back.
        assert_eq!(
            upstream.probes(),
            round,
            "round {round}: one upstream probe for {CALLERS} callers"
        );
        std::thread::sleep(AFTER_THE_CACHE_PERIOD);
    }
}
