//! `gantry worker`: executes runs on this machine for a server, over the
//! worker API. The execution itself is `gantry_runner::agent`, the same
//! code the server's embedded pool runs; this file is only the HTTP side
//! of its `Control`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gantry_runner::agent::{self, Assignment, Control, ControlError, Heartbeat, Options, Step};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The server's URL.
    #[arg(long, env = "GANTRY_URL")]
    server: String,
    /// An API key with the `worker` role on `root`.
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: SecretString,
    /// This worker's name in leases and logs; default: host name and process id.
    #[arg(long, env = "GANTRY_WORKER_NAME")]
    name: Option<String>,
    /// Where runs' workspaces are made (each removed after its phase).
    #[arg(long, env = "GANTRY_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// On SIGTERM, seconds a run may go on before it is stopped (a plan is
    /// handed back to the queue, an apply fails).
    #[arg(long, env = "GANTRY_SHUTDOWN_GRACE_SECONDS", default_value_t = 60)]
    shutdown_grace_seconds: u64,
    #[command(flatten)]
    sandbox: crate::SandboxArgs,
}

/// The longest text sent in one log request (the API takes 1 MiB bodies).
const LOG_PIECE: usize = 256 * 1024;

/// The largest archive (a source or a planned workspace) a worker takes,
/// as the server stores at most.
const MAX_ARCHIVE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// How long a claim waits on the server for a run.
const CLAIM_WAIT_SECONDS: u64 = 5;

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let name = args.name.unwrap_or_else(default_name);
    let sandbox = gantry_runner::sandbox::Sandbox::open(args.sandbox.mode()).await?;
    // Private to this worker (0700): no other user of the machine sees the
    // runs' workspaces. The default one is new and unpredictable, and
    // removed when the worker stops.
    let (work_dir, _temporary) = match args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create the work directory {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot make {} private", dir.display()))?;
            (dir, None)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix(&format!("gantry-worker-{name}-"))
                .tempdir()
                .context("cannot create a work directory")?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    let remote = Remote {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?,
        base: args.server.trim_end_matches('/').to_owned(),
        token: args.token,
        name: name.clone(),
    };
    remote.check().await?;
    tracing::info!(worker = %name, server = %remote.base, "worker started; claiming runs");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = Options {
        work_dir,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        kill_grace: Duration::from_secs(10),
        sandbox,
    };
    let work = tokio::spawn(agent::work(Arc::new(remote), options, stopped));
    crate::shutdown_signal().await;
    tracing::info!("stopping: no new runs; the run at hand gets the grace period");
    let _ = stop.send(true);
    work.await.context("the worker task panicked")?;
    tracing::info!("stopped");
    Ok(())
}

pub(crate) fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(80)
        .collect();
    let host = if host.is_empty() {
        "worker".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

struct Remote {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    name: String,
}

fn failed(what: &str, error: impl std::fmt::Display) -> ControlError {
    ControlError(format!("{what}: {error}"))
}

impl Remote {
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut auth = reqwest::header::HeaderValue::try_from(format!(
            "Bearer {}",
            self.token.expose_secret()
        ))
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        auth.set_sensitive(true);
        self.http
            .request(method, format!("{}/api/v1{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, auth)
            .header("gantry-worker", &self.name)
            .timeout(Duration::from_secs(CLAIM_WAIT_SECONDS + 30))
    }

    /// Sends a request; answers the response when its status is one of
    /// `accepted`, else the server's error message.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        accepted: &[StatusCode],
    ) -> Result<reqwest::Response, ControlError> {
        let response = request.send().await.map_err(|e| failed(what, e))?;
        if accepted.contains(&response.status()) {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        Err(ControlError(format!(
            "{what}: the server answered {status}: {message}"
        )))
    }

    /// Fails early, with a clear message, on a wrong URL or token.
    async fn check(&self) -> anyhow::Result<()> {
        let response = self
            .request(Method::GET, "/me")
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::UNAUTHORIZED => anyhow::bail!(
                "the server refused the token (401); give an API key with the `worker` role on `root`"
            ),
            status => anyhow::bail!("the server answered {status} to /api/v1/me"),
        }
    }
}

impl Remote {
    /// Streams an archive the server keeps for a run into a file.
    async fn download(&self, path: &str, what: &str, archive: &Path) -> Result<(), ControlError> {
        let request = self
            .request(Method::GET, path)
            .timeout(Duration::from_secs(3600));
        let mut response = self
            .send(&format!("downloading {what}"), request, &[StatusCode::OK])
            .await?;
        let mut file = tokio::fs::File::create(archive)
            .await
            .map_err(|e| failed(&format!("creating the archive of {what}"), e))?;
        let mut size: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(&format!("downloading {what}"), e))?
        {
            size += chunk.len() as u64;
            if size > MAX_ARCHIVE_BYTES {
                return Err(ControlError(format!(
                    "{what} is larger than the limit of {MAX_ARCHIVE_BYTES} bytes"
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| failed(&format!("writing the archive of {what}"), e))?;
        }
        file.flush()
            .await
            .map_err(|e| failed(&format!("writing the archive of {what}"), e))
    }
}

impl Control for Remote {
    async fn claim(&self) -> Result<Option<Assignment>, ControlError> {
        let request = self.request(
            Method::POST,
            &format!("/worker/claim?wait_seconds={CLAIM_WAIT_SECONDS}"),
        );
        let response = self
            .send(
                "claiming a run",
                request,
                &[StatusCode::OK, StatusCode::NO_CONTENT],
            )
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let assignment = response
            .json::<Assignment>()
            .await
            .map_err(|e| failed("reading the assignment", e))?;
        tracing::info!(run.id = %assignment.run_id, stack.id = %assignment.stack_id, "run claimed");
        Ok(Some(assignment))
    }

    async fn heartbeat(&self, run: &str) -> Result<Heartbeat, ControlError> {
        let request = self.request(Method::POST, &format!("/worker/runs/{run}/heartbeat"));
        self.send("heartbeat", request, &[StatusCode::OK])
            .await?
            .json()
            .await
            .map_err(|e| failed("reading the heartbeat", e))
    }

    async fn log(&self, run: &str, text: String) -> Result<(), ControlError> {
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut end = rest.len().min(LOG_PIECE);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let (piece, after) = rest.split_at(end);
            let request = self
                .request(Method::POST, &format!("/worker/runs/{run}/log"))
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(piece.to_owned());
            let response = self
                .send(
                    "sending the log",
                    request,
                    &[StatusCode::NO_CONTENT, StatusCode::CONFLICT],
                )
                .await?;
            if response.status() == StatusCode::CONFLICT {
                // The run is no longer ours; the heartbeat stops it.
                return Ok(());
            }
            rest = after;
        }
        Ok(())
    }

    async fn step(&self, run: &str, step: &Step) -> Result<Option<String>, ControlError> {
        let request = self
            .request(Method::POST, &format!("/worker/runs/{run}/step"))
            .json(step);
        let response = self
            .send(
                "reporting a step",
                request,
                &[StatusCode::OK, StatusCode::CONFLICT],
            )
            .await?;
        if response.status() == StatusCode::CONFLICT {
            return Ok(None);
        }
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| failed("reading the step's answer", e))?;
        Ok(answer["state"].as_str().map(str::to_owned))
    }

    async fn put_workspace(&self, run: &str, archive: &Path) -> Result<(), ControlError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| failed("opening the workspace archive", e))?;
        let request = self
            .request(Method::PUT, &format!("/worker/runs/{run}/workspace"))
            .header(reqwest::header::CONTENT_TYPE, "application/zstd")
            .timeout(Duration::from_secs(3600))
            .body(reqwest::Body::from(file));
        self.send(
            "uploading the workspace",
            request,
            &[StatusCode::NO_CONTENT],
        )
        .await
        .map(drop)
    }

    async fn get_source(&self, run: &str, archive: &Path) -> Result<(), ControlError> {
        self.download(&format!("/worker/runs/{run}/source"), "the source", archive)
            .await
    }

    async fn get_workspace(&self, run: &str, archive: &Path) -> Result<(), ControlError> {
        self.download(
            &format!("/worker/runs/{run}/workspace"),
            "the workspace",
            archive,
        )
        .await
    }

    async fn release(&self, run: &str) -> Result<(), ControlError> {
        let request = self.request(Method::POST, &format!("/worker/runs/{run}/release"));
        self.send("releasing the run", request, &[StatusCode::NO_CONTENT])
            .await
            .map(drop)
    }
}
