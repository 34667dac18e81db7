//! Running `gantry serve` as a child process.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Server {
    pub child: Child,
    pub base: String,
}

/// The database a child server uses: SQLite in its data directory, or a
/// new database in the test PostgreSQL cluster.
pub enum Db {
    Sqlite,
    Postgres(String),
}

impl Db {
    /// A new PostgreSQL database; `None` (the test is skipped) when the
    /// cluster cannot start outside CI.
    pub async fn postgres() -> Option<Self> {
        gantry_store::testing::postgres_url()
            .await
            .map(Self::Postgres)
    }

    /// The flags of `gantry serve` that select it.
    pub fn flags(&self) -> Vec<&str> {
        match self {
            Self::Sqlite => Vec::new(),
            Self::Postgres(url) => vec!["--database-url", url],
        }
    }

    /// Opens it, as the server under `data_dir` does.
    pub async fn open(&self, data_dir: &Path) -> gantry_store::Store {
        let url = match self {
            Self::Sqlite => format!("sqlite://{}", data_dir.join("gantry.db").display()),
            Self::Postgres(url) => url.clone(),
        };
        gantry_store::Store::connect(&url).await.expect("open")
    }
}

/// A free local port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Starts `gantry serve` on `data_dir` and waits until `/healthz` answers.
pub async fn serve(data_dir: &Path, port: u16, extra: &[&str]) -> Server {
    serve_with(data_dir, port, extra, &[]).await
}

/// [`serve`] with these environment variables set.
pub async fn serve_with(
    data_dir: &Path,
    port: u16,
    extra: &[&str],
    env: &[(&str, String)],
) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("GANTRY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("gantry serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..500 {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Server { child, base };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gantry serve did not come up on {base}");
}

/// Starts `gantry worker` for the server at `base`.
pub fn worker(base: &str, token: &str, name: &str, work_dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("worker")
        .args(["--server", base, "--name", name])
        .arg("--work-dir")
        .arg(work_dir)
        .args(extra)
        .env("GANTRY_TOKEN", token)
        .env("GANTRY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("gantry worker starts")
}

/// Sends SIGTERM and waits for the process to exit; its exit status.
pub async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait")
}
