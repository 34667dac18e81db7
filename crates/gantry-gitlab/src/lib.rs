//! What Gantry knows of GitLab: the API responses it reads, GitLab's error
//! bodies, and the rules of the token check. GitLab-specific code lives
//! here and nowhere else.

mod body;
pub mod client;
pub mod error_body;
pub mod hooks;
pub mod metrics;
pub mod projects;
pub mod reporting;
pub mod token;
pub mod tunnel;
pub mod types;
pub mod webhook;

pub use client::{ClientConfig, GitLab, GitLabError, Http, Reply};
pub use metrics::ClientMetrics;
