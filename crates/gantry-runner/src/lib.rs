//! Executes one run: checkout of the exact commit (`checkout`), each
//! phase as a process group with its limits (`process`), and redaction of
//! secrets from the log (`redact`), the workflows' phases (`workflow`), and
//! the worker's side of a run, the same for embedded and external workers
//! (`agent`). No database, no HTTP server: the server is reached through
//! the `agent::Control` trait.

pub mod agent;
pub mod checkout;
pub mod process;
pub mod redact;
pub mod sandbox;
pub mod summary;
pub mod workflow;
