//! The OpenAPI description of the v2 REST protocol's JSON bodies.
//!
//! The handlers in [`super::http`] parse requests as JSON values and the
//! binary extension by hand, so these types exist only to describe the wire
//! format in `GET /openapi.json` (KServe v2 / Triton's "inference protocol");
//! they are not used to parse or build bodies. Keep them in step with the
//! parser: a field the parser reads is here, with the constraints it checks.

#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// A v2 error body: what v2 clients parse.
#[derive(ToSchema)]
pub struct V2ErrorBody {
    /// What is wrong, for humans.
    pub error: String,
}

/// `GET /v2`.
#[derive(ToSchema)]
pub struct ServerMetadata {
    /// Server name (`sluice`).
    pub name: String,
    /// Server version.
    pub version: String,
    /// Protocol extensions supported.
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(ToSchema)]
pub struct Live {
    /// Always true while the process answers.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(ToSchema)]
pub struct Ready {
    /// True when at least one model is loaded.
    pub ready: bool,
}

/// `GET /v2/models/{name}/ready`.
#[derive(ToSchema)]
pub struct ModelReady {
    /// Model name.
    pub name: String,
    /// True: the model is loaded and serving.
    pub ready: bool,
}

/// Tensor element types of the v2 protocol.
#[derive(ToSchema)]
pub enum Datatype {
    /// Boolean.
    BOOL,
    /// Unsigned 8-bit.
    UINT8,
    /// Unsigned 16-bit.
    UINT16,
    /// Unsigned 32-bit.
    UINT32,
    /// Unsigned 64-bit.
    UINT64,
    /// Signed 8-bit.
    INT8,
    /// Signed 16-bit.
    INT16,
    /// Signed 32-bit.
    INT32,
    /// Signed 64-bit.
    INT64,
    /// IEEE half precision.
    FP16,
    /// IEEE single precision.
    FP32,
    /// IEEE double precision.
    FP64,
    /// Byte strings (text, encoded images).
    BYTES,
}

/// A tensor of a v2 request (an input) or response (an output).
#[derive(ToSchema)]
pub struct Tensor {
    /// Tensor name, as in the model's metadata.
    pub name: String,
    /// Dimensions, batch first; each one non-negative.
    pub shape: Vec<u64>,
    /// Element type.
    pub datatype: Datatype,
    /// `binary_data_size`: the tensor is in the binary part of the body (binary extension).
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// Elements in row-major order, flat or nested; strings for BYTES. Absent when the tensor is binary.
    pub data: Option<Vec<serde_json::Value>>,
}

/// An output asked for by name.
#[derive(ToSchema)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// `binary_data`: answer this output in the binary part of the body.
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
}

/// A v2 inference request (JSON). With the binary extension the body is this
/// JSON followed by the raw tensors, and `Inference-Header-Content-Length`
/// gives the JSON's length.
#[derive(ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// `timeout` (microseconds, a positive integer), `binary_data_output` (bool).
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// Input tensors; all share the batch (first) dimension.
    pub inputs: Vec<Tensor>,
    /// Outputs to return; default: all.
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// A v2 inference response (JSON part).
#[derive(ToSchema)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// The request's id.
    pub id: String,
    /// Output tensors.
    pub outputs: Vec<Tensor>,
}
