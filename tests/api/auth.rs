//! JWT authentication at the gateway (issue 13): tokens, modes, credentials, keys, start-up
//! checks, metrics and logs, against the contract in the auth spec.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awc::http::Method;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{BIN, Http, Reply, TestGateway, poll_until, spawn_app, spawn_gateway};
use crate::jwks::{AUDIENCE, INITIAL_KEYS, ISSUER, JwksFile, JwksServer, Key, Token, now};
use crate::upstream::{Behaviour, FakeUpstream};

/// A path the Echo upstream answers with the request it received.
const ECHO: &str = "/api/users/headers";
const DEADLINE: Duration = Duration::from_secs(10);

/// The challenge when credentials are missing: no `error=`.
const CHALLENGE: &str = r#"Bearer realm="platform""#;
/// The challenge of a 403 whose cause is not the write scope (e.g. the audience).
const INSUFFICIENT_SCOPE: &str = r#"Bearer realm="platform", error="insufficient_scope""#;

fn invalid_token_challenge(description: &str) -> String {
    format!(r#"Bearer realm="platform", error="invalid_token", error_description="{description}""#)
}

// ---- harness -------------------------------------------------------------------------------

/// Starts a gateway with `flags` in front of `upstream`; returns it once it is ready (so its
/// first key set has loaded).
async fn ready_gateway(upstream: &str, flags: &[&str]) -> TestGateway {
    let gw = spawn_gateway(upstream, flags).await;
    poll_until(
        DEADLINE,
        "the gateway's /health/ready answers 200",
        async || gw.get("/health/ready").await.status == 200,
    )
    .await;
    gw
}

/// A ready gateway in `mode` trusting ISSUER and AUDIENCE with the keys of `jwks`, plus `extra`.
async fn gateway(mode: &str, upstream: &str, jwks: &JwksServer, extra: &[&str]) -> TestGateway {
    let url = jwks.url();
    let base = [
        "--auth-mode",
        mode,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audiences",
        AUDIENCE,
        "--jwks-url",
        &url,
    ];
    ready_gateway(upstream, &[&base[..], extra].concat()).await
}

/// The flags of `gateway` without starting it (for gateways that are not ready at first).
fn flags_for(mode: &str, jwks_url: &str) -> Vec<String> {
    [
        "--auth-mode",
        mode,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audiences",
        AUDIENCE,
        "--jwks-url",
        jwks_url,
    ]
    .map(str::to_owned)
    .into()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

fn cookie(value: String) -> (&'static str, String) {
    ("Cookie", value)
}

/// `method path` with `headers` (a name may repeat); writes carry a new user as JSON.
async fn request(gw: &Http, method: &str, path: &str, headers: &[(&str, String)]) -> Reply {
    let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let has_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
    let mut req = gw.client.request(method, gw.url(path));
    for (name, value) in headers {
        req = req.append_header((*name, value.as_str()));
    }
    if has_body {
        let email = format!("{}@example.com", uuid::Uuid::new_v4());
        let body = json!({"name": "Ada", "email": email}).to_string();
        let req = req.insert_header(("Content-Type", "application/json"));
        gw.send(req, Some(&body)).await
    } else {
        gw.send(req, None).await
    }
}

/// `GET path` with `Authorization: Bearer <token>`.
async fn get(gw: &Http, path: &str, token: &str) -> Reply {
    request(gw, "GET", path, &[bearer(token)]).await
}

/// `POST /api/users` (a new user), with a bearer token or none.
async fn create(gw: &Http, token: Option<&str>) -> Reply {
    let headers: Vec<_> = token.map(bearer).into_iter().collect();
    request(gw, "POST", "/api/users", &headers).await
}

/// The values of header `name` as the Echo upstream received them (empty: it got none).
fn seen(reply: &Reply, name: &str) -> Vec<String> {
    assert_eq!(reply.status, 200, "the upstream answers: {}", reply.body);
    reply.body["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The §2 error `code` with `status`, and exactly `challenge` in `WWW-Authenticate`.
fn assert_challenge(reply: &Reply, status: u16, code: &str, challenge: &str) {
    reply.assert_error(status, code);
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some(challenge),
        "{}",
        reply.body
    );
}

/// 401 `invalid_token` with the coarse `description`.
fn assert_invalid(reply: &Reply, description: &str) {
    assert_challenge(
        reply,
        401,
        "invalid_token",
        &invalid_token_challenge(description),
    );
}

/// 401 `authentication_required`, challenge without an error code.
fn assert_required(reply: &Reply) {
    assert_challenge(reply, 401, "authentication_required", CHALLENGE);
}

/// 503 `auth_unavailable` with a `Retry-After` of whole seconds, at least 1.
fn assert_unavailable(reply: &Reply) {
    reply.assert_error(503, "auth_unavailable");
    let retry = reply.header("retry-after").unwrap_or_default();
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After in seconds: {retry:?}"
    );
}

/// The value of the sample of `name` carrying every pair of `labels` (in any order, other
/// labels allowed), in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, pairs) = series.split_once('{').unwrap_or((series, ""));
            let pairs: Vec<&str> = pairs.trim_end_matches('}').split(',').collect();
            let all = labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()));
            (metric == name && all).then(|| value.parse().ok())?
        })
}

async fn metrics(gw: &Http) -> String {
    gw.get("/metrics").await.text
}

/// `authentication_attempts_total{status, reason}` now.
async fn attempts(gw: &Http, status: &str, reason: &str) -> Option<f64> {
    let text = metrics(gw).await;
    sample(
        &text,
        "authentication_attempts_total",
        &[("status", status), ("reason", reason)],
    )
}

async fn refreshes(gw: &Http, result: &str) -> f64 {
    let text = metrics(gw).await;
    sample(&text, "jwks_refresh_total", &[("result", result)]).unwrap_or(-1.0)
}

/// The access line of `path`, once the gateway has written it.
async fn access_line(gw: &TestGateway, path: &str) -> Value {
    let mut line = None;
    poll_until(DEADLINE, "the access line is written", async || {
        line = gw.access_line(path);
        line.is_some()
    })
    .await;
    line.unwrap_or_default()
}

/// Waits until `n` access lines of `path` are written (a line is written when its response
/// body has ended, which can be a moment after the client read it).
async fn wait_access_lines(gw: &TestGateway, path: &str, n: usize) {
    poll_until(DEADLINE, "the access lines are written", async || {
        gw.logs
            .contents()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["msg"] == "request" && l["path"] == path)
            .count()
            >= n
    })
    .await;
}

/// The min-refetch interval counts from the last fetch: waiting it out (1 s in these tests)
/// is the precondition for an unknown kid to be allowed a refetch, not a guess at a timing.
async fn let_min_refetch_pass() {
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
}

// ---- valid tokens --------------------------------------------------------------------------

#[actix_web::test]
async fn es256_eddsa_and_rs256_tokens_pass_with_their_claims_as_headers_and_no_authorization() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for key in INITIAL_KEYS {
        let sub = format!("user-{}", key.kid());
        let token = Token::new(key)
            .sub(&sub)
            .scope("users:read users:write")
            .sign();
        let reply = get(&gw, ECHO, &token).await;
        assert_eq!(seen(&reply, "x-user-id"), [sub.as_str()], "{key:?}");
        assert_eq!(
            seen(&reply, "x-user-scope"),
            ["users:read users:write"],
            "{key:?}"
        );
        assert!(seen(&reply, "authorization").is_empty(), "{key:?}");
    }
    // No scope claim: no scope header.
    let reply = get(&gw, ECHO, &Token::new(Key::Es256).sign()).await;
    assert_eq!(seen(&reply, "x-user-id"), ["user-42"]);
    assert!(seen(&reply, "x-user-scope").is_empty());
}

#[actix_web::test]
async fn a_valid_token_reaches_the_users_service_for_reads_and_writes() {
    let users = spawn_app().await;
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &users.address, &jwks, &[]).await;

    let token = Token::new(Key::Es256).sign();
    assert_eq!(get(&gw, "/api/users", &token).await.status, 200);
    let created = create(&gw, Some(&token)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap_or_default();
    let other = Token::new(Key::Rs256).sign();
    let path = format!("/api/users/{id}");
    assert_eq!(get(&gw, &path, &other).await.status, 200);
    let deleted = request(&gw, "DELETE", &path, &[bearer(&other)]).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
}

#[actix_web::test]
async fn forward_token_sends_the_authorization_header_upstream() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-forward-token"]).await;

    let token = Token::new(Key::EdDsa).sign();
    let reply = get(&gw, ECHO, &token).await;
    assert_eq!(seen(&reply, "authorization"), [format!("Bearer {token}")]);
    assert_eq!(seen(&reply, "x-user-id"), ["user-42"]);
}

#[actix_web::test]
async fn claim_headers_are_configurable_and_clients_cannot_send_them() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let flags = ["--jwt-claim-headers", "sub=X-Subject,scope=X-Scopes"];
    let gw = gateway("all", &echo.url(), &jwks, &flags).await;

    let token = Token::new(Key::Es256).sub("ada").scope("a b").sign();
    let headers = [
        bearer(&token),
        ("X-Subject", "admin".to_owned()),
        ("X-Scopes", "everything".to_owned()),
    ];
    let reply = request(&gw, "GET", ECHO, &headers).await;
    assert_eq!(seen(&reply, "x-subject"), ["ada"]);
    assert_eq!(seen(&reply, "x-scopes"), ["a b"]);
    assert!(seen(&reply, "x-user-id").is_empty());
}

// ---- time ----------------------------------------------------------------------------------

#[actix_web::test]
async fn an_expired_token_is_refused_as_expired_only_beyond_the_leeway() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let expired = Token::new(Key::Es256).iat_in(-600).exp_in(-120).sign();
    assert_invalid(&get(&gw, ECHO, &expired).await, "token expired");
    // 30 s late is inside the default 60 s leeway.
    let late = Token::new(Key::Es256).iat_in(-600).exp_in(-30).sign();
    assert_eq!(get(&gw, ECHO, &late).await.status, 200);

    let strict = gateway("all", &echo.url(), &jwks, &["--jwt-leeway", "5s"]).await;
    assert_invalid(&get(&strict, ECHO, &late).await, "token expired");
}

#[actix_web::test]
async fn a_token_not_yet_valid_is_refused_only_beyond_the_leeway() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let early = Token::new(Key::EdDsa).nbf_in(120).exp_in(600).sign();
    assert_invalid(&get(&gw, ECHO, &early).await, "token not yet valid");
    let almost = Token::new(Key::EdDsa).nbf_in(30).exp_in(600).sign();
    assert_eq!(get(&gw, ECHO, &almost).await.status, 200);
}

#[actix_web::test]
async fn a_token_living_longer_than_the_max_lifetime_is_refused() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-max-lifetime", "1h"]).await;

    let long = Token::new(Key::Es256).exp_in(2 * 3600).sign();
    assert_invalid(&get(&gw, ECHO, &long).await, "token not valid");
    // exp - iat counts, even when little of it is left.
    let issued_long_ago = Token::new(Key::Es256).iat_in(-3 * 3600).exp_in(1800).sign();
    assert_invalid(&get(&gw, ECHO, &issued_long_ago).await, "token not valid");
    // Without iat: exp - now.
    let no_iat = Token::new(Key::Es256)
        .without("iat")
        .exp_in(2 * 3600)
        .sign();
    assert_invalid(&get(&gw, ECHO, &no_iat).await, "token not valid");
    // Without exp the lifetime is unbounded.
    let no_exp = Token::new(Key::Es256).without("exp").sign();
    assert_invalid(&get(&gw, ECHO, &no_exp).await, "token not valid");

    let fine = Token::new(Key::Es256).exp_in(50 * 60).sign();
    assert_eq!(get(&gw, ECHO, &fine).await.status, 200);
}

// ---- issuer and audience -------------------------------------------------------------------

#[actix_web::test]
async fn a_token_from_another_issuer_is_not_valid() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for token in [
        Token::new(Key::Es256).iss("https://evil.example"),
        // Exact match only.
        Token::new(Key::Es256).iss(&format!("{ISSUER}/")),
        Token::new(Key::Es256).without("iss"),
    ] {
        assert_invalid(&get(&gw, ECHO, &token.sign()).await, "token not valid");
    }
}

#[actix_web::test]
async fn a_token_for_another_audience_is_forbidden_as_insufficient_scope() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for aud in [json!("billing-api"), json!(["billing-api", "reports"])] {
        let token = Token::new(Key::Es256).aud(aud).sign();
        assert_challenge(
            &get(&gw, ECHO, &token).await,
            403,
            "insufficient_scope",
            INSUFFICIENT_SCOPE,
        );
    }
}

#[actix_web::test]
async fn any_configured_audience_is_accepted_in_a_string_or_an_array() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let url = jwks.url();
    let flags = [
        "--auth-mode",
        "all",
        "--jwt-issuer",
        ISSUER,
        "--jwt-audiences",
        "reports,platform-api",
        "--jwks-url",
        &url,
    ];
    let gw = ready_gateway(&echo.url(), &flags).await;

    for aud in [
        json!("reports"),
        json!("platform-api"),
        json!(["other", "platform-api"]),
    ] {
        let token = Token::new(Key::Es256).aud(aud.clone()).sign();
        assert_eq!(get(&gw, ECHO, &token).await.status, 200, "aud {aud}");
    }
}

#[actix_web::test]
async fn without_configured_audiences_the_audience_is_not_checked() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let url = jwks.url();
    let flags = [
        "--auth-mode",
        "all",
        "--jwt-issuer",
        ISSUER,
        "--jwks-url",
        &url,
    ];
    let gw = ready_gateway(&echo.url(), &flags).await;

    for token in [
        Token::new(Key::Es256).aud("anything"),
        Token::new(Key::Es256).without("aud"),
    ] {
        assert_eq!(get(&gw, ECHO, &token.sign()).await.status, 200);
    }
}

// ---- forgeries -----------------------------------------------------------------------------

#[actix_web::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for token in [Token::new(Key::Es256), Token::new(Key::Es256).no_kid()] {
        assert_invalid(
            &get(&gw, ECHO, &token.sign_alg_none()).await,
            "token not valid",
        );
    }
}

#[actix_web::test]
async fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let forged = Token::new(Key::Rs256).sign_hs256_with_public_key();
    assert_invalid(&get(&gw, ECHO, &forged).await, "token not valid");
}

#[actix_web::test]
async fn a_token_with_a_corrupted_signature_is_refused() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for key in INITIAL_KEYS {
        let forged = Token::new(key).sign_corrupted();
        assert_invalid(&get(&gw, ECHO, &forged).await, "token not valid");
    }
}

#[actix_web::test]
async fn a_token_naming_the_kid_of_a_key_of_another_family_is_refused() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for (signer, named) in [
        (Key::Es256, Key::EdDsa),
        (Key::Es256, Key::Rs256),
        (Key::Rs256, Key::Es256),
    ] {
        let token = Token::new(signer).kid(&named.kid()).sign();
        assert_invalid(&get(&gw, ECHO, &token).await, "token not valid");
    }
}

#[actix_web::test]
async fn an_algorithm_outside_the_configured_allow_list_is_refused() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway(
        "all",
        &echo.url(),
        &jwks,
        &["--jwt-algorithms", "ES256,EdDSA"],
    )
    .await;

    assert_eq!(
        get(&gw, ECHO, &Token::new(Key::EdDsa).sign()).await.status,
        200
    );
    let rs256 = Token::new(Key::Rs256).sign();
    assert_invalid(&get(&gw, ECHO, &rs256).await, "token not valid");
    assert_eq!(attempts(&gw, "failure", "bad_algorithm").await, Some(1.0));
}

#[actix_web::test]
async fn a_bearer_that_is_not_a_jwt_is_an_invalid_token() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for token in ["not-a-jwt", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30."] {
        assert_invalid(&get(&gw, ECHO, token).await, "token not valid");
    }
}

// ---- missing credentials, realm ------------------------------------------------------------

#[actix_web::test]
async fn no_token_where_one_is_needed_is_authentication_required_without_an_error_code() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    assert_required(&gw.get(ECHO).await);
    assert_required(&request(&gw, "POST", "/api/users", &[]).await);
    assert_required(&gw.get("/api/users").await);
}

#[actix_web::test]
async fn the_realm_of_the_challenge_is_configurable() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--auth-realm", "edge"]).await;

    assert_challenge(
        &gw.get(ECHO).await,
        401,
        "authentication_required",
        r#"Bearer realm="edge""#,
    );
    let expired = Token::new(Key::Es256).iat_in(-600).exp_in(-300).sign();
    assert_challenge(
        &get(&gw, ECHO, &expired).await,
        401,
        "invalid_token",
        r#"Bearer realm="edge", error="invalid_token", error_description="token expired""#,
    );
}

// ---- modes ---------------------------------------------------------------------------------

#[actix_web::test]
async fn mode_off_needs_no_token_but_still_verifies_a_present_one() {
    let users = spawn_app().await;
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("off", &users.address, &jwks, &[]).await;

    assert_eq!(gw.get("/api/users").await.status, 200);
    assert_eq!(create(&gw, None).await.status, 201);
    // Keys may load at start or on the first token: a valid token passes once they have.
    let valid = Token::new(Key::Es256).sign();
    poll_until(DEADLINE, "a valid token passes in mode off", async || {
        get(&gw, "/api/users", &valid).await.status == 200
    })
    .await;
    let expired = Token::new(Key::Es256).iat_in(-600).exp_in(-120).sign();
    assert_invalid(&get(&gw, "/api/users", &expired).await, "token expired");
    let forged = Token::new(Key::Es256).sign_corrupted();
    assert_invalid(&create(&gw, Some(&forged)).await, "token not valid");

    let ready = gw.get("/health/ready").await;
    assert!(
        ready.body["dependencies"].get("jwks").is_none(),
        "readiness names jwks only while auth is on: {}",
        ready.body
    );
}

#[actix_web::test]
async fn mode_writes_needs_a_token_for_writes_only() {
    let users = spawn_app().await;
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("writes", &users.address, &jwks, &[]).await;

    assert_eq!(gw.get("/api/users").await.status, 200);
    assert_required(&create(&gw, None).await);
    let somebody = format!("/api/users/{}", uuid::Uuid::new_v4());
    for method in ["PUT", "PATCH", "DELETE"] {
        assert_required(&request(&gw, method, &somebody, &[]).await);
    }
    let token = Token::new(Key::EdDsa).sign();
    let created = create(&gw, Some(&token)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    // A present token is verified on a read too.
    let expired = Token::new(Key::EdDsa).iat_in(-600).exp_in(-120).sign();
    assert_invalid(&get(&gw, "/api/users", &expired).await, "token expired");
}

#[actix_web::test]
async fn health_and_metrics_never_need_a_token() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    for path in ["/health/live", "/health/ready", "/health", "/metrics"] {
        let reply = gw.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    }
    assert_eq!(
        gw.get("/health/ready").await.body["dependencies"]["jwks"],
        "up"
    );
}

#[actix_web::test]
async fn a_configured_write_scope_is_needed_for_writes_and_named_in_the_challenge() {
    let users = spawn_app().await;
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway(
        "all",
        &users.address,
        &jwks,
        &["--jwt-write-scope", "users:write"],
    )
    .await;
    let challenge = r#"Bearer realm="platform", error="insufficient_scope", scope="users:write""#;

    for token in [
        Token::new(Key::Es256).scope("users:read"),
        Token::new(Key::Es256).scope("users:writer users:read"),
        Token::new(Key::Es256),
    ] {
        let reply = create(&gw, Some(&token.sign())).await;
        assert_challenge(&reply, 403, "insufficient_scope", challenge);
    }
    let reader = Token::new(Key::Es256).scope("users:read").sign();
    assert_eq!(get(&gw, "/api/users", &reader).await.status, 200);
    let somebody = format!("/api/users/{}", uuid::Uuid::new_v4());
    let reply = request(&gw, "DELETE", &somebody, &[bearer(&reader)]).await;
    assert_challenge(&reply, 403, "insufficient_scope", challenge);

    for token in [
        Token::new(Key::Es256).scope("users:read users:write"),
        Token::new(Key::Es256).claim("scp", json!(["users:read", "users:write"])),
    ] {
        let reply = create(&gw, Some(&token.sign())).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
}

// ---- where the token comes from ------------------------------------------------------------

#[actix_web::test]
async fn a_token_in_the_query_string_is_ignored_and_never_logged() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let token = Token::new(Key::Es256).sign();
    let in_query = format!("{ECHO}?access_token={token}");
    assert_required(&gw.get(&in_query).await);
    // Beside a header it is not a second credential.
    let reply = request(&gw, "GET", &in_query, &[bearer(&token)]).await;
    assert_eq!(seen(&reply, "x-user-id"), ["user-42"]);

    wait_access_lines(&gw, ECHO, 2).await;
    assert!(
        !gw.logs.contents().contains(&token),
        "the token was logged:\n{}",
        gw.logs.contents()
    );
}

#[actix_web::test]
async fn a_token_in_the_configured_cookie_is_a_credential() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-cookie", "session"]).await;

    let token = Token::new(Key::Es256).sub("cookie-user").sign();
    let reply = request(&gw, "GET", ECHO, &[cookie(format!("session={token}"))]).await;
    assert_eq!(seen(&reply, "x-user-id"), ["cookie-user"]);
    let among_others = cookie(format!("theme=dark; session={token}; lang=en"));
    assert_eq!(
        seen(
            &request(&gw, "GET", ECHO, &[among_others]).await,
            "x-user-id"
        ),
        ["cookie-user"]
    );
    // Another cookie name is not a credential.
    assert_required(&request(&gw, "GET", ECHO, &[cookie(format!("other={token}"))]).await);
    let expired = Token::new(Key::Es256).iat_in(-600).exp_in(-120).sign();
    let reply = request(&gw, "GET", ECHO, &[cookie(format!("session={expired}"))]).await;
    assert_invalid(&reply, "token expired");

    // Without --jwt-cookie the cookie is no credential at all.
    let plain = gateway("all", &echo.url(), &jwks, &[]).await;
    assert_required(&request(&plain, "GET", ECHO, &[cookie(format!("session={token}"))]).await);
}

#[actix_web::test]
async fn a_bearer_header_and_the_cookie_together_are_an_invalid_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-cookie", "session"]).await;

    let token = Token::new(Key::Es256).sign();
    let both = [bearer(&token), cookie(format!("session={token}"))];
    request(&gw, "GET", ECHO, &both)
        .await
        .assert_error(400, "invalid_request");
    // An unrelated cookie is not a second credential.
    let reply = request(
        &gw,
        "GET",
        ECHO,
        &[bearer(&token), cookie("theme=dark".into())],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[actix_web::test]
async fn two_authorization_headers_are_an_invalid_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let (a, b) = (
        Token::new(Key::Es256).sign(),
        Token::new(Key::EdDsa).sub("someone-else").sign(),
    );
    request(&gw, "GET", ECHO, &[bearer(&a), bearer(&b)])
        .await
        .assert_error(400, "invalid_request");
    request(&gw, "GET", ECHO, &[bearer(&a), bearer(&a)])
        .await
        .assert_error(400, "invalid_request");
}

#[actix_web::test]
async fn an_authorization_header_that_is_not_bearer_and_a_token_is_an_invalid_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let token = Token::new(Key::Es256).sign();
    for value in [
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        "Bearer".to_owned(),
        format!("Token {token}"),
        token.clone(),
    ] {
        request(&gw, "GET", ECHO, &[("Authorization", value.clone())])
            .await
            .assert_error(400, "invalid_request");
    }
}

#[actix_web::test]
async fn client_sent_claim_headers_never_reach_the_upstream_in_any_mode() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let forged = [
        ("X-User-Id", "admin".to_owned()),
        ("x-user-id", "root".to_owned()),
        ("X-USER-SCOPE", "users:admin".to_owned()),
    ];
    // A token without a scope: the forged scope must not stand in for the missing one.
    let token = Token::new(Key::Es256).sub("real-user").sign();

    // A gateway with auth never configured strips them too: the users service may trust them.
    let plain = spawn_gateway(&echo.url(), &[]).await;
    let reply = request(&plain, "GET", ECHO, &forged).await;
    assert!(seen(&reply, "x-user-id").is_empty());
    assert!(seen(&reply, "x-user-scope").is_empty());

    for mode in ["off", "writes", "all"] {
        let gw = gateway(mode, &echo.url(), &jwks, &[]).await;
        if mode != "all" {
            let reply = request(&gw, "GET", ECHO, &forged).await;
            assert!(seen(&reply, "x-user-id").is_empty(), "mode {mode}");
            assert!(seen(&reply, "x-user-scope").is_empty(), "mode {mode}");
        }
        let mut with_token = forged.to_vec();
        with_token.push(bearer(&token));
        // In mode off keys may load on the first token.
        let mut reply = None;
        poll_until(DEADLINE, "a valid token passes", async || {
            let r = request(&gw, "GET", ECHO, &with_token).await;
            let passed = r.status == 200;
            reply = Some(r);
            passed
        })
        .await;
        let reply = reply.expect("an answer");
        assert_eq!(seen(&reply, "x-user-id"), ["real-user"], "mode {mode}");
        assert!(seen(&reply, "x-user-scope").is_empty(), "mode {mode}");
        // A write on the same path, with and without the token.
        let write = request(&gw, "POST", ECHO, &with_token).await;
        assert_eq!(seen(&write, "x-user-id"), ["real-user"], "mode {mode}");
        if mode == "off" {
            let write = request(&gw, "POST", ECHO, &forged).await;
            assert!(seen(&write, "x-user-id").is_empty(), "mode {mode}");
        }
    }
}

// ---- keys ----------------------------------------------------------------------------------

#[actix_web::test]
async fn a_key_added_to_the_jwks_is_accepted_after_one_refetch_on_its_unknown_kid() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwks-min-refetch", "1s"]).await;
    assert_eq!(
        get(&gw, ECHO, &Token::new(Key::Es256).sign()).await.status,
        200
    );
    let before = jwks.fetches();

    jwks.set_keys(&[Key::Es256, Key::EdDsa, Key::Rs256, Key::Es256Next]);
    let_min_refetch_pass().await;
    let rotated = Token::new(Key::Es256Next).sub("rotated").sign();
    let reply = get(&gw, ECHO, &rotated).await;
    assert_eq!(seen(&reply, "x-user-id"), ["rotated"]);
    assert_eq!(jwks.fetches(), before + 1, "exactly one refetch");
    // Known from now on: no further fetch.
    assert_eq!(get(&gw, ECHO, &rotated).await.status, 200);
    assert_eq!(jwks.fetches(), before + 1);
}

#[actix_web::test]
async fn a_burst_of_unknown_kids_causes_at_most_one_refetch() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwks-min-refetch", "1s"]).await;
    let tokens: Vec<String> = (0..100)
        .map(|_| {
            Token::new(Key::Es256)
                .kid(&uuid::Uuid::new_v4().to_string())
                .sign()
        })
        .collect();
    let_min_refetch_pass().await;
    let before = jwks.fetches();

    let replies = join_all(tokens.iter().map(|t| get(&gw, ECHO, t))).await;
    for reply in &replies {
        assert_invalid(reply, "token not valid");
    }
    let refetches = jwks.fetches() - before;
    assert!(refetches <= 1, "{refetches} refetches for one burst");
    assert_eq!(attempts(&gw, "failure", "unknown_key").await, Some(100.0));
    assert_eq!(
        get(&gw, ECHO, &Token::new(Key::Es256).sign()).await.status,
        200
    );
}

#[actix_web::test]
async fn a_removed_key_stops_verifying_once_the_cache_control_max_age_runs_out() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    jwks.set_cache_control(Some("public, max-age=1"));
    // The scheduled refresh stays at its 5 min default: only max-age can bring the change.
    let gw = gateway("all", &echo.url(), &jwks, &["--jwks-min-refetch", "1s"]).await;
    let retired = Token::new(Key::Es256).sign();
    assert_eq!(get(&gw, ECHO, &retired).await.status, 200);

    jwks.set_keys(&[Key::EdDsa, Key::Rs256]);
    poll_until(DEADLINE, "the removed key is refused", async || {
        get(&gw, ECHO, &retired).await.status == 401
    })
    .await;
    assert!(jwks.fetches() >= 2);
    assert_eq!(
        get(&gw, ECHO, &Token::new(Key::EdDsa).sign()).await.status,
        200
    );
}

#[actix_web::test]
async fn with_the_jwks_down_at_start_the_gateway_is_not_ready_until_it_loads_keys() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let mut jwks = JwksServer::http(&INITIAL_KEYS);
    jwks.stop();
    let mut flags = flags_for("all", &jwks.url());
    flags.extend(
        [
            "--jwks-refresh",
            "1s",
            "--jwks-min-refetch",
            "1s",
            "--jwks-timeout",
            "1s",
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gw = spawn_gateway(&echo.url(), &flags).await;

    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["status"], "not ready");
    assert_eq!(ready.body["dependencies"]["jwks"], "down");
    let token = Token::new(Key::Es256).sign();
    assert_unavailable(&get(&gw, ECHO, &token).await);
    let text = metrics(&gw).await;
    assert_eq!(sample(&text, "jwks_keys", &[]), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "jwks_last_success_timestamp_seconds", &[]),
        Some(0.0)
    );

    jwks.start();
    poll_until(DEADLINE, "ready once the JWKS answers", async || {
        gw.get("/health/ready").await.status == 200
    })
    .await;
    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.body["dependencies"]["jwks"], "up");
    assert_eq!(get(&gw, ECHO, &token).await.status, 200);
    assert_eq!(attempts(&gw, "error", "no_keys").await, Some(1.0));
}

#[actix_web::test]
async fn a_jwks_outage_after_the_first_load_keeps_the_last_good_keys() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let mut jwks = JwksServer::http(&INITIAL_KEYS);
    let flags = ["--jwks-refresh", "1s", "--jwks-min-refetch", "1s"];
    let gw = gateway("all", &echo.url(), &jwks, &flags).await;
    let token = Token::new(Key::Rs256).sign();
    assert_eq!(get(&gw, ECHO, &token).await.status, 200);

    jwks.stop();
    poll_until(DEADLINE, "a refresh failed", async || {
        refreshes(&gw, "error").await >= 1.0
    })
    .await;
    assert_eq!(get(&gw, ECHO, &token).await.status, 200);
    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body["dependencies"]["jwks"], "up");
    assert_eq!(sample(&metrics(&gw).await, "jwks_keys", &[]), Some(3.0));
}

#[actix_web::test]
async fn a_jwks_over_https_is_trusted_through_the_ca_file() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::https(&INITIAL_KEYS);
    let ca = jwks.ca_file().to_str().expect("UTF-8 path").to_owned();
    let gw = gateway("all", &echo.url(), &jwks, &["--jwks-ca-file", &ca]).await;

    assert!(jwks.fetches() >= 1);
    for key in INITIAL_KEYS {
        assert_eq!(get(&gw, ECHO, &Token::new(key).sign()).await.status, 200);
    }
}

#[actix_web::test]
async fn a_jwks_over_https_without_its_ca_never_loads() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::https(&INITIAL_KEYS);
    let mut flags = flags_for("all", &jwks.url());
    flags.extend(["--jwks-refresh", "1s", "--jwks-min-refetch", "1s"].map(str::to_owned));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gw = spawn_gateway(&echo.url(), &flags).await;

    poll_until(DEADLINE, "a fetch failed", async || {
        refreshes(&gw, "error").await >= 1.0
    })
    .await;
    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["dependencies"]["jwks"], "down");
    assert_unavailable(&get(&gw, ECHO, &Token::new(Key::Es256).sign()).await);
    assert_eq!(jwks.fetches(), 0, "no request got past the TLS handshake");
}

#[actix_web::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let file = JwksFile::new(&[Key::Es256]);
    let flags = [
        "--auth-mode",
        "all",
        "--jwt-issuer",
        ISSUER,
        "--jwt-audiences",
        AUDIENCE,
        "--jwks-file",
        file.path(),
    ];
    let gw = ready_gateway(&echo.url(), &flags).await;
    assert_eq!(
        get(&gw, ECHO, &Token::new(Key::Es256).sign()).await.status,
        200
    );
    let next = Token::new(Key::Es256Next).sign();
    assert_invalid(&get(&gw, ECHO, &next).await, "token not valid");

    file.set_keys(&[Key::Es256, Key::Es256Next]);
    // "Every few seconds": a generous deadline, polled.
    poll_until(
        Duration::from_secs(20),
        "the new key verifies",
        async || get(&gw, ECHO, &next).await.status == 200,
    )
    .await;
    assert_eq!(sample(&metrics(&gw).await, "jwks_keys", &[]), Some(2.0));
}

// ---- start-up checks -----------------------------------------------------------------------

/// Arguments, environment, and the names of which the error line must hold one.
type RefusedStart<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a [&'a str]);

/// Runs the binary, which must refuse to start within 10 s (a configuration it accepted
/// would serve until killed): (exit code, stderr).
fn run_refused(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("AUTH_MODE")
        .env_remove("JWT_ISSUER")
        .env_remove("JWT_ALGORITHMS")
        .env_remove("JWKS_URL")
        .env_remove("JWKS_FILE")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("platform binary starts");
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} {envs:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("exit status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_auth_configuration_exits_with_one_line_naming_the_flag() {
    let jwks = "http://127.0.0.1:9/jwks.json";
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, crate::jwks::key_set(&INITIAL_KEYS)).expect("JWKS file");
    let file = file.to_str().expect("UTF-8 path");
    let gateway = [
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--users-url",
        "http://127.0.0.1:9",
    ];
    let with_issuer = ["--auth-mode", "all", "--jwt-issuer", ISSUER];
    let cases: Vec<RefusedStart> = vec![
        // mode ≠ off without an issuer
        (
            [&gateway[..], &["--auth-mode", "all", "--jwks-url", jwks]].concat(),
            vec![],
            &["--jwt-issuer"],
        ),
        (
            [&gateway[..], &["--auth-mode", "writes", "--jwks-url", jwks]].concat(),
            vec![],
            &["--jwt-issuer"],
        ),
        (
            gateway.to_vec(),
            vec![("AUTH_MODE", "all"), ("JWKS_URL", jwks)],
            &["--jwt-issuer", "JWT_ISSUER"],
        ),
        // mode ≠ off without keys
        (
            [&gateway[..], &with_issuer].concat(),
            vec![],
            &["--jwks-url", "--jwks-file"],
        ),
        // HS* and none are never allowed, nor unknown names
        (
            [
                &gateway[..],
                &with_issuer,
                &["--jwks-url", jwks, "--jwt-algorithms", "HS256"],
            ]
            .concat(),
            vec![],
            &["--jwt-algorithms"],
        ),
        (
            [
                &gateway[..],
                &with_issuer,
                &["--jwks-url", jwks, "--jwt-algorithms", "none"],
            ]
            .concat(),
            vec![],
            &["--jwt-algorithms"],
        ),
        (
            [
                &gateway[..],
                &with_issuer,
                &["--jwks-url", jwks, "--jwt-algorithms", "ES256,none"],
            ]
            .concat(),
            vec![],
            &["--jwt-algorithms"],
        ),
        (
            [
                &gateway[..],
                &with_issuer,
                &["--jwks-url", jwks, "--jwt-algorithms", "XY999"],
            ]
            .concat(),
            vec![],
            &["--jwt-algorithms"],
        ),
        // one key source only
        (
            [
                &gateway[..],
                &with_issuer,
                &["--jwks-url", jwks, "--jwks-file", file],
            ]
            .concat(),
            vec![],
            &["--jwks-file"],
        ),
        // http(s) only
        (
            [
                &gateway[..],
                &with_issuer,
                &["--jwks-url", "ftp://127.0.0.1/jwks.json"],
            ]
            .concat(),
            vec![],
            &["--jwks-url"],
        ),
        (
            [&gateway[..], &["--auth-mode", "sometimes"]].concat(),
            vec![],
            &["--auth-mode"],
        ),
        // `platform all` checks the same
        (
            vec![
                "all",
                "--host",
                "127.0.0.1",
                "--gateway-port",
                "0",
                "--users-port",
                "0",
                "--redis-url",
                "redis://127.0.0.1:9",
                "--auth-mode",
                "all",
                "--jwks-url",
                jwks,
            ],
            vec![],
            &["--jwt-issuer"],
        ),
    ];
    for (args, envs, names) in cases {
        let (code, err) = run_refused(&args, &envs);
        assert!(
            matches!(code, Some(1 | 2)),
            "{args:?} {envs:?} exits 1 or 2, not {code:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?} {envs:?} → {err:?}");
        assert!(
            err.starts_with("platform: ") && names.iter().any(|n| err.contains(n)),
            "{args:?} {envs:?}: the line names one of {names:?}: {err}"
        );
    }
}

// ---- metrics and logs ----------------------------------------------------------------------

#[actix_web::test]
async fn auth_counters_exist_at_zero_before_the_first_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let text = metrics(&gw).await;
    let success = [("status", "success"), ("reason", "ok")];
    assert_eq!(
        sample(&text, "authentication_attempts_total", &success),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "jwks_refresh_total", &[("result", "error")]),
        Some(0.0)
    );
    assert!(sample(&text, "jwks_refresh_total", &[("result", "ok")]).is_some_and(|n| n >= 1.0));
}

#[actix_web::test]
async fn authentication_attempts_are_counted_by_status_and_reason() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;

    let ok = [Token::new(Key::Es256).sign(), Token::new(Key::EdDsa).sign()];
    for token in &ok {
        assert_eq!(get(&gw, ECHO, token).await.status, 200);
    }
    let refused = [
        Token::new(Key::Es256).iat_in(-600).exp_in(-120).sign(),
        Token::new(Key::Es256).nbf_in(120).sign(),
        Token::new(Key::Es256).sign_corrupted(),
        Token::new(Key::Es256).iss("https://evil.example").sign(),
        Token::new(Key::Es256).aud("billing-api").sign(),
        Token::new(Key::Es256).exp_in(48 * 3600).sign(),
        Token::new(Key::Rs256).sign_hs256_with_public_key(),
    ];
    for token in &refused {
        let status = get(&gw, ECHO, token).await.status;
        assert!(status == 401 || status == 403, "{status}");
    }
    assert_eq!(gw.get(ECHO).await.status, 401);
    let basic = ("Authorization", "Basic dXNlcjpwYXNz".to_owned());
    assert_eq!(request(&gw, "GET", ECHO, &[basic]).await.status, 400);
    let two = [bearer(&ok[0]), bearer(&ok[1])];
    assert_eq!(request(&gw, "GET", ECHO, &two).await.status, 400);

    let text = metrics(&gw).await;
    for (status, reason, n) in [
        ("success", "ok", 2.0),
        ("failure", "expired", 1.0),
        ("failure", "not_yet_valid", 1.0),
        ("failure", "bad_signature", 1.0),
        ("failure", "bad_issuer", 1.0),
        ("failure", "bad_audience", 1.0),
        ("failure", "lifetime", 1.0),
        ("failure", "bad_algorithm", 1.0),
        ("failure", "missing", 1.0),
        ("failure", "malformed", 1.0),
        ("failure", "multiple_credentials", 1.0),
    ] {
        let labels = [("status", status), ("reason", reason)];
        assert_eq!(
            sample(&text, "authentication_attempts_total", &labels),
            Some(n),
            "{status}/{reason} in:\n{text}"
        );
    }
}

#[actix_web::test]
async fn jwks_metrics_report_the_loaded_set_and_failed_refreshes() {
    let started = now();
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let flags = ["--jwks-refresh", "1s", "--jwks-min-refetch", "1s"];
    let gw = gateway("all", &echo.url(), &jwks, &flags).await;

    let text = metrics(&gw).await;
    assert_eq!(sample(&text, "jwks_keys", &[]), Some(3.0), "{text}");
    assert!(refreshes(&gw, "ok").await >= 1.0);
    let loaded_at = sample(&text, "jwks_last_success_timestamp_seconds", &[]).unwrap_or(0.0);
    let (from, to) = ((started - 1) as f64, (now() + 1) as f64);
    assert!(
        (from..=to).contains(&loaded_at),
        "{loaded_at} not in {from}..={to}"
    );

    jwks.set_status(500);
    poll_until(DEADLINE, "a refresh failed", async || {
        refreshes(&gw, "error").await >= 1.0
    })
    .await;
    let text = metrics(&gw).await;
    assert_eq!(
        sample(&text, "jwks_keys", &[]),
        Some(3.0),
        "the last good set stays"
    );
    let still = sample(&text, "jwks_last_success_timestamp_seconds", &[]).unwrap_or(0.0);
    assert!((loaded_at..=to + 2.0).contains(&still), "{still}");
}

#[actix_web::test]
async fn the_access_line_names_the_subject_and_no_log_line_holds_a_token() {
    let users = spawn_app().await;
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &users.address, &jwks, &["--jwt-cookie", "session"]).await;

    let token = Token::new(Key::Es256).sub("user-log-7").sign();
    assert_eq!(get(&gw, "/api/users", &token).await.status, 200);
    assert_eq!(access_line(&gw, "/api/users").await["sub"], "user-log-7");

    let expired = Token::new(Key::Es256).iat_in(-600).exp_in(-120).sign();
    let refused_path = format!("/api/users/{}", uuid::Uuid::new_v4());
    assert_eq!(get(&gw, &refused_path, &expired).await.status, 401);
    let refused = access_line(&gw, &refused_path).await;
    assert!(refused.get("sub").is_none(), "{refused}");

    let cookie_path = format!("/api/users/{}", uuid::Uuid::new_v4());
    let reply = request(
        &gw,
        "GET",
        &cookie_path,
        &[cookie(format!("session={token}"))],
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    access_line(&gw, &cookie_path).await;
    let query_path = format!("/api/users/{}", uuid::Uuid::new_v4());
    gw.get(&format!("{query_path}?access_token={token}")).await;
    access_line(&gw, &query_path).await;

    let logs = gw.logs.contents() + &users.logs.contents();
    for secret in [&token, &expired] {
        let signature = secret.rsplit('.').next().unwrap_or_default();
        assert!(
            !logs.contains(secret.as_str()) && !logs.contains(signature),
            "a token was logged:\n{logs}"
        );
    }
}

// ---- what an independent review found ------------------------------------------------------

#[actix_web::test]
async fn an_unknown_kid_whose_refetch_fails_is_a_503_not_an_invalid_token() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let mut jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwks-min-refetch", "1s"]).await;
    jwks.stop();
    let_min_refetch_pass().await;
    // The provider may have rotated to a key the gateway could not fetch: it cannot tell.
    let rotated = Token::new(Key::Es256Next).sign();
    assert_unavailable(&get(&gw, ECHO, &rotated).await);
    // Known keys keep verifying meanwhile.
    assert_eq!(
        get(&gw, ECHO, &Token::new(Key::Es256).sign()).await.status,
        200
    );
}

#[actix_web::test]
async fn a_late_iat_cannot_stretch_a_token_past_the_max_lifetime() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-max-lifetime", "1h"]).await;
    // Valid for a year, claiming to be issued an hour before it expires.
    let stretched = Token::new(Key::Es256)
        .exp_in(365 * 24 * 3600)
        .iat_in(365 * 24 * 3600 - 3600)
        .sign();
    let reply = get(&gw, ECHO, &stretched).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    // Issued in the future beyond the leeway: not yet valid.
    let future = Token::new(Key::Es256).iat_in(600).exp_in(1200).sign();
    assert_invalid(&get(&gw, ECHO, &future).await, "token not yet valid");
}

#[actix_web::test]
async fn a_token_without_a_subject_is_not_valid() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &[]).await;
    let nobody = Token::new(Key::Es256).without("sub").sign();
    assert_invalid(&get(&gw, ECHO, &nobody).await, "token not valid");
}

#[actix_web::test]
async fn mode_writes_counts_every_unsafe_method_as_a_write() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("writes", &echo.url(), &jwks, &[]).await;
    for method in ["PROPPATCH", "PURGE"] {
        assert_required(&request(&gw, method, ECHO, &[]).await);
    }
    assert_eq!(request(&gw, "OPTIONS", ECHO, &[]).await.status, 200);
}

#[actix_web::test]
async fn the_named_cookie_twice_is_an_invalid_request() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-cookie", "session"]).await;
    let token = Token::new(Key::Es256).sign();
    let twice = cookie(format!("session={token}; session={token}"));
    let reply = request(&gw, "GET", ECHO, &[twice]).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.body["error"], "invalid_request");
}

#[test]
fn claim_headers_the_proxy_owns_are_refused_at_start() {
    for mapping in [
        "sub=Authorization",
        "sub=X-Forwarded-For",
        "sub=Host",
        "sub=X-Request-ID",
        "sub=X-User,scope=X-User",
    ] {
        let (code, _, stderr) =
            crate::helpers::run_binary(&["gateway", "--jwt-claim-headers", mapping]);
        assert_ne!(code, Some(0), "{mapping}");
        assert_eq!(stderr.lines().count(), 1, "{mapping}: {stderr}");
        assert!(
            stderr.contains("--jwt-claim-headers"),
            "{mapping}: {stderr}"
        );
    }
}

#[actix_web::test]
async fn a_token_from_the_cookie_is_not_sent_upstream_unless_forwarded() {
    let echo = FakeUpstream::start(Behaviour::Echo);
    let jwks = JwksServer::http(&INITIAL_KEYS);
    let token = Token::new(Key::Es256).sign();
    let among_others = || cookie(format!("theme=dark; session={token}; lang=en"));

    let gw = gateway("all", &echo.url(), &jwks, &["--jwt-cookie", "session"]).await;
    let reply = request(&gw, "GET", ECHO, &[among_others()]).await;
    assert_eq!(
        seen(&reply, "cookie"),
        ["theme=dark; lang=en"],
        "{}",
        reply.body
    );
    assert!(
        !reply.text.contains(&token),
        "the token reached the upstream"
    );
    let alone = request(&gw, "GET", ECHO, &[cookie(format!("session={token}"))]).await;
    assert!(seen(&alone, "cookie").is_empty(), "{}", alone.body);

    let forwarding = gateway(
        "all",
        &echo.url(),
        &jwks,
        &["--jwt-cookie", "session", "--jwt-forward-token"],
    )
    .await;
    let reply = request(&forwarding, "GET", ECHO, &[among_others()]).await;
    assert_eq!(
        seen(&reply, "cookie"),
        [format!("theme=dark; session={token}; lang=en")]
    );
}
