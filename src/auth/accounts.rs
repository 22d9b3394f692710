//! People's accounts at the auth role: `POST /auth/register`, `POST /auth/login` and the
//! refresh tokens of the `refresh_token` grant. The users are the users role's own (created
//! through `crate::accounts`); a password's Argon2id hash sits under `credential:<id>`.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use metrics::Counter;
use redis::{AsyncCommands, Script};
use serde_json::{Map, Value, json};
use slog::{info, warn};

use super::error::OAuthError;
use super::keys::SigningKey;
use super::routes::TokenService;
use super::token::{FIRST_PARTY_CLIENT, PASSWORD, REFRESH_TOKEN};
use crate::accounts::domain::NewUser;
use crate::accounts::{credential_key, email_key};
use crate::config::AccountSettings;
use crate::http::body;
use crate::http::client::{self, ClientKey};
use crate::http::error::{ApiError, ErrorCode, FieldError};
use crate::http::observe::Subject;
use crate::redis::{Connection, Redis};

/// NIST SP 800-63B §3.1.1.2, a password as the only factor: at least 15 characters; at
/// most 256 accepted (Unicode scalar values).
pub const PASSWORD_MIN_CHARS: usize = 15;
pub const PASSWORD_MAX_CHARS: usize = 256;
/// Largest register or login body.
const MAX_BODY: usize = 16 * 1024;

static ISSUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/refresh_issue.lua")));
static ROTATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/refresh_rotate.lua")));
static FAILED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/login_failed.lua")));

/// A password within the length bounds.
pub fn check_password(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < PASSWORD_MIN_CHARS {
        return Err(format!("must be at least {PASSWORD_MIN_CHARS} characters"));
    }
    if chars > PASSWORD_MAX_CHARS {
        return Err(format!("must be at most {PASSWORD_MAX_CHARS} characters"));
    }
    Ok(())
}

/// A new refresh token: 256 random bits, base64url.
fn new_refresh_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Where a refresh token is stored: under its SHA-256, never itself.
fn refresh_key(token: &str) -> String {
    let hash = digest(&SHA256, token.as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("refresh:{hex}")
}

fn family_key(family: &str) -> String {
    format!("refresh_family:{family}")
}

/// The login metrics, each at 0 from the start.
pub struct AccountMetrics {
    pub login_ok: Counter,
    pub login_invalid: Counter,
    pub login_throttled: Counter,
    pub login_error: Counter,
    pub issued_password: Counter,
    pub issued_refresh: Counter,
}

/// The account store and its settings.
pub struct Accounts {
    pub redis: Redis,
    pub timeout: Duration,
    pub settings: AccountSettings,
    pub metrics: AccountMetrics,
}

fn unavailable(cause: anyhow::Error) -> ApiError {
    ApiError::with_cause(
        ErrorCode::StoreUnavailable,
        "the account store is unavailable; retry later",
        cause,
    )
}

fn internal(cause: anyhow::Error) -> ApiError {
    ApiError::with_cause(
        ErrorCode::InternalServerError,
        "internal server error",
        cause,
    )
}

impl Accounts {
    /// Runs `op` (reads) on the shared connection within `--redis-timeout`.
    async fn redis<T, E, F, Fut>(&self, op: F) -> Result<T, anyhow::Error>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        anyhow::Error: From<E>,
    {
        self.run(false, op).await
    }

    /// `redis` for a write: refused during a failover, answered only once confirmed
    /// (`--redis-min-replicas-ack`, no failover event meanwhile).
    async fn redis_write<T, E, F, Fut>(&self, op: F) -> Result<T, anyhow::Error>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        anyhow::Error: From<E>,
    {
        self.run(true, op).await
    }

    async fn run<T, E, F, Fut>(&self, write: bool, op: F) -> Result<T, anyhow::Error>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        anyhow::Error: From<E>,
    {
        // --redis-pool-wait sheds the users role's requests; here the Argon2 permits are the
        // bottleneck, so a turn is waited for within the whole --redis-timeout.
        // The wait is inside --redis-timeout, which bounds the whole operation.
        match tokio::time::timeout(self.timeout, async {
            let _permit = self.redis.permit(true).await?;
            if !write {
                return Ok(op(self.redis.connection().await?).await?);
            }
            let started = self.redis.begin_write().await?;
            let answer = op(started.connection.clone()).await?;
            self.redis.confirm_write(started).await?;
            Ok::<_, anyhow::Error>(answer)
        })
        .await
        {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!(
                "redis did not answer within {:?}",
                self.timeout
            )),
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/auth/register")
            .route(web::post().to(register))
            .default_service(web::to(crate::http::error::allow("POST"))),
    )
    .service(
        web::resource("/auth/login")
            .route(web::post().to(login))
            .default_service(web::to(crate::http::error::allow("POST"))),
    );
}

/// A string field of the body.
fn text(body: &Map<String, Value>, field: &'static str) -> Result<String, FieldError> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(FieldError::new(field, "is required")),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

/// `{name, email, password}` → 201 and the user, as the users API would answer it.
#[utoipa::path(post, path = "/auth/register", tag = "accounts",
    request_body(content = crate::openapi::Registration, content_type = "application/json"),
    responses(
        (status = 201, description = "The user, as the users API answers it",
            body = crate::accounts::domain::User),
        (status = 400, description = "`validation_error`, `invalid_json`",
            body = crate::http::error::ErrorBody),
        (status = 409, description = "`duplicate_email`", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 16 KiB",
            body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON",
            body = crate::http::error::ErrorBody),
        (status = 503, description = "`store_unavailable`, `overloaded`",
            body = crate::http::error::ErrorBody)))]
pub(crate) async fn register(
    req: HttpRequest,
    payload: web::Payload,
    service: web::Data<TokenService>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, MAX_BODY).await?;
    let new = NewUser::parse(&body);
    let password = text(&body, "password").and_then(|p| {
        check_password(&p)
            .map(|()| p)
            .map_err(|m| FieldError::new("password", m))
    });
    let (new, password) = match (new, password) {
        (Ok(new), Ok(password)) => (new, password),
        (new, password) => {
            let mut details = new.err().unwrap_or_default();
            details.extend(password.err());
            return Err(ApiError::validation(details));
        }
    };
    let phc = service.verifier.hash(password).await.map_err(internal)?;
    let created = service
        .accounts
        .redis_write(|mut conn| async move {
            crate::accounts::create(&mut conn, &new, Some(&phc)).await
        })
        .await
        .map_err(unavailable)?;
    let Some(user) = created else {
        return Err(ApiError::new(
            ErrorCode::DuplicateEmail,
            "a user with this email already exists",
        ));
    };
    req.extensions_mut()
        .insert(Subject(user.id.as_str().into()));
    info!(service.log, "user registered"; "user_id" => &user.id);
    Ok(HttpResponse::Created().json(user))
}

/// The signing key now, or why there is none.
fn signing_key(service: &TokenService) -> Option<(Arc<SigningKey>, SystemTime)> {
    let now = SystemTime::now();
    let keys = service.keys.current();
    keys.signing(now, service.keys.publish_delay)
        .cloned()
        .map(|k| (k, now))
}

/// The RFC 6749 §5.1 answer for a user: an access token and its refresh token.
fn user_tokens(
    service: &TokenService,
    key: &SigningKey,
    now: SystemTime,
    user_id: &str,
    refresh: &str,
) -> Result<HttpResponse, ApiError> {
    let scope = &service.accounts.settings.user_scope;
    let issuer = &service.issuer;
    let access = issuer
        .issue(key, user_id, FIRST_PARTY_CLIENT, scope, now)
        .map_err(|e| internal(e.context("failed to sign an access token")))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": issuer.ttl.as_secs(),
            "scope": scope,
            "refresh_token": refresh,
        })))
}

fn retry_after(pttl_ms: i64) -> HeaderValue {
    let secs = (pttl_ms.max(0) as u64).div_ceil(1000).max(1);
    HeaderValue::from(secs)
}

/// `{email, password}` → the token answer, or one 401 for an unknown email and a wrong
/// password alike, or 429 while too many logins failed for the account or the client.
#[utoipa::path(post, path = "/auth/login", tag = "accounts",
    request_body(content = crate::openapi::Login, content_type = "application/json"),
    responses(
        (status = 200, description = "An access token and its refresh token",
            body = super::routes::TokenAnswer,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`validation_error`, `invalid_json`",
            body = crate::http::error::ErrorBody),
        (status = 401, description = "`invalid_credentials` (an unknown email or a wrong \
            password alike)", body = crate::http::error::ErrorBody),
        (status = 413, description = "`payload_too_large`: over 16 KiB",
            body = crate::http::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON",
            body = crate::http::error::ErrorBody),
        (status = 429, description = "`too_many_attempts`: too many failed logins for the \
            account or the client address", body = crate::http::error::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds"))),
        (status = 503, description = "`auth_unavailable` (no signing key yet), \
            `store_unavailable`, `overloaded`", body = crate::http::error::ErrorBody)))]
pub(crate) async fn login(
    req: HttpRequest,
    payload: web::Payload,
    service: web::Data<TokenService>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, MAX_BODY).await?;
    let (email, password) = match (text(&body, "email"), text(&body, "password")) {
        (Ok(email), Ok(password)) => (email, password),
        (email, password) => {
            let details = [email.err(), password.err()]
                .into_iter()
                .flatten()
                .collect();
            return Err(ApiError::validation(details));
        }
    };
    let accounts = &service.accounts;
    let metrics = &accounts.metrics;
    let settings = &accounts.settings;
    let email = email.trim().to_lowercase();
    // The client address (--trusted-proxies: behind the gateway, the client it resolved),
    // IPv6 by its /64 as the gateway's limits count it.
    let ip = client::address(&req)
        .map(|ip| ClientKey::of(ip).text())
        .unwrap_or_default();
    let (by_email, by_ip) = (
        format!("login_failures:email:{email}"),
        format!("login_failures:ip:{ip}"),
    );
    let counters = accounts
        .redis(|mut conn| {
            let (by_email, by_ip) = (by_email.clone(), by_ip.clone());
            async move {
                redis::pipe()
                    .get(&by_email)
                    .pttl(&by_email)
                    .get(&by_ip)
                    .pttl(&by_ip)
                    .query_async::<(Option<u32>, i64, Option<u32>, i64)>(&mut conn)
                    .await
            }
        })
        .await;
    let (email_n, email_ttl, ip_n, ip_ttl) = match counters {
        Ok(c) => c,
        Err(e) => {
            metrics.login_error.increment(1);
            return Err(unavailable(e));
        }
    };
    let wait = [
        (email_n, email_ttl, settings.login_max_failures),
        (ip_n, ip_ttl, settings.login_max_failures_per_ip),
    ]
    .into_iter()
    .filter(|(n, _, max)| n.unwrap_or(0) >= *max)
    .map(|(_, ttl, _)| ttl)
    .max();
    if let Some(ttl) = wait {
        metrics.login_throttled.increment(1);
        info!(service.log, "login refused"; "reason" => "too_many_attempts");
        return Err(ApiError::new(
            ErrorCode::TooManyAttempts,
            "too many failed logins; retry later",
        )
        .with_header(header::RETRY_AFTER, retry_after(ttl)));
    }
    let lookup = email_key(&email);
    let found = accounts
        .redis(|mut conn| async move {
            let id: Option<String> = conn.get(&lookup).await?;
            let Some(id) = id else {
                return Ok::<_, redis::RedisError>(None);
            };
            let phc: Option<String> = conn.get(credential_key(&id)).await?;
            Ok(phc.map(|phc| (id, phc)))
        })
        .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            metrics.login_error.increment(1);
            return Err(unavailable(e));
        }
    };
    let (id, phc) = found.unzip();
    let verified = service.verifier.verify(password, phc.map(Into::into)).await;
    let id = match id {
        Some(id) if verified => id,
        _ => {
            let window = settings.login_failure_window.as_millis() as u64;
            let counted = accounts
                .redis_write(|mut conn| async move {
                    FAILED
                        .key(&by_email)
                        .key(&by_ip)
                        .arg(window)
                        .invoke_async::<String>(&mut conn)
                        .await
                })
                .await;
            if let Err(e) = counted {
                warn!(service.log, "a failed login was not counted"; "error" => format!("{e:#}"));
            }
            metrics.login_invalid.increment(1);
            info!(service.log, "login refused"; "reason" => "invalid_credentials");
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "the email or password is wrong",
            ));
        }
    };
    let Some((key, now)) = signing_key(&service) else {
        metrics.login_error.increment(1);
        return Err(ApiError::new(
            ErrorCode::AuthUnavailable,
            "no signing key is loaded yet; retry later",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")));
    };
    let refresh = new_refresh_token().map_err(internal)?;
    let family = uuid::Uuid::new_v4().to_string();
    let ttl = settings.refresh_token_ttl.as_secs();
    let (stored, user) = (refresh_key(&refresh), id.clone());
    let issued = accounts
        .redis_write(|mut conn| async move {
            ISSUE
                .key(stored)
                .key(family_key(&family))
                .key(&by_email)
                .arg(&user)
                .arg(&family)
                .arg(ttl)
                .invoke_async::<String>(&mut conn)
                .await
        })
        .await;
    if let Err(e) = issued {
        metrics.login_error.increment(1);
        return Err(unavailable(e));
    }
    let answer = user_tokens(&service, &key, now, &id, &refresh)?;
    metrics.login_ok.increment(1);
    metrics.issued_password.increment(1);
    req.extensions_mut().insert(Subject(id.as_str().into()));
    info!(service.log, "token issued"; "grant" => PASSWORD, "user_id" => &id,
        "scope" => &settings.user_scope, "kid" => &key.kid);
    Ok(answer)
}

/// `grant_type=refresh_token` (RFC 6749 §6): rotates the token and answers a new pair.
pub async fn refresh_grant(
    req: &HttpRequest,
    service: &TokenService,
    presented: &str,
) -> Result<Result<HttpResponse, ApiError>, OAuthError> {
    let (key, now) = signing_key(service).ok_or(OAuthError::TemporarilyUnavailable)?;
    let successor = match new_refresh_token() {
        Ok(token) => token,
        Err(e) => return Ok(Err(internal(e))),
    };
    let (old, new) = (refresh_key(presented), refresh_key(&successor));
    let ttl = service.accounts.settings.refresh_token_ttl.as_secs();
    let rotated = service
        .accounts
        .redis_write(|mut conn| async move {
            ROTATE
                .key(old)
                .key(new)
                .arg(ttl)
                .invoke_async::<(String, String)>(&mut conn)
                .await
        })
        .await;
    let user = match rotated {
        Ok((outcome, user)) if outcome == "ok" => user,
        Ok((outcome, user)) if outcome == "reused" => {
            warn!(service.log, "a used refresh token was presented; its family is revoked";
                "user_id" => user);
            return Err(OAuthError::InvalidGrant);
        }
        Ok(_) => return Err(OAuthError::InvalidGrant),
        Err(e) => return Ok(Err(unavailable(e))),
    };
    let answer = match user_tokens(service, &key, now, &user, &successor) {
        Ok(answer) => answer,
        Err(e) => return Ok(Err(e)),
    };
    service.accounts.metrics.issued_refresh.increment(1);
    req.extensions_mut().insert(Subject(user.as_str().into()));
    info!(service.log, "token issued"; "grant" => REFRESH_TOKEN, "user_id" => &user,
        "scope" => &service.accounts.settings.user_scope, "kid" => &key.kid);
    Ok(Ok(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_15_to_256_unicode_scalar_values() {
        assert!(check_password(&"a".repeat(14)).is_err());
        assert!(check_password(&"a".repeat(15)).is_ok());
        // 15 characters, 30 bytes.
        assert!(check_password(&"é".repeat(15)).is_ok());
        assert!(check_password(&"é".repeat(256)).is_ok());
        assert!(check_password(&"a".repeat(257)).is_err());
    }

    #[test]
    fn refresh_tokens_are_256_bits_stored_by_their_hash() {
        let token = new_refresh_token().expect("random");
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).expect("base64url").len(), 32);
        assert_ne!(token, new_refresh_token().expect("random"));
        let key = refresh_key(&token);
        assert!(key.starts_with("refresh:") && key.len() == 8 + 64 && !key.contains(&token));
    }
}
