//! The auth role (`platform auth`): the client_credentials grant, its keys and their rotation,
//! the JWKS, the tasks of the binary, and the gateway in front of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use platform::auth::{keys, secrets};
use platform::config::Argon2Settings;
use serde_json::{Value, json};

use crate::helpers::{
    ARGON2, ARGON2_FLAGS, AUTH_ISSUER as ISSUER, BIN, Http, Process, RedisServer, Reply,
    TestGateway, free_port, json_lines, poll_until, run_binary, spawn_app, spawn_auth,
    spawn_gateway,
};

const SECRET: &str = "s3cret-Of-Reporting";
const APP_SECRET: &str = "p@ss word:with colon";

/// A keys directory with one key, a clients file, and the auth role serving them.
struct Fixture {
    auth: TestGateway,
    keys: tempfile::TempDir,
    clients: PathBuf,
    _files: tempfile::TempDir,
    hashes: Vec<String>,
}

impl std::ops::Deref for Fixture {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.auth.http
    }
}

fn clients_json() -> (Value, Vec<String>) {
    let hashes = vec![
        secrets::hash(&ARGON2, SECRET.as_bytes()).expect("hashed"),
        secrets::hash(&ARGON2, APP_SECRET.as_bytes()).expect("hashed"),
    ];
    let clients = json!([
        {"client_id": "reporting", "secret_hash": hashes[0], "scopes": ["users:read", "users:write"]},
        {"client_id": "my:app", "secret_hash": hashes[1], "scopes": ["users:read"]},
    ]);
    (clients, hashes)
}

async fn fixture(extra: &[&str]) -> Fixture {
    let keys = tempfile::tempdir().expect("temp dir");
    keys::generate(keys.path()).expect("a key");
    fixture_with(keys, extra).await
}

async fn fixture_with(keys: tempfile::TempDir, extra: &[&str]) -> Fixture {
    let files = tempfile::tempdir().expect("temp dir");
    let clients = files.path().join("clients.json");
    let (json, hashes) = clients_json();
    std::fs::write(&clients, json.to_string()).expect("clients file");
    let dir = keys.path().to_str().expect("utf-8 path").to_owned();
    let file = clients.to_str().expect("utf-8 path").to_owned();
    let mut flags = vec![
        "--issuer",
        ISSUER,
        "--signing-keys-dir",
        &dir,
        "--clients-file",
        &file,
    ];
    if !extra.contains(&"--redis-url") {
        // Nothing listens there: not ready, which only the readiness test looks at.
        flags.extend(["--redis-url", "redis://127.0.0.1:1"]);
    }
    flags.extend_from_slice(&ARGON2_FLAGS);
    flags.extend_from_slice(extra);
    let auth = spawn_auth(&flags).await;
    Fixture {
        auth,
        keys,
        clients,
        _files: files,
        hashes,
    }
}

fn basic(id: &str, secret: &str) -> String {
    // RFC 6749 §2.3.1: each part form-urlencoded, then base64.
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id), encode(secret));
    format!("Basic {}", STANDARD.encode(pair))
}

async fn token_request(
    http: &Http,
    path: &str,
    form: &str,
    authorization: Option<String>,
) -> Reply {
    let mut req = http
        .client
        .post(http.url(path))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    if let Some(value) = authorization {
        req = req.insert_header(("Authorization", value));
    }
    http.send(req, Some(form)).await
}

async fn token(http: &Http, form: &str, authorization: Option<String>) -> Reply {
    token_request(http, "/auth/token", form, authorization).await
}

const GRANT: &str = "grant_type=client_credentials";

/// The token's header and claims, once it verifies against `jwks` (ES256, issuer, audience).
fn verified(token: &str, jwks: &Value) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(token).expect("a JWT header");
    let set: JwkSet = serde_json::from_value(jwks.clone()).expect("a JWK set");
    let kid = header.kid.clone().expect("a kid");
    let jwk = set.find(&kid).expect("the kid is published");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&["platform-api"]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
    let key = DecodingKey::from_jwk(jwk).expect("a usable JWK");
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies");
    (header, data.claims)
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .ok()
        .and_then(|h| h.kid)
        .expect("a kid")
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    files.sort();
    files
}

/// The body of an error answer without its request id (which differs per request).
fn without_id(reply: &Reply) -> Value {
    let mut body = reply.body.clone();
    body.as_object_mut().map(|b| b.remove("request_id"));
    body
}

#[actix_web::test]
async fn client_credentials_with_basic_or_body_auth_returns_an_rfc_9068_token_the_jwks_verifies() {
    let auth = fixture(&[]).await;
    let jwks = auth.get("/.well-known/jwks.json").await.body;

    let reply = token(&auth, GRANT, Some(basic("reporting", SECRET))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(reply.header("pragma").as_deref(), Some("no-cache"));
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["expires_in"], 900);
    assert_eq!(reply.body["scope"], "users:read users:write");
    let access = reply.body["access_token"].as_str().expect("a token");
    let (header, claims) = verified(access, &jwks);
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(
        Some(header.kid.clone().expect("kid")),
        kids(&jwks).first().cloned()
    );
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "reporting");
    assert_eq!(claims["client_id"], "reporting");
    assert_eq!(claims["aud"], "platform-api");
    assert_eq!(claims["scope"], "users:read users:write");
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(900));
    assert_eq!(claims["nbf"], claims["iat"]);
    let jti = claims["jti"].as_str().expect("jti");
    assert_eq!(
        uuid::Uuid::parse_str(jti).map(|u| u.get_version_num()),
        Ok(4)
    );

    // The body's credentials, a client id that needs form-encoding inside Basic.
    let form = format!(
        "{GRANT}&client_id=reporting&client_secret={}&scope=users%3Aread",
        url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
    );
    let reply = token(&auth, &form, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["scope"], "users:read");
    let reply = token(&auth, GRANT, Some(basic("my:app", APP_SECRET))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, claims) = verified(reply.body["access_token"].as_str().expect("token"), &jwks);
    assert_eq!(
        (&claims["sub"], &claims["scope"]),
        (&json!("my:app"), &json!("users:read"))
    );

    let line = auth
        .auth
        .access_line("/auth/token")
        .expect("an access line");
    assert_eq!(
        (&line["status"], &line["sub"]),
        (&json!(200), &json!("reporting"))
    );
    let metrics = auth.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"tokens_issued_total{grant="client_credentials"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("password_hash_duration_seconds_count 3"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn a_wrong_secret_and_an_unknown_client_get_the_same_401_in_at_least_the_hash_time() {
    let auth = fixture(&[]).await;
    // What one hash costs here at least (the fastest of three: a busy machine only adds):
    // neither answer may come faster.
    let hash_time = (0..3)
        .map(|_| {
            let started = Instant::now();
            secrets::hash(&ARGON2, b"x").expect("hashed");
            started.elapsed()
        })
        .min()
        .expect("three timings");

    let started = Instant::now();
    let wrong = token(&auth, GRANT, Some(basic("reporting", "wrong"))).await;
    let wrong_time = started.elapsed();
    let started = Instant::now();
    let unknown = token(&auth, GRANT, Some(basic("nobody", "wrong"))).await;
    let unknown_time = started.elapsed();
    for reply in [&wrong, &unknown] {
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert_eq!(reply.body["error"], "invalid_client");
        assert_eq!(
            reply.header("www-authenticate").as_deref(),
            Some(r#"Basic realm="platform""#)
        );
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
        assert!(reply.body["request_id"].is_string());
        assert_eq!(reply.body["message"], reply.body["error_description"]);
    }
    assert_eq!(without_id(&wrong), without_id(&unknown));
    for elapsed in [wrong_time, unknown_time] {
        assert!(elapsed >= hash_time / 2, "{elapsed:?} < {hash_time:?} / 2");
    }

    // Credentials in the body: the same 401, without a Basic challenge.
    let body = token(
        &auth,
        &format!("{GRANT}&client_id=reporting&client_secret=no"),
        None,
    )
    .await;
    assert_eq!(body.status, 401);
    assert_eq!(without_id(&body), without_id(&unknown));
    assert!(body.header("www-authenticate").is_none());
    let metrics = auth.get("/metrics").await.text;
    assert!(
        metrics.contains(r#"tokens_issued_total{grant="client_credentials"} 0"#),
        "{metrics}"
    );
}

#[actix_web::test]
async fn unsupported_grants_and_malformed_requests_are_400_with_the_rfc_6749_codes() {
    let auth = fixture(&[]).await;
    let (both, twice) = (
        format!("{GRANT}&client_id=reporting&client_secret=x"),
        format!("{GRANT}&{GRANT}"),
    );
    let cases = [
        (
            "grant_type=password&username=a&password=b",
            "unsupported_grant_type",
        ),
        ("client_id=reporting", "invalid_request"),
        (both.as_str(), "invalid_request"),
        (twice.as_str(), "invalid_request"),
    ];
    for (form, code) in cases {
        let reply = token(&auth, form, Some(basic("reporting", SECRET))).await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (400, Some(code)),
            "{form}"
        );
        assert!(reply.body["error_description"].is_string());
    }
    let json = auth
        .send(
            auth.client
                .post(auth.url("/auth/token"))
                .insert_header(("Content-Type", "application/json")),
            Some(r#"{"grant_type":"client_credentials"}"#),
        )
        .await;
    assert_eq!(
        (json.status, json.body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let get = auth.get("/auth/token").await;
    get.assert_error(405, "method_not_allowed");
}

#[actix_web::test]
async fn only_a_subset_of_the_clients_scopes_is_granted() {
    let auth = fixture(&[]).await;
    let ask = |scope: &str| {
        format!(
            "{GRANT}&scope={}",
            scope.replace(' ', "+").replace(':', "%3A")
        )
    };
    let subset = token(&auth, &ask("users:write"), Some(basic("reporting", SECRET))).await;
    assert_eq!(
        (subset.status, &subset.body["scope"]),
        (200, &json!("users:write"))
    );
    for over in ["users:read users:admin", "users:write"] {
        let reply = token(&auth, &ask(over), Some(basic("my:app", APP_SECRET))).await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{over}"
        );
    }
}

#[actix_web::test]
async fn the_jwks_and_the_discovery_document_are_served_at_the_root_and_under_auth() {
    let auth = fixture(&[]).await;
    let jwks = auth.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert_eq!(
        jwks.header("cache-control").as_deref(),
        Some("public, max-age=300")
    );
    let key = &jwks.body["keys"][0];
    for (name, value) in [
        ("kty", "EC"),
        ("crv", "P-256"),
        ("alg", "ES256"),
        ("use", "sig"),
    ] {
        assert_eq!(key[name], value, "{key}");
    }
    let (x, y) = (key["x"].as_str().expect("x"), key["y"].as_str().expect("y"));
    assert_eq!(key["kid"], keys::thumbprint(x, y));
    // RFC 7638 as jsonwebtoken computes it, independently of ours.
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).expect("a JWK");
    let theirs = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
    assert_eq!(key["kid"].as_str(), theirs.ok().as_deref());
    assert!(key.get("d").is_none(), "never the private part");
    assert_eq!(
        auth.get("/auth/.well-known/jwks.json").await.body,
        jwks.body
    );

    let discovery = auth.get("/auth/.well-known/openid-configuration").await;
    assert_eq!(discovery.status, 200);
    let doc = &discovery.body;
    assert_eq!(doc["issuer"], ISSUER);
    assert_eq!(doc["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(doc["token_endpoint"], format!("{ISSUER}/token"));
    assert_eq!(
        doc["grant_types_supported"],
        json!(["client_credentials", "refresh_token"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
}

#[actix_web::test]
async fn a_new_key_is_published_at_once_and_signs_only_after_the_publish_delay() {
    let auth = fixture(&["--key-publish-delay", "3s"]).await;
    let first = kids(&auth.get("/.well-known/jwks.json").await.body);
    assert_eq!(first.len(), 1);
    let issued_kid = async || {
        let reply = token(&auth, GRANT, Some(basic("reporting", SECRET))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        kid_of(reply.body["access_token"].as_str().expect("token"))
    };
    assert_eq!(
        issued_kid().await,
        first[0],
        "a fresh install signs at once"
    );

    let added = Instant::now();
    keys::generate(auth.keys.path()).expect("a second key");
    let mut both = Vec::new();
    poll_until(
        Duration::from_secs(5),
        "the new key is published",
        async || {
            both = kids(&auth.get("/.well-known/jwks.json").await.body);
            both.len() == 2
        },
    )
    .await;
    let second = both
        .iter()
        .find(|k| **k != first[0])
        .expect("new kid")
        .clone();
    if added.elapsed() < Duration::from_millis(1500) {
        assert_eq!(issued_kid().await, first[0], "published, not signing yet");
    }
    poll_until(Duration::from_secs(10), "the new key signs", async || {
        issued_kid().await == second
    })
    .await;
    assert!(
        added.elapsed() >= Duration::from_secs(3),
        "not before the delay"
    );

    // Retired: still published, never signs. Removed: gone.
    let files = key_files(auth.keys.path());
    let retired = auth.keys.path().join(keys::RETIRED);
    std::fs::create_dir(&retired).expect("retired/");
    let old = files
        .iter()
        .find(|f| f.to_string_lossy().contains(&first[0]))
        .expect("old file");
    std::fs::rename(old, retired.join(old.file_name().expect("name"))).expect("moved");
    keys::generate(&retired).expect("a retired key");
    poll_until(
        Duration::from_secs(5),
        "retired keys are published",
        async || kids(&auth.get("/.well-known/jwks.json").await.body).len() == 3,
    )
    .await;
    assert_eq!(issued_kid().await, second);
    std::fs::remove_dir_all(&retired).expect("removed");
    poll_until(
        Duration::from_secs(5),
        "removed keys disappear",
        async || kids(&auth.get("/.well-known/jwks.json").await.body) == [second.clone()],
    )
    .await;
}

#[actix_web::test]
async fn without_a_key_the_role_starts_not_ready_and_becomes_ready_when_one_appears() {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().expect("temp dir");
    std::fs::write(keys.path().join("broken.pem"), "not a key").expect("written");
    let url = redis.url();
    let auth = fixture_with(keys, &["--redis-url", &url]).await;
    let ready = auth.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.body["dependencies"],
        json!({"redis": "up", "signing_key": "down"})
    );
    let refused = token(&auth, GRANT, Some(basic("reporting", SECRET))).await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert!(
        json_lines(&auth.auth.logs)
            .iter()
            .any(|l| l["msg"] == "signing key skipped" && l["file"] == "broken.pem"),
        "an invalid key file is logged and skipped"
    );
    keys::generate(auth.keys.path()).expect("a key");
    poll_until(
        Duration::from_secs(5),
        "ready once a key is there",
        async || auth.get("/health/ready").await.status == 200,
    )
    .await;
    let health = auth.get("/health").await.body;
    assert_eq!(health["service"], "auth");
    let reply = token(&auth, GRANT, Some(basic("reporting", SECRET))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        json_lines(&auth.auth.logs)
            .iter()
            .all(|l| l["service"] == "auth")
    );
}

#[actix_web::test]
async fn a_changed_clients_file_is_read_again() {
    let auth = fixture(&[]).await;
    let hash = secrets::hash(&ARGON2, b"new-secret").expect("hashed");
    let clients = json!([{"client_id": "late", "secret_hash": hash, "scopes": ["a"]}]);
    std::fs::write(&auth.clients, clients.to_string()).expect("rewritten");
    poll_until(
        Duration::from_secs(5),
        "the new client is known",
        async || {
            token(&auth, GRANT, Some(basic("late", "new-secret")))
                .await
                .status
                == 200
        },
    )
    .await;
    assert_eq!(
        token(&auth, GRANT, Some(basic("reporting", SECRET)))
            .await
            .status,
        401
    );
    // A broken file leaves the last good list in place.
    std::fs::write(&auth.clients, "[{").expect("rewritten");
    poll_until(
        Duration::from_secs(5),
        "the broken file is logged",
        async || {
            json_lines(&auth.auth.logs)
                .iter()
                .any(|l| l["msg"] == "clients file not loaded")
        },
    )
    .await;
    assert_eq!(
        token(&auth, GRANT, Some(basic("late", "new-secret")))
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn no_secret_hash_token_or_key_reaches_the_logs_or_the_answers() {
    let auth = fixture(&[]).await;
    let ok = token(&auth, GRANT, Some(basic("reporting", SECRET))).await;
    let issued = ok.body["access_token"].as_str().expect("token").to_owned();
    let form = format!("{GRANT}&client_id=reporting&client_secret=body-{SECRET}");
    let wrong = token(&auth, &form, None).await;
    let metrics = auth.get("/metrics").await.text;
    let key_file = key_files(auth.keys.path()).remove(0);
    let pem = std::fs::read_to_string(&key_file).expect("key");
    let pem_body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let logs = auth.auth.logs.contents();
    assert!(logs.contains("token issued"), "the role logged: {logs}");
    let mut secrets: Vec<&str> = vec![SECRET, APP_SECRET, &issued];
    secrets.extend(auth.hashes.iter().map(String::as_str));
    secrets.extend(auth.hashes.iter().filter_map(|h| h.rsplit('$').next()));
    secrets.extend(pem_body);
    for secret in secrets {
        for (place, text) in [("logs", &logs), ("metrics", &metrics), ("401", &wrong.text)] {
            assert!(!text.contains(secret), "{place} contain a secret");
        }
    }
}

#[test]
fn hash_secret_reads_stdin_and_generate_key_writes_a_0600_key_named_by_time_and_kid() {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut child = std::process::Command::new(BIN)
        .args(["auth", "hash-secret"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{SECRET}\n").as_bytes())
        .expect("written");
    let out = child.wait_with_output().expect("exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let phc = stdout.trim();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert_eq!(stdout.lines().count(), 1);
    assert!(!stdout.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET));
    use argon2::PasswordVerifier as _;
    assert!(
        argon2::Argon2::default()
            .verify_password(SECRET.as_bytes(), phc)
            .is_ok()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("utf-8").to_owned();
    let (code, stdout, _) = run_binary(&["auth", "generate-key", &path]);
    assert_eq!(code, Some(0));
    let file = PathBuf::from(stdout.trim());
    let mode = std::fs::metadata(&file)
        .expect("written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let (stamp, kid) = name
        .trim_end_matches(".pem")
        .split_once('-')
        .expect("time-kid");
    assert_eq!((stamp.len(), kid.len()), (16, 43), "{name}");
    let pem = std::fs::read(&file).expect("key");
    let key = keys::SigningKey::from_pem(&pem, std::time::SystemTime::now(), name.clone());
    assert_eq!(key.map(|k| k.kid).ok().as_deref(), Some(kid));
}

#[test]
fn no_issuer_or_no_keys_directory_stops_the_start_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().to_str().expect("utf-8").to_owned();
    let port = free_port().to_string();
    for (args, flag) in [
        (
            vec!["auth", "--port", &port, "--signing-keys-dir", &keys],
            "--issuer",
        ),
        (
            vec!["auth", "--port", &port, "--issuer", ISSUER],
            "--signing-keys-dir",
        ),
        (
            vec![
                "auth",
                "--port",
                &port,
                "--issuer",
                "not a url",
                "--signing-keys-dir",
                &keys,
            ],
            "--issuer",
        ),
    ] {
        let (code, _, stderr) = run_binary(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}

/// The gateway in front of the users and auth roles, verifying against the auth role's JWKS.
async fn gateway_in_front(auth: &Fixture, users: &str) -> TestGateway {
    let jwks = auth.url("/.well-known/jwks.json");
    spawn_gateway(
        users,
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
            "--jwks-min-refetch",
            "1s",
        ],
    )
    .await
}

async fn post_user(gw: &Http, bearer: Option<&str>, email: &str) -> Reply {
    let mut req = gw
        .client
        .post(gw.url("/api/users"))
        .insert_header(("Content-Type", "application/json"));
    if let Some(token) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let body = json!({"name": "Ada", "email": email}).to_string();
    gw.send(req, Some(&body)).await
}

#[actix_web::test]
async fn a_token_from_the_gateways_api_auth_lets_a_write_through_and_rotation_needs_no_restart() {
    let users = spawn_app().await;
    let auth = fixture(&["--key-publish-delay", "1s"]).await;
    let gw = gateway_in_front(&auth, &users.address).await;

    assert_eq!(post_user(&gw, None, "a@example.com").await.status, 401);
    let reply = token_request(
        &gw,
        "/api/auth/token",
        GRANT,
        Some(basic("reporting", SECRET)),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let first = reply.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(
        post_user(&gw, Some(&first), "a@example.com").await.status,
        201
    );
    let wrong = token_request(
        &gw,
        "/api/auth/token",
        GRANT,
        Some(basic("reporting", "no")),
    )
    .await;
    assert_eq!(
        (wrong.status, wrong.body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(
        wrong
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("Basic"))
    );
    let discovery = gw.get("/api/auth/.well-known/openid-configuration").await;
    assert_eq!(
        discovery.body["jwks_uri"],
        format!("{ISSUER}/.well-known/jwks.json")
    );

    // A new key: once it signs, the gateway fetches it on its unknown kid, no restart.
    keys::generate(auth.keys.path()).expect("a second key");
    let mut rotated = String::new();
    poll_until(Duration::from_secs(10), "the new key signs", async || {
        let reply = token_request(
            &gw,
            "/api/auth/token",
            GRANT,
            Some(basic("reporting", SECRET)),
        )
        .await;
        rotated = reply.body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        kid_of(&rotated) != kid_of(&first)
    })
    .await;
    let mut status = 0;
    poll_until(
        Duration::from_secs(5),
        "the gateway accepts it",
        async || {
            status = post_user(&gw, Some(&rotated), &format!("{}@example.com", free_port()))
                .await
                .status;
            status == 201
        },
    )
    .await;
    let logs = gw.logs.contents();
    assert!(
        !logs.contains(SECRET) && !logs.contains(&rotated),
        "nothing secret in the gateway's log"
    );
    let metrics = gw.get("/metrics").await.text;
    assert!(metrics.contains(r#"upstream_request_duration_seconds_count{service="auth",method="POST",status_code="200"}"#), "{metrics}");
}

#[test]
fn platform_all_points_the_gateway_at_its_in_process_auth_role() {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().expect("temp dir");
    keys::generate(keys.path()).expect("a key");
    let clients = keys.path().join("clients.json");
    let (json, _) = clients_json();
    std::fs::write(&clients, json.to_string()).expect("clients file");
    let auth_port = free_port().to_string();
    let (dir, file) = (
        keys.path().to_str().expect("utf-8"),
        clients.to_str().expect("utf-8"),
    );
    let envs = [
        ("AUTH_PORT", auth_port.as_str()),
        ("SIGNING_KEYS_DIR", dir),
        ("CLIENTS_FILE", file),
        ("AUTH_MODE", "writes"),
        ("ARGON2_MEMORY_KIB", "4096"),
    ];
    let (process, _) = Process::all_with(&redis.url(), &envs);
    let gateway = process.url("");
    let run = async move {
        let http = Http::new(process.port);
        let reply = token_request(
            &http,
            "/api/auth/token",
            GRANT,
            Some(basic("reporting", SECRET)),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let access = reply.body["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let claims = access
            .split('.')
            .nth(1)
            .map(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c));
        let claims: Value =
            serde_json::from_slice(&claims.expect("claims").expect("base64")).expect("json");
        assert_eq!(claims["iss"], format!("{gateway}/api/auth"));
        let mut status = 0;
        poll_until(
            Duration::from_secs(10),
            "the gateway has the auth role's keys",
            async || {
                status = post_user(&http, Some(&access), "all@example.com")
                    .await
                    .status;
                status == 201
            },
        )
        .await;
        assert_eq!(post_user(&http, None, "none@example.com").await.status, 401);
        let auth = Http::new(auth_port.parse().expect("port"));
        assert_eq!(auth.get("/health").await.body["service"], "auth");
    };
    actix_web::rt::System::new().block_on(run);
}

#[actix_web::test]
async fn a_flood_of_token_requests_waits_for_the_hasher_while_other_requests_are_answered() {
    let auth = fixture(&[]).await;
    // One worker, so one verification at a time; each of these costs tens of ms.
    let heavy = Argon2Settings {
        argon2_memory_kib: 32768,
        argon2_iterations: 3,
        argon2_parallelism: 1,
    };
    let hash = secrets::hash(&heavy, b"heavy-secret").expect("hashed");
    let clients = json!([{"client_id": "heavy", "secret_hash": hash, "scopes": []}]);
    std::fs::write(&auth.clients, clients.to_string()).expect("rewritten");
    poll_until(
        Duration::from_secs(5),
        "the heavy client is known",
        async || {
            token(&auth, GRANT, Some(basic("heavy", "heavy-secret")))
                .await
                .status
                == 200
        },
    )
    .await;
    let started = Instant::now();
    let flood = futures_util::future::join_all(
        (0..12).map(|_| token(&auth, GRANT, Some(basic("heavy", "wrong")))),
    );
    let probe = async {
        // Once the flood is queued, a probe is answered at once, not after it.
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        let probed = Instant::now();
        assert_eq!(auth.get("/health/live").await.status, 200);
        probed.elapsed()
    };
    let (replies, probe_time) = tokio::join!(flood, probe);
    let flood_time = started.elapsed();
    assert!(replies.iter().all(|r| r.status == 401));
    assert!(
        probe_time * 4 < flood_time,
        "probe {probe_time:?}, flood {flood_time:?}"
    );
}

#[actix_web::test]
async fn the_gateway_stays_ready_without_the_auth_role_and_answers_502_for_api_auth() {
    let users = spawn_app().await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let gw = spawn_gateway(&users.address, &["--auth-url", &nowhere]).await;
    let ready = gw.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let reply = token_request(&gw, "/api/auth/token", GRANT, Some(basic("a", "b"))).await;
    let body = reply.assert_error(502, "upstream_unavailable");
    assert_eq!(body["message"], "the auth service is unavailable");
    assert_eq!(gw.get("/api/users").await.status, 200);
}
