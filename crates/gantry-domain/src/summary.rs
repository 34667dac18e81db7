//! A plan's change summary: the one shape that the runner produces, the
//! store keeps, the API shows and the GitLab writes describe.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `N to add, N to change, N to destroy`, and the addresses of the
/// resources that change, in plan order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub add: u64,
    pub change: u64,
    pub destroy: u64,
    pub resources: Vec<String>,
}

impl Summary {
    pub fn has_changes(&self) -> bool {
        self.add + self.change + self.destroy > 0
    }
}

/// `N to add, N to change, N to destroy`, as everywhere.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to add, {} to change, {} to destroy",
            self.add, self.change, self.destroy
        )
    }
}
