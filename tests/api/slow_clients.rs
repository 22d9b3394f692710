//! Slow clients (slowloris): a body or a head trickled a byte at a time is cut off by a
//! deadline, answered 408 when the answer can still be given, while other clients are served.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::{RedisServer, spawn_app, spawn_app_with, spawn_gateway};

/// What a slow client got: the status of the answer (0: the connection closed without one),
/// its text, and when it came.
struct Outcome {
    status: u16,
    text: String,
    after: Duration,
}

/// Sends `head` and the first byte of its body, then one more byte every `every`, until the
/// server answers or closes (at most 20 s).
fn trickle(port: u16, head: &str, every: Duration) -> Outcome {
    let started = Instant::now();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.write_all(head.as_bytes()).expect("head");
    conn.set_read_timeout(Some(every)).expect("timeout");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(20) {
        // Writing may fail once the server has answered and closed: read what it said.
        let _ = conn.write_all(b"x");
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !raw.is_empty() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let after = started.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Outcome {
        status,
        text,
        after,
    }
}

fn slow_post(path: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
}

/// The status each of the `slow` connections was answered with ("none": closed without an
/// answer), read on a thread while this runtime keeps serving (at most 15 s each).
async fn statuses_of(slow: Vec<TcpStream>) -> Vec<String> {
    let answers = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        for mut conn in slow {
            conn.set_read_timeout(Some(Duration::from_secs(15)))
                .expect("timeout");
            let mut raw = Vec::new();
            let _ = conn.read_to_end(&mut raw);
            let text = String::from_utf8_lossy(&raw).into_owned();
            statuses.push(text.split_whitespace().nth(1).unwrap_or("none").to_owned());
        }
        statuses
    });
    while !answers.is_finished() {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    answers.join().expect("slow clients")
}

/// Polls `get` while the slow clients hold their connections: each answer must be prompt.
async fn served_meanwhile(http: &crate::helpers::Http, path: &str, until: impl Fn() -> bool) {
    let mut served = 0;
    while !until() || served < 3 {
        let started = Instant::now();
        let reply = http.get(path).await;
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert!(took < Duration::from_secs(2), "{path} took {took:?}");
        served += 1;
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn bodies_trickled_past_the_deadline_get_408_while_others_are_served() {
    let app = spawn_app_with(RedisServer::start(), &["--client-body-timeout", "1s"]).await;
    let port = app.port;
    let slow: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                trickle(port, &slow_post("/users"), Duration::from_millis(200))
            })
        })
        .collect();
    served_meanwhile(&app.http, "/users?limit=1", || {
        slow.iter().all(|t| t.is_finished())
    })
    .await;
    for outcome in slow {
        let Outcome {
            status,
            text,
            after,
        } = outcome.join().expect("slow client");
        assert_eq!(status, 408, "{text}");
        assert!(text.contains(r#""error":"request_timeout""#), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(6),
            "cut off by the 1 s deadline, after {after:?}"
        );
    }
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics
            .contains(r#"http_requests_total{method="POST",route="/users",status_code="408"} 20"#),
        "{metrics}"
    );
    assert_eq!(app.stored_counts(), (0, 0, 0, 0));
}

/// A request takes its place among those in flight once its body is whole: clients still
/// trickling theirs cannot fill `--max-in-flight` and shed the ready ones. As many bodies as
/// the cap may be on their way at once; beyond, 503 at once.
#[actix_web::test]
async fn trickled_bodies_hold_no_place_under_the_in_flight_cap() {
    let flags = ["--client-body-timeout", "2s", "--max-in-flight", "2"];
    let app = spawn_app_with(RedisServer::start(), &flags).await;
    let port = app.port;
    let slow: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                trickle(port, &slow_post("/users"), Duration::from_millis(200))
            })
        })
        .collect();
    // Every GET is served (none shed) while 20 bodies are on their way, 10× the cap.
    served_meanwhile(&app.http, "/users?limit=1", || {
        slow.iter().all(|t| t.is_finished())
    })
    .await;
    let mut statuses: Vec<u16> = slow
        .into_iter()
        .map(|t| t.join().expect("slow client").status)
        .collect();
    statuses.sort_unstable();
    let (cut, shed) = (
        statuses.iter().filter(|s| **s == 408).count(),
        statuses.iter().filter(|s| **s == 503).count(),
    );
    assert_eq!((cut, shed), (2, 18), "{statuses:?}");
    // A whole body is then admitted as usual.
    app.create_user("Ready", "ready@example.com").await;
    let metrics = app.get("/metrics").await.text;
    for line in [
        r#"http_requests_shed_total{reason="in_flight"} 0"#,
        r#"http_requests_shed_total{reason="bodies"} 18"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[actix_web::test]
async fn a_head_trickled_a_byte_a_second_is_cut_off_while_others_are_served() {
    let app = spawn_app().await;
    let port = app.port;
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        for byte in b"GET /users HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if conn.write_all(&[*byte]).is_err() {
                break;
            }
            match conn.read(&mut buf) {
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        started.elapsed()
    });
    served_meanwhile(&app.http, "/users?limit=1", || slow.is_finished()).await;
    let cut = slow.join().expect("slow client");
    assert!(
        cut >= Duration::from_secs(4) && cut < Duration::from_secs(10),
        "the 5 s head deadline cut it off after {cut:?}"
    );
}

#[actix_web::test]
async fn slow_bodies_through_the_gateway_never_take_the_upstream_from_gets() {
    let users = spawn_app().await;
    let gw = spawn_gateway(&users.address, &["--client-body-timeout", "2s"]).await;
    // More slow clients than the gateway's pool has connections to users (512 per worker).
    let port = gw.port;
    let mut slow = Vec::new();
    for _ in 0..600 {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.write_all(slow_post("/api/users").as_bytes())
            .expect("head");
        slow.push(conn);
    }
    let started = Instant::now();
    served_meanwhile(&gw.http, "/api/users?limit=1", || {
        started.elapsed() > Duration::from_secs(1)
    })
    .await;
    let statuses = statuses_of(slow).await;
    assert!(statuses.iter().all(|s| s == "408"), "{statuses:?}");
    let metrics = gw.get("/metrics").await.text;
    assert!(
        metrics.contains(
            r#"http_requests_total{method="POST",route="/api/users",status_code="408"} 600"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics
            .contains(r#"upstream_request_duration_seconds_count{service="users",method="POST""#),
        "a slow client is never counted as an upstream exchange: {metrics}"
    );
    let users_metrics = users.get("/metrics").await.text;
    assert!(
        !users_metrics.contains(r#"method="POST""#),
        "the users role never saw them: {users_metrics}"
    );
}

#[actix_web::test]
async fn trickled_large_uploads_are_capped_so_gets_still_find_an_upstream_connection() {
    use std::sync::atomic::Ordering;

    use crate::upstream::{Behaviour, FakeUpstream};

    let users = spawn_app().await;
    // The auth service's upstream reads bodies and never answers; both upstreams share the
    // worker's pool of 512 connections.
    let sink = FakeUpstream::start(Behaviour::CountBody);
    let gw = spawn_gateway(
        &users.address,
        // Long enough that all 300 heads are in before the first places are freed, however
        // slowly this machine accepts them.
        &["--auth-url", &sink.url(), "--client-body-timeout", "6s"],
    )
    .await;
    let port = gw.port;
    let head = "POST /api/auth/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\nx";
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.write_all(head.as_bytes()).expect("head");
        slow.push(conn);
    }
    crate::helpers::poll_until(
        Duration::from_secs(10),
        "256 uploads streaming",
        async || sink.accepted.load(Ordering::SeqCst) >= 256,
    )
    .await;
    let started = Instant::now();
    served_meanwhile(&gw.http, "/api/users?limit=1", || {
        started.elapsed() > Duration::from_millis(500)
    })
    .await;
    let statuses = statuses_of(slow).await;
    let count = |s: &str| statuses.iter().filter(|x| *x == s).count();
    assert_eq!((count("408"), count("503")), (256, 44), "{statuses:?}");
    assert_eq!(sink.accepted.load(Ordering::SeqCst), 256);
    let metrics = gw.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"http_requests_shed_total{reason="uploads"} 44"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"upstream_request_duration_seconds_count{service="auth""#),
        "a slow client is never counted as an upstream exchange: {metrics}"
    );
}

#[actix_web::test]
async fn an_upload_slower_than_the_upstream_timeout_is_the_clients_408_not_a_504() {
    use crate::upstream::{Behaviour, FakeUpstream};

    let sink = FakeUpstream::start(Behaviour::CountBody);
    let gw = spawn_gateway(
        &sink.url(),
        &["--upstream-timeout", "1s", "--client-body-timeout", "30s"],
    )
    .await;
    let port = gw.port;
    let head = "POST /api/users/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\nx";
    let slow = std::thread::spawn(move || trickle(port, head, Duration::from_millis(200)));
    while !slow.is_finished() {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let Outcome {
        status,
        text,
        after,
    } = slow.join().expect("slow client");
    assert_eq!(status, 408, "{text}");
    assert!(after < Duration::from_secs(6), "cut off after {after:?}");
    let metrics = gw.get("/metrics").await.text;
    assert!(
        !metrics.contains("upstream_request_duration_seconds_count{"),
        "not the upstream's failure: {metrics}"
    );
}

#[actix_web::test]
async fn the_auth_role_cuts_off_a_trickled_token_request_with_408() {
    let keys = tempfile::tempdir().expect("temp dir");
    platform::auth::keys::generate(keys.path()).expect("a key");
    let dir = keys.path().to_str().expect("utf-8 path").to_owned();
    let mut flags = vec![
        "--issuer",
        crate::helpers::AUTH_ISSUER,
        "--signing-keys-dir",
        &dir,
        "--redis-url",
        "redis://127.0.0.1:1",
        "--client-body-timeout",
        "1s",
    ];
    flags.extend_from_slice(&crate::helpers::ARGON2_FLAGS);
    let auth = crate::helpers::spawn_auth(&flags).await;
    let port = auth.port;
    let head = "POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ng";
    let slow = std::thread::spawn(move || trickle(port, head, Duration::from_millis(200)));
    served_meanwhile(&auth.http, "/.well-known/jwks.json", || slow.is_finished()).await;
    let Outcome {
        status,
        text,
        after,
    } = slow.join().expect("slow client");
    assert_eq!(status, 408, "{text}");
    assert!(text.contains(r#""error":"request_timeout""#), "{text}");
    assert!(after < Duration::from_secs(6), "cut off after {after:?}");
}
