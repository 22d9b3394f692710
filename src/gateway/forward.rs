//! The proxy: `/api/users…` → `{users-url}/users…`, bodies streamed both ways, bounded in time.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use awc::error::{ConnectError, SendRequestError};
use awc::{Client, ClientRequest};
use futures_util::{Stream, StreamExt};

use crate::http::error::{ApiError, ErrorCode};
use crate::http::observe::RouteLabel;
use crate::http::request_id::{self, RequestId};
use crate::telemetry::metrics;

use super::headers;

/// The path prefix the gateway serves the users API under.
pub const PREFIX: &str = "/api";
/// Everything under this path is proxied.
pub const ROOT: &str = "/api/users";
const SERVICE: &str = "users";

/// Where and how to reach the users service; shared by every worker.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Base URL without a trailing slash, e.g. `http://users:3001`.
    pub base: String,
    pub timeout: Duration,
    pub max_body: u64,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Headers the gateway sets itself instead of copying.
static SET_BY_US: [HeaderName; 7] = [
    header::HOST,
    header::CONTENT_LENGTH,
    request_id::HEADER,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PREFIX,
];

pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    upstream: web::Data<Upstream>,
    client: web::Data<Client>,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let route = if req.path() == ROOT {
        ROOT
    } else {
        "/api/users/{tail}"
    };
    req.extensions_mut().insert(RouteLabel(route));
    let deadline = started + upstream.timeout;
    let method = req.method().clone();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > upstream.max_body) {
        return Err(too_large(upstream.max_body));
    }
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let has_body = declared.is_some_and(|len| len > 0) || chunked;

    let build = || upstream_request(&req, &client, &upstream, &id);
    let inbound = Rc::new(Cell::new(Inbound::Fine));
    let result = if !has_body {
        let first = build().send().await;
        match first {
            // A pooled connection the upstream had closed: nothing reached it, so an
            // idempotent request without a body is safe to send once more.
            Err(e)
                if is_idempotent(&method)
                    && is_stale_connection(&e)
                    && Instant::now() < deadline =>
            {
                build().send().await
            }
            other => other,
        }
    } else {
        let body = limited(payload, upstream.max_body, inbound.clone());
        match declared {
            Some(len) if !chunked => build().send_body(SizedStream::new(len, body)).await,
            _ => build().send_stream(body).await,
        }
    };

    let response = match result {
        Ok(response) => response,
        Err(e) => {
            let error = match inbound.get() {
                Inbound::TooLarge => too_large(upstream.max_body),
                // The client went away or broke its own body: not the upstream's fault.
                Inbound::Broken => ApiError::field("body", "the request body ended early"),
                Inbound::Fine => upstream_error(e),
            };
            metrics::record_upstream(
                SERVICE,
                &method,
                error.code.status().as_u16(),
                started.elapsed(),
            );
            return Err(error);
        }
    };
    let status = response.status();
    metrics::record_upstream(SERVICE, &method, status.as_u16(), started.elapsed());

    let mut out = HttpResponse::build(status);
    for (name, value) in headers::end_to_end(response.headers(), &[header::CONTENT_LENGTH]) {
        out.append_header((name.clone(), value.clone()));
    }
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(out.finish());
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The upstream timeout covers the body too, not only the head.
    let body = response.timeout(deadline.saturating_duration_since(Instant::now()));
    Ok(match length {
        Some(len) => out.body(SizedStream::new(len, body)),
        None => out.streaming(body),
    })
}

/// The request to the upstream: method, path, query, end-to-end headers, forwarding headers.
fn upstream_request(
    req: &HttpRequest,
    client: &Client,
    upstream: &Upstream,
    id: &RequestId,
) -> ClientRequest {
    let path = req.uri().path();
    let rest = path.strip_prefix(PREFIX).unwrap_or(path);
    let mut url = format!("{}{rest}", upstream.base);
    if let Some(query) = req.uri().query() {
        url.push('?');
        url.push_str(query);
    }
    let mut up = client
        .request(req.method().clone(), url)
        .timeout(upstream.timeout);
    for (name, value) in headers::end_to_end(req.headers(), &SET_BY_US) {
        up = up.append_header((name.clone(), value.clone()));
    }
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    if let Some(xff) = headers::forwarded_for(req.headers(), peer.as_deref()) {
        up = up.insert_header((X_FORWARDED_FOR, xff));
    }
    let info = req.connection_info();
    up.insert_header((X_FORWARDED_PROTO, info.scheme()))
        .insert_header((X_FORWARDED_HOST, info.host()))
        .insert_header((X_FORWARDED_PREFIX, HeaderValue::from_static(PREFIX)))
        .insert_header((request_id::HEADER, id.as_str()))
}

/// How reading the client's body went, for telling a client fault from an upstream one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inbound {
    Fine,
    TooLarge,
    Broken,
}

/// The request body, failing once more than `max` bytes came; `inbound` says why it failed.
fn limited(
    payload: web::Payload,
    max: u64,
    inbound: Rc<Cell<Inbound>>,
) -> impl Stream<Item = Result<web::Bytes, PayloadError>> + 'static {
    let mut seen: u64 = 0;
    payload.map(move |chunk| {
        let chunk = chunk.inspect_err(|_| inbound.set(Inbound::Broken))?;
        seen += chunk.len() as u64;
        if seen > max {
            inbound.set(Inbound::TooLarge);
            return Err(PayloadError::Overflow);
        }
        Ok(chunk)
    })
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Errors that mean a reused connection was already closed by the upstream.
fn is_stale_connection(e: &SendRequestError) -> bool {
    matches!(e, SendRequestError::Send(_) | SendRequestError::Response(_))
}

fn upstream_error(e: SendRequestError) -> ApiError {
    let cause = anyhow::anyhow!("users upstream: {e}");
    match e {
        SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
            ApiError::with_cause(
                ErrorCode::UpstreamTimeout,
                "the users service did not answer in time",
                cause,
            )
        }
        _ => ApiError::with_cause(
            ErrorCode::UpstreamUnavailable,
            "the users service is unavailable",
            cause,
        ),
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the body is larger than {max} bytes"),
    )
}
