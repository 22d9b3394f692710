//! Stage 1, route: which requests the gateway proxies, to which upstream, and the route label
//! each is counted under.

use actix_web::http::Method;
use actix_web::http::header::{ALLOW, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::http::error::ApiError;
use crate::openapi::{self, Document};

/// The path prefix the gateway serves the APIs under.
pub const PREFIX: &str = "/api";
/// Everything under this path goes to the users service.
pub const USERS_ROOT: &str = "/api/users";
/// Everything under this path goes to the auth service.
pub const AUTH_ROOT: &str = "/api/auth";

/// The upstream service a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Users,
    Auth,
}

/// Where a request goes and its route label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub service: Service,
    pub label: &'static str,
}

/// `/api/users…` to users, `/api/auth…` to auth; any other path is a 404. Prefix checks, not
/// actix scopes, which would cost a routing layer on every request.
pub fn route(path: &str) -> Result<Route, ApiError> {
    let tree = |root: &'static str, tail: &'static str, service| match path.strip_prefix(root) {
        Some("") => Some(Route {
            service,
            label: root,
        }),
        Some(rest) if rest.starts_with('/') => Some(Route {
            service,
            label: tail,
        }),
        _ => None,
    };
    tree(USERS_ROOT, "/api/users/{tail}", Service::Users)
        .or_else(|| tree(AUTH_ROOT, "/api/auth/{tail}", Service::Auth))
        .ok_or_else(ApiError::not_found)
}

/// The route label of `path`: a proxied route's, or the gateway's document's.
pub fn label(path: &str) -> Option<&'static str> {
    route(path)
        .ok()
        .map(|r| r.label)
        .or_else(|| (path == openapi::PATH).then_some(openapi::PATH))
}

/// What the gateway answers itself on a path it does not proxy: its document at
/// `/openapi.json`, else `miss` (404). Asked only once `route` missed, so a proxied request
/// never pays for it.
pub fn local(req: &HttpRequest, miss: ApiError) -> Result<HttpResponse, ApiError> {
    let document = req.app_data::<web::Data<Document>>();
    match document {
        Some(document) if req.path() == openapi::PATH => {
            if req.method() == Method::GET {
                Ok(document.respond())
            } else {
                Err(ApiError::method_not_allowed()
                    .with_header(ALLOW, HeaderValue::from_static("GET")))
            }
        }
        _ => Err(miss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_users_and_auth_trees_are_routed() {
        let label = |path| route(path).ok().map(|r| (r.service, r.label));
        assert_eq!(label("/api/users"), Some((Service::Users, USERS_ROOT)));
        assert_eq!(
            label("/api/users/"),
            Some((Service::Users, "/api/users/{tail}"))
        );
        assert_eq!(
            label("/api/users/1/x"),
            Some((Service::Users, "/api/users/{tail}"))
        );
        assert_eq!(label("/api/auth"), Some((Service::Auth, AUTH_ROOT)));
        assert_eq!(
            label("/api/auth/token"),
            Some((Service::Auth, "/api/auth/{tail}"))
        );
        for other in [
            "/api/usersx",
            "/api/user",
            "/api",
            "/",
            "/users",
            "/api/authx",
        ] {
            assert!(route(other).is_err(), "{other}");
        }
    }
}
