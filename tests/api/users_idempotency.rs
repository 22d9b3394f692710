//! `Idempotency-Key` on POST /users: a retry answers the first result, never a second user.

use std::time::Duration;

use futures_util::future::join_all;

use crate::helpers::{
    Http, RedisServer, Reply, TestApp, poll_until, spawn_app, spawn_app_with, spawn_gateway,
};

const ADA: &str = r#"{"name":"Ada Lovelace","email":"ada@example.com"}"#;

async fn post_with_key(http: &Http, path: &str, key: &str, body: &str) -> Reply {
    let req = http
        .client
        .post(http.url(path))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Idempotency-Key", key));
    http.send(req, Some(body)).await
}

fn users_stored(app: &TestApp) -> (usize, usize, usize, usize) {
    app.stored_counts()
}

#[actix_web::test]
async fn a_retry_with_the_same_key_answers_the_first_result_and_makes_no_second_user() {
    let app = spawn_app().await;
    let first = post_with_key(&app, "/users", "retry-1", ADA).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    // The same JSON, spaced and ordered differently, is the same request.
    for body in [
        ADA,
        r#"{ "email": "ada@example.com", "name": "Ada Lovelace" }"#,
    ] {
        let again = post_with_key(&app, "/users", "retry-1", body).await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(again.text, first.text);
        assert_eq!(again.header("location"), first.header("location"));
        assert_eq!(
            again.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    }
    assert_eq!(users_stored(&app), (1, 1, 1, 1));
    // The first answer, even after the user changed.
    let id = first.body["id"].as_str().expect("id");
    let renamed = app
        .json("PATCH", &format!("/users/{id}"), r#"{"name":"Countess"}"#)
        .await;
    assert_eq!(renamed.status, 200);
    assert_eq!(
        post_with_key(&app, "/users", "retry-1", ADA).await.text,
        first.text
    );
    // Without a key, the same body is a second attempt at the email, as before.
    app.json("POST", "/users", ADA)
        .await
        .assert_error(409, "duplicate_email");
    // The record: fingerprint, status, id, body, with a lifetime of 24 h by default.
    let ttl: u64 = app
        .redis
        .cli(&["TTL", "idempotency:users:retry-1"])
        .parse()
        .expect("a TTL");
    assert!((86_000..=86_400).contains(&ttl), "{ttl}");
}

#[actix_web::test]
async fn the_same_key_with_another_body_is_422_and_creates_nothing() {
    let app = spawn_app().await;
    assert_eq!(post_with_key(&app, "/users", "k", ADA).await.status, 201);
    let other = r#"{"name":"Grace Hopper","email":"grace@example.com"}"#;
    post_with_key(&app, "/users", "k", other)
        .await
        .assert_error(422, "idempotency_key_reused");
    assert_eq!(users_stored(&app), (1, 1, 1, 1));
    // Another key is another request.
    assert_eq!(post_with_key(&app, "/users", "k2", other).await.status, 201);
}

#[actix_web::test]
async fn concurrent_creates_with_one_key_make_exactly_one_user_and_all_get_its_answer() {
    let app = spawn_app_with(RedisServer::start(), &["--redis-pool-size", "32"]).await;
    let replies = join_all((0..20).map(|_| post_with_key(&app, "/users", "burst", ADA))).await;
    let first = replies
        .iter()
        .find(|r| r.header("idempotent-replayed").is_none())
        .expect("one request made the user");
    for reply in &replies {
        // The key is recorded by the script that creates: no request ever sees it "in progress".
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(reply.text, first.text);
        assert_eq!(reply.header("location"), first.header("location"));
    }
    let made = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(made, 1);
    assert_eq!(users_stored(&app), (1, 1, 1, 1));
}

#[actix_web::test]
async fn an_expired_key_is_a_new_request() {
    let app = spawn_app_with(RedisServer::start(), &["--idempotency-ttl", "300ms"]).await;
    assert_eq!(
        post_with_key(&app, "/users", "short", ADA).await.status,
        201
    );
    poll_until(Duration::from_secs(5), "the record expires", async || {
        app.redis.cli(&["EXISTS", "idempotency:users:short"]) == "0"
    })
    .await;
    // Not a replay any more: the same body tries the email again, another body is a new user.
    post_with_key(&app, "/users", "short", ADA)
        .await
        .assert_error(409, "duplicate_email");
    let grace = r#"{"name":"Grace Hopper","email":"grace@example.com"}"#;
    let reply = post_with_key(&app, "/users", "short", grace).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("idempotent-replayed"), None);
    assert_eq!(users_stored(&app).0, 2);
}

#[actix_web::test]
async fn malformed_keys_are_400_naming_the_header() {
    let app = spawn_app().await;
    let long = "k".repeat(256);
    for key in ["", "has space", long.as_str()] {
        let reply = post_with_key(&app, "/users", key, ADA).await;
        let err = reply.assert_error(400, "validation_error");
        assert_eq!(err["details"][0]["field"], "Idempotency-Key", "{key:?}");
    }
    let non_ascii = awc::http::header::HeaderValue::from_bytes(b"caf\xc3\xa9").expect("value");
    let req = app
        .client
        .post(app.url("/users"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Idempotency-Key", non_ascii));
    app.send(req, Some(ADA))
        .await
        .assert_error(400, "validation_error");
    let twice = app
        .client
        .post(app.url("/users"))
        .insert_header(("Content-Type", "application/json"))
        .append_header(("Idempotency-Key", "a"))
        .append_header(("Idempotency-Key", "b"));
    app.send(twice, Some(ADA))
        .await
        .assert_error(400, "validation_error");
    assert_eq!(users_stored(&app).0, 0);
    // 255 visible characters are fine.
    let longest = "k".repeat(255);
    assert_eq!(
        post_with_key(&app, "/users", &longest, ADA).await.status,
        201
    );
}

#[actix_web::test]
async fn a_create_hidden_by_a_503_is_answered_to_the_retry() {
    let app = spawn_app_with(
        RedisServer::start(),
        &["--redis-timeout", "300ms", "--redis-pool-wait", "300ms"],
    )
    .await;
    // Redis holds writes past --redis-timeout (CLIENT PAUSE … WRITE: a stall): the client gets
    // a 503. The connection that timed out is dropped (src/redis.rs), so Redis may or may not
    // run the create afterwards; either way the retry answers one user, never a second.
    app.create_user("Warm", "warm@example.com").await;
    app.redis.cli(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    let stalled = post_with_key(&app, "/users", "stall", ADA).await;
    stalled.assert_error(503, "store_unavailable");
    poll_until(Duration::from_secs(5), "the pause ended", async || {
        app.redis.cli(&["SET", "probe", "1"]) == "OK"
    })
    .await;
    let ran = app.redis.cli(&["EXISTS", "idempotency:users:stall"]) == "1";
    let retry = post_with_key(&app, "/users", "stall", ADA).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    let replayed = retry.header("idempotent-replayed").as_deref() == Some("true");
    assert_eq!(
        replayed, ran,
        "replayed exactly when Redis had run the stalled create"
    );
    assert_eq!(users_stored(&app).0, 2);
}

#[actix_web::test]
async fn the_gateway_forwards_the_key() {
    let app = spawn_app().await;
    let gateway = spawn_gateway(&app.address, &[]).await;
    let first = post_with_key(&gateway, "/api/users", "via-gateway", ADA).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = post_with_key(&gateway, "/api/users", "via-gateway", ADA).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    let location = again.header("location").expect("location");
    assert!(location.starts_with("/api/users/"), "{location}");
    assert_eq!(again.header("location"), first.header("location"));
    post_with_key(
        &gateway,
        "/api/users",
        "via-gateway",
        r#"{"name":"B","email":"b@example.com"}"#,
    )
    .await
    .assert_error(422, "idempotency_key_reused");
    assert_eq!(users_stored(&app), (1, 1, 1, 1));
}
