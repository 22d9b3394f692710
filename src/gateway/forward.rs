//! The proxy: `/api/users…` → `{users-url}/users…`, bodies streamed both ways, bounded in time.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::uri::{Authority, Scheme};
use actix_web::http::{Method, StatusCode, Uri};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use anyhow::Context as _;
use awc::error::{ConnectError, SendRequestError};
use awc::{Client, ClientRequest};
use futures_util::{Stream, StreamExt};

use crate::http::error::{ApiError, ErrorCode};
use crate::http::observe::RouteLabel;
use crate::http::peer::IpText;
use crate::http::request_id::{self, RequestId};
use crate::telemetry::metrics;

use super::headers::{
    self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PREFIX, X_FORWARDED_PROTO,
};

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
    // `base` parsed once, so a request only parses its own path and query.
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    // The `Host` header awc would write for `authority` (port left out when 80/443), made once
    // instead of formatted per request; static bytes, so cloning it counts no references.
    host: HeaderValue,
}

impl Upstream {
    pub fn new(base_url: &str, timeout: Duration, max_body: u64) -> anyhow::Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("the users URL {base:?} is not a valid URI"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            anyhow::bail!("the users URL {base:?} needs a scheme and a host");
        };
        let host = match authority.port_u16() {
            None | Some(80 | 443) => authority.host().to_owned(),
            Some(port) => format!("{}:{port}", authority.host()),
        };
        // Leaked once per gateway (a few bytes): a `'static` value clones for free on every worker.
        let host: &'static str = Box::leak(host.into_boxed_str());
        let host = HeaderValue::from_maybe_shared(web::Bytes::from_static(host.as_bytes()))
            .with_context(|| format!("the users URL {base:?} has no valid host"))?;
        Ok(Self {
            scheme: scheme.clone(),
            host,
            authority: authority.clone(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            base,
            timeout,
            max_body,
        })
    }
}

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
    // The app's default service: everything its own routes don't take. Matched here, not by
    // an actix scope, which would cost a routing layer on every proxied request.
    let path = req.path();
    let route = if path == ROOT {
        ROOT
    } else if path.starts_with(ROOT) && path.as_bytes()[ROOT.len()] == b'/' {
        "/api/users/{tail}"
    } else {
        return Err(ApiError::not_found());
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

    let target = upstream_uri(&req, &upstream)?;
    let build = |target| upstream_request(&req, target, &client, &upstream, &id);
    // How reading the client's body went; only a request with a body needs to know.
    let inbound = has_body.then(|| Rc::new(Cell::new(Inbound::Fine)));
    let result = if let Some(inbound) = &inbound {
        let body = limited(payload, upstream.max_body, inbound.clone());
        match declared {
            Some(len) if !chunked => build(target).send_body(SizedStream::new(len, body)).await,
            _ => build(target).send_stream(body).await,
        }
    } else {
        let first = build(target).send().await;
        match first {
            // A pooled connection the upstream had closed: nothing reached it, so an
            // idempotent request without a body is safe to send once more.
            Err(e)
                if is_idempotent(&method)
                    && is_stale_connection(&e)
                    && Instant::now() < deadline =>
            {
                // The first request took the target; the same request gives the same one.
                match upstream_uri(&req, &upstream) {
                    Ok(target) => build(target).send().await,
                    Err(_) => Err(e),
                }
            }
            other => other,
        }
    };

    let response = match result {
        Ok(response) => response,
        Err(e) => {
            let error = match inbound.map_or(Inbound::Fine, |i| i.get()) {
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
    let mut out = HttpResponse::build(status);
    for (name, value) in headers::end_to_end(response.headers(), &[header::CONTENT_LENGTH]) {
        out.append_header((name.clone(), value.clone()));
    }
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        metrics::record_upstream(SERVICE, &method, status.as_u16(), started.elapsed());
        return Ok(out.finish());
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The upstream timeout covers the body too, not only the head; so does its metric.
    let body = UpstreamBody {
        body: response.timeout(deadline.saturating_duration_since(Instant::now())),
        method,
        status: status.as_u16(),
        started,
        recorded: false,
    };
    Ok(match length {
        Some(len) => out.body(SizedStream::new(len, body)),
        None => out.streaming(body),
    })
}

/// The upstream's response body on its way to the client. The exchange ends with it, so it
/// records `upstream_request_duration_seconds` then: with the upstream's status when the body
/// ends whole (or the client stops reading it), 504 when it stalls past the deadline, 502 when
/// the upstream breaks it off.
struct UpstreamBody<S> {
    body: S,
    method: Method,
    status: u16,
    started: Instant,
    recorded: bool,
}

impl<S> UpstreamBody<S> {
    fn record(&mut self, status: u16) {
        if !self.recorded {
            self.recorded = true;
            metrics::record_upstream(SERVICE, &self.method, status, self.started.elapsed());
        }
    }
}

impl<S> Stream for UpstreamBody<S>
where
    S: Stream<Item = Result<web::Bytes, PayloadError>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.body).poll_next(cx);
        match &next {
            Poll::Ready(None) => this.record(this.status),
            Poll::Ready(Some(Err(e))) => this.record(body_error_status(e)),
            _ => {}
        }
        next
    }
}

impl<S> Drop for UpstreamBody<S> {
    fn drop(&mut self) {
        self.record(self.status);
    }
}

/// The status an upstream body failure counts as: awc's body deadline is an I/O `TimedOut`.
fn body_error_status(e: &PayloadError) -> u16 {
    let code = match e {
        PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            ErrorCode::UpstreamTimeout
        }
        _ => ErrorCode::UpstreamUnavailable,
    };
    code.status().as_u16()
}

/// `{users-url}/users…?query` for a request to `/api/users…?query`.
fn upstream_uri(req: &HttpRequest, upstream: &Upstream) -> Result<Uri, ApiError> {
    let path = req.uri().path();
    let rest = path.strip_prefix(PREFIX).unwrap_or(path);
    let query = req.uri().query();
    let mut target = String::with_capacity(
        upstream.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
    );
    target.push_str(&upstream.base_path);
    target.push_str(rest);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(target)
        .build()
        // Cannot happen for a path actix already parsed; answered as the client's fault if it does.
        .map_err(|_| ApiError::field("path", "the path cannot be forwarded"))
}

/// The request to the upstream: method, target, end-to-end headers, forwarding headers.
/// Headers go straight into its map: awc's by-value builder calls move the whole request.
fn upstream_request(
    req: &HttpRequest,
    target: Uri,
    client: &Client,
    upstream: &Upstream,
    id: &RequestId,
) -> ClientRequest {
    let mut up = client
        .request(req.method().clone(), target)
        .timeout(upstream.timeout);
    let out = up.headers_mut();
    for (name, value) in headers::end_to_end(req.headers(), &SET_BY_US) {
        out.append(name.clone(), value.clone());
    }
    out.insert(header::HOST, upstream.host.clone());
    let peer = req.peer_addr().map(|a| IpText::new(a.ip()));
    let peer = peer.as_ref().map(IpText::as_str);
    // Every value below is made of visible ASCII (other headers' values, an IP, the server's
    // host name), which a header value always accepts.
    if let Some(xff) =
        headers::forwarded_for(req.headers(), peer).and_then(|xff| HeaderValue::try_from(xff).ok())
    {
        out.insert(X_FORWARDED_FOR, xff);
    }
    // Without a `Host` header: the request's absolute-form authority, else the server's name.
    let own_host = req
        .uri()
        .authority()
        .map_or(req.app_config().host(), |a| a.as_str());
    let origin = headers::origin(req.headers(), own_host);
    let proto = match origin.proto {
        "http" => Ok(HeaderValue::from_static("http")),
        "https" => Ok(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other),
    };
    if let Ok(proto) = proto {
        out.insert(X_FORWARDED_PROTO, proto);
    }
    if let Ok(host) = HeaderValue::from_str(origin.host) {
        out.insert(X_FORWARDED_HOST, host);
    }
    out.insert(X_FORWARDED_PREFIX, HeaderValue::from_static(PREFIX));
    out.insert(request_id::HEADER, id.header_value().clone());
    up
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

/// Errors that mean a reused connection was already closed by the upstream: writing failed, or
/// the connection ended before a response head (awc reports that as `Disconnected`). Only an
/// idempotent request is ever sent again (RFC 9110 §9.2.2).
fn is_stale_connection(e: &SendRequestError) -> bool {
    matches!(
        e,
        SendRequestError::Send(_)
            | SendRequestError::Response(_)
            | SendRequestError::Connect(ConnectError::Disconnected)
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_url_is_split_once_into_scheme_authority_and_base_path() {
        let timeout = Duration::from_secs(1);
        let plain = Upstream::new("http://users:3001/", timeout, 1).expect("valid URL");
        assert_eq!(plain.base, "http://users:3001");
        assert_eq!(plain.scheme.as_str(), "http");
        assert_eq!(plain.authority.as_str(), "users:3001");
        assert_eq!(plain.base_path, "");
        assert_eq!(plain.host, "users:3001");

        let nested = Upstream::new("https://10.0.0.7/v1/", timeout, 1).expect("valid URL");
        assert_eq!(nested.base, "https://10.0.0.7/v1");
        assert_eq!(nested.base_path, "/v1");
        assert_eq!(nested.host, "10.0.0.7");
        let default_port = Upstream::new("http://users:80", timeout, 1).expect("valid URL");
        assert_eq!(default_port.host, "users");
        let ipv6 = Upstream::new("http://[::1]:3001", timeout, 1).expect("valid URL");
        assert_eq!(ipv6.host, "[::1]:3001");

        assert!(Upstream::new("users:3001", timeout, 1).is_err());
        assert!(Upstream::new("http://bad host/", timeout, 1).is_err());
    }
}
