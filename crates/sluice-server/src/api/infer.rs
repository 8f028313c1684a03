//! `POST /v1/models/{name}/infer`: real-time inference with the model's
//! built-in processing, for callers who want embeddings or labelled
//! detections rather than raw v2 tensors.
//!
//! Items go through the same real-time lane as KServe v2 requests (ahead of
//! bulk jobs, bounded, with deadlines). Each input gets its own result, so one
//! bad image among several does not fail the others; a request whose every
//! input is invalid is answered 400.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_core::{Input, ItemError, ItemErrorKind, Output, Takes};
use sluice_engine::{EngineError, RealtimeOptions};
use utoipa::ToSchema;

use crate::v2::http::TIMEOUT_HEADER;
use crate::{ApiError, AppState};

/// `POST /v1/models/{name}/infer` JSON body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferBody {
    /// One entry per item: a string for text models; base64 (or
    /// `{"base64": ".."}`) for image models; a tensor or object of named
    /// tensors for tensor models; for OMI (`bytes`) models a string for the
    /// default input or `{"name": "text" | {"base64": ".."}}`.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<serde_json::Value>,
    /// Items not started within this many milliseconds are not run.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One item's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemAnswer {
    /// The post-processed output, when it succeeded.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// Why it failed.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

/// The answer: one result per input, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferAnswer {
    /// Model name.
    pub model: String,
    /// Results in input order.
    pub results: Vec<ItemAnswer>,
}

fn decode_json_input(takes: Takes, i: usize, v: serde_json::Value) -> Result<Input, ApiError> {
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| ApiError::BadRequest(format!("inputs[{i}]: invalid base64: {e}")))
    };
    match takes {
        Takes::Text => match v {
            serde_json::Value::String(s) => Ok(Input::Text(s)),
            other => Err(ApiError::BadRequest(format!(
                "inputs[{i}]: this text model takes strings, got {other}"
            ))),
        },
        Takes::Image { .. } => match &v {
            serde_json::Value::String(s) => Ok(Input::Bytes(b64(s)?)),
            serde_json::Value::Object(o) => match o.get("base64").and_then(|b| b.as_str()) {
                Some(s) => Ok(Input::Bytes(b64(s)?)),
                None => Err(ApiError::BadRequest(format!(
                    "inputs[{i}]: an image is a base64 string or {{\"base64\": \"..\"}}"
                ))),
            },
            other => Err(ApiError::BadRequest(format!(
                "inputs[{i}]: an image is a base64 string or {{\"base64\": \"..\"}}, got {other}"
            ))),
        },
        Takes::Tensors | Takes::Files => Ok(match v {
            // A bare string is the worker's default input, as text.
            serde_json::Value::String(s) if takes.takes_strings() => Input::Text(s),
            other => Input::Json(other),
        }),
    }
}

/// Real-time inference with built-in pre- and post-processing.
#[utoipa::path(post, path = "/v1/models/{name}/infer", operation_id = "infer", params(("name" = String, Path, description = "Model name")),
    request_body(content = InferBody, description = "JSON inputs; or multipart/form-data with one file per image"),
    responses((status = 200, body = InferAnswer), (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 413, body = crate::error::ErrorBody, description = "Body or batch too large"),
        (status = 429, body = crate::error::ErrorBody, description = "Real-time queue full; retry after `Retry-After` seconds"),
        (status = 503, body = crate::error::ErrorBody, description = "The model is not serving"),
        (status = 504, body = crate::error::ErrorBody, description = "The deadline passed before the request ran")))]
pub async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<(StatusCode, Json<InferAnswer>), ApiError> {
    let model = state
        .registry
        .get(&name)
        .ok_or_else(|| match state.registry.unavailable(&name) {
            Some(why) => ApiError::Unavailable(why),
            None => ApiError::NotFound(format!("model '{name}' not found")),
        })?;
    let header_timeout = match req.headers().get(TIMEOUT_HEADER) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&ms| ms > 0)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{TIMEOUT_HEADER} must be a positive whole number of milliseconds"
                    ))
                })?,
        ),
        None => None,
    };
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    // A request with more inputs than the model can ever admit at once is
    // refused before any input is decoded (413: retrying cannot help).
    let capacity = model.spec().realtime_queue_capacity;
    let too_many = |n: usize| {
        ApiError::TooLarge(format!(
            "the request has {n} inputs; this model takes at most {capacity} per request \
             (realtime_queue_capacity): split the request"
        ))
    };
    let takes = model.spec().processing.describe().takes;
    let mut inputs = Vec::new();
    let mut timeout_ms = header_timeout;
    if is_multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        while let Some(field) = mp.next_field().await? {
            if inputs.len() >= capacity {
                return Err(too_many(inputs.len() + 1));
            }
            let is_file = field.file_name().is_some();
            let data = field.bytes().await?;
            inputs.push(match (takes, is_file) {
                (Takes::Text, false) => {
                    Input::Text(String::from_utf8(data.to_vec()).map_err(|_| {
                        ApiError::BadRequest(format!("multipart part {} is not UTF-8 text", inputs.len()))
                    })?)
                }
                _ => Input::Bytes(data.to_vec()),
            });
        }
    } else {
        let body = Bytes::from_request(req, &()).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(format!("request body too large: {}", e.body_text()))
            } else {
                ApiError::BadRequest(e.body_text())
            }
        })?;
        let parsed: InferBody = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}; expected {{\"inputs\": [...]}}")))?;
        if parsed.timeout_ms == Some(0) {
            return Err(ApiError::BadRequest("timeout_ms must be positive".into()));
        }
        if let Some(t) = parsed.timeout_ms {
            timeout_ms = Some(timeout_ms.map_or(t, |h| h.min(t)));
        }
        if parsed.inputs.len() > capacity {
            return Err(too_many(parsed.inputs.len()));
        }
        for (i, v) in parsed.inputs.into_iter().enumerate() {
            inputs.push(decode_json_input(takes, i, v)?);
        }
    }
    if inputs.is_empty() {
        return Err(ApiError::BadRequest("no inputs in the request".into()));
    }
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let completions = model
        .infer_realtime(inputs, RealtimeOptions { deadline })
        .await
        .map_err(|e| match e {
            EngineError::Overloaded { .. } => ApiError::Overloaded(e.to_string()),
            other => ApiError::Unavailable(other.to_string()),
        })?;
    let kinds: Vec<Option<ItemErrorKind>> = completions
        .iter()
        .map(|c| c.result.as_ref().err().map(|e| e.kind))
        .collect();
    let all_failed_with = |k: ItemErrorKind| kinds.iter().all(|x| *x == Some(k));
    if all_failed_with(ItemErrorKind::InvalidInput) || all_failed_with(ItemErrorKind::Timeout) {
        let first = completions.into_iter().find_map(|c| c.result.err());
        return Err(match first {
            Some(e) if e.kind == ItemErrorKind::Timeout => ApiError::Timeout(e.message),
            Some(e) => ApiError::BadRequest(e.message),
            None => ApiError::Internal("no result".into()),
        });
    }
    let results = completions
        .into_iter()
        .map(|c| match c.result {
            Ok(output) => ItemAnswer {
                output: Some(output),
                error: None,
            },
            Err(e) => ItemAnswer {
                output: None,
                error: Some(e),
            },
        })
        .collect();
    Ok((
        StatusCode::OK,
        Json(InferAnswer {
            model: model.spec().name.clone(),
            results,
        }),
    ))
}
