//! Stage 2, request filter: what a request must pass before the upstream is contacted. Checks
//! that refuse a request at the edge (authentication, rate limits) belong here.

use std::net::IpAddr;
use std::rc::Rc;

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderMap};

use super::auth::WorkerAuth;
use super::auth::token::Verified;
use super::limit::Limits;
use super::limit::answer::Quota;
use crate::http::body::{self, Declared};
use crate::http::error::{ApiError, ErrorCode};

/// The only expectation a server knows (RFC 9110 §10.1.1).
const CONTINUE: &str = "100-continue";

/// A request the gateway will forward.
pub struct Admitted {
    /// The body its head announces.
    pub declared: Option<Declared>,
    /// Its verified token, if it carried one.
    pub identity: Option<Rc<Verified>>,
    /// What the rate limits decided for it (its answer's headers).
    pub quota: Quota,
}

/// Refuses a request the gateway will not forward: over the "ip" limit (checked first, so a
/// flood of bad tokens costs no verification), an expectation it cannot meet, a declared
/// body over `max_body`, a credential that fails (or is missing where the mode needs one;
/// charged to its address' "client" quota), over the "client" limit. A refusal after a limit
/// was checked carries its headers.
pub async fn filter(
    req: &HttpRequest,
    max_body: u64,
    auth: Option<&WorkerAuth>,
    (limits, client): (Option<&Limits>, Option<IpAddr>),
) -> Result<Admitted, ApiError> {
    let mut quota = Quota::default();
    if let Some(limits) = limits {
        limits.check_ip(client, &mut quota)?;
    }
    let declared = checked_head(req, max_body).map_err(|e| Limits::annotated(limits, &quota, e))?;
    let identity = match auth {
        Some(auth) => match auth.authenticate(req).await {
            Ok(identity) => identity,
            Err(refused) => {
                // A failed credential counts against its address' "client" quota too, shared
                // by every pod: bad tokens are limited across the fleet, not per pod only.
                if let Some(limits) = limits {
                    limits.check_client(None, client, &mut quota).await?;
                }
                return Err(Limits::annotated(limits, &quota, refused));
            }
        },
        None => None,
    };
    if let Some(limits) = limits {
        let subject = identity.as_ref().and_then(|v| v.subject.as_deref());
        limits.check_client(subject, client, &mut quota).await?;
    }
    Ok(Admitted {
        declared,
        identity,
        quota,
    })
}

/// What the head alone decides: the expectation and the declared size.
fn checked_head(req: &HttpRequest, max_body: u64) -> Result<Option<Declared>, ApiError> {
    expectation(req.headers())?;
    let declared = body::declared(req.headers());
    if let Some(Declared::Length(len)) = declared
        && len > max_body
    {
        return Err(ApiError::payload_too_large(max_body));
    }
    Ok(declared)
}

/// `Expect: 100-continue` is met by this hop (actix-http answers `100 Continue` when the body
/// is first read; the header is not sent upstream). Any other expectation is a 417.
fn expectation(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(header::EXPECT) {
        let met = value
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case(CONTINUE));
        if !met {
            return Err(ApiError::new(
                ErrorCode::ExpectationFailed,
                "the only expectation this server meets is 100-continue",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn filtered(headers: &[(&str, &str)]) -> Result<Option<Declared>, ErrorCode> {
        let mut req = TestRequest::default();
        for &(name, value) in headers {
            req = req.insert_header((name, value));
        }
        checked_head(&req.to_http_request(), 10).map_err(|e| e.code)
    }

    #[test]
    fn only_100_continue_is_met_and_the_declared_length_is_bounded() {
        assert_eq!(filtered(&[]), Ok(None));
        assert_eq!(filtered(&[("expect", "100-Continue")]), Ok(None));
        assert_eq!(
            filtered(&[("expect", "100-continue"), ("content-length", "10")]),
            Ok(Some(Declared::Length(10)))
        );
        assert_eq!(
            filtered(&[("expect", "200-ok")]),
            Err(ErrorCode::ExpectationFailed)
        );
        assert_eq!(
            filtered(&[("content-length", "11")]),
            Err(ErrorCode::PayloadTooLarge)
        );
        assert_eq!(
            filtered(&[("transfer-encoding", "chunked")]),
            Ok(Some(Declared::Chunked))
        );
    }
}
