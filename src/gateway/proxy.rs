//! The proxy handler: one request through the stages, in order: route → request filter →
//! upstream request → response filter → body (and the access line, written by `observe`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use awc::Client;

use super::body::{self, Exchange, Inbound, UpstreamBody};
use super::upstream::{self, Upstream};
use super::{request_filter, response_filter, route};
use crate::http::body::Declared;
use crate::http::error::ApiError;
use crate::http::observe::{Observer, RouteLabel};
use crate::http::request_id::RequestId;

/// What a worker proxies with: its own pooled client (awc is `!Send`) and the upstream.
pub struct Proxy {
    pub client: Client,
    pub upstream: Upstream,
}

/// The app's default service: every path its own routes (`/health/*`, `/metrics`) do not take.
pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    proxy: web::Data<Proxy>,
    id: RequestId,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let Proxy { client, upstream } = &**proxy;

    let label = route::route(req.path())?;
    req.extensions_mut().insert(RouteLabel(label));

    let declared = request_filter::filter(&req, upstream.max_body)?;

    let target = upstream.target(req.uri())?;
    let exchange = Exchange::new(Observer::of(&req).clone(), req.method().clone(), started);
    let sent = match declared {
        None => {
            let deadline = started + upstream.timeout;
            let sent = upstream.send(&req, target, client, &id, deadline).await;
            sent.map_err(upstream::failure)
        }
        Some(declared) => {
            let inbound = Rc::new(Cell::new(Inbound::Fine));
            let body = body::limited(payload, upstream.max_body, inbound.clone());
            let request = upstream.request(&req, target, client, &id);
            let sent = match declared {
                Declared::Length(len) => request.send_body(SizedStream::new(len, body)).await,
                Declared::Chunked => request.send_stream(body).await,
            };
            sent.map_err(|e| {
                let fault = inbound.get().fault(upstream.max_body);
                fault.unwrap_or_else(|| upstream::failure(e))
            })
        }
    };
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            exchange.end(error.code.status().as_u16());
            return Err(error);
        }
    };

    let status = response.status();
    let mut out = match response_filter::filter(status, response.headers()) {
        Ok(out) => out,
        Err(error) => {
            exchange.end(error.code.status().as_u16());
            return Err(error);
        }
    };

    if req.method() == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        exchange.end(status.as_u16());
        return Ok(out.finish());
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The upstream timeout covers the body too, not only the head; so does its metric.
    let remaining = (started + upstream.timeout).saturating_duration_since(Instant::now());
    let body = UpstreamBody::new(response.timeout(remaining), status.as_u16(), exchange);
    Ok(match length {
        Some(len) => out.body(SizedStream::new(len, body)),
        None => out.streaming(body),
    })
}
