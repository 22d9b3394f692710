use futures_util::future::join_all;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn twenty_parallel_creates_of_one_email_make_exactly_one_user() {
    let app = spawn_app().await;
    let attempts = (0..20).map(|i| {
        let body = format!(r#"{{"name":"Racer {i}","email":"Race@Example.com"}}"#);
        let app = &app;
        async move { app.json("POST", "/users", &body).await.status }
    });
    let mut statuses = join_all(attempts).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.stored_counts(), (1, 1, 1, 1));
}

#[actix_web::test]
async fn parallel_email_swaps_never_leave_two_users_with_one_email() {
    let app = spawn_app().await;
    let a = app.create_user("A", "a@example.com").await;
    let b = app.create_user("B", "b@example.com").await;
    let path = |u: &serde_json::Value| format!("/users/{}", u["id"].as_str().unwrap_or_default());
    let (pa, pb) = (path(&a), path(&b));
    let updates = (0..10).map(|i| {
        let (p, email) = if i % 2 == 0 {
            (&pa, "c@example.com")
        } else {
            (&pb, "c@example.com")
        };
        let app = &app;
        async move {
            app.json("PATCH", p, &format!(r#"{{"email":"{email}"}}"#))
                .await
                .status
        }
    });
    let statuses = join_all(updates).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let emails: Vec<String> = [&pa, &pb]
        .iter()
        .map(|p| {
            let raw = app
                .redis
                .cli(&["GET", &format!("user:{}", p.trim_start_matches("/users/"))]);
            serde_json::from_str::<serde_json::Value>(&raw)
                .map(|u| u["email"].to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_ne!(emails[0], emails[1]);
    assert_eq!(app.stored_counts(), (2, 2, 2, 2));
}
