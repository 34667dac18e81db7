//! Tests of the `gantry` binary as processes: what survives `kill -9`, and
//! external workers.

mod api;
mod cli;
mod crash;
mod external_worker;
mod outbox_crash;
mod process;
mod worker_lost;
