//! Black-box tests of the users role: real Redis, real HTTP, one module per feature.

mod accounts;
mod auth;
mod auth_role;
mod concurrency;
mod faults;
mod gateway;
mod gateway_input;
mod health;
mod helpers;
mod jwks;
mod metrics;
mod monitoring;
mod overload;
mod process;
mod rate_limit;
mod reindex;
mod request_id;
mod routing;
mod secrets;
mod slow_clients;
mod upstream;
mod users_create;
mod users_delete;
mod users_list;
mod users_read;
mod users_update;
