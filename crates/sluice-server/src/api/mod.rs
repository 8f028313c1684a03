//! HTTP routes: jobs, models, real-time inference (`/v1/models/{m}/infer` and
//! KServe v2), health, metrics, the dashboard, and the OpenAPI document.

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

pub mod dashboard;
pub mod infer;
pub mod jobs;
pub mod models;
pub mod nodes;
pub mod openapi;

/// Every route of the API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/v1/stats", get(dashboard::stats))
        .route("/metrics", get(crate::metrics::handler))
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/inputs", post(jobs::add_inputs))
        .route("/v1/jobs/{id}/close", post(jobs::close))
        .route("/v1/jobs/{id}/results", get(jobs::results))
        .route("/v1/jobs/{id}/results/{key}", get(jobs::result))
        .route("/v1/jobs/{id}/summary", get(jobs::summary))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{name}", get(models::get))
        .route("/v1/models/{name}/infer", post(infer::infer))
        .route("/healthz", get(models::healthz))
        .route("/readyz", get(models::readyz))
        .route("/openapi.json", get(openapi::document))
        .merge(crate::v2::http::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: axum::http::Uri) -> crate::ApiError {
    crate::ApiError::NotFound(format!("no route for {uri}; the API is described at /openapi.json"))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> crate::ApiError {
    crate::ApiError::MethodNotAllowed(format!("{method} is not allowed on {uri}"))
}
