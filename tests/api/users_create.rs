use serde_json::json;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn create_returns_201_the_user_and_its_location() {
    let app = spawn_app().await;
    let reply = app
        .json(
            "POST",
            "/users",
            r#"{"name":"  Ada Lovelace ","email":"Ada@Example.com","role":"admin"}"#,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let user = &reply.body;
    let id = user["id"].as_str().expect("id");
    assert_eq!(
        uuid::Uuid::parse_str(id).map(|u| u.get_version_num()).ok(),
        Some(4)
    );
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["email"], "Ada@Example.com");
    assert!(
        user.get("role").is_none(),
        "unknown fields are ignored: {user}"
    );
    let created = user["created_at"].as_str().expect("created_at");
    assert_eq!(created.len(), 24, "{created}");
    assert!(created.ends_with('Z') && created.as_bytes()[19] == b'.');
    assert_eq!(user["updated_at"], user["created_at"]);
    assert_eq!(reply.header("location"), Some(format!("/users/{id}")));
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));

    let stored: serde_json::Value =
        serde_json::from_str(&app.redis.cli(&["GET", &format!("user:{id}")])).expect("stored JSON");
    assert_eq!(&stored, user);
}

#[actix_web::test]
async fn create_with_bad_input_returns_400_and_writes_nothing() {
    let app = spawn_app().await;
    let cases = [
        (r#"{"name":"Ada""#, "invalid_json", None),
        ("not json", "invalid_json", None),
        ("[1,2]", "validation_error", Some("body")),
        (
            r#"{"email":"ada@example.com"}"#,
            "validation_error",
            Some("name"),
        ),
        (r#"{"name":"Ada"}"#, "validation_error", Some("email")),
        (
            r#"{"name":42,"email":"ada@example.com"}"#,
            "validation_error",
            Some("name"),
        ),
        (
            r#"{"name":"Ada","email":["ada@example.com"]}"#,
            "validation_error",
            Some("email"),
        ),
        (
            r#"{"name":"   ","email":"ada@example.com"}"#,
            "validation_error",
            Some("name"),
        ),
        (
            r#"{"name":"Ada","email":"ada.example.com"}"#,
            "validation_error",
            Some("email"),
        ),
        (
            r#"{"name":"Ada","email":"ada@example"}"#,
            "validation_error",
            Some("email"),
        ),
    ];
    for (body, code, field) in cases {
        let reply = app.json("POST", "/users", body).await;
        let err = reply.assert_error(400, code);
        if let Some(field) = field {
            assert_eq!(err["details"][0]["field"], field, "{body} → {err}");
            assert!(
                err["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(field)),
                "{err}"
            );
        }
    }
    let long_name = "x".repeat(101);
    let reply = app
        .json(
            "POST",
            "/users",
            &json!({"name": long_name, "email": "a@b.co"}).to_string(),
        )
        .await;
    reply.assert_error(400, "validation_error");
    assert_eq!(app.stored_counts(), (0, 0, 0, 0));
}

#[actix_web::test]
async fn create_with_taken_email_returns_409_whatever_its_case() {
    let app = spawn_app().await;
    app.create_user("Ada", "ada@example.com").await;
    let reply = app
        .json(
            "POST",
            "/users",
            r#"{"name":"Other","email":" ADA@example.COM "}"#,
        )
        .await;
    reply.assert_error(409, "duplicate_email");
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));
}

#[actix_web::test]
async fn create_with_body_over_16_kib_returns_413() {
    let app = spawn_app().await;
    let name = "x".repeat(17 * 1024);
    let reply = app
        .json(
            "POST",
            "/users",
            &json!({"name": name, "email": "a@b.co"}).to_string(),
        )
        .await;
    reply.assert_error(413, "payload_too_large");
    // The service keeps serving on new connections.
    app.create_user("Ada", "ada@example.com").await;
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));
}

#[actix_web::test]
async fn create_without_json_content_type_returns_415() {
    let app = spawn_app().await;
    let req = app
        .client
        .post(app.url("/users"))
        .insert_header(("Content-Type", "text/plain"));
    let reply = app
        .send(req, Some(r#"{"name":"Ada","email":"ada@example.com"}"#))
        .await;
    reply.assert_error(415, "unsupported_media_type");
    let reply = app
        .send(
            app.client.post(app.url("/users")),
            Some(r#"{"name":"Ada","email":"ada@example.com"}"#),
        )
        .await;
    reply.assert_error(415, "unsupported_media_type");
    assert_eq!(app.stored_counts(), (0, 0, 0, 0));
}
