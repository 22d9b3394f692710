//! The middleware around every route: request id, error body with that id, metrics, access log.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, HeaderMap, TRANSFER_ENCODING, USER_AGENT};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use slog::{Drain, Logger, debug, error, info, warn};

use super::error::{ApiError, ErrorCode};
use super::peer::IpText;
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

    let mut res = with_error_body(next.call(req).await?.map_into_boxed_body(), &id);
    res.headers_mut()
        .insert(request_id::HEADER, id.header_value().clone());

    let status = res.status().as_u16();
    let req = res.request();
    // Everything below borrows from the request the response still holds: no copies. (The
    // logger too: its reference counts are shared by every worker.)
    let no_logger;
    let log = match req.app_data::<web::Data<AppLogger>>() {
        Some(l) => &l.0,
        None => {
            no_logger = Logger::root(slog::Discard, slog::o!());
            &no_logger
        }
    };
    let pattern;
    let route = match req.extensions().get::<RouteLabel>() {
        Some(label) => label.0,
        None => {
            pattern = req.match_pattern();
            pattern.as_deref().unwrap_or("unmatched")
        }
    };
    let elapsed = started.elapsed();
    metrics::record_http(req.method(), route, status, elapsed);

    let path = req.path();
    let level = match status {
        _ if path.starts_with("/health") || path == "/metrics" => slog::Level::Debug,
        500.. => slog::Level::Warning,
        _ => slog::Level::Info,
    };
    if log.is_enabled(level) {
        let remote_addr = req.peer_addr().map(|a| IpText::new(a.ip()));
        let user_agent = req
            .headers()
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        // slog takes the level as a constant: one call per level, same fields.
        macro_rules! access {
            ($log_macro:ident) => {
                $log_macro!(log, "request";
                    "request_id" => id.as_str(),
                    "method" => req.method().as_str(),
                    "path" => path,
                    "route" => route,
                    "status" => status,
                    "duration_ms" => duration_ms,
                    "remote_addr" => remote_addr.as_ref().map_or("", IpText::as_str),
                    "user_agent" => user_agent,
                )
            };
        }
        match level {
            slog::Level::Debug => access!(debug),
            slog::Level::Warning => access!(warn),
            _ => access!(info),
        }
    }
    Ok(res)
}

/// The response with our error body (§2) in place of the one actix or a handler made, its
/// cause logged when it is a server fault.
fn with_error_body(res: ServiceResponse<BoxBody>, id: &RequestId) -> ServiceResponse<BoxBody> {
    let Some(err) = res.response().error() else {
        return res;
    };
    let log = match res.request().app_data::<web::Data<AppLogger>>() {
        Some(l) => l.0.clone(),
        None => Logger::root(slog::Discard, slog::o!()),
    };
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
            let fallback = fallback_error(err.as_response_error().status_code(), &err.to_string());
            if fallback.code == ErrorCode::InternalServerError {
                error!(log, "request failed"; "request_id" => id.as_str(), "cause" => err.to_string());
            }
            fallback.render(Some(id.as_str()))
        }
    };
    let mut rendered = rendered;
    if unread_body(&rendered, res.request().headers()) {
        // actix-web #2632: an unread body would be parsed as the next request.
        rendered
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    res.into_response(rendered)
}

/// An error answered before the handler read the request's body (unknown path, wrong method,
/// wrong media type) to a request that has one: the connection cannot be reused.
fn unread_body(rendered: &actix_web::HttpResponse, headers: &HeaderMap) -> bool {
    let early = matches!(rendered.status().as_u16(), 404 | 405 | 415);
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    early && has_body
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
