//! Executes one run: checkout of the exact commit (`checkout`), each
//! phase as a process group with its limits (`process`), and redaction of
//! secrets from the log (`redact`). No database, no HTTP server. The
//! phases of the workflows and the workers that drive this crate come next.

pub mod checkout;
pub mod process;
pub mod redact;
pub mod summary;
pub mod workflow;
