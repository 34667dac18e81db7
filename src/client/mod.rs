//! The client commands (`gantry me|space|api-key|audit|integration|stack|run
//! …`) against a server's API, with `GANTRY_URL` and `GANTRY_TOKEN`.
//! Answers print as aligned tables, or as the server's JSON with `--json`.
//! Secrets are read from a file or stdin, never from the command line, so
//! they stay out of shell history.
//!
//! Exit codes, for scripts: 0 done, 1 failed (the server failed, or a
//! followed run did not finish), 2 usage, 3 the API key was refused or
//! lacks the role, 4 not found, 5 the server refused the input (400, 409,
//! 413, 422), 6 the server cannot be reached.

mod admin;
mod modules;
pub mod output;
mod pools;
mod stacks;

use std::io::Read;
use std::path::Path;

use clap::Args;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

pub use admin::{
    ApiKeyCommand, AuditCommand, IntegrationCommand, SpaceCommand, api_key, audit, integration, me,
    space,
};
pub use modules::{ModuleCommand, module};
pub use pools::{PoolCommand, pool};
pub use stacks::{RunCommand, StackCommand, changes, run, stack};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Exit codes of the client commands.
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const AUTH: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const UNREACHABLE: u8 = 6;
}

/// Where the server is, the API key, and how to print.
#[derive(Args, Clone)]
pub struct Options {
    /// The server's URL.
    #[arg(long = "server", env = "GANTRY_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// An API key.
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true, global = true, value_parser = secret)]
    pub token: Option<SecretString>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An API key from the command line or the environment, held as a secret
/// from the start so that it never `Debug`-prints.
fn secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.trim().to_owned()))
}

/// A client command that did not succeed: the message for the user and
/// the exit code for scripts.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub type Outcome = Result<(), Failure>;

/// An authenticated connection to one server.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: SecretString,
    pub json: bool,
}

impl Client {
    pub fn new(options: &Options) -> Result<Self, Failure> {
        let Some(token) = options
            .token
            .clone()
            .filter(|token| !token.expose_secret().is_empty())
        else {
            return Err(Failure::new(
                exit::AUTH,
                "no API key: set GANTRY_TOKEN or pass --token (a new server writes its first admin key to <data-dir>/initial-admin-token)",
            ));
        };
        Ok(Self {
            http: reqwest::Client::new(),
            base: options.url.trim_end_matches('/').to_owned(),
            token,
            json: options.json,
        })
    }

    /// Starts a request with the API key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.expose_secret())
    }

    /// Sends a request and returns the answer, or a failure that says what
    /// went wrong and what to do.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let response = request
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let message = answer["error"]["message"]
            .as_str()
            .map_or_else(|| format!("the server answered {status}"), str::to_owned);
        Err(refusal(status, &message, request_id.as_deref()))
    }

    /// Sends a request with an optional JSON body and returns the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self.send(request).await?;
        response.json().await.map_err(|error| {
            Failure::new(
                exit::FAILED,
                format!("the server's answer is not the JSON expected: {error}"),
            )
        })
    }

    /// A run's log so far, as the plain text the API serves.
    pub async fn log(&self, run: &str) -> Result<String, Failure> {
        let request = self.request(Method::GET, &format!("/api/v1/runs/{run}/logs"));
        let response = self.send(request).await?;
        response
            .text()
            .await
            .map_err(|error| self.unreachable(&error))
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub fn unreachable(&self, error: &reqwest::Error) -> Failure {
        let mut cause: &dyn std::error::Error = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        Failure::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the Gantry server at {} ({cause}); is it running? Set GANTRY_URL or pass --server",
                self.base
            ),
        )
    }
}

/// The failure for an error answer.
fn refusal(status: StatusCode, message: &str, request_id: Option<&str>) -> Failure {
    match status {
        StatusCode::UNAUTHORIZED => Failure::new(
            exit::AUTH,
            format!(
                "the server refused the API key (401): {message}; check GANTRY_TOKEN or --token"
            ),
        ),
        StatusCode::FORBIDDEN => Failure::new(
            exit::AUTH,
            format!("not allowed (403): {message}; `gantry me` shows the key's roles"),
        ),
        StatusCode::NOT_FOUND => {
            Failure::new(exit::NOT_FOUND, format!("not found (404): {message}"))
        }
        StatusCode::BAD_REQUEST
        | StatusCode::CONFLICT
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => Failure::new(
            exit::REFUSED,
            format!("refused ({}): {message}", status.as_u16()),
        ),
        _ => Failure::new(
            exit::FAILED,
            format!(
                "the server failed ({status}): {message}{}",
                request_id.map_or_else(String::new, |id| format!(
                    "; its log has the details under request id {id}"
                ))
            ),
        ),
    }
}

/// `?limit=…&cursor=…&…` for the given pairs that are set.
pub fn query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", url_encode(v))))
        .collect();
    if set.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", set.join("&"))
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Paging flags of every list command.
#[derive(Args, Clone)]
pub struct Page {
    /// At most this many (1 to 500; default 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

impl Page {
    pub fn pairs(&self) -> [(&'static str, Option<String>); 2] {
        [
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ]
    }
}

/// Reads a secret from a file, or from stdin for `-`.
pub fn read_secret(path: &Path, what: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(path).map(|read| text = read)
    };
    read.map_err(|error| {
        Failure::new(
            exit::FAILED,
            format!("cannot read the {what} from {}: {error}", path.display()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Failure::new(
            exit::REFUSED,
            format!("the {what} in {} is empty", path.display()),
        ));
    }
    Ok(text)
}

/// `NAME=VALUE` items as a JSON object.
pub fn pairs(items: &[String], what: &str) -> Result<Map<String, Value>, Failure> {
    let mut out = Map::new();
    for item in items {
        let Some((name, value)) = item.split_once('=') else {
            return Err(Failure::new(
                exit::REFUSED,
                format!("{what} {item:?} is not NAME=VALUE"),
            ));
        };
        out.insert(name.trim().to_owned(), json!(value));
    }
    Ok(out)
}

pub fn insert_some<T: Into<Value>>(body: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        body.insert(key.to_owned(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_encode_their_values_and_skip_unset_ones() {
        assert_eq!(
            query(
                "/api/v1/x",
                &[
                    ("limit", Some("5".into())),
                    ("cursor", None),
                    ("event", Some("Push Hook".into()))
                ]
            ),
            "/api/v1/x?limit=5&event=Push%20Hook"
        );
        assert_eq!(query("/api/v1/x", &[("cursor", None)]), "/api/v1/x");
    }

    #[test]
    fn error_answers_map_to_exit_codes_that_say_what_to_do() {
        let cases = [
            (StatusCode::UNAUTHORIZED, exit::AUTH, "check GANTRY_TOKEN"),
            (StatusCode::FORBIDDEN, exit::AUTH, "gantry me"),
            (
                StatusCode::NOT_FOUND,
                exit::NOT_FOUND,
                "not found (404): no",
            ),
            (StatusCode::CONFLICT, exit::REFUSED, "refused (409)"),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                exit::REFUSED,
                "refused (422)",
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                exit::FAILED,
                "request id r1",
            ),
        ];
        for (status, code, says) in cases {
            let failure = refusal(status, "no", Some("r1"));
            assert_eq!(failure.code, code, "{status}");
            assert!(
                failure.message.contains(says),
                "{status}: {}",
                failure.message
            );
        }
    }
}
