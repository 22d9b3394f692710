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

#[actix_web::test]
async fn an_early_error_to_a_request_with_an_unread_body_closes_the_connection() {
    // actix-web #2632: the unread body would otherwise be parsed as the next request.
    let app = spawn_app().await;
    for (request, status) in [
        (
            "POST /no/such/path HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            404,
        ),
        (
            "PATCH /users HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            405,
        ),
        (
            "POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
            415,
        ),
    ] {
        let (got, headers, body) = crate::upstream::raw_request(app.port, request);
        assert_eq!(got, status, "{request}: {body}");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "connection" && v == "close"),
            "{request}: {headers:?}"
        );
    }
    // Without a body the connection stays reusable.
    let reply = app.get("/no/such/path").await;
    assert_eq!(reply.status, 404);
    assert_ne!(reply.header("connection").as_deref(), Some("close"));
}
