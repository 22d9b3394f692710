use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Process, RedisServer, run_binary, wait_until};

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let (code, out, _) = run_binary(&["users", "--help"]);
    assert_eq!(code, Some(0));
    for needle in [
        "--host",
        "[env: HOST]",
        "--port",
        "[env: PORT]",
        "--log-level",
        "[env: LOG_LEVEL]",
        "--log-format",
        "[env: LOG_FORMAT]",
        "--shutdown-timeout",
        "[env: SHUTDOWN_TIMEOUT]",
        "--drain-time",
        "[env: DRAIN_TIME]",
        "--redis-url",
        "[env: REDIS_URL]",
        "--redis-password",
        "[env: REDIS_PASSWORD]",
        "--redis-pool-size",
        "[env: REDIS_POOL_SIZE]",
        "reindex",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
}

#[test]
fn bad_configuration_exits_non_zero_with_one_line_on_stderr() {
    for args in [
        &["users", "--port", "70000"][..],
        &["users", "--redis-url", "http://localhost:6379"],
        &["users", "--redis-url", "::nonsense"],
        &["users", "--shutdown-timeout", "later"],
        &["users", "--shutdown-timeout", "5s", "--drain-time", "6s"],
        &["users", "--no-such-flag"],
        &["nope"],
    ] {
        let (code, out, err) = run_binary(args);
        assert_ne!(code, Some(0), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?} → stderr {err:?}");
        assert!(err.starts_with("platform: "), "{err}");
        assert!(out.is_empty());
    }
}

/// The fields of an access log line besides the base ones (CONTRACT §8).
const ACCESS_FIELDS: &[&str] = &[
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "remote_addr",
    "user_agent",
];

/// Whether the server on `server_port` has read everything the client at `client` sent: the
/// client's send queue is acknowledged and the server socket's receive queue is empty (Linux
/// `/proc/net/tcp`). Then the request is in the server's hands (accepted and read), which a
/// background task's traffic to another peer cannot fake.
fn read_by_server(server_port: u16, client: std::net::SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
    let (server, client) = (
        format!(":{server_port:04X}"),
        format!(":{:04X}", client.port()),
    );
    // sl, local_address, rem_address, st, tx_queue:rx_queue, … per socket; 01 = established.
    let queues = |local: &str, remote: &str| {
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (l, r, state, queues) = (
                fields.get(1)?,
                fields.get(2)?,
                fields.get(3)?,
                fields.get(4)?,
            );
            if !l.ends_with(local) || !r.ends_with(remote) || *state != "01" {
                return None;
            }
            let (tx, rx) = queues.split_once(':')?;
            Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        })
    };
    matches!(
        (queues(&client, &server), queues(&server, &client)),
        (Some((0, _)), Some((_, 0)))
    )
}

/// The process's whole stdout once its last line (`stopped`) is in: the reader thread may
/// still be taking lines after the exit.
fn stdout_to_the_end(process: &Process) -> String {
    wait_until(Duration::from_secs(5), || {
        process.stdout().contains(r#""msg":"stopped""#)
    });
    process.stdout()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[actix_web::test]
async fn logs_are_json_lines_with_the_contract_fields_and_no_secret() {
    let redis = RedisServer::start_with_password("pw-in-env");
    let url_with_secret = format!("redis://:url-secret@127.0.0.1:{}", redis.port);
    let process = Process::users(&url_with_secret, &[], &[("REDIS_PASSWORD", "pw-in-env")]);
    let client = awc::Client::default();
    let mut res = client
        .post(process.url("/users"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Request-ID", "log-test-1"))
        .insert_header(("User-Agent", "tests/1.0"))
        .send_body(r#"{"name":"Ada","email":"ada@example.com"}"#)
        .await
        .expect("answered");
    assert_eq!(res.status().as_u16(), 201, "{:?}", res.body().await);
    let _ = client.get(process.url("/health/live")).send().await;

    crate::helpers::wait_until(Duration::from_secs(5), || {
        process.stdout().contains("log-test-1")
    });
    let out = process.stdout();
    assert!(
        !out.contains("pw-in-env") && !out.contains("url-secret"),
        "a secret was logged:\n{out}"
    );
    let lines = json_lines(&out);
    for line in &lines {
        for field in ["ts", "level", "msg", "service", "version"] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
        assert_eq!(line["service"], "users");
    }
    let start = lines
        .iter()
        .find(|l| l["msg"] == "starting")
        .expect("a start-up line");
    assert!(
        start["redis_url"]
            .as_str()
            .is_some_and(|u| u.contains(":***@127.0.0.1")),
        "{start}"
    );
    // The effective configuration, secrets masked.
    assert_eq!(start["redis_password"], "***", "{start}");
    assert_eq!(start["host"], "127.0.0.1", "{start}");
    assert_eq!(start["log_level"], "info", "{start}");
    assert_eq!(start["log_format"], "json", "{start}");
    for field in [
        "port",
        "workers",
        "redis_pool_size",
        "redis_timeout_ms",
        "shutdown_timeout_s",
    ] {
        assert!(start[field].is_number(), "{field} missing in {start}");
    }
    let access = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-1")
        .expect("access line");
    for field in ACCESS_FIELDS {
        assert!(access.get(field).is_some(), "{field} missing in {access}");
    }
    assert_eq!(
        (access["method"].as_str(), access["status"].as_u64()),
        (Some("POST"), Some(201))
    );
    assert_eq!(access["user_agent"], "tests/1.0");
    // Probes log at debug, so not at the default info level.
    assert!(
        !lines.iter().any(|l| l["path"] == "/health/live"),
        "probe logged at info"
    );
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_and_exits_0() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let mut process = Process::users(&redis.url(), &["--redis-timeout", "1500ms"], &[]);
    let ready = probe_ready(process.port);
    assert!(
        ready
            .as_deref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "{ready:?}"
    );

    // Freeze Redis so a request is in flight (waiting for it) when SIGTERM arrives.
    redis.pause();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", process.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"GET /users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    // SIGTERM only once the role has taken the request: not while it waits in the backlog.
    let client = conn.local_addr().expect("local address");
    wait_until(Duration::from_secs(10), || {
        read_by_server(process.port, client)
    });
    process.sigterm();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the in-flight request got its answer (the store timed out): {answer}"
    );
    redis.resume();

    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
    let out = stdout_to_the_end(&process);
    assert!(
        out.contains("shutting down") && out.contains("\"stopped\""),
        "{out}"
    );
}

/// `GET /health/ready` on a new connection, as the kubelet probes: the raw answer, or the
/// connection's error (refused once the listening socket is shut).
fn probe_ready(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    Ok(out)
}

/// `http_requests_in_flight` as the role reports it (the scrape asking counts itself).
fn requests_in_flight(port: u16) -> Option<u64> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("http_requests_in_flight "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[test]
fn after_sigterm_probes_fail_while_the_in_flight_request_finishes() {
    use std::io::{Read, Write};
    // Redis stays up all along: a probe can only fail because the role is shutting down.
    let redis = RedisServer::start();
    let mut process = Process::users(&redis.url(), &["--client-body-timeout", "60s"], &[]);
    let before = probe_ready(process.port);
    assert!(
        before
            .as_deref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "ready before SIGTERM: {before:?}"
    );
    // A request held in flight by its client: the head and all but the last byte of the body.
    let body = br#"{"name":"Ada","email":"ada@example.com"}"#;
    let (most, last) = body.split_at(body.len() - 1);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", process.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("write");
    conn.write_all(most).expect("write");
    // The role serves it now (the scrape asking is the other request in flight): SIGTERM
    // cannot come before the server took the connection.
    wait_until(Duration::from_secs(10), || {
        requests_in_flight(process.port).is_some_and(|n| n >= 2)
    });
    process.sigterm();
    // The role logs this once it reads as not ready; from then on, every probe (a new
    // connection) fails, answered 503 or refused, until connects are refused for good: the
    // role stopped accepting while the drain goes on.
    wait_until(Duration::from_secs(10), || {
        process.stdout().contains("shutting down")
    });
    wait_until(Duration::from_secs(10), || {
        let probe = probe_ready(process.port);
        assert!(
            !probe
                .as_deref()
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
            "ready during the drain: {probe:?}"
        );
        probe.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    // The client sends the rest: the in-flight request completes normally, then the process
    // exits 0 (its last connection gone, without waiting out the drain time).
    conn.write_all(last).expect("write the last byte");
    let mut raw = String::new();
    let _ = conn.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 201"), "{raw}");
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
}

#[actix_web::test]
async fn platform_all_serves_both_roles_in_one_process_and_stops_on_sigterm() {
    let redis = RedisServer::start();
    let (mut process, users_port) = Process::all(&redis.url());
    let gateway_port = process.port;
    let client = awc::Client::default();
    let mut created = client
        .post(format!("http://127.0.0.1:{gateway_port}/api/users"))
        .insert_header(("Content-Type", "application/json"))
        .send_body(r#"{"name":"Ada","email":"ada@example.com"}"#)
        .await
        .expect("answered");
    assert_eq!(created.status().as_u16(), 201, "{:?}", created.body().await);
    let mut direct = client
        .get(format!("http://127.0.0.1:{users_port}/users"))
        .send()
        .await
        .expect("answered");
    let listed: Value = serde_json::from_slice(&direct.body().await.expect("body")).expect("JSON");
    assert_eq!(listed[0]["email"], "ada@example.com");
    let ready = client
        .get(format!("http://127.0.0.1:{gateway_port}/health/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(ready.ok(), Some(200));

    process.sigterm();
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
    let lines = json_lines(&stdout_to_the_end(&process));
    let services: std::collections::HashSet<String> = lines
        .iter()
        .filter_map(|l| l["service"].as_str().map(str::to_owned))
        .collect();
    assert!(
        services.contains("gateway") && services.contains("users"),
        "{services:?}"
    );
    // One start-up line per role with its effective configuration.
    for (service, fields) in [
        (
            "gateway",
            &["users_url", "upstream_timeout_ms", "max_body"][..],
        ),
        (
            "users",
            &["redis_url", "redis_pool_size", "redis_password"][..],
        ),
    ] {
        let start = lines
            .iter()
            .find(|l| l["msg"] == "starting" && l["service"] == service)
            .unwrap_or_else(|| panic!("no start-up line for {service}"));
        for field in [
            "port",
            "host",
            "workers",
            "log_level",
            "log_format",
            "shutdown_timeout_s",
        ]
        .iter()
        .chain(fields)
        {
            assert!(start.get(*field).is_some(), "{field} missing in {start}");
        }
    }
    // The POST crossed both roles: one §8 access line in each, with the same request id;
    // the readiness probe is logged at debug, so not at the default level.
    let access: Vec<&Value> = lines.iter().filter(|l| l["status"] == 201).collect();
    assert_eq!(access.len(), 2, "{access:?}");
    assert_eq!(access[0]["request_id"], access[1]["request_id"]);
    let routes: std::collections::HashSet<&str> =
        access.iter().filter_map(|l| l["route"].as_str()).collect();
    assert_eq!(routes, ["/api/users", "/users"].into());
    for line in &access {
        for field in ["ts", "level", "msg", "service", "version"]
            .iter()
            .chain(ACCESS_FIELDS)
        {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
    }
    assert!(
        !lines.iter().any(|l| l["path"] == "/health/ready"),
        "probe logged at info"
    );
}

#[test]
fn a_malformed_request_is_answered_400_and_logged_below_error() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let mut process = Process::users(&redis.url(), &["--log-level", "debug"], &[]);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", process.port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    process.sigterm();
    assert_eq!(process.wait_exit(Duration::from_secs(10)), Some(0));
    let lines = json_lines(&stdout_to_the_end(&process));
    // The parse failure is there (at debug), and no client can write an error line at will.
    assert!(
        lines.iter().any(|l| l["msg"]
            .as_str()
            .is_some_and(|m| m.contains("request parse error"))
            && l["level"] == "debug"),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l["level"] == "error"), "{lines:?}");
}
