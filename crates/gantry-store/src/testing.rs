//! Throwaway databases for tests: a SQLite file in a temp dir, or a fresh
//! database in a PostgreSQL cluster that the test process starts itself
//! (`initdb` into a temp dir, listening only on a unix socket there).
//!
//! The cluster is started once per test binary and stopped when that
//! process exits: a small shell watchdog holds the read end of a pipe whose
//! write end only this process has, and stops PostgreSQL and deletes its
//! directory when the pipe closes. Run as root, PostgreSQL runs as the
//! `postgres` user (it refuses to run as root).
//!
//! Without PostgreSQL binaries a PostgreSQL test is skipped with a visible
//! message, unless `CI=true`, where it fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::Store;

/// A store on a fresh database. Keeps the SQLite temp dir alive.
pub struct TestStore {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A migrated store on a new SQLite file.
pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(dir.path());
    let store = Store::connect(&url).await.expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    TestStore {
        store,
        url,
        _dir: Some(dir),
    }
}

pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("gantry.db").display())
}

/// A migrated store on a new database in the test cluster, or `None` (after
/// saying why) when PostgreSQL is not available outside CI.
pub async fn postgres() -> Option<TestStore> {
    let url = postgres_url().await?;
    let store = Store::connect(&url)
        .await
        .expect("connect to the test PostgreSQL database");
    store.migrate().await.expect("migrate PostgreSQL");
    Some(TestStore {
        store,
        url,
        _dir: None,
    })
}

/// The URL of a new, empty database in the test cluster.
pub async fn postgres_url() -> Option<String> {
    let cluster = match cluster() {
        Ok(cluster) => cluster,
        Err(reason) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "PostgreSQL tests must run in CI, but the test cluster did not start: {reason}"
                );
            }
            eprintln!(
                "SKIPPED: PostgreSQL test (the test cluster did not start: {reason}); set CI=true to fail instead"
            );
            return None;
        }
    };
    static NEXT_DB: AtomicU32 = AtomicU32::new(0);
    let name = format!("gantry_test_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    // Right after start-up PostgreSQL may still refuse connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        match Store::connect(&cluster.url("postgres")).await {
            Ok(admin) => break admin,
            Err(err) if Instant::now() < deadline => {
                eprintln!("waiting for the test cluster: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("cannot connect to the test cluster: {err}"),
        }
    };
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .expect("create test database");
    admin.close().await;
    Some(cluster.url(&name))
}

struct Cluster {
    socket_dir: PathBuf,
    /// Closing this (at process exit) stops the cluster.
    _watchdog: Mutex<ChildStdin>,
}

impl Cluster {
    fn url(&self, database: &str) -> String {
        format!(
            "postgres://gantry@localhost/{database}?host={}",
            self.socket_dir.display()
        )
    }
}

fn cluster() -> Result<&'static Cluster, String> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(start_cluster)
        .as_ref()
        .map_err(Clone::clone)
}

const WATCHDOG: &str = r#"
set -u
dir=$1; bin=$2; user=$3
as_pg=""
if [ -n "$user" ]; then
    chown "$user" "$dir"
    as_pg="setpriv --reuid=$user --regid=$user --init-groups --"
fi
if ! $as_pg "$bin/initdb" -D "$dir/data" -U gantry --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
    echo "initdb failed: $(tail -n 5 "$dir/initdb.log")" >&2; exit 1
fi
# setpriv executes postgres in its own place, so $! is the postmaster.
$as_pg "$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses= -c fsync=off \
    -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 >"$dir/postgres.log" 2>&1 &
pid=$!
echo started
read -r _ || true
kill -INT "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir"
"#;

fn start_cluster() -> Result<Cluster, String> {
    let bin = postgres_bin_dir()
        .ok_or("no initdb on PATH or under /usr/lib/postgresql/*/bin; install PostgreSQL")?;
    let dir = tempfile::Builder::new()
        .prefix("gantry-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let user = if is_root() { "postgres" } else { "" };
    let mut child = Command::new("sh")
        .args(["-c", WATCHDOG, "gantry-pg-watchdog"])
        .arg(&dir)
        .arg(&bin)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut started = String::new();
    (&mut stdout)
        .take(8)
        .read_to_string(&mut started)
        .map_err(|e| e.to_string())?;
    if !started.starts_with("started") {
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    // Reap the watchdog when it ends so it leaves no zombie behind.
    std::thread::spawn(move || child.wait());
    let socket = dir.join(".s.PGSQL.5432");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!(
                "PostgreSQL did not open its socket within 60 s: {log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Cluster {
        socket_dir: dir,
        _watchdog: Mutex::new(stdin),
    })
}

fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("GANTRY_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("initdb").exists())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// A stack row as the API would create it (OpenTofu, tracked branch
/// `main`, the default limits), for tests and benchmarks that write rows
/// directly.
pub fn stack(
    id: &str,
    integration_id: &str,
    project_id: i64,
    repository: &str,
    project_root: &str,
    now: crate::Millis,
) -> crate::stacks::Stack {
    crate::stacks::Stack {
        id: id.into(),
        name: id.into(),
        space_id: crate::spaces::ROOT.into(),
        integration_id: Some(integration_id.into()),
        project_id,
        repository: repository.into(),
        branch: "main".into(),
        project_root: project_root.into(),
        additional_project_globs: Vec::new(),
        labels: Vec::new(),
        autodeploy: false,
        allow_forks: false,
        vendor: gantry_domain::Workflow::Opentofu { binary: None },
        environment: std::collections::BTreeMap::new(),
        secret_environment_names: Vec::new(),
        secret_environment_sealed: None,
        proposed_secret_environment_names: None,
        proposed_secret_environment_sealed: None,
        log_limit_bytes: crate::stacks::DEFAULT_LOG_LIMIT_BYTES,
        run_timeout_seconds: 4200,
        no_output_timeout_seconds: 600,
        created_at: now.0,
        updated_at: now.0,
    }
}

/// What a test runs on: SQLite always, and PostgreSQL where a throwaway
/// cluster can start (under `CI=true` it must).
pub trait Databases: Sized {
    fn sqlite() -> impl std::future::Future<Output = Self>;
    fn postgres() -> impl std::future::Future<Output = Option<Self>>;
}

impl Databases for TestStore {
    async fn sqlite() -> Self {
        sqlite().await
    }

    async fn postgres() -> Option<Self> {
        postgres().await
    }
}

/// `on_both_databases!(Db; a, b)` runs the async test functions `a(db)`
/// and `b(db)` once on SQLite and once on PostgreSQL, as two tests each,
/// with `Db` (a [`Databases`]) made afresh for each.
#[macro_export]
macro_rules! on_both_databases {
    ($db:ty; $($test:ident),* $(,)?) => {$(
        mod $test {
            #[allow(unused_imports, reason = "the caller's names, for `$db`")]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(<$db as $crate::testing::Databases>::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = <$db as $crate::testing::Databases>::postgres().await else {
                    return;
                };
                super::$test(db).await;
            }
        }
    )*};
}

/// A throwaway S3-compatible server (moto's `moto_server`, from
/// `$GANTRY_TEST_MOTO` or `PATH`) with an empty bucket `gantry`, stopped
/// when dropped.
pub struct S3Server {
    child: std::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// The `AWS_*` variables that point a client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ]
    }
}

/// Starts an S3 server, or `None` (after saying why) when there is none
/// outside CI.
pub fn s3_server() -> Option<S3Server> {
    let binary = std::env::var("GANTRY_TEST_MOTO").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("S3 tests must run in CI, but {binary} did not start: {error}");
            }
            eprintln!(
                "SKIPPED: S3 test ({binary} did not start: {error}); set GANTRY_TEST_MOTO, or CI=true to fail instead"
            );
            return None;
        }
    };
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    // Create the bucket (path style, as moto accepts without signatures).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = (|| -> std::io::Result<String> {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
            stream.write_all(
                b"PUT /gantry HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })();
        match created {
            Ok(answer) if answer.starts_with("HTTP/1.1 200") => return Some(server),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("the S3 server did not create the bucket: {other:?}"),
        }
    }
}
