//! The auth role's endpoints: `POST /auth/token`, the JWKS and the OpenID discovery document
//! (served at the root and under `/auth`, so `{issuer}/.well-known/…` works behind the gateway).

use std::time::SystemTime;

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use metrics::Counter;
use serde_json::json;
use slog::{Logger, info};

use super::accounts::{self, Accounts};
use super::clients::Clients;
use super::error::OAuthError;
use super::keys::SigningKeys;
use super::secrets::Verifier;
use super::token::{self, CLIENT_CREDENTIALS, Issuer, REFRESH_TOKEN, TokenRequest};
use crate::http::error::{self, ApiError, ErrorCode};
use crate::http::observe::Subject;
use crate::http::request_id::RequestId;

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

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_FORM))
        .configure(accounts::configure)
        .service(
            web::resource("/auth/token")
                .route(web::post().to(issue_token))
                .default_service(web::to(error::method_not_allowed)),
        );
    for prefix in ["", "/auth"] {
        cfg.service(
            web::resource(format!("{prefix}/.well-known/jwks.json"))
                .route(web::get().to(jwks))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource(format!("{prefix}/.well-known/openid-configuration"))
                .route(web::get().to(openid_configuration))
                .default_service(web::to(error::method_not_allowed)),
        );
    }
}

/// RFC 6749 §4.4: a client authenticates and gets an access token (§5.1), or a §5.2 error.
async fn issue_token(
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
        .json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": issuer.ttl.as_secs(),
            "scope": scope,
        }))))
}

/// Every published key (RFC 7517), cacheable for one publish delay.
async fn jwks(service: web::Data<TokenService>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={JWKS_MAX_AGE}"),
        ))
        .content_type(ContentType::json())
        .body(service.keys.current().jwks().to_string())
}

/// A minimal OpenID Connect discovery document (what a resource server needs to find the keys).
async fn openid_configuration(service: web::Data<TokenService>) -> HttpResponse {
    let issuer = service.issuer.issuer.trim_end_matches('/');
    HttpResponse::Ok().json(json!({
        "issuer": service.issuer.issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/token"),
        "grant_types_supported": [CLIENT_CREDENTIALS, REFRESH_TOKEN],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}
