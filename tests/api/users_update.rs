use serde_json::json;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn put_and_patch_merge_the_given_fields() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    for method in ["PUT", "PATCH"] {
        let reply = app.json(method, &path, r#"{"name":"Ada King"}"#).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["name"], "Ada King");
        assert_eq!(reply.body["email"], "ada@example.com");
        assert_eq!(reply.body["created_at"], user["created_at"]);
        assert!(reply.body["updated_at"].as_str() >= user["updated_at"].as_str());
    }
    let reply = app
        .json("PATCH", &path, r#"{"email":"countess@example.com"}"#)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.get(&path).await.body, reply.body);
    // The old email is free again, the new one is taken.
    app.create_user("Someone", "ada@example.com").await;
    app.json(
        "POST",
        "/users",
        r#"{"name":"X","email":"COUNTESS@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
    assert_eq!(app.stored_counts(), (2, 2, 2, 2));
}

#[actix_web::test]
async fn update_to_an_email_of_another_user_returns_409_and_changes_nothing() {
    let app = spawn_app().await;
    let ada = app.create_user("Ada", "ada@example.com").await;
    app.create_user("Grace", "grace@example.com").await;
    let path = format!("/users/{}", ada["id"].as_str().unwrap_or_default());
    app.json(
        "PUT",
        &path,
        r#"{"name":"Ada","email":"Grace@example.com"}"#,
    )
    .await
    .assert_error(409, "duplicate_email");
    assert_eq!(app.get(&path).await.body, ada);
    // Changing only the case of one's own email is allowed.
    let reply = app
        .json("PUT", &path, r#"{"email":"ADA@example.com"}"#)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.stored_counts(), (2, 2, 2, 2));
}

#[actix_web::test]
async fn update_with_bad_input_returns_the_right_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    app.json("PUT", &path, "{}")
        .await
        .assert_error(400, "validation_error");
    app.json("PUT", &path, r#"{"role":"admin"}"#)
        .await
        .assert_error(400, "validation_error");
    app.json("PUT", &path, r#"{"name":""}"#)
        .await
        .assert_error(400, "validation_error");
    app.json("PUT", &path, r#"{"email":7}"#)
        .await
        .assert_error(400, "validation_error");
    app.json("PATCH", &path, "{")
        .await
        .assert_error(400, "invalid_json");
    let big = json!({"name": "x".repeat(20_000)}).to_string();
    app.json("PATCH", &path, &big)
        .await
        .assert_error(413, "payload_too_large");
    let req = app
        .client
        .put(app.url(&path))
        .insert_header(("Content-Type", "application/xml"));
    app.send(req, Some("<name/>"))
        .await
        .assert_error(415, "unsupported_media_type");
    app.json("PUT", "/users/nope", r#"{"name":"X"}"#)
        .await
        .assert_error(400, "validation_error");
    let missing = format!("/users/{}", uuid::Uuid::new_v4());
    app.json("PUT", &missing, r#"{"name":"X"}"#)
        .await
        .assert_error(404, "user_not_found");
    assert_eq!(app.get(&path).await.body, user);
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));
}
