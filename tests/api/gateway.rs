use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use awc::ClientResponse;
use futures_util::StreamExt;

use crate::helpers::{TestGateway, free_port, spawn_app, spawn_gateway, wait_until};
use crate::upstream::{Behaviour, FakeUpstream, SLOW_BODY_PAUSE, raw_request};

#[actix_web::test]
async fn crud_through_the_gateway_reaches_users_and_redis() {
    let users = spawn_app().await;
    let gw = spawn_gateway(&users.address, &[]).await;

    let created = gw
        .json(
            "POST",
            "/api/users",
            r#"{"name":"Ada","email":"ada@example.com"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.header("location"), Some(format!("/api/users/{id}")));
    gw.create_user_at("/api/users", "Grace", "grace@example.com")
        .await;

    let path = format!("/api/users/{id}");
    assert_eq!(gw.get(&path).await.body, created.body);
    let patched = gw.json("PATCH", &path, r#"{"name":"Ada King"}"#).await;
    assert_eq!(
        (patched.status, patched.body["name"].as_str()),
        (200, Some("Ada King"))
    );

    let page = gw.get("/api/users?limit=1").await;
    assert_eq!(page.body.as_array().map(Vec::len), Some(1));
    assert_eq!(page.header("x-total-count").as_deref(), Some("2"));
    let link = page.header("link").expect("next link");
    assert!(link.starts_with("</api/users?limit=1&cursor="), "{link}");
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default()
        .to_owned();
    let second = gw.get(&next).await;
    // Oldest first, ties (same creation millisecond) by id: the store's order, whatever the timing.
    let key = |user: &serde_json::Value| {
        (
            user["created_at"].as_str().unwrap_or_default().to_owned(),
            user["id"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (first, second) = (&page.body[0], &second.body[0]);
    assert!(key(first) < key(second), "{first} then {second}");
    let mut emails = [first["email"].as_str(), second["email"].as_str()];
    emails.sort_unstable();
    assert_eq!(emails, [Some("ada@example.com"), Some("grace@example.com")]);

    // The users role's errors pass through unchanged.
    gw.json(
        "POST",
        "/api/users",
        r#"{"name":"X","email":"ADA@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
    gw.get("/api/users/nope")
        .await
        .assert_error(400, "validation_error");
    let deleted = gw.delete(&path).await;
    assert_eq!(deleted.status, 204);
    gw.get(&path).await.assert_error(404, "user_not_found");
    assert_eq!(users.stored_counts(), (1, 1, 1, 1));

    // Only /api/users… is proxied; route labels are patterns, never raw ids.
    gw.get("/api/usersX").await.assert_error(404, "not_found");
    gw.get("/users").await.assert_error(404, "not_found");
    let metrics = gw.get("/metrics").await.text;
    assert!(
        metrics.contains(
            r#"http_requests_total{method="GET",route="/api/users/{tail}",status_code="200"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"http_requests_total{method="POST",route="/api/users",status_code="201"}"#)
    );
    assert!(metrics.contains(r#"upstream_request_duration_seconds_bucket{service="users",method="GET",status_code="200",le="0.001"}"#));
    // The two paths outside /api/users were never proxied and count as unmatched.
    assert!(
        metrics
            .contains(r#"http_requests_total{method="GET",route="unmatched",status_code="404"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains(&id));
}

#[actix_web::test]
async fn the_request_id_goes_end_to_end() {
    let users = spawn_app().await;
    let gw = spawn_gateway(&users.address, &[]).await;
    let req = gw
        .client
        .get(gw.url("/api/users"))
        .insert_header(("X-Request-ID", "e2e-42"));
    let reply = gw.send(req, None).await;
    assert_eq!(reply.header("x-request-id").as_deref(), Some("e2e-42"));
    let in_users = users
        .log_lines()
        .into_iter()
        .any(|l| l["request_id"] == "e2e-42" && l["route"] == "/users");
    assert!(in_users, "the users role logged the gateway's request id");

    // A new id is made when the client sends none, and users sees that one.
    let reply = gw.get("/api/users").await;
    let made = reply.header("x-request-id").expect("generated");
    assert!(
        users
            .log_lines()
            .iter()
            .any(|l| l["request_id"] == made.as_str())
    );
}

#[actix_web::test]
async fn hop_by_hop_headers_are_stripped_both_ways_and_forwarding_headers_set() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let gw = spawn_gateway(&echo.url(), &[]).await;
    let port = gw.port;
    let request = "GET /api/users/headers?x=1&y=%20 HTTP/1.1\r\nHost: edge.example\r\n\
        Connection: close, X-Hop-Req\r\nX-Hop-Req: secret\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\n\
        Upgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.9\r\n\
        X-Custom: kept\r\nX-Multi: one\r\nX-Multi: two\r\nX-Request-ID: hop-1\r\n\r\n";
    let (status, headers, body) =
        actix_web::rt::task::spawn_blocking(move || raw_request(port, request))
            .await
            .expect("raw request");
    assert_eq!(status, 200, "{body}");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let seen: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    let seen = &seen;
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["target"], "/users/headers?x=1&y=%20");
    let h = &seen["headers"];
    for stripped in [
        "x-hop-req",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "transfer-encoding",
    ] {
        assert!(
            h.get(stripped).is_none(),
            "{stripped} reached the upstream: {h}"
        );
    }
    assert_eq!(h["x-custom"], serde_json::json!(["kept"]));
    assert_eq!(h["x-multi"], serde_json::json!(["one", "two"]));
    assert_eq!(
        h["x-forwarded-for"],
        // The peer trusts no proxy: what the client claimed is not passed on.
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(h["x-forwarded-prefix"], serde_json::json!(["/api"]));
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["edge.example"]));
    assert_eq!(
        h["host"],
        serde_json::json!([format!("127.0.0.1:{}", echo.port)])
    );
    assert_eq!(h["x-request-id"], serde_json::json!(["hop-1"]));
    assert!(
        h.get("user-agent").is_none(),
        "the gateway adds no headers of its own"
    );

    // Response side.
    assert_eq!(header("x-hop-resp"), None);
    assert_eq!(header("keep-alive"), None);
    assert_eq!(header("proxy-connection"), None);
    assert_eq!(header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(header("x-request-id").as_deref(), Some("hop-1"));
    let cookies: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, vec!["a=1", "b=2"]);
}

#[actix_web::test]
async fn users_down_gives_a_fast_502_and_the_gateway_keeps_serving() {
    // A refused connection is answered at once; waiting out the (long) connect timeout instead
    // would take 5 s per request, far beyond the bound below.
    let gw = spawn_gateway(
        &format!("http://127.0.0.1:{}", free_port()),
        &["--upstream-connect-timeout", "5s"],
    )
    .await;
    let started = std::time::Instant::now();
    gw.get("/api/users")
        .await
        .assert_error(502, "upstream_unavailable");
    gw.json(
        "POST",
        "/api/users",
        r#"{"name":"A","email":"a@example.com"}"#,
    )
    .await
    .assert_error(502, "upstream_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "two 502s took {:?}",
        started.elapsed()
    );
    assert_eq!(gw.get("/health/live").await.status, 200);
    let ready = gw.get("/health/ready").await;
    assert_eq!(
        (
            ready.status,
            ready.body["dependencies"]["user_service"].as_str()
        ),
        (503, Some("down"))
    );
    assert_eq!(ready.body["status"], "not ready");
    gw.get("/somewhere/else")
        .await
        .assert_error(404, "not_found");
}

#[actix_web::test]
async fn a_silent_upstream_gives_504_and_the_gateway_keeps_serving() {
    let slow = FakeUpstream::start(Behaviour::Silent);
    let gw = spawn_gateway(&slow.url(), &["--upstream-timeout", "300ms"]).await;
    gw.get("/api/users")
        .await
        .assert_error(504, "upstream_timeout");
    assert_eq!(gw.get("/health/live").await.status, 200);
    let metrics = gw.get("/metrics").await.text;
    assert!(metrics.contains(r#"upstream_request_duration_seconds_bucket{service="users",method="GET",status_code="504""#), "{metrics}");
}

/// The gateway with `--upstream-timeout timeout` in front of an upstream that sends a head
/// announcing 100 bytes, 10 of them, then stalls; and the response head the client got.
async fn stalled_response(timeout: &str) -> (TestGateway, ClientResponse) {
    stalled_response_to(awc::http::Method::GET, "/api/users", timeout).await
}

async fn stalled_response_to(
    method: awc::http::Method,
    path: &str,
    timeout: &str,
) -> (TestGateway, ClientResponse) {
    let stall = FakeUpstream::start(Behaviour::StallBody);
    let gw = spawn_gateway(&stall.url(), &["--upstream-timeout", timeout]).await;
    let res = gw
        .client
        .request(method, gw.url(path))
        .send()
        .await
        .expect("head arrives");
    assert_eq!(res.status().as_u16(), 200);
    (gw, res)
}

#[actix_web::test]
async fn a_stalled_response_body_is_cut_at_the_upstream_timeout() {
    let (gw, mut res) = stalled_response("300ms").await;
    // The gateway cuts the connection after the 10 bytes that came (curl: "transfer closed
    // with 90 bytes remaining"); awc reports that as an error or as a short body.
    match actix_web::rt::time::timeout(Duration::from_secs(5), res.body()).await {
        Ok(Ok(body)) => assert!(body.len() < 100, "a complete body cannot have arrived"),
        Ok(Err(_)) => {}
        Err(_) => panic!("the body hung past the upstream timeout"),
    }
    assert_eq!(gw.get("/health/live").await.status, 200);
}

#[actix_web::test]
async fn a_users_url_with_a_path_prefixes_the_upstream_target() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let gw = spawn_gateway(&format!("{}/internal/", echo.url()), &[]).await;
    let reply = gw.get("/api/users/abc?limit=2&x=%20").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let seen: serde_json::Value = serde_json::from_str(&reply.text).expect("echo JSON");
    assert_eq!(seen["target"], "/internal/users/abc?limit=2&x=%20");
    let root = gw.get("/api/users").await;
    let seen: serde_json::Value = serde_json::from_str(&root.text).expect("echo JSON");
    assert_eq!(seen["target"], "/internal/users");
}

#[actix_web::test]
async fn upstream_connections_are_pooled_and_reused() {
    let upstream = FakeUpstream::start(Behaviour::KeepAlive);
    let gw = spawn_gateway(&upstream.url(), &[]).await;
    for i in 1..=20 {
        let reply = gw.get(&format!("/api/users/{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["request"], format!("GET /users/{i} HTTP/1.1"));
        assert_eq!(
            reply.body["on_this_connection"], i,
            "request {i} did not reuse the pooled connection"
        );
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn a_get_on_a_pooled_connection_the_upstream_dropped_is_sent_once_more_a_post_is_not() {
    let upstream = FakeUpstream::start(Behaviour::DropSecond);
    let gw = spawn_gateway(&upstream.url(), &[]).await;
    assert_eq!(gw.get("/api/users/first").await.status, 200);
    // The pooled connection takes the GET and closes: the gateway sends it again on a new one.
    let again = gw.get("/api/users/second").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["request"], "GET /users/second HTTP/1.1");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
    // Now that connection is pooled; it takes a body-less POST and closes: never sent twice.
    let post = gw.send(gw.client.post(gw.url("/api/users")), None).await;
    post.assert_error(502, "upstream_unavailable");
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 2);
}

#[actix_web::test]
async fn bodies_of_1_mib_stream_through_and_larger_ones_get_413() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let gw = spawn_gateway(&echo.url(), &[]).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut res = gw
        .client
        .post(gw.url("/api/users/mirror"))
        .send_body(body.clone())
        .await
        .expect("answered");
    assert_eq!(res.status().as_u16(), 200);
    let back = res.body().limit(4 * 1024 * 1024).await.expect("body");
    assert_eq!(back.len(), body.len());
    assert!(back == body, "the body came back unchanged");

    let mut too_big = body.clone();
    too_big.push(0);
    let reply = gw
        .send(gw.client.post(gw.url("/api/users/mirror")), None)
        .await;
    assert_eq!(reply.status, 200, "an empty body is fine");
    let res = gw
        .client
        .post(gw.url("/api/users/mirror"))
        .send_body(too_big.clone())
        .await
        .expect("answered");
    assert_eq!(res.status().as_u16(), 413);
    // Chunked (no Content-Length): cut off while streaming.
    let chunks = futures_util::stream::iter(
        too_big
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(actix_web::web::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let res = gw
        .client
        .post(gw.url("/api/users/mirror"))
        .send_stream(chunks)
        .await
        .expect("answered");
    assert_eq!(res.status().as_u16(), 413);
}

#[actix_web::test]
async fn a_client_that_disconnects_mid_request_leaves_nothing_open_upstream() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let gw = spawn_gateway(&echo.url(), &[]).await;
    let port = gw.port;
    {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.write_all(b"POST /api/users/mirror HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
            .expect("write");
        wait_until(Duration::from_secs(5), || {
            echo.active.load(Ordering::SeqCst) == 1
        });
    } // dropped: the client is gone mid-body
    wait_until(Duration::from_secs(5), || {
        echo.active.load(Ordering::SeqCst) == 0
    });
    assert_eq!(gw.get("/health/live").await.status, 200);
    // Logged as the client's fault (400), not as an upstream failure.
    let logs = gw.logs.contents();
    let line = logs
        .lines()
        .find(|l| l.contains("/api/users/mirror"))
        .expect("access line");
    assert!(line.contains(r#""status":400"#), "{line}");
    assert!(!logs.contains(r#""level":"error""#), "{logs}");
}

#[actix_web::test]
async fn response_bodies_reach_the_client_while_the_upstream_is_still_sending() {
    // The upstream sends 10 of 100 announced bytes and then stalls until hung up on: a proxy that
    // buffered the body whole could not pass anything on before then.
    let (_gw, mut res) = stalled_response("30s").await;
    let first = actix_web::rt::time::timeout(Duration::from_secs(5), res.next())
        .await
        .expect("the first bytes came through before the upstream finished")
        .expect("a chunk")
        .expect("not an error");
    assert_eq!(&first[..], b"0123456789");
}

#[actix_web::test]
async fn request_bodies_reach_the_upstream_while_the_client_is_still_sending() {
    // The client announces 1 MiB and sends 64 KiB of it: a proxy that buffered the body whole
    // could not pass anything on.
    let upstream = FakeUpstream::start(Behaviour::CountBody);
    let gw = spawn_gateway(&upstream.url(), &["--upstream-timeout", "30s"]).await;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    conn.write_all(
        b"POST /api/users/upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n",
    )
    .expect("head");
    conn.write_all(&[b'a'; 64 * 1024]).expect("first part");
    wait_until(Duration::from_secs(5), || {
        upstream.received.load(Ordering::SeqCst) >= 64 * 1024
    });
}

/// Waits for the access line of the request to `path` (written when its response ends).
fn wait_for_access_line(gw: &TestGateway, path: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(5), || gw.access_line(path).is_some());
    gw.access_line(path).expect("access line")
}

/// An access line of a response whose head went out as 200 and whose body did not end well.
fn assert_cut_short(line: &serde_json::Value, level: &str, error: &str) {
    assert_eq!(line["status"], 200, "the head went out as 200: {line}");
    assert_eq!(line["level"], level, "{line}");
    assert!(
        line["error"].as_str().is_some_and(|e| e.contains(error)),
        "{line}"
    );
}

#[actix_web::test]
async fn a_streamed_response_is_timed_and_logged_when_its_body_ends() {
    let slow = FakeUpstream::start(Behaviour::SlowBody);
    let gw = spawn_gateway(&slow.url(), &[]).await;
    let reply = gw.get("/api/users/slow").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, "0123456789abcdefghij");

    let line = wait_for_access_line(&gw, "/api/users/slow");
    let pause_ms = SLOW_BODY_PAUSE.as_secs_f64() * 1000.0;
    assert!(
        line["duration_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= pause_ms),
        "{line}"
    );
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["level"], "info", "{line}");
    assert!(line.get("error").is_none(), "{line}");

    // The histogram has it too: an observation above 0.25 s (the head came at once).
    let metrics = gw.get("/metrics").await.text;
    let count = |le: &str| -> u64 {
        let series = format!(
            r#"http_request_duration_seconds_bucket{{method="GET",route="/api/users/{{tail}}",status_code="200",le="{le}"}} "#
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert!(count("+Inf") > count("0.25"), "{metrics}");
}

#[actix_web::test]
async fn a_response_body_cut_at_the_upstream_timeout_is_logged_at_warn_with_its_cause() {
    let (gw, mut res) = stalled_response("300ms").await;
    let _ = actix_web::rt::time::timeout(Duration::from_secs(5), res.body()).await;

    let line = wait_for_access_line(&gw, "/api/users");
    assert_cut_short(&line, "warn", "response body failed");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms >= 300.0),
        "{line}"
    );
}

#[actix_web::test]
async fn a_client_that_leaves_mid_response_is_logged_when_it_goes() {
    let stall = FakeUpstream::start(Behaviour::StallBody);
    let gw = spawn_gateway(&stall.url(), &["--upstream-timeout", "30s"]).await;
    {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        conn.write_all(b"GET /api/users/leaving HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut head = [0u8; 64];
        let n = std::io::Read::read(&mut conn, &mut head).expect("the head arrives");
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
        assert!(
            gw.access_line("/api/users/leaving").is_none(),
            "logged before the body ended"
        );
    } // dropped: the client is gone while the upstream still owes 90 bytes

    let line = wait_for_access_line(&gw, "/api/users/leaving");
    // Info: the client leaving is not the server's fault.
    assert_cut_short(&line, "info", "connection closed");
    assert_eq!(gw.get("/health/live").await.status, 200);
}

#[actix_web::test]
async fn a_response_body_cut_at_the_deadline_counts_as_an_upstream_timeout() {
    // DELETE: no other test sees a 504 with that method, so the series is this test's alone.
    let (gw, mut res) =
        stalled_response_to(awc::http::Method::DELETE, "/api/users/stalling", "300ms").await;
    let _ = actix_web::rt::time::timeout(Duration::from_secs(5), res.body()).await;

    wait_for_access_line(&gw, "/api/users/stalling");
    let metrics = gw.get("/metrics").await.text;
    let series = r#"upstream_request_duration_seconds_count{service="users",method="DELETE",status_code="504"} "#;
    assert!(
        metrics.lines().any(|l| l.starts_with(series)),
        "the exchange failed in its body, after a 200 head: {metrics}"
    );
}
