//! The middleware around every route: in-flight cap, body deadline, request id, error body with
//! that id, metrics, access log.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::Payload;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::http::StatusCode;
use actix_web::http::header::USER_AGENT;
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, web};
use slog::{Drain, Logger, debug, error, info, warn};

use super::body;
use super::error::{ApiError, ErrorCode};
use super::ops::Ops;
use super::peer::IpText;
use super::request_id::{self, RequestId};
use super::shed::{self, Admission, BodyWatch, Deadline};
use crate::telemetry::metrics::{Metrics, WorkerMetrics};

/// The route label a handler chose itself (set in request extensions); saves observe from
/// matching the path against every resource again.
#[derive(Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// The authenticated subject of a request (a verified token's `sub`), for its access line.
#[derive(Clone)]
pub struct Subject(pub Rc<str>);

/// Where one worker of a role writes its access lines and request metrics. Every role's `App`
/// carries one as app data (`Observer::new`), which the middleware below needs.
pub struct Observer {
    pub log: Logger,
    pub metrics: WorkerMetrics,
    /// The role's in-flight cap (shared by its workers) and body deadline.
    pub admission: Admission,
    /// The route label of a path, for a role whose handler labels its routes itself (the
    /// gateway's proxy): a request shed before it reaches the handler is still labelled.
    route_label: Option<fn(&str) -> Option<&'static str>>,
}

impl Observer {
    pub fn new(log: Logger, metrics: &Metrics, admission: &Admission) -> Rc<Self> {
        Rc::new(Self {
            log,
            metrics: metrics.worker(),
            admission: admission.clone(),
            route_label: None,
        })
    }

    /// An observer of a role that sets `RouteLabel` in its handler, `label` giving the same.
    pub fn labelling(
        log: Logger,
        metrics: &Metrics,
        admission: &Admission,
        label: fn(&str) -> Option<&'static str>,
    ) -> Rc<Self> {
        Rc::new(Self {
            log,
            metrics: metrics.worker(),
            admission: admission.clone(),
            route_label: Some(label),
        })
    }

    /// The observer of the app serving `req`.
    pub fn of(req: &HttpRequest) -> &Rc<Self> {
        req.app_data::<Rc<Self>>()
            .expect("every role's App carries its Observer")
    }
}

pub async fn observe(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody, Observed>>, Error> {
    let started = Instant::now();
    let mut serving = Serving::start(Observer::of(req.request()).clone());
    let id = RequestId::from_headers(req.headers());
    req.extensions_mut().insert(id.clone());

    // Shedding comes first, before routing and authentication; probes and scrapes are never
    // shed (nor counted against the cap). A request with a body takes its place once the body
    // is whole (`BodyWatch`): a client still sending holds none.
    let path = req.path();
    let ops = path == "/health" || path.starts_with("/health/") || path == "/metrics";
    let declared = body::declared(req.headers()).is_some();
    if !ops && !declared {
        match serving.0.admission.admit() {
            true => serving.1 = Holding::Place,
            false => {
                serving.0.metrics.request_shed();
                label_unrouted(&req, &serving.0);
                let err = shed::overloaded("the service is overloaded; retry later");
                return Ok(respond(req.error_response(err), id, started, serving));
            }
        }
    }
    // The body must arrive within --client-body-timeout, whoever reads it; when it does not,
    // the answer is a 408 whatever the handler made of the failed read.
    if declared {
        let Some(watch) = BodyWatch::start(&serving.0.admission) else {
            serving.0.metrics.body_shed();
            label_unrouted(&req, &serving.0);
            let err = shed::overloaded("too many request bodies on their way in; retry later");
            return Ok(respond(req.error_response(err), id, started, serving));
        };
        let deadline = tokio::time::Instant::from_std(started + serving.0.admission.body_timeout);
        let payload = Deadline::new(req.take_payload(), deadline, watch.clone());
        req.set_payload(Payload::Stream {
            payload: Box::pin(payload),
        });
        // Probes and scrapes with a body are not counted either: the place goes back at once.
        serving.1 = if ops {
            Holding::Nothing
        } else {
            Holding::Body(watch)
        };
    }

    let res = next.call(req).await?.map_into_boxed_body();
    let res = match &serving.1 {
        Holding::Body(watch) if watch.expired() => res.error_response(shed::body_timed_out()),
        Holding::Body(watch) if watch.refused() => {
            serving.0.metrics.request_shed();
            res.error_response(shed::overloaded("the service is overloaded; retry later"))
        }
        _ => res,
    };
    Ok(respond(res, id, started, serving))
}

/// Labels a request answered before routing with the route it would have taken.
fn label_unrouted(req: &ServiceRequest, observer: &Observer) {
    if let Some(label) = observer.route_label.and_then(|label| label(req.path())) {
        req.extensions_mut().insert(RouteLabel(label));
    }
}

/// The response with its error body, request id header and access record.
fn respond(
    res: ServiceResponse<BoxBody>,
    id: RequestId,
    started: Instant,
    serving: Serving,
) -> ServiceResponse<EitherBody<BoxBody, Observed>> {
    let mut res = with_error_body(res, &id, &serving.0.log);
    res.headers_mut()
        .insert(request_id::HEADER, id.header_value().clone());
    // Shutting down: the client learns from this answer that the connection ends after it
    // (what it sends next goes on a new connection, to another pod), rather than finding its
    // kept-alive connection closed under its next request (`server::run_until_stopped`).
    if res
        .request()
        .app_data::<web::Data<Ops>>()
        .is_some_and(|ops| ops.closes_connections())
    {
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    let access = Access {
        req: res.request().clone(),
        id,
        status: res.status().as_u16(),
        started,
        serving,
    };
    // A body already in hand (bytes, or none at all) is done: the request ends here. A
    // streamed one (a proxied body) ends with its last chunk, so its time and its log line
    // wait for that.
    res.map_body(|_, body| {
        if matches!(body.size(), BodySize::None) {
            access.finish(None);
            return EitherBody::left(body);
        }
        match body.try_into_bytes() {
            Ok(bytes) => {
                access.finish(None);
                EitherBody::left(BoxBody::new(bytes))
            }
            Err(body) => EitherBody::right(Observed {
                body,
                access: Some(access),
            }),
        }
    })
}

/// A log field written only when it has a value (`sub` on an authenticated request's line).
struct OnlyIfSome<'a>(Option<&'a str>);

impl slog::Value for OnlyIfSome<'_> {
    fn serialize(
        &self,
        _: &slog::Record<'_>,
        key: slog::Key,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        match self.0 {
            Some(value) => serializer.emit_str(key, value),
            None => Ok(()),
        }
    }
}

/// How a streamed response body ended, when not with its last chunk.
enum BodyEnd {
    Failed(String),
    Abandoned,
}

/// One request between its arrival and the end of its response: what the access log line
/// and the request metrics need. Holds the request (a reference count), so nothing is copied.
struct Access {
    req: HttpRequest,
    id: RequestId,
    status: u16,
    started: Instant,
    serving: Serving,
}

/// A request in `http_requests_in_flight` until dropped, and whether it holds a place under
/// the role's cap (never a probe or a scrape).
struct Serving(Rc<Observer>, Holding);

/// What place among those in flight a request holds until it ends.
enum Holding {
    Nothing,
    /// Taken at its head (a request without a body).
    Place,
    /// Taken, if at all, when its body was whole.
    Body(Rc<BodyWatch>),
}

impl Serving {
    fn start(observer: Rc<Observer>) -> Self {
        observer.metrics.request_started();
        Self(observer, Holding::Nothing)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.metrics.request_ended();
        match &self.1 {
            Holding::Nothing => {}
            Holding::Place => self.0.admission.release(),
            Holding::Body(watch) => watch.release(),
        }
    }
}

impl Access {
    /// Records the request's metrics and writes its access line (CONTRACT §7, §8).
    fn finish(self, end: Option<BodyEnd>) {
        let Self {
            req,
            id,
            status,
            started,
            serving: Serving(observer, _),
        } = &self;
        let (log, status) = (&observer.log, *status);
        let pattern;
        let route = match req.extensions().get::<RouteLabel>() {
            Some(label) => label.0,
            None => {
                // Not routed (shed first): the pattern the path would have matched.
                pattern = req
                    .match_pattern()
                    .or_else(|| req.resource_map().match_pattern(req.path()));
                pattern.as_deref().unwrap_or("unmatched")
            }
        };
        let elapsed = started.elapsed();
        observer
            .metrics
            .record_http(req.method(), route, status, elapsed);

        let path = req.path();
        let level = match (status, &end) {
            _ if path.starts_with("/health") || path == "/metrics" => slog::Level::Debug,
            (500.., _) | (_, Some(BodyEnd::Failed(_))) => slog::Level::Warning,
            _ => slog::Level::Info,
        };
        if !log.is_enabled(level) {
            return;
        }
        let remote_addr = super::client::address(req).map(IpText::new);
        let user_agent = req
            .headers()
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let extensions = req.extensions();
        let sub = OnlyIfSome(extensions.get::<Subject>().map(|s| &*s.0));
        // slog takes the level as a constant: one call per level, same fields; `error` only
        // on a line whose body did not end well.
        macro_rules! access {
            ($log_macro:ident $($extra:tt)*) => {
                $log_macro!(log, "request";
                    "request_id" => id.as_str(),
                    "method" => req.method().as_str(),
                    "path" => path,
                    "route" => route,
                    "status" => status,
                    "duration_ms" => duration_ms,
                    "remote_addr" => remote_addr.as_ref().map_or("", IpText::as_str),
                    "user_agent" => user_agent,
                    "sub" => &sub,
                    $($extra)*
                )
            };
        }
        match (level, end) {
            (_, Some(end)) => {
                let error = match &end {
                    BodyEnd::Failed(cause) => cause.as_str(),
                    BodyEnd::Abandoned => "the connection closed before the response body ended",
                };
                match level {
                    slog::Level::Warning => access!(warn "error" => error,),
                    _ => access!(info "error" => error,),
                }
            }
            (slog::Level::Debug, None) => access!(debug),
            (slog::Level::Warning, None) => access!(warn),
            (_, None) => access!(info),
        }
    }
}

/// A streamed response body that finishes its request's `Access` when it ends: with its last
/// chunk, with an error (the upstream failed mid-body), or dropped early (the client left).
pub struct Observed {
    body: BoxBody,
    access: Option<Access>,
}

impl MessageBody for Observed {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        let this = self.get_mut();
        let next = Pin::new(&mut this.body).poll_next(cx);
        match &next {
            Poll::Ready(None) => this.finish(None),
            Poll::Ready(Some(Err(e))) => {
                let cause = format!("the response body failed: {e}");
                this.finish(Some(BodyEnd::Failed(cause)));
            }
            _ => {}
        }
        next
    }
}

impl Observed {
    fn finish(&mut self, end: Option<BodyEnd>) {
        if let Some(access) = self.access.take() {
            access.finish(end);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(Some(BodyEnd::Abandoned));
    }
}

/// The response with our error body (§2) in place of the one actix or a handler made, its
/// cause logged when it is a server fault.
fn with_error_body(
    res: ServiceResponse<BoxBody>,
    id: &RequestId,
    log: &Logger,
) -> ServiceResponse<BoxBody> {
    let Some(err) = res.response().error() else {
        return res;
    };
    let api = err.as_error::<ApiError>();
    let (code, mut rendered) = match api {
        Some(api) => {
            if let Some(cause) = &api.cause {
                error!(log, "request failed"; "request_id" => id.as_str(), "error" => api.code.as_str(), "cause" => format!("{cause:#}"));
            }
            (api.code, api.render(Some(id.as_str())))
        }
        None => {
            // An error raised outside our handlers (actix itself): same body shape.
            let fallback = fallback_error(err.as_response_error().status_code(), &err.to_string());
            if fallback.code == ErrorCode::InternalServerError {
                error!(log, "request failed"; "request_id" => id.as_str(), "cause" => err.to_string());
            }
            (fallback.code, fallback.render(Some(id.as_str())))
        }
    };
    if code.closes_connection(body::declared(res.request().headers()).is_some()) {
        rendered
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    res.into_response(rendered)
}

fn fallback_error(status: StatusCode, message: &str) -> ApiError {
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        400..=499 => ErrorCode::ValidationError,
        _ => ErrorCode::InternalServerError,
    };
    let message = if code == ErrorCode::InternalServerError {
        "internal server error"
    } else {
        message
    };
    ApiError::new(code, message)
}
