//! The ONNX Runtime backend: runs ONNX models in-process.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic` feature) from
//! the shared library shipped in the `onnxruntime` PyPI wheel, because `ort`'s
//! default build step downloads binaries, which fails on machines that reach
//! only package registries. [`locate_library`] says where Sluice looks and
//! what to run when it is missing.
//!
//! Each model instance owns one `Session` (its `run` needs `&mut self`) on
//! its own thread; the engine never calls it from an async executor.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
use sluice_core::spec::{Device, ModelSpec};
use sluice_core::{
    Backend, BatchError, DType, ItemError, ModelSignature, NamedTensors, Runtime, Tensor, TensorData, TensorInfo,
};

/// The environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// Where `scripts/setup.sh` puts the library, relative to the project root.
pub const LOCAL_LIB_DIR: &str = ".sluice/onnxruntime/lib";
/// The command that installs the library.
pub const SETUP_HINT: &str = "run `bash scripts/setup.sh` in the Sluice checkout (it installs the onnxruntime 1.32 wheel's library into .sluice/onnxruntime/lib), or set ORT_DYLIB_PATH to a libonnxruntime.so 1.32";

/// Errors of the ONNX backend.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The shared library was not found or failed to load.
    #[error("ONNX Runtime library not available: {0}")]
    Library(String),
    /// The model file could not be loaded.
    #[error("cannot load ONNX model {path}: {message}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// The requested device is unavailable and CPU fallback is off.
    #[error("{0}")]
    Device(String),
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
}

/// Finds the ONNX Runtime shared library: `ORT_DYLIB_PATH`, else
/// `.sluice/onnxruntime/lib/` in the current directory, the executable's
/// directory, or any of their parents (so `target/release/sluice` finds the
/// checkout's copy).
pub fn locate_library() -> Result<PathBuf, OnnxError> {
    if let Some(p) = std::env::var_os(DYLIB_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(OnnxError::Library(format!(
                "{DYLIB_ENV}={} does not exist; {SETUP_HINT}",
                p.display()
            )))
        };
    }
    if let Some(lib) = sluice_core::local::search_ancestors(|d| find_in(&d.join(LOCAL_LIB_DIR))) {
        return Ok(lib);
    }
    Err(OnnxError::Library(format!(
        "no libonnxruntime.so in {DYLIB_ENV} or {LOCAL_LIB_DIR}; {SETUP_HINT}"
    )))
}

fn find_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found.pop()
}

static INIT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment; later
/// calls return the first outcome.
pub fn init() -> Result<Environment, OnnxError> {
    INIT.get_or_init(|| {
        let path = locate_library().map_err(|e| e.to_string())?;
        let env = ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}; {SETUP_HINT}", path.display()))?
            .with_name("sluice")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        tracing::debug!(library = %path.display(), "ONNX Runtime loaded");
        Ok(env)
    })
    .clone()
    .map_err(OnnxError::Library)
}

/// Session settings from a model's spec, shared by the backend and the raw
/// baseline benchmarks so both measure the same configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Requested device.
    pub device: Device,
    /// Run on CPU when the requested GPU is unavailable.
    pub allow_cpu_fallback: bool,
    /// Intra-op threads; 0 lets ONNX Runtime decide.
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin (ONNX Runtime's default) instead
    /// of sleeping; spinning steals CPU from request handling on small hosts.
    pub spinning: bool,
}

impl SessionConfig {
    /// The settings a spec asks for.
    pub fn of(spec: &ModelSpec) -> Result<SessionConfig, OnnxError> {
        Ok(SessionConfig {
            device: spec.device().map_err(OnnxError::Config)?,
            allow_cpu_fallback: spec.allow_cpu_fallback,
            intra_threads: spec.intra_op_threads,
            spinning: spec.intra_op_spinning,
        })
    }
}

/// Opens a session of `path` with `cfg`; returns the device it runs on.
pub fn open_session(path: &Path, cfg: SessionConfig) -> Result<(Session, Device), OnnxError> {
    let SessionConfig {
        device,
        allow_cpu_fallback,
        intra_threads,
        spinning,
    } = cfg;
    let env = init()?;
    let model_err = |message: String| OnnxError::Model {
        path: path.to_path_buf(),
        message,
    };
    let builder = || -> Result<_, OnnxError> {
        let mut b = Session::builder(&env).map_err(|e| model_err(e.to_string()))?;
        if intra_threads > 0 {
            b = b
                .with_intra_threads(intra_threads)
                .map_err(|e| model_err(e.to_string()))?;
        }
        b = b.with_inter_threads(1).map_err(|e| model_err(e.to_string()))?;
        if !spinning {
            b = b.with_intra_op_spinning(false).map_err(|e| model_err(e.to_string()))?;
        }
        Ok(b)
    };
    match device {
        Device::Cpu => {
            let session = builder()?
                .commit_from_file(path)
                .map_err(|e| model_err(e.to_string()))?;
            Ok((session, Device::Cpu))
        }
        Device::Cuda(id) => {
            let cuda = ep::CUDA::default().with_device_id(id as i32).build().error_on_failure();
            let attempt = builder()?
                .with_execution_providers([cuda])
                .map_err(|e| e.to_string())
                .and_then(|mut b| b.commit_from_file(path).map_err(|e| e.to_string()));
            match attempt {
                Ok(session) => Ok((session, device)),
                Err(e) if allow_cpu_fallback => {
                    tracing::warn!(model = %path.display(), error = %e, "CUDA unavailable, falling back to CPU");
                    let session = builder()?.commit_from_file(path).map_err(|e| model_err(e.to_string()))?;
                    Ok((session, Device::Cpu))
                }
                Err(e) => Err(OnnxError::Device(format!(
                    "device cuda:{id} requested but the CUDA execution provider could not start ({e}); install the onnxruntime-gpu library with CUDA 12 and cuDNN 9, or set allow_cpu_fallback = true in model.toml"
                ))),
            }
        }
    }
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

fn info_of(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            dtype: dtype_of(*ty),
            shape: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
        },
        _ => TensorInfo {
            name: name.to_string(),
            dtype: None,
            shape: Vec::new(),
        },
    }
}

/// Reads the input/output signature of a session.
pub fn signature_of(session: &Session) -> ModelSignature {
    ModelSignature {
        inputs: session.inputs().iter().map(|o| info_of(o.name(), o.dtype())).collect(),
        outputs: session.outputs().iter().map(|o| info_of(o.name(), o.dtype())).collect(),
    }
}

/// An ONNX model ready to create instances.
pub struct OnnxBackend {
    path: PathBuf,
    cfg: SessionConfig,
    signature: ModelSignature,
    /// The session opened to read the signature, handed to instance 0.
    first: Mutex<Option<Session>>,
}

impl OnnxBackend {
    /// Loads the model a spec names (`runtime = "onnx"`).
    pub fn load(spec: &ModelSpec) -> Result<OnnxBackend, OnnxError> {
        let file = spec
            .model_file
            .as_ref()
            .ok_or_else(|| OnnxError::Config(format!("model '{}' has no model_file", spec.name)))?;
        let path = spec.resolve(file);
        if !path.is_file() {
            return Err(OnnxError::Model {
                path,
                message: "file not found (for models built at setup, run `bash scripts/setup.sh`)".into(),
            });
        }
        let mut cfg = SessionConfig::of(spec)?;
        let (session, device) = open_session(&path, cfg)?;
        // Later instances open on the device the first one got (after any fallback).
        cfg.device = device;
        Ok(OnnxBackend {
            signature: signature_of(&session),
            path,
            cfg,
            first: Mutex::new(Some(session)),
        })
    }

    /// The device sessions actually run on (after any CPU fallback).
    pub fn device(&self) -> Device {
        self.cfg.device
    }
}

impl Backend for OnnxBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn describe(&self) -> String {
        let threads = if self.cfg.intra_threads == 0 {
            "default threads".to_string()
        } else {
            format!("{} intra-op threads", self.cfg.intra_threads)
        };
        format!("onnx {} ({threads})", self.cfg.device)
    }

    fn create_instance(&self, _index: usize) -> Result<Box<dyn Runtime>, BatchError> {
        let reused = self.first.lock().map_or(None, |mut s| s.take());
        let session = match reused {
            Some(s) => s,
            None => {
                open_session(&self.path, self.cfg)
                    .map_err(|e| BatchError::fatal(e.to_string()))?
                    .0
            }
        };
        Ok(Box::new(OnnxInstance::new(session)))
    }
}

/// One session, run on one instance thread.
pub struct OnnxInstance {
    session: Session,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl OnnxInstance {
    /// Wraps a session.
    pub fn new(session: Session) -> OnnxInstance {
        OnnxInstance {
            inputs: session.inputs().iter().map(|o| o.name().to_string()).collect(),
            outputs: session.outputs().iter().map(|o| o.name().to_string()).collect(),
            session,
        }
    }

    /// Runs already-stacked batch tensors and returns the batch outputs.
    pub fn run_stacked(&mut self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, BatchError> {
        let outputs = self
            .session
            .run(session_inputs(inputs)?)
            .map_err(|e| BatchError::new(e.to_string()))?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| BatchError::new(format!("missing output '{name}'")))?;
            out.push((
                name.clone(),
                from_ort(value).map_err(|e| BatchError::new(format!("output '{name}': {e}")))?,
            ));
        }
        Ok(out)
    }
}

impl Runtime for OnnxInstance {
    fn run(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        let n = batch.len();
        let mut stacked = Vec::with_capacity(self.inputs.len());
        for name in &self.inputs {
            let items: Vec<&Tensor> = batch
                .iter()
                .map(|item| {
                    item.get(name)
                        .ok_or_else(|| BatchError::new(format!("an item lacks input '{name}'")))
                })
                .collect::<Result<_, _>>()?;
            let (t, _) = Tensor::stack(name, &items, 0.0).map_err(|e| BatchError::new(e.to_string()))?;
            stacked.push((name.clone(), t));
        }
        // Split each output straight from ONNX Runtime's buffer into per-item
        // tensors: one copy, not a batch copy and then per-item copies.
        let outputs = self
            .session
            .run(session_inputs(stacked)?)
            .map_err(|e| BatchError::new(e.to_string()))?;
        let mut results: Vec<NamedTensors> = (0..n).map(|_| NamedTensors::new()).collect();
        for name in &self.outputs {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| BatchError::new(format!("missing output '{name}'")))?;
            let parts = split_ort(value, n).map_err(|e| BatchError::new(format!("output '{name}': {e}")))?;
            for (item, part) in results.iter_mut().zip(parts) {
                item.insert(name.clone(), part);
            }
        }
        Ok(results.into_iter().map(Ok).collect())
    }
}

/// Named batch tensors as session inputs (moved, not copied).
fn session_inputs(
    inputs: Vec<(String, Tensor)>,
) -> Result<Vec<(Cow<'static, str>, SessionInputValue<'static>)>, BatchError> {
    inputs
        .into_iter()
        .map(|(name, t)| {
            let v = to_ort(t).map_err(|e| BatchError::new(format!("input '{name}': {e}")))?;
            Ok((Cow::Owned(name), SessionInputValue::from(v)))
        })
        .collect()
}

fn to_ort(t: Tensor) -> Result<DynValue, ort::Error> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match t.data {
        TensorData::F32(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::F64(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::I64(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::I32(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::U8(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::I8(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Bool(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
    })
}

/// Splits a batch output `[n, ...]` into `n` per-item tensors.
fn split_ort(v: &DynValue, n: usize) -> Result<Vec<Tensor>, String> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err("not a tensor".into());
    };
    macro_rules! split {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(|e| e.to_string())?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            if shape.first() != Some(&n) {
                return Err(format!("shape {shape:?} lacks a batch dimension of {n}"));
            }
            let rest = shape[1..].to_vec();
            let per: usize = rest.iter().product();
            if data.len() != per * n {
                return Err(format!("{} elements do not fill shape {shape:?}", data.len()));
            }
            (0..n)
                .map(|i| Tensor {
                    shape: rest.clone(),
                    data: TensorData::$variant(data[i * per..(i + 1) * per].to_vec()),
                })
                .collect()
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => split!(f32, F32),
        TensorElementType::Float64 => split!(f64, F64),
        TensorElementType::Int64 => split!(i64, I64),
        TensorElementType::Int32 => split!(i32, I32),
        TensorElementType::Uint8 => split!(u8, U8),
        TensorElementType::Int8 => split!(i8, I8),
        TensorElementType::Bool => split!(bool, Bool),
        other => return Err(format!("unsupported output element type {other:?}")),
    })
}

fn from_ort(v: &DynValue) -> Result<Tensor, String> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err("not a tensor".into());
    };
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = v.try_extract_tensor::<$t>().map_err(|e| e.to_string())?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::new(shape, TensorData::$variant(data.to_vec())).map_err(|e| e.to_string())?
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => extract!(f32, F32),
        TensorElementType::Float64 => extract!(f64, F64),
        TensorElementType::Int64 => extract!(i64, I64),
        TensorElementType::Int32 => extract!(i32, I32),
        TensorElementType::Uint8 => extract!(u8, U8),
        TensorElementType::Int8 => extract!(i8, I8),
        TensorElementType::Bool => extract!(bool, Bool),
        other => return Err(format!("unsupported output element type {other:?}")),
    })
}
