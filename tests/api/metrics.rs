use crate::helpers::{Http, Process, RedisServer, spawn_app};

/// The sample lines of `text` whose series starts with `prefix`, sorted.
fn samples<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    found.sort_unstable();
    found
}

#[actix_web::test]
async fn metrics_expose_the_contract_names_with_route_patterns() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap_or_default().to_owned();
    app.get(&format!("/users/{id}")).await;
    let missing = uuid::Uuid::new_v4().to_string();
    app.get(&format!("/users/{missing}")).await;
    app.get("/no/such/path").await;
    app.delete(&format!("/users/{id}")).await;
    app.create_user("Grace", "grace@example.com").await;

    let reply = app.send(app.client.get(app.url("/metrics")), None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let text = reply.body.as_str().expect("text exposition").to_owned();

    for needle in [
        r#"http_requests_total{method="GET",route="/users/{id}",status_code="200"}"#,
        r#"http_requests_total{method="GET",route="/users/{id}",status_code="404"}"#,
        r#"http_requests_total{method="POST",route="/users",status_code="201"}"#,
        r#"http_requests_total{method="GET",route="unmatched",status_code="404"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/users/{id}",status_code="200",le="0.001"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/users/{id}",status_code="200",le="10"}"#,
        r#"redis_operation_duration_seconds_bucket{operation="create",status="ok",le="+Inf"}"#,
        r#"redis_operation_duration_seconds_bucket{operation="get",status="miss",le="+Inf"}"#,
        r#"redis_operation_duration_seconds_bucket{operation="delete",status="ok",le="+Inf"}"#,
        "# TYPE http_request_duration_seconds histogram",
        "# TYPE users_total gauge",
        "users_total 1",
        "users_created_total 2",
        "users_deleted_total 1",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(
        !text.contains(&id) && !text.contains(&missing),
        "raw ids never become labels"
    );
    assert!(!text.contains("quantile="), "histograms, not summaries");
    // This role's registry counts this app's requests only, whatever other tests do.
    assert_eq!(
        samples(&text, "http_requests_total{"),
        vec![
            r#"http_requests_total{method="DELETE",route="/users/{id}",status_code="204"} 1"#,
            // The harness's own probe, once it started the app.
            r#"http_requests_total{method="GET",route="/health/live",status_code="200"} 1"#,
            r#"http_requests_total{method="GET",route="/users/{id}",status_code="200"} 1"#,
            r#"http_requests_total{method="GET",route="/users/{id}",status_code="404"} 1"#,
            r#"http_requests_total{method="GET",route="unmatched",status_code="404"} 1"#,
            r#"http_requests_total{method="POST",route="/users",status_code="201"} 2"#,
        ]
    );
}

#[actix_web::test]
async fn counters_that_alerts_use_exist_at_zero_before_the_first_event() {
    let app = spawn_app().await;
    let text = app.get("/metrics").await.text;
    for needle in [
        "users_created_total 0",
        "users_deleted_total 0",
        "http_requests_in_flight 1",
        r#"redis_operation_duration_seconds_count{operation="ping",status="ok"} 0"#,
        r#"redis_operation_duration_seconds_count{operation="ping",status="error"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[actix_web::test]
async fn each_port_of_platform_all_shows_its_own_role_only() {
    let redis = RedisServer::start();
    let (process, users_port) = Process::all(&redis.url());
    let (gateway, users) = (Http::new(process.port), Http::new(users_port));
    gateway
        .create_user_at("/api/users", "Ada", "ada@example.com")
        .await;

    let gateway_text = gateway.get("/metrics").await.text;
    let users_text = users.get("/metrics").await.text;
    assert_eq!(
        samples(&gateway_text, "http_requests_total{"),
        vec![r#"http_requests_total{method="POST",route="/api/users",status_code="201"} 1"#],
        "{gateway_text}"
    );
    assert_eq!(
        samples(&users_text, "http_requests_total{"),
        vec![r#"http_requests_total{method="POST",route="/users",status_code="201"} 1"#],
        "{users_text}"
    );
    assert!(samples(&gateway_text, "upstream_request_duration_seconds_count").len() == 1);
    assert!(
        samples(&users_text, "upstream_request").is_empty(),
        "{users_text}"
    );
    for users_only in ["redis_operation", "users_created_total", "users_total"] {
        assert!(
            samples(&gateway_text, users_only).is_empty(),
            "{users_only} on the gateway's port: {gateway_text}"
        );
    }
    assert!(users_text.contains("users_created_total 1"), "{users_text}");
}

#[actix_web::test]
async fn an_unknown_method_is_counted_as_other_not_as_a_new_series() {
    let app = spawn_app().await;
    for method in ["BREW", "XYZZY"] {
        let request = format!("{method} /users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, _, _) = crate::upstream::raw_request(app.port, &request);
        assert_eq!(status, 405, "{method}");
    }
    let text = app.get("/metrics").await.text;
    assert!(
        text.contains(r#"http_requests_total{method="OTHER",route="/users",status_code="405"} 2"#),
        "{text}"
    );
    assert!(!text.contains("BREW") && !text.contains("XYZZY"), "{text}");
}
