//! Executes one run: checkout of the exact commit, the workflow's phases,
//! and redaction of secrets from the log. No database, no HTTP server.

pub mod checkout;
pub mod redact;
