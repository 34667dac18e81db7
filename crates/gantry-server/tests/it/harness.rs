use std::path::PathBuf;
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

impl TestApp {
    pub async fn start(db: &Db) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let server = gantry_server::start(db.config(), None, async {
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
