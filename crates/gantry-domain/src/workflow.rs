//! How a stack's runs are executed (its `vendor`): one type for the API,
//! the store and the worker.

use serde::{Deserialize, Serialize};

/// `{"kind": "shell", "init", "plan", "apply"}` or `{"kind": "opentofu" |
/// "terraform", "binary"?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workflow {
    /// The stack's own commands for each phase.
    Shell {
        #[serde(default)]
        init: String,
        plan: String,
        apply: String,
    },
    Opentofu {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    Terraform {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`vendor`: a shell workflow needs `plan` and `apply` commands")]
pub struct MissingCommand;

impl Workflow {
    /// A shell workflow must say how to plan and how to apply.
    pub fn check(&self) -> Result<(), MissingCommand> {
        match self {
            Self::Shell { plan, apply, .. }
                if plan.trim().is_empty() || apply.trim().is_empty() =>
            {
                Err(MissingCommand)
            }
            _ => Ok(()),
        }
    }

    /// The OpenTofu or Terraform executable, `None` for a shell workflow.
    pub fn binary(&self) -> Option<&str> {
        match self {
            Self::Shell { .. } => None,
            Self::Opentofu { binary } => Some(binary.as_deref().unwrap_or("tofu")),
            Self::Terraform { binary } => Some(binary.as_deref().unwrap_or("terraform")),
        }
    }
}
