//! A small client of a running server's API, for the tests.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// The first admin key a server wrote into its data directory.
pub fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("initial-admin-token"))
        .expect("admin token")
        .trim()
        .to_owned()
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    pub async fn text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text")
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.send(reqwest::Method::POST, path, body).await;
        assert!(status.is_success(), "POST {path}: {status} {answer}");
        answer
    }

    pub async fn patch(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.send(reqwest::Method::PATCH, path, body).await;
        assert!(status.is_success(), "PATCH {path}: {status} {answer}");
        answer
    }

    /// Polls the run until `wanted` holds of it.
    pub async fn wait_for(&self, run: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..3000 {
            last = self.get(&format!("/api/v1/runs/{run}")).await;
            if wanted(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = self.text(&format!("/api/v1/runs/{run}/logs")).await;
        panic!("run {run} never got there: {last}\n{log}");
    }
}
