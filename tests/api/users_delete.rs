use crate::helpers::spawn_app;

#[actix_web::test]
async fn delete_returns_204_and_removes_the_user_from_every_index() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    app.create_user("Grace", "grace@example.com").await;
    let path = format!("/users/{}", user["id"].as_str().unwrap_or_default());
    let reply = app.delete(&path).await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.body, serde_json::Value::Null);
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));
    app.get(&path).await.assert_error(404, "user_not_found");
    app.delete(&path).await.assert_error(404, "user_not_found");
    // Its email can be used again.
    app.create_user("Ada again", "ADA@example.com").await;
}

#[actix_web::test]
async fn delete_with_a_malformed_id_returns_400() {
    let app = spawn_app().await;
    app.delete("/users/123")
        .await
        .assert_error(400, "validation_error");
}
