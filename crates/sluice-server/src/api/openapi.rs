//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::{dashboard, infer, jobs, models};
use crate::error::{ErrorBody, ErrorDetail};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Batch inference: bulk jobs over batched models."),
    paths(
        jobs::create,
        jobs::list,
        jobs::get,
        jobs::cancel,
        jobs::add_inputs,
        jobs::close,
        jobs::results,
        jobs::result,
        models::list,
        models::get,
        infer::infer,
        models::healthz,
        models::readyz,
        dashboard::stats,
        crate::metrics::handler
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        jobs::CreateJob,
        jobs::JobView,
        jobs::Counts,
        jobs::Timings,
        jobs::JobList,
        jobs::Added,
        jobs::ResultLine,
        models::ModelView,
        infer::InferBody,
        infer::InferAnswer,
        infer::ItemAnswer,
        models::Health,
        models::StoreStatus,
        dashboard::Summary,
        dashboard::ModelStats
    ))
)]
pub struct ApiDoc;

/// `GET /openapi.json`
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
