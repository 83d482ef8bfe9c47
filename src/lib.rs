//! chatd: a WebSocket chat server (rooms, private messages, typing, presence, history) and the library
//! behind its binaries. See `ARCHITECTURE.md` for the map and `docs/PROTOCOL.md` for the wire contract.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod connection;
pub mod hub;
pub mod mailbox;
pub mod metrics;
pub mod protocol;
pub mod rate;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod typing;

pub use config::{Config, ConfigError, Sources};
pub use server::{Server, ShutdownReport};
