//! The v2 protocol over HTTP/REST, with the binary tensor data extension.
//!
//! Routes follow the KServe v2 specification (`/v2`, `/v2/health/*`,
//! `/v2/models/{m}[/versions/{v}][/ready|/infer]`). Errors use the
//! protocol's own body, `{"error": "<message>"}`, which is what v2 clients
//! parse, rather than the jobs API's structured error. With the binary
//! extension, the body is a JSON header of `Inference-Header-Content-Length`
//! bytes followed by the raw tensors in order; clients such as `tritonclient`
//! use it by default.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{V2Error, WireData, WireTensor};
use crate::AppState;

/// Header giving the length of the JSON part of a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Header with a per-request deadline in milliseconds (alternative to the
/// `timeout` request parameter, which is in microseconds).
pub const TIMEOUT_HEADER: &str = "x-sluice-timeout-ms";

/// Seconds a client is told to wait after a 429.
const RETRY_AFTER_S: &str = "1";

/// Every v2 route.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let status = match self {
            V2Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            V2Error::NotFound(_) => StatusCode::NOT_FOUND,
            V2Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            V2Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            V2Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            V2Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            V2Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "v2 request failed");
        }
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
        }
        resp
    }
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", operation_id = "v2_server_metadata", tag = "v2", responses((status = 200, body = super::schema::ServerMetadata)))]
pub(crate) async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": super::SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": super::EXTENSIONS,
    }))
}

/// Liveness.
#[utoipa::path(get, path = "/v2/health/live", operation_id = "v2_live", tag = "v2", responses((status = 200, body = super::schema::Live)))]
pub(crate) async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// Readiness: some model is loaded.
#[utoipa::path(get, path = "/v2/health/ready", operation_id = "v2_ready", tag = "v2",
    responses((status = 200, body = super::schema::Ready), (status = 503, body = super::schema::V2ErrorBody, description = "No model is loaded")))]
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.registry.ready().next().is_some() {
        Json(json!({ "ready": true })).into_response()
    } else {
        V2Error::Unavailable("no model is loaded".into()).into_response()
    }
}

/// Model metadata.
#[utoipa::path(get, path = "/v2/models/{name}", operation_id = "v2_model_metadata", tag = "v2", params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = super::ModelMeta), (status = 404, body = super::schema::V2ErrorBody), (status = 503, body = super::schema::V2ErrorBody, description = "The model failed to load")))]
pub(crate) async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<super::ModelMeta>, V2Error> {
    let model = super::lookup(&state.registry, &name, None)?;
    Ok(Json(super::metadata(model)))
}

/// Model metadata (a version).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", operation_id = "v2_model_metadata_version", tag = "v2", params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "Model version (the served one)")),
    responses((status = 200, body = super::ModelMeta), (status = 404, body = super::schema::V2ErrorBody), (status = 503, body = super::schema::V2ErrorBody, description = "The model failed to load")))]
pub(crate) async fn model_metadata_v(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<super::ModelMeta>, V2Error> {
    let model = super::lookup(&state.registry, &name, Some(&version))?;
    Ok(Json(super::metadata(model)))
}

/// Model readiness.
#[utoipa::path(get, path = "/v2/models/{name}/ready", operation_id = "v2_model_ready", tag = "v2", params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = super::schema::ModelReady), (status = 404, body = super::schema::V2ErrorBody), (status = 503, body = super::schema::V2ErrorBody, description = "The model failed to load")))]
pub(crate) async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, V2Error> {
    super::lookup(&state.registry, &name, None)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

/// Model readiness (a version).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", operation_id = "v2_model_ready_version", tag = "v2", params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "Model version (the served one)")),
    responses((status = 200, body = super::schema::ModelReady), (status = 404, body = super::schema::V2ErrorBody), (status = 503, body = super::schema::V2ErrorBody, description = "The model failed to load")))]
pub(crate) async fn model_ready_v(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, V2Error> {
    super::lookup(&state.registry, &name, Some(&version))?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

/// Inference: rows of the batch dimension are batched with other requests.
#[utoipa::path(post, path = "/v2/models/{name}/infer", operation_id = "v2_infer", tag = "v2", params(("name" = String, Path, description = "Model name")),
    request_body(content = super::schema::InferRequest, description = "JSON; or with the binary extension, this JSON followed by raw tensors (`Inference-Header-Content-Length` gives the JSON's length)"),
    responses((status = 200, body = super::schema::InferResponse, description = "JSON; `application/octet-stream` with a JSON head when binary outputs were asked for"),
        (status = 400, body = super::schema::V2ErrorBody), (status = 404, body = super::schema::V2ErrorBody), (status = 413, body = super::schema::V2ErrorBody, description = "Body or batch too large"),
        (status = 429, body = super::schema::V2ErrorBody, description = "Real-time queue full; retry after `Retry-After` seconds"),
        (status = 503, body = super::schema::V2ErrorBody, description = "The model is not serving"), (status = 504, body = super::schema::V2ErrorBody, description = "The deadline passed before the request ran")))]
pub(crate) async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    let body = body.map_err(|r| body_error(&state, r))?;
    run(&state, &name, None, &headers, &body).await
}

/// Inference on a version.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", operation_id = "v2_infer_version", tag = "v2", params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "Model version (the served one)")),
    request_body(content = super::schema::InferRequest, description = "JSON; or with the binary extension, this JSON followed by raw tensors (`Inference-Header-Content-Length` gives the JSON's length)"),
    responses((status = 200, body = super::schema::InferResponse, description = "JSON; `application/octet-stream` with a JSON head when binary outputs were asked for"),
        (status = 400, body = super::schema::V2ErrorBody), (status = 404, body = super::schema::V2ErrorBody), (status = 413, body = super::schema::V2ErrorBody, description = "Body or batch too large"),
        (status = 429, body = super::schema::V2ErrorBody, description = "Real-time queue full; retry after `Retry-After` seconds"),
        (status = 503, body = super::schema::V2ErrorBody, description = "The model is not serving"), (status = 504, body = super::schema::V2ErrorBody, description = "The deadline passed before the request ran")))]
pub(crate) async fn infer_v(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V2Error> {
    let body = body.map_err(|r| body_error(&state, r))?;
    run(&state, &name, Some(&version), &headers, &body).await
}

/// A body that could not be read, as a v2 error (JSON like every other).
fn body_error(state: &AppState, r: BytesRejection) -> V2Error {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        V2Error::TooLarge(format!(
            "request body too large: the limit is {} bytes",
            state.limits.max_body_bytes
        ))
    } else {
        V2Error::BadRequest(format!("cannot read the request body: {}", r.body_text()))
    }
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A parsed HTTP request: the protocol request plus which outputs go binary.
#[derive(Debug)]
pub struct Parsed {
    /// The protocol request.
    pub request: super::InferRequest,
    /// `binary_data_output`: every output in binary.
    pub binary_all: bool,
    /// Outputs asked for in binary by name.
    pub binary: Vec<String>,
}

fn flag(params: &Map<String, Value>, key: &str) -> bool {
    params.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Decodes a v2 HTTP inference request: JSON, or with the binary tensor data
/// extension (the `Inference-Header-Content-Length` header) a JSON header
/// followed by raw tensors. Shapes are checked against `limits` before any
/// tensor is built. Public for the fuzz targets under `fuzz/`.
pub fn parse(headers: &HeaderMap, body: &[u8], limits: &super::InputLimits) -> Result<Parsed, V2Error> {
    let header_len = match headers.get(HEADER_LENGTH) {
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| V2Error::BadRequest(format!("{HEADER_LENGTH} is not a number")))?;
            if n > body.len() {
                return Err(V2Error::BadRequest(format!(
                    "{HEADER_LENGTH} is {n} but the body has only {} bytes",
                    body.len()
                )));
            }
            n
        }
        None => body.len(),
    };
    let (head, mut binary) = body.split_at(header_len);
    let req: JsonRequest = serde_json::from_slice(head)
        .map_err(|e| V2Error::BadRequest(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let shape = super::parse_shape(&input.name, &input.shape, limits)?;
        let size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                V2Error::BadRequest(format!(
                    "input '{}': binary_data_size must be a non-negative integer, got {v}",
                    input.name
                ))
            })?),
        };
        let tensor = if let Some(size) = size {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > binary.len() {
                return Err(V2Error::BadRequest(format!(
                    "input '{}': binary_data_size {size} exceeds the {} bytes left in the body",
                    input.name,
                    binary.len()
                )));
            }
            let (raw, rest) = binary.split_at(size);
            binary = rest;
            super::tensor_from_raw(&input.name, &input.datatype, shape, raw)?
        } else {
            let data = input
                .data
                .ok_or_else(|| V2Error::BadRequest(format!("input '{}' has no data", input.name)))?;
            from_json(&input.name, &input.datatype, shape, &data)?
        };
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(V2Error::BadRequest(format!(
            "{} bytes of binary data follow the inputs that no input claims (binary_data_size)",
            binary.len()
        )));
    }
    let mut timeout = match req.parameters.get("timeout") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(us) if us > 0 => Some(Duration::from_micros(us)),
            _ => {
                return Err(V2Error::BadRequest(format!(
                    "parameters.timeout must be a positive whole number of microseconds, got {v}"
                )))
            }
        },
    };
    if let Some(v) = headers.get(TIMEOUT_HEADER) {
        let ms = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                V2Error::BadRequest(format!(
                    "{TIMEOUT_HEADER} must be a positive whole number of milliseconds"
                ))
            })?;
        let t = Duration::from_millis(ms);
        timeout = Some(timeout.map_or(t, |o| o.min(t)));
    }
    let binary_all = flag(&req.parameters, "binary_data_output");
    let binary = req
        .outputs
        .iter()
        .filter(|o| flag(&o.parameters, "binary_data"))
        .map(|o| o.name.clone())
        .collect();
    let id = match req.id {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok(Parsed {
        request: super::InferRequest {
            id,
            inputs,
            outputs: req.outputs.into_iter().map(|o| o.name).collect(),
            timeout,
        },
        binary_all,
        binary,
    })
}

fn from_json(name: &str, datatype: &str, shape: Vec<usize>, data: &Value) -> Result<WireTensor, V2Error> {
    let bad = |m: String| V2Error::BadRequest(format!("input '{name}': {m}"));
    let data = match super::parse_datatype(datatype)? {
        None => {
            let mut elems = Vec::new();
            collect_strings(data, &mut elems).map_err(bad)?;
            let numel = super::numel(name, &shape)?;
            if elems.len() != numel {
                return Err(bad(format!(
                    "shape {shape:?} needs {numel} elements, got {}",
                    elems.len()
                )));
            }
            WireData::Bytes(elems)
        }
        Some(dtype) => WireData::Numeric(
            sluice_core::Tensor::from_json_data(shape.clone(), data, dtype).map_err(|e| bad(e.to_string()))?,
        ),
    };
    Ok(WireTensor {
        name: name.into(),
        shape,
        data,
    })
}

fn collect_strings(v: &Value, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| collect_strings(i, out)),
        Value::String(s) => {
            out.push(s.as_bytes().to_vec());
            Ok(())
        }
        other => Err(format!("BYTES data must be strings, got {other}")),
    }
}

async fn run(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, V2Error> {
    let model = super::lookup(&state.registry, name, version)?;
    let limits = super::InputLimits::for_model(model, state.limits.max_body_bytes);
    let parsed = parse(headers, body, &limits)?;
    let started = Instant::now();
    let resp = super::infer(model, parsed.request, None, &limits).await?;
    tracing::debug!(model = %name, elapsed_us = started.elapsed().as_micros(), "v2 infer");
    Ok(encode(resp, parsed.binary_all, &parsed.binary))
}

fn encode(resp: super::InferResponse, binary_all: bool, binary: &[String]) -> Response {
    let mut tail: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|t| {
            let mut o = json!({ "name": t.name, "datatype": t.datatype(), "shape": t.wire_shape() });
            if binary_all || binary.contains(&t.name) {
                let raw = super::raw_bytes(t);
                o["parameters"] = json!({ "binary_data_size": raw.len() });
                tail.extend_from_slice(&raw);
            } else {
                o["data"] = match &t.data {
                    WireData::Numeric(n) => n.to_json()["data"].take(),
                    WireData::Bytes(b) => b
                        .iter()
                        .map(|e| Value::String(String::from_utf8_lossy(e).into()))
                        .collect(),
                };
            }
            o
        })
        .collect();
    let head = json!({
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "id": resp.id,
        "outputs": outputs,
    });
    if tail.is_empty() {
        return Json(head).into_response();
    }
    let mut body = head.to_string().into_bytes();
    let head_len = body.len();
    body.extend_from_slice(&tail);
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_LENGTH, HeaderValue::from(head_len));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_inputs_are_cut_from_the_body_in_order() {
        let head = json!({
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}
            ],
            "parameters": {"timeout": 5000}
        })
        .to_string();
        let mut body = head.clone().into_bytes();
        body.extend(1.5f32.to_le_bytes());
        body.extend(2.5f32.to_le_bytes());
        body.extend(super::super::encode_bytes(&[b"abc".to_vec()]));
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let p = parse(&headers, &body, &super::super::InputLimits::default()).expect("parses");
        assert_eq!(p.request.inputs.len(), 2);
        assert_eq!(p.request.timeout, Some(Duration::from_millis(5)));
        let WireData::Numeric(a) = &p.request.inputs[0].data else {
            panic!("numeric")
        };
        assert_eq!(a.data, sluice_core::TensorData::F32(vec![1.5, 2.5]));
        assert_eq!(p.request.inputs[1].data, WireData::Bytes(vec![b"abc".to_vec()]));
    }

    #[test]
    fn unclaimed_binary_data_is_refused() {
        let head = json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).to_string();
        let mut body = head.clone().into_bytes();
        body.extend([0u8; 4]);
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, HeaderValue::from(head.len()));
        let err = parse(&headers, &body, &super::super::InputLimits::default()).expect_err("refused");
        assert!(err.to_string().contains("no input claims"), "{err}");
    }

    #[test]
    fn json_bytes_must_match_the_shape() {
        let body = json!({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]});
        let err = parse(
            &HeaderMap::new(),
            body.to_string().as_bytes(),
            &super::super::InputLimits::default(),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("needs 3 elements"), "{err}");
    }
}
