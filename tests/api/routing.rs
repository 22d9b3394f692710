use crate::helpers::spawn_app;

#[actix_web::test]
async fn unknown_paths_return_404_not_found_with_the_error_body() {
    let app = spawn_app().await;
    for path in ["/", "/nope", "/users/a/b", "/api/users"] {
        app.get(path).await.assert_error(404, "not_found");
    }
}

#[actix_web::test]
async fn wrong_methods_on_known_paths_return_405() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    app.json("PUT", "/users", "{}")
        .await
        .assert_error(405, "method_not_allowed");
    app.delete("/users")
        .await
        .assert_error(405, "method_not_allowed");
    app.json("POST", &format!("/users/{id}"), "{}")
        .await
        .assert_error(405, "method_not_allowed");
}
