//! One round trip per store operation: the users role sends Redis only each operation's own
//! commands (no `UNWATCH` + `PING` per request, which a pool's checkout costs).

use futures_util::future::join_all;

use crate::helpers::spawn_app;

/// The `calls=` of `cmdstat_<command>` in `INFO commandstats` (0 when never called).
fn calls(stats: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[actix_web::test]
async fn n_reads_cost_redis_n_gets_and_nothing_per_request_besides() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    app.redis.cli(&["CONFIG", "RESETSTAT"]);

    // Sequential and concurrent requests alike (concurrent ones share the connection).
    const N: u64 = 300;
    for _ in 0..N / 2 {
        assert_eq!(app.get(&path).await.status, 200);
    }
    for chunk in 0..(N / 2) / 15 {
        let replies = join_all((0..15).map(|_| app.get(&path))).await;
        for reply in replies {
            assert_eq!(reply.status, 200, "chunk {chunk}: {}", reply.body);
        }
    }

    let stats = app.redis.cli(&["INFO", "commandstats"]);
    assert_eq!(calls(&stats, "get"), N, "{stats}");
    // Background tasks (the reconciler) may ask a few things; nothing grows per request.
    for command in ["ping", "unwatch", "client|setinfo", "hello", "select"] {
        assert!(calls(&stats, command) < 5, "{command} per request? {stats}");
    }
}

/// `total_connections_received` of `INFO stats` (each `cli` call counts one itself).
pub fn connections_received(app: &crate::helpers::TestApp) -> u64 {
    app.redis
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

/// A reply that times out drops the shared connection: a Redis host gone without a reset
/// (frozen here with SIGSTOP, which looks the same to the client) must not keep every later
/// request waiting on a connection that never answers again.
#[actix_web::test]
async fn a_reply_timeout_replaces_the_connection_and_requests_recover() {
    let app = crate::helpers::spawn_app_with(
        crate::helpers::RedisServer::start(),
        &["--redis-timeout", "300ms"],
    )
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());

    // Control: answered requests open no connection (only the `cli` call itself counts).
    let before = connections_received(&app);
    for _ in 0..20 {
        assert_eq!(app.get(&path).await.status, 200);
    }
    assert_eq!(
        connections_received(&app),
        before + 1,
        "one shared connection"
    );

    let before = connections_received(&app);
    app.redis.pause();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let reply = actix_web::rt::time::timeout(std::time::Duration::from_secs(5), app.get(&path))
            .await
            .expect("a frozen Redis is answered 503, not waited for");
        reply.assert_error(503, "store_unavailable");
        let waited = started.elapsed();
        assert!(
            waited < std::time::Duration::from_secs(3),
            "--redis-timeout 300ms bounds each request (took {waited:?})"
        );
    }
    app.redis.resume();
    crate::helpers::poll_until(
        std::time::Duration::from_secs(10),
        "reads answer again after Redis resumed",
        async || app.get(&path).await.status == 200,
    )
    .await;
    // The connection that timed out was replaced: at least one new connection besides the
    // `cli` call's (without the drop, the old connection answers again and none is made).
    let after = connections_received(&app);
    assert!(
        after >= before + 2,
        "a new connection after the timeout: {before} -> {after}"
    );
}

/// `NOREPLICAS` comes from a real master (`min-replicas-to-write` with too few replicas): the
/// write is answered 503 and nothing is thrown away, no reconnect per request; writes work
/// again once the replicas are back (here: the setting lifted).
#[actix_web::test]
async fn noreplicas_answers_503_and_keeps_the_connection() {
    let app = spawn_app().await;
    app.create_user("Ada", "ada@example.com").await;
    app.redis
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let before = connections_received(&app);
    for i in 0..5 {
        let body = format!(r#"{{"name":"B","email":"b{i}@example.com"}}"#);
        app.json("POST", "/users", &body)
            .await
            .assert_error(503, "store_unavailable");
    }
    // Only the `cli` call itself connected: the shared connection was kept.
    assert_eq!(connections_received(&app), before + 1);
    app.redis
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
    assert_eq!(app.stored_counts().0, 1, "nothing was stored meanwhile");
    app.create_user("B", "b@example.com").await;
}
