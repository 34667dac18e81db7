//! GitLab reached through something other than a direct connection: the
//! VCS agents of a pool, inside the network where GitLab is. The client
//! sends the same requests either way; a [`Tunnel`] carries them, and
//! [`forwardable`] is the one list of what may be carried.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that streams through a tunnel, either way.
pub type TunnelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub type TunnelFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<TunnelBody>, TunnelError>> + Send>>;

/// Carries requests to a GitLab that the server cannot dial. A request's
/// URI names the path and query as the GitLab base URL sees them
/// (`/api/v4/…`); the carrier decides where that base is.
pub trait Tunnel: Send + Sync {
    /// The pool's id, as errors name it.
    fn pool(&self) -> &str;
    fn send(&self, request: http::Request<TunnelBody>) -> TunnelFuture;
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no agent of VCS agent pool {0:?} is connected")]
    NoAgent(String),
    #[error("VCS agent pool {pool:?}: {message}")]
    Broken { pool: String, message: String },
}

/// A whole body in one piece.
pub fn full(bytes: impl Into<Bytes>) -> TunnelBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Any body, boxed for a tunnel.
pub fn boxed<B>(body: B) -> TunnelBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Sends `request` and reads the answer's body, `None` past `limit`.
pub(crate) async fn exchange(
    tunnel: &dyn Tunnel,
    request: http::Request<TunnelBody>,
    limit: usize,
) -> Result<(http::StatusCode, http::HeaderMap, Option<Bytes>), TunnelError> {
    let response = tunnel.send(request).await?;
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| TunnelError::Broken {
            pool: tunnel.pool().to_owned(),
            message: format!("the answer broke off: {error}"),
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                return Ok((parts.status, parts.headers, None));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok((parts.status, parts.headers, Some(Bytes::from(bytes))))
}

/// What a tunnelled request is, as the agent logs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathClass {
    /// `/api/v4/…`
    Api,
    /// `…/info/refs?service=git-upload-pack`
    GitRefs,
    /// `POST …/git-upload-pack`
    GitUploadPack,
}

impl PathClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::GitRefs => "git info/refs",
            Self::GitUploadPack => "git upload-pack",
        }
    }
}

/// Whether an agent may forward this request, and what it is: the GitLab
/// API, and git's smart-HTTP fetch (never a push, never the web UI).
/// `path` is relative to the GitLab base URL.
pub fn forwardable(method: &http::Method, path: &str, query: Option<&str>) -> Option<PathClass> {
    // A dot segment, plain or percent-encoded, could climb out of what
    // the list allows once the target resolves it.
    let dots = |segment: &str| {
        matches!(
            segment.to_ascii_lowercase().replace("%2e", ".").as_str(),
            "." | ".."
        )
    };
    if path.split('/').any(dots) {
        return None;
    }
    if path.starts_with("/api/v4/") {
        return Some(PathClass::Api);
    }
    let repository = |suffix: &str| {
        path.strip_suffix(suffix)
            .is_some_and(|repo| repo.len() > 1 && repo.starts_with('/'))
    };
    if *method == http::Method::GET
        && repository("/info/refs")
        && query == Some("service=git-upload-pack")
    {
        return Some(PathClass::GitRefs);
    }
    if *method == http::Method::POST && repository("/git-upload-pack") && query.is_none() {
        return Some(PathClass::GitUploadPack);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn only_the_api_and_git_fetches_are_forwardable() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            forwardable(&get, "/api/v4/projects/1", None),
            Some(PathClass::Api)
        );
        assert_eq!(
            forwardable(
                &post,
                "/api/v4/projects/1/statuses/abc",
                Some("state=running")
            ),
            Some(PathClass::Api)
        );
        assert_eq!(
            forwardable(
                &get,
                "/group/infra.git/info/refs",
                Some("service=git-upload-pack")
            ),
            Some(PathClass::GitRefs)
        );
        assert_eq!(
            forwardable(&post, "/group/infra.git/git-upload-pack", None),
            Some(PathClass::GitUploadPack)
        );
        for (method, path, query) in [
            (&get, "/users/sign_in", None),
            (
                &get,
                "/group/infra.git/info/refs",
                Some("service=git-receive-pack"),
            ),
            (&post, "/group/infra.git/git-receive-pack", None),
            (&get, "/group/infra.git/git-upload-pack", None),
            (&get, "/info/refs", Some("service=git-upload-pack")),
            (&get, "/api/v4/../users/sign_in", None),
            (&get, "/api/v4/projects/../../admin", None),
            (&get, "/api/v4/%2E%2e/users/sign_in", None),
            (&get, "/api/v3/projects", None),
            (&get, "/", None),
        ] {
            assert_eq!(forwardable(method, path, query), None, "{method} {path}");
        }
    }
}
