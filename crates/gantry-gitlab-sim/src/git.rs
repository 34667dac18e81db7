//! Real repositories: each project has a bare repository served over git's
//! smart HTTP protocol by `git http-backend` (with GitLab's token auth) and
//! a work tree the simulator commits in. The compare API is computed from
//! them with git itself.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::api::{caller_for_token, error};
use crate::state::AccessLevel;
use crate::{Shared, SimError};

pub(crate) const ZEROS: &str = "0000000000000000000000000000000000000000";

pub(crate) fn bare_dir(root: &Path, path: &str) -> PathBuf {
    root.join("repos").join(format!("{path}.git"))
}

fn work_dir(root: &Path, path: &str) -> PathBuf {
    root.join("work").join(path)
}

fn git(dir: &Path, args: &[&str]) -> Result<String, SimError> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Sim User")
        .env("GIT_AUTHOR_EMAIL", "sim@example.com")
        .env("GIT_COMMITTER_NAME", "Sim User")
        .env("GIT_COMMITTER_EMAIL", "sim@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()?;
    if !output.status.success() {
        return Err(SimError::Git {
            args: args.join(" "),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned())
}

/// A bare repository whose default branch holds one commit with a
/// README, as GitLab makes with "Initialize repository with a README".
pub(crate) fn init(root: &Path, path: &str, default_branch: &str) -> Result<(), SimError> {
    let bare = bare_dir(root, path);
    let work = work_dir(root, path);
    std::fs::create_dir_all(&bare)?;
    std::fs::create_dir_all(&work)?;
    git(&bare, &["init", "-q", "--bare", "-b", default_branch])?;
    git(&bare, &["config", "http.receivepack", "true"])?;
    // GitLab lets clients fetch any reachable commit by its id.
    git(
        &bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    )?;
    git(&work, &["init", "-q", "-b", default_branch])?;
    git(&work, &["remote", "add", "origin", &bare.to_string_lossy()])?;
    std::fs::write(work.join("README.md"), format!("# {path}\n"))?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "Initial commit"])?;
    git(&work, &["push", "-q", "origin", default_branch])?;
    Ok(())
}

pub(crate) fn commit(
    root: &Path,
    path: &str,
    default_branch: &str,
    branch: &str,
    files: &[(&str, Option<&str>)],
    message: &str,
) -> Result<(String, String), SimError> {
    let work = work_dir(root, path);
    git(&work, &["fetch", "-q", "--prune", "origin"])?;
    let remote = format!("refs/remotes/origin/{branch}");
    let before = git(&work, &["rev-parse", "--verify", "-q", &remote]).ok();
    let start = match &before {
        Some(_) => remote,
        None => format!("refs/remotes/origin/{default_branch}"),
    };
    git(&work, &["checkout", "-q", "-B", branch, &start])?;
    for (file, content) in files {
        let target = work.join(file);
        match content {
            Some(content) => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&target, content)?;
            }
            None => {
                let _ = std::fs::remove_file(&target);
            }
        }
    }
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "--allow-empty", "-m", message])?;
    git(&work, &["push", "-q", "origin", branch])?;
    let after = git(&work, &["rev-parse", "HEAD"])?;
    Ok((before.unwrap_or_else(|| ZEROS.to_owned()), after))
}

pub(crate) fn rev_parse(root: &Path, path: &str, rev: &str) -> Result<String, SimError> {
    git(
        &bare_dir(root, path),
        &["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")],
    )
}

/// Points `branch` at `sha` (a fast-forward merge, or a force push); the
/// commit it pointed at before.
pub(crate) fn set_branch(
    root: &Path,
    path: &str,
    branch: &str,
    sha: &str,
) -> Result<String, SimError> {
    let before = rev_parse(root, path, branch)?;
    git(
        &bare_dir(root, path),
        &["update-ref", &format!("refs/heads/{branch}"), sha],
    )?;
    Ok(before)
}

fn project_path(shared: &Shared, project_id: u64) -> Result<String, Response> {
    shared
        .lock()
        .project(project_id)
        .map(|project| project.path.clone())
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "404 Project Not Found"))
}

/// Whether the project's repository has this commit.
pub(crate) fn rev_parse_in(shared: &Shared, project_id: u64, sha: &str) -> Result<bool, Response> {
    let path = project_path(shared, project_id)?;
    Ok(rev_parse(&shared.root, &path, sha).is_ok())
}

/// `GET /projects/:id/repository/compare`: commits and diffs between two
/// refs; from their merge base unless `straight`. `None` when a ref is
/// unknown.
pub(crate) fn compare(
    shared: &Shared,
    project_id: u64,
    from: &str,
    to: &str,
    straight: bool,
) -> Result<Option<Value>, Response> {
    let path = project_path(shared, project_id)?;
    let bare = bare_dir(&shared.root, &path);
    let (Ok(from_sha), Ok(to_sha)) = (
        rev_parse(&shared.root, &path, from),
        rev_parse(&shared.root, &path, to),
    ) else {
        return Ok(None);
    };
    let internal = |error: SimError| error_500(&error);
    let base = if straight {
        from_sha.clone()
    } else {
        git(&bare, &["merge-base", &from_sha, &to_sha]).map_err(internal)?
    };
    let log = git(
        &bare,
        &[
            "log",
            "--reverse",
            "--format=%H%x00%s%x00%an%x00%ae%x00%aI%x00%P%x00%B%x1e",
            &format!("{base}..{to_sha}"),
        ],
    )
    .map_err(internal)?;
    let commits: Vec<Value> = log
        .split('\u{1e}')
        .map(str::trim)
        .filter(|record| !record.is_empty())
        .map(commit_json)
        .collect();
    let names = git(
        &bare,
        &["diff", "--name-status", "--no-renames", &base, &to_sha],
    )
    .map_err(internal)?;
    let mut diffs = Vec::new();
    for line in names.lines() {
        let Some((status, file)) = line.split_once('\t') else {
            continue;
        };
        let patch = git(&bare, &["diff", &base, &to_sha, "--", file]).map_err(internal)?;
        diffs.push(json!({
            "old_path": file,
            "new_path": file,
            "a_mode": if status == "A" { "0" } else { "100644" },
            "b_mode": if status == "D" { "0" } else { "100644" },
            "new_file": status == "A",
            "renamed_file": false,
            "deleted_file": status == "D",
            "diff": patch.split_once("\n@@").map_or(String::new(), |(_, rest)| format!("@@{rest}\n")),
        }));
    }
    Ok(Some(json!({
        "commit": commits.last().cloned().unwrap_or(Value::Null),
        "commits": commits,
        "diffs": diffs,
        "compare_timeout": false,
        "compare_same_ref": from_sha == to_sha,
        "web_url": format!("{}/{path}/-/compare/{from_sha}...{to_sha}", shared.url),
    })))
}

/// `GET /projects/:id/repository/branches/:branch`; `None` when unknown.
pub(crate) fn branch(
    shared: &Shared,
    project_id: u64,
    branch: &str,
) -> Result<Option<Value>, Response> {
    let (path, default_branch) = {
        let state = shared.lock();
        let project = state
            .project(project_id)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "404 Project Not Found"))?;
        (project.path.clone(), project.default_branch.clone())
    };
    let bare = bare_dir(&shared.root, &path);
    let Ok(sha) = git(
        &bare,
        &[
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{branch}"),
        ],
    ) else {
        return Ok(None);
    };
    Ok(Some(json!({
        "name": branch,
        "commit": commit_at(&bare, &sha)?,
        "merged": false,
        "protected": branch == default_branch,
        "default": branch == default_branch,
        "web_url": format!("{}/{path}/-/tree/{branch}", shared.url),
    })))
}

/// `GET /projects/:id/repository/commits/:sha`: a commit by its full or
/// short id (GitLab expands an unambiguous prefix), `None` when unknown.
pub(crate) fn find_commit(
    shared: &Shared,
    project_id: u64,
    sha: &str,
) -> Result<Option<Value>, Response> {
    let path = project_path(shared, project_id)?;
    if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let Ok(full) = rev_parse(&shared.root, &path, sha) else {
        return Ok(None);
    };
    commit_at(&bare_dir(&shared.root, &path), full.trim()).map(Some)
}

/// The commit `sha` of the bare repository, as GitLab shows a commit.
fn commit_at(bare: &Path, sha: &str) -> Result<Value, Response> {
    let log = git(
        bare,
        &[
            "log",
            "-1",
            "--format=%H%x00%s%x00%an%x00%ae%x00%aI%x00%P%x00%B",
            sha,
        ],
    )
    .map_err(|e| error_500(&e))?;
    Ok(commit_json(&log))
}

fn commit_json(record: &str) -> Value {
    let fields: Vec<&str> = record.split('\0').collect();
    let field = |index: usize| fields.get(index).copied().unwrap_or_default();
    let id = field(0);
    json!({
        "id": id,
        "short_id": id.get(..11).unwrap_or(id),
        "title": field(1),
        "author_name": field(2),
        "author_email": field(3),
        "authored_date": field(4),
        "committer_name": field(2),
        "committer_email": field(3),
        "committed_date": field(4),
        "created_at": field(4),
        "parent_ids": field(5).split(' ').filter(|p| !p.is_empty()).collect::<Vec<_>>(),
        "message": field(6),
    })
}

fn error_500(error: &SimError) -> Response {
    crate::api::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("500 Internal Server Error: {error}"),
    )
}

fn basic_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

fn ask_for_credentials() -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, "HTTP Basic: Access denied\n").into_response();
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"GitLab\""),
    );
    response
}

/// Everything that is not an API route: git's smart HTTP for
/// `/<path>.git/…`, GitLab's 404 otherwise.
pub(crate) async fn serve(
    State(shared): State<std::sync::Arc<Shared>>,
    request: Request,
) -> Response {
    let uri = request.uri().clone();
    let Some((path, rest)) = uri.path().trim_start_matches('/').split_once(".git/") else {
        return error(StatusCode::NOT_FOUND, "404 Not Found");
    };
    let (path, rest) = (path.to_owned(), rest.to_owned());
    let Some(token) = basic_token(request.headers()) else {
        return ask_for_credentials();
    };
    let Some(caller) = caller_for_token(&shared, &token) else {
        return ask_for_credentials();
    };
    let pushing = rest == "git-receive-pack"
        || uri
            .query()
            .is_some_and(|query| query.contains("service=git-receive-pack"));
    let allowed = {
        let state = shared.lock();
        let scoped = caller.scopes.iter().any(|scope| {
            scope == "api"
                || scope == "write_repository"
                || (!pushing && scope == "read_repository")
        });
        let level = state
            .find_project(&path)
            .and_then(|id| state.project(id))
            .and_then(|project| project.members.get(&caller.user_id).copied());
        let needed = if pushing {
            AccessLevel::Developer
        } else {
            AccessLevel::Reporter
        };
        scoped && level.is_some_and(|level| level >= needed)
    };
    if !allowed {
        return (
            StatusCode::NOT_FOUND,
            "The project you were looking for could not be found or you don't have permission to view it.\n",
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 256 * 1024 * 1024).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Request Entity Too Large",
        );
    };
    match http_backend(&shared.root, &format!("/{path}.git/{rest}"), &parts, body).await {
        Ok(response) => response,
        Err(error) => error_500(&error),
    }
}

async fn http_backend(
    root: &Path,
    path_info: &str,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, SimError> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root.join("repos"))
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", path_info)
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "sim")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body).await?;
    }
    let output = child.wait_with_output().await?;
    let out = output.stdout;
    let split = out
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| (at, 4))
        .or_else(|| {
            out.windows(2)
                .position(|window| window == b"\n\n")
                .map(|at| (at, 2))
        });
    let Some((at, gap)) = split else {
        return Err(SimError::Git {
            args: "http-backend".to_owned(),
            message: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    };
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&out[..at]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|code| code.parse().ok())
                .unwrap_or(500);
            builder = builder.status(code);
        } else {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from(out[at + gap..].to_vec()))
        .map_err(|error| SimError::Io(std::io::Error::other(error.to_string())))
}

/// The files one commit added, modified and removed.
pub(crate) struct CommitFiles {
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

/// The files of one commit, as a push payload lists them.
pub(crate) fn commit_files(root: &Path, path: &str, sha: &str) -> Result<CommitFiles, SimError> {
    let out = git(
        &bare_dir(root, path),
        &[
            "diff-tree",
            "--no-commit-id",
            "-r",
            "--name-status",
            "--root",
            sha,
        ],
    )?;
    let (mut added, mut modified, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for line in out.lines() {
        let Some((status, file)) = line.split_once('\t') else {
            continue;
        };
        match status.chars().next() {
            Some('A') => added.push(file.to_owned()),
            Some('D') => removed.push(file.to_owned()),
            _ => modified.push(file.to_owned()),
        }
    }
    Ok(CommitFiles {
        added,
        modified,
        removed,
    })
}

/// The commits of `before..after`, newest first.
pub(crate) fn commits_between(
    root: &Path,
    path: &str,
    before: &str,
    after: &str,
) -> Result<Vec<String>, SimError> {
    let range = if before == ZEROS {
        after.to_owned()
    } else {
        format!("{before}..{after}")
    };
    let out = git(&bare_dir(root, path), &["rev-list", &range])?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// `GET /projects/:id/repository/tree?path=&ref=`: the entries of a
/// directory at a ref; GitLab's 404 "Tree Not Found" when there is none.
pub(crate) async fn tree(
    axum::extract::State(shared): crate::api::SimState,
    axum::extract::Path(id): axum::extract::Path<String>,
    call: crate::api::Call,
) -> Response {
    use axum::response::IntoResponse;
    let (_, project_id) = answer_on_err!(call.access(
        &shared,
        &id,
        crate::api::read(crate::state::AccessLevel::Reporter)
    ));
    let path = match project_path(&shared, project_id) {
        Ok(path) => path,
        Err(response) => return response,
    };
    let dir = call.params.get("path").cloned().unwrap_or_default();
    let dir = dir.trim_matches('/');
    let reference = call
        .params
        .get("ref")
        .cloned()
        .unwrap_or_else(|| "HEAD".into());
    let spec = if dir.is_empty() {
        format!("{reference}^{{tree}}")
    } else {
        format!("{reference}:{dir}")
    };
    let bare = bare_dir(&shared.root, &path);
    if git(&bare, &["cat-file", "-t", &spec]).is_ok_and(|kind| kind.trim() == "tree") {
        let listing = git(&bare, &["ls-tree", &spec]).unwrap_or_default();
        let entries: Vec<serde_json::Value> = listing
            .lines()
            .filter_map(|line| {
                let (meta, name) = line.split_once('\t')?;
                let mut parts = meta.split_whitespace();
                let (mode, kind, sha) = (parts.next()?, parts.next()?, parts.next()?);
                let full = if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") };
                Some(serde_json::json!({ "id": sha, "name": name, "type": kind, "path": full, "mode": mode }))
            })
            .collect();
        axum::Json(entries).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "404 Tree Not Found")
    }
}

/// Points tag `name` at `sha`, or deletes it (`None`); the commit it
/// pointed at before (zeros for none).
pub(crate) fn set_tag(
    root: &Path,
    path: &str,
    name: &str,
    sha: Option<&str>,
) -> Result<String, SimError> {
    let bare = bare_dir(root, path);
    let reference = format!("refs/tags/{name}");
    let before = git(&bare, &["rev-parse", "--verify", "-q", &reference])
        .unwrap_or_else(|_| ZEROS.to_owned());
    match sha {
        Some(sha) => git(&bare, &["update-ref", &reference, sha])?,
        None => git(&bare, &["update-ref", "-d", &reference])?,
    };
    Ok(before.trim().to_owned())
}
