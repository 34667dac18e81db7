//! Every route of the server, in one place.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, Method, Request, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::API_BODY_LIMIT;
use crate::error::ApiError;
use crate::metrics;
use crate::routes::{
    api_keys, audit, deliveries, health, integrations, me, modules, registry, runs, spaces, stacks,
    vcs_agent_pools, webhooks, worker,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Gantry", description = "Self-hosted orchestrator for infrastructure pipelines driven by GitLab"),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(me::show))
        .routes(routes!(spaces::create, spaces::list))
        .routes(routes!(api_keys::create, api_keys::list))
        .routes(routes!(api_keys::revoke))
        .routes(routes!(audit::list))
        .routes(routes!(integrations::create, integrations::list))
        .routes(routes!(
            integrations::show,
            integrations::update,
            integrations::delete
        ))
        .routes(routes!(integrations::rotate_secret))
        .routes(routes!(integrations::hooks::list))
        .routes(routes!(integrations::hooks::sync))
        .routes(routes!(deliveries::list))
        .routes(routes!(deliveries::replay))
        .routes(routes!(webhooks::receive))
        .routes(routes!(stacks::create, stacks::list))
        .routes(routes!(stacks::show, stacks::update, stacks::delete))
        .routes(routes!(modules::create, modules::list))
        .routes(routes!(modules::show, modules::update, modules::delete))
        .routes(routes!(modules::versions))
        .routes(routes!(vcs_agent_pools::create, vcs_agent_pools::list))
        .routes(routes!(vcs_agent_pools::show, vcs_agent_pools::delete))
        .routes(routes!(runs::list, runs::trigger))
        .routes(routes!(runs::show))
        .routes(routes!(runs::confirm))
        .routes(routes!(runs::discard))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::logs))
        .routes(routes!(worker::claim))
        .routes(routes!(worker::heartbeat))
        .routes(routes!(worker::log))
        .routes(routes!(worker::step))
        .routes(routes!(worker::put_workspace, worker::get_workspace))
        .routes(routes!(worker::get_source))
        .routes(routes!(worker::release))
        .split_for_parts();
    let openapi = Arc::new(openapi);

    api.route(
        "/api/v1/openapi.json",
        get(move || async move { Json(openapi.as_ref().clone()) }),
    )
    .route(
        "/api/v1/vcs-agents/connect",
        get(crate::vcs_agents::connect::connect),
    )
    .route("/.well-known/terraform.json", get(registry::discovery))
    .route(
        "/registry/modules/v1/{space}/{name}/{provider}/versions",
        get(registry::versions),
    )
    .route(
        "/registry/modules/v1/{space}/{name}/{provider}/{version}/download",
        get(registry::download),
    )
    .route("/registry/archives/{module}/{file}", get(registry::archive))
    .merge(crate::web::routes())
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        state.metrics.clone(),
        metrics::track,
    ))
    .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
    .with_state(state)
    .layer(PropagateRequestIdLayer::new(REQUEST_ID))
    .layer(
        TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            let request_id = request
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "request",
                http.method = %request.method(),
                http.path = %request.uri().path(),
                request.id = %request_id,
            )
        }),
    )
    .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// A browser asking for a page gets the HTML error page; a program, JSON.
async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if crate::web::wants_html(&headers) {
        return crate::web::not_found_page();
    }
    ApiError::not_found(format!("no route for {method} {}", uri.path())).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}
