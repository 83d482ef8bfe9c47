//! chatd: a WebSocket chat server (rooms, private messages, typing, presence, history) and the library
//! behind its binaries. See `ARCHITECTURE.md` for the map and `docs/PROTOCOL.md` for the wire contract.
//!
//! The ground floor (`config`, `protocol`, `metrics`, `auth`, `telemetry`) depends on nothing else
//! here. Above it: `connection` (sockets), `hub` (the broker seam), `session` (chat semantics over
//! the broker, as a connection handler), `server` (where they meet), `store` (durable history),
//! `web` (the browser client it serves) and `client` (chatctl).

#![forbid(unsafe_code)]

pub mod accounts;
pub mod addr;
pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub(crate) mod connection;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod protocol;
pub mod server;
pub(crate) mod session;
pub mod store;
pub(crate) mod sync;
pub mod telemetry;
pub mod web;
pub mod webhooks;

pub use config::{Config, ConfigError, Sources};
pub use server::{Server, ShutdownReport};
