use crate::helpers::spawn_app;

#[actix_web::test]
async fn health_endpoints_answer_with_the_seeds_bodies() {
    let app = spawn_app().await;
    let live = app.get("/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.body["status"], "alive");
    assert!(
        live.body["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(
        ready.body["dependencies"],
        serde_json::json!({"redis": "up"})
    );
    assert!(ready.body["timestamp"].is_string());

    let summary = app.get("/health").await;
    assert_eq!(summary.status, 200);
    assert_eq!(summary.body["status"], "ok");
    assert_eq!(summary.body["service"], "users");
    assert_eq!(summary.body["version"], env!("CARGO_PKG_VERSION"));
}
