use std::time::Duration;

use deadpool_redis::redis::{self, AsyncCommands};
use serde_json::Value;

use crate::helpers::{RedisServer, poll_until, run_binary, spawn_app_with};

/// Writes a user the way the seeds' services do: `SET user:<id>` + `SADD users:index`, nothing else.
pub fn seed_user(redis: &RedisServer, name: &str, email: &str, created_at: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let json = format!(
        r#"{{"id":"{id}","name":"{name}","email":"{email}","created_at":"{created_at}","updated_at":"{created_at}"}}"#
    );
    redis.cli(&["SET", &format!("user:{id}"), &json]);
    redis.cli(&["SADD", "users:index", &id]);
    id
}

fn reindex(redis_url: &str) -> Vec<Value> {
    let (code, out, err) = run_binary(&["users", "reindex", "--redis-url", redis_url]);
    assert_eq!(code, Some(0), "stderr: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

fn summary(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|l| l["msg"] == "reindex done")
        .cloned()
        .expect("a summary line")
}

#[actix_web::test]
async fn reindex_makes_seed_data_listable_and_guards_its_emails() {
    // No users role runs yet (its reconciler would index the data before the command does).
    let redis = RedisServer::start();
    let old = seed_user(&redis, "Old", "dup@example.com", "2024-01-01T00:00:00.000Z");
    let mid = seed_user(&redis, "Mid", "mid@example.com", "2024-06-01T00:00:00.000Z");
    let young = seed_user(
        &redis,
        "Young",
        "DUP@example.com",
        "2025-01-01T00:00:00.000Z",
    );
    let dangling = uuid::Uuid::new_v4().to_string();
    redis.cli(&["SADD", "users:index", &dangling]);
    redis.cli(&["SET", "user:not-a-uuid", "whatever"]);

    let lines = reindex(&redis.url());
    let done = summary(&lines);
    assert_eq!(done["users"], 3);
    assert_eq!(done["added_to_by_created"], 3);
    assert_eq!(done["email_guards_added"], 2);
    assert_eq!(done["dangling_ids_removed"], 1);
    assert_eq!(done["duplicate_emails"], 1);
    let dup = lines
        .iter()
        .find(|l| {
            l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("duplicate email"))
        })
        .expect("reported");
    assert_eq!(
        (dup["kept_by"].as_str(), dup["also_used_by"].as_str()),
        (Some(old.as_str()), Some(young.as_str()))
    );

    let app = spawn_app_with(redis, &[]).await;
    let listed = app.get("/users").await;
    let ids: Vec<&str> = listed
        .body
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![old.as_str(), mid.as_str(), young.as_str()],
        "oldest first"
    );
    assert_eq!(listed.header("x-total-count").as_deref(), Some("3"));
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"Mid@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");

    // Running it again changes nothing.
    let again = summary(&reindex(&app.redis.url()));
    for field in [
        "added_to_index",
        "added_to_by_created",
        "email_guards_added",
        "dangling_ids_removed",
    ] {
        assert_eq!(again[field], 0, "{field}: {again}");
    }
    assert_eq!(again["users"], 3);
}

#[test]
fn reindex_against_a_down_redis_fails_with_a_clear_message() {
    let port = crate::helpers::free_port();
    let (code, _, err) = run_binary(&[
        "users",
        "reindex",
        "--redis-url",
        &format!("redis://127.0.0.1:{port}"),
        "--redis-timeout",
        "500ms",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("platform: reindex failed"), "{err}");
}

/// Writes `n` users the way the seeds' services do, pipelined; their ids.
pub async fn seed_many(url: &str, n: usize, tag: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(500) {
        let mut pipe = redis::pipe();
        for i in chunk * 500..(chunk * 500 + 500).min(n) {
            let id = uuid::Uuid::new_v4().to_string();
            let at = format!(
                "2025-01-01T00:{:02}:{:02}.{:03}Z",
                i / 60000 % 60,
                i / 1000 % 60,
                i % 1000
            );
            let json = format!(
                r#"{{"id":"{id}","name":"Seed {i}","email":"{tag}{i}@example.com","created_at":"{at}","updated_at":"{at}"}}"#
            );
            pipe.set(format!("user:{id}"), json).ignore();
            pipe.sadd("users:index", &id).ignore();
            ids.push(id);
        }
        let () = pipe.query_async(&mut conn).await.expect("seeded");
    }
    ids
}

#[actix_web::test]
async fn reindex_indexes_thousands_of_users_while_the_api_creates_and_deletes() {
    let redis = RedisServer::start();
    let seeded = seed_many(&redis.url(), 3000, "bulk").await;
    let app = spawn_app_with(redis, &[]).await;
    // Our own writes run while the command does: creates and deletes through the API.
    let writer = async {
        let mut kept = Vec::new();
        for i in 0..60 {
            let user = app
                .create_user("Live", &format!("live{i}@example.com"))
                .await;
            let id = user["id"].as_str().expect("id").to_owned();
            if i % 2 == 0 {
                app.delete(&format!("/users/{id}")).await;
            } else {
                kept.push(id);
            }
        }
        kept
    };
    let url = app.redis.url();
    let command = actix_web::rt::task::spawn_blocking(move || reindex(&url));
    let kept = writer.await;
    let lines = command.await;
    let done = summary(&lines.expect("reindex ran"));
    assert!(done["users"].as_u64().expect("users") >= 3000, "{done}");
    assert_eq!(done["duplicate_emails"], 0, "{done}");

    let expected = seeded.len() + kept.len();
    let (index, ordered, emails, users) = app.stored_counts();
    assert_eq!(
        (index, ordered, emails, users),
        (expected, expected, expected, expected)
    );
    // Every user is listed exactly once, and the count agrees.
    let mut listed = Vec::new();
    let mut path = "/users?limit=1000".to_owned();
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.header("x-total-count"), Some(expected.to_string()));
        listed.extend(
            page.body
                .as_array()
                .expect("array")
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_owned()),
        );
        let Some(link) = page.header("link") else {
            break;
        };
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
    }
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), expected);
    let mut conn = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let owner: Option<String> = conn.get("users:email:bulk7@example.com").await.unwrap();
    assert_eq!(owner.as_deref(), Some(seeded[7].as_str()));
}

#[actix_web::test]
async fn users_the_seed_service_writes_are_listed_and_guarded_without_a_manual_step() {
    // Data the seed service wrote before the switch...
    let redis = RedisServer::start();
    let before = seed_user(
        &redis,
        "Before",
        "before@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let app = spawn_app_with(redis, &[]).await;
    // ...and while both run side by side.
    let during = seed_user(
        &app.redis,
        "During",
        "During@example.com",
        "2024-02-01T00:00:00.000Z",
    );
    let more = seed_many(&app.redis.url(), 1500, "side").await;
    let expected = 2 + more.len();
    poll_until(
        Duration::from_secs(20),
        "list and count agree",
        async || {
            let page = app.get("/users?limit=1000").await;
            let count = page.header("x-total-count");
            let first: Vec<&str> = page.body.as_array().map_or(Vec::new(), |a| {
                a.iter().take(2).filter_map(|u| u["id"].as_str()).collect()
            });
            count == Some(expected.to_string())
                && page.header("link").is_some()
                && first == [before.as_str(), during.as_str()]
                && app.stored_counts() == (expected, expected, expected, expected)
        },
    )
    .await;
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"during@EXAMPLE.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
    // A user the seed service deletes leaves the list too.
    app.redis.cli(&["DEL", &format!("user:{during}")]);
    app.redis.cli(&["SREM", "users:index", &during]);
    poll_until(
        Duration::from_secs(20),
        "deleted seed user unlisted",
        async || {
            let page = app.get("/users?limit=2").await;
            page.header("x-total-count") == Some((expected - 1).to_string())
                && app
                    .redis
                    .cli(&["ZSCORE", "users:by_created", &during])
                    .trim()
                    .is_empty()
        },
    )
    .await;
}
