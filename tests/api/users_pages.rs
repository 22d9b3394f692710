//! Pages that cannot be made expensive: `users:by_created_lex`, its upgrade from a Redis that
//! has only `users:by_created`, and its cost measured by Redis itself.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use deadpool_redis::redis;
use serde_json::Value;

use crate::helpers::{RedisServer, TestApp, poll_until, run_binary, spawn_app, spawn_app_with};

const GROUP_MS: i64 = 1_767_225_600_000;
const GROUP_AT: &str = "2026-01-01T00:00:00.000Z";

/// A user as an older version left it: the seeds' `user:<id>` and `users:index`, its email
/// guard, and `users:by_created` at `score`, but no `users:by_created_lex`. Written in one
/// pipeline per call.
fn write_old_layout(redis: &RedisServer, users: &[(String, &str, i64)]) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    for chunk in users.chunks(5000) {
        let mut pipe = redis::pipe();
        for (id, created_at, score) in chunk {
            let json = format!(
                r#"{{"id":"{id}","name":"Seed {id}","email":"{id}@example.com","created_at":"{created_at}","updated_at":"{created_at}"}}"#
            );
            pipe.set(format!("user:{id}"), json)
                .ignore()
                .sadd("users:index", id)
                .ignore()
                .zadd("users:by_created", id, *score)
                .ignore()
                .set(format!("users:email:{id}@example.com"), id)
                .ignore();
        }
        pipe.exec(&mut conn).expect("pipeline");
    }
}

/// A cursor as every version so far encodes it: base64url of `<ms>:<id>`.
fn cursor(score: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{score}:{id}"))
}

fn ids(users: &Value) -> Vec<String> {
    users
        .as_array()
        .expect("array")
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .collect()
}

/// Every user by following the `Link`s from `first`.
async fn walk(app: &TestApp, first: &str) -> (Vec<Value>, usize) {
    let (mut seen, mut pages, mut path) = (Vec::new(), 0, first.to_owned());
    loop {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        seen.extend(reply.body.as_array().expect("array").iter().cloned());
        pages += 1;
        let Some(link) = reply.header("link") else {
            return (seen, pages);
        };
        let target = link.split_once(';').expect("link").0.trim();
        path = target
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        assert!(pages < 10_000, "pagination does not end");
    }
}

/// Redis' own microseconds per call of each command since the last `CONFIG RESETSTAT`.
fn usec_per_call(redis: &RedisServer) -> Vec<(String, f64)> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let per_call = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("usec_per_call="))?;
            Some((name.to_owned(), per_call.parse().ok()?))
        })
        .collect()
}

#[actix_web::test]
async fn a_forged_cursor_at_the_end_of_a_30000_user_group_is_one_short_range() {
    let app = spawn_app().await;
    let group: Vec<(String, &str, i64)> = (0..30_000)
        .map(|_| (uuid::Uuid::new_v4().to_string(), GROUP_AT, GROUP_MS))
        .collect();
    write_old_layout(&app.redis, &group);

    // The first list after the upgrade builds users:by_created_lex, then answers from it.
    let first = app.get("/users?limit=1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-total-count").as_deref(), Some("30000"));
    assert_eq!(app.redis.cli(&["ZCARD", "users:by_created_lex"]), "30000");
    let lowest = group.iter().map(|(id, ..)| id).min().expect("users");
    assert_eq!(ids(&first.body), vec![lowest.clone()]);

    // A cursor forged at the end of the group (the old script skipped the whole group in
    // batches: 3.9 s of Redis time at limit=1), and one in its middle.
    app.redis.cli(&["CONFIG", "RESETSTAT"]);
    let end = cursor(GROUP_MS, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    let started = Instant::now();
    let reply = app.get(&format!("/users?limit=1&cursor={end}")).await;
    let took = started.elapsed();
    assert_eq!(
        (reply.status, reply.body.clone()),
        (200, serde_json::json!([]))
    );
    assert_eq!(reply.header("link"), None);
    assert!(took < Duration::from_millis(500), "{took:?}");

    let middle = cursor(GROUP_MS, "80000000-0000-4000-8000-000000000000");
    let reply = app.get(&format!("/users?limit=7&cursor={middle}")).await;
    let mut after: Vec<&String> = group
        .iter()
        .map(|(id, ..)| id)
        .filter(|id| id.as_str() > "80000000-0000-4000-8000-000000000000")
        .collect();
    after.sort();
    let expected: Vec<String> = after.iter().take(7).map(|id| (*id).clone()).collect();
    assert_eq!(ids(&reply.body), expected);
    assert!(reply.header("link").is_some());

    // Redis' own time: every command the two pages ran stayed far below a millisecond's
    // scale (the old page script: 3,924,926 µs per call here at limit=1; 10 ms is generous
    // for a loaded test machine).
    let stats = usec_per_call(&app.redis);
    assert!(
        stats.iter().any(|(name, _)| name == "zrangebylex"),
        "{stats:?}"
    );
    for (name, per_call) in &stats {
        if name != "config" && name != "info" {
            assert!(*per_call < 10_000.0, "{name}: {per_call} µs per call");
        }
    }
}

#[actix_web::test]
async fn pages_of_7_visit_every_user_once_in_time_then_id_order_across_groups() {
    let app = spawn_app().await;
    let mut users: Vec<(String, &str, i64)> = Vec::new();
    let new_id = || uuid::Uuid::new_v4().to_string();
    // A group sharing one millisecond, unreadable timestamps (score 0, as reindex scores
    // them), a time before 1970, and single users at other times.
    users.extend((0..60).map(|_| (new_id(), GROUP_AT, GROUP_MS)));
    users.extend((0..15).map(|_| (new_id(), "not a time", 0)));
    users.extend((0..3).map(|_| (new_id(), "1969-12-31T23:59:59.000Z", -1000)));
    users.extend([
        (new_id(), "2024-05-05T10:00:00.000Z", 1_714_903_200_000),
        (new_id(), "2026-01-01T00:00:00.001Z", GROUP_MS + 1),
        (new_id(), "2025-12-31T23:59:59.999Z", GROUP_MS - 1),
    ]);
    write_old_layout(&app.redis, &users);
    // And some through the API, after the upgrade.
    let mut made = Vec::new();
    for i in 0..5 {
        let user = app
            .create_user(&format!("New {i}"), &format!("new{i}@example.com"))
            .await;
        let id = user["id"].as_str().expect("id").to_owned();
        let at = user["created_at"].as_str().expect("created_at").to_owned();
        made.push((id, at));
    }
    let mut expected: Vec<(i64, String)> = users
        .iter()
        .map(|(id, _, score)| (*score, id.clone()))
        .chain(made.iter().map(|(id, at)| {
            (
                platform::timestamp::parse_millis(at).expect("time"),
                id.clone(),
            )
        }))
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();

    let (seen, pages) = walk(&app, "/users?limit=7").await;
    let listed = ids(&Value::Array(seen));
    assert_eq!(listed.len(), expected.len());
    assert_eq!(listed.iter().collect::<HashSet<_>>().len(), listed.len());
    assert_eq!(
        listed, expected,
        "(created_at ms, id) order, each user once"
    );
    assert_eq!(pages, expected.len().div_ceil(7));

    // A cursor in the encoding every earlier version gave out still continues right after it.
    let (pos, (old_score, old_id)) = (20, {
        let id = &expected[20];
        let score = users
            .iter()
            .find(|(u, ..)| u == id)
            .map(|(_, _, s)| *s)
            .expect("seeded");
        (score, id.clone())
    });
    let reply = app
        .get(&format!(
            "/users?limit=3&cursor={}",
            cursor(old_score, &old_id)
        ))
        .await;
    assert_eq!(ids(&reply.body), expected[pos + 1..pos + 4].to_vec());

    // Deletes keep both ordered indexes in step.
    let gone = &made[0].0;
    assert_eq!(app.delete(&format!("/users/{gone}")).await.status, 204);
    let lex = app.redis.cli(&["ZCARD", "users:by_created_lex"]);
    assert_eq!(lex, app.redis.cli(&["ZCARD", "users:by_created"]));
    assert_eq!(lex, (expected.len() - 1).to_string());
}

#[actix_web::test]
async fn a_sync_removes_what_an_older_version_deleted_and_reindex_rebuilds_the_index() {
    let app = spawn_app().await;
    let users: Vec<(String, &str, i64)> = (0..10)
        .map(|i| (uuid::Uuid::new_v4().to_string(), GROUP_AT, GROUP_MS + i))
        .collect();
    write_old_layout(&app.redis, &users);
    assert_eq!(ids(&app.get("/users").await.body).len(), 10);
    // An older version, still running during a rolling update, deletes without touching
    // users:by_created_lex: the page skips the missing user, and a sync drops its entry.
    let gone = &users[3].0;
    app.redis.cli(&["DEL", &format!("user:{gone}")]);
    app.redis.cli(&["SREM", "users:index", gone]);
    app.redis.cli(&["ZREM", "users:by_created", gone]);
    let listed = ids(&app.get("/users").await.body);
    assert_eq!(listed.len(), 9);
    assert!(!listed.contains(gone));

    // `platform users reindex` rebuilds users:by_created_lex from nothing.
    app.redis.cli(&["DEL", "users:by_created_lex"]);
    let (code, _, err) = run_binary(&["users", "reindex", "--redis-url", &app.redis.url()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(app.redis.cli(&["ZCARD", "users:by_created_lex"]), "9");
    let members = app
        .redis
        .cli(&["ZRANGE", "users:by_created_lex", "0", "-1"]);
    assert!(!members.contains(gone.as_str()));
    let first = members.lines().next().expect("a member");
    assert_eq!(first, format!("00{}:{}", GROUP_MS, users[0].0));
}

#[actix_web::test]
async fn a_redis_an_older_version_wrote_gets_the_index_when_the_role_starts() {
    let redis = RedisServer::start();
    let mut users: Vec<(String, &str, i64)> = (0..1000)
        .map(|i| (uuid::Uuid::new_v4().to_string(), GROUP_AT, GROUP_MS + i % 3))
        .collect();
    write_old_layout(&redis, &users);
    let app = spawn_app_with(redis, &[]).await;
    poll_until(
        Duration::from_secs(10),
        "the index is built at start",
        async || app.redis.cli(&["ZCARD", "users:by_created_lex"]) == "1000",
    )
    .await;
    users.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
    let (seen, pages) = walk(&app, "/users?limit=100").await;
    assert_eq!(pages, 10);
    let expected: Vec<String> = users.into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids(&Value::Array(seen)), expected);
}
