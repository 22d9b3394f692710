use std::time::{Duration, Instant};

use crate::helpers::{RedisServer, spawn_app, spawn_app_with};

async fn wait_ready(app: &crate::helpers::TestApp, want: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if app.get("/health/ready").await.status == want {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/health/ready never answered {want} within 10 s");
}

#[actix_web::test]
async fn redis_killed_mid_run_gives_503_then_recovers_by_itself() {
    let mut app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());

    app.redis.kill();
    app.get(&path).await.assert_error(503, "store_unavailable");
    let reply = app
        .json("POST", "/users", r#"{"name":"B","email":"b@example.com"}"#)
        .await;
    let err = reply.assert_error(503, "store_unavailable");
    let text = err.to_string().to_lowercase();
    assert!(
        !text.contains("redis") && !text.contains("refused"),
        "no internals leak: {err}"
    );
    app.get("/users")
        .await
        .assert_error(503, "store_unavailable");

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["status"], "not ready");
    assert_eq!(ready.body["dependencies"]["redis"], "down");
    assert_eq!(app.get("/health/live").await.status, 200);
    // A probe's 503 is still a probe: logged at debug, not at warn on every kubelet poll.
    let probe = ready.header("x-request-id").expect("request id");
    assert!(app.log_lines().iter().any(|l| l["msg"] == "request"
        && l["request_id"] == probe.as_str()
        && l["status"] == 503
        && l["level"] == "debug"));

    // The cause is logged with the request id.
    let id = reply.header("x-request-id").expect("request id");
    assert!(app.log_lines().iter().any(|l| l["level"] == "error"
        && l["request_id"] == id.as_str()
        && l["cause"].is_string()));

    app.redis.restart();
    wait_ready(&app, 200).await;
    app.create_user("Back", "back@example.com").await;
}

#[actix_web::test]
async fn starting_with_redis_down_is_not_ready_until_it_comes_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let mut app = spawn_app_with(redis, &[]).await;
    assert_eq!(app.get("/health/live").await.status, 200);
    let ready = app.get("/health/ready").await;
    assert_eq!(
        (ready.status, ready.body["dependencies"]["redis"].as_str()),
        (503, Some("down"))
    );
    app.redis.restart();
    wait_ready(&app, 200).await;
    app.create_user("Ada", "ada@example.com").await;
}

#[actix_web::test]
async fn a_frozen_redis_times_out_into_503_instead_of_hanging() {
    let app = spawn_app_with(RedisServer::start(), &["--redis-timeout", "300ms"]).await;
    let user = app.create_user("Ada", "ada@example.com").await;
    app.redis.pause();
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    let started = Instant::now();
    app.get(&path).await.assert_error(503, "store_unavailable");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(900),
        "--redis-timeout 300ms bounds the wait, took {waited:?}"
    );
    assert_eq!(app.get("/health/ready").await.status, 503);
    assert_eq!(app.get("/health/live").await.status, 200);
    app.redis.resume();
    wait_ready(&app, 200).await;
    assert_eq!(app.get(&path).await.status, 200);
}

#[actix_web::test]
async fn a_full_redis_refuses_writes_with_503_and_loses_nothing() {
    let app = spawn_app().await;
    app.create_user("Ada", "ada@example.com").await;
    app.redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let reply = app
        .json("POST", "/users", r#"{"name":"B","email":"b@example.com"}"#)
        .await;
    reply.assert_error(503, "store_unavailable");
    app.redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));
    // Reads kept working and writes work again.
    app.create_user("B", "b@example.com").await;
}

#[actix_web::test]
async fn password_protected_redis_works_with_the_password_and_not_without() {
    let app = spawn_app_with(
        RedisServer::start_with_password("s3cret-pw"),
        &["--redis-password", "s3cret-pw"],
    )
    .await;
    assert_eq!(app.get("/health/ready").await.status, 200);
    app.create_user("Ada", "ada@example.com").await;
    assert!(
        !app.logs.contents().contains("s3cret-pw"),
        "the password is never logged"
    );

    let no_pw = spawn_app_with(RedisServer::start_with_password("other-pw"), &[]).await;
    assert_eq!(no_pw.get("/health/ready").await.status, 503);
    no_pw
        .get("/users")
        .await
        .assert_error(503, "store_unavailable");
}

#[actix_web::test]
async fn a_slow_redis_is_waited_for_up_to_the_redis_timeout() {
    let app = spawn_app_with(RedisServer::start(), &["--redis-timeout", "5s"]).await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    // Longer than redis-rs's own defaults allow (a 0.5 s reply to the pool's recycling PING,
    // then 1 s to open a new connection) and well within 5 s: only --redis-timeout may bound it.
    let resumed = app.redis.pause_for(Duration::from_secs(2));
    let started = Instant::now();
    let reply = actix_web::rt::time::timeout(Duration::from_secs(8), app.get(&path))
        .await
        .expect("the request ends within --redis-timeout and some slack");
    let waited = started.elapsed();
    resumed.join().expect("the resuming thread ran");
    assert_eq!(
        reply.status, 200,
        "a reply after {waited:?} is within --redis-timeout 5s: {:?}",
        reply.body
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "Redis was frozen while the request waited ({waited:?})"
    );
}
