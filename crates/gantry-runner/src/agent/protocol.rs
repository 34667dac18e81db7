//! What a worker and the server say to each other: the assignment of a
//! claimed run, the steps a worker reports, and the [`Control`] trait the
//! server (embedded pool) and the worker API (external workers) implement.

use std::future::Future;
use std::path::Path;

use gantry_domain::{Summary, Workflow};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// Which part of a run a claim is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Check out, init and plan (and apply at once when the server says so).
    Plan,
    /// Restore the planned workspace and apply it.
    Apply,
}

/// Everything a worker needs to execute one phase of a run. It carries
/// the run's secrets, so it has no `Debug`.
#[derive(Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: String,
    pub stack_id: String,
    /// `tracked` or `proposed`.
    pub kind: String,
    pub commit_sha: String,
    /// `phase` on the wire, as the worker API has always said.
    #[serde(rename = "phase")]
    pub stage: Stage,
    pub workflow: Workflow,
    /// The directory inside the checkout the phases run in (`""` or `dir/`).
    pub project_root: String,
    /// The stack's variables and the `GANTRY_*` metadata.
    pub env: Vec<(String, String)>,
    /// The stack's secret variables, redacted from the log.
    pub secret_env: Vec<SecretVar>,
    /// What is left of the stack's run timeout: it counts across phases.
    pub run_timeout_seconds: u64,
    pub no_output_timeout_seconds: u64,
    /// How long the lease lasts without a heartbeat.
    pub lease_seconds: u64,
}

#[derive(Serialize, Deserialize)]
pub struct SecretVar {
    pub name: String,
    #[serde(serialize_with = "expose")]
    pub value: SecretString,
}

fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// What a worker reports about its run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Checked out and ready: preparing → planning.
    Plan,
    /// The plan is done.
    Planned { changes: bool, summary: Summary },
    /// The apply succeeded.
    Applied,
    /// A phase failed; `reason` says why.
    Fail { reason: String },
    /// The worker is shutting down before the plan was done: the run goes
    /// back to the queue for another worker.
    HandBack { reason: String },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

/// What the worker is told after a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `false` when the run was canceled or its lease lost: stop now.
    pub keep_going: bool,
}

/// The worker's line to the server. `step` answers the run's new state, or
/// `None` when the server refused the step (the run was canceled, or the
/// lease went to someone else).
pub trait Control: Send + Sync + 'static {
    /// The next run to execute, waiting a few seconds at most for one.
    fn claim(&self) -> impl Future<Output = Result<Option<Assignment>, ControlError>> + Send;
    fn heartbeat(&self, run: &str) -> impl Future<Output = Result<Heartbeat, ControlError>> + Send;
    /// Appends already redacted output to the run's log.
    fn log(&self, run: &str, text: String)
    -> impl Future<Output = Result<(), ControlError>> + Send;
    fn step(
        &self,
        run: &str,
        step: &Step,
    ) -> impl Future<Output = Result<Option<String>, ControlError>> + Send;
    /// Stores the planned workspace's archive (a file).
    fn put_workspace(
        &self,
        run: &str,
        archive: &Path,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Fetches the source of the run's commit (an archive of a checkout;
    /// the server fetched it from GitLab) into a file.
    fn get_source(
        &self,
        run: &str,
        archive: &Path,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Fetches the planned workspace's archive into a file.
    fn get_workspace(
        &self,
        run: &str,
        archive: &Path,
    ) -> impl Future<Output = Result<(), ControlError>> + Send;
    /// Ends the lease: the worker is done with the run for now.
    fn release(&self, run: &str) -> impl Future<Output = Result<(), ControlError>> + Send;
}
