//! The parts of GitLab's API responses Gantry uses. Unknown fields are
//! ignored and optional ones may be missing or `null`, so responses of
//! older and newer GitLab versions parse alike.

use serde::Deserialize;

/// `GET /api/v4/personal_access_tokens/self` (GitLab 15.5+): the token
/// making the request. Project, group and service-account tokens answer in
/// the same shape.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct AccessTokenSelf {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub revoked: bool,
    /// `false` once expired or revoked.
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A date (`2026-12-31`) as GitLab gives it, or `null` for no expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// When the token was made (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub user_id: Option<u64>,
}

fn yes() -> bool {
    true
}

/// `GET /api/v4/user`: the user the token acts as.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CurrentUser {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `active`, `blocked`, `deactivated`, …
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub bot: Option<bool>,
}

/// `GET /api/v4/projects/:id`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: u64,
    pub path_with_namespace: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub http_url_to_repo: Option<String>,
}

/// `GET /api/v4/projects/:id/members/all/:user_id`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub username: String,
    /// 10 guest, 20 reporter, 30 developer, 40 maintainer, 50 owner.
    pub access_level: u8,
}

/// GitLab's Maintainer access level: what Gantry needs to manage hooks.
pub const MAINTAINER: u8 = 40;
