//! The OpenAPI documents (`GET /openapi.json`) against the route tables they describe, on
//! `platform all` with authentication on (gateway, users and auth roles, one real process):
//! every documented operation is routed (neither the 404 of an unknown path nor a 405) and
//! answers a documented status; every other method on a documented path is a 405 whose `Allow`
//! lists exactly the documented methods; paths next to the documented ones are 404s.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use platform::auth::{keys, secrets};
use serde_json::{Value, json};

use crate::helpers::{ARGON2, Http, Process, RedisServer, Reply, free_port};

const SECRET: &str = "s3cret-Of-The-Drift-Test";
const ID: &str = "5b0d7c1e-8f7a-4a8e-9a55-1f2b3c4d5e6f";
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn send(
    http: &Http,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
    token: Option<&str>,
) -> Reply {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = http.client.request(method, http.url(path));
    if let Some(token) = token {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    match body {
        Some((content_type, body)) => {
            req = req.insert_header(("Content-Type", content_type));
            http.send(req, Some(body)).await
        }
        None => http.send(req, None).await,
    }
}

/// Each documented path (its `{id}` filled in) with its documented methods.
fn documented(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.is_empty());
    paths
        .iter()
        .map(|(path, item)| (path.clone(), path.replace("{id}", ID), item.clone()))
        .collect()
}

/// The route table of the role at `http` is the document it serves, and vice versa.
async fn document_matches_routes(http: &Http, token: Option<&str>, probes: &[&str]) -> Value {
    let reply = http.get("/openapi.json").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    let doc = reply.body.clone();
    assert_eq!(doc["openapi"], "3.1.0");
    for (pattern, path, item) in documented(&doc) {
        let mut methods = BTreeSet::new();
        for (method, op) in item.as_object().expect("a path item") {
            let method = method.to_uppercase();
            assert!(METHODS.contains(&method.as_str()), "{method} {pattern}");
            methods.insert(method.clone());
            let content = op["requestBody"]["content"].as_object();
            let body = content.map(|c| match c.keys().next().map(String::as_str) {
                Some("application/x-www-form-urlencoded") => (
                    "application/x-www-form-urlencoded",
                    "grant_type=client_credentials",
                ),
                _ => ("application/json", "{}"),
            });
            let reply = send(http, &method, &path, body, token).await;
            let routed =
                reply.status != 405 && !(reply.status == 404 && reply.body["error"] == "not_found");
            assert!(
                routed,
                "{method} {path} is documented but not routed: {} {}",
                reply.status, reply.text
            );
            let status = reply.status.to_string();
            assert!(
                op["responses"].get(&status).is_some(),
                "{method} {path} answered {status}, which its document does not list: {}",
                reply.text
            );
        }
        let allow = methods.iter().cloned().collect::<Vec<_>>().join(", ");
        for method in METHODS.iter().filter(|m| !methods.contains(**m)) {
            let body = (*method != "GET").then_some(("application/json", "{}"));
            let reply = send(http, method, &path, body, token).await;
            reply.assert_error(405, "method_not_allowed");
            assert_eq!(
                reply.header("allow"),
                Some(allow.clone()),
                "{method} {path}"
            );
        }
        let beyond = format!("{path}/x");
        if !documented(&doc).iter().any(|(p, _, _)| matches(p, &beyond)) {
            send(http, "GET", &beyond, None, token)
                .await
                .assert_error(404, "not_found");
        }
    }
    for path in probes {
        assert!(
            !documented(&doc).iter().any(|(p, _, _)| matches(p, path)),
            "{path}"
        );
        send(http, "GET", path, None, token)
            .await
            .assert_error(404, "not_found");
    }
    doc
}

/// Whether `path` matches the documented `pattern` (`{…}` is one segment).
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, path): (Vec<_>, Vec<_>) =
        (pattern.split('/').collect(), path.split('/').collect());
    pattern.len() == path.len()
        && pattern
            .iter()
            .zip(&path)
            .all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()))
}

fn paths(doc: &Value) -> BTreeSet<String> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_role_serves_a_document_that_matches_its_routes() {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().expect("temp dir");
    keys::generate(keys.path()).expect("a key");
    let clients = keys.path().join("clients.json");
    let hash = secrets::hash(&ARGON2, SECRET.as_bytes()).expect("hashed");
    let list = json!([{"client_id": "drift", "secret_hash": hash,
        "scopes": ["users:read", "users:write"]}]);
    std::fs::write(&clients, list.to_string()).expect("clients file");
    let auth_port = free_port();
    let auth_port_text = auth_port.to_string();
    let envs = [
        ("AUTH_PORT", auth_port_text.as_str()),
        ("SIGNING_KEYS_DIR", keys.path().to_str().expect("utf-8")),
        ("CLIENTS_FILE", clients.to_str().expect("utf-8")),
        ("AUTH_MODE", "writes"),
        ("ARGON2_MEMORY_KIB", "4096"),
        ("ARGON2_ITERATIONS", "2"),
        ("RATE_LIMIT", "local"),
        ("RATE_LIMIT_IP_REQUESTS", "100000"),
    ];
    let (process, users_port) = Process::all_with(&redis.url(), &envs);
    actix_web::rt::System::new().block_on(async move {
        let (gateway, users, auth) = (
            Http::new(process.port),
            Http::new(users_port),
            Http::new(auth_port),
        );
        let token = {
            let basic = STANDARD.encode(format!("drift:{SECRET}"));
            let req = gateway
                .client
                .post(gateway.url("/api/auth/token"))
                .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
                .insert_header(("Authorization", format!("Basic {basic}")));
            let reply = gateway
                .send(req, Some("grant_type=client_credentials"))
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.body["access_token"]
                .as_str()
                .expect("a token")
                .to_owned()
        };
        let users_doc =
            document_matches_routes(&users, None, &["/", "/user", "/openapi", "/auth/token"]).await;
        let auth_doc =
            document_matches_routes(&auth, None, &["/", "/users", "/openapi", "/auth"]).await;
        let gateway_doc = document_matches_routes(
            &gateway,
            Some(&token),
            &[
                "/",
                "/users",
                "/auth/token",
                "/api",
                "/api/user",
                "/openapi",
                "/.well-known/jwks.json",
            ],
        )
        .await;

        // The gateway's document is the users' and auth's under /api, and its own.
        let own = [
            "/health",
            "/health/live",
            "/health/ready",
            "/metrics",
            "/openapi.json",
        ];
        let mut expected: BTreeSet<String> = own.iter().map(|p| p.to_string()).collect();
        for (doc, root) in [(&users_doc, "/users"), (&auth_doc, "/auth")] {
            expected.extend(
                paths(doc)
                    .into_iter()
                    .filter(|p| p == root || p.starts_with(&format!("{root}/")))
                    .map(|p| format!("/api{p}")),
            );
        }
        assert_eq!(paths(&gateway_doc), expected);
        for own in own {
            assert!(
                paths(&users_doc).contains(own) && paths(&auth_doc).contains(own),
                "{own}"
            );
        }
        // With authentication on for writes: a write documents the bearer scheme and its
        // 401, a read does not.
        let users_at_gateway = &gateway_doc["paths"]["/api/users"];
        assert_eq!(
            users_at_gateway["post"]["security"],
            json!([{"bearer": []}])
        );
        assert!(
            users_at_gateway["post"]["responses"]["401"]["headers"]["WWW-Authenticate"].is_object()
        );
        assert!(users_at_gateway["get"]["security"].is_null());
        assert_eq!(
            gateway_doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        // Rate limits are on: the 429 and the draft headers are documented.
        let limited = &users_at_gateway["get"]["responses"];
        assert!(limited["429"]["headers"]["Retry-After"].is_object());
        assert!(limited["200"]["headers"]["RateLimit-Policy"].is_object());
        // The users role's own document has none of the gateway's answers.
        assert!(users_doc["paths"]["/users"]["post"]["responses"]["401"].is_null());
        assert!(users_doc["components"]["securitySchemes"].is_null());
        drop(process);
    });
}
