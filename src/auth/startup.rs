//! Building the auth role: `build(settings, log)` → `Application::run_until_stopped()`.

use std::time::Instant;

use ::metrics::{counter, histogram};
use actix_web::middleware::from_fn;
use actix_web::{App, web};
use anyhow::Context as _;
use slog::{Logger, info};

use super::accounts::{AccountMetrics, Accounts};
use super::clients::Clients;
use super::keys::SigningKeys;
use super::routes::{self, TokenService};
use super::secrets::{self, Verifier};
use super::token::{CLIENT_CREDENTIALS, Issuer, PASSWORD, REFRESH_TOKEN};
use crate::config::AuthRoleSettings;
use crate::http::client::TrustedProxies;
use crate::http::error;
use crate::http::observe::{Observer, observe};
use crate::http::ops::{Draining, Ops, ReadinessCheck};
use crate::http::shed::Admission;
use crate::server::{self, Application};
use crate::telemetry::logging;
use crate::telemetry::metrics::{self, Metrics};

pub const SERVICE: &str = "auth";

/// Binds the port and serves. Missing keys or Redis are not bad configuration: the role is
/// then not ready until they appear. No issuer or no keys directory is.
pub fn build(settings: &AuthRoleSettings, log: Logger) -> anyhow::Result<Application> {
    let tokens = &settings.tokens;
    let issuer = tokens
        .issuer
        .clone()
        .filter(|i| !i.is_empty())
        .context("--issuer (AUTH_ISSUER) is required")?;
    anyhow::ensure!(
        url::Url::parse(&issuer).is_ok_and(|u| matches!(u.scheme(), "http" | "https")),
        "--issuer must be an http or https URL"
    );
    let dir = tokens
        .signing_keys_dir
        .clone()
        .context("--signing-keys-dir (SIGNING_KEYS_DIR) is required")?;
    secrets::argon2(&tokens.argon2)?;
    let listener = server::bind(settings.common.host, settings.port)?;
    let log = logging::for_service(&log, SERVICE);
    let metrics = Metrics::new();
    let (issued, hash_duration, account_metrics) = metrics.register(|| {
        for status in ["ok", "error"] {
            let _ = histogram!(metrics::REDIS_DURATION, "operation" => "ping", "status" => status);
        }
        let attempts = |status: &'static str, reason: &'static str| {
            counter!(metrics::AUTHENTICATION_ATTEMPTS, "status" => status, "reason" => reason)
        };
        (
            counter!(metrics::TOKENS_ISSUED, "grant" => CLIENT_CREDENTIALS),
            histogram!(metrics::PASSWORD_HASH_DURATION),
            AccountMetrics {
                login_ok: attempts("success", "ok"),
                login_invalid: attempts("failure", "invalid_credentials"),
                login_throttled: attempts("failure", "too_many_attempts"),
                login_error: attempts("error", "store_unavailable"),
                issued_password: counter!(metrics::TOKENS_ISSUED, "grant" => PASSWORD),
                issued_refresh: counter!(metrics::TOKENS_ISSUED, "grant" => REFRESH_TOKEN),
            },
        )
    });
    let permits = settings.common.effective_workers();
    let verifier = Verifier::new(&tokens.argon2, permits, hash_duration)?;
    let redis =
        crate::redis::Redis::new(&settings.redis, log.new(slog::o!("component" => "redis")))?;
    info!(log.new(slog::o!(settings.common.clone())), "starting";
        "port" => listener.local_addr()?.port(),
        "issuer" => &issuer,
        "audience" => &tokens.audience,
        "access_token_ttl_s" => tokens.access_token_ttl.as_secs(),
        "signing_keys_dir" => dir.display().to_string(),
        "key_publish_delay_s" => tokens.key_publish_delay.as_secs_f64(),
        "clients_file" => tokens.clients_file.as_ref().map(|f| f.display().to_string()).unwrap_or_default(),
        "argon2_memory_kib" => tokens.argon2.argon2_memory_kib,
        "argon2_iterations" => tokens.argon2.argon2_iterations,
        "argon2_parallelism" => tokens.argon2.argon2_parallelism,
        "redis_url" => settings.redis.redacted_url(),
        "trusted_proxies" => TrustedProxies(settings.trusted_proxies.clone()).text(),
        "user_scope" => &tokens.accounts.user_scope,
        "refresh_token_ttl_s" => tokens.accounts.refresh_token_ttl.as_secs(),
        "login_max_failures" => tokens.accounts.login_max_failures,
        "login_max_failures_per_ip" => tokens.accounts.login_max_failures_per_ip,
        "login_failure_window_s" => tokens.accounts.login_failure_window.as_secs_f64(),
    );
    let (keys, watch_keys) = SigningKeys::start(
        dir,
        tokens.key_publish_delay,
        log.new(slog::o!("component" => "signing_keys")),
    );
    actix_web::rt::spawn(watch_keys);
    let (clients, watch_clients) = Clients::start(
        tokens.clients_file.clone(),
        log.new(slog::o!("component" => "clients")),
    );
    actix_web::rt::spawn(watch_clients);
    let service = web::Data::new(TokenService {
        keys: keys.clone(),
        clients,
        verifier,
        issuer: Issuer {
            issuer,
            audience: tokens.audience.clone(),
            ttl: tokens.access_token_ttl,
        },
        issued,
        accounts: Accounts {
            redis: redis.clone(),
            timeout: settings.redis.redis_timeout,
            settings: tokens.accounts.clone(),
            metrics: account_metrics,
        },
        log: log.clone(),
    });
    let draining = Draining::default();
    // One in-flight count per role, shared by its workers.
    let admission = Admission::new(&settings.common);
    let (app_redis, app_draining, app_log) = (redis.clone(), draining.clone(), log.clone());
    let trusted = TrustedProxies(settings.trusted_proxies.clone());
    let app = Application::start(listener, &settings.common, draining, log, move || {
        let (redis, ping_metrics, keys) = (app_redis.clone(), metrics.clone(), keys.clone());
        let ops = Ops::new(SERVICE, app_draining.clone(), metrics.clone())
            .check(ReadinessCheck::new("redis", move || {
                let (redis, metrics) = (redis.clone(), ping_metrics.clone());
                async move {
                    let started = Instant::now();
                    let up = redis.ping().await;
                    let status = if up { "ok" } else { "error" };
                    metrics.record_redis("ping", status, started.elapsed());
                    up
                }
            }))
            .check(ReadinessCheck::new("signing_key", move || {
                let loaded = !keys.current().is_empty();
                async move { loaded }
            }));
        App::new()
            .app_data(service.clone())
            .app_data(trusted.clone())
            .app_data(Observer::new(app_log.clone(), &metrics, &admission))
            .wrap(from_fn(observe))
            .configure(|cfg| ops.configure(cfg))
            .configure(routes::configure)
            .default_service(web::to(error::not_found))
    })?;
    Ok(app.on_stop(move || redis.close()))
}
