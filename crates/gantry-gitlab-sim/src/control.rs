//! What a test does to GitLab behind Gantry's back: outages, hooks edited
//! or deleted by hand, tokens revoked elsewhere or with a new expiry, and
//! what GitLab holds that its API does not show.

use std::time::Duration;

use serde_json::Value;

use crate::{Sim, api, state};

impl Sim {
    /// Answers every request whose path contains `path_contains` (the
    /// git endpoints included) with 503 for the next `lasting`, as GitLab
    /// does while it is down for maintenance.
    pub fn outage(&self, path_contains: &str, lasting: Duration) {
        let until = std::time::Instant::now() + lasting;
        self.shared
            .lock()
            .outages
            .push((path_contains.to_owned(), until));
    }

    /// The hooks of a project as GitLab stores them, `token` included
    /// (which GitLab's API never shows).
    pub fn hooks(&self, project_id: u64) -> Vec<Value> {
        let state = self.shared.lock();
        let Some(project) = state.project(project_id) else {
            return Vec::new();
        };
        project
            .hooks
            .iter()
            .map(|hook| {
                let mut value = serde_json::json!({
                    "id": hook.id, "url": hook.url, "token": hook.token,
                    "enable_ssl_verification": hook.enable_ssl_verification,
                });
                for (event, on) in &hook.events {
                    value[*event] = serde_json::json!(on);
                }
                value
            })
            .collect()
    }

    /// Deletes a hook, as a person does in GitLab's settings.
    pub fn delete_hook(&self, project_id: u64, hook_id: u64) {
        if let Some(project) = self.shared.lock().project_mut(project_id) {
            project.hooks.retain(|hook| hook.id != hook_id);
        }
    }

    /// Sets one event flag of a hook (`issues_events`, …), as a person
    /// editing it in GitLab does.
    pub fn edit_hook(&self, project_id: u64, hook_id: u64, event: &str, on: bool) {
        let mut state = self.shared.lock();
        let hook = state
            .project_mut(project_id)
            .and_then(|project| project.hooks.iter_mut().find(|hook| hook.id == hook_id));
        if let Some(hook) = hook
            && let Some((name, _)) = state::HOOK_EVENTS.iter().find(|(name, _)| *name == event)
        {
            hook.events.insert(name, on);
        }
    }

    /// Whether GitLab accepts the token now.
    pub fn token_active(&self, secret: &str) -> bool {
        api::caller_for_token(&self.shared, secret).is_some()
    }

    /// The tokens of a user that GitLab accepts now.
    pub fn active_tokens(&self, user_id: u64) -> Vec<String> {
        let secrets: Vec<String> = {
            let state = self.shared.lock();
            state
                .tokens
                .iter()
                .filter(|(_, token)| token.spec.user_id == user_id)
                .map(|(secret, _)| secret.clone())
                .collect()
        };
        secrets
            .into_iter()
            .filter(|s| self.token_active(s))
            .collect()
    }

    /// Moves a token's expiry (`None`: never).
    pub fn set_token_expiry(&self, secret: &str, expires_at: Option<&str>) {
        if let Some(token) = self.shared.lock().tokens.get_mut(secret) {
            token.spec.expires_at = expires_at.map(str::to_owned);
        }
    }

    /// Ends every outage now.
    pub fn end_outages(&self) {
        self.shared.lock().outages.clear();
    }

    /// Points tag `name` at `sha` (`None` deletes it), as a `git push` of
    /// the tag does; `(before, after)` for [`Sim::tag_push_payload`].
    pub fn set_tag(
        &self,
        project_id: u64,
        name: &str,
        sha: Option<&str>,
    ) -> Result<(String, String), crate::SimError> {
        let (path, _) = self.project_path(project_id)?;
        let before = crate::git::set_tag(&self.shared.root, &path, name, sha)?;
        Ok((before, sha.unwrap_or(crate::git::ZEROS).to_owned()))
    }

    /// The `Tag Push Hook` payload GitLab sends for tag `name` moving from
    /// `before` to `after`.
    pub fn tag_push_payload(
        &self,
        project_id: u64,
        name: &str,
        before: &str,
        after: &str,
    ) -> Result<Value, crate::SimError> {
        let (path, default_branch) = self.project_path(project_id)?;
        let deleted = after == crate::git::ZEROS;
        Ok(serde_json::json!({
            "object_kind": "tag_push", "event_name": "tag_push",
            "before": before, "after": after, "ref": format!("refs/tags/{name}"),
            "checkout_sha": if deleted { Value::Null } else { Value::from(after) },
            "user_id": 1, "user_name": "Sim User", "user_username": "sim",
            "project_id": project_id,
            "project": {
                "id": project_id, "path_with_namespace": path, "default_branch": default_branch,
                "web_url": format!("{}/{path}", self.shared.url),
            },
            "commits": [], "total_commits_count": 0,
        }))
    }
}
