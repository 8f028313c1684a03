//! Helpers shared by the engine's integration tests: where the repository,
//! the fixtures and the built models are, how to start a model in a test,
//! and how to collect completions (checking that every id comes back once).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use sluice_core::{Backend, ItemError, ItemErrorKind, ModelSpec, NamedTensors, Output, Tensor, TensorData};
use sluice_engine::{Completion, Model};
use tokio::sync::mpsc;

/// What to run when something built at setup is missing.
pub const SETUP: &str = "run `bash scripts/setup.sh` in the repository root first";

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// `crates/sluice-engine/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Fails (never skips) when ONNX Runtime's library cannot be found.
pub fn require_onnxruntime() {
    if let Err(e) = sluice_onnx::locate_library() {
        panic!("ONNX Runtime is not installed ({e}); {SETUP}");
    }
}

/// Fails (never skips) when a file built or fetched at setup is missing.
pub fn require_file(path: &Path) {
    assert!(path.is_file(), "{} is missing; {SETUP}", path.display());
}

/// Loads `models/<name>/model.toml` after checking that ONNX Runtime and the
/// files the model needs are present.
pub fn repo_model_spec(name: &str) -> ModelSpec {
    let dir = repo_root().join("models").join(name);
    let spec = ModelSpec::load(&dir).unwrap_or_else(|e| panic!("models/{name}: {e}"));
    if spec.runtime == sluice_core::spec::RuntimeKind::Onnx {
        require_onnxruntime();
        if let Some(file) = &spec.model_file {
            require_file(&spec.resolve(file));
        }
    }
    spec
}

/// A spec for a fixture model: `toml` parsed, `dir` set to the fixtures folder.
pub fn fixture_spec(name: &str, toml: &str) -> ModelSpec {
    let mut spec = ModelSpec::parse(toml).unwrap_or_else(|e| panic!("fixture spec {name}: {e}"));
    spec.dir = fixtures();
    spec.name = name.to_string();
    if let Some(file) = &spec.model_file {
        require_onnxruntime();
        require_file(&spec.resolve(file));
    }
    spec
}

/// The tiny MLP (`x: f32 [batch, 4] -> y: f32 [batch, 3]`) with tensor processing.
pub fn tiny_mlp_spec(max_batch_size: usize, max_batch_delay_ms: u64) -> ModelSpec {
    fixture_spec(
        "tiny-mlp",
        &format!(
            r#"
runtime = "onnx"
model_file = "tiny_mlp.onnx"
max_batch_size = {max_batch_size}
max_batch_delay_ms = {max_batch_delay_ms}
group_by_length = false
intra_op_threads = 1
preprocess_threads = 2
[processing]
type = "tensor"
"#
        ),
    )
}

/// `text_ids.onnx` (`input_ids`, `attention_mask` -> `last_hidden_state`) with tensor processing.
pub fn text_ids_spec(max_batch_size: usize, max_batch_delay_ms: u64, group_by_length: bool) -> ModelSpec {
    fixture_spec(
        "text-ids",
        &format!(
            r#"
runtime = "onnx"
model_file = "text_ids.onnx"
max_batch_size = {max_batch_size}
max_batch_delay_ms = {max_batch_delay_ms}
group_by_length = {group_by_length}
intra_op_threads = 1
preprocess_threads = 2
[processing]
type = "tensor"
"#
        ),
    )
}

/// Loads a spec's backend off the async threads.
pub async fn load_backend(spec: &ModelSpec) -> Arc<dyn Backend> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || sluice_engine::load_backend(&spec))
        .await
        .expect("load task")
        .unwrap_or_else(|e| panic!("{e}; {SETUP}"))
}

/// `Model::load` off the async threads.
pub async fn load_model(spec: ModelSpec) -> Model {
    tokio::task::spawn_blocking(move || Model::load(spec))
        .await
        .expect("load task")
        .unwrap_or_else(|e| panic!("{e}; {SETUP}"))
}

/// `Model::start` around a backend, off the async threads.
pub async fn start_model(spec: ModelSpec, backend: Arc<dyn Backend>) -> Model {
    tokio::task::spawn_blocking(move || Model::start(spec, backend))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Reads completions until every sender is gone; panics on a duplicate id.
pub async fn collect(mut rx: mpsc::Receiver<Completion>) -> HashMap<String, Completion> {
    let mut out = HashMap::new();
    while let Some(c) = rx.recv().await {
        let id = c.id.to_string();
        assert!(out.insert(id.clone(), c).is_none(), "id {id} completed twice");
    }
    out
}

/// Asserts that exactly the ids `expected` completed, each once.
pub fn assert_ids<'a>(done: &HashMap<String, Completion>, expected: impl IntoIterator<Item = &'a String>) {
    let expected: Vec<&String> = expected.into_iter().collect();
    for id in &expected {
        assert!(done.contains_key(*id), "no completion for {id}");
    }
    assert_eq!(
        done.len(),
        expected.len(),
        "completions for ids that were never submitted"
    );
}

/// The output tensors of a successful item.
pub fn tensors(c: &Completion) -> &sluice_core::NamedTensors {
    match &c.result {
        Ok(Output::Tensors(t)) => t,
        other => panic!("{}: expected tensors, got {other:?}", c.id),
    }
}

/// A tensor's elements as f32 (the fixture models output float32).
pub fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        other => panic!("float32 expected, got {}", other.dtype()),
    }
}

/// The error of a failed item.
pub fn error(c: &Completion) -> &ItemError {
    match &c.result {
        Err(e) => e,
        Ok(o) => panic!("{}: expected an error, got {o:?}", c.id),
    }
}

/// Asserts that an item failed with `kind` and a message containing `needle`.
pub fn assert_failed(c: &Completion, kind: ItemErrorKind, needle: &str) {
    let e = error(c);
    assert_eq!(e.kind, kind, "{}: {e}", c.id);
    assert!(
        e.message.contains(needle),
        "{}: message {:?} lacks {needle:?}",
        c.id,
        e.message
    );
}

/// The embedding of a successful text item.
pub fn embedding(c: &Completion) -> &[f32] {
    match &c.result {
        Ok(Output::Embedding(v)) => v,
        other => panic!("{}: expected an embedding, got {other:?}", c.id),
    }
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// Reads a JSONL file into values.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

pub fn ids_tensor(v: &[i64]) -> Tensor {
    Tensor::new(vec![v.len()], TensorData::I64(v.to_vec())).expect("tensor")
}

/// A text_ids item: token ids and attention mask.
pub struct TextItem {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Attention mask.
    pub mask: Vec<i64>,
}

impl TextItem {
    /// `len` tokens with ids `base+1 ..= base+len`, mask all ones.
    pub fn new(base: i64, len: usize) -> TextItem {
        TextItem {
            ids: (1..=len as i64).map(|k| base + k).collect(),
            mask: vec![1; len],
        }
    }

    pub fn tensors(&self) -> NamedTensors {
        let mut t = NamedTensors::new();
        t.insert("input_ids".into(), ids_tensor(&self.ids));
        t.insert("attention_mask".into(), ids_tensor(&self.mask));
        t
    }

    pub fn json(&self) -> serde_json::Value {
        json!({"input_ids": self.ids, "attention_mask": self.mask})
    }
}

/// Checks a text_ids output: `[rows, 2]` where the first `len` rows are
/// `(id, mask)` and the rest `(0, 0)`; returns `rows`.
pub fn assert_padded_rows(c: &Completion, item: &TextItem) -> usize {
    let h = &tensors(c)["last_hidden_state"];
    let [rows, 2] = h.shape[..] else {
        panic!("{}: per-item output shape {:?}, expected [seq, 2]", c.id, h.shape)
    };
    let len = item.ids.len();
    assert!(rows >= len, "{}: {rows} rows for {len} tokens", c.id);
    let v = f32s(h);
    for r in 0..rows {
        let want = if r < len {
            [item.ids[r] as f32, item.mask[r] as f32]
        } else {
            [0.0, 0.0]
        };
        assert_eq!([v[2 * r], v[2 * r + 1]], want, "{}: row {r} of {rows}", c.id);
    }
    rows
}
