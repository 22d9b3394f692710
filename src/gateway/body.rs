//! Stage 5, bodies: the client's body on its way up, within `--max-body` (a small one read
//! whole first); the upstream's on its way back, which ends the exchange and records its
//! metric (the access line is written by `observe::Observed` when the client has it all).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::web;
use futures_util::{Stream, StreamExt};

use crate::http::body::Declared;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::observe::Observer;
use crate::http::shed;

/// A request body up to this size is read whole before the upstream is contacted, as nginx's
/// `proxy_request_buffering` does (the users API takes at most 16 KiB). Its framing errors are
/// then answered (400): actix-http treats broken chunked framing as a lost client and closes
/// the connection unless the answer is ready in the same turn. A larger body is streamed.
pub const READ_AHEAD: u64 = 64 * 1024;

/// The client's body as it will be sent upstream.
pub enum Outbound {
    /// All of it, read before the upstream is contacted.
    Whole(web::Bytes),
    /// What was read ahead; the rest follows from the client as it arrives.
    Streamed(web::Bytes),
}

/// Reads the client's body ahead, up to `READ_AHEAD` bytes (nothing when the head announces
/// more), and at most `max`; within `--client-body-timeout` (the payload's deadline), else 408.
pub async fn read_ahead(
    payload: &mut web::Payload,
    declared: Declared,
    max: u64,
) -> Result<Outbound, ApiError> {
    if matches!(declared, Declared::Length(len) if len > READ_AHEAD) {
        return Ok(Outbound::Streamed(web::Bytes::new()));
    }
    let mut ahead = web::BytesMut::new();
    while (ahead.len() as u64) <= READ_AHEAD {
        match payload.next().await {
            None => return Ok(Outbound::Whole(ahead.freeze())),
            Some(Ok(chunk)) if (ahead.len() + chunk.len()) as u64 > max => {
                return Err(ApiError::payload_too_large(max));
            }
            Some(Ok(chunk)) => ahead.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(Inbound::of(&e)
                    .fault(max)
                    .expect("a failed body is a fault"));
            }
        }
    }
    Ok(Outbound::Streamed(ahead.freeze()))
}

/// How reading the client's body went, for telling a client fault from an upstream one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Fine,
    /// The upstream asked for more and the client has not sent it yet.
    Awaited,
    TooLarge,
    Broken,
    /// The client did not send it within `--client-body-timeout`.
    TimedOut,
}

impl Inbound {
    /// Why reading the client's body failed with `e`.
    fn of(e: &PayloadError) -> Self {
        match shed::is_body_timeout(e) {
            true => Self::TimedOut,
            false => Self::Broken,
        }
    }

    /// The client's own fault, if its body is why the exchange failed.
    pub fn fault(self, max: u64) -> Option<ApiError> {
        match self {
            Self::Fine | Self::Awaited => None,
            Self::TooLarge => Some(ApiError::payload_too_large(max)),
            // The client went away or broke its own body: not the upstream's fault.
            Self::Broken => Some(ApiError::field(
                "body",
                "the request body is malformed or ended early",
            )),
            Self::TimedOut => Some(shed::body_timed_out()),
        }
    }
}

/// `ahead`, then the rest of the request body, failing once more than `max` bytes came in
/// all; `inbound` says why it failed, or that the upstream is waiting for the client's bytes.
pub fn limited(
    ahead: web::Bytes,
    mut payload: web::Payload,
    max: u64,
    inbound: Rc<Cell<Inbound>>,
) -> impl Stream<Item = Result<web::Bytes, PayloadError>> + 'static {
    let mut seen: u64 = 0;
    let ahead = (!ahead.is_empty()).then_some(Ok(ahead));
    let waiting = inbound.clone();
    let payload = futures_util::stream::poll_fn(move |cx| {
        let next = Pin::new(&mut payload).poll_next(cx);
        if matches!(waiting.get(), Inbound::Fine | Inbound::Awaited) {
            waiting.set(match next.is_pending() {
                true => Inbound::Awaited,
                false => Inbound::Fine,
            });
        }
        next
    });
    futures_util::stream::iter(ahead)
        .chain(payload)
        .map(move |chunk| {
            let chunk = chunk.inspect_err(|e| inbound.set(Inbound::of(e)))?;
            seen += chunk.len() as u64;
            if seen > max {
                inbound.set(Inbound::TooLarge);
                return Err(PayloadError::Overflow);
            }
            Ok(chunk)
        })
}

/// Streamed uploads one worker lets hold upstream connections at once: half of the pool's 512
/// (`startup::upstream_client`), so however many clients trickle large bodies (each bounded
/// by `--client-body-timeout` and `--upstream-timeout`), other requests find a connection.
pub const MAX_STREAMED_UPLOADS: usize = 256;

/// The streamed uploads of one worker.
pub struct Uploads {
    open: Cell<usize>,
    shed: ::metrics::Counter,
}

impl Uploads {
    pub fn new(shed: ::metrics::Counter) -> Self {
        Self {
            open: Cell::new(0),
            shed,
        }
    }

    /// A place for one more streamed upload, or 503 `overloaded` when all are taken.
    pub fn start(&self) -> Result<Upload<'_>, ApiError> {
        if self.open.get() >= MAX_STREAMED_UPLOADS {
            self.shed.increment(1);
            return Err(shed::overloaded(
                "too many large uploads at once; retry later",
            ));
        }
        self.open.set(self.open.get() + 1);
        Ok(Upload(&self.open))
    }
}

/// One streamed upload, counted until dropped.
pub struct Upload<'a>(&'a Cell<usize>);

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// One exchange with the upstream; `end` records `upstream_request_duration_seconds`.
pub struct Exchange {
    observer: Rc<Observer>,
    service: &'static str,
    method: Method,
    started: Instant,
}

impl Exchange {
    pub fn new(
        observer: Rc<Observer>,
        service: &'static str,
        method: Method,
        started: Instant,
    ) -> Self {
        Self {
            observer,
            service,
            method,
            started,
        }
    }

    /// Records the exchange, unless it ended in a 408: the client's body came too slowly,
    /// which is never the upstream's doing (an upstream's own 408 is a 502 here).
    pub fn end(self, status: u16) {
        if status == ErrorCode::RequestTimeout.status().as_u16() {
            return;
        }
        self.observer.metrics.record_upstream(
            self.service,
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
