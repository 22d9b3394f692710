use serde_json::Value;

use crate::helpers::{run_binary, spawn_app};

/// Writes a user the way the seeds' services do: `SET user:<id>` + `SADD users:index`, nothing else.
fn seed_user(
    redis: &crate::helpers::RedisServer,
    name: &str,
    email: &str,
    created_at: &str,
) -> String {
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
    let app = spawn_app().await;
    let old = seed_user(
        &app.redis,
        "Old",
        "dup@example.com",
        "2024-01-01T00:00:00.000Z",
    );
    let mid = seed_user(
        &app.redis,
        "Mid",
        "mid@example.com",
        "2024-06-01T00:00:00.000Z",
    );
    let young = seed_user(
        &app.redis,
        "Young",
        "DUP@example.com",
        "2025-01-01T00:00:00.000Z",
    );
    let dangling = uuid::Uuid::new_v4().to_string();
    app.redis.cli(&["SADD", "users:index", &dangling]);
    app.redis.cli(&["SET", "user:not-a-uuid", "whatever"]);

    let lines = reindex(&app.redis.url());
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
