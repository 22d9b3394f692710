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
