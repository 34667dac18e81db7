//! "Source code": the GitLab integrations a caller can see, the set-up
//! form, and one integration's details with its delivery log. Admins also
//! see the webhook endpoint and secret, and may rotate it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use gantry_domain::Role;
use gantry_store::spaces::ROOT;
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::deliveries::{self, DeliveryListParams, DeliveryView};
use crate::routes::integrations::hooks::{self, HookView};
use crate::routes::integrations::{self, CreateIntegration, IntegrationView, RotateParams};
use crate::state::AppState;
use crate::views::ListParams;
use crate::web::markdown;
use crate::web::page::{Layout, OrPage, PageResult, failure, render, see_other};
use crate::web::session::{Posted, Viewer};

#[derive(Template)]
#[template(path = "integrations.html")]
struct ListPage {
    layout: Layout,
    integrations: Vec<IntegrationView>,
    may_create: bool,
}

/// Whether the caller is an admin somewhere, and so may set up an
/// integration (the form's `space` must be one it administers).
fn administers_some_space(principal: &Principal) -> bool {
    principal
        .roles
        .iter()
        .any(|grant| grant.role == Role::Admin)
}

pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let params = ListParams {
        cursor: None,
        limit: Some(500),
    };
    let list = integrations::list(State(state), viewer.principal.clone(), ApiQuery(params))
        .await
        .or_page(&viewer)?
        .0;
    let page = ListPage {
        layout: Layout::new("Source code", Some(&viewer)),
        integrations: list.items,
        may_create: administers_some_space(&viewer.principal),
    };
    Ok(render(StatusCode::OK, &page))
}

/// The set-up form's fields, named as in the API.
#[derive(Deserialize, Default)]
pub struct SetUpForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    space: String,
    /// A checkbox: present when ticked.
    default: Option<String>,
    #[serde(default)]
    api_host_url: String,
    #[serde(default)]
    user_facing_host_url: String,
    #[serde(default)]
    api_token: String,
    /// Comma separated.
    #[serde(default)]
    labels: String,
    #[serde(default)]
    description: String,
}

/// The fields of the form, in order; an error is shown next to the first
/// one its message names.
const FIELDS: [&str; 8] = [
    "name",
    "space",
    "default",
    "api_host_url",
    "user_facing_host_url",
    "api_token",
    "labels",
    "description",
];

#[derive(Template)]
#[template(path = "integration_new.html")]
struct SetUpPage {
    layout: Layout,
    form: SetUpForm,
    /// The field the error belongs to; `None` shows it above the form.
    error_field: Option<&'static str>,
    error: Option<String>,
}

impl SetUpPage {
    fn error_for(&self, field: &str) -> Option<&str> {
        match (self.error_field, &self.error) {
            (Some(f), Some(message)) if f == field => Some(message),
            _ => None,
        }
    }

    fn general_error(&self) -> Option<&str> {
        match (self.error_field, &self.error) {
            (None, Some(message)) => Some(message),
            _ => None,
        }
    }

    fn is_default(&self) -> bool {
        self.form.default.is_some()
    }
}

pub async fn new_form(viewer: Viewer) -> Response {
    let page = SetUpPage {
        layout: Layout::new("Set up a GitLab integration", Some(&viewer)),
        form: SetUpForm {
            space: ROOT.to_owned(),
            ..SetUpForm::default()
        },
        error_field: None,
        error: None,
    };
    render(StatusCode::OK, &page)
}

pub async fn create(State(state): State<AppState>, posted: Posted<SetUpForm>) -> Response {
    let Posted { viewer, mut form } = posted;
    let blank_to_none = |value: &str| {
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_owned())
    };
    let body = CreateIntegration {
        name: form.name.clone(),
        space: blank_to_none(&form.space),
        default: form.default.is_some(),
        api_host_url: form.api_host_url.clone(),
        user_facing_host_url: blank_to_none(&form.user_facing_host_url),
        api_token: SecretString::from(std::mem::take(&mut form.api_token)),
        labels: form
            .labels
            .split(',')
            .map(str::trim)
            .filter(|label| !label.is_empty())
            .map(str::to_owned)
            .collect(),
        description: form.description.clone(),
        manage_hooks: None,
        rotate_token_days_before_expiry: None,
    };
    match integrations::create(State(state), viewer.principal.clone(), ApiJson(body)).await {
        Ok((_, created)) => see_other(&format!("/integrations/{}", created.0.id)),
        Err(error) => form_error(&viewer, form, &error),
    }
}

/// The form again, with what was typed (never the token) and the API's
/// message next to the field it names.
fn form_error(viewer: &Viewer, form: SetUpForm, error: &ApiError) -> Response {
    let message = error.message().to_owned();
    let error_field = FIELDS
        .into_iter()
        .find(|field| message.contains(&format!("`{field}`")));
    let page = SetUpPage {
        layout: Layout::new("Set up a GitLab integration", Some(viewer)),
        form,
        error_field,
        error: Some(message),
    };
    render(error.status(), &page)
}

#[derive(Template)]
#[template(path = "integration.html")]
struct DetailsPage {
    layout: Layout,
    integration: IntegrationView,
    description: String,
    hooks: Vec<HookView>,
    deliveries: Vec<DeliveryView>,
}

pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let principal = &viewer.principal;
    let integration = integrations::show(State(state.clone()), principal.clone(), Path(id.clone()))
        .await
        .or_page(&viewer)?
        .0;
    let params = DeliveryListParams {
        cursor: None,
        limit: Some(50),
        status: None,
        event: None,
    };
    // Only callers with `read` on its space see the delivery log (the
    // default integration is listed to everyone).
    let deliveries = match deliveries::list(
        State(state.clone()),
        principal.clone(),
        Path(id),
        ApiQuery(params),
    )
    .await
    {
        Ok(list) => list.0.items,
        Err(error) if error.status() == StatusCode::FORBIDDEN => Vec::new(),
        Err(error) => return Err(failure(Some(&viewer), error).into()),
    };
    // Admins see the project hooks Gantry keeps, beside the secret.
    let hooks = if integration.webhook_secret.is_some() {
        let listed = hooks::list(
            State(state.clone()),
            principal.clone(),
            Path(integration.id.clone()),
        )
        .await
        .or_page(&viewer)?;
        listed.0.items
    } else {
        Vec::new()
    };
    let page = DetailsPage {
        layout: Layout::new(integration.name.clone(), Some(&viewer)),
        description: markdown::render(&integration.description),
        integration,
        hooks,
        deliveries,
    };
    Ok(render(StatusCode::OK, &page))
}

pub async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: Posted<serde::de::IgnoredAny>,
) -> Response {
    let params = RotateParams {
        grace_seconds: None,
    };
    let rotated = integrations::rotate_secret(
        State(state),
        posted.viewer.principal.clone(),
        Path(id.clone()),
        ApiQuery(params),
    )
    .await;
    match rotated {
        Ok(_) => see_other(&format!("/integrations/{id}")),
        Err(error) => failure(Some(&posted.viewer), error),
    }
}

pub async fn replay(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
    posted: Posted<serde::de::IgnoredAny>,
) -> Response {
    let replayed = deliveries::replay(
        State(state),
        posted.viewer.principal.clone(),
        Path((id.clone(), delivery)),
    )
    .await;
    match replayed {
        Ok(_) => see_other(&format!("/integrations/{id}#deliveries")),
        Err(error) => failure(Some(&posted.viewer), error),
    }
}
