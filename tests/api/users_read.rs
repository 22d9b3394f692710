use crate::helpers::spawn_app;

#[actix_web::test]
async fn get_returns_the_stored_user() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let reply = app
        .get(&format!(
            "/users/{}",
            user["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, user);
}

#[actix_web::test]
async fn get_with_a_malformed_id_returns_400_naming_id() {
    let app = spawn_app().await;
    for id in [
        "42",
        "not-a-uuid",
        "5b0d7c1e8f7a4a8e9a551f2b3c4d5e6f",
        "5b0d7c1e-8f7a-4a8e-9a55-1f2b3c4d5e6z",
    ] {
        let reply = app.get(&format!("/users/{id}")).await;
        let err = reply.assert_error(400, "validation_error");
        assert_eq!(err["details"][0]["field"], "id");
    }
}

#[actix_web::test]
async fn get_of_an_unknown_user_returns_404_user_not_found() {
    let app = spawn_app().await;
    let reply = app.get(&format!("/users/{}", uuid::Uuid::new_v4())).await;
    reply.assert_error(404, "user_not_found");
}

#[actix_web::test]
async fn a_user_written_by_the_seeds_is_returned_byte_for_byte() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let raw = format!(
        r#"{{"id":"{id}","name":"Seed User","email":"seed@example.com","created_at":"2025-01-02T03:04:05.678Z","updated_at":"2025-02-03T04:05:06.789Z"}}"#
    );
    app.redis.cli(&["SET", &format!("user:{id}"), &raw]);
    app.redis.cli(&["SADD", "users:index", &id]);
    let reply = app.get(&format!("/users/{id}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, raw);
}
