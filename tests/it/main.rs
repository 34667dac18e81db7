//! Tests of the `gantry` binary as a process: what survives `kill -9`.

mod crash;
mod process;
mod worker_lost;
