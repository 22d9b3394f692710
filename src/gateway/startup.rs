//! Building the gateway role: `build(settings, log)` → `Application::run_until_stopped()`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, web};
use slog::{Logger, info};

use super::auth::keys::KeySet;
use super::auth::{Auth, WorkerAuth};
use super::limit::Limits;
use super::proxy::{self, Proxy};
use super::readiness::UpstreamReadiness;
use super::route;
use super::upstream::Upstream;
use crate::config::GatewaySettings;
use crate::http::client::TrustedProxies;
use crate::http::observe::{Observer, observe};
use crate::http::ops::{Draining, Ops, ReadinessCheck};
use crate::http::shed::{self, Admission};
use crate::server::{self, Application, KEEP_ALIVE};
use crate::telemetry::logging;
use crate::telemetry::metrics::Metrics;

pub const SERVICE: &str = "gateway";

/// A pooled awc client for one worker, configured as a proxy needs (see PITFALLS.md).
fn upstream_client(settings: &GatewaySettings) -> awc::Client {
    let connector = awc::Connector::new()
        .timeout(settings.upstream.upstream_connect_timeout)
        // Below the upstream's 5 s keep-alive, so we never reuse a connection it just closed.
        .conn_keep_alive(KEEP_ALIVE.saturating_sub(Duration::from_secs(1)))
        // New connections re-resolve the host: bounded lifetime follows Service/DNS changes.
        .conn_lifetime(Duration::from_secs(30))
        .limit(512);
    awc::Client::builder()
        .connector(connector)
        .timeout(settings.upstream.upstream_timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

/// The gateway's authentication when tokens are verified: settings checked, the key set's
/// loading task started on this runtime (it lives as long as the gateway).
fn auth(
    settings: &GatewaySettings,
    metrics: &Metrics,
    log: &Logger,
) -> anyhow::Result<Option<Arc<Auth>>> {
    let settings = &settings.auth;
    settings.check().map_err(anyhow::Error::msg)?;
    if !settings.is_on() {
        return Ok(None);
    }
    anyhow::ensure!(
        jsonwebtoken::crypto::CryptoProvider::try_get_default().is_some(),
        "this build has no JWT crypto provider"
    );
    let (keys, task) = KeySet::start(settings, metrics, log.new(slog::o!("component" => "jwks")))?;
    actix_web::rt::spawn(task);
    Ok(Some(Arc::new(Auth::new(settings, keys))))
}

/// Binds the port and serves; the users service may still be down (the gateway is then not ready).
pub fn build(settings: &GatewaySettings, log: Logger) -> anyhow::Result<Application> {
    let listener = server::bind(settings.common.host, settings.port)?;
    let log = logging::for_service(&log, SERVICE);
    let metrics = Metrics::new();
    let auth = auth(settings, &metrics, &log)?;
    let limits = Limits::new(&settings.limits, &metrics)?;
    let trusted = Arc::new(TrustedProxies(settings.limits.trusted_proxies.clone()));
    let reserved: Vec<_> = settings
        .auth
        .jwt_claim_headers
        .iter()
        .map(|c| c.header.clone())
        .collect();
    let upstream = |service, url: &url::Url| {
        Upstream::new(
            service,
            url.as_str(),
            settings.upstream.upstream_timeout,
            settings.upstream.max_body,
            &reserved,
        )
        .map(|upstream| upstream.trusting(trusted.clone()))
    };
    let (users, auth_service) = (
        upstream("users", &settings.users_url)?,
        upstream("auth", &settings.auth_url)?,
    );
    let l = &settings.limits;
    info!(log.new(slog::o!(settings.common.clone())), "starting";
        "port" => listener.local_addr()?.port(),
        "users_url" => crate::config::redact_url(&settings.users_url),
        "auth_url" => crate::config::redact_url(&settings.auth_url),
        "upstream_timeout_ms" => settings.upstream.upstream_timeout.as_millis() as u64,
        "upstream_connect_timeout_ms" => settings.upstream.upstream_connect_timeout.as_millis() as u64,
        "max_body" => settings.upstream.max_body,
        "auth_mode" => format!("{:?}", settings.auth.auth_mode).to_lowercase(),
        "jwt_issuer" => settings.auth.jwt_issuer.as_deref().unwrap_or(""),
        "jwks" => settings.auth.jwks_url.as_ref().map(crate::config::redact_url)
            .or_else(|| settings.auth.jwks_file.as_ref().map(|f| f.display().to_string()))
            .unwrap_or_default(),
        "trusted_proxies" => trusted.text(),
        "rate_limit" => format!("{:?}", l.rate_limit).to_lowercase(),
        "rate_limit_ip_requests" => l.rate_limit_ip_requests.unwrap_or(0),
        "rate_limit_requests" => l.rate_limit_requests.unwrap_or(0),
        "rate_limit_window_ms" => l.rate_limit_window.as_millis() as u64,
        "rate_limit_burst" => l.burst().unwrap_or(0),
        "rate_limit_redis_url" => l.rate_limit_redis_url.as_ref().map(crate::config::redact_url).unwrap_or_default(),
        "rate_limit_redis_timeout_ms" => l.rate_limit_redis_timeout.as_millis() as u64,
        "rate_limit_failure_mode" => format!("{:?}", l.rate_limit_failure_mode).to_lowercase(),
        "rate_limit_headers" => format!("{:?}", l.rate_limit_headers).to_lowercase(),
        "rate_limit_max_keys" => l.rate_limit_max_keys,
    );
    // Ready while users is: the auth service is not a dependency of the users API (a gateway
    // taken out of rotation because auth is down would refuse users requests that need no
    // new token); /api/auth answers 502 meanwhile.
    let ready_url = format!("{}/health/ready", users.base);
    let readiness = UpstreamReadiness::default();
    let draining = Draining::default();
    // One in-flight count per role, shared by its workers.
    let admission = Admission::new(&settings.common);
    let document = web::Data::new(crate::openapi::gateway(settings));
    let (app_draining, app_log, settings) = (draining.clone(), log.clone(), settings.clone());
    Application::start(
        listener,
        &settings.common.clone(),
        draining,
        log,
        move || {
            let client = upstream_client(&settings);
            let (check_client, readiness, ready_url) =
                (client.clone(), readiness.clone(), ready_url.clone());
            let mut ops = Ops::new(SERVICE, app_draining.clone(), metrics.clone()).check(
                ReadinessCheck::new("user_service", move || {
                    let (client, readiness, url) =
                        (check_client.clone(), readiness.clone(), ready_url.clone());
                    async move { readiness.check(&client, &url).await }
                }),
            );
            if let Some(auth) = auth.as_ref().filter(|a| a.is_required()) {
                // Down only until the first key set loads: the last good one serves after that.
                let keys = auth.keys().clone();
                ops = ops.check(ReadinessCheck::new("jwks", move || {
                    let loaded = keys.is_loaded();
                    async move { loaded }
                }));
            }
            App::new()
                // For the access line of a request answered before the proxy resolves its
                // client (shed by `observe`): the same address.
                .app_data((*trusted).clone())
                .app_data(document.clone())
                .app_data(web::Data::new(Proxy {
                    client,
                    uploads: super::body::Uploads::new(metrics.shed(shed::UPLOADS)),
                    users: users.clone(),
                    auth_service: auth_service.clone(),
                    auth: auth.clone().map(|auth| WorkerAuth::new(auth, &metrics)),
                    trusted: trusted.clone(),
                    limits: limits.clone(),
                }))
                .app_data(Observer::labelling(
                    app_log.clone(),
                    &metrics,
                    &admission,
                    route::label,
                ))
                .wrap(from_fn(observe))
                .configure(|cfg| ops.configure(cfg))
                // `/api/users…` and `/api/auth…` are proxied, any other path is a 404.
                .default_service(web::to(proxy::proxy))
        },
    )
}
