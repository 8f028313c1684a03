//! Real-time inference over the KServe v2 / Open Inference Protocol.
//!
//! Triton, KServe and MLServer speak this protocol, so their clients
//! (`tritonclient`, KServe's SDK, plain `curl`) work against Sluice unchanged.
//! This module holds what HTTP ([`http`]) and gRPC ([`grpc`]) share: the
//! protocol's tensors, how a model's built-in processing is presented as v2
//! inputs and outputs, and [`infer`], which splits a request's batch
//! dimension into items, runs them through the engine's real-time lane (ahead
//! of bulk work, see `docs/realtime.md`) and reassembles the answers in order.
//!
//! How each processing type looks over v2:
//! - `tensor`: the graph's own inputs and outputs, numeric datatypes.
//! - `text`: one `BYTES` input `text` (one UTF-8 string per row); output
//!   `embedding`, `FP32 [-1, dim]`.
//! - `image`: one `BYTES` input `image` (an encoded JPEG/PNG per row); output
//!   `detections` or `classes`, `BYTES [-1]`, one JSON document per row.
//! - `bytes` (OMI workers): each worker input as `BYTES [-1]`, one file per
//!   row; each worker output as `BYTES [-1]` (its text, or its bytes when it
//!   was not text).

pub mod grpc;
pub mod http;
pub mod schema;

use std::collections::BTreeMap;

use base64::Engine as _;
use std::time::{Duration, Instant};

use sluice_core::spec::RuntimeKind;
use sluice_core::tensor::{checked_numel, ShapeLimits};
use sluice_core::{DType, Gives, Input, ItemErrorKind, NamedTensors, Output, Takes, Tensor};
use sluice_engine::{EngineError, Model, RealtimeOptions};

use crate::registry::Registry;

/// Protocol extensions Sluice implements.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "parameters"];

/// The server name reported by `GET /v2` and `ServerMetadata`.
pub const SERVER_NAME: &str = "sluice";

/// A v2 error, mapped to an HTTP status in [`http`] and a gRPC code in [`grpc`].
#[derive(Debug, thiserror::Error)]
pub enum V2Error {
    /// Malformed request or input (400 / INVALID_ARGUMENT).
    #[error("{0}")]
    BadRequest(String),
    /// Unknown model or version (404 / NOT_FOUND).
    #[error("{0}")]
    NotFound(String),
    /// The request is larger than the server or the model can ever take:
    /// a body over the limit, or more rows than the model's real-time
    /// capacity (413 / INVALID_ARGUMENT; retrying cannot help, unlike 429).
    #[error("{0}")]
    TooLarge(String),
    /// The real-time queue is full (429 / RESOURCE_EXHAUSTED).
    #[error("{0}")]
    Overloaded(String),
    /// The deadline passed before the request ran (504 / DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The model is not serving (503 / UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The model failed on the input, or Sluice itself failed (500 / INTERNAL).
    #[error("{0}")]
    Internal(String),
}

/// Elements of a protocol tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum WireData {
    /// A numeric tensor (its shape is the wire shape).
    Numeric(Tensor),
    /// `BYTES` elements, row-major.
    Bytes(Vec<Vec<u8>>),
}

/// A named tensor as the protocol carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    /// Tensor name.
    pub name: String,
    /// Shape including the batch dimension.
    pub shape: Vec<usize>,
    /// Elements.
    pub data: WireData,
}

impl WireTensor {
    /// The v2 datatype name (`FP32`, `BYTES`, ...).
    pub fn datatype(&self) -> &'static str {
        match &self.data {
            WireData::Numeric(t) => datatype(t.dtype()),
            WireData::Bytes(_) => "BYTES",
        }
    }

    /// The shape as the protocol's signed dimensions.
    pub fn wire_shape(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect()
    }
}

/// A decoded inference request.
#[derive(Debug, Default)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: String,
    /// Input tensors.
    pub inputs: Vec<WireTensor>,
    /// Outputs asked for by name; empty: all.
    pub outputs: Vec<String>,
    /// Items not started within this time are not run (504).
    pub timeout: Option<Duration>,
}

/// An inference answer.
#[derive(Debug)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// The request's id.
    pub id: String,
    /// Output tensors, batch dimension first.
    pub outputs: Vec<WireTensor>,
}

/// Name, datatype and shape (-1: any) of a model input or output.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TensorMeta {
    /// Tensor name.
    pub name: String,
    /// v2 datatype.
    pub datatype: String,
    /// Dimensions, batch first; -1 is variable.
    pub shape: Vec<i64>,
}

/// What `GET /v2/models/{m}` and `ModelMetadata` return.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ModelMeta {
    /// Model name.
    pub name: String,
    /// Served versions (one).
    pub versions: Vec<String>,
    /// Backend platform, Triton style.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMeta>,
    /// Outputs.
    pub outputs: Vec<TensorMeta>,
}

/// The v2 datatype of an element type.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::U8 => "UINT8",
        DType::I8 => "INT8",
        DType::Bool => "BOOL",
    }
}

/// Parses a v2 datatype: `Ok(None)` is `BYTES`.
pub fn parse_datatype(name: &str) -> Result<Option<DType>, V2Error> {
    Ok(Some(match name {
        "BYTES" => return Ok(None),
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        "INT64" => DType::I64,
        "INT32" => DType::I32,
        "UINT8" => DType::U8,
        "INT8" => DType::I8,
        "BOOL" => DType::Bool,
        other => {
            return Err(V2Error::BadRequest(format!(
                "datatype '{other}' is not supported; use one of BOOL, UINT8, INT8, INT32, INT64, FP32, FP64, BYTES"
            )))
        }
    }))
}

/// What one request's tensors may hold. Every front end checks each input's
/// wire shape against these before it allocates anything for the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Most rows (the batch dimension): the model's `realtime_queue_capacity`,
    /// since a request whose rows cannot all be admitted at once never runs.
    pub max_rows: usize,
    /// Rank and extent bounds of each input tensor.
    pub shape: ShapeLimits,
}

impl Default for InputLimits {
    /// The defaults of `model.toml` (512 rows) and of the body limit (64 MiB).
    fn default() -> Self {
        InputLimits {
            max_rows: 512,
            shape: ShapeLimits::default(),
        }
    }
}

impl InputLimits {
    /// The limits for `model` behind a transport that takes at most
    /// `max_message_bytes` per request: no tensor can carry more elements
    /// than the message has bytes.
    pub fn for_model(model: &Model, max_message_bytes: usize) -> InputLimits {
        InputLimits {
            max_rows: model.spec().realtime_queue_capacity,
            shape: ShapeLimits {
                max_elements: max_message_bytes.max(1),
                ..ShapeLimits::default()
            },
        }
    }

    /// Refuses more rows than the model can ever admit at once.
    pub fn check_rows(&self, what: &str, rows: usize) -> Result<(), V2Error> {
        if rows > self.max_rows {
            return Err(V2Error::TooLarge(format!(
                "{what} has {rows} rows; this model takes at most {} rows per request \
                 (realtime_queue_capacity): split the request",
                self.max_rows
            )));
        }
        Ok(())
    }
}

/// Parses v2 dimensions (non-negative for request tensors) and checks them
/// against `limits` with overflow-safe arithmetic: the batch dimension
/// against the row limit, the whole shape against the rank and extent limits.
pub fn parse_shape(name: &str, shape: &[i64], limits: &InputLimits) -> Result<Vec<usize>, V2Error> {
    if shape.len() > limits.shape.max_rank {
        return Err(V2Error::BadRequest(format!(
            "input '{name}': {} dimensions; at most {} are allowed",
            shape.len(),
            limits.shape.max_rank
        )));
    }
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| V2Error::BadRequest(format!("input '{name}': invalid dimension {d}"))))
        .collect::<Result<_, _>>()?;
    if let Some(&rows) = dims.first() {
        limits.check_rows(&format!("input '{name}'"), rows)?;
    }
    limits
        .shape
        .check(&dims)
        .map_err(|e| V2Error::BadRequest(format!("input '{name}': {e}")))?;
    Ok(dims)
}

/// The element count of an already checked shape.
fn numel(name: &str, shape: &[usize]) -> Result<usize, V2Error> {
    checked_numel(shape).map_err(|e| V2Error::BadRequest(format!("input '{name}': {e}")))
}

/// Finds a ready model, checking the version when one is named.
pub fn lookup<'a>(registry: &'a Registry, name: &str, version: Option<&str>) -> Result<&'a Model, V2Error> {
    let Some(model) = registry.get(name) else {
        return Err(match registry.unavailable(name) {
            Some(why) => V2Error::Unavailable(why),
            None => V2Error::NotFound(format!("unknown model '{name}'")),
        });
    };
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        if v != model.spec().version {
            return Err(V2Error::NotFound(format!(
                "model '{name}' has no version '{v}' (it serves version '{}')",
                model.spec().version
            )));
        }
    }
    Ok(model)
}

fn dims(shape: &[Option<usize>]) -> Vec<i64> {
    shape
        .iter()
        .map(|d| d.and_then(|d| i64::try_from(d).ok()).unwrap_or(-1))
        .collect()
}

fn bytes_meta(name: &str) -> TensorMeta {
    TensorMeta {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![-1],
    }
}

/// The model as v2 metadata.
pub fn metadata(model: &Model) -> ModelMeta {
    let spec = model.spec();
    let sig = model.signature();
    let platform = match spec.runtime {
        RuntimeKind::Onnx => "onnxruntime_onnx",
        RuntimeKind::Noop => "sluice_noop",
        RuntimeKind::Omi => "omi_grpc",
    };
    let numeric = |t: &sluice_core::TensorInfo| TensorMeta {
        name: t.name.clone(),
        datatype: t.dtype.map_or("FP32", datatype).into(),
        shape: dims(&t.shape),
    };
    let bytes = |t: &sluice_core::TensorInfo| bytes_meta(&t.name);
    let described = spec.processing.describe();
    let inputs = match described.takes {
        Takes::Tensors => sig.inputs.iter().map(numeric).collect(),
        Takes::Files => sig.inputs.iter().map(bytes).collect(),
        takes @ (Takes::Text | Takes::Image { .. }) => takes.v2_bytes_input().map(bytes_meta).into_iter().collect(),
    };
    let outputs = match described.gives {
        Gives::Tensors => sig.outputs.iter().map(numeric).collect(),
        Gives::Files => sig.outputs.iter().map(bytes).collect(),
        Gives::Embedding => vec![TensorMeta {
            name: "embedding".into(),
            datatype: "FP32".into(),
            shape: vec![-1, -1],
        }],
        gives @ (Gives::Detections { .. } | Gives::Classes) => vec![bytes_meta(gives.name())],
    };
    ModelMeta {
        name: spec.name.clone(),
        versions: vec![spec.version.clone()],
        platform: platform.into(),
        inputs,
        outputs,
    }
}

/// Splits the request's inputs along the batch dimension into engine items.
fn to_items(model: &Model, inputs: Vec<WireTensor>, limits: &InputLimits) -> Result<Vec<Input>, V2Error> {
    let spec = model.spec();
    let takes = spec.processing.describe().takes;
    if let Some(expected) = takes.v2_bytes_input() {
        let [input]: [WireTensor; 1] = inputs.try_into().map_err(|v: Vec<WireTensor>| {
            V2Error::BadRequest(format!(
                "model '{}' takes one BYTES input '{expected}', got {} inputs",
                spec.name,
                v.len()
            ))
        })?;
        if input.name != expected {
            return Err(V2Error::BadRequest(format!(
                "model '{}' takes one BYTES input '{expected}', got '{}'",
                spec.name, input.name
            )));
        }
        let WireData::Bytes(rows) = input.data else {
            return Err(V2Error::BadRequest(format!(
                "input '{expected}' must be BYTES, got {}",
                input.datatype()
            )));
        };
        if input.shape.len() > 2 || input.shape.get(1).is_some_and(|&d| d != 1) {
            return Err(V2Error::BadRequest(format!(
                "input '{expected}' must have shape [N] or [N, 1], got {:?}",
                input.shape
            )));
        }
        limits.check_rows(&format!("input '{expected}'"), rows.len())?;
        return rows
            .into_iter()
            .enumerate()
            .map(|(i, b)| match takes {
                Takes::Text => String::from_utf8(b)
                    .map(Input::Text)
                    .map_err(|_| V2Error::BadRequest(format!("input 'text', row {i}: not valid UTF-8"))),
                _ => Ok(Input::Bytes(b)),
            })
            .collect();
    }
    if takes == Takes::Files {
        return bytes_items(inputs, limits);
    }
    // Raw tensors: every graph input by name, rows split along dimension 0.
    let sig = model.signature();
    let mut by_name: BTreeMap<String, WireTensor> = BTreeMap::new();
    for t in inputs {
        if sig.input(&t.name).is_none() {
            let names: Vec<&str> = sig.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(V2Error::BadRequest(format!(
                "model '{}' has no input '{}'; its inputs are {names:?}",
                spec.name, t.name
            )));
        }
        if by_name.insert(t.name.clone(), t).is_some() {
            return Err(V2Error::BadRequest("an input is given twice".into()));
        }
    }
    let mut rows: Option<usize> = None;
    let mut columns: Vec<(String, Vec<Tensor>)> = Vec::with_capacity(sig.inputs.len());
    for info in &sig.inputs {
        let t = by_name
            .remove(&info.name)
            .ok_or_else(|| V2Error::BadRequest(format!("input '{}' is missing", info.name)))?;
        let WireData::Numeric(tensor) = t.data else {
            return Err(V2Error::BadRequest(format!(
                "input '{}' must be {}, got BYTES",
                info.name,
                info.dtype.map_or("numeric", datatype)
            )));
        };
        if let Some(want) = info.dtype {
            if want != tensor.dtype() {
                return Err(V2Error::BadRequest(format!(
                    "input '{}' must be {}, got {}",
                    info.name,
                    datatype(want),
                    datatype(tensor.dtype())
                )));
            }
        }
        let Some(&n) = tensor.shape.first() else {
            return Err(V2Error::BadRequest(format!(
                "input '{}' needs a batch dimension",
                info.name
            )));
        };
        if rows.is_some_and(|r| r != n) {
            return Err(V2Error::BadRequest(format!(
                "inputs disagree on the batch dimension: '{}' has {n} rows, others {}",
                info.name,
                rows.unwrap_or(0)
            )));
        }
        // Checked before splitting: `split_first` makes one tensor per row,
        // even when the rows hold no element.
        limits.check_rows(&format!("input '{}'", info.name), n)?;
        rows = Some(n);
        columns.push((info.name.clone(), tensor.split_first()));
    }
    let n = rows.unwrap_or(0);
    let mut items: Vec<NamedTensors> = (0..n).map(|_| NamedTensors::new()).collect();
    for (name, column) in columns {
        for (item, t) in items.iter_mut().zip(column) {
            item.insert(name.clone(), t);
        }
    }
    Ok(items.into_iter().map(Input::Tensors).collect())
}

/// Rows of named byte strings (OMI models): row `i` takes element `i` of
/// every input, as a 1-D `u8` tensor; the processor checks the names.
fn bytes_items(inputs: Vec<WireTensor>, limits: &InputLimits) -> Result<Vec<Input>, V2Error> {
    let mut rows: Option<usize> = None;
    let mut columns = Vec::with_capacity(inputs.len());
    for t in inputs {
        let WireData::Bytes(elems) = t.data else {
            return Err(V2Error::BadRequest(format!("input '{}' must be BYTES", t.name)));
        };
        if rows.is_some_and(|r| r != elems.len()) {
            return Err(V2Error::BadRequest(format!(
                "inputs disagree on the batch dimension at '{}'",
                t.name
            )));
        }
        limits.check_rows(&format!("input '{}'", t.name), elems.len())?;
        rows = Some(elems.len());
        columns.push((t.name, elems));
    }
    let mut items: Vec<NamedTensors> = (0..rows.unwrap_or(0)).map(|_| NamedTensors::new()).collect();
    for (name, elems) in columns {
        for (item, e) in items.iter_mut().zip(elems) {
            let n = e.len();
            let t =
                Tensor::new(vec![n], sluice_core::TensorData::U8(e)).map_err(|e| V2Error::Internal(e.to_string()))?;
            item.insert(name.clone(), t);
        }
    }
    Ok(items.into_iter().map(Input::Tensors).collect())
}

/// One item's output as named protocol values (no batch dimension).
enum Cell {
    Numeric(Tensor),
    Bytes(Vec<u8>),
}

fn cells(output: Output) -> Vec<(String, Cell)> {
    let json = |name: &str, v: serde_json::Value| vec![(name.to_string(), Cell::Bytes(v.to_string().into_bytes()))];
    match output {
        Output::Embedding(v) => {
            let n = v.len();
            match Tensor::new(vec![n], sluice_core::TensorData::F32(v)) {
                Ok(t) => vec![("embedding".into(), Cell::Numeric(t))],
                Err(_) => Vec::new(),
            }
        }
        Output::Detections(d) => json("detections", serde_json::json!(d)),
        Output::Classes(c) => json("classes", serde_json::json!(c)),
        Output::Tensors(t) => t.into_iter().map(|(k, v)| (k, Cell::Numeric(v))).collect(),
        Output::Files(files) => files
            .into_iter()
            .map(|(k, v)| {
                let bytes = match v {
                    serde_json::Value::String(s) => s.into_bytes(),
                    serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("base64") => o
                        .get("base64")
                        .and_then(|b| b.as_str())
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .unwrap_or_default(),
                    other => other.to_string().into_bytes(),
                };
                (k, Cell::Bytes(bytes))
            })
            .collect(),
    }
}

/// Stacks per-item outputs into batch tensors, in row order.
fn assemble(rows: Vec<Output>, wanted: &[String]) -> Result<Vec<WireTensor>, V2Error> {
    let n = rows.len();
    let mut columns: Vec<(String, Vec<Cell>)> = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        let row = cells(row);
        if i == 0 {
            columns = row.into_iter().map(|(k, c)| (k, vec![c])).collect();
            continue;
        }
        if row.len() != columns.len() {
            return Err(V2Error::Internal(format!("row {i} has different outputs than row 0")));
        }
        for ((name, col), (k, c)) in columns.iter_mut().zip(row) {
            if *name != k {
                return Err(V2Error::Internal(format!(
                    "row {i} has output '{k}' where row 0 has '{name}'"
                )));
            }
            col.push(c);
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !columns.iter().any(|(k, _)| k == *w)) {
        let names: Vec<&str> = columns.iter().map(|(k, _)| k.as_str()).collect();
        return Err(V2Error::BadRequest(format!(
            "the model has no output '{missing}'; its outputs are {names:?}"
        )));
    }
    columns
        .into_iter()
        .filter(|(k, _)| wanted.is_empty() || wanted.contains(k))
        .map(|(name, col)| {
            if col.iter().all(|c| matches!(c, Cell::Bytes(_))) {
                let data = col
                    .into_iter()
                    .filter_map(|c| match c {
                        Cell::Bytes(b) => Some(b),
                        Cell::Numeric(_) => None,
                    })
                    .collect();
                return Ok(WireTensor {
                    name,
                    shape: vec![n],
                    data: WireData::Bytes(data),
                });
            }
            let tensors: Vec<&Tensor> = col
                .iter()
                .filter_map(|c| match c {
                    Cell::Numeric(t) => Some(t),
                    Cell::Bytes(_) => None,
                })
                .collect();
            if tensors.len() != n || tensors.windows(2).any(|w| w[0].shape != w[1].shape) {
                return Err(V2Error::Internal(format!(
                    "output '{name}' differs in shape between rows; it cannot be returned as one tensor"
                )));
            }
            let (stacked, _) = Tensor::stack(&name, &tensors, 0.0).map_err(|e| V2Error::Internal(e.to_string()))?;
            Ok(WireTensor {
                name,
                shape: stacked.shape.clone(),
                data: WireData::Numeric(stacked),
            })
        })
        .collect()
}

/// Runs a request: splits it into items, runs them in the real-time lane and
/// reassembles the outputs. `deadline` (from a header or the transport) and
/// the request's own `timeout` parameter both apply; the earlier wins.
pub async fn infer(
    model: &Model,
    req: InferRequest,
    deadline: Option<Instant>,
    limits: &InputLimits,
) -> Result<InferResponse, V2Error> {
    let spec = model.spec();
    if req.inputs.is_empty() {
        return Err(V2Error::BadRequest("the request has no inputs".into()));
    }
    let items = to_items(model, req.inputs, limits)?;
    if items.is_empty() {
        return Err(V2Error::BadRequest("the request's batch dimension is 0".into()));
    }
    let own = req.timeout.map(|t| Instant::now() + t);
    let deadline = match (deadline, own) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let completions = model
        .infer_realtime(items, RealtimeOptions { deadline })
        .await
        .map_err(|e| match e {
            EngineError::Overloaded { .. } => V2Error::Overloaded(e.to_string()),
            other => V2Error::Unavailable(other.to_string()),
        })?;
    let mut rows = Vec::with_capacity(completions.len());
    for (i, c) in completions.into_iter().enumerate() {
        match c.result {
            Ok(out) => rows.push(out),
            Err(e) => {
                let msg = format!("row {i}: {}", e.message);
                return Err(match e.kind {
                    ItemErrorKind::InvalidInput => V2Error::BadRequest(msg),
                    ItemErrorKind::Timeout => V2Error::DeadlineExceeded(msg),
                    ItemErrorKind::Canceled | ItemErrorKind::Unavailable => V2Error::Unavailable(msg),
                    ItemErrorKind::Inference | ItemErrorKind::Internal => V2Error::Internal(msg),
                });
            }
        }
    }
    Ok(InferResponse {
        model_name: spec.name.clone(),
        model_version: spec.version.clone(),
        id: req.id,
        outputs: assemble(rows, &req.outputs)?,
    })
}

/// Encodes `BYTES` elements the way the binary extension and gRPC raw
/// contents carry them: each as a 4-byte little-endian length, then the bytes.
pub fn encode_bytes(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for e in elements {
        out.extend_from_slice(&u32::try_from(e.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Decodes length-prefixed `BYTES` elements (see [`encode_bytes`]).
pub fn decode_bytes(name: &str, raw: &[u8]) -> Result<Vec<Vec<u8>>, V2Error> {
    decode_at_most(name, raw, usize::MAX)
}

/// [`decode_bytes`], refusing more than `max` elements as soon as they show
/// (empty elements cost 4 bytes on the wire but a whole `Vec` each).
fn decode_at_most(name: &str, mut raw: &[u8], max: usize) -> Result<Vec<Vec<u8>>, V2Error> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if out.len() == max {
            return Err(V2Error::BadRequest(format!(
                "input '{name}': more BYTES elements than its shape holds ({max})"
            )));
        }
        let bad = || V2Error::BadRequest(format!("input '{name}': malformed BYTES data (truncated element)"));
        let (len, rest) = raw.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| bad())?;
        if rest.len() < len {
            return Err(bad());
        }
        let (elem, rest) = rest.split_at(len);
        out.push(elem.to_vec());
        raw = rest;
    }
    Ok(out)
}

/// Builds a tensor from raw bytes (binary extension or gRPC raw contents).
pub fn tensor_from_raw(name: &str, datatype_name: &str, shape: Vec<usize>, raw: &[u8]) -> Result<WireTensor, V2Error> {
    let numel = numel(name, &shape)?;
    let data = match parse_datatype(datatype_name)? {
        None => {
            let elems = decode_at_most(name, raw, numel)?;
            if elems.len() != numel {
                return Err(V2Error::BadRequest(format!(
                    "input '{name}': shape {shape:?} needs {numel} BYTES elements, got {}",
                    elems.len()
                )));
            }
            WireData::Bytes(elems)
        }
        Some(dtype) => WireData::Numeric(
            Tensor::from_le_bytes(shape.clone(), dtype, raw)
                .map_err(|e| V2Error::BadRequest(format!("input '{name}': {e}")))?,
        ),
    };
    Ok(WireTensor {
        name: name.into(),
        shape,
        data,
    })
}

/// The raw bytes of an output (binary extension, gRPC raw contents).
pub fn raw_bytes(t: &WireTensor) -> Vec<u8> {
    match &t.data {
        WireData::Numeric(t) => t.to_le_bytes(),
        WireData::Bytes(b) => encode_bytes(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_the_length_prefixed_layout() {
        let elems = vec![b"hello".to_vec(), Vec::new(), "héllo wörld".as_bytes().to_vec()];
        let raw = encode_bytes(&elems);
        assert_eq!(&raw[..4], &5u32.to_le_bytes());
        assert_eq!(decode_bytes("x", &raw).expect("decodes"), elems);
    }

    #[test]
    fn truncated_bytes_are_a_bad_request() {
        let mut raw = encode_bytes(&[b"hello".to_vec()]);
        raw.pop();
        let err = decode_bytes("text", &raw).expect_err("truncated");
        assert!(err.to_string().contains("input 'text'"), "{err}");
    }

    #[test]
    fn raw_bytes_elements_beyond_the_shape_are_refused_while_decoding() {
        let raw = encode_bytes(&vec![Vec::new(); 1000]);
        let err = tensor_from_raw("b", "BYTES", vec![1], &raw).expect_err("1000 for 1");
        assert!(err.to_string().contains("more BYTES elements"), "{err}");
        assert!(tensor_from_raw("b", "BYTES", vec![1000], &raw).is_ok());
    }

    #[test]
    fn numeric_raw_data_must_fill_the_shape() {
        let raw: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let err = tensor_from_raw("x", "FP32", vec![2, 2], &raw).expect_err("3 of 4");
        assert!(err.to_string().contains("input 'x'"), "{err}");
        let ok = tensor_from_raw("x", "FP32", vec![1, 3], &raw).expect("fits");
        assert_eq!(raw_bytes(&ok), raw);
    }

    #[test]
    fn unknown_datatypes_name_the_supported_ones() {
        let err = parse_datatype("FP16").expect_err("fp16");
        assert!(
            err.to_string().contains("FP16") && err.to_string().contains("FP32"),
            "{err}"
        );
    }

    #[test]
    fn outputs_are_stacked_in_row_order_and_filtered() {
        let rows = vec![Output::Embedding(vec![1.0, 2.0]), Output::Embedding(vec![3.0, 4.0])];
        let out = assemble(rows, &[]).expect("stacks");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shape, vec![2, 2]);
        assert_eq!(out[0].datatype(), "FP32");
        let WireData::Numeric(t) = &out[0].data else {
            panic!("numeric")
        };
        assert_eq!(t.data, sluice_core::TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]));
        let err = assemble(vec![Output::Embedding(vec![1.0])], &["nope".into()]).expect_err("unknown");
        assert!(err.to_string().contains("no output 'nope'"), "{err}");
    }
}
