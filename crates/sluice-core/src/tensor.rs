//! Dense tensors as they travel between processing, the batcher and runtimes.
//!
//! Items carry their tensors *without* the batch dimension; a runtime stacks
//! the items of a batch into one tensor per input (padding ragged dimensions,
//! e.g. token sequences of different lengths) and splits the outputs back into
//! one tensor per item. Both operations live here so every backend batches the
//! same way.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Tensors keyed by their graph name.
pub type NamedTensors = BTreeMap<String, Tensor>;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// Boolean.
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::U8 | DType::I8 | DType::Bool => 1,
        }
    }

    /// Parses the names used by model.toml, ONNX and the KServe v2 protocol
    /// (`float32`, `FP32`, `int64`, `INT64`, ...).
    pub fn parse(name: &str) -> Option<DType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "f32" | "float" | "float32" | "fp32" => DType::F32,
            "f64" | "double" | "float64" | "fp64" => DType::F64,
            "i64" | "int64" => DType::I64,
            "i32" | "int32" => DType::I32,
            "u8" | "uint8" => DType::U8,
            "i8" | "int8" => DType::I8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// Flat, row-major element storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dtype", content = "data", rename_all = "lowercase")]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 64-bit integers.
    I64(Vec<i64>),
    /// 32-bit integers.
    I32(Vec<i32>),
    /// Unsigned bytes.
    U8(Vec<u8>),
    /// Signed bytes.
    I8(Vec<i8>),
    /// Booleans.
    Bool(Vec<bool>),
}

macro_rules! each_variant {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::Bool($v) => $body,
        }
    };
}

impl TensorData {
    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::U8(_) => DType::U8,
            TensorData::I8(_) => DType::I8,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_capacity(dtype: DType, n: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(Vec::with_capacity(n)),
            DType::F64 => TensorData::F64(Vec::with_capacity(n)),
            DType::I64 => TensorData::I64(Vec::with_capacity(n)),
            DType::I32 => TensorData::I32(Vec::with_capacity(n)),
            DType::U8 => TensorData::U8(Vec::with_capacity(n)),
            DType::I8 => TensorData::I8(Vec::with_capacity(n)),
            DType::Bool => TensorData::Bool(Vec::with_capacity(n)),
        }
    }

    /// Appends `src[range]` (same dtype required, checked by callers).
    fn extend_from(&mut self, src: &TensorData, range: std::ops::Range<usize>) {
        match (self, src) {
            (TensorData::F32(d), TensorData::F32(s)) => d.extend_from_slice(&s[range]),
            (TensorData::F64(d), TensorData::F64(s)) => d.extend_from_slice(&s[range]),
            (TensorData::I64(d), TensorData::I64(s)) => d.extend_from_slice(&s[range]),
            (TensorData::I32(d), TensorData::I32(s)) => d.extend_from_slice(&s[range]),
            (TensorData::U8(d), TensorData::U8(s)) => d.extend_from_slice(&s[range]),
            (TensorData::I8(d), TensorData::I8(s)) => d.extend_from_slice(&s[range]),
            (TensorData::Bool(d), TensorData::Bool(s)) => d.extend_from_slice(&s[range]),
            _ => unreachable!("dtype checked by caller"),
        }
    }

    /// Appends `n` copies of `pad` converted to this dtype.
    fn extend_pad(&mut self, pad: f64, n: usize) {
        match self {
            TensorData::F32(d) => d.resize(d.len() + n, pad as f32),
            TensorData::F64(d) => d.resize(d.len() + n, pad),
            TensorData::I64(d) => d.resize(d.len() + n, pad as i64),
            TensorData::I32(d) => d.resize(d.len() + n, pad as i32),
            TensorData::U8(d) => d.resize(d.len() + n, pad as u8),
            TensorData::I8(d) => d.resize(d.len() + n, pad as i8),
            TensorData::Bool(d) => d.resize(d.len() + n, pad != 0.0),
        }
    }

    /// Element `i` as f64 (for JSON output and comparisons).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        Some(match self {
            TensorData::F32(v) => f64::from(*v.get(i)?),
            TensorData::F64(v) => *v.get(i)?,
            TensorData::I64(v) => *v.get(i)? as f64,
            TensorData::I32(v) => f64::from(*v.get(i)?),
            TensorData::U8(v) => f64::from(*v.get(i)?),
            TensorData::I8(v) => f64::from(*v.get(i)?),
            TensorData::Bool(v) => f64::from(u8::from(*v.get(i)?)),
        })
    }
}

/// Why a tensor could not be built, stacked or parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    /// Element count does not match the shape.
    #[error("shape {shape:?} needs {expected} elements but {actual} were given")]
    ElementCount {
        /// Declared shape.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements present.
        actual: usize,
    },
    /// Items in one batch disagree on dtype or rank.
    #[error("cannot batch tensor '{name}': {detail}")]
    Incompatible {
        /// Input name.
        name: String,
        /// What differs.
        detail: String,
    },
    /// JSON or base64 payload could not be decoded.
    #[error("{0}")]
    Parse(String),
    /// The shape is beyond what a tensor may have (rank, element count, or
    /// dimensions whose product overflows).
    #[error("{0}")]
    Shape(String),
}

/// Most dimensions a tensor built from client input may have.
pub const MAX_RANK: usize = 16;

/// Default bound on a tensor's extent (see [`ShapeLimits`]): 64 Mi, the
/// default request body limit in bytes, so any tensor whose elements travel in
/// a default-sized request fits.
pub const DEFAULT_MAX_ELEMENTS: usize = 64 << 20;

/// Bounds on the shape of a tensor built from client input, checked before
/// anything is allocated for it.
///
/// The *extent* of a shape is the product of its dimensions with zero-sized
/// dimensions counted as one: `[1099511627776, 0]` holds no element but has an
/// extent of 2^40. Bounding the extent (not only the element count) keeps an
/// empty tensor from turning into 2^40 empty rows or being padded up to a huge
/// batch, and the arithmetic is checked, so no product can overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    /// Most dimensions.
    pub max_rank: usize,
    /// Largest extent (and so largest element count).
    pub max_elements: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        ShapeLimits {
            max_rank: MAX_RANK,
            max_elements: DEFAULT_MAX_ELEMENTS,
        }
    }
}

impl ShapeLimits {
    /// Checks `shape` and returns its element count.
    pub fn check(&self, shape: &[usize]) -> Result<usize, TensorError> {
        if shape.len() > self.max_rank {
            return Err(TensorError::Shape(format!(
                "shape {shape:?} has {} dimensions; at most {} are allowed",
                shape.len(),
                self.max_rank
            )));
        }
        let too_big = || {
            TensorError::Shape(format!(
                "shape {shape:?} is too large: its dimensions (zero-sized ones counted as 1) multiply to more than {} elements",
                self.max_elements
            ))
        };
        let mut extent: usize = 1;
        for &d in shape {
            extent = extent.checked_mul(d.max(1)).ok_or_else(too_big)?;
            if extent > self.max_elements {
                return Err(too_big());
            }
        }
        checked_numel(shape)
    }
}

/// The element count of `shape`, with overflow reported instead of wrapping.
pub fn checked_numel(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| TensorError::Shape(format!("shape {shape:?} is too large: its element count overflows")))
}

/// A dense, row-major tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    #[serde(flatten)]
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking the element count against the shape.
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor, TensorError> {
        let expected = checked_numel(&shape)?;
        if expected != data.len() {
            return Err(TensorError::ElementCount {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Stacks per-item tensors into one tensor with a leading batch dimension.
    ///
    /// Items may differ in the size of any dimension (ragged sequences); each
    /// dimension is padded up to the largest item with `pad`. Returns the
    /// stacked tensor and the number of padding elements added.
    pub fn stack(name: &str, items: &[&Tensor], pad: f64) -> Result<(Tensor, usize), TensorError> {
        let first = items.first().ok_or_else(|| TensorError::Incompatible {
            name: name.to_string(),
            detail: "empty batch".into(),
        })?;
        let rank = first.shape.len();
        let dtype = first.dtype();
        let mut max_shape = first.shape.clone();
        for t in items {
            if t.dtype() != dtype {
                return Err(TensorError::Incompatible {
                    name: name.to_string(),
                    detail: format!("dtype {} vs {}", t.dtype(), dtype),
                });
            }
            if t.shape.len() != rank {
                return Err(TensorError::Incompatible {
                    name: name.to_string(),
                    detail: format!("rank {} vs {}", t.shape.len(), rank),
                });
            }
            for (m, d) in max_shape.iter_mut().zip(&t.shape) {
                *m = (*m).max(*d);
            }
        }
        let too_big = || TensorError::Incompatible {
            name: name.to_string(),
            detail: format!("a batch of {} items padded to {max_shape:?} is too large", items.len()),
        };
        let per_item = checked_numel(&max_shape).map_err(|_| too_big())?;
        let total = per_item.checked_mul(items.len()).ok_or_else(too_big)?;
        let mut data = TensorData::with_capacity(dtype, total);
        let mut padded = 0;
        for t in items {
            if t.shape == max_shape {
                data.extend_from(&t.data, 0..t.numel());
            } else {
                padded += per_item - t.numel();
                copy_padded(&mut data, t, &max_shape, pad);
            }
        }
        let mut shape = Vec::with_capacity(rank + 1);
        shape.push(items.len());
        shape.extend_from_slice(&max_shape);
        Ok((Tensor { shape, data }, padded))
    }

    /// Splits along the first dimension into `shape[0]` tensors.
    pub fn split_first(&self) -> Vec<Tensor> {
        let Some((&n, rest)) = self.shape.split_first() else {
            return Vec::new();
        };
        let per: usize = rest.iter().product();
        (0..n)
            .map(|i| {
                let mut data = TensorData::with_capacity(self.dtype(), per);
                data.extend_from(&self.data, i * per..(i + 1) * per);
                Tensor {
                    shape: rest.to_vec(),
                    data,
                }
            })
            .collect()
    }

    /// Parses a tensor from JSON: either nested arrays (`[[1,2],[3,4]]`) whose
    /// nesting gives the shape, or `{"shape": [..], "data": [..]}` with flat
    /// data, or `{"shape": [..], "b64": ".."}` with little-endian bytes.
    pub fn from_json(value: &serde_json::Value, dtype: DType) -> Result<Tensor, TensorError> {
        if let Some(obj) = value.as_object() {
            let shape: Vec<usize> = obj
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| TensorError::Parse("tensor object needs a 'shape' array".into()))?
                .iter()
                .map(|d| {
                    d.as_u64()
                        .and_then(|d| usize::try_from(d).ok())
                        .ok_or_else(|| TensorError::Parse(format!("bad dimension {d}")))
                })
                .collect::<Result<_, _>>()?;
            ShapeLimits::default().check(&shape)?;
            if let Some(b64) = obj.get("b64").and_then(|b| b.as_str()) {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| TensorError::Parse(format!("invalid base64: {e}")))?;
                return Tensor::from_le_bytes(shape, dtype, &bytes);
            }
            let data = obj
                .get("data")
                .ok_or_else(|| TensorError::Parse("tensor object needs 'data' or 'b64'".into()))?;
            let mut flat = Vec::new();
            flatten(data, &mut flat, &mut Vec::new(), 0)?;
            return Tensor::new(shape, numbers_to_data(&flat, dtype)?);
        }
        let mut flat = Vec::new();
        let mut shape = Vec::new();
        flatten(value, &mut flat, &mut shape, 0)?;
        ShapeLimits::default().check(&shape)?;
        Tensor::new(shape, numbers_to_data(&flat, dtype)?)
    }

    /// Builds a tensor of `shape` from JSON numbers, flat or nested in any
    /// way (the KServe v2 `data` field): only the element count must match.
    pub fn from_json_data(shape: Vec<usize>, data: &serde_json::Value, dtype: DType) -> Result<Tensor, TensorError> {
        let mut flat = Vec::new();
        flatten_any(data, &mut flat)?;
        Tensor::new(shape, numbers_to_data(&flat, dtype)?)
    }

    /// The elements as little-endian bytes (the layout of ONNX, NumPy and
    /// the KServe v2 binary tensor extension).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::U8(v) => v.clone(),
            TensorData::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        }
    }

    /// Builds a tensor from little-endian element bytes.
    pub fn from_le_bytes(shape: Vec<usize>, dtype: DType, bytes: &[u8]) -> Result<Tensor, TensorError> {
        let size = dtype.size();
        if !bytes.len().is_multiple_of(size) {
            return Err(TensorError::Parse(format!(
                "{} bytes is not a whole number of {dtype} elements",
                bytes.len()
            )));
        }
        let chunks = bytes.chunks_exact(size);
        let data = match dtype {
            DType::F32 => TensorData::F32(chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DType::F64 => TensorData::F64(chunks.map(|c| f64::from_le_bytes(arr8(c))).collect()),
            DType::I64 => TensorData::I64(chunks.map(|c| i64::from_le_bytes(arr8(c))).collect()),
            DType::I32 => TensorData::I32(chunks.map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DType::U8 => TensorData::U8(bytes.to_vec()),
            DType::I8 => TensorData::I8(bytes.iter().map(|b| *b as i8).collect()),
            DType::Bool => TensorData::Bool(bytes.iter().map(|b| *b != 0).collect()),
        };
        Tensor::new(shape, data)
    }

    /// Serialises to JSON as `{"shape", "dtype", "data"}` with flat data.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "shape": self.shape,
            "dtype": self.dtype().to_string(),
            "data": match &self.data {
                TensorData::F32(v) => serde_json::json!(v),
                TensorData::F64(v) => serde_json::json!(v),
                TensorData::I64(v) => serde_json::json!(v),
                TensorData::I32(v) => serde_json::json!(v),
                TensorData::U8(v) => serde_json::json!(v),
                TensorData::I8(v) => serde_json::json!(v),
                TensorData::Bool(v) => serde_json::json!(v),
            }
        })
    }
}

fn arr8(c: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    a
}

/// Copies `t` into `out` laid out as `max_shape`, padding every dimension.
fn copy_padded(out: &mut TensorData, t: &Tensor, max_shape: &[usize], pad: f64) {
    fn rec(out: &mut TensorData, t: &Tensor, max: &[usize], dim: usize, offset: usize, pad: f64) {
        let rank = max.len();
        let inner_src: usize = t.shape[dim + 1..].iter().product();
        let inner_max: usize = max[dim + 1..].iter().product();
        if dim + 1 == rank {
            out.extend_from(&t.data, offset..offset + t.shape[dim]);
            out.extend_pad(pad, max[dim] - t.shape[dim]);
            return;
        }
        for i in 0..t.shape[dim] {
            rec(out, t, max, dim + 1, offset + i * inner_src, pad);
        }
        out.extend_pad(pad, (max[dim] - t.shape[dim]) * inner_max);
    }
    if max_shape.is_empty() {
        out.extend_from(&t.data, 0..t.numel());
    } else {
        rec(out, t, max_shape, 0, 0, pad);
    }
}

/// One JSON element before it is converted to the tensor's dtype: integers
/// stay exact (an `INT64` beyond 2^53 is not rounded through `f64`).
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Int(i128),
    Float(f64),
}

impl Scalar {
    fn from_json(v: &serde_json::Value) -> Result<Scalar, TensorError> {
        match v {
            serde_json::Value::Bool(b) => Ok(Scalar::Int(i128::from(*b))),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Scalar::Int(i128::from(i)))
                } else if let Some(u) = n.as_u64() {
                    Ok(Scalar::Int(i128::from(u)))
                } else {
                    n.as_f64()
                        .map(Scalar::Float)
                        .ok_or_else(|| TensorError::Parse(format!("{n} is not a representable number")))
                }
            }
            other => Err(TensorError::Parse(format!("expected a number, got {other}"))),
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{}", Num(*x)),
        }
    }
}

/// A float as a person would write it: `1e300`, not 301 digits.
struct Num(f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 != 0.0 && !(1e-6..1e16).contains(&self.0.abs()) {
            write!(f, "{:e}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Collects every number of arbitrarily nested arrays, in order.
fn flatten_any(v: &serde_json::Value, out: &mut Vec<Scalar>) -> Result<(), TensorError> {
    match v {
        serde_json::Value::Array(items) => items.iter().try_for_each(|i| flatten_any(i, out)),
        other => {
            out.push(Scalar::from_json(other)?);
            Ok(())
        }
    }
}

fn flatten(
    v: &serde_json::Value,
    out: &mut Vec<Scalar>,
    shape: &mut Vec<usize>,
    depth: usize,
) -> Result<(), TensorError> {
    match v {
        serde_json::Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            } else if shape.get(depth) != Some(&items.len()) {
                return Err(TensorError::Parse(format!(
                    "ragged nested array: dimension {depth} has lengths {} and {}",
                    shape.get(depth).copied().unwrap_or(0),
                    items.len()
                )));
            }
            for item in items {
                flatten(item, out, shape, depth + 1)?;
            }
            Ok(())
        }
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
            if depth != shape.len() && !shape.is_empty() {
                return Err(TensorError::Parse("ragged nested array".into()));
            }
            out.push(Scalar::from_json(v)?);
            Ok(())
        }
        other => Err(TensorError::Parse(format!("expected a number, found {other}"))),
    }
}

/// Converts to an integer type: the value must be integral and in range.
fn to_int<T: TryFrom<i128>>(x: Scalar, dtype: DType) -> Result<T, TensorError> {
    let i = match x {
        Scalar::Int(i) => i,
        Scalar::Float(f) => {
            if !f.is_finite() || f.fract() != 0.0 {
                return Err(TensorError::Parse(format!(
                    "{} is not an integer for a {dtype} tensor",
                    Num(f)
                )));
            }
            // |f| < 2^127: exact as i128; beyond, out of range of every type here.
            if f.abs() >= 1.7e38 {
                return Err(TensorError::Parse(format!("{} is out of range for {dtype}", Num(f))));
            }
            #[allow(clippy::cast_possible_truncation)]
            let i = f as i128;
            i
        }
    };
    T::try_from(i).map_err(|_| TensorError::Parse(format!("{i} is out of range for {dtype}")))
}

fn to_f64(x: Scalar) -> f64 {
    match x {
        #[allow(clippy::cast_precision_loss)]
        Scalar::Int(i) => i as f64,
        Scalar::Float(f) => f,
    }
}

fn numbers_to_data(v: &[Scalar], dtype: DType) -> Result<TensorData, TensorError> {
    Ok(match dtype {
        DType::F32 => TensorData::F32(
            v.iter()
                .map(|&x| {
                    let f = to_f64(x);
                    #[allow(clippy::cast_possible_truncation)]
                    let g = f as f32;
                    if g.is_finite() || !f.is_finite() {
                        Ok(g)
                    } else {
                        Err(TensorError::Parse(format!(
                            "{x} is out of range for float32 (largest magnitude {:e})",
                            f32::MAX
                        )))
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::F64 => TensorData::F64(v.iter().map(|&x| to_f64(x)).collect()),
        DType::I64 => TensorData::I64(v.iter().map(|&x| to_int(x, dtype)).collect::<Result<_, _>>()?),
        DType::I32 => TensorData::I32(v.iter().map(|&x| to_int(x, dtype)).collect::<Result<_, _>>()?),
        DType::U8 => TensorData::U8(v.iter().map(|&x| to_int(x, dtype)).collect::<Result<_, _>>()?),
        DType::I8 => TensorData::I8(v.iter().map(|&x| to_int(x, dtype)).collect::<Result<_, _>>()?),
        DType::Bool => TensorData::Bool(
            v.iter()
                .map(|&x| match to_int::<u8>(x, dtype) {
                    Ok(0) => Ok(false),
                    Ok(1) => Ok(true),
                    _ => Err(TensorError::Parse(format!(
                        "{x} is not a bool (use true, false, 0 or 1)"
                    ))),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::I64(v.to_vec())).expect("valid")
    }

    #[test]
    fn stack_pads_ragged_sequences() {
        let a = t(&[3], &[1, 2, 3]);
        let b = t(&[1], &[7]);
        let (s, padded) = Tensor::stack("ids", &[&a, &b], 0.0).expect("stack");
        assert_eq!(s.shape, vec![2, 3]);
        assert_eq!(s.data, TensorData::I64(vec![1, 2, 3, 7, 0, 0]));
        assert_eq!(padded, 2);
    }

    #[test]
    fn stack_pads_inner_dimensions() {
        let a = t(&[2, 2], &[1, 2, 3, 4]);
        let b = t(&[1, 1], &[9]);
        let (s, padded) = Tensor::stack("x", &[&a, &b], -1.0).expect("stack");
        assert_eq!(s.shape, vec![2, 2, 2]);
        assert_eq!(s.data, TensorData::I64(vec![1, 2, 3, 4, 9, -1, -1, -1]));
        assert_eq!(padded, 3);
    }

    #[test]
    fn stack_rejects_mixed_rank() {
        let a = t(&[2], &[1, 2]);
        let b = t(&[1, 1], &[9]);
        assert!(matches!(
            Tensor::stack("x", &[&a, &b], 0.0),
            Err(TensorError::Incompatible { .. })
        ));
    }

    #[test]
    fn split_inverts_stack() {
        let a = t(&[2], &[1, 2]);
        let b = t(&[2], &[3, 4]);
        let (s, _) = Tensor::stack("x", &[&a, &b], 0.0).expect("stack");
        assert_eq!(s.split_first(), vec![a, b]);
    }

    #[test]
    fn json_nested_and_flat() {
        let nested = serde_json::json!([[1, 2, 3], [4, 5, 6]]);
        let x = Tensor::from_json(&nested, DType::F32).expect("nested");
        assert_eq!(x.shape, vec![2, 3]);
        let flat = serde_json::json!({"shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]});
        let y = Tensor::from_json(&flat, DType::I64).expect("flat");
        assert_eq!(y.shape, vec![3, 2]);
        let bad = serde_json::json!({"shape": [4], "data": [1, 2]});
        assert!(matches!(
            Tensor::from_json(&bad, DType::F32),
            Err(TensorError::ElementCount { .. })
        ));
        let ragged = serde_json::json!([[1, 2], [3]]);
        assert!(Tensor::from_json(&ragged, DType::F32).is_err());
        let frac = serde_json::json!([1.5]);
        assert!(Tensor::from_json(&frac, DType::I64).is_err());
    }

    #[test]
    fn base64_little_endian() {
        let bytes: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|f| f.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let v = serde_json::json!({"shape": [2], "b64": b64});
        let x = Tensor::from_json(&v, DType::F32).expect("b64");
        assert_eq!(x.data, TensorData::F32(vec![1.0, -2.5]));
        let bad = serde_json::json!({"shape": [2], "b64": "AAA"});
        assert!(Tensor::from_json(&bad, DType::F32).is_err());
    }

    #[test]
    fn shape_limits_bound_the_extent_with_checked_arithmetic() {
        let limits = ShapeLimits::default();
        assert_eq!(limits.check(&[2, 3]), Ok(6));
        assert_eq!(limits.check(&[4, 0]), Ok(0));
        // Empty but with a huge extent: refused, as is an overflowing product.
        assert!(matches!(limits.check(&[1 << 40, 0]), Err(TensorError::Shape(_))));
        assert!(matches!(limits.check(&[1 << 62, 0]), Err(TensorError::Shape(_))));
        assert!(matches!(limits.check(&[usize::MAX, 2]), Err(TensorError::Shape(_))));
        assert!(matches!(limits.check(&[1; MAX_RANK + 1]), Err(TensorError::Shape(_))));
        assert!(matches!(
            Tensor::new(vec![1 << 32, 1 << 32, 1 << 32], TensorData::F32(Vec::new())),
            Err(TensorError::Shape(_))
        ));
        let huge = serde_json::json!({"shape": [1u64 << 40, 0], "data": []});
        assert!(matches!(
            Tensor::from_json(&huge, DType::F32),
            Err(TensorError::Shape(_))
        ));
    }

    #[test]
    fn json_numbers_are_range_checked_per_dtype() {
        let parse = |v: serde_json::Value, d: DType| Tensor::from_json_data(vec![1], &v, d);
        assert!(parse(serde_json::json!([127]), DType::I8).is_ok());
        assert!(parse(serde_json::json!([255]), DType::U8).is_ok());
        assert!(parse(serde_json::json!([2.0]), DType::I32).is_ok());
        assert_eq!(
            parse(serde_json::json!([9007199254740993i64]), DType::I64).map(|t| t.data),
            Ok(TensorData::I64(vec![9007199254740993]))
        );
        for (v, d) in [
            (serde_json::json!([128]), DType::I8),
            (serde_json::json!([-1]), DType::U8),
            (serde_json::json!([2147483648i64]), DType::I32),
            (serde_json::json!([9223372036854775808u64]), DType::I64),
            (serde_json::json!([1e300]), DType::I64),
            (serde_json::json!([0.5]), DType::I64),
            (serde_json::json!([2]), DType::Bool),
            (serde_json::json!([1e39]), DType::F32),
        ] {
            let err = parse(v.clone(), d).expect_err("refused");
            assert!(
                err.to_string().contains(&v[0].to_string()) || err.to_string().contains("e"),
                "{v}: {err}"
            );
        }
        assert_eq!(
            parse(serde_json::json!([true]), DType::Bool).map(|t| t.data),
            Ok(TensorData::Bool(vec![true]))
        );
        assert!(parse(serde_json::json!([3.4028235e38]), DType::F32).is_ok());
    }
}
