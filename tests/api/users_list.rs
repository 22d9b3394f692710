use std::collections::HashSet;

use serde_json::Value;

use crate::helpers::{Reply, spawn_app};

/// Where the store lists a user: by creation millisecond, then by id. Two creates can land in
/// one millisecond, so creation order alone does not say which comes first.
fn list_position(user: &Value) -> (i64, String) {
    let created = user["created_at"].as_str().expect("created_at");
    (
        platform::timestamp::parse_millis(created).expect("an RFC 3339 created_at"),
        user["id"].as_str().expect("id").to_owned(),
    )
}

fn in_list_order(mut users: Vec<Value>) -> Vec<Value> {
    users.sort_by_key(list_position);
    users
}

fn next_link(reply: &Reply) -> Option<String> {
    let link = reply.header("link")?;
    let (target, rel) = link.split_once(';')?;
    assert_eq!(rel.trim(), r#"rel="next""#);
    Some(
        target
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned(),
    )
}

#[actix_web::test]
async fn list_returns_a_plain_array_oldest_first_with_the_total() {
    let app = spawn_app().await;
    let empty = app.get("/users").await;
    assert_eq!(
        (empty.status, empty.body.clone()),
        (200, serde_json::json!([]))
    );
    assert_eq!(empty.header("x-total-count").as_deref(), Some("0"));
    assert_eq!(empty.header("link"), None);

    let a = app.create_user("A", "a@example.com").await;
    let b = app.create_user("B", "b@example.com").await;
    let reply = app.get("/users").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Value::Array(in_list_order(vec![a, b])));
    assert_eq!(reply.header("x-total-count").as_deref(), Some("2"));
    assert_eq!(reply.header("link"), None);
}

#[actix_web::test]
async fn pages_visit_every_user_exactly_once_oldest_first_even_with_equal_timestamps() {
    let app = spawn_app().await;
    // Twelve users created in the same millisecond (written as our scripts write them) …
    let same_ms = "2026-01-01T00:00:00.000Z";
    let score = "1767225600000";
    let mut created = HashSet::new();
    for i in 0..12 {
        let id = uuid::Uuid::new_v4().to_string();
        created.insert(id.clone());
        let json = format!(
            r#"{{"id":"{id}","name":"Tie {i}","email":"tie{i}@example.com","created_at":"{same_ms}","updated_at":"{same_ms}"}}"#
        );
        app.redis.cli(&["SET", &format!("user:{id}"), &json]);
        app.redis.cli(&["SADD", "users:index", &id]);
        app.redis.cli(&["ZADD", "users:by_created", score, &id]);
        app.redis
            .cli(&["SET", &format!("users:email:tie{i}@example.com"), &id]);
    }
    // … and thirteen more through the API.
    for i in 0..13 {
        let user = app
            .create_user(&format!("User {i}"), &format!("user{i}@example.com"))
            .await;
        created.insert(user["id"].as_str().expect("id").to_owned());
    }

    let mut seen = Vec::new();
    let mut path = "/users?limit=5".to_owned();
    let mut pages = 0;
    loop {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("x-total-count").as_deref(), Some("25"));
        let page = reply.body.as_array().expect("array").clone();
        assert!(page.len() <= 5);
        seen.extend(page);
        pages += 1;
        match next_link(&reply) {
            Some(next) => {
                assert!(next.starts_with("/users?limit=5&cursor="), "{next}");
                path = next;
            }
            None => break,
        }
        assert!(pages < 20, "pagination does not end");
    }
    assert_eq!(pages, 5);
    let ids = |users: &[Value]| -> Vec<String> {
        users
            .iter()
            .map(|u| u["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let listed = ids(&seen);
    assert_eq!(listed.len(), 25);
    assert_eq!(
        listed.iter().cloned().collect::<HashSet<_>>(),
        created,
        "every user once"
    );
    assert_eq!(
        listed,
        ids(&in_list_order(seen.clone())),
        "oldest first, equal timestamps ordered by id"
    );
}

#[actix_web::test]
async fn the_next_link_carries_the_forwarded_prefix() {
    let app = spawn_app().await;
    app.create_user("A", "a@example.com").await;
    app.create_user("B", "b@example.com").await;
    let req = app
        .client
        .get(app.url("/users?limit=1"))
        .insert_header(("X-Forwarded-Prefix", "/api"));
    let reply = app.send(req, None).await;
    let next = next_link(&reply).expect("a next link");
    assert!(next.starts_with("/api/users?limit=1&cursor="), "{next}");
}

#[actix_web::test]
async fn bad_limit_or_cursor_returns_400_naming_the_field() {
    let app = spawn_app().await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("limit=-5", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=MTIzOm5vdC1hLXV1aWQ", "cursor"),
    ] {
        let reply = app.get(&format!("/users?{query}")).await;
        let err = reply.assert_error(400, "validation_error");
        assert_eq!(err["details"][0]["field"], field, "{query}");
    }
    assert_eq!(app.get("/users?limit=1000").await.status, 200);
}
