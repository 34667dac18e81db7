use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gantry_server::{INITIAL_ADMIN_TOKEN_FILE, RunningServer, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A data directory and, on PostgreSQL, the database it points at.
pub struct Db {
    pub dir: TempDir,
    pub database_url: Option<String>,
}

impl gantry_store::testing::Databases for Db {
    async fn sqlite() -> Self {
        Db::sqlite()
    }

    async fn postgres() -> Option<Self> {
        Db::postgres().await
    }
}

impl Db {
    pub fn sqlite() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            database_url: None,
        }
    }

    pub async fn postgres() -> Option<Self> {
        let url = gantry_store::testing::postgres_url().await?;
        Some(Self {
            dir: tempfile::tempdir().expect("temp dir"),
            database_url: Some(url),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: self.data_dir(),
            database_url: self.database_url.clone(),
            public_url: "http://gantry.test".into(),
            embedded_workers: 0,
            lease: Duration::from_secs(30),
            webhook_secret_grace: gantry_server::DEFAULT_WEBHOOK_SECRET_GRACE,
            webhook_body_limit: gantry_server::DEFAULT_WEBHOOK_BODY_LIMIT,
            delivery_retention: gantry_server::DEFAULT_DELIVERY_RETENTION,
            gitlab: gantry_gitlab::ClientConfig {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                max_attempts: 3,
                ..gantry_gitlab::ClientConfig::default()
            },
            worker_shutdown_grace: Duration::from_secs(2),
            // The real sandbox, as users run it.
            sandbox: gantry_runner::sandbox::Mode::Bwrap,
            prepare_patience: gantry_server::DEFAULT_PREPARE_PATIENCE,
            run_log_retention: gantry_server::DEFAULT_RUN_LOG_RETENTION,
            blob_store: None,
        }
    }
}

/// A running server and an HTTP client for it.
pub struct TestApp {
    pub base: String,
    pub admin: String,
    http: reqwest::Client,
    server: Option<RunningServer>,
    stop: Option<oneshot::Sender<()>>,
}

/// Everything every server of this test process logged, at `debug` and
/// above, so tests can search it for secrets.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(
        &log_buffer()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl TestApp {
    pub async fn start(db: &Db) -> Self {
        Self::start_with_workers(db, 0).await
    }

    /// A server with `workers` embedded workers executing runs.
    pub async fn start_with_workers(db: &Db, workers: u32) -> Self {
        Self::start_configured(db, |config| config.embedded_workers = workers).await
    }

    /// A server whose public URL is its own address, so that the hooks it
    /// makes in GitLab deliver to it, even after a restart on the same data.
    pub async fn start_reachable(
        db: &Db,
        port: u16,
        change: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        Self::start_configured(db, |config| {
            config.listen = format!("127.0.0.1:{port}").parse().expect("addr");
            config.public_url = format!("http://127.0.0.1:{port}");
            change(config);
        })
        .await
    }

    /// A server with the test configuration as `change` leaves it.
    pub async fn start_configured(db: &Db, change: impl FnOnce(&mut ServerConfig)) -> Self {
        log_buffer();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = db.config();
        change(&mut config);
        let server = gantry_server::start(config, None, async {
            let _ = stopped.await;
        })
        .await
        .expect("server starts");
        let admin = std::fs::read_to_string(db.data_dir().join(INITIAL_ADMIN_TOKEN_FILE))
            .expect("admin token file");
        Self {
            base: format!("http://{}", server.addr),
            admin: admin.trim().to_owned(),
            http: reqwest::Client::new(),
            server: Some(server),
            stop: Some(stop),
        }
    }

    /// The VCS agents connected to this server.
    pub fn vcs_agents(&self) -> std::sync::Arc<gantry_server::vcs_agents::Hub> {
        self.server.as_ref().expect("running").vcs_agents()
    }

    /// Runs every delivery job and GitLab write that is due until none is
    /// left, so a test asserts on their outcome instead of polling for it.
    pub async fn settle(&self) {
        self.server
            .as_ref()
            .expect("running")
            .run_pending_jobs()
            .await
            .expect("pending jobs run");
    }

    /// A delivery of `integration` once every due delivery job was run;
    /// it must have been processed.
    pub async fn processed(&self, integration: &str, delivery: &str) -> Value {
        self.settle().await;
        let (status, list) = self
            .get(
                &format!("/api/v1/integrations/gitlab/{integration}/deliveries?limit=500"),
                &self.admin,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let found = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|d| d["id"] == delivery)
            .cloned()
            .expect("listed");
        assert!(!found["processed_at"].is_null(), "not processed: {found}");
        found
    }

    pub fn store(&self) -> &gantry_store::Store {
        &self.server.as_ref().expect("running").store
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let store = server.store.clone();
            server.wait().await.expect("clean shutdown");
            store.close().await;
        }
    }

    /// Sends a request; `token` is the bearer secret, `body` JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, token, bytes).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Sends `body` as it is; answers with the status and the body as JSON
    /// (or as a JSON string when it is not JSON).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates a key with the given roles (as the admin) and returns its secret.
    pub async fn key(&self, name: &str, roles: Value) -> String {
        let (status, body) = self
            .post(
                "/api/v1/api-keys",
                &self.admin,
                serde_json::json!({ "name": name, "roles": roles }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["secret"].as_str().expect("secret").to_owned()
    }

    pub async fn space(&self, name: &str, parent: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/spaces",
                &self.admin,
                serde_json::json!({ "name": name, "parent": parent }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }
}

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A simulated GitLab with the repository `infra/network` and the default
/// integration `main` on it.
pub struct Repo {
    pub sim: gantry_gitlab_sim::Sim,
    pub project: u64,
    pub token: String,
}

pub async fn repo(app: &TestApp) -> Repo {
    let sim = gantry_gitlab_sim::Sim::start().await.expect("sim");
    let bot = sim.add_bot("gantry-bot");
    let project = sim
        .add_maintained_project(&bot, "infra/network", "main")
        .expect("project");
    // The tests add the hooks they deliver through themselves (`hook`);
    // `hooks.rs` tests Gantry's own.
    let mut body = sim.integration_body(&bot, "Main", true);
    body["manage_hooks"] = serde_json::json!(false);
    let (status, created) = app
        .post("/api/v1/integrations/gitlab", &app.admin, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    Repo {
        sim,
        project,
        token: bot.token,
    }
}

impl Repo {
    /// Adds the project hook that delivers to `app`'s endpoint of the
    /// integration `main`, with its webhook secret.
    pub async fn hook(&self, app: &TestApp) {
        let (status, shown) = app
            .get("/api/v1/integrations/gitlab/main", &app.admin)
            .await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        self.sim.add_hook(
            self.project,
            &format!("{}/webhooks/gitlab/main", app.base),
            shown["webhook_secret"].as_str().expect("secret"),
        );
    }
}

/// A GitLab integration on a simulated GitLab, as a webhook sender sees it.
pub struct Hooked {
    /// Kept alive: the integration's GitLab.
    pub _sim: gantry_gitlab_sim::Sim,
    pub id: String,
    pub secret: String,
    pub url: String,
}

impl TestApp {
    /// Creates the integration `name` (in `root`) against a fresh simulator.
    pub async fn hooked(&self, name: &str) -> Hooked {
        let sim = gantry_gitlab_sim::Sim::start().await.expect("sim");
        let user = sim.add_user("gantry-bot");
        let token = sim.add_token(gantry_gitlab_sim::TokenSpec::new(user, &["api"]));
        let (status, created) = self
            .post(
                "/api/v1/integrations/gitlab",
                &self.admin,
                serde_json::json!({ "name": name, "api_host_url": sim.url(), "api_token": token }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().expect("id").to_owned();
        Hooked {
            _sim: sim,
            url: format!("{}/webhooks/gitlab/{id}", self.base),
            secret: created["webhook_secret"]
                .as_str()
                .expect("secret")
                .to_owned(),
            id,
        }
    }

    /// Posts a webhook with these headers; answers status and JSON.
    pub async fn webhook(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(url).body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// Stops the app, then fails if any of `secrets` is stored in plaintext:
/// on PostgreSQL in any row of any table (read as text), on SQLite anywhere
/// in the database file or its WAL.
pub async fn stop_and_assert_not_stored(app: TestApp, db: &Db, secrets: &[&str]) {
    if db.database_url.is_some() {
        let mut conn = app.store().conn().await.expect("conn");
        let tables: Vec<(String,)> = sqlx::query_as(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("tables");
        assert!(tables.len() > 3, "{tables:?}");
        for (table,) in tables {
            let rows: Vec<(String,)> =
                sqlx::query_as(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
                    .fetch_all(&mut *conn)
                    .await
                    .expect("rows");
            for (row,) in rows {
                for secret in secrets {
                    assert!(
                        !row.contains(secret),
                        "{table} holds a secret in plaintext: {row}"
                    );
                }
            }
        }
    }
    app.stop().await;
    if db.database_url.is_none() {
        for file in ["gantry.db", "gantry.db-wal"] {
            let bytes = std::fs::read(db.data_dir().join(file)).unwrap_or_default();
            for secret in secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{file} holds a secret in plaintext"
                );
            }
        }
    }
}

/// The `id`s of a list answer's items, in order.
pub fn ids(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["id"].as_str())
        .collect()
}

/// Asserts an error answer: its status, code, and that its message
/// contains `mentions`.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str, mentions: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}
