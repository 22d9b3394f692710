//! `platform`: one binary, several roles. See ARCHITECTURE.md for the map.

pub mod accounts;
pub mod all;
pub mod allocator;
pub mod auth;
pub mod config;
pub mod gateway;
pub mod http;
pub mod openapi;
pub mod redis;
pub mod server;
pub mod telemetry;
pub mod timestamp;
pub mod users;
