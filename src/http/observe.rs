//! The middleware around every route: request id, error body with that id, metrics, access log.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, USER_AGENT};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use slog::{Logger, debug, error, info, warn};

use super::error::{ApiError, ErrorCode};
use super::request_id::{self, RequestId};
use crate::telemetry::metrics;

/// The route label a handler chose itself (set in request extensions); saves observe from
/// matching the path against every resource again.
#[derive(Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// The logger of a role, as app data: `app.app_data(web::Data::new(AppLogger(log)))`.
#[derive(Clone)]
pub struct AppLogger(pub Logger);

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let _in_flight = metrics::InFlight::start();
    let id = RequestId::from_headers(req.headers());
    req.extensions_mut().insert(id.clone());
    let log = req
        .app_data::<web::Data<AppLogger>>()
        .map(|l| l.0.clone())
        .unwrap_or_else(|| Logger::root(slog::Discard, slog::o!()));
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let remote_addr = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();

    let mut res = next.call(req).await?.map_into_boxed_body();
    if let Some(err) = res.response().error() {
        let api = err.as_error::<ApiError>();
        let rendered = match api {
            Some(api) => {
                if let Some(cause) = &api.cause {
                    error!(log, "request failed"; "request_id" => id.as_str(), "error" => api.code.as_str(), "cause" => format!("{cause:#}"));
                }
                api.render(Some(id.as_str()))
            }
            None => {
                // An error raised outside our handlers (actix itself): same body shape.
                let fallback =
                    fallback_error(err.as_response_error().status_code(), &err.to_string());
                if fallback.code == ErrorCode::InternalServerError {
                    error!(log, "request failed"; "request_id" => id.as_str(), "cause" => err.to_string());
                }
                fallback.render(Some(id.as_str()))
            }
        };
        res = res.into_response(rendered);
    }
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut().insert(request_id::HEADER, value);
    }

    let status = res.status().as_u16();
    let chosen = res.request().extensions().get::<RouteLabel>().map(|r| r.0);
    let route = match chosen {
        Some(label) => label.to_owned(),
        None => res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned()),
    };
    let elapsed = started.elapsed();
    metrics::record_http(&method, &route, status, elapsed);

    let is_probe = path.starts_with("/health") || path == "/metrics";
    let kv = slog::o!(
        "request_id" => id.as_str().to_owned(),
        "method" => method,
        "path" => path,
        "route" => route,
        "status" => status,
        "duration_ms" => (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        "remote_addr" => remote_addr,
        "user_agent" => user_agent,
    );
    let log = log.new(kv);
    match status {
        _ if is_probe => debug!(log, "request"),
        500.. => warn!(log, "request"),
        _ => info!(log, "request"),
    }
    Ok(res)
}

fn fallback_error(status: StatusCode, message: &str) -> ApiError {
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        400..=499 => ErrorCode::ValidationError,
        _ => ErrorCode::InternalServerError,
    };
    let message = if code == ErrorCode::InternalServerError {
        "internal server error"
    } else {
        message
    };
    ApiError::new(code, message)
}
