//! Tests of the `gantry` binary as processes: what survives `kill -9`,
//! external workers, the client commands and `gantry demo`.

mod api;
mod cli;
mod crash;
mod demo;
mod external_worker;
mod outbox_crash;
mod process;
mod rotation_crash;
mod scale;
mod vcs_agent;
mod worker_lost;
