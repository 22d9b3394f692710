//! The auth role's endpoints: `POST /auth/token`, the JWKS and the OpenID discovery document
//! (served at the root and under `/auth`, so `{issuer}/.well-known/…` works behind the gateway).

use std::time::SystemTime;

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use metrics::Counter;
use serde::Serialize;
use slog::{Logger, info};
use utoipa::ToSchema;

use super::accounts::{self, Accounts};
use super::clients::Clients;
use super::error::OAuthError;
use super::keys::SigningKeys;
use super::secrets::Verifier;
use super::token::{self, CLIENT_CREDENTIALS, Issuer, REFRESH_TOKEN, TokenRequest};
use crate::http::error::{self, ApiError, ErrorBody, ErrorCode};
use crate::http::observe::Subject;
use crate::http::request_id::RequestId;
use crate::openapi::{self, OAuthErrorBody};

/// The JWKS' `Cache-Control: max-age`: a new key is published at least this long before it signs.
pub const JWKS_MAX_AGE: u64 = 300;
/// Largest token request body.
const MAX_FORM: usize = 8 * 1024;

/// What the handlers share (one per role, every worker holds a reference).
pub struct TokenService {
    pub keys: SigningKeys,
    pub clients: Clients,
    pub verifier: Verifier,
    pub issuer: Issuer,
    pub issued: Counter,
    pub accounts: Accounts,
    pub log: Logger,
}

/// The routes, and the role's document at `GET /openapi.json`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_FORM))
        .configure(accounts::configure)
        .service(
            web::resource("/auth/token")
                .route(web::post().to(issue_token))
                .default_service(web::to(error::allow("POST"))),
        );
    for prefix in ["", "/auth"] {
        cfg.service(
            web::resource(format!("{prefix}/.well-known/jwks.json"))
                .route(web::get().to(jwks))
                .default_service(web::to(error::allow("GET"))),
        )
        .service(
            web::resource(format!("{prefix}/.well-known/openid-configuration"))
                .route(web::get().to(openid_configuration))
                .default_service(web::to(error::allow("GET"))),
        );
    }
    cfg.service(openapi::resource(openapi::auth()));
}

/// The token endpoint's form (RFC 6749 §4.4.2, §6).
#[derive(ToSchema)]
#[allow(dead_code)] // `token::TokenRequest` parses it; this type only describes it
pub struct TokenForm {
    #[schema(inline)]
    grant_type: GrantType,
    /// Space-separated scopes (client_credentials); none: every scope the client has.
    #[schema(example = "users:read")]
    scope: Option<String>,
    /// With `client_secret`, instead of HTTP Basic (client_secret_post).
    client_id: Option<String>,
    client_secret: Option<String>,
    /// The refresh_token grant's token.
    refresh_token: Option<String>,
}

#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum GrantType {
    ClientCredentials,
    RefreshToken,
}

/// A successful token answer (RFC 6749 §5.1), `Cache-Control: no-store`.
#[derive(Serialize, ToSchema)]
pub struct TokenAnswer {
    /// An RFC 9068 JWT, ES256.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds.
    #[schema(example = 900)]
    pub expires_in: u64,
    #[schema(example = "users:read users:write")]
    pub scope: String,
    /// With a person's login and the refresh_token grant: the next refresh token (rotated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// A client authenticates and gets an access token (RFC 6749 §4.4, §5.1), or a user's
/// refresh token is rotated (§6); errors are §5.2 bodies.
#[utoipa::path(post, path = "/auth/token", tag = "auth",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    security((), ("client_basic" = [])),
    responses(
        (status = 200, description = "The token", body = TokenAnswer, headers(
            ("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`invalid_request`, `unsupported_grant_type`, \
            `invalid_grant`, `invalid_scope` (RFC 6749 §5.2)", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`; `WWW-Authenticate: Basic` when the \
            client used Basic", body = OAuthErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 413, description = "`payload_too_large`: over 8 KiB", body = ErrorBody),
        (status = 503, description = "`temporarily_unavailable`: no signing key yet \
            (`Retry-After`); `store_unavailable`, `overloaded`", body = OAuthErrorBody,
            headers(("Retry-After" = u32, description = "Seconds")))))]
pub(crate) async fn issue_token(
    req: HttpRequest,
    body: web::Bytes,
    service: web::Data<TokenService>,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    match grant(&req, &body, &service).await {
        Ok(answer) => answer,
        Err(e) => Ok(e.render(id.as_str())),
    }
}

async fn grant(
    req: &HttpRequest,
    body: &[u8],
    service: &TokenService,
) -> Result<Result<HttpResponse, ApiError>, OAuthError> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let mut authorization = req.headers().get_all(header::AUTHORIZATION);
    let header = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(value), None) => Some(value.to_str().unwrap_or("")),
        (Some(_), Some(_)) => {
            return Err(OAuthError::InvalidRequest(
                "more than one Authorization header",
            ));
        }
    };
    if let Some(presented) = token::refresh_request(body)? {
        return accounts::refresh_grant(req, service, &presented).await;
    }
    let request = TokenRequest::parse(body, header)?;
    let now = SystemTime::now();
    let keys = service.keys.current();
    let key = keys
        .signing(now, service.keys.publish_delay)
        .ok_or(OAuthError::TemporarilyUnavailable)?;
    let client = service.clients.get(&request.client_id);
    let verified = service
        .verifier
        .verify(
            request.secret,
            client.as_ref().map(|c| c.secret_hash.clone()),
        )
        .await;
    let client = match client {
        Some(client) if verified => client,
        _ => {
            return Err(OAuthError::InvalidClient {
                basic: request.basic,
            });
        }
    };
    let scope = token::granted(request.scope, &client.scopes)?.join(" ");
    let issuer = &service.issuer;
    let token = match issuer.issue(key, &request.client_id, &request.client_id, &scope, now) {
        Ok(token) => token,
        Err(e) => {
            let cause = e.context("failed to sign an access token");
            return Ok(Err(ApiError::with_cause(
                ErrorCode::InternalServerError,
                "internal server error",
                cause,
            )));
        }
    };
    service.issued.increment(1);
    // The access line names the client, as the gateway's names a token's subject.
    req.extensions_mut()
        .insert(Subject(request.client_id.as_str().into()));
    info!(service.log, "token issued"; "grant" => CLIENT_CREDENTIALS,
        "client_id" => &request.client_id, "scope" => &scope, "kid" => &key.kid);
    Ok(Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(TokenAnswer {
            access_token: token,
            token_type: "Bearer",
            expires_in: issuer.ttl.as_secs(),
            scope,
            refresh_token: None,
        })))
}

/// Every published key (RFC 7517), cacheable for one publish delay.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The key set", body = Jwks, headers(
        ("Cache-Control" = String, description = "`public, max-age=300`")))))]
pub(crate) async fn jwks(service: web::Data<TokenService>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={JWKS_MAX_AGE}"),
        ))
        .content_type(ContentType::json())
        .body(service.keys.current().jwks().to_string())
}

/// A key set (RFC 7517).
#[derive(ToSchema)]
#[allow(dead_code)] // `keys::KeySet::jwks` writes it; this type only describes it
pub struct Jwks {
    /// Public JWKs (EC P-256, `kid`, `use: sig`, `alg: ES256`).
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The discovery document's members we publish.
#[derive(Serialize, ToSchema)]
pub struct Discovery {
    #[schema(example = "http://gateway:3000/api/auth")]
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    grant_types_supported: [&'static str; 2],
    token_endpoint_auth_methods_supported: [&'static str; 2],
    id_token_signing_alg_values_supported: [&'static str; 1],
}

/// A minimal OpenID Connect discovery document (what a resource server needs to find the keys).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "auth",
    responses((status = 200, description = "The discovery document", body = Discovery)))]
pub(crate) async fn openid_configuration(service: web::Data<TokenService>) -> HttpResponse {
    let issuer = service.issuer.issuer.trim_end_matches('/');
    HttpResponse::Ok().json(Discovery {
        issuer: service.issuer.issuer.clone(),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        token_endpoint: format!("{issuer}/token"),
        grant_types_supported: [CLIENT_CREDENTIALS, REFRESH_TOKEN],
        token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
        id_token_signing_alg_values_supported: ["ES256"],
    })
}
