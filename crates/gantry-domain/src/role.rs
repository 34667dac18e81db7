use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a principal may do on a space and all its descendants.
///
/// `read` < `write` < `admin` form a ladder; `worker` stands apart: it lets
/// an external worker claim and report runs and grants nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
    Worker,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::Write, Role::Admin, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    /// Whether holding `self` is enough for an action that needs `needed`.
    pub fn grants(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Worker, Role::Worker) => true,
            (Role::Worker, _) | (_, Role::Worker) => false,
            (held, needed) => held.rank() >= needed.rank(),
        }
    }

    fn rank(self) -> u8 {
        match self {
            Role::Read => 1,
            Role::Write => 2,
            Role::Admin => 3,
            Role::Worker => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use one of read, write, admin, worker")]
pub struct RoleParseError(pub String);

impl FromStr for Role {
    type Err = RoleParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| RoleParseError(s.to_owned()))
    }
}

/// One role held on one space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub space: String,
    pub role: Role,
}

/// Whether `grants` allow an action needing `needed` on a space whose
/// ancestry (the space itself first, then its parent, up to `root`) is
/// `ancestry`. Roles are inherited by descendant spaces.
pub fn allows<'a>(
    grants: &[Grant],
    needed: Role,
    ancestry: impl IntoIterator<Item = &'a str>,
) -> bool {
    ancestry.into_iter().any(|space| {
        grants
            .iter()
            .any(|grant| grant.space == space && grant.role.grants(needed))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_ladder() {
        assert!(Role::Admin.grants(Role::Write));
        assert!(Role::Admin.grants(Role::Read));
        assert!(Role::Write.grants(Role::Read));
        assert!(!Role::Read.grants(Role::Write));
        assert!(!Role::Write.grants(Role::Admin));
        assert!(!Role::Admin.grants(Role::Worker));
        assert!(!Role::Worker.grants(Role::Read));
        assert!(Role::Worker.grants(Role::Worker));
    }

    #[test]
    fn roles_are_inherited_by_descendants_only() {
        let grants = [Grant {
            space: "team".into(),
            role: Role::Write,
        }];
        assert!(allows(&grants, Role::Write, ["team-dev", "team", "root"]));
        assert!(allows(&grants, Role::Read, ["team"]));
        assert!(!allows(&grants, Role::Read, ["root"]));
        assert!(!allows(&grants, Role::Admin, ["team-dev", "team", "root"]));
    }

    #[test]
    fn roles_parse_from_their_names() {
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("owner".parse::<Role>().is_err());
    }
}
