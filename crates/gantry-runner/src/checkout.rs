//! Fetching exactly a run's commit. The token travels in git's
//! environment configuration (`GIT_CONFIG_COUNT` with `http.extraHeader`),
//! never in arguments, the remote URL, `.git/config` or a log.

use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use crate::redact::Redactor;

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("`{step}` failed: {message}")]
    Git { step: &'static str, message: String },
    #[error("the checkout is at {found}, not at the run's commit {wanted}")]
    WrongCommit { wanted: String, found: String },
    #[error("cannot run git: {0}")]
    Io(#[from] std::io::Error),
}

impl CheckoutError {
    /// Whether git failed because the server or the network did (a 5xx or
    /// 429 answer, a refused, reset or timed-out connection, a name that
    /// did not resolve, a fetch cut short): worth trying again later.
    pub fn is_transient(&self) -> bool {
        const SIGNS: [&str; 12] = [
            "returned error: 5",
            "returned error: 429",
            "Failed to connect",
            "Could not resolve host",
            "Connection refused",
            "Connection reset",
            "Connection timed out",
            "Operation timed out",
            "RPC failed",
            "early EOF",
            "unexpected disconnect",
            "the remote end hung up unexpectedly",
        ];
        match self {
            Self::Git { message, .. } => SIGNS.iter().any(|sign| message.contains(sign)),
            Self::WrongCommit { .. } | Self::Io(_) => false,
        }
    }
}

/// What to fetch, from where, as whom.
pub struct Source<'a> {
    /// The HTTP(S) clone URL, without credentials.
    pub clone_url: &'a str,
    /// The integration's token; GitLab takes it as the password of `oauth2`.
    pub token: &'a SecretString,
    /// The full commit id.
    pub commit: &'a str,
}

/// Checks `source.commit` out into `dir` (created if needed), shallow.
pub async fn checkout(source: &Source<'_>, dir: &Path) -> Result<(), CheckoutError> {
    std::fs::create_dir_all(dir)?;
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("oauth2:{}", source.token.expose_secret()));
    let header = SecretString::from(format!("Authorization: Basic {credentials}"));
    let redactor_values = [source.token.expose_secret(), credentials.as_str()];
    git(dir, "git init", &["init", "-q"], None, &redactor_values).await?;
    git(
        dir,
        "git remote add",
        &["remote", "add", "origin", source.clone_url],
        None,
        &redactor_values,
    )
    .await?;
    git(
        dir,
        "git fetch",
        &[
            "fetch",
            "-q",
            "--depth",
            "1",
            "--no-tags",
            "origin",
            source.commit,
        ],
        Some(&header),
        &redactor_values,
    )
    .await?;
    git(
        dir,
        "git checkout",
        &["checkout", "-q", "--detach", "FETCH_HEAD"],
        None,
        &redactor_values,
    )
    .await?;
    let found = git(
        dir,
        "git rev-parse",
        &["rev-parse", "HEAD"],
        None,
        &redactor_values,
    )
    .await?;
    if found != source.commit {
        return Err(CheckoutError::WrongCommit {
            wanted: source.commit.to_owned(),
            found,
        });
    }
    Ok(())
}

/// Runs git in `dir` with a clean environment; with `header`, git sends it
/// on every HTTP request through `GIT_CONFIG_*`. Its stderr, redacted,
/// becomes the error.
async fn git(
    dir: &Path,
    step: &'static str,
    args: &[&str],
    header: Option<&SecretString>,
    secrets: &[&str],
) -> Result<String, CheckoutError> {
    let mut command = tokio::process::Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(header) = header {
        command
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", header.expose_secret());
    }
    let output = command.output().await?;
    if !output.status.success() {
        let mut redactor = Redactor::new(secrets.iter().copied());
        let mut message = redactor.push(&output.stderr);
        message.extend(redactor.finish());
        return Err(CheckoutError::Git {
            step,
            message: String::from_utf8_lossy(&message).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
