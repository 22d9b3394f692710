//! The proxy handler: one request through the stages, in order: route → request filter →
//! upstream request → response filter → body (and the access line, written by `observe`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use awc::error::SendRequestError;
use awc::{Client, ClientRequest, ClientResponse};

use super::auth::WorkerAuth;
use super::body::{self, Exchange, Inbound, Outbound, Uploads, UpstreamBody};
use super::route::Service;
use super::upstream::{Identity, Upstream};
use super::{request_filter, response_filter, route};
use crate::http::body::Declared;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::observe::{Observer, RouteLabel, Subject};
use crate::http::request_id::RequestId;
use crate::http::shed;

/// What a worker proxies with: its own pooled client (awc is `!Send`), the upstreams, and its
/// side of authentication when tokens are verified.
pub struct Proxy {
    pub client: Client,
    pub users: Upstream,
    pub auth_service: Upstream,
    pub auth: Option<WorkerAuth>,
    /// The worker's streamed uploads, capped so they cannot take every pooled connection.
    pub uploads: Uploads,
}

impl Proxy {
    fn upstream(&self, service: Service) -> &Upstream {
        match service {
            Service::Users => &self.users,
            Service::Auth => &self.auth_service,
        }
    }
}

/// The app's default service: every path its own routes (`/health/*`, `/metrics`) do not take.
pub async fn proxy(
    req: HttpRequest,
    mut payload: web::Payload,
    proxy: web::Data<Proxy>,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let route = route::route(req.path())?;
    req.extensions_mut().insert(RouteLabel(route.label));
    let upstream = proxy.upstream(route.service);

    // The auth service authenticates its own clients (HTTP Basic, client secrets) and hands
    // out the tokens: its routes never need one, and their `Authorization` is not a bearer's.
    let auth = match route.service {
        Service::Users => proxy.auth.as_ref(),
        Service::Auth => None,
    };
    let admitted = request_filter::filter(&req, upstream.max_body, auth).await?;
    let identity = admitted.identity.as_deref().map(|verified| {
        if let Some(subject) = &verified.subject {
            req.extensions_mut().insert(Subject(subject.clone()));
        }
        let auth = proxy.auth.as_ref().map(|a| a.auth());
        Identity {
            headers: &verified.headers,
            forward_token: auth.is_some_and(|a| a.forwards_token()),
            cookie: auth.and_then(|a| a.cookie()),
        }
    });
    // A small body is read whole before the upstream is contacted, and before the exchange's
    // clock starts: a slow client is neither a slow upstream nor one holding its connection.
    let body = match admitted.declared {
        None => None,
        Some(declared) => {
            let ahead = body::read_ahead(&mut payload, declared, upstream.max_body).await?;
            Some((declared, ahead))
        }
    };

    // A streamed upload holds an upstream connection while the client sends: it needs one of
    // the worker's places (held until the upstream's answer), or it is shed.
    let _upload = match &body {
        Some((_, Outbound::Streamed(_))) => Some(proxy.uploads.start()?),
        _ => None,
    };

    let started = Instant::now();
    let deadline = started + upstream.timeout;
    let exchange = Exchange::new(
        Observer::of(&req).clone(),
        upstream.service,
        req.method().clone(),
        started,
    );
    let target = upstream.target(req.uri())?;
    let sent = match body {
        None => {
            let sent = upstream.send(
                &req,
                target,
                &proxy.client,
                &id,
                identity.as_ref(),
                deadline,
            );
            sent.await.map_err(|e| upstream.failure(e))
        }
        Some((_, Outbound::Whole(body))) => upstream
            .request(&req, target, &proxy.client, &id, identity.as_ref())
            .send_body(body)
            .await
            .map_err(|e| upstream.failure(e)),
        Some((declared, Outbound::Streamed(ahead))) => {
            let request = upstream.request(&req, target, &proxy.client, &id, identity.as_ref());
            let upload = Upload {
                ahead,
                payload,
                declared,
            };
            stream_up(request, upload, upstream).await
        }
    };
    let response = match sent.and_then(|res| Ok((response_filter::filter(&res)?, res))) {
        Ok(response) => response,
        Err(error) => {
            // A client too slow to send its body is its own fault, not the upstream's.
            if error.code != ErrorCode::RequestTimeout {
                exchange.end(error.code.status().as_u16());
            }
            return Err(error);
        }
    };
    Ok(stream_back(&req, response, exchange, deadline))
}

/// A body too large to read ahead: what was read, and the rest still to come.
struct Upload {
    ahead: web::Bytes,
    payload: web::Payload,
    declared: Declared,
}

/// Sends the request with its body streamed as it comes, bounded by `--max-body`.
async fn stream_up(
    request: ClientRequest,
    Upload {
        ahead,
        payload,
        declared,
    }: Upload,
    upstream: &Upstream,
) -> Result<ClientResponse, ApiError> {
    let inbound = Rc::new(Cell::new(Inbound::Fine));
    let body = body::limited(ahead, payload, upstream.max_body, inbound.clone());
    let sent = match declared {
        Declared::Length(len) => request.send_body(SizedStream::new(len, body)).await,
        Declared::Chunked => request.send_stream(body).await,
    };
    sent.map_err(|e| {
        let inbound = inbound.get();
        match (inbound.fault(upstream.max_body), inbound, e) {
            (Some(fault), _, _) => fault,
            // Out of time while the upstream waited for the client's next bytes: the client
            // is the slow one (--upstream-timeout bounds a streamed upload too).
            (None, Inbound::Awaited, SendRequestError::Timeout) => shed::body_timed_out(),
            (None, _, e) => upstream.failure(e),
        }
    })
}

/// The client's response: the filtered head, and the upstream's body streamed back within
/// what is left of the deadline (the exchange's metric is recorded when it ends).
fn stream_back(
    req: &HttpRequest,
    (mut out, response): (actix_web::HttpResponseBuilder, ClientResponse),
    exchange: Exchange,
    deadline: Instant,
) -> HttpResponse {
    let status = response.status();
    if req.method() == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        exchange.end(status.as_u16());
        return out.finish();
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let remaining = deadline.saturating_duration_since(Instant::now());
    let body = UpstreamBody::new(response.timeout(remaining), status.as_u16(), exchange);
    match length {
        Some(len) => out.body(SizedStream::new(len, body)),
        None => out.streaming(body),
    }
}
