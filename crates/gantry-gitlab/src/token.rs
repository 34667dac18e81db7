//! The rules of the token check that runs when an integration is created
//! or its token changes: what GitLab said about the token becomes either
//! the facts Gantry keeps (`scopes`, `expires_at`, `user`) with warnings,
//! or a refusal that says what is wrong and what to do.

use time::Date;
use time::format_description::well_known::Iso8601;

use crate::client::{GitLab, GitLabError};
use crate::types::{AccessTokenSelf, CurrentUser};

/// A token expiring within this many days is accepted with a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// What Gantry keeps about an accepted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    /// Empty when GitLab is too old to tell (no `/personal_access_tokens/self`).
    pub scopes: Vec<String>,
    /// As GitLab gives it: a date such as `2026-12-31`, or `None`.
    pub expires_at: Option<String>,
    pub user_id: u64,
    pub username: String,
    pub warnings: Vec<String>,
}

/// Why a token is refused. Each message says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error(
        "GitLab rejected the API token (401): it is wrong, expired or revoked; create a new token with the `api` scope"
    )]
    Rejected,
    #[error("the API token is revoked; create a new token with the `api` scope")]
    Revoked,
    #[error(
        "the API token is no longer active (it expired on {0}); create a new token with the `api` scope"
    )]
    Expired(String),
    #[error("the API token is not active; create a new token with the `api` scope")]
    Inactive,
    #[error(
        "the API token lacks the `api` scope (it has: {0}); create a token with the `api` scope"
    )]
    MissingApiScope(String),
    #[error("the token's user {0:?} is {1} in GitLab; use a token of an active user")]
    UserNotActive(String, String),
}

/// Why the token check did not accept a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenCheckError {
    /// GitLab answered, and the token is not fit for Gantry.
    #[error(transparent)]
    Refused(#[from] TokenRefused),
    /// GitLab could not be asked (down, unreachable, rate limiting, …).
    #[error(transparent)]
    GitLab(GitLabError),
}

/// Asks GitLab about the client's token (`/personal_access_tokens/self`,
/// then `/user`) and judges the answers with [`judge`].
pub async fn check(client: &GitLab, today: Date) -> Result<TokenFacts, TokenCheckError> {
    let refused = |error: GitLabError| match error {
        GitLabError::Unauthorized { .. } => TokenCheckError::Refused(TokenRefused::Rejected),
        other => TokenCheckError::GitLab(other),
    };
    let token_self = gitlab::api::personal_access_tokens::PersonalAccessTokenSelf::builder()
        .build()
        .map_err(|error| TokenCheckError::GitLab(GitLabError::Request(error.to_string())))?;
    let token: Option<AccessTokenSelf> = match client.query(&token_self).await {
        Ok(token) => Some(token),
        // GitLab before 15.5 has no such endpoint.
        Err(GitLabError::NotFound { .. }) => None,
        Err(error) => return Err(refused(error)),
    };
    let current_user = gitlab::api::users::CurrentUser::builder()
        .build()
        .map_err(|error| TokenCheckError::GitLab(GitLabError::Request(error.to_string())))?;
    let user: CurrentUser = client.query(&current_user).await.map_err(refused)?;
    Ok(judge(token.as_ref(), &user, today)?)
}

/// Judges a token from GitLab's answers: `token` is the answer of
/// `/personal_access_tokens/self`, or `None` when that endpoint does not
/// exist (GitLab before 15.5); `user` is the answer of `/user`; `today`
/// is the date at the server.
pub fn judge(
    token: Option<&AccessTokenSelf>,
    user: &CurrentUser,
    today: Date,
) -> Result<TokenFacts, TokenRefused> {
    if let Some(state) = user.state.as_deref()
        && state != "active"
    {
        return Err(TokenRefused::UserNotActive(
            user.username.clone(),
            state.to_owned(),
        ));
    }
    let mut warnings = Vec::new();
    let Some(token) = token else {
        warnings.push(
            "this GitLab does not offer /personal_access_tokens/self, so the token's scopes and expiry could not be \
             checked; make sure it has the `api` scope"
                .to_owned(),
        );
        return Ok(TokenFacts {
            scopes: Vec::new(),
            expires_at: None,
            user_id: user.id,
            username: user.username.clone(),
            warnings,
        });
    };
    if token.revoked {
        return Err(TokenRefused::Revoked);
    }
    let expires = token
        .expires_at
        .as_deref()
        .and_then(|d| Date::parse(d, &Iso8601::DATE).ok());
    if !token.active {
        return Err(match (&token.expires_at, expires) {
            (Some(raw), Some(date)) if date <= today => TokenRefused::Expired(raw.clone()),
            _ => TokenRefused::Inactive,
        });
    }
    if !token.scopes.iter().any(|scope| scope == "api") {
        let scopes = if token.scopes.is_empty() {
            "none".to_owned()
        } else {
            token.scopes.join(", ")
        };
        return Err(TokenRefused::MissingApiScope(scopes));
    }
    if let (Some(raw), Some(date)) = (&token.expires_at, expires) {
        let days = (date - today).whole_days();
        if days <= EXPIRY_WARNING_DAYS {
            warnings.push(format!(
                "the API token expires on {raw} (in {days} days); rotate it before then, or GitLab events will stop \
                 turning into runs"
            ));
        }
    }
    Ok(TokenFacts {
        scopes: token.scopes.clone(),
        expires_at: token.expires_at.clone(),
        user_id: user.id,
        username: user.username.clone(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    fn token(scopes: &[&str], expires_at: Option<&str>) -> AccessTokenSelf {
        AccessTokenSelf {
            id: 1,
            name: Some("gantry".into()),
            revoked: false,
            active: true,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: expires_at.map(str::to_owned),
            created_at: None,
            user_id: Some(7),
        }
    }

    fn user() -> CurrentUser {
        CurrentUser {
            id: 7,
            username: "deployer".into(),
            name: None,
            state: Some("active".into()),
            bot: None,
        }
    }

    const TODAY: Date = date!(2026 - 11 - 22);

    #[test]
    fn a_good_token_is_kept_with_its_facts() {
        let facts = judge(
            Some(&token(&["api", "read_user"], Some("2027-06-01"))),
            &user(),
            TODAY,
        );
        assert_eq!(
            facts,
            Ok(TokenFacts {
                scopes: vec!["api".into(), "read_user".into()],
                expires_at: Some("2027-06-01".into()),
                user_id: 7,
                username: "deployer".into(),
                warnings: vec![],
            })
        );
    }

    #[test]
    fn expiry_within_30_days_warns() {
        let facts =
            judge(Some(&token(&["api"], Some("2026-12-22"))), &user(), TODAY).expect("accepted");
        assert_eq!(facts.warnings.len(), 1);
        assert!(
            facts.warnings[0].contains("2026-12-22") && facts.warnings[0].contains("30 days"),
            "{:?}",
            facts.warnings
        );
        let later =
            judge(Some(&token(&["api"], Some("2026-12-23"))), &user(), TODAY).expect("accepted");
        assert!(later.warnings.is_empty());
    }

    #[test]
    fn refusals_say_which_and_what_to_do() {
        let read_only = judge(
            Some(&token(&["read_api", "read_repository"], None)),
            &user(),
            TODAY,
        );
        assert_eq!(
            read_only,
            Err(TokenRefused::MissingApiScope(
                "read_api, read_repository".into()
            ))
        );
        assert!(
            read_only
                .err()
                .map(|e| e.to_string())
                .is_some_and(|m| m.contains("create a token with the `api` scope"))
        );

        let revoked = AccessTokenSelf {
            revoked: true,
            active: false,
            ..token(&["api"], None)
        };
        assert_eq!(
            judge(Some(&revoked), &user(), TODAY),
            Err(TokenRefused::Revoked)
        );

        let expired = AccessTokenSelf {
            active: false,
            ..token(&["api"], Some("2026-11-01"))
        };
        assert_eq!(
            judge(Some(&expired), &user(), TODAY),
            Err(TokenRefused::Expired("2026-11-01".into()))
        );

        let blocked = CurrentUser {
            state: Some("blocked".into()),
            ..user()
        };
        assert!(matches!(
            judge(Some(&token(&["api"], None)), &blocked, TODAY),
            Err(TokenRefused::UserNotActive(..))
        ));
    }

    #[test]
    fn older_gitlab_without_the_token_endpoint_warns_that_scopes_are_unchecked() {
        let facts = judge(None, &user(), TODAY).expect("accepted");
        assert!(facts.scopes.is_empty());
        assert!(facts.warnings[0].contains("scopes and expiry could not be checked"));
    }
}
