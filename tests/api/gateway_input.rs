//! The gateway's answers to unusual input and to an upstream's own failures: bad input is the
//! client's 4xx, an upstream's failure is a 5xx, never the other way round.

use std::time::Duration;

use crate::helpers::{TestGateway, spawn_app, spawn_gateway, wait_until};
use crate::upstream::{Behaviour, FakeUpstream, raw_request};

fn wait_for_access_line(gw: &TestGateway, path: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(5), || gw.access_line(path).is_some());
    gw.access_line(path).expect("access line")
}

/// `raw_request`, past an interim `100 Continue`: the final status and its body.
fn final_answer(port: u16, request: &str) -> (u16, String) {
    let (status, _, rest) = raw_request(port, request);
    if status != 100 {
        return (status, rest);
    }
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((&rest, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or(0), body.to_owned())
}

#[actix_web::test]
async fn expect_100_continue_is_met_by_the_gateway_and_never_sent_upstream() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let gw = spawn_gateway(&echo.url(), &[]).await;
    // Without a body (awc refused such a request: a 502 that blamed the upstream) and with one.
    for request in [
        "GET /api/users/headers HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        "POST /api/users/headers HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    ] {
        let (status, body) = final_answer(gw.port, request);
        assert_eq!(status, 200, "{request}: {body}");
        let seen: serde_json::Value = serde_json::from_str(body.trim()).expect("echo JSON");
        assert!(seen["headers"].get("expect").is_none(), "{seen}");
    }
}

#[actix_web::test]
async fn an_expectation_other_than_100_continue_is_refused_with_417() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let gw = spawn_gateway(&echo.url(), &[]).await;
    let (status, _, body) = raw_request(
        gw.port,
        "GET /api/users/headers HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 417, "{body}");
    assert!(body.contains(r#""error":"expectation_failed""#), "{body}");
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn malformed_chunked_framing_gets_400_an_access_line_and_a_metric() {
    let users = spawn_app().await;
    let gw = spawn_gateway(&users.address, &[]).await;
    let request = "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    let (direct, _, body) = raw_request(users.port, &request.replace("/api/users", "/users"));
    assert_eq!(direct, 400, "the users role itself: {body}");
    let (status, _, body) = raw_request(gw.port, request);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(r#""error":"validation_error""#), "{body}");
    let line = wait_for_access_line(&gw, "/api/users");
    assert_eq!(line["status"], 400, "{line}");
    let metrics = gw.get("/metrics").await.text;
    assert!(
        metrics.contains(
            r#"http_requests_total{method="POST",route="/api/users",status_code="400"} 1"#
        ),
        "{metrics}"
    );
    assert_eq!(users.stored_counts(), (0, 0, 0, 0));
}

#[actix_web::test]
async fn an_upstream_408_is_never_passed_on_as_the_clients_fault() {
    let upstream = FakeUpstream::start(Behaviour::RequestTimeout {
        every_connection: true,
    });
    let gw = spawn_gateway(&upstream.url(), &[]).await;
    gw.get("/api/users")
        .await
        .assert_error(502, "upstream_unavailable");
    gw.json("POST", "/api/users", "{}")
        .await
        .assert_error(502, "upstream_unavailable");
    let metrics = gw.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"upstream_request_duration_seconds_count{service="users",method="POST",status_code="502"} 1"#),
        "counted as the upstream's failure: {metrics}"
    );
}

#[actix_web::test]
async fn a_get_the_upstream_timed_out_on_is_sent_once_more() {
    let upstream = FakeUpstream::start(Behaviour::RequestTimeout {
        every_connection: false,
    });
    let gw = spawn_gateway(&upstream.url(), &[]).await;
    let reply = gw.get("/api/users").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}
