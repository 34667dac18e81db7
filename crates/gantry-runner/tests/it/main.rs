//! The runner against the simulated GitLab's real repositories.

mod checkout;
mod process;
mod workflow;
