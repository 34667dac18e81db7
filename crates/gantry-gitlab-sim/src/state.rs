//! The simulator's memory: users, tokens, projects and what was written to
//! them, scripted faults, and the request log.

use std::collections::{HashMap, VecDeque};

use serde_json::{Value, json};

use crate::Fault;

/// GitLab's access levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AccessLevel {
    Guest = 10,
    Reporter = 20,
    Developer = 30,
    Maintainer = 40,
    Owner = 50,
}

/// An access token to create.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub user_id: u64,
    pub name: String,
    pub scopes: Vec<String>,
    /// A date such as `2026-12-31`, or `None` for no expiry.
    pub expires_at: Option<String>,
    /// `false` for an expired token (GitLab answers 401 to it).
    pub active: bool,
}

impl TokenSpec {
    /// An active, non-expiring token of `user_id` with these scopes.
    pub fn new(user_id: u64, scopes: &[&str]) -> Self {
        Self {
            user_id,
            name: "gantry".to_owned(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            expires_at: None,
            active: true,
        }
    }

    pub fn expiring(mut self, date: &str) -> Self {
        self.expires_at = Some(date.to_owned());
        self
    }
}

/// One API request as the simulator saw it. The token is never kept.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// The path as sent, still percent-encoded.
    pub path: String,
    pub query: Option<String>,
    /// `private-token`, `bearer`, `basic` or `none`: how a token came.
    pub auth: &'static str,
    pub status: u16,
    /// The `Via` header: which proxies the request came through.
    pub via: Option<String>,
}

/// A merge request note.
#[derive(Clone, Debug)]
pub struct Note {
    pub id: u64,
    pub body: String,
    pub author_id: u64,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) struct User {
    pub id: u64,
    pub username: String,
    pub state: String,
}

pub(crate) struct Token {
    pub id: u64,
    pub spec: TokenSpec,
    pub revoked: bool,
    /// The id of the first token of its rotation chain.
    pub family: u64,
    /// Revoked because it was rotated (its reuse revokes the family).
    pub rotated: bool,
}

pub(crate) struct MergeRequest {
    pub id: u64,
    pub iid: u64,
    pub title: String,
    pub source_branch: String,
    pub target_branch: String,
    pub sha: String,
    pub notes: Vec<Note>,
}

pub(crate) struct Hook {
    pub id: u64,
    pub url: String,
    pub token: Option<String>,
    /// Every event flag GitLab has (`push_events`, `issues_events`, …).
    pub events: std::collections::BTreeMap<&'static str, bool>,
    pub enable_ssl_verification: bool,
    pub created_at: String,
}

/// The event flags of a project hook, and GitLab's defaults for a new one
/// (only `push_events` is on).
pub(crate) const HOOK_EVENTS: [(&str, bool); 12] = [
    ("push_events", true),
    ("tag_push_events", false),
    ("merge_requests_events", false),
    ("issues_events", false),
    ("confidential_issues_events", false),
    ("note_events", false),
    ("confidential_note_events", false),
    ("job_events", false),
    ("pipeline_events", false),
    ("wiki_page_events", false),
    ("deployment_events", false),
    ("releases_events", false),
];

impl Hook {
    pub fn wants(&self, event: &str) -> bool {
        self.events.get(event).copied().unwrap_or(false)
    }
}

pub(crate) struct Project {
    pub id: u64,
    pub path: String,
    pub default_branch: String,
    pub members: HashMap<u64, AccessLevel>,
    pub hooks: Vec<Hook>,
    pub statuses: Vec<Value>,
    /// Every status change GitLab accepted: (sha, name, state), in order.
    pub status_history: Vec<StatusEntry>,
    pub merge_requests: Vec<MergeRequest>,
    pub deployments: Vec<Value>,
}

pub(crate) struct State {
    next_id: u64,
    pub users: Vec<User>,
    pub tokens: HashMap<String, Token>,
    pub projects: Vec<Project>,
    pub token_self_endpoint: bool,
    pub faults: VecDeque<Fault>,
    /// Paths (by substring) answered with 503 until the instant.
    pub outages: Vec<(String, std::time::Instant)>,
    pub log: Vec<LoggedRequest>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            next_id: 1,
            users: Vec::new(),
            tokens: HashMap::new(),
            projects: Vec::new(),
            token_self_endpoint: true,
            faults: VecDeque::new(),
            outages: Vec::new(),
            log: Vec::new(),
        }
    }
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl State {
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn add_user(&mut self, username: &str) -> u64 {
        let id = self.next_id();
        self.users.push(User {
            id,
            username: username.to_owned(),
            state: "active".to_owned(),
        });
        id
    }

    pub fn set_user_state(&mut self, user_id: u64, state: &str) {
        if let Some(user) = self.users.iter_mut().find(|user| user.id == user_id) {
            user.state = state.to_owned();
        }
    }

    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.iter().find(|user| user.id == id)
    }

    pub fn add_token(&mut self, spec: TokenSpec) -> String {
        let id = self.next_id();
        let secret = format!("glpat-sim{id:04}{}", uuid_like(id));
        self.tokens.insert(
            secret.clone(),
            Token {
                id,
                spec,
                revoked: false,
                family: id,
                rotated: false,
            },
        );
        secret
    }

    pub fn revoke_token(&mut self, secret: &str) {
        if let Some(token) = self.tokens.get_mut(secret) {
            token.revoked = true;
        }
    }

    pub fn add_project(&mut self, path: &str, default_branch: &str) -> u64 {
        let id = self.next_id();
        self.projects.push(Project {
            id,
            path: path.to_owned(),
            default_branch: default_branch.to_owned(),
            members: HashMap::new(),
            hooks: Vec::new(),
            statuses: Vec::new(),
            status_history: Vec::new(),
            merge_requests: Vec::new(),
            deployments: Vec::new(),
        });
        id
    }

    pub fn project(&self, id: u64) -> Option<&Project> {
        self.projects.iter().find(|project| project.id == id)
    }

    pub fn project_mut(&mut self, id: u64) -> Option<&mut Project> {
        self.projects.iter_mut().find(|project| project.id == id)
    }

    /// By numeric id or by full path, as `:id` in GitLab's URLs.
    pub fn find_project(&self, id_or_path: &str) -> Option<u64> {
        self.projects
            .iter()
            .find(|project| project.id.to_string() == id_or_path || project.path == id_or_path)
            .map(|project| project.id)
    }

    pub fn add_member(&mut self, project_id: u64, user_id: u64, level: AccessLevel) {
        if let Some(project) = self.project_mut(project_id) {
            project.members.insert(user_id, level);
        }
    }

    pub fn open_merge_request(
        &mut self,
        project_id: u64,
        source_branch: &str,
        target_branch: &str,
        title: &str,
        sha: &str,
    ) -> Option<u64> {
        let id = self.next_id();
        let project = self.project_mut(project_id)?;
        let iid = project.merge_requests.len() as u64 + 1;
        project.merge_requests.push(MergeRequest {
            id,
            iid,
            title: title.to_owned(),
            source_branch: source_branch.to_owned(),
            target_branch: target_branch.to_owned(),
            sha: sha.to_owned(),
            notes: Vec::new(),
        });
        Some(iid)
    }

    pub fn add_hook(&mut self, project_id: u64, url: &str, token: Option<&str>) -> Option<u64> {
        let id = self.next_id();
        let project = self.project_mut(project_id)?;
        let mut events: std::collections::BTreeMap<&'static str, bool> =
            HOOK_EVENTS.into_iter().collect();
        // What a person ticks for Gantry.
        for event in ["push_events", "tag_push_events", "merge_requests_events"] {
            events.insert(event, true);
        }
        project.hooks.push(Hook {
            id,
            url: url.to_owned(),
            token: token.map(str::to_owned),
            events,
            enable_ssl_verification: true,
            created_at: now(),
        });
        Some(id)
    }

    pub fn statuses_of(&self, project_id: u64, sha: &str) -> Vec<Value> {
        self.project(project_id)
            .map(|project| {
                project
                    .statuses
                    .iter()
                    .filter(|status| status["sha"] == sha)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn notes_of(&self, project_id: u64, iid: u64) -> Vec<Note> {
        self.project(project_id)
            .and_then(|project| project.merge_requests.iter().find(|mr| mr.iid == iid))
            .map(|mr| mr.notes.clone())
            .unwrap_or_default()
    }

    pub fn deployments_of(&self, project_id: u64) -> Vec<Value> {
        self.project(project_id)
            .map(|project| project.deployments.clone())
            .unwrap_or_default()
    }

    pub fn user_json(&self, user_id: u64, base_url: &str) -> Value {
        let Some(user) = self.user(user_id) else {
            return Value::Null;
        };
        json!({
            "id": user.id,
            "username": user.username,
            "name": user.username,
            "state": user.state,
            "avatar_url": null,
            "web_url": format!("{base_url}/{}", user.username),
        })
    }
}

/// A token-looking suffix that differs per id, so tokens are distinct and
/// recognisable in leak scans.
fn uuid_like(id: u64) -> String {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = String::new();
    for _ in 0..16 {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        out.push(char::from(
            b"abcdefghijkmnpqrstuvwxyz23456789"[(x % 32) as usize],
        ));
    }
    out
}

/// One accepted commit status write, as the history of a status keeps it.
pub struct StatusEntry {
    pub sha: String,
    pub reference: Option<String>,
    pub name: String,
    pub state: String,
}
