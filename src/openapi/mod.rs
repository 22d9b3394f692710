//! The OpenAPI 3.1 document of each role, served at `GET /openapi.json`: generated (utoipa)
//! from the handlers' `#[utoipa::path]` and the types' `ToSchema`, then completed here with
//! what every operation of a role shares (the request id header, the shedding and timeout
//! answers, the gateway's own answers and security). Built once per process.
//!
//! The one shared module that names every role's handlers (as `all.rs` names every role):
//! the gateway's document is the users' and auth's operations under `/api`, built in-process,
//! so no role imports another. `tests/api/openapi.rs` proves each document and its role's
//! route table agree.

use std::sync::LazyLock;

use actix_web::{HttpResponse, Resource, web};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::config::{AuthMode, GatewaySettings, RateLimitHeaders, RateLimitMode};
use crate::http::error::{self, ErrorCode};

/// Where every role serves its document.
pub const PATH: &str = "/openapi.json";

/// A built document, kept as the bytes it is served as.
#[derive(Clone, Debug)]
pub struct Document(web::Bytes);

impl Document {
    fn new(doc: Value) -> Self {
        Self(
            serde_json::to_vec(&doc)
                .expect("a JSON value always serializes")
                .into(),
        )
    }

    pub fn respond(&self) -> HttpResponse {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(self.0.clone())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `GET /openapi.json` (any other method: 405) answering `doc`.
pub fn resource(doc: &'static Document) -> Resource {
    web::resource(PATH)
        .app_data(web::Data::new(doc.clone()))
        .route(web::get().to(document))
        .default_service(web::to(error::allow("GET")))
}

/// This role's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this role",
        content_type = "application/json", body = Object)))]
pub(crate) async fn document(doc: web::Data<Document>) -> HttpResponse {
    doc.respond()
}

/// The body of `POST /auth/register`: a `NewUser` and a password (`auth_value` joins them).
#[derive(ToSchema)]
#[allow(dead_code)] // `NewUser::parse` and `check_password` read it; this type only describes it
pub struct Registration {
    /// 15–256 characters (NIST SP 800-63B).
    #[schema(
        min_length = 15,
        max_length = 256,
        example = "correct horse battery staple"
    )]
    password: String,
}

/// The body of `POST /auth/login`.
#[derive(ToSchema)]
#[allow(dead_code)] // `accounts::login` reads it; this type only describes it
pub struct Login {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(example = "correct horse battery staple")]
    password: String,
}

/// The token endpoint's error body: RFC 6749 §5.2 with CONTRACT §2's `message` and
/// `request_id` (`auth::error::OAuthError::render`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OAuthErrorBody {
    #[schema(inline)]
    error: OAuthCode,
    error_description: String,
    /// The same text as `error_description`.
    message: String,
    request_id: String,
}

/// RFC 6749 §5.2's codes, and §4.1.2.1's `temporarily_unavailable` (503).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    UnsupportedGrantType,
    InvalidGrant,
    InvalidScope,
    TemporarilyUnavailable,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "platform users",
        description = "User CRUD over Redis (CONTRACT §2)."
    ),
    paths(
        crate::users::routes::create_user,
        crate::users::routes::list_users,
        crate::users::routes::get_user,
        crate::users::routes::update_user,
        crate::users::routes::delete_user,
        crate::http::ops::summary,
        crate::http::ops::live,
        crate::http::ops::ready,
        crate::http::ops::render_metrics,
        document,
    ),
    components(schemas(ErrorCode))
)]
struct UsersApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "platform auth",
        description = "OAuth 2.0 tokens (client_credentials, \
        refresh_token), their keys, and people's accounts."
    ),
    paths(
        crate::auth::routes::issue_token,
        crate::auth::routes::jwks,
        crate::auth::routes::openid_configuration,
        crate::auth::accounts::register,
        crate::auth::accounts::login,
        crate::http::ops::summary,
        crate::http::ops::live,
        crate::http::ops::ready,
        crate::http::ops::render_metrics,
        document,
    ),
    components(schemas(ErrorCode, crate::accounts::domain::NewUser))
)]
struct AuthApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "platform gateway",
        description = "The API gateway: the users API under \
        `/api/users`, the auth service under `/api/auth`."
    ),
    paths(
        crate::http::ops::summary,
        crate::http::ops::live,
        crate::http::ops::ready,
        crate::http::ops::render_metrics,
        document,
    ),
    components(schemas(ErrorCode))
)]
struct GatewayApi;

static USERS: LazyLock<Document> = LazyLock::new(|| Document::new(users_value()));
static AUTH: LazyLock<Document> = LazyLock::new(|| Document::new(auth_value()));

/// The users role's document.
pub fn users() -> &'static Document {
    &USERS
}

/// The auth role's document.
pub fn auth() -> &'static Document {
    &AUTH
}

/// The gateway's document for these settings (authentication and rate limits change it).
pub fn gateway(settings: &GatewaySettings) -> Document {
    Document::new(gateway_value(settings))
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Each operation of `doc` as (path, method, operation).
fn operations(doc: &mut Value) -> impl Iterator<Item = (String, &'static str, &mut Value)> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .flat_map(|(path, item)| {
            let path = path.clone();
            item.as_object_mut()
                .into_iter()
                .flat_map(|item| item.iter_mut())
                .filter_map(move |(method, op)| {
                    let method = METHODS.iter().find(|m| **m == method.as_str())?;
                    Some((path.clone(), *method, op))
                })
        })
}

fn error_ref() -> Value {
    json!({"$ref": "#/components/schemas/Error"})
}

/// Adds `status` to `op`'s responses (an error body) unless it is there; then notes `code`
/// in its description.
fn add_error(op: &mut Value, status: u16, code: ErrorCode, why: &str) {
    let responses = &mut op["responses"];
    let key = status.to_string();
    if responses.get(&key).is_none() {
        responses[&key] = json!({
            "description": format!("`{}`: {why}", code.as_str()),
            "content": {"application/json": {"schema": error_ref()}},
        });
        return;
    }
    let described = &mut responses[&key]["description"];
    let text = described.as_str().unwrap_or_default().to_owned();
    if !text.contains(&format!("`{}`", code.as_str())) {
        *described = Value::from(format!("{text}; `{}`: {why}", code.as_str()));
    }
}

fn add_header(response: &mut Value, name: &str, description: &str, schema: Value) {
    response["headers"][name] = json!({"description": description, "schema": schema});
}

/// What every operation of every role shares: each answer names its request id; the
/// in-flight cap (503 `overloaded`, `Retry-After`), the 500, and for a body, its deadline
/// (408) and bound (413).
fn complete(doc: &mut Value) {
    for (_, _, op) in operations(doc) {
        let with_body = op.get("requestBody").is_some();
        add_error(
            op,
            500,
            ErrorCode::InternalServerError,
            "a fault (logged with the request id)",
        );
        add_error(
            op,
            503,
            ErrorCode::Overloaded,
            "too many requests in flight; retry after `Retry-After`",
        );
        if with_body {
            add_error(
                op,
                408,
                ErrorCode::RequestTimeout,
                "the body did not arrive in time",
            );
            add_error(op, 413, ErrorCode::PayloadTooLarge, "the body is too large");
        }
        for status in ["503", "429"] {
            if let Some(response) = op["responses"].get_mut(status) {
                add_header(
                    response,
                    "Retry-After",
                    "Seconds to wait",
                    json!({"type": "integer", "minimum": 0}),
                );
            }
        }
        if let Some(responses) = op["responses"].as_object_mut() {
            for response in responses.values_mut() {
                add_header(
                    response,
                    "X-Request-ID",
                    "The request's id: the client's `X-Request-ID` if 1–128 visible ASCII, else a new UUID",
                    json!({"type": "string", "minLength": 1, "maxLength": 128}),
                );
            }
        }
        let id = json!({"name": "X-Request-ID", "in": "header", "required": false,
            "description": "Kept if 1–128 visible ASCII characters, else replaced",
            "schema": {"type": "string"}});
        match op["parameters"].as_array_mut() {
            Some(params) => params.push(id),
            None => op["parameters"] = json!([id]),
        }
    }
}

/// A patch needs `name` or `email` (`UserPatch::parse`); the derive cannot say "one of".
fn patch_needs_a_field(doc: &mut Value) {
    if let Some(patch) = doc.pointer_mut("/components/schemas/UserPatch") {
        patch["anyOf"] = json!([{"required": ["name"]}, {"required": ["email"]}]);
    }
}

fn users_value() -> Value {
    let mut doc = serde_json::to_value(UsersApi::openapi()).expect("the document serializes");
    patch_needs_a_field(&mut doc);
    complete(&mut doc);
    doc
}

/// The discovery and key set paths are served at the root and under `/auth` (the issuer's).
fn auth_value() -> Value {
    let mut doc = serde_json::to_value(AuthApi::openapi()).expect("the document serializes");
    doc["components"]["securitySchemes"]["client_basic"] = json!({
        "type": "http", "scheme": "basic",
        "description": "client_secret_basic: the client id and secret (or client_secret_post: \
            both in the form)",
    });
    let password = doc["components"]["schemas"]["Registration"].take();
    doc["components"]["schemas"]["Registration"] =
        json!({"allOf": [{"$ref": "#/components/schemas/NewUser"}, password]});
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
    ] {
        let mut item = doc["paths"][path].clone();
        if let Some(id) = item["get"]["operationId"].as_str() {
            item["get"]["operationId"] = Value::from(format!("{id}_under_auth"));
        }
        doc["paths"][format!("/auth{path}")] = item;
    }
    complete(&mut doc);
    doc
}

/// Whether the gateway asks a token for `method` on a users route.
fn needs_token(mode: AuthMode, method: &str) -> bool {
    match mode {
        AuthMode::Off => false,
        AuthMode::All => true,
        AuthMode::Writes => method != "get",
    }
}

/// The users' and auth's operations under `/api` as the gateway answers them, and its own.
fn gateway_value(settings: &GatewaySettings) -> Value {
    let mut doc = serde_json::to_value(GatewayApi::openapi()).expect("the document serializes");
    complete(&mut doc);
    let (users, auth) = (users_value(), auth_value());
    let mut proxied = json!({"paths": {}});
    for (upstream, root) in [(&users, "/users"), (&auth, "/auth")] {
        for (path, item) in upstream["paths"].as_object().into_iter().flatten() {
            if path == root || path.starts_with(&format!("{root}/")) {
                proxied["paths"][format!("/api{path}")] = item.clone();
            }
        }
        let schemas = upstream["components"]["schemas"].as_object().cloned();
        for (name, schema) in schemas.into_iter().flatten() {
            doc["components"]["schemas"][name] = schema;
        }
    }
    doc["components"]["securitySchemes"] = auth["components"]["securitySchemes"].clone();
    let auth_mode = settings.auth.auth_mode;
    if auth_mode != AuthMode::Off {
        doc["components"]["securitySchemes"]["bearer"] = json!({
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An access token of the configured issuer (the auth service's \
                `/api/auth/token`), or the configured cookie",
        });
    }
    let limits = &settings.limits;
    let limited = limits.rate_limit != RateLimitMode::Off;
    let headers = limits.rate_limit_headers;
    for (path, method, op) in operations(&mut proxied) {
        add_error(
            op,
            502,
            ErrorCode::UpstreamUnavailable,
            "the service could not be reached",
        );
        add_error(
            op,
            504,
            ErrorCode::UpstreamTimeout,
            "the service did not answer in time",
        );
        add_error(
            op,
            417,
            ErrorCode::ExpectationFailed,
            "an `Expect` other than 100-continue",
        );
        add_error(
            op,
            413,
            ErrorCode::PayloadTooLarge,
            "the declared body is over `--max-body`",
        );
        if path.starts_with("/api/users") && needs_token(auth_mode, method) {
            op["security"] = json!([{"bearer": []}]);
            add_error(op, 401, ErrorCode::AuthenticationRequired, "no token");
            add_error(op, 401, ErrorCode::InvalidToken, "the token is not valid");
            add_error(op, 400, ErrorCode::InvalidRequest, "a malformed credential");
            add_error(
                op,
                403,
                ErrorCode::InsufficientScope,
                "the token lacks the scope",
            );
            add_error(
                op,
                503,
                ErrorCode::AuthUnavailable,
                "no key set to verify with yet",
            );
            add_header(
                &mut op["responses"]["401"],
                "WWW-Authenticate",
                "The RFC 6750 Bearer challenge",
                json!({"type": "string"}),
            );
            add_header(
                &mut op["responses"]["403"],
                "WWW-Authenticate",
                "The RFC 6750 Bearer challenge (`insufficient_scope`)",
                json!({"type": "string"}),
            );
        }
        if limited {
            add_error(
                op,
                429,
                ErrorCode::RateLimited,
                "over a rate limit; retry after `Retry-After`",
            );
        }
        if let Some(responses) = op["responses"].as_object_mut() {
            for response in responses.values_mut() {
                add_limit_headers(response, limited, headers);
            }
        }
    }
    complete(&mut proxied);
    // `complete` ran on the upstreams' operations already: keep one X-Request-ID parameter.
    for (_, _, op) in operations(&mut proxied) {
        if let Some(params) = op["parameters"].as_array_mut() {
            let mut seen = false;
            params.retain(|p| {
                let id = p["name"] == "X-Request-ID" && p["in"] == "header";
                let keep = !(id && seen);
                seen |= id;
                keep
            });
        }
    }
    if let (Some(all), Some(paths)) = (
        doc["paths"].as_object_mut(),
        proxied["paths"].as_object_mut().map(std::mem::take),
    ) {
        all.extend(paths);
    }
    doc
}

/// The rate-limit headers a limited route's answers carry (`--rate-limit-headers`).
fn add_limit_headers(response: &mut Value, limited: bool, headers: RateLimitHeaders) {
    if !limited {
        return;
    }
    let text = json!({"type": "string"});
    let number = json!({"type": "integer", "minimum": 0});
    if matches!(headers, RateLimitHeaders::Draft | RateLimitHeaders::Both) {
        add_header(
            response,
            "RateLimit-Policy",
            "The quotas (draft-ietf-httpapi-ratelimit-headers)",
            text.clone(),
        );
        add_header(response, "RateLimit", "What is left of them", text);
    }
    if matches!(headers, RateLimitHeaders::Legacy | RateLimitHeaders::Both) {
        for name in [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ] {
            add_header(
                response,
                name,
                "The legacy rate-limit header",
                number.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn each_operation(doc: &Value) -> Vec<(String, String)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                ops.push((path.clone(), method.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_document_is_openapi_3_1_with_error_answers_on_every_operation() {
        for doc in [users_value(), auth_value()] {
            assert_eq!(doc["openapi"], "3.1.0");
            for (path, method) in each_operation(&doc) {
                let op = &doc["paths"][&path][&method];
                assert!(op["responses"]["500"].is_object(), "{method} {path}");
                assert!(
                    op["responses"]["503"]["headers"]["Retry-After"].is_object(),
                    "{method} {path}"
                );
            }
        }
    }

    fn gateway_with(args: &[&str]) -> Value {
        let args = ["platform", "gateway"].iter().chain(args);
        match <crate::config::Cli as clap::Parser>::try_parse_from(args) {
            Ok(crate::config::Cli {
                role: crate::config::Role::Gateway(settings),
            }) => gateway_value(&settings),
            _ => panic!("gateway arguments parse"),
        }
    }

    #[test]
    fn the_gateway_documents_what_its_settings_turn_on() {
        let off = gateway_with(&[]);
        for (path, method) in each_operation(&off) {
            let op = &off["paths"][&path][&method];
            if path.starts_with("/api/users") {
                assert!(op["security"].is_null(), "{method} {path}");
                assert!(op["responses"]["401"].is_null(), "{method} {path}");
                assert!(op["responses"]["429"].is_null(), "{method} {path}");
            }
        }
        assert!(off["components"]["securitySchemes"]["bearer"].is_null());
        assert!(off["paths"]["/api/users/{id}"]["get"]["responses"]["502"].is_object());

        let all = gateway_with(&[
            "--auth-mode",
            "all",
            "--rate-limit",
            "local",
            "--rate-limit-requests",
            "10",
            "--rate-limit-headers",
            "legacy",
        ]);
        let users = &all["paths"]["/api/users/{id}"];
        for method in ["get", "put", "patch", "delete"] {
            assert_eq!(
                users[method]["security"],
                json!([{"bearer": []}]),
                "{method}"
            );
            assert!(users[method]["responses"]["403"].is_object(), "{method}");
        }
        let ok = &users["get"]["responses"]["200"]["headers"];
        assert!(ok["X-RateLimit-Remaining"].is_object() && ok["RateLimit"].is_null());
        // The auth service's routes never need a token at the gateway.
        assert!(all["paths"]["/api/auth/login"]["post"]["security"].is_null());
        assert_eq!(
            all["paths"]["/api/auth/token"]["post"]["security"],
            json!([{}, {"client_basic": []}])
        );

        let writes = gateway_with(&["--auth-mode", "writes"]);
        assert!(writes["paths"]["/api/users"]["get"]["security"].is_null());
        assert!(writes["paths"]["/api/users"]["post"]["security"].is_array());
    }

    #[test]
    fn the_oauth_codes_are_the_token_endpoints() {
        use crate::auth::error::OAuthError;
        let schema = serde_json::to_value(<OAuthCode as utoipa::PartialSchema>::schema())
            .expect("a schema serializes");
        let documented: Vec<String> =
            serde_json::from_value(schema["enum"].clone()).expect("an enum");
        let answered: Vec<&str> = [
            OAuthError::InvalidRequest("x"),
            OAuthError::InvalidClient { basic: false },
            OAuthError::UnsupportedGrantType,
            OAuthError::InvalidGrant,
            OAuthError::InvalidScope,
            OAuthError::TemporarilyUnavailable,
        ]
        .iter()
        .map(OAuthError::code)
        .collect();
        assert_eq!(documented, answered);
    }
}
