//! Overload: beyond a role's --max-in-flight, or with no Redis connection free within
//! --redis-pool-wait, a request is answered 503 `overloaded` with `Retry-After` at once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::helpers::{RedisServer, poll_until, spawn_app_with, spawn_gateway};
use crate::upstream::{Behaviour, FakeUpstream};

fn shed_count(metrics: &str, reason: &str) -> u64 {
    let series = format!("http_requests_shed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series}in {metrics}"))
}

#[actix_web::test]
async fn beyond_max_in_flight_requests_get_503_at_once_while_those_in_flight_complete() {
    let upstream = FakeUpstream::start(Behaviour::Silent);
    let gw = spawn_gateway(
        &upstream.url(),
        &["--max-in-flight", "4", "--upstream-timeout", "3s"],
    )
    .await;
    assert_eq!(shed_count(&gw.get("/metrics").await.text, "in_flight"), 0);

    // Four requests the upstream holds: the cap is reached.
    let held = actix_web::rt::spawn({
        let client = gw.client.clone();
        let url = gw.url("/api/users");
        async move {
            let requests = (0..4).map(|_| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let res = client.get(url).send().await.expect("answered");
                    res.status().as_u16()
                }
            });
            join_all(requests).await
        }
    });
    poll_until(
        Duration::from_secs(5),
        "4 requests held upstream",
        async || upstream.accepted.load(Ordering::SeqCst) >= 4,
    )
    .await;

    for _ in 0..5 {
        let started = Instant::now();
        let reply = gw.get("/api/users").await;
        let took = started.elapsed();
        reply.assert_error(503, "overloaded");
        assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
        assert!(
            took < Duration::from_secs(2),
            "answered at once, took {took:?}"
        );
    }
    // A body-carrying request refused before its body was read closes its connection.
    let reply = gw.json("POST", "/api/users", "{}").await;
    reply.assert_error(503, "overloaded");
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    // Probes and scrapes are never shed.
    for path in ["/health", "/health/live", "/metrics"] {
        assert_eq!(gw.get(path).await.status, 200, "{path}");
    }
    let metrics = gw.get("/metrics").await.text;
    assert_eq!(shed_count(&metrics, "in_flight"), 6, "{metrics}");
    // Shed before routing, still counted under the route it would have taken.
    assert!(
        metrics.contains(
            r#"http_requests_total{method="GET",route="/api/users",status_code="503"} 5"#
        ),
        "{metrics}"
    );
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        4,
        "none was sent upstream"
    );

    // Those in flight complete (the upstream's timeout), then requests are admitted again.
    let statuses = held.await.expect("held requests");
    assert_eq!(statuses, vec![504; 4]);
    gw.get("/api/users")
        .await
        .assert_error(504, "upstream_timeout");
}

#[actix_web::test]
async fn a_busy_redis_pool_answers_503_overloaded_instead_of_stacking_requests() {
    let app = spawn_app_with(
        RedisServer::start(),
        &[
            "--redis-pool-size",
            "1",
            "--redis-pool-wait",
            "100ms",
            "--redis-timeout",
            "3s",
        ],
    )
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    assert_eq!(shed_count(&app.get("/metrics").await.text, "store_pool"), 0);

    // Redis answers late: the one connection is held by the first request meanwhile.
    let resumed = app.redis.pause_for(Duration::from_millis(1500));
    let requests = (0..10).map(|i| {
        let (app, path) = (&app, &path);
        async move {
            // The first one takes the connection; the others come when it is taken.
            actix_web::rt::time::sleep(Duration::from_millis(if i == 0 { 0 } else { 200 })).await;
            let started = Instant::now();
            let reply = app.get(path).await;
            (reply, started.elapsed())
        }
    });
    let replies = join_all(requests).await;
    resumed.join().expect("resumed");
    let mut shed = 0;
    for (reply, took) in &replies {
        if reply.status == 503 {
            reply.assert_error(503, "overloaded");
            assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
            assert!(
                took < &Duration::from_secs(1),
                "answered at once, took {took:?}"
            );
            shed += 1;
        } else {
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }
    assert!(
        shed >= 8,
        "requests beyond the pool were shed: {shed} of 10"
    );
    let metrics = app.get("/metrics").await.text;
    assert_eq!(shed_count(&metrics, "store_pool"), shed, "{metrics}");
    assert!(
        !metrics
            .contains(r#"redis_operation_duration_seconds_count{operation="get",status="error"}"#),
        "a busy pool is not a Redis error: {metrics}"
    );

    // Recovery: Redis answers again, so does the role.
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(app.get("/health/ready").await.status, 200);
}

#[test]
fn a_pool_wait_longer_than_the_redis_timeout_is_refused_at_start() {
    let (code, _, stderr) =
        crate::helpers::run_binary(&["users", "--redis-pool-wait", "3s", "--redis-timeout", "1s"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("--redis-pool-wait"), "{stderr}");
}

#[actix_web::test]
async fn the_users_role_sheds_beyond_its_own_cap_and_labels_the_route() {
    let app = spawn_app_with(
        RedisServer::start(),
        &["--max-in-flight", "1", "--redis-timeout", "5s"],
    )
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    // One request held by a frozen Redis fills the cap.
    let resumed = app.redis.pause_for(Duration::from_millis(1500));
    let (held, shed) = tokio::join!(app.get(&path), async {
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        let reply = app.get(&path).await;
        assert_eq!(app.get("/health/live").await.status, 200, "probes pass");
        reply
    });
    resumed.join().expect("resumed");
    assert_eq!(held.status, 200, "{}", held.body);
    shed.assert_error(503, "overloaded");
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains(
            r#"http_requests_total{method="GET",route="/users/{id}",status_code="503"} 1"#
        ),
        "{metrics}"
    );
    assert_eq!(shed_count(&metrics, "in_flight"), 1);
}

/// `--redis-timeout` bounds a whole operation, the wait for a permit included: with one
/// permit and Redis frozen, a request that comes 1.5 s after another waits for the permit
/// and ends at its own timeout (3 s), not at the other's end plus a timeout (4.5 s).
#[actix_web::test]
async fn the_wait_for_a_permit_counts_within_the_redis_timeout() {
    let app = spawn_app_with(
        RedisServer::start(),
        &[
            "--redis-pool-size",
            "1",
            "--redis-pool-wait",
            "3s",
            "--redis-timeout",
            "3s",
        ],
    )
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    app.redis.pause();
    let requests = [0, 1500].map(|delay| {
        let (app, path) = (&app, &path);
        async move {
            actix_web::rt::time::sleep(Duration::from_millis(delay)).await;
            let started = Instant::now();
            let reply = app.get(path).await;
            (reply.status, started.elapsed())
        }
    });
    let replies = join_all(requests).await;
    app.redis.resume();
    for (status, took) in &replies {
        assert_eq!(*status, 503, "{replies:?}");
        // The timeout (3 s) and 1 s of slack for a loaded machine; with the permit waited
        // for outside the timeout the second one ends after 4.5 s.
        assert!(*took < Duration::from_millis(4000), "{replies:?}");
    }
}
