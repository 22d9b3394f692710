//! Stage 1, route: which requests the gateway proxies, and the route label each is counted under.

use crate::http::error::ApiError;

/// The path prefix the gateway serves the users API under.
pub const PREFIX: &str = "/api";
/// Everything under this path is proxied.
pub const ROOT: &str = "/api/users";

/// The route label of a proxied path: `/api/users` and `/api/users/…`; any other path is a 404.
/// A prefix check, not an actix scope, which would cost a routing layer on every request.
pub fn route(path: &str) -> Result<&'static str, ApiError> {
    match path.strip_prefix(ROOT) {
        Some("") => Ok(ROOT),
        Some(rest) if rest.starts_with('/') => Ok("/api/users/{tail}"),
        _ => Err(ApiError::not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_users_tree_is_routed() {
        assert_eq!(route("/api/users").ok(), Some(ROOT));
        assert_eq!(route("/api/users/").ok(), Some("/api/users/{tail}"));
        assert_eq!(route("/api/users/1/x").ok(), Some("/api/users/{tail}"));
        for other in ["/api/usersx", "/api/user", "/api", "/", "/users"] {
            assert!(route(other).is_err(), "{other}");
        }
    }
}
