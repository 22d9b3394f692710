//! The proxy handler: one request through the stages, in order: route → request filter →
//! upstream request → response filter → body (and the access line, written by `observe`).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use awc::error::SendRequestError;
use awc::{Client, ClientResponse};

use super::auth::WorkerAuth;
use super::body::{self, Exchange, Inbound, Outbound, UpstreamBody};
use super::limit::Limits;
use super::route::Service;
use super::upstream::{Identity, Upstream};
use super::{request_filter, response_filter, route};
use crate::http::body::Declared;
use crate::http::client::{self, TrustedProxies};
use crate::http::error::ApiError;
use crate::http::observe::{Observer, RouteLabel, Subject};
use crate::http::request_id::RequestId;
use crate::http::shed;

/// What a worker proxies with: its own pooled client (awc is `!Send`), the upstreams, and its
/// side of authentication when tokens are verified.
pub struct Proxy {
    pub client: Client,
    /// The worker's streamed uploads, capped so they cannot take every pooled connection.
    pub uploads: body::Uploads,
    pub users: Upstream,
    pub auth_service: Upstream,
    pub auth: Option<WorkerAuth>,
    pub trusted: Arc<TrustedProxies>,
    pub limits: Option<Arc<Limits>>,
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
    let started = Instant::now();
    let client = client::resolve(&req, &proxy.trusted);

    let route = match route::route(req.path()) {
        Ok(route) => route,
        Err(miss) => return route::local(&req, miss),
    };
    req.extensions_mut().insert(RouteLabel(route.label));
    let upstream = proxy.upstream(route.service);
    let deadline = started + upstream.timeout;

    // The auth service authenticates its own clients (HTTP Basic, client secrets) and hands
    // out the tokens: its routes never need one, and their `Authorization` is not a bearer's.
    let auth = match route.service {
        Service::Users => proxy.auth.as_ref(),
        Service::Auth => None,
    };
    let limits = proxy.limits.as_deref();
    let admitted = request_filter::filter(&req, upstream.max_body, auth, (limits, client)).await?;
    let quota = admitted.quota;
    let with_quota = |error| Limits::annotated(limits, &quota, error);
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
    // A small body is read whole before the upstream is contacted (a slow client holds none
    // of its connections); a streamed upload needs one of the worker's places, or is shed.
    let ahead = match admitted.declared {
        Some(declared) => body::read_ahead(&mut payload, declared, upstream.max_body).await?,
        None => Outbound::Whole(web::Bytes::new()),
    };
    let _upload = match ahead {
        Outbound::Streamed(_) => Some(proxy.uploads.start()?),
        Outbound::Whole(_) => None,
    };
    // The exchange's clock starts now: the client's time to send its body is not the upstream's.
    let started = Instant::now();
    let deadline = deadline.max(started + upstream.timeout);

    let exchange = Exchange::new(
        Observer::of(&req).clone(),
        upstream.service,
        req.method().clone(),
        started,
    );
    let sent = match admitted.declared {
        None => {
            let target = upstream.target(req.uri()).map_err(with_quota)?;
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
        Some(declared) => {
            let to = (&proxy.client, upstream);
            let body = (ahead, payload, declared);
            send_with_body(&req, body, to, &id, identity.as_ref()).await
        }
    };
    let response = match sent.and_then(|res| Ok((response_filter::filter(&res)?, res))) {
        Ok((mut out, res)) => {
            // A success tells its limits too.
            if let Some(limits) = limits {
                limits.headers().add(&quota, |name, value| {
                    out.insert_header((name, value));
                });
            }
            (out, res)
        }
        Err(error) => {
            exchange.end(error.code.status().as_u16());
            return Err(with_quota(error));
        }
    };
    Ok(stream_back(&req, response, exchange, deadline))
}

/// Sends the request with its body: the whole of it when it was read ahead, else what was
/// read and the rest streamed as it comes.
async fn send_with_body(
    req: &HttpRequest,
    (ahead, payload, declared): (Outbound, web::Payload, Declared),
    (client, upstream): (&Client, &Upstream),
    id: &RequestId,
    identity: Option<&Identity<'_>>,
) -> Result<ClientResponse, ApiError> {
    let request = upstream.request(req, upstream.target(req.uri())?, client, id, identity);
    let ahead = match ahead {
        Outbound::Whole(body) => {
            return request
                .send_body(body)
                .await
                .map_err(|e| upstream.failure(e));
        }
        Outbound::Streamed(ahead) => ahead,
    };
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
