//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use super::{dashboard, infer, jobs, models, nodes};
use crate::error::{ErrorBody, ErrorDetail};
use crate::v2::{http, schema};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "Batch inference: bulk jobs over batched models, and real-time inference (`/v1/models/{name}/infer` and the KServe v2 protocol under `/v2`, tag `v2`; its gRPC form is not described here)."
    ),
    paths(
        jobs::create,
        jobs::list,
        jobs::get,
        jobs::cancel,
        jobs::add_inputs,
        jobs::close,
        jobs::results,
        jobs::result,
        jobs::summary,
        nodes::list,
        models::list,
        models::get,
        infer::infer,
        models::healthz,
        models::readyz,
        dashboard::stats,
        crate::metrics::handler,
        http::server_metadata,
        http::live,
        http::ready,
        http::model_metadata,
        http::model_metadata_v,
        http::model_ready,
        http::model_ready_v,
        http::infer,
        http::infer_v
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        jobs::CreateJob,
        jobs::JobView,
        jobs::JobError,
        jobs::OutputBody,
        jobs::OutputView,
        jobs::Counts,
        jobs::Timings,
        jobs::JobList,
        jobs::Added,
        jobs::ResultLine,
        models::ModelView,
        nodes::NodeView,
        nodes::NodeList,
        infer::InferBody,
        infer::InferAnswer,
        infer::ItemAnswer,
        models::Health,
        models::StoreStatus,
        dashboard::Summary,
        dashboard::ModelStats,
        schema::V2ErrorBody,
        schema::ServerMetadata,
        schema::Live,
        schema::Ready,
        schema::ModelReady,
        schema::Datatype,
        schema::Tensor,
        schema::RequestedOutput,
        schema::InferRequest,
        schema::InferResponse,
        crate::v2::ModelMeta,
        crate::v2::TensorMeta
    ))
)]
pub struct ApiDoc;

/// `GET /openapi.json`
pub async fn document() -> Json<serde_json::Value> {
    Json(document_json())
}

/// The document as JSON, with the OpenAPI field names for response links.
///
/// utoipa 5.5 serialises a link's fields in snake case (`operation_id`,
/// `operation_ref`, `request_body`) where the specification says
/// `operationId`, `operationRef` and `requestBody`; clients that follow links
/// (Schemathesis's stateful phase, code generators) then see links without a
/// target. The names are fixed here, inside `links` objects only.
pub fn document_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    fix_link_names(&mut doc, false);
    doc
}

fn fix_link_names(v: &mut serde_json::Value, in_links: bool) {
    match v {
        serde_json::Value::Object(map) => {
            if in_links {
                // `map` is one link object.
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(x) = map.remove(from) {
                        map.insert(to.to_string(), x);
                    }
                }
                return;
            }
            for (k, child) in map.iter_mut() {
                if k == "links" {
                    if let serde_json::Value::Object(links) = child {
                        links.values_mut().for_each(|link| fix_link_names(link, true));
                    }
                } else {
                    fix_link_names(child, false);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| fix_link_names(i, false)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique_and_links_name_their_target() {
        let doc = document_json();
        let mut ids = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                let id = op["operationId"].as_str().unwrap_or_default().to_string();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(ids.insert(id.clone()), "operationId {id} is used twice");
            }
        }
        let links = doc["paths"]["/v1/jobs"]["post"]["responses"]["201"]["links"]
            .as_object()
            .expect("POST /v1/jobs declares links");
        assert!(!links.is_empty());
        for (name, link) in links {
            let target = link["operationId"].as_str().expect("operationId");
            assert!(ids.contains(target), "link {name} points to unknown operation {target}");
            assert!(link.get("operation_id").is_none());
        }
    }

    #[test]
    fn query_parameters_are_in_the_query_and_optional() {
        let doc = document_json();
        for path in ["/v1/jobs", "/v1/jobs/{id}/results"] {
            for p in doc["paths"][path]["get"]["parameters"].as_array().expect("parameters") {
                if p["name"] == "id" {
                    assert_eq!(p["in"], "path");
                } else {
                    assert_eq!(p["in"], "query", "{path}: {p}");
                    assert_ne!(p["required"], true, "{path}: {p}");
                }
            }
        }
    }

    #[test]
    fn v2_routes_and_job_constraints_are_described() {
        let doc = document_json();
        for path in [
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/{name}",
            "/v2/models/{name}/ready",
            "/v2/models/{name}/infer",
            "/v2/models/{name}/versions/{version}/infer",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is not described");
        }
        let create = &doc["components"]["schemas"]["CreateJob"]["properties"];
        assert_eq!(create["priority"]["minimum"], 0);
        assert_eq!(create["priority"]["maximum"], 9);
        assert_eq!(create["inputs"]["minProperties"], 1);
        assert_eq!(create["timeout_ms"]["minimum"], 1);
    }
}
