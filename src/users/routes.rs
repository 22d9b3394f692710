//! The `/users` API of CONTRACT §2: handlers that parse, call the store, and answer.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use uuid::Uuid;

use super::cursor::Cursor;
use super::idempotency::{self, IdempotencyKey};
use super::store::{Creation, UserStore};
use crate::accounts::domain::{NewUser, User, UserPatch};
use crate::http::body;
use crate::http::error::{self, ApiError, ErrorBody};
use crate::openapi;

/// Largest accepted request body.
pub const MAX_BODY: usize = 16 * 1024;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The routes, and the role's document at `GET /openapi.json`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/users")
            .route(web::post().to(create_user))
            .route(web::get().to(list_users))
            .default_service(web::to(error::allow("GET, POST"))),
    )
    .service(
        web::resource("/users/{id}")
            .route(web::get().to(get_user))
            .route(web::put().to(update_user))
            .route(web::patch().to(update_user))
            .route(web::delete().to(delete_user))
            .default_service(web::to(error::allow("DELETE, GET, PATCH, PUT"))),
    )
    .service(openapi::resource(openapi::users()));
}

/// Creates a user; with an `Idempotency-Key`, a retry gets the first answer again.
#[utoipa::path(post, path = "/users", tag = "users",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
        description = "1–255 visible ASCII characters: a retry with the same key and body \
            gets the first answer (with `Idempotent-Replayed: true`), never a second user")),
    request_body(content = NewUser, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (or the first answer to this `Idempotency-Key`)",
            body = User, headers(
                ("Location" = String, description = "`{prefix}/users/{id}`, the prefix being \
                    `X-Forwarded-Prefix` (`/api` behind the gateway)"),
                ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "`validation_error` (a field, or the `Idempotency-Key`), \
            `invalid_json`", body = ErrorBody),
        (status = 409, description = "`duplicate_email`, `conflict`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: this key came with another body",
            body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `overloaded`", body = ErrorBody)))]
pub(crate) async fn create_user(
    req: HttpRequest,
    payload: web::Payload,
    store: web::Data<UserStore>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, MAX_BODY).await?;
    let key = IdempotencyKey::from_request(&req)?;
    let new = NewUser::parse(&body).map_err(ApiError::validation)?;
    let key = key.map(|key| (key.redis_key(), idempotency::fingerprint(&body)));
    let key = key.as_ref().map(|(k, f)| (k.as_str(), f.as_str()));
    let location = |id: &str| format!("{}/users/{id}", forwarded_prefix(&req));
    Ok(match store.create(&new, key).await? {
        Creation::Created(user) => HttpResponse::Created()
            .insert_header((header::LOCATION, location(&user.id)))
            .json(user),
        // The first answer under this key, as it was given (the user may have changed since).
        Creation::Replayed { status, id, body } => {
            let status = actix_web::http::StatusCode::from_u16(status).map_err(|e| {
                ApiError::with_cause(
                    crate::http::error::ErrorCode::InternalServerError,
                    "internal server error",
                    e.into(),
                )
            })?;
            HttpResponse::build(status)
                .insert_header((header::LOCATION, location(&id)))
                .insert_header(("Idempotent-Replayed", "true"))
                .content_type("application/json")
                .body(body)
        }
    })
}

/// A page of users, oldest first; `Link` names the next page while more remain.
#[utoipa::path(get, path = "/users", tag = "users",
    params(
        ("limit" = Option<u16>, Query, nullable = false, minimum = 1, maximum = 1000,
            description = "Users per page, 1–1000 (default 100)"),
        ("cursor" = Option<String>, Query, nullable = false, pattern = "^[A-Za-z0-9_-]{1,128}$",
            description = "Where the page starts: the opaque `cursor` of a \
                `Link: rel=\"next\"` (any other: 400)")),
    responses(
        (status = 200, description = "A page of users", body = Vec<User>, headers(
            ("X-Total-Count" = u64, description = "The number of users"),
            ("Link" = String, description = "RFC 8288 `<{prefix}/users?limit=N&cursor=C>; \
                rel=\"next\"` while more users remain"))),
        (status = 400, description = "`validation_error`: `limit`, `cursor` or the query",
            body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `overloaded`", body = ErrorBody)))]
pub(crate) async fn list_users(
    req: HttpRequest,
    store: web::Data<UserStore>,
) -> Result<HttpResponse, ApiError> {
    let (limit, cursor) = parse_list_query(req.query_string())?;
    let page = store.page(cursor, limit).await?;
    let mut response = HttpResponse::Ok();
    response.insert_header(("X-Total-Count", page.total));
    if let Some(next) = page.next {
        let link = format!(
            "<{}/users?limit={limit}&cursor={}>; rel=\"next\"",
            forwarded_prefix(&req),
            next.encode()
        );
        response.insert_header((header::LINK, link));
    }
    Ok(response.json(page.users))
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(Id),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "`validation_error`: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `overloaded`", body = ErrorBody)))]
pub(crate) async fn get_user(
    id: web::Path<String>,
    store: web::Data<UserStore>,
) -> Result<HttpResponse, ApiError> {
    let user = store.get(parse_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Changes a user's `name`, `email` or both (PUT merges, as the seeds' did).
#[utoipa::path(method(put, patch), path = "/users/{id}", tag = "users", params(Id),
    request_body(content = UserPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 400, description = "`validation_error` (the id, a field, or neither field \
            given), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 409, description = "`duplicate_email`, `conflict`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: over 16 KiB", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not JSON", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `overloaded`", body = ErrorBody)))]
pub(crate) async fn update_user(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    store: web::Data<UserStore>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id);
    let body = body::json_object(&req, payload, MAX_BODY).await?;
    let patch = UserPatch::parse(&body).map_err(ApiError::validation)?;
    let user = store.update(id?, &patch).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Deletes a user (its email is free again).
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(Id),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`validation_error`: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `overloaded`", body = ErrorBody)))]
pub(crate) async fn delete_user(
    id: web::Path<String>,
    store: web::Data<UserStore>,
) -> Result<HttpResponse, ApiError> {
    store.delete(parse_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The `{id}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by `parse_id`; this type only describes it
struct Id {
    /// A hyphenated UUID
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    id: String,
}

/// Ids are hyphenated UUIDs, as the seeds make them; stored lowercase.
fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    if raw.len() != 36 {
        return Err(ApiError::field("id", "must be a UUID"));
    }
    Uuid::try_parse(raw).map_err(|_| ApiError::field("id", "must be a UUID"))
}

/// `limit` (1–1000, default 100) and `cursor` (opaque) from a query string; other keys are ignored.
fn parse_list_query(query: &str) -> Result<(usize, Option<Cursor>), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::field("query", "is not a valid query string"))?;
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::field(
                            "limit",
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => {
                cursor = Some(Cursor::decode(&value).ok_or_else(|| {
                    ApiError::field("cursor", "is not a cursor this service gave out")
                })?);
            }
            _ => {}
        }
    }
    Ok((limit, cursor))
}

/// The path prefix the gateway serves us under (`X-Forwarded-Prefix: /api`), if it is a plain path.
fn forwarded_prefix(req: &HttpRequest) -> String {
    req.headers()
        .get("X-Forwarded-Prefix")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| {
            p.starts_with('/')
                && !p.contains("//")
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
        })
        .unwrap_or("")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn ids_must_be_hyphenated_uuids() {
        assert!(parse_id("5b0d7c1e-8f7a-4a8e-9a55-1f2b3c4d5e6f").is_ok());
        for bad in [
            "",
            "42",
            "5b0d7c1e8f7a4a8e9a551f2b3c4d5e6f",
            "{5b0d7c1e-8f7a-4a8e-9a55-1f2b3c4d5e6}",
            "zzzzzzzz-8f7a-4a8e-9a55-1f2b3c4d5e6f",
        ] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_query_bounds_limit_and_checks_the_cursor() {
        assert_eq!(
            parse_list_query("").map(|(l, c)| (l, c.is_none())).ok(),
            Some((100, true))
        );
        assert_eq!(
            parse_list_query("limit=1000&x=y").map(|(l, _)| l).ok(),
            Some(1000)
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "limit=",
            "cursor=nope",
            "cursor=",
        ] {
            assert!(parse_list_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_plain_path_prefixes_are_trusted() {
        let with = |p: &str| {
            forwarded_prefix(
                &TestRequest::default()
                    .insert_header(("X-Forwarded-Prefix", p))
                    .to_http_request(),
            )
        };
        assert_eq!(with("/api"), "/api");
        assert_eq!(with("/api/"), "/api");
        assert_eq!(with("https://evil.example"), "");
        assert_eq!(with("//evil.example"), "");
        assert_eq!(with("/a b"), "");
    }
}
