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
/// As many request bodies as the in-flight cap were already on their way in.
pub const BODIES: &str = "bodies";
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

/// One role's admission of requests (shared by its workers): its places for requests in
/// flight, its places for request bodies on their way in (as many again: a body takes its
/// request's place only once whole), and the time a request's body may take.
#[derive(Clone)]
pub struct Admission {
    in_flight: Places,
    receiving: Places,
    pub body_timeout: Duration,
}

/// A count of places, at most `max` taken: one atomic add to take one, one sub to give it back.
#[derive(Clone)]
struct Places {
    taken: Arc<AtomicUsize>,
    max: usize,
}

impl Places {
    fn new(max: usize) -> Self {
        Self {
            taken: Arc::default(),
            max,
        }
    }

    fn take(&self) -> bool {
        let before = self.taken.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.give();
            return false;
        }
        true
    }

    fn give(&self) {
        self.taken.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(common: &CommonSettings) -> Self {
        let max = common.max_in_flight as usize;
        Self {
            in_flight: Places::new(max),
            receiving: Places::new(max),
            body_timeout: common.client_body_timeout,
        }
    }

    /// Takes a place among the requests in flight; `false` when all are taken.
    pub fn admit(&self) -> bool {
        self.in_flight.take()
    }

    /// Gives back a place `admit` took.
    pub fn release(&self) {
        self.in_flight.give();
    }
}

/// The error a request body stream fails with once its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within --client-body-timeout")]
pub struct BodyTimedOut;

/// The error a whole request body ends with when no place was free for its request.
#[derive(Debug, thiserror::Error)]
#[error("the body arrived, but the service is at its in-flight cap")]
pub struct NoPlace;

/// Whether a body read failed because the client was too slow (see [`Deadline`]).
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<BodyTimedOut>()))
}

/// A request body on its way in, as the middleware and the body's stream both see it: whether
/// its deadline passed, and whether its request took a place among those in flight. A request
/// with a body takes its place once the body is whole, not at its head: a client still sending
/// (a trickled body) holds no such place, so no number of them can shed the requests that are
/// ready. While it sends, it holds one of as many places for bodies on their way in (what
/// bounds the memory of bodies read ahead, and the work of slow clients).
pub struct BodyWatch {
    admission: Admission,
    expired: Cell<bool>,
    refused: Cell<bool>,
    receiving: Cell<bool>,
    held: Cell<bool>,
}

impl BodyWatch {
    /// The watch of a body that starts arriving now; `None` when as many bodies as the cap
    /// are already on their way in (the request is then shed at once).
    pub fn start(admission: &Admission) -> Option<Rc<Self>> {
        admission.receiving.take().then(|| {
            Rc::new(Self {
                admission: admission.clone(),
                expired: Cell::new(false),
                refused: Cell::new(false),
                receiving: Cell::new(true),
                held: Cell::new(false),
            })
        })
    }

    /// The body did not arrive within `--client-body-timeout`: the answer is a 408.
    pub fn expired(&self) -> bool {
        self.expired.get()
    }

    /// The body arrived but no place was free: the answer is a 503 `overloaded`.
    pub fn refused(&self) -> bool {
        self.refused.get()
    }

    /// The body has stopped arriving (whole, failed or abandoned).
    fn received(&self) {
        if self.receiving.replace(false) {
            self.admission.receiving.give();
        }
    }

    fn admit(&self) -> bool {
        self.received();
        let admitted = self.admission.admit();
        self.held.set(admitted);
        self.refused.set(!admitted);
        admitted
    }

    /// Gives back the places the request holds (each at most once).
    pub fn release(&self) {
        self.received();
        if self.held.replace(false) {
            self.admission.release();
        }
    }
}

impl Drop for BodyWatch {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request body that fails with [`BodyTimedOut`] when its deadline passes before its end,
/// and takes its request's place once whole (failing with [`NoPlace`] when none is free).
/// `watch` tells the middleware, which answers 408 or 503 whatever the handler made of it.
pub struct Deadline<S> {
    body: S,
    sleep: Pin<Box<Sleep>>,
    watch: Rc<BodyWatch>,
    done: bool,
}

impl<S> Deadline<S> {
    pub fn new(body: S, deadline: Instant, watch: Rc<BodyWatch>) -> Self {
        Self {
            body,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            watch,
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
                if this.watch.admit() {
                    Poll::Ready(None)
                } else {
                    let e = std::io::Error::other(NoPlace);
                    Poll::Ready(Some(Err(PayloadError::Io(e))))
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                this.watch.received();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    this.watch.expired.set(true);
                    this.watch.received();
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
        let admission = admission(2);
        assert!(admission.admit() && admission.admit());
        assert!(!admission.admit(), "a third is refused");
        admission.release();
        assert!(admission.admit());
        assert_eq!(admission.in_flight.taken.load(Ordering::Relaxed), 2);
    }

    fn admission(max: usize) -> Admission {
        Admission {
            in_flight: Places::new(max),
            receiving: Places::new(max),
            body_timeout: Duration::from_secs(1),
        }
    }

    #[actix_web::test]
    async fn a_stalled_body_fails_with_the_timeout_error_and_takes_no_place() {
        use futures_util::StreamExt;
        let admission = admission(1);
        let watch = BodyWatch::start(&admission).expect("a receiving place");
        let stalled = futures_util::stream::pending::<Result<Bytes, PayloadError>>();
        let deadline = Instant::now() + Duration::from_millis(20);
        let mut body = Deadline::new(stalled, deadline, watch.clone());
        let next = body.next().await;
        assert!(matches!(next, Some(Err(ref e)) if is_body_timeout(e)));
        assert!(watch.expired() && !watch.refused());
        assert!(body.next().await.is_none());
        assert_eq!(admission.in_flight.taken.load(Ordering::Relaxed), 0);
        assert_eq!(admission.receiving.taken.load(Ordering::Relaxed), 0);
    }

    #[actix_web::test]
    async fn a_whole_body_takes_its_place_at_its_end_or_fails_when_none_is_free() {
        use futures_util::StreamExt;
        let admission = admission(1);
        let chunks = || futures_util::stream::iter([Ok::<_, PayloadError>(Bytes::from("{}"))]);
        let far = Instant::now() + Duration::from_secs(60);
        let first = BodyWatch::start(&admission).expect("a receiving place");
        assert!(
            BodyWatch::start(&admission).is_none(),
            "one body on its way at a time"
        );
        let mut body = Deadline::new(chunks(), far, first.clone());
        assert!(matches!(body.next().await, Some(Ok(_))));
        let taken = |places: &Places| places.taken.load(Ordering::Relaxed);
        assert_eq!(taken(&admission.in_flight), 0, "not while sending");
        assert!(body.next().await.is_none());
        assert_eq!(taken(&admission.in_flight), 1);
        assert_eq!(taken(&admission.receiving), 0);
        let second = BodyWatch::start(&admission).expect("the receiving place is free again");
        // The cap is reached: the next whole body ends with an error instead.
        let mut other = Deadline::new(chunks(), far, second.clone());
        assert!(matches!(other.next().await, Some(Ok(_))));
        assert!(matches!(other.next().await, Some(Err(_))));
        assert!(second.refused() && !second.expired());
        // The place goes back once, whoever lets go last.
        first.release();
        drop(body);
        drop(first);
        assert_eq!(admission.in_flight.taken.load(Ordering::Relaxed), 0);
    }
}
