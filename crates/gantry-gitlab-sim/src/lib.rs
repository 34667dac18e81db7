//! A simulated GitLab for Gantry's tests and `gantry demo`.
//!
//! It answers the REST endpoints Gantry calls with GitLab's documented JSON
//! shapes, status codes and error bodies, checks a token on every call,
//! serves real git repositories over smart HTTP through `git http-backend`,
//! delivers webhooks with GitLab's headers, and can be told to fail
//! (5xx, 429 with `Retry-After`, slow answers). Every API request is logged
//! so tests can assert what Gantry sent.
//!
//! State lives in memory; repositories live in a temporary directory that
//! goes away with the [`Sim`].

#![expect(
    clippy::result_large_err,
    reason = "helpers return the axum Response a handler answers with; in a test double its size does not matter"
)]

/// `?` for handlers that answer `Response`: the value, or the refusal
/// answered at once.
macro_rules! answer_on_err {
    ($result:expr) => {
        match $result {
            Ok(found) => found,
            Err(response) => return response,
        }
    };
}

mod api;
mod control;
mod git;
mod hooks;
mod project_hooks;
mod reporting;
mod state;
mod statuses;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

pub use hooks::{Delivery, DeliveryAnswer};
pub use state::{AccessLevel, LoggedRequest, Note, TokenSpec};

use state::State;

/// A user of the simulated GitLab and its `api` token: the GitLab side of
/// a Gantry integration, as tests, the demo and the benchmarks set it up.
#[derive(Clone, Debug)]
pub struct Bot {
    pub user: u64,
    pub token: String,
}

/// A scripted failure: the next API request whose path contains
/// `path_contains` (every request when empty) gets it instead of its answer.
#[derive(Clone, Debug)]
pub struct Fault {
    pub path_contains: String,
    pub kind: FaultKind,
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer with this status and GitLab's error body.
    Status(u16),
    /// `429 Too Many Requests` with `Retry-After` (seconds) and
    /// `RateLimit-Reset` (a Unix time), each when given.
    RateLimited {
        retry_after: Option<u64>,
        ratelimit_reset: Option<i64>,
    },
    /// Answer normally, after this long.
    Delay(Duration),
    /// Do the request, then hold its answer back this long (as when the
    /// caller dies after GitLab acted but before it heard back).
    DelayAnswer(Duration),
}

/// Errors of the simulator's own set-up (git failing, bad arguments).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no project {0}")]
    NoProject(String),
}

pub(crate) struct Shared {
    state: Mutex<State>,
    root: PathBuf,
    /// GitLab's own URL, in every URL it answers with.
    url: String,
    /// Where it listens; the same as `url` unless started with
    /// [`Sim::start_as`].
    listen_url: String,
    http: reqwest::Client,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Shared {
    pub(crate) fn enter(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
    }

    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running simulated GitLab on `127.0.0.1` with a random port.
pub struct Sim {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    _dir: tempdir::Dir,
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Sim {
    /// Starts the simulator. Panics only if no local port can be bound.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_at(None).await
    }

    /// A GitLab whose external URL is `url`, such as
    /// `http://gitlab.internal` inside a private network: the URLs it
    /// answers with (clone URLs, web URLs) name that host, while it listens
    /// on [`Sim::listen_url`].
    pub async fn start_as(url: &str) -> Result<Self, SimError> {
        Self::start_at(Some(url.trim_end_matches('/').to_owned())).await
    }

    async fn start_at(external: Option<String>) -> Result<Self, SimError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let root = std::env::temp_dir().join(format!(
            "gantry-gitlab-sim-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(root.join("repos"))?;
        std::fs::create_dir_all(root.join("work"))?;
        let listen_url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            root: root.clone(),
            url: external.unwrap_or_else(|| listen_url.clone()),
            listen_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .map_err(|error| std::io::Error::other(error.to_string()))?,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = api::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            shared,
            server,
            _dir: tempdir::Dir(root),
        })
    }

    /// `http://127.0.0.1:<port>`: both the API host URL and the web URL
    /// (or the URL given to [`Sim::start_as`]).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Where the simulator listens.
    pub fn listen_url(&self) -> &str {
        &self.shared.listen_url
    }

    /// Adds an active user and returns its id.
    pub fn add_user(&self, username: &str) -> u64 {
        self.shared.lock().add_user(username)
    }

    /// Sets a user's state (`active`, `blocked`, `deactivated`).
    pub fn set_user_state(&self, user_id: u64, state: &str) {
        self.shared.lock().set_user_state(user_id, state);
    }

    /// Adds an access token and returns its secret value.
    pub fn add_token(&self, spec: TokenSpec) -> String {
        self.shared.lock().add_token(spec)
    }

    /// Revokes a token (GitLab then answers 401 to it).
    pub fn revoke_token(&self, token: &str) {
        self.shared.lock().revoke_token(token);
    }

    /// Behave like GitLab before 15.5, which has no
    /// `/personal_access_tokens/self` (404).
    pub fn without_token_self_endpoint(&self) {
        self.shared.lock().token_self_endpoint = false;
    }

    /// Adds a project with an empty repository on `default_branch` and
    /// returns its numeric id.
    pub fn add_project(
        &self,
        path_with_namespace: &str,
        default_branch: &str,
    ) -> Result<u64, SimError> {
        let id = self
            .shared
            .lock()
            .add_project(path_with_namespace, default_branch);
        git::init(&self.shared.root, path_with_namespace, default_branch)?;
        Ok(id)
    }

    /// Gives a user an access level on a project.
    pub fn add_member(&self, project_id: u64, user_id: u64, level: AccessLevel) {
        self.shared.lock().add_member(project_id, user_id, level);
    }

    /// What a Gantry integration connects as: a user with an `api` token.
    pub fn add_bot(&self, username: &str) -> Bot {
        let user = self.add_user(username);
        let token = self.add_token(TokenSpec::new(user, &["api"]));
        Bot { user, token }
    }

    /// A project that `bot` maintains (so Gantry may manage its hook).
    pub fn add_maintained_project(
        &self,
        bot: &Bot,
        path_with_namespace: &str,
        default_branch: &str,
    ) -> Result<u64, SimError> {
        let project = self.add_project(path_with_namespace, default_branch)?;
        self.add_member(project, bot.user, AccessLevel::Maintainer);
        Ok(project)
    }

    /// The body of Gantry's `POST /api/v1/integrations/gitlab` that
    /// connects to this GitLab as `bot`.
    pub fn integration_body(&self, bot: &Bot, name: &str, default: bool) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "default": default,
            "api_host_url": self.url(),
            "api_token": bot.token,
        })
    }

    /// Commits `files` (path → content; `None` deletes) on `branch` of the
    /// project's repository, creating the branch from the default branch if
    /// needed, and returns `(before, after)` commit ids (`before` is forty
    /// zeros for a new branch).
    pub fn commit(
        &self,
        project_id: u64,
        branch: &str,
        files: &[(&str, Option<&str>)],
        message: &str,
    ) -> Result<(String, String), SimError> {
        let (path, default_branch) = self.project_path(project_id)?;
        git::commit(
            &self.shared.root,
            &path,
            &default_branch,
            branch,
            files,
            message,
        )
    }

    /// Moves `branch` to `sha`, as a fast-forward merge does, and returns
    /// `(before, after)` as [`Sim::commit`] does.
    pub fn set_branch(
        &self,
        project_id: u64,
        branch: &str,
        sha: &str,
    ) -> Result<(String, String), SimError> {
        let (path, _) = self.project_path(project_id)?;
        let before = git::set_branch(&self.shared.root, &path, branch, sha)?;
        Ok((before, sha.to_owned()))
    }

    /// Opens a merge request and returns its iid.
    pub fn open_merge_request(
        &self,
        project_id: u64,
        source_branch: &str,
        target_branch: &str,
        title: &str,
    ) -> Result<u64, SimError> {
        let (path, _) = self.project_path(project_id)?;
        let sha = git::rev_parse(&self.shared.root, &path, source_branch)?;
        self.shared
            .lock()
            .open_merge_request(project_id, source_branch, target_branch, title, &sha)
            .ok_or_else(|| SimError::NoProject(project_id.to_string()))
    }

    /// Adds a project hook, as an owner would in GitLab's settings.
    pub fn add_hook(&self, project_id: u64, url: &str, token: &str) -> Option<u64> {
        self.shared.lock().add_hook(project_id, url, Some(token))
    }

    /// Sends a webhook to every hook of the project that wants `event`
    /// (`Push Hook`, `Tag Push Hook`, `Merge Request Hook`, …), with GitLab's
    /// headers, and returns what each hook answered.
    pub async fn deliver(&self, project_id: u64, event: &str, body: &Value) -> Vec<DeliveryAnswer> {
        hooks::deliver_to_project(&self.shared, project_id, event, body).await
    }

    /// The `Push Hook` payload GitLab sends for `before..after` on
    /// `branch`: at most the 20 newest commits with their files, and
    /// `total_commits_count`.
    pub fn push_payload(
        &self,
        project_id: u64,
        branch: &str,
        before: &str,
        after: &str,
    ) -> Result<Value, SimError> {
        let (path, default_branch) = self.project_path(project_id)?;
        let root = &self.shared.root;
        let all = if after == git::ZEROS {
            Vec::new()
        } else {
            git::commits_between(root, &path, before, after)?
        };
        let mut commits = Vec::new();
        for sha in all.iter().take(20).rev() {
            let files = git::commit_files(root, &path, sha)?;
            commits.push(serde_json::json!({
                "id": sha, "message": "change", "title": "change",
                "timestamp": "2026-11-22T00:00:00+00:00",
                "url": format!("{}/{path}/-/commit/{sha}", self.shared.url),
                "author": {"name": "Sim User", "email": "[REDACTED]"},
                "added": files.added, "modified": files.modified, "removed": files.removed,
            }));
        }
        Ok(serde_json::json!({
            "object_kind": "push", "event_name": "push",
            "before": before, "after": after, "ref": format!("refs/heads/{branch}"),
            "checkout_sha": if after == git::ZEROS { Value::Null } else { Value::from(after) },
            "user_id": 1, "user_name": "Sim User", "user_username": "sim",
            "project_id": project_id,
            "project": {
                "id": project_id, "path_with_namespace": path, "default_branch": default_branch,
                "web_url": format!("{}/{path}", self.shared.url),
            },
            "commits": commits,
            "total_commits_count": all.len(),
        }))
    }

    /// The `Merge Request Hook` payload for a merge request of this
    /// project with `action` (`open`, `update`, `close`, …) and, for an
    /// update that pushed commits, `oldrev`.
    pub fn merge_request_payload(
        &self,
        project_id: u64,
        iid: u64,
        action: &str,
        oldrev: Option<&str>,
    ) -> Result<Value, SimError> {
        let (path, _) = self.project_path(project_id)?;
        let (source, target, mr_id) = {
            let state = self.shared.lock();
            let project = state
                .project(project_id)
                .ok_or_else(|| SimError::NoProject(project_id.to_string()))?;
            let mr = project
                .merge_requests
                .iter()
                .find(|mr| mr.iid == iid)
                .ok_or_else(|| SimError::NoProject(format!("{project_id} !{iid}")))?;
            (mr.source_branch.clone(), mr.target_branch.clone(), mr.id)
        };
        let last = git::rev_parse(&self.shared.root, &path, &source)?;
        let mut attributes = serde_json::json!({
            "id": mr_id, "iid": iid, "action": action, "state": if action == "close" { "closed" } else { "opened" },
            "source_branch": source, "target_branch": target,
            "source_project_id": project_id, "target_project_id": project_id,
            "last_commit": {"id": last, "message": "change"},
            "draft": false, "work_in_progress": false, "title": "Change",
            "url": format!("{}/{path}/-/merge_requests/{iid}", self.shared.url),
        });
        if let Some(oldrev) = oldrev {
            attributes["oldrev"] = Value::from(oldrev);
        }
        Ok(serde_json::json!({
            "object_kind": "merge_request", "event_type": "merge_request",
            "user": {"id": 1, "name": "Sim User", "username": "sim"},
            "project": {"id": project_id, "path_with_namespace": path, "web_url": format!("{}/{path}", self.shared.url)},
            "object_attributes": attributes,
        }))
    }

    /// Sends one delivery exactly as given (for resends and odd headers).
    pub async fn send(&self, delivery: &Delivery) -> DeliveryAnswer {
        hooks::send(&self.shared, delivery).await
    }

    /// Queues a scripted failure.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Every API request so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().log.clone()
    }

    /// The most API requests that were ever in flight at once.
    pub fn max_concurrent_requests(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The commit statuses of a commit, oldest first, as GitLab lists them.
    pub fn statuses(&self, project_id: u64, sha: &str) -> Vec<Value> {
        self.shared.lock().statuses_of(project_id, sha)
    }

    /// The states a commit status `name` of `sha` was accepted in, in order
    /// (GitLab keeps only the last; this is what it went through).
    pub fn status_history(&self, project_id: u64, sha: &str, name: &str) -> Vec<String> {
        self.history(project_id, sha, None, name)
    }

    /// [`Sim::status_history`] of the status on one ref.
    pub fn status_history_on(
        &self,
        project_id: u64,
        sha: &str,
        reference: &str,
        name: &str,
    ) -> Vec<String> {
        self.history(project_id, sha, Some(reference), name)
    }

    fn history(&self, project_id: u64, sha: &str, on: Option<&str>, name: &str) -> Vec<String> {
        let state = self.shared.lock();
        let Some(project) = state.project(project_id) else {
            return Vec::new();
        };
        project
            .status_history
            .iter()
            .filter(|e| e.sha == sha && e.name == name)
            .filter(|e| on.is_none_or(|on| e.reference.as_deref() == Some(on)))
            .map(|e| e.state.clone())
            .collect()
    }

    /// The notes of a merge request, oldest first.
    pub fn notes(&self, project_id: u64, iid: u64) -> Vec<Note> {
        self.shared.lock().notes_of(project_id, iid)
    }

    /// The deployments of a project, oldest first.
    pub fn deployments(&self, project_id: u64) -> Vec<Value> {
        self.shared.lock().deployments_of(project_id)
    }

    /// The HTTP clone URL of a project.
    pub fn clone_url(&self, project_id: u64) -> Result<String, SimError> {
        let (path, _) = self.project_path(project_id)?;
        Ok(format!("{}/{path}.git", self.shared.url))
    }

    fn project_path(&self, project_id: u64) -> Result<(String, String), SimError> {
        let state = self.shared.lock();
        let project = state
            .project(project_id)
            .ok_or_else(|| SimError::NoProject(project_id.to_string()))?;
        Ok((project.path.clone(), project.default_branch.clone()))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The real GitLab payloads and responses of `shared/gitlab-corpus`: from
/// `GANTRY_GITLAB_CORPUS`, or beside the checkout. `None` (and a visible
/// SKIPPED) when absent, except under `CI=true`, where it panics.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("GANTRY_GITLAB_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/gitlab-corpus")
        });
    if dir.join("api").is_dir() {
        return Some(dir);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "the GitLab corpus is not at {}; set GANTRY_GITLAB_CORPUS",
        dir.display()
    );
    eprintln!(
        "SKIPPED: the GitLab corpus is not at {}; set GANTRY_GITLAB_CORPUS",
        dir.display()
    );
    None
}

/// A corpus webhook delivery: its `X-Gitlab-*` and other headers as
/// `(name, value)` pairs (the token placeholder replaced by `token`), and
/// its body.
pub fn corpus_delivery(dir: &Path, name: &str, token: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let webhooks = dir.join("webhooks");
    let headers =
        std::fs::read_to_string(webhooks.join(format!("{name}.headers"))).unwrap_or_default();
    let headers = headers
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| {
            let value = value.replace("REPLACE_WITH_WEBHOOK_SECRET_TOKEN", token);
            (name.to_owned(), value)
        })
        .collect();
    let body = std::fs::read(webhooks.join(format!("{name}.json"))).unwrap_or_default();
    (headers, body)
}
