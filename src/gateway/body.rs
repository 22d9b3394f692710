//! Stage 5, bodies: the client's body on its way up, within `--max-body`; the upstream's on its
//! way back, which ends the exchange and records its metric (the access line is written by
//! `observe::Observed` when the client has it all).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::web;
use futures_util::{Stream, StreamExt};

use super::upstream::SERVICE;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::observe::Observer;

/// How reading the client's body went, for telling a client fault from an upstream one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Fine,
    TooLarge,
    Broken,
}

impl Inbound {
    /// The client's own fault, if its body is why the exchange failed.
    pub fn fault(self, max: u64) -> Option<ApiError> {
        match self {
            Self::Fine => None,
            Self::TooLarge => Some(ApiError::payload_too_large(max)),
            // The client went away or broke its own body: not the upstream's fault.
            Self::Broken => Some(ApiError::field("body", "the request body ended early")),
        }
    }
}

/// The request body, failing once more than `max` bytes came; `inbound` says why it failed.
pub fn limited(
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

/// One exchange with the upstream; `end` records `upstream_request_duration_seconds`.
pub struct Exchange {
    observer: Rc<Observer>,
    method: Method,
    started: Instant,
}

impl Exchange {
    pub fn new(observer: Rc<Observer>, method: Method, started: Instant) -> Self {
        Self {
            observer,
            method,
            started,
        }
    }

    pub fn end(self, status: u16) {
        self.observer.metrics.record_upstream(
            SERVICE,
            &self.method,
            status,
            self.started.elapsed(),
        );
    }
}

/// The upstream's response body on its way to the client. The exchange ends with it: with the
/// upstream's status when the body ends whole (or the client stops reading it), 504 when it
/// stalls past the deadline, 502 when the upstream breaks it off.
pub struct UpstreamBody<S> {
    body: S,
    status: u16,
    exchange: Option<Exchange>,
}

impl<S> UpstreamBody<S> {
    pub fn new(body: S, status: u16, exchange: Exchange) -> Self {
        Self {
            body,
            status,
            exchange: Some(exchange),
        }
    }

    fn end(&mut self, status: u16) {
        if let Some(exchange) = self.exchange.take() {
            exchange.end(status);
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
            Poll::Ready(None) => this.end(this.status),
            Poll::Ready(Some(Err(e))) => this.end(body_error_status(e)),
            _ => {}
        }
        next
    }
}

impl<S> Drop for UpstreamBody<S> {
    fn drop(&mut self) {
        self.end(self.status);
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
