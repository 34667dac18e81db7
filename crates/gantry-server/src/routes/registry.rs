//! The module registry protocol that `tofu init` and `terraform init`
//! speak: service discovery, the versions of a module, and its download,
//! which names a short-lived Gantry URL serving a `.tar.gz` of the
//! module's directory at the version's commit. The source comes from
//! GitLab with the integration's token, through the source cache; the
//! token never reaches the registry's user. Calls authenticate with an
//! API key as bearer (`TF_TOKEN_<host>`) and need `read` on the module's
//! space.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gantry_domain::Role;
use gantry_store::modules::{self, Module};
use gantry_store::{Millis, integrations, spaces};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a download link works.
const LINK_MILLIS: i64 = 10 * 60 * 1000;
const LINK_CONTEXT: &str = "registry:archive";

/// `GET /.well-known/terraform.json`: where the registry lives.
pub async fn discovery() -> Json<Value> {
    Json(json!({ "modules.v1": "/registry/modules/v1/" }))
}

/// The module at a registry address the caller may read: 404 for none,
/// 403 without `read` on its space.
async fn addressed(
    state: &AppState,
    principal: &Principal,
    space: &str,
    name: &str,
    provider: &str,
) -> Result<Module, ApiError> {
    let mut conn = state.store.conn().await?;
    let missing = || ApiError::not_found(format!("no module {space}/{name}/{provider}"));
    let module = modules::get(&mut conn, name).await?.ok_or_else(missing)?;
    if module.space_id != space || module.provider != provider {
        return Err(missing());
    }
    let ancestry = spaces::ancestry(&mut conn, space).await?;
    if !principal.allows(Role::Read, &ancestry) {
        return Err(crate::auth::forbidden(Role::Read, space));
    }
    Ok(module)
}

/// `GET /registry/modules/v1/{space}/{name}/{provider}/versions`.
pub async fn versions(
    State(state): State<AppState>,
    principal: Principal,
    Path((space, name, provider)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let module = addressed(&state, &principal, &space, &name, &provider).await?;
    let mut conn = state.store.conn().await?;
    let versions: Vec<Value> = modules::versions(&mut conn, &module.id)
        .await?
        .into_iter()
        .filter(|v| v.state == "published")
        .map(|v| json!({ "version": v.version }))
        .collect();
    Ok(Json(json!({ "modules": [{ "versions": versions }] })))
}

/// `GET /registry/modules/v1/{space}/{name}/{provider}/{version}/download`:
/// 204 with `X-Terraform-Get`, a link that works for ten minutes.
pub async fn download(
    State(state): State<AppState>,
    principal: Principal,
    Path((space, name, provider, version)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let module = addressed(&state, &principal, &space, &name, &provider).await?;
    let mut conn = state.store.conn().await?;
    if modules::published(&mut conn, &module.id, &version)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "module {name} has no version {version}"
        )));
    }
    let until = Millis::now().0 + LINK_MILLIS;
    let sealed = state.keyring.encrypt(
        LINK_CONTEXT,
        &format!("{}\n{version}\n{until}", module.id).into(),
    );
    let token: String = url::form_urlencoded::byte_serialize(sealed.as_bytes()).collect();
    let link = format!(
        "{}/registry/archives/{}/{version}.tar.gz?token={token}",
        state.config.public_url.trim_end_matches('/'),
        module.id
    );
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        "x-terraform-get",
        HeaderValue::from_str(&link).map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct LinkParams {
    token: String,
}

/// `GET /registry/archives/{module}/{version}.tar.gz?token=…`: the
/// module's directory at the version's commit, as a gzipped tarball.
pub async fn archive(
    State(state): State<AppState>,
    Path((module_id, file)): Path<(String, String)>,
    Query(params): Query<LinkParams>,
) -> Result<Response, ApiError> {
    let refused = || {
        ApiError::unauthorized(
            "this download link is not valid (or expired); ask the registry again",
        )
    };
    let version = file.strip_suffix(".tar.gz").ok_or_else(refused)?.to_owned();
    let opened = state
        .keyring
        .decrypt(LINK_CONTEXT, &params.token)
        .map_err(|_| refused())?;
    let opened = secrecy::ExposeSecret::expose_secret(&opened).to_owned();
    let mut parts = opened.split('\n');
    let (Some(linked_module), Some(linked_version), Some(until)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    if linked_module != module_id
        || linked_version != version
        || until.parse::<i64>().map_or(true, |u| u < Millis::now().0)
    {
        return Err(refused());
    }
    let mut conn = state.store.conn().await?;
    let module = modules::get(&mut conn, &module_id)
        .await?
        .ok_or_else(refused)?;
    let commit = modules::published(&mut conn, &module_id, &version)
        .await?
        .ok_or_else(refused)?;
    let integration_id = module
        .integration_id
        .clone()
        .ok_or_else(|| ApiError::conflict("the module's integration was deleted"))?;
    let integration = integrations::get(&mut conn, &integration_id)
        .await?
        .ok_or_else(|| ApiError::conflict("the module's integration was deleted"))?;
    drop(conn);
    let key = crate::source::ensure(&state, &integration, module.project_id, &commit)
        .await
        .map_err(|error| {
            ApiError::bad_gateway(format!("the module's source could not be fetched: {error}"))
        })?;
    let file = build_archive(&state, &key, &module.project_root)
        .await
        .map_err(|error| {
            tracing::error!(%error, module.id = %module_id, "cannot build a module archive");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the archive could not be built; see the server log",
            )
        })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/gzip")], body).into_response())
}

/// The `.tar.gz` of `root` in the stored source `key`, as an open
/// (already unlinked) temporary file.
async fn build_archive(
    state: &AppState,
    key: &str,
    root: &str,
) -> std::io::Result<tokio::fs::File> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let scratch = state.config.data_dir.join("tmp");
    std::fs::create_dir_all(&scratch)?;
    let dir = tempfile::Builder::new()
        .prefix("module-")
        .tempdir_in(&scratch)?;
    let source = dir.path().join("source.tar.zst");
    let mut stream =
        state.blobs.get(key).await?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the source is gone")
        })?;
    let mut out = tokio::fs::File::create(&source).await?;
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    let tree = dir.path().join("tree");
    gantry_runner::agent::unpack(&source, &tree).await?;
    let (tree, root, archive) = (tree, root.to_owned(), dir.path().join("module.tar.gz"));
    let packed = archive.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let module_dir = tree.join(root.trim_end_matches('/'));
        // Only the module's own files: never the repository's git data.
        let _ = std::fs::remove_dir_all(module_dir.join(".git"));
        let file = std::fs::File::create(&packed)?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &module_dir)?;
        tar.into_inner()?.finish()?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)??;
    let file = tokio::fs::File::open(&archive).await?;
    // The directory goes; the open file stays readable until it is closed.
    drop(dir);
    Ok(file)
}
