//! HTTP routes: jobs, models, health, and the OpenAPI document.

use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

pub mod jobs;
pub mod models;
pub mod openapi;

/// Every route of the API.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/inputs", post(jobs::add_inputs))
        .route("/v1/jobs/{id}/close", post(jobs::close))
        .route("/v1/jobs/{id}/results", get(jobs::results))
        .route("/v1/jobs/{id}/results/{key}", get(jobs::result))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{name}", get(models::get))
        .route("/healthz", get(models::healthz))
        .route("/readyz", get(models::readyz))
        .route("/openapi.json", get(openapi::document))
}
