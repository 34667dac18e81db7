//! Gantry's HTTP server: the `/api/v1` API with bearer API keys and roles,
//! health and metrics endpoints, and the start-up that brings a data
//! directory to life (migrations, master key, first admin key).
//!
//! Handlers persist and enqueue; they never do slow work themselves.

mod auth;
mod blobs;
mod bootstrap;
mod config;
mod error;
mod extract;
mod follow;
mod gitlab;
mod metrics;
mod object_blobs;
mod outbox;
mod process;
mod publish;
mod router;
mod routes;
mod source;
mod startup;
mod state;
mod upkeep;
pub mod vcs_agents;
mod views;
mod web;
mod webhook_secrets;
mod worker;

pub use bootstrap::{INITIAL_ADMIN_TOKEN_FILE, MASTER_KEY_ENV, MASTER_KEY_FILE, load_master_key};
pub use config::{
    DEFAULT_DELIVERY_RETENTION, DEFAULT_PREPARE_PATIENCE, DEFAULT_RUN_LOG_RETENTION,
    DEFAULT_WEBHOOK_BODY_LIMIT, DEFAULT_WEBHOOK_SECRET_GRACE, DEFAULT_WORKER_SHUTDOWN_GRACE,
    ServerConfig,
};
pub use startup::{RunningServer, open_database, start};

/// The largest request body the API accepts.
pub const API_BODY_LIMIT: usize = 1024 * 1024;
