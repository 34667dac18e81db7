//! The stylesheet and script of the web UI, embedded in the binary and
//! served under a name that holds a hash of their content, so browsers may
//! cache them for a year and still never see a stale one.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub struct Asset {
    content_type: &'static str,
    body: &'static str,
    url: LazyLock<String>,
}

impl Asset {
    /// `/assets/<stem>.<hash of the body>.<extension>`.
    pub fn url(&'static self) -> &'static str {
        &self.url
    }
}

fn hashed(stem: &str, extension: &str, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("/assets/{stem}.{hash}.{extension}")
}

const CSS_BODY: &str = include_str!("../../assets/app.css");
const JS_BODY: &str = include_str!("../../assets/app.js");

pub static CSS: Asset = Asset {
    content_type: "text/css; charset=utf-8",
    body: CSS_BODY,
    url: LazyLock::new(|| hashed("app", "css", CSS_BODY)),
};

pub static JS: Asset = Asset {
    content_type: "text/javascript; charset=utf-8",
    body: JS_BODY,
    url: LazyLock::new(|| hashed("app", "js", JS_BODY)),
};

/// `GET /assets/{name}`: only the current hashed names exist.
pub async fn serve(Path(name): Path<String>) -> Response {
    let path = format!("/assets/{name}");
    let Some(asset) = [&CSS, &JS].into_iter().find(|asset| asset.url() == path) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
