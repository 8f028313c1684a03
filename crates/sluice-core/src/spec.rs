//! `model.toml`: everything Sluice needs to know to serve one model.
//!
//! A model repository is a folder of folders, `models/<name>/model.toml` plus
//! the files it names. Parsing is strict: an unknown key is an error naming
//! the key, because a misspelt `max_batch_sise` silently ignored would cost a
//! user hours.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a model spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/invalid keys.
    #[error("invalid {path}: {message}")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// What is wrong (names the key).
        message: String,
    },
}

/// Which runtime executes the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// In-process ONNX Runtime.
    Onnx,
    /// A no-op runtime that echoes its inputs (benchmarks of the engine itself).
    Noop,
    /// Out-of-process Open Model Interface (OMI) gRPC workers; see [`OmiSpec`].
    Omi,
}

/// The parsed `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model name; defaults to the folder name.
    #[serde(default)]
    pub name: String,
    /// Version string reported to clients.
    #[serde(default = "default_version")]
    pub version: String,
    /// Free-text description.
    #[serde(default)]
    pub description: String,
    /// Runtime executing the model.
    pub runtime: RuntimeKind,
    /// Model file relative to the model folder (ONNX).
    #[serde(default)]
    pub model_file: Option<PathBuf>,
    /// Largest batch one call may receive.
    pub max_batch_size: usize,
    /// Most padded tokens in one batch (items × longest item), for text:
    /// a batch of long texts then holds fewer items than one of short texts.
    /// An item longer than the budget runs alone. None: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    /// Most input bytes in one batch (items × largest item, as padded); a
    /// batch over it is split and retried like one that ran out of memory,
    /// and the batch size backs off. None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<u64>,
    /// Longest an item waits for its batch to fill.
    #[serde(default = "default_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// Parallel model instances, each on its own thread.
    #[serde(default = "one")]
    pub instances: usize,
    /// `"cpu"` or `"cuda:N"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Run on CPU when the requested GPU is unavailable instead of failing.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// ONNX Runtime intra-op threads per instance; 0 lets ONNX Runtime decide.
    #[serde(default)]
    pub intra_op_threads: usize,
    /// Let idle ONNX Runtime threads spin-wait for work (ONNX Runtime's
    /// default). Turn off when the same cores also serve many requests.
    #[serde(default = "yes")]
    pub intra_op_spinning: bool,
    /// Items that may wait in the model's queue before submitters block.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Threads running pre-processing (decode, tokenize, resize).
    #[serde(default = "default_pre_threads")]
    pub preprocess_threads: usize,
    /// Group items of similar length into batches (text models).
    #[serde(default = "yes")]
    pub group_by_length: bool,
    /// Items the batcher holds to choose each batch from; default
    /// `16 × max_batch_size`. Larger finds closer lengths (less padding);
    /// smaller bounds how long an item can be passed over.
    #[serde(default)]
    pub batch_window: Option<usize>,
    /// Real-time items (KServe v2 and `/v1/models/{m}/infer` requests) that
    /// may be accepted and not yet answered; beyond it requests get 429.
    #[serde(default = "default_realtime_queue")]
    pub realtime_queue_capacity: usize,
    /// Share of each batch kept for bulk (job) items while real-time items
    /// also wait, so bulk work never starves: `0.125` of a batch of 32 is 4.
    #[serde(default = "default_bulk_min_share")]
    pub bulk_min_share: f64,
    /// Input and output handling.
    pub processing: ProcessingSpec,
    /// OMI workers (`runtime = "omi"`): the `[omi]` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omi: Option<OmiSpec>,
    /// Model folder (set on load, not read from the file).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_version() -> String {
    "1".into()
}
fn default_delay_ms() -> u64 {
    5
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_device() -> String {
    "cpu".into()
}
fn default_queue() -> usize {
    1024
}
fn default_realtime_queue() -> usize {
    512
}
fn default_bulk_min_share() -> f64 {
    0.125
}
fn default_pre_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How raw inputs become tensors and outputs become results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProcessingSpec {
    /// Tokenized text, e.g. sentence embeddings.
    Text(TextSpec),
    /// Images: decode, resize, normalise; detection or classification.
    Image(ImageSpec),
    /// Raw named tensors, checked against the graph.
    Tensor(TensorSpec),
    /// Named byte strings (files), for OMI workers: items in, files out.
    Bytes(BytesSpec),
}

/// Text processing: tokenizer and pooling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// `tokenizer.json` relative to the model folder.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: PathBuf,
    /// Longest sequence in tokens; longer texts are truncated.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Graph input receiving token ids.
    #[serde(default = "default_ids")]
    pub input_ids: String,
    /// Graph input receiving the attention mask.
    #[serde(default = "default_mask")]
    pub attention_mask: String,
    /// Graph input receiving token type ids, if the graph has one.
    #[serde(default = "default_type_ids")]
    pub token_type_ids: Option<String>,
    /// Graph output holding per-token hidden states `[batch, seq, hidden]`.
    #[serde(default = "default_hidden")]
    pub output: String,
    /// How token states become one vector.
    #[serde(default)]
    pub pooling: Pooling,
    /// L2-normalise the pooled vector.
    #[serde(default = "yes")]
    pub normalize: bool,
}

fn default_tokenizer() -> PathBuf {
    "tokenizer.json".into()
}
fn default_max_length() -> usize {
    256
}
fn default_ids() -> String {
    "input_ids".into()
}
fn default_mask() -> String {
    "attention_mask".into()
}
#[allow(clippy::unnecessary_wraps)]
fn default_type_ids() -> Option<String> {
    Some("token_type_ids".into())
}
fn default_hidden() -> String {
    "last_hidden_state".into()
}

/// Sentence pooling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over tokens where the attention mask is 1.
    #[default]
    Mean,
    /// The first token's state.
    Cls,
}

/// Image pre-processing and post-processing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Graph input receiving the image tensor.
    pub input: String,
    /// Target `[width, height]`.
    pub size: [u32; 2],
    /// How the image is fitted to `size`.
    #[serde(default)]
    pub resize: ResizeMode,
    /// Tensor layout.
    #[serde(default)]
    pub layout: Layout,
    /// Channel order.
    #[serde(default)]
    pub channels: ChannelOrder,
    /// Multiplied into each 0..255 pixel value first.
    #[serde(default = "unit_scale")]
    pub scale: f32,
    /// Subtracted per channel after scaling (in `channels` order).
    #[serde(default)]
    pub mean: [f32; 3],
    /// Divides per channel after subtracting the mean.
    #[serde(default = "unit_std")]
    pub std: [f32; 3],
    /// Largest picture accepted, in pixels (width x height), checked from the
    /// file's header before anything is decoded: a small file that claims a
    /// huge picture (a decompression bomb) fails alone instead of taking
    /// gigabytes. Default 40 million (an 8K frame is 33 million).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// What the outputs mean.
    pub postprocess: ImagePostprocess,
}

/// Default [`ImageSpec::max_pixels`].
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}

fn unit_scale() -> f32 {
    1.0
}
fn unit_std() -> [f32; 3] {
    [1.0, 1.0, 1.0]
}

/// How an image is fitted to the model's input size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Stretch to the target size (aspect ratio not kept).
    #[default]
    Stretch,
    /// Scale to fit, keeping the aspect ratio, and pad the rest.
    Letterbox,
}

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Channels first `[3, H, W]`.
    #[default]
    Nchw,
    /// Channels last `[H, W, 3]`.
    Nhwc,
}

/// Channel order of an image input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red (Caffe-style models).
    Bgr,
}

/// Interpretation of an image model's outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImagePostprocess {
    /// NanoDet head: per-level class scores and distance distributions.
    Nanodet {
        /// Labels file, one class name per line.
        labels: PathBuf,
        /// Minimum class score kept.
        #[serde(default = "default_score")]
        score_threshold: f32,
        /// IoU above which lower-scored boxes of a class are suppressed.
        #[serde(default = "default_iou")]
        iou_threshold: f32,
        /// Most detections returned per image.
        #[serde(default = "default_max_det")]
        max_detections: usize,
        /// Feature-map strides, matched to outputs by cell count.
        #[serde(default = "default_strides")]
        strides: Vec<u32>,
    },
    /// Image classification: softmax (optional) then top-k.
    Classification {
        /// Labels file, one class name per line.
        #[serde(default)]
        labels: Option<PathBuf>,
        /// Graph output with the scores; default: the first output.
        #[serde(default)]
        output: Option<String>,
        /// Apply softmax to the logits.
        #[serde(default = "yes")]
        softmax: bool,
        /// Classes returned per image.
        #[serde(default = "default_top_k")]
        top_k: usize,
    },
}

fn default_score() -> f32 {
    0.35
}
fn default_iou() -> f32 {
    0.6
}
fn default_max_det() -> usize {
    100
}
fn default_strides() -> Vec<u32> {
    vec![8, 16, 32]
}
fn default_top_k() -> usize {
    5
}

/// Raw tensor models.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Input used when an item is a bare array instead of an object of named
    /// tensors; default: the graph's only input.
    #[serde(default)]
    pub default_input: Option<String>,
}

/// Byte-string models (OMI workers): each input is a named file of bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BytesSpec {
    /// Input that receives a bare item (bytes or text); default: the model's
    /// first declared input.
    #[serde(default)]
    pub default_input: Option<String>,
}

/// How Sluice reaches and supervises OMI workers (`[omi]` in model.toml).
///
/// Exactly one of `command` (Sluice starts `instances` workers) and
/// `endpoints` (workers already running; one instance per endpoint).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OmiSpec {
    /// Worker command line; a program path containing `/` is relative to the
    /// model folder, which is also the worker's working directory.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment variables for started workers.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// `host:port` of workers started elsewhere.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Longest a worker may take to answer its first `Status`.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_s: f64,
    /// Longest a `Status` health check may take.
    #[serde(default = "default_status_timeout")]
    pub status_timeout_s: f64,
    /// Longest one `Run` may take; default: the worker's own run timeout
    /// from `Status`, else 300 s.
    #[serde(default)]
    pub run_timeout_s: Option<f64>,
    /// A worker idle this long gets a `Status` health check before its next batch.
    #[serde(default = "default_health_interval")]
    pub health_interval_s: f64,
    /// First delay before restarting a failed worker; doubles per consecutive failure.
    #[serde(default = "default_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// Longest delay between restarts.
    #[serde(default = "default_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
    /// How long a stopping worker gets after `Shutdown` before it is killed.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Use `max_batch_size` even when the worker's `Status` declares a smaller batch size.
    #[serde(default)]
    pub override_batch_size: bool,
    /// Consecutive failed restarts (a worker that exits or gives no `Status`
    /// while starting) after which the items waiting for it fail as
    /// unavailable; until then they wait and are retried, with the backoff.
    #[serde(default = "default_max_failed_restarts")]
    pub max_failed_restarts: u32,
    /// During a `Run`, the worker is probed with `Status` on a separate
    /// connection; one that answers no probe for this long is hung: it is
    /// killed and restarted and its batch retried, long before `run_timeout_s`.
    #[serde(default = "default_hang_timeout")]
    pub hang_timeout_s: f64,
}

fn default_start_timeout() -> f64 {
    60.0
}
fn default_status_timeout() -> f64 {
    10.0
}
fn default_health_interval() -> f64 {
    30.0
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_shutdown_grace_ms() -> u64 {
    2_000
}
fn default_max_failed_restarts() -> u32 {
    5
}
fn default_hang_timeout() -> f64 {
    15.0
}

impl OmiSpec {
    fn validate(&self, instances: usize) -> Result<(), String> {
        match (self.command.is_empty(), self.endpoints.is_empty()) {
            (true, true) => return Err("[omi] needs command or endpoints".into()),
            (false, false) => return Err("[omi] takes command or endpoints, not both".into()),
            _ => {}
        }
        if !self.endpoints.is_empty() && instances != self.endpoints.len() {
            return Err(format!(
                "instances ({instances}) must equal the number of [omi] endpoints ({})",
                self.endpoints.len()
            ));
        }
        let positive = [
            ("start_timeout_s", self.start_timeout_s),
            ("status_timeout_s", self.status_timeout_s),
            ("health_interval_s", self.health_interval_s),
            ("run_timeout_s", self.run_timeout_s.unwrap_or(1.0)),
            ("hang_timeout_s", self.hang_timeout_s),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("[omi] {key} must be a positive number of seconds"));
            }
        }
        if !(1..=1000).contains(&self.max_failed_restarts) {
            return Err("[omi] max_failed_restarts must be between 1 and 1000".into());
        }
        Ok(())
    }
}

/// The model folders of a repository: every `dir/*/` holding a `model.toml`,
/// sorted by path.
pub fn model_dirs(repo: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("model.toml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

impl ModelSpec {
    /// Loads `dir/model.toml` (or a path to the file itself).
    pub fn load(path: &Path) -> Result<ModelSpec, SpecError> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join("model.toml"))
        } else {
            (
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
                path.to_path_buf(),
            )
        };
        let text = std::fs::read_to_string(&file).map_err(|source| SpecError::Io {
            path: file.clone(),
            source,
        })?;
        let mut spec = ModelSpec::parse(&text).map_err(|message| SpecError::Invalid {
            path: file.clone(),
            message,
        })?;
        if spec.name.is_empty() {
            spec.name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
        }
        spec.dir = dir;
        Ok(spec)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<ModelSpec, String> {
        let mut spec: ModelSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        // With endpoints, one instance per endpoint (`instances` may be left at its default).
        if let Some(omi) = &spec.omi {
            if !omi.endpoints.is_empty() && spec.instances == 1 {
                spec.instances = omi.endpoints.len();
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the settings' consistency (what [`ModelSpec::parse`] does
    /// after reading the TOML). Call it again after changing a parsed spec,
    /// e.g. with command-line overrides.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("max_batch_size must be at least 1".into());
        }
        if self.max_batch_tokens == Some(0) {
            return Err("max_batch_tokens must be at least 1 (leave it out for no budget)".into());
        }
        if self.max_batch_bytes == Some(0) {
            return Err("max_batch_bytes must be at least 1 (leave it out for no limit)".into());
        }
        if self.instances == 0 {
            return Err("instances must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return Err("queue_capacity must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.bulk_min_share) {
            return Err("bulk_min_share must be between 0 and 1".into());
        }
        if self.realtime_queue_capacity == 0 {
            return Err("realtime_queue_capacity must be at least 1".into());
        }
        if self.batch_window.is_some_and(|w| w < self.max_batch_size) {
            return Err("batch_window must be at least max_batch_size".into());
        }
        if self.preprocess_threads == 0 {
            return Err("preprocess_threads must be at least 1".into());
        }
        if self.runtime == RuntimeKind::Onnx && self.model_file.is_none() {
            return Err("runtime \"onnx\" needs model_file".into());
        }
        match (&self.omi, self.runtime) {
            (Some(omi), RuntimeKind::Omi) => omi.validate(self.instances)?,
            (None, RuntimeKind::Omi) => return Err("runtime \"omi\" needs an [omi] table".into()),
            (Some(_), _) => return Err("[omi] is only for runtime = \"omi\"".into()),
            (None, _) => {}
        }
        self.device()?;
        Ok(())
    }

    /// The parsed device.
    pub fn device(&self) -> Result<Device, String> {
        Device::parse(&self.device)
    }

    /// The batching delay.
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_batch_delay_ms)
    }

    /// Resolves a path from the spec relative to the model folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(u32),
}

impl Device {
    /// Parses `"cpu"` or `"cuda:N"` (`"cuda"` means `cuda:0`).
    pub fn parse(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("device must be \"cpu\" or \"cuda:N\", got {other:?}")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
runtime = "onnx"
model_file = "model.onnx"
max_batch_size = 32
[processing]
type = "text"
max_length = 128
"#;

    #[test]
    fn parses_with_defaults() {
        let spec = ModelSpec::parse(TEXT).expect("valid");
        assert_eq!(spec.max_batch_size, 32);
        assert_eq!(spec.max_batch_delay_ms, 5);
        assert_eq!(spec.instances, 1);
        assert_eq!(spec.device().expect("device"), Device::Cpu);
        let ProcessingSpec::Text(t) = spec.processing else {
            panic!("text expected")
        };
        assert_eq!(t.max_length, 128);
        assert_eq!(t.pooling, Pooling::Mean);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let err = ModelSpec::parse(&TEXT.replace("max_batch_size = 32", "max_batch_size = 32\nmax_batch_sise = 4"))
            .expect_err("unknown key");
        assert!(err.contains("max_batch_sise"), "{err}");
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let err = ModelSpec::parse(&format!("{TEXT}poolin = \"mean\"\n")).expect_err("unknown key");
        assert!(err.contains("poolin"), "{err}");
    }

    #[test]
    fn bad_device_and_zero_batch() {
        let err = ModelSpec::parse(&format!("device = \"tpu\"\n{TEXT}")).expect_err("device");
        assert!(err.contains("cuda:N"), "{err}");
        let err = ModelSpec::parse(&TEXT.replace("= 32", "= 0")).expect_err("zero");
        assert!(err.contains("max_batch_size"), "{err}");
        assert_eq!(Device::parse("cuda:1"), Ok(Device::Cuda(1)));
    }

    #[test]
    fn omi_spec_parses_and_counts_endpoints() {
        let base = "runtime = \"omi\"\nmax_batch_size = 8\n[processing]\ntype = \"bytes\"\n";
        let spec = ModelSpec::parse(&format!("{base}[omi]\ncommand = [\"python\", \"w.py\"]\n")).expect("valid");
        let omi = spec.omi.expect("omi");
        assert_eq!(omi.command, ["python", "w.py"]);
        assert_eq!(omi.run_timeout_s, None);
        assert_eq!((omi.max_failed_restarts, omi.hang_timeout_s), (5, 15.0));
        for (bad, key) in [
            ("max_failed_restarts = 0", "max_failed_restarts"),
            ("max_failed_restarts = 5000", "max_failed_restarts"),
            ("hang_timeout_s = 0", "hang_timeout_s"),
            ("hang_timeout_s = -1.5", "hang_timeout_s"),
        ] {
            let err = ModelSpec::parse(&format!("{base}[omi]\ncommand = [\"w\"]\n{bad}\n")).expect_err(bad);
            assert!(err.contains(key), "{bad}: {err}");
        }
        let spec = ModelSpec::parse(&format!("{base}[omi]\nendpoints = [\"a:1\", \"b:2\"]\n")).expect("valid");
        assert_eq!(spec.instances, 2);
        let err = ModelSpec::parse(&format!("instances = 3\n{base}[omi]\nendpoints = [\"a:1\"]\n")).expect_err("count");
        assert!(err.contains("endpoints"), "{err}");
        let err = ModelSpec::parse(base).expect_err("no table");
        assert!(err.contains("[omi]"), "{err}");
        let err = ModelSpec::parse(&format!("{base}[omi]\ncommand = [\"x\"]\ncomand = 1\n")).expect_err("unknown");
        assert!(err.contains("comand"), "{err}");
    }

    #[test]
    fn image_spec_parses() {
        let spec = ModelSpec::parse(
            r#"
runtime = "onnx"
model_file = "model.onnx"
max_batch_size = 8
[processing]
type = "image"
input = "x"
size = [416, 416]
resize = "letterbox"
scale = 0.0039215686
[processing.postprocess]
type = "nanodet"
labels = "coco.names"
"#,
        )
        .expect("valid");
        let ProcessingSpec::Image(img) = spec.processing else {
            panic!("image expected")
        };
        assert_eq!(img.resize, ResizeMode::Letterbox);
        assert!(matches!(img.postprocess, ImagePostprocess::Nanodet { .. }));
    }
}
