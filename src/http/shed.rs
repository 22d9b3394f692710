//! Load shedding and slow clients: the in-flight cap of a role, the request body deadline,
//! and the answers they give (503 `overloaded` with `Retry-After`, 408 `request_timeout`).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::error::{ApiError, ErrorCode};
use crate::config::CommonSettings;

/// The `reason` label of `http_requests_shed_total`: the role's in-flight cap.
pub const IN_FLIGHT: &str = "in_flight";
/// The users role's Redis pool had no connection free within `--redis-pool-wait`.
pub const STORE_POOL: &str = "store_pool";
/// The gateway's cap on streamed uploads holding upstream connections.
pub const UPLOADS: &str = "uploads";

/// What a shed client is told to wait before retrying.
const RETRY_AFTER: HeaderValue = HeaderValue::from_static("1");

/// A 503 `overloaded` with `Retry-After: 1`: answered at once, the request not queued.
pub fn overloaded(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Overloaded, message).with_header(header::RETRY_AFTER, RETRY_AFTER)
}

/// A 408 `request_timeout`: the client did not send its body within `--client-body-timeout`.
pub fn body_timed_out() -> ApiError {
    ApiError::new(
        ErrorCode::RequestTimeout,
        "the request body did not arrive in time",
    )
}

/// One role's admission of requests: its in-flight cap (one atomic per role, shared by its
/// workers) and the time a request's body may take.
#[derive(Clone)]
pub struct Admission {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    pub body_timeout: Duration,
}

impl Admission {
    pub fn new(common: &CommonSettings) -> Self {
        Self {
            in_flight: Arc::default(),
            max_in_flight: common.max_in_flight as usize,
            body_timeout: common.client_body_timeout,
        }
    }

    /// Takes a place among the requests in flight; `false` when all are taken. One atomic
    /// add here, one sub in `release` (or at once when refused).
    pub fn admit(&self) -> bool {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_in_flight {
            self.release();
            return false;
        }
        true
    }

    /// Gives back a place `admit` took.
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The error a request body stream fails with once its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within --client-body-timeout")]
pub struct BodyTimedOut;

/// Whether a body read failed because the client was too slow (see [`Deadline`]).
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<BodyTimedOut>()))
}

/// A request body that fails with [`BodyTimedOut`] when its deadline passes before its end;
/// `expired` tells the middleware, which answers 408 whatever the handler made of the error.
pub struct Deadline<S> {
    body: S,
    sleep: Pin<Box<Sleep>>,
    expired: Rc<Cell<bool>>,
    done: bool,
}

impl<S> Deadline<S> {
    pub fn new(body: S, deadline: Instant, expired: Rc<Cell<bool>>) -> Self {
        Self {
            body,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            expired,
            done: false,
        }
    }
}

impl<S> Stream for Deadline<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    this.expired.set(true);
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, BodyTimedOut);
                    Poll::Ready(Some(Err(PayloadError::Io(e))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_admits_up_to_max_and_frees_places_on_release() {
        let admission = Admission {
            in_flight: Arc::default(),
            max_in_flight: 2,
            body_timeout: Duration::from_secs(1),
        };
        assert!(admission.admit() && admission.admit());
        assert!(!admission.admit(), "a third is refused");
        admission.release();
        assert!(admission.admit());
        assert_eq!(admission.in_flight.load(Ordering::Relaxed), 2);
    }

    #[actix_web::test]
    async fn a_stalled_body_fails_with_the_timeout_error() {
        use futures_util::StreamExt;
        let expired = Rc::new(Cell::new(false));
        let stalled = futures_util::stream::pending::<Result<Bytes, PayloadError>>();
        let deadline = Instant::now() + Duration::from_millis(20);
        let mut body = Deadline::new(stalled, deadline, expired.clone());
        let next = body.next().await;
        assert!(matches!(next, Some(Err(ref e)) if is_body_timeout(e)));
        assert!(expired.get());
        assert!(body.next().await.is_none());
    }
}
