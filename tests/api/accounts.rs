//! People's accounts at the auth role: register, login, rotating refresh tokens, the failed
//! login throttle, and the users role deleting an account.

use std::time::Duration;

use platform::auth::keys;
use serde_json::{Value, json};

use crate::helpers::{
    ARGON2_FLAGS, AUTH_ISSUER as ISSUER, Http, Reply, TestApp, TestGateway, spawn_app, spawn_auth,
    spawn_gateway,
};

const PASSWORD: &str = "correct horse battery staple";

/// The users role, the auth role on the same Redis, and a gateway verifying the auth role's
/// tokens on every request.
struct Stack {
    users: TestApp,
    auth: TestGateway,
    gw: TestGateway,
    _keys: tempfile::TempDir,
}

async fn stack(extra: &[&str]) -> Stack {
    let users = spawn_app().await;
    let keys = tempfile::tempdir().expect("temp dir");
    keys::generate(keys.path()).expect("a key");
    let dir = keys.path().to_str().expect("utf-8 path").to_owned();
    let redis = users.redis.url();
    let mut flags = vec![
        "--issuer",
        ISSUER,
        "--signing-keys-dir",
        &dir,
        "--redis-url",
        &redis,
    ];
    flags.extend_from_slice(&ARGON2_FLAGS);
    flags.extend_from_slice(extra);
    let auth = spawn_auth(&flags).await;
    let jwks = auth.url("/.well-known/jwks.json");
    let gw = spawn_gateway(
        &users.address,
        &[
            "--auth-url",
            &auth.address,
            "--auth-mode",
            "all",
            "--jwks-url",
            &jwks,
            "--jwt-issuer",
            ISSUER,
            "--jwt-audiences",
            "platform-api",
        ],
    )
    .await;
    Stack {
        users,
        auth,
        gw,
        _keys: keys,
    }
}

async fn register(http: &Http, path: &str, name: &str, email: &str, password: &str) -> Reply {
    let body = json!({"name": name, "email": email, "password": password}).to_string();
    http.json("POST", path, &body).await
}

async fn login(http: &Http, path: &str, email: &str, password: &str) -> Reply {
    let body = json!({"email": email, "password": password}).to_string();
    http.json("POST", path, &body).await
}

async fn refresh(http: &Http, path: &str, token: &str) -> Reply {
    let req = http
        .client
        .post(http.url(path))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    let form = format!("grant_type=refresh_token&refresh_token={token}");
    http.send(req, Some(&form)).await
}

fn without_id(reply: &Reply) -> Value {
    let mut body = reply.body.clone();
    body.as_object_mut()
        .expect("an object")
        .remove("request_id");
    body
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

async fn post_user(gw: &Http, bearer: &str, email: &str) -> Reply {
    let req = gw
        .client
        .post(gw.url("/api/users"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Authorization", format!("Bearer {bearer}")));
    gw.send(
        req,
        Some(&json!({"name": "Bo", "email": email}).to_string()),
    )
    .await
}

#[actix_web::test]
async fn register_login_write_through_the_gateway_refresh_and_a_reused_token_revokes_its_family() {
    let s = stack(&[]).await;
    let reply = register(
        &s.gw,
        "/api/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("an id").to_owned();
    let reply = login(&s.gw, "/api/auth/login", "ADA@example.com", PASSWORD).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["scope"], "users:read users:write");
    let access = reply.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let first = reply.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(first.len(), 43, "256 bits in base64url");
    let c = claims(&access);
    assert_eq!(
        (c["sub"].as_str(), c["client_id"].as_str()),
        (Some(id.as_str()), Some("platform"))
    );

    let created = post_user(&s.gw, &access, "bo@example.com").await;
    assert_eq!(created.status, 201, "{}", created.body);

    let rotated = refresh(&s.gw, "/api/auth/token", &first).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let second = rotated.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(first, second);
    assert_eq!(
        claims(rotated.body["access_token"].as_str().expect("access"))["sub"],
        id
    );
    let access2 = rotated.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    assert_eq!(
        post_user(&s.gw, &access2, "cy@example.com").await.status,
        201
    );

    // The first one again: reuse; the whole family is revoked, the second one included.
    let reused = refresh(&s.gw, "/api/auth/token", &first).await;
    reused.assert_error(400, "invalid_grant");
    refresh(&s.gw, "/api/auth/token", &second)
        .await
        .assert_error(400, "invalid_grant");
    refresh(&s.gw, "/api/auth/token", "not-a-token")
        .await
        .assert_error(400, "invalid_grant");
    // A new login starts a new family.
    let again = login(&s.gw, "/api/auth/login", "ada@example.com", PASSWORD).await;
    let third = again.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(refresh(&s.auth, "/auth/token", &third).await.status, 200);
    // Nothing stores a token itself.
    let keys = s.users.redis.cli(&["--scan", "--pattern", "*"]);
    for secret in [&first, &second, &third] {
        assert!(!keys.contains(secret.as_str()));
    }

    let metrics = s.auth.get("/metrics").await.text;
    for line in [
        "tokens_issued_total{grant=\"password\"} 2",
        "tokens_issued_total{grant=\"refresh_token\"} 2",
        "authentication_attempts_total{status=\"success\",reason=\"ok\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(metrics.contains("password_hash_duration_seconds_count"));
}

#[actix_web::test]
async fn register_validates_like_users_and_emails_are_unique_across_both_roles() {
    let s = stack(&[]).await;
    s.users.create_user("Ada", "ada@example.com").await;
    register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ADA@example.com",
        PASSWORD,
    )
    .await
    .assert_error(409, "duplicate_email");
    let reply = register(&s.auth, "/auth/register", "Bo", "bo@example.com", PASSWORD).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    register(&s.auth, "/auth/register", "Bo2", "Bo@Example.com", PASSWORD)
        .await
        .assert_error(409, "duplicate_email");
    let dup = s
        .users
        .json("POST", "/users", r#"{"name":"B","email":"BO@example.com"}"#)
        .await;
    dup.assert_error(409, "duplicate_email");

    for (password, why) in [
        ("fourteen chars", "at least 15"),
        (&"x".repeat(257) as &str, "at most 256"),
    ] {
        let reply = register(&s.auth, "/auth/register", "Cy", "cy@example.com", password).await;
        let body = reply.assert_error(400, "validation_error");
        assert_eq!(body["details"][0]["field"], "password", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(why),
            "{body}"
        );
    }
    // Fifteen characters of two bytes each are enough.
    let reply = register(
        &s.auth,
        "/auth/register",
        "Cy",
        "cy@example.com",
        &"é".repeat(15),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let body = register(&s.auth, "/auth/register", "", "nope", "short")
        .await
        .assert_error(400, "validation_error")
        .clone();
    let fields: Vec<&str> = body["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert_eq!(fields, ["name", "email", "password"], "{body}");

    // The registered user is a user like any other, without its hash.
    let list = s.users.get("/users").await;
    let emails: Vec<&str> = list
        .body
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert!(emails.contains(&"bo@example.com"), "{}", list.body);
    assert!(!list.text.contains("argon2") && !list.text.contains("password"));
    assert_eq!(s.users.stored_counts(), (3, 3, 3, 3));
    let credentials = s.users.redis.cli(&["--scan", "--pattern", "credential:*"]);
    assert_eq!(credentials.lines().filter(|l| !l.is_empty()).count(), 2);
}

#[actix_web::test]
async fn an_unknown_email_and_a_wrong_password_get_the_same_401_after_one_verification_each() {
    let s = stack(&[]).await;
    register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    // Each answer costs the server one Argon2 verification of the same cost: the unknown email
    // is verified against a dummy hash, so both take as long. Read from the server's own
    // histogram (count and time of the hashes it ran), not from wall-clock timings that a busy
    // machine distorts.
    let hashes = |metrics: &str| -> (u64, f64) {
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        (
            value("password_hash_duration_seconds_count") as u64,
            value("password_hash_duration_seconds_sum"),
        )
    };
    let before = hashes(&s.auth.get("/metrics").await.text);
    let wrong = login(
        &s.auth,
        "/auth/login",
        "ada@example.com",
        "wrong horse battery staple",
    )
    .await;
    let between = hashes(&s.auth.get("/metrics").await.text);
    let unknown = login(&s.auth, "/auth/login", "nobody@example.com", PASSWORD).await;
    let after = hashes(&s.auth.get("/metrics").await.text);
    wrong.assert_error(401, "invalid_credentials");
    unknown.assert_error(401, "invalid_credentials");
    assert_eq!(without_id(&wrong), without_id(&unknown));
    assert_eq!(
        between.0 - before.0,
        1,
        "the wrong password was verified once"
    );
    assert_eq!(
        after.0 - between.0,
        1,
        "the unknown email cost one verification too"
    );
    // Both took time in Argon2 (the dummy hash has the same cost settings: src/auth/secrets.rs).
    assert!(between.1 > before.1 && after.1 > between.1);
    // A user made through /users has no password: it cannot log in.
    s.users.create_user("Bo", "bo@example.com").await;
    let no_credential = login(&s.auth, "/auth/login", "bo@example.com", PASSWORD).await;
    assert_eq!(without_id(&no_credential), without_id(&unknown));
    let metrics = s.auth.get("/metrics").await.text;
    let line = "authentication_attempts_total{status=\"failure\",reason=\"invalid_credentials\"} 3";
    assert!(metrics.contains(line), "{metrics}");
}

#[actix_web::test]
async fn failed_logins_are_throttled_per_account_and_per_ip_until_the_window_ends() {
    let s = stack(&[
        "--login-max-failures",
        "3",
        "--login-max-failures-per-ip",
        "5",
        "--login-failure-window",
        "2s",
    ])
    .await;
    register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    for _ in 0..3 {
        login(
            &s.auth,
            "/auth/login",
            "ada@example.com",
            "not the right password",
        )
        .await
        .assert_error(401, "invalid_credentials");
    }
    // The account is throttled, even with the right password.
    let refused = login(&s.auth, "/auth/login", "Ada@example.com", PASSWORD).await;
    refused.assert_error(429, "too_many_attempts");
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    // The IP has two failures left: other accounts, then the whole client is throttled.
    for _ in 0..2 {
        login(
            &s.auth,
            "/auth/login",
            "nobody@example.com",
            "not the right password",
        )
        .await
        .assert_error(401, "invalid_credentials");
    }
    login(&s.auth, "/auth/login", "other@example.com", PASSWORD)
        .await
        .assert_error(429, "too_many_attempts");
    actix_web::rt::time::sleep(Duration::from_millis(2200)).await;
    let reply = login(&s.auth, "/auth/login", "ada@example.com", PASSWORD).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let metrics = s.auth.get("/metrics").await.text;
    assert!(
        metrics.contains(
            "authentication_attempts_total{status=\"failure\",reason=\"too_many_attempts\"} 2"
        ),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_user_deleted_through_the_users_api_can_no_longer_log_in_or_refresh() {
    let s = stack(&[]).await;
    let reply = register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    let id = reply.body["id"].as_str().expect("an id").to_owned();
    let tokens = login(&s.auth, "/auth/login", "ada@example.com", PASSWORD).await;
    let token = tokens.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_eq!(s.users.delete(&format!("/users/{id}")).await.status, 204);
    assert_eq!(
        s.users.redis.cli(&["EXISTS", &format!("credential:{id}")]),
        "0"
    );
    login(&s.auth, "/auth/login", "ada@example.com", PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
    refresh(&s.auth, "/auth/token", &token)
        .await
        .assert_error(400, "invalid_grant");
    // The email is free again, for a new account with a new id.
    let again = register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    assert_eq!(again.status, 201);
    assert_ne!(again.body["id"], json!(id));
    refresh(&s.auth, "/auth/token", &token)
        .await
        .assert_error(400, "invalid_grant");
}

#[actix_web::test]
async fn a_registration_redis_refuses_leaves_neither_the_user_nor_its_credential() {
    let s = stack(&[]).await;
    s.users.redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await
    .assert_error(503, "store_unavailable");
    s.users.redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(s.users.stored_counts(), (0, 0, 0, 0));
    let credentials = s.users.redis.cli(&["--scan", "--pattern", "credential:*"]);
    assert!(credentials.trim().is_empty(), "{credentials}");
    let reply = register(
        &s.auth,
        "/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[actix_web::test]
async fn no_password_hash_or_token_reaches_a_log_or_an_error_body() {
    let s = stack(&["--login-max-failures", "2"]).await;
    let reply = register(
        &s.gw,
        "/api/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await;
    let id = reply.body["id"].as_str().expect("an id").to_owned();
    let wrong = "a wrong but long password";
    let mut bodies = String::new();
    for _ in 0..3 {
        bodies += &login(&s.gw, "/api/auth/login", "ada@example.com", wrong)
            .await
            .text;
    }
    bodies += &register(
        &s.gw,
        "/api/auth/register",
        "Ada",
        "ada@example.com",
        PASSWORD,
    )
    .await
    .text;
    bodies += &register(
        &s.gw,
        "/api/auth/register",
        "Bo",
        "bo@example.com",
        "short secret",
    )
    .await
    .text;
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    s.users
        .redis
        .cli(&["DEL", "login_failures:email:ada@example.com"]);
    let tokens = login(&s.gw, "/api/auth/login", "ada@example.com", PASSWORD).await;
    assert_eq!(tokens.status, 200, "{}", tokens.body);
    let access = tokens.body["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let first = tokens.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let rotated = refresh(&s.gw, "/api/auth/token", &first).await;
    let second = rotated.body["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    bodies += &refresh(&s.gw, "/api/auth/token", &first).await.text;
    let hash = s.users.redis.cli(&["GET", &format!("credential:{id}")]);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let logs = [
        s.auth.logs.contents(),
        s.gw.logs.contents(),
        s.users.logs.contents(),
    ]
    .concat();
    assert!(logs.contains("invalid_credentials") || logs.contains("login refused"));
    for secret in [
        PASSWORD,
        wrong,
        "short secret",
        hash.trim(),
        &access,
        &first,
        &second,
    ] {
        assert!(!logs.contains(secret), "a secret in the logs: {secret}");
        assert!(!bodies.contains(secret), "a secret in an answer: {secret}");
    }
}

/// `POST /auth/login` as a proxy sends it: `X-Forwarded-For` naming the client.
async fn login_from(http: &Http, client: &str, email: &str) -> Reply {
    let body = json!({"email": email, "password": "not the right password"}).to_string();
    let req = http
        .client
        .post(http.url("/auth/login"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Forwarded-For", client));
    http.send(req, Some(&body)).await
}

#[actix_web::test]
async fn behind_a_trusted_proxy_the_login_throttle_counts_each_client_apart() {
    let s = stack(&[
        "--login-max-failures-per-ip",
        "2",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    for email in ["a@example.com", "b@example.com"] {
        login_from(&s.auth, "198.51.100.1", email)
            .await
            .assert_error(401, "invalid_credentials");
    }
    login_from(&s.auth, "198.51.100.1", "c@example.com")
        .await
        .assert_error(429, "too_many_attempts");
    // Another client behind the same proxy is not throttled with the first.
    login_from(&s.auth, "198.51.100.2", "c@example.com")
        .await
        .assert_error(401, "invalid_credentials");
    let lines = crate::helpers::json_lines(&s.auth.logs);
    let addrs: Vec<&str> = lines
        .iter()
        .filter(|l| l["msg"] == "request" && l["path"] == "/auth/login")
        .filter_map(|l| l["remote_addr"].as_str())
        .collect();
    assert_eq!(
        addrs,
        [
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2"
        ]
    );
    // Without the proxy trusted, the header changes nothing: one client, the peer.
    let s = stack(&["--login-max-failures-per-ip", "2"]).await;
    for client in ["198.51.100.1", "198.51.100.2"] {
        login_from(&s.auth, client, "a@example.com")
            .await
            .assert_error(401, "invalid_credentials");
    }
    login_from(&s.auth, "198.51.100.3", "b@example.com")
        .await
        .assert_error(429, "too_many_attempts");
}
