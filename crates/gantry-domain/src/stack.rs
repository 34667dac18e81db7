//! What a stack is made of, parsed once: its project root, tracked
//! branch, extra globs and environment names, and which changed files
//! affect it.

use globset::{Glob, GlobSet, GlobSetBuilder};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StackFieldError {
    #[error(
        "`project_root` {0:?} must be a relative directory inside the repository, such as `network/`"
    )]
    ProjectRoot(String),
    #[error("`branch` {0:?} is not a valid git branch name")]
    Branch(String),
    #[error("`additional_project_globs`: {0}")]
    Glob(String),
    #[error("environment name {0:?} must be letters, digits and `_`, not starting with a digit")]
    EnvName(String),
}

/// `network`, `network/` and `./network` all become `network/`; empty
/// (or `.`, `./`) is the whole repository.
pub fn project_root(raw: &str) -> Result<String, StackFieldError> {
    let bad = || StackFieldError::ProjectRoot(raw.to_owned());
    let trimmed = raw.trim();
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(bad()),
            part if part.chars().any(|c| c.is_control() || c == '\\') => return Err(bad()),
            part => parts.push(part),
        }
    }
    if trimmed.starts_with('/') {
        return Err(bad());
    }
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    })
}

/// A branch name as `git check-ref-format --branch` accepts it.
pub fn branch(raw: &str) -> Result<String, StackFieldError> {
    let name = raw.trim();
    let bad = || StackFieldError::Branch(raw.to_owned());
    let forbidden = |c: char| c.is_control() || " ~^:?*[\\".contains(c);
    if name.is_empty()
        || name.len() > 255
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.ends_with(".lock")
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || name == "@"
        || name.chars().any(forbidden)
        || name.split('/').any(|part| part.starts_with('.'))
    {
        return Err(bad());
    }
    Ok(name.to_owned())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_name(raw: &str) -> Result<String, StackFieldError> {
    let mut chars = raw.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(StackFieldError::EnvName(raw.to_owned()))
    }
}

/// Which changed files affect a stack: those under its project root, and
/// those matching one of its extra globs (`**` crosses directories).
#[derive(Clone, Debug)]
pub struct Affects {
    root: String,
    globs: GlobSet,
}

impl Affects {
    pub fn new(project_root: &str, globs: &[String]) -> Result<Self, StackFieldError> {
        let mut builder = GlobSetBuilder::new();
        for glob in globs {
            let compiled = globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| StackFieldError::Glob(format!("{glob:?}: {}", e.kind())))?;
            builder.add(compiled);
        }
        let globs = builder
            .build()
            .map_err(|e| StackFieldError::Glob(e.to_string()))?;
        Ok(Self {
            root: project_root.to_owned(),
            globs,
        })
    }

    /// Only the project root, no globs.
    pub fn root_only(project_root: &str) -> Self {
        Self {
            root: project_root.to_owned(),
            globs: GlobSet::empty(),
        }
    }

    /// Whether a changed file (a repository path such as `network/main.tf`)
    /// affects the stack.
    pub fn file(&self, path: &str) -> bool {
        path.starts_with(&self.root) || self.globs.is_match(path)
    }

    /// Whether any of the changed files does.
    pub fn any<'a>(&self, mut paths: impl Iterator<Item = &'a str>) -> bool {
        paths.any(|path| self.file(path))
    }
}

/// Checks globs without keeping them.
pub fn globs(raw: &[String]) -> Result<Vec<String>, StackFieldError> {
    let trimmed: Vec<String> = raw
        .iter()
        .map(|g| g.trim().to_owned())
        .filter(|g| !g.is_empty())
        .collect();
    for glob in &trimmed {
        Glob::new(glob).map_err(|e| StackFieldError::Glob(format!("{glob:?}: {}", e.kind())))?;
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_roots_are_normalised() {
        for (raw, stored) in [
            ("network", "network/"),
            ("network/", "network/"),
            ("./network", "network/"),
            ("", ""),
            (".", ""),
            ("a//b/./c/", "a/b/c/"),
        ] {
            assert_eq!(project_root(raw).as_deref(), Ok(stored), "{raw}");
        }
        for bad in ["../x", "a/../b", "/etc", "a\\b"] {
            assert!(project_root(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_names_follow_git() {
        for good in ["main", "feature/x", "release-1.2", "user@host"] {
            assert_eq!(branch(good).as_deref(), Ok(good));
        }
        for bad in [
            "", "a b", "a..b", "-x", "x/", "/x", "x.lock", "a~1", "a^", "a:b", "a?", "a*", "a[",
            "@", "a@{b", ".x", "a/.b", "x.",
        ] {
            assert!(branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn affected_by_root_or_glob() {
        let affects = Affects::new("network/", &["modules/**/*.tf".to_owned()]).expect("globs");
        assert!(affects.file("network/main.tf"));
        assert!(affects.file("network/sub/x.tf"));
        assert!(!affects.file("networks/main.tf"));
        assert!(affects.file("modules/vpc/main.tf"));
        assert!(affects.file("modules/a/b/main.tf"));
        assert!(!affects.file("modules/vpc/README.md"));
        let whole = Affects::new("", &[]).expect("none");
        assert!(whole.file("anything"));
        assert!(globs(&["[".to_owned()]).is_err());
    }
}
