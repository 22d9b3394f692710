//! Stage 3, upstream request: where an upstream service (users, auth) is, the request it is
//! sent, when a request is sent again, and what a failure to get an answer means for the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::uri::{Authority, Scheme};
use actix_web::http::{Method, StatusCode, Uri};
use actix_web::web::Bytes;
use anyhow::Context as _;
use awc::error::{ConnectError, SendRequestError};
use awc::{Client, ClientRequest, ClientResponse};

use super::headers::{
    self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PREFIX, X_FORWARDED_PROTO,
};
use super::route::PREFIX;
use crate::http::client::TrustedProxies;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::request_id::{self, RequestId};

/// Where and how to reach one upstream service; shared by every worker.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Its name: the `service` label of the upstream metric, and in error messages.
    pub service: &'static str,
    /// Base URL without a trailing slash, e.g. `http://users:3001`.
    pub base: String,
    pub timeout: Duration,
    pub max_body: u64,
    // `base` parsed once, so a request only parses its own path and query.
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    // The `Host` header awc would write for `authority` (port left out when 80/443), made once.
    host: HeaderValue,
    /// Incoming headers never copied: those set here, and the claim headers only a verified
    /// token may set; with `Authorization` too, for a request whose token was used.
    skip: Vec<HeaderName>,
    skip_with_token: Vec<HeaderName>,
    /// Whose `X-Forwarded-For` is believed: what is sent on starts at the client it names.
    trusted: Arc<TrustedProxies>,
}

/// What a verified token adds to the upstream request.
pub struct Identity<'a> {
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Whether its credential is sent on (`--jwt-forward-token`): the `Authorization` header,
    /// or the token's cookie.
    pub forward_token: bool,
    /// The cookie a token may come in: left out of `Cookie` unless the token is forwarded.
    pub cookie: Option<&'a str>,
}

impl Upstream {
    /// The service named `service` at `base_url`; `reserved` are header names clients may
    /// never send upstream (the claim headers).
    pub fn new(
        service: &'static str,
        base_url: &str,
        timeout: Duration,
        max_body: u64,
        reserved: &[HeaderName],
    ) -> anyhow::Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("the {service} URL {base:?} is not a valid URI"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            anyhow::bail!("the {service} URL {base:?} needs a scheme and a host");
        };
        let host = match authority.port_u16() {
            None | Some(80 | 443) => authority.host().to_owned(),
            Some(port) => format!("{}:{port}", authority.host()),
        };
        let host = HeaderValue::from_maybe_shared(Bytes::from(host))
            .with_context(|| format!("the {service} URL {base:?} has no valid host"))?;
        let skip: Vec<HeaderName> = SET_BY_US.iter().chain(reserved).cloned().collect();
        let mut skip_with_token = skip.clone();
        skip_with_token.push(header::AUTHORIZATION);
        Ok(Self {
            service,
            skip,
            skip_with_token,
            scheme: scheme.clone(),
            host,
            authority: authority.clone(),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            base,
            timeout,
            max_body,
            trusted: Arc::default(),
        })
    }

    /// The same upstream, sent `X-Forwarded-For` as `trusted` resolves the client.
    pub fn trusting(self, trusted: Arc<TrustedProxies>) -> Self {
        Self { trusted, ..self }
    }

    /// `{base-url}/users…?query` for a request to `/api/users…?query` (`/auth…` likewise).
    pub fn target(&self, uri: &Uri) -> Result<Uri, ApiError> {
        let path = uri.path();
        let rest = path.strip_prefix(PREFIX).unwrap_or(path);
        let mut target = self.base_path.clone() + rest;
        if let Some(query) = uri.query() {
            target.push('?');
            target.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            // Cannot happen for a path actix already parsed; the client's fault if it does.
            .map_err(|_| ApiError::field("path", "the path cannot be forwarded"))
    }

    /// The request to the upstream: method, target, end-to-end headers, forwarding headers.
    /// Headers go straight into its map: awc's by-value builder calls move the whole request.
    pub fn request(
        &self,
        req: &HttpRequest,
        target: Uri,
        client: &Client,
        id: &RequestId,
        identity: Option<&Identity<'_>>,
    ) -> ClientRequest {
        let mut up = client
            .request(req.method().clone(), target)
            .timeout(self.timeout);
        let out = up.headers_mut();
        let skip = match identity {
            Some(identity) if !identity.forward_token => &self.skip_with_token,
            _ => &self.skip,
        };
        for (name, value) in headers::end_to_end(req.headers(), skip) {
            out.append(name.clone(), value.clone());
        }
        for (name, value) in identity.map_or(&[][..], |i| i.headers) {
            out.insert(name.clone(), value.clone());
        }
        if let Some(Identity {
            forward_token: false,
            cookie: Some(name),
            ..
        }) = identity
        {
            without_cookie(out, name);
        }
        out.insert(header::HOST, self.host.clone());
        // Every value below is made of visible ASCII (IPs, other headers' values, the
        // server's host name), which a header value always accepts.
        if let Some(peer) = req.peer_addr()
            && let Ok(xff) =
                HeaderValue::try_from(self.trusted.forwarded_for(peer.ip(), req.headers()))
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

    /// Sends a body-less request. An idempotent one is sent once more, on another connection,
    /// when nothing reached the upstream (a pooled connection it had closed) or it gave up on
    /// the request before reading it (408): RFC 9110 §9.2.2, §15.5.9.
    pub async fn send(
        &self,
        req: &HttpRequest,
        target: Uri,
        client: &Client,
        id: &RequestId,
        identity: Option<&Identity<'_>>,
        deadline: Instant,
    ) -> Result<ClientResponse, SendRequestError> {
        let first = self.request(req, target, client, id, identity).send().await;
        let again = match &first {
            Err(e) => is_stale_connection(e),
            Ok(res) => res.status() == StatusCode::REQUEST_TIMEOUT,
        };
        if !(again && is_idempotent(req.method()) && Instant::now() < deadline) {
            return first;
        }
        // The first attempt took the target; the same request gives the same one again.
        match self.target(req.uri()) {
            Ok(target) => self.request(req, target, client, id, identity).send().await,
            Err(_) => first,
        }
    }
}

/// Removes the cookie `name` (a used token) from the request's `Cookie` headers, keeping the
/// others as one header.
fn without_cookie(headers: &mut awc::http::header::HeaderMap, name: &str) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    // Pairs of a header that was visible ASCII, joined by "; ": still a valid value.
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Headers the gateway sets itself instead of copying. `Expect` is met by this hop.
static SET_BY_US: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
    request_id::HEADER,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PREFIX,
];

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Errors that mean a reused connection was already closed by the upstream: writing failed, or
/// the connection ended before a response head (awc reports that as `Disconnected`).
fn is_stale_connection(e: &SendRequestError) -> bool {
    matches!(
        e,
        SendRequestError::Send(_)
            | SendRequestError::Response(_)
            | SendRequestError::Connect(ConnectError::Disconnected)
    )
}

impl Upstream {
    /// What the client is told when no answer came from this upstream.
    pub fn failure(&self, e: SendRequestError) -> ApiError {
        let service = self.service;
        let cause = anyhow::anyhow!("{service} upstream: {e}");
        match e {
            SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => {
                ApiError::with_cause(
                    ErrorCode::UpstreamTimeout,
                    format!("the {service} service did not answer in time"),
                    cause,
                )
            }
            _ => ApiError::with_cause(
                ErrorCode::UpstreamUnavailable,
                format!("the {service} service is unavailable"),
                cause,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_url_is_split_once_into_scheme_authority_and_base_path() {
        let timeout = Duration::from_secs(1);
        let plain =
            Upstream::new("users", "http://users:3001/", timeout, 1, &[]).expect("valid URL");
        assert_eq!(plain.base, "http://users:3001");
        assert_eq!(plain.scheme.as_str(), "http");
        assert_eq!(plain.authority.as_str(), "users:3001");
        assert_eq!(plain.base_path, "");
        assert_eq!(plain.host, "users:3001");

        let nested =
            Upstream::new("users", "https://10.0.0.7/v1/", timeout, 1, &[]).expect("valid URL");
        assert_eq!(nested.base, "https://10.0.0.7/v1");
        assert_eq!(nested.base_path, "/v1");
        assert_eq!(nested.host, "10.0.0.7");
        let target = nested
            .target(&Uri::from_static("/api/users/7?x=1"))
            .expect("a valid target");
        assert_eq!(target, "https://10.0.0.7/v1/users/7?x=1");
        let default_port =
            Upstream::new("users", "http://users:80", timeout, 1, &[]).expect("valid URL");
        assert_eq!(default_port.host, "users");
        let ipv6 = Upstream::new("users", "http://[::1]:3001", timeout, 1, &[]).expect("valid URL");
        assert_eq!(ipv6.host, "[::1]:3001");

        assert!(Upstream::new("users", "users:3001", timeout, 1, &[]).is_err());
        assert!(Upstream::new("users", "http://bad host/", timeout, 1, &[]).is_err());
    }
}
