//! What the benchmarks share: `gantry serve` (the release binary) on
//! SQLite in a temporary directory, with one GitLab integration on a
//! simulated GitLab. The server logs warnings to stderr; set
//! `BENCH_GANTRY_LOG` to another `GANTRY_LOG` filter (e.g.
//! `warn,sqlx::query=trace` for every statement with its time).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use gantry_gitlab_sim::Sim;
use serde_json::Value;

// Each bench is its own crate and uses part of this; `expect` would be
// unfulfilled in the ones that use all of it.
#[allow(dead_code, reason = "each bench uses part of it")]
pub struct Bench {
    /// Killed when the bench is dropped, or by [`Bench::stop`].
    server: tokio::process::Child,
    pub base: String,
    pub data: PathBuf,
    /// The integration's webhook secret.
    pub secret: String,
    /// The first admin key.
    pub admin: String,
    /// The integration's user and token on the simulated GitLab.
    pub user: u64,
    pub token: String,
    pub sim: Sim,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// Stops the server and waits for it to exit; its data stays.
    #[allow(dead_code, reason = "each bench uses part of it")]
    pub async fn stop(&mut self) {
        self.server.kill().await.expect("stop gantry serve");
    }
}

/// Starts the server with `flags` and creates the integration `name`.
pub async fn start(flags: &[&str], name: &str, default: bool) -> Bench {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .args(flags)
        .env(
            "GANTRY_LOG",
            std::env::var("BENCH_GANTRY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("gantry serve");
    let http = reqwest::Client::new();
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        // A server that could not start has said why on stderr.
        if let Some(status) = server.try_wait().expect("server status") {
            panic!("gantry serve exited at start ({status}); its stderr says why");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = std::fs::read_to_string(data.join("initial-admin-token"))
        .expect("token")
        .trim()
        .to_owned();
    let sim = Sim::start().await.expect("sim");
    let bot = sim.add_bot("bot");
    let created: Value = http
        .post(format!("{base}/api/v1/integrations/gitlab"))
        .bearer_auth(&admin)
        .json(&sim.integration_body(&bot, name, default))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let secret = created["webhook_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    Bench {
        server,
        base,
        data,
        secret,
        admin,
        user: bot.user,
        token: bot.token,
        sim,
        _dir: dir,
    }
}
