//! Integration tests: the real server on 127.0.0.1:0, spoken to over real WebSocket connections.

pub(crate) mod accounts;
pub(crate) mod api;
mod api_spec;
mod bench;
mod binary;
#[macro_use]
mod broker;
mod browser;
mod chat;
pub(crate) mod chatctl;
mod cluster;
mod cluster_faults;
mod cluster_load;
mod cluster_storage;
mod conversations;
mod hardening;
mod helpers;
mod hostile;
mod lifecycle;
mod limits;
mod ops;
mod plain;
mod postgres_server;
mod proxied;
mod read_state;
mod redis_server;
mod rooms;
mod security;
mod sessions;
mod storage;
mod storage_faults;
#[macro_use]
mod store_contract;
mod store_accounts;
mod tls;
mod typing;
mod web;
mod webhooks;
