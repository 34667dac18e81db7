//! A stack's workflow as phases: `init` and `plan` (with the change
//! summary), then `apply`. Shell workflows run the stack's own commands
//! (exit code 2 from `plan` means changes); OpenTofu and Terraform run
//! `init`, `plan -detailed-exitcode -out`, `show -json` of the saved plan
//! for the summary, and `apply` of that saved plan.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use gantry_domain::Summary;
pub use gantry_domain::Workflow;

use crate::process::{Ended, Limits, Script, run};
use crate::redact::Redactor;
use crate::sandbox::Sandbox;
use crate::summary::{from_plan_json, from_plan_line};

/// The saved plan, kept in the workspace for `apply`.
pub const PLAN_FILE: &str = ".gantry.tfplan";
const PLAN_JSON: &str = ".gantry-plan.json";

/// Why a run stopped before its phase succeeded; the reason goes on the run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error("{phase} failed: {reason}")]
    Failed { phase: &'static str, reason: String },
    #[error("canceled during {0}")]
    Canceled(&'static str),
    #[error("timed out during {0}")]
    TimedOut(&'static str),
    #[error("{0} printed nothing for too long")]
    NoOutput(&'static str),
}

/// Everything a phase runs with.
pub struct Context<'a> {
    /// The project root inside the checkout.
    pub dir: &'a Path,
    /// The checkout: all a phase may write.
    pub workspace: &'a Path,
    pub sandbox: &'a Sandbox,
    /// The run's whole environment.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    pub redactor: Redactor,
    pub cancel: watch::Receiver<bool>,
    /// Receives the redacted log as it comes.
    pub log: &'a mut (dyn FnMut(&[u8]) + Send),
    /// Executables outside the system directories the phases run (a
    /// stack's own `tofu` by path), shown read-only in the sandbox.
    pub tools: Vec<PathBuf>,
}

/// What planning found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub changes: bool,
    pub summary: Summary,
}

impl Context<'_> {
    /// A tool given by path is shown in the sandbox; one by name is looked
    /// up on `PATH` there.
    fn use_tool(&mut self, binary: &str) {
        let path = Path::new(binary);
        if path.is_absolute() && !self.tools.iter().any(|tool| tool == path) {
            self.tools.push(path.to_owned());
        }
    }

    /// Runs one script; returns its exit code and its redacted output.
    async fn step(&mut self, phase: &'static str, script: &str) -> Result<(i32, String), Stopped> {
        let mut text = Vec::new();
        let log = &mut *self.log;
        let mut tee = |chunk: &[u8]| {
            text.extend_from_slice(chunk);
            log(chunk);
        };
        let ended = run(
            &Script {
                script,
                dir: self.dir,
                env: &self.env,
                sandbox: self.sandbox,
                workspace: self.workspace,
                tools: &self.tools,
            },
            self.limits,
            &mut self.redactor,
            &mut self.cancel,
            &mut tee,
        )
        .await
        .map_err(|error| Stopped::Failed {
            phase,
            reason: format!("cannot start it: {error}"),
        })?;
        let text = String::from_utf8_lossy(&text).into_owned();
        match ended {
            Ended::Exited(code) => Ok((code, text)),
            Ended::Canceled => Err(Stopped::Canceled(phase)),
            Ended::TimedOut => Err(Stopped::TimedOut(phase)),
            Ended::NoOutput => Err(Stopped::NoOutput(phase)),
        }
    }

    async fn must_succeed(&mut self, phase: &'static str, script: &str) -> Result<String, Stopped> {
        match self.step(phase, script).await? {
            (0, text) => Ok(text),
            (code, _) => Err(Stopped::Failed {
                phase,
                reason: format!("exited with {code}"),
            }),
        }
    }
}

/// `init` and `plan`.
pub async fn plan(workflow: &Workflow, ctx: &mut Context<'_>) -> Result<Planned, Stopped> {
    match workflow {
        Workflow::Shell { init, plan, .. } => {
            if !init.trim().is_empty() {
                ctx.must_succeed("init", init).await?;
            }
            let (code, text) = ctx.step("plan", plan).await?;
            let summary = from_plan_line(&text).unwrap_or_default();
            match code {
                0 => Ok(Planned {
                    changes: false,
                    summary,
                }),
                2 => Ok(Planned {
                    changes: true,
                    summary,
                }),
                code => Err(Stopped::Failed {
                    phase: "plan",
                    reason: format!("exited with {code} (0 means no changes, 2 changes)"),
                }),
            }
        }
        Workflow::Opentofu { .. } | Workflow::Terraform { .. } => {
            let binary = workflow.binary().unwrap_or("tofu").to_owned();
            ctx.use_tool(&binary);
            ctx.env.push(("GANTRY_TOOL".to_owned(), binary));
            ctx.must_succeed("init", "\"$GANTRY_TOOL\" init -input=false -no-color")
                .await?;
            let script = format!(
                "\"$GANTRY_TOOL\" plan -input=false -no-color -detailed-exitcode -out={PLAN_FILE}"
            );
            let changes = match ctx.step("plan", &script).await? {
                (0, _) => false,
                (2, _) => true,
                (code, _) => {
                    return Err(Stopped::Failed {
                        phase: "plan",
                        reason: format!("exited with {code}"),
                    });
                }
            };
            // The JSON plan holds values; it goes to a file, not the log.
            let show = format!("\"$GANTRY_TOOL\" show -json {PLAN_FILE} > {PLAN_JSON}");
            ctx.must_succeed("show", &show).await?;
            let json = std::fs::read(ctx.dir.join(PLAN_JSON)).map_err(|error| Stopped::Failed {
                phase: "show",
                reason: format!("no plan JSON: {error}"),
            })?;
            let _ = std::fs::remove_file(ctx.dir.join(PLAN_JSON));
            let summary = from_plan_json(&json).map_err(|reason| Stopped::Failed {
                phase: "show",
                reason,
            })?;
            Ok(Planned { changes, summary })
        }
    }
}

/// `apply` (of the saved plan, for OpenTofu and Terraform).
pub async fn apply(workflow: &Workflow, ctx: &mut Context<'_>) -> Result<(), Stopped> {
    match workflow {
        Workflow::Shell { apply, .. } => ctx.must_succeed("apply", apply).await.map(drop),
        Workflow::Opentofu { .. } | Workflow::Terraform { .. } => {
            if !ctx.env.iter().any(|(name, _)| name == "GANTRY_TOOL") {
                let binary = workflow.binary().unwrap_or("tofu").to_owned();
                ctx.use_tool(&binary);
                ctx.env.push(("GANTRY_TOOL".to_owned(), binary));
            }
            let script =
                format!("\"$GANTRY_TOOL\" apply -input=false -no-color -auto-approve {PLAN_FILE}");
            ctx.must_succeed("apply", &script).await.map(drop)
        }
    }
}
