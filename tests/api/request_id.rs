use crate::helpers::spawn_app;

#[actix_web::test]
async fn a_valid_incoming_request_id_is_echoed_and_logged() {
    let app = spawn_app().await;
    let req = app
        .client
        .get(app.url("/users"))
        .insert_header(("X-Request-ID", "trace-abc.123"));
    let reply = app.send(req, None).await;
    assert_eq!(
        reply.header("x-request-id").as_deref(),
        Some("trace-abc.123")
    );
    let line = app
        .log_lines()
        .into_iter()
        .find(|l| l["request_id"] == "trace-abc.123")
        .expect("an access log line with the id");
    assert_eq!(line["msg"], "request");
    assert_eq!(line["route"], "/users");
    assert_eq!(line["status"], 200);
}

#[actix_web::test]
async fn a_missing_or_invalid_request_id_is_replaced_by_a_uuid() {
    let app = spawn_app().await;
    let reply = app.get("/health/live").await;
    let generated = reply.header("x-request-id").expect("generated id");
    assert!(uuid::Uuid::parse_str(&generated).is_ok());

    let too_long = "x".repeat(129);
    let req = app
        .client
        .get(app.url("/health/live"))
        .insert_header(("X-Request-ID", too_long.as_str()));
    let reply = app.send(req, None).await;
    let replaced = reply.header("x-request-id").expect("replaced id");
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
}

#[actix_web::test]
async fn error_bodies_carry_the_request_id() {
    let app = spawn_app().await;
    let req = app
        .client
        .get(app.url("/users/not-a-uuid"))
        .insert_header(("X-Request-ID", "err-1"));
    let reply = app.send(req, None).await;
    assert_eq!(
        reply.assert_error(400, "validation_error")["request_id"],
        "err-1"
    );
}
