//! Helpers of the server's integration tests: a real jobs server on loopback
//! (the `app` router served by axum on `127.0.0.1:0`, a `SqliteStore` in a
//! temporary folder, models started with `Model::start`), the test models
//! (the repository's real ones, the tiny MLP fixture and a slow variant of
//! it), and small HTTP helpers that check the API's error shape.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use sluice_core::{Backend, ModelSpec};
use sluice_engine::fault::{FaultyBackend, SLEEP_CUE};
use sluice_engine::Model;
use sluice_server::{app, AppState, Limits, Registry, Scheduler, SchedulerConfig};
use sluice_store::{SqliteStore, Store};

/// What to run when something built at setup is missing.
pub const SETUP: &str = "run `bash scripts/setup.sh` in the repository root first";

/// How long a test waits for a job to reach a state before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// `crates/sluice-engine/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    repo_root().join("crates/sluice-engine/tests/fixtures")
}

/// `data/images/<name>`.
pub fn image(name: &str) -> PathBuf {
    let p = repo_root().join("data/images").join(name);
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// Fails (never skips) when ONNX Runtime cannot be found.
pub fn require_onnxruntime() {
    if let Err(e) = sluice_onnx::locate_library() {
        panic!("ONNX Runtime is not installed ({e}); {SETUP}");
    }
}

async fn load_backend(spec: &ModelSpec) -> Arc<dyn Backend> {
    require_onnxruntime();
    if let Some(file) = &spec.model_file {
        let path = spec.resolve(file);
        assert!(path.is_file(), "{} is missing; {SETUP}", path.display());
    }
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || sluice_engine::load_backend(&spec))
        .await
        .expect("load task")
        .unwrap_or_else(|e| panic!("{e}; {SETUP}"))
}

async fn start(spec: ModelSpec, backend: Arc<dyn Backend>) -> Model {
    tokio::task::spawn_blocking(move || Model::start(spec, backend))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("cannot start the model: {e}"))
}

/// A model of the repository (`models/<name>`), real.
pub async fn repo_model(name: &str) -> Model {
    let spec = ModelSpec::load(&repo_root().join("models").join(name)).unwrap_or_else(|e| panic!("models/{name}: {e}"));
    let backend = load_backend(&spec).await;
    start(spec, backend).await
}

/// The tiny MLP fixture (`x: f32 [batch, 4] -> y: f32 [batch, 3]`) served as `name`.
pub fn tiny_mlp_spec(name: &str, max_batch_size: usize) -> ModelSpec {
    let mut spec = ModelSpec::parse(&format!(
        r#"
runtime = "onnx"
model_file = "tiny_mlp.onnx"
max_batch_size = {max_batch_size}
max_batch_delay_ms = 2
group_by_length = false
intra_op_threads = 1
preprocess_threads = 1
[processing]
type = "tensor"
"#
    ))
    .expect("tiny MLP spec");
    spec.dir = fixtures();
    spec.name = name.to_string();
    spec
}

/// The tiny MLP, served as `name`.
pub async fn tiny_mlp(name: &str) -> Model {
    let spec = tiny_mlp_spec(name, 8);
    let backend = load_backend(&spec).await;
    start(spec, backend).await
}

/// The tiny MLP behind a [`FaultyBackend`]: every item cued with
/// [`SLEEP_CUE`] (see [`slow_input`]) makes the runtime sleep 100 ms first.
pub async fn slow_mlp(name: &str, max_batch_size: usize) -> Model {
    slow_mlp_from(tiny_mlp_spec(name, max_batch_size)).await
}

/// [`slow_mlp`] from a tiny-MLP spec the caller adjusted.
pub async fn slow_mlp_from(spec: ModelSpec) -> Model {
    let inner = load_backend(&spec).await;
    let backend: Arc<dyn Backend> = Arc::new(FaultyBackend::new(inner, Duration::from_millis(100)));
    start(spec, backend).await
}

/// The tiny MLP behind a [`FaultyBackend`] whose memory the caller limits
/// (see [`sluice_engine::fault::Memory`]).
pub async fn memory_limited_mlp(name: &str, max_batch_size: usize) -> (Model, Arc<sluice_engine::fault::Memory>) {
    let spec = tiny_mlp_spec(name, max_batch_size);
    let faulty = FaultyBackend::new(load_backend(&spec).await, Duration::ZERO);
    let memory = faulty.memory();
    (start(spec, Arc::new(faulty)).await, memory)
}

/// An input of the slow model: cued to sleep, then `i` so inputs differ.
pub fn slow_input(i: usize) -> Value {
    serde_json::json!([SLEEP_CUE, i as f64, 0.5, -1.0])
}

/// `n` slow inputs keyed `k0000`, `k0001`, ...
pub fn slow_inputs(n: usize) -> serde_json::Map<String, Value> {
    (0..n).map(|i| (format!("k{i:04}"), slow_input(i))).collect()
}

/// What a test server is built from.
#[derive(Default)]
pub struct Config {
    /// Folders `source` jobs may read (canonicalised here).
    pub source_roots: Vec<PathBuf>,
    /// Request limits.
    pub limits: Limits,
}

/// A jobs server on loopback; stops when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for it.
    pub http: reqwest::Client,
    /// The server's store, for the fault-injection hooks (`set_max_page_count`).
    pub sqlite: SqliteStore,
    task: tokio::task::JoinHandle<()>,
    registry: Arc<Registry>,
    shutdown: sluice_server::ShutdownSignal,
    _data: tempfile::TempDir,
}

/// How often a test server probes a store whose last write failed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.task.abort();
        // Take no more items; the instance threads end once their queues drain.
        for m in self.registry.ready() {
            m.close();
        }
    }
}

impl Server {
    /// Serves `models` with default limits and no source root.
    pub async fn start(models: Vec<Model>) -> Server {
        Server::with(models, Config::default()).await
    }

    /// Serves `models` with `cfg`.
    pub async fn with(models: Vec<Model>, cfg: Config) -> Server {
        let data = tempfile::tempdir().expect("data dir");
        let sqlite = SqliteStore::open(data.path()).await.expect("open the store");
        let store: Arc<dyn Store> = Arc::new(sqlite.clone());
        let shutdown = sluice_server::ShutdownSignal::default();
        sluice_server::spawn_store_probe(store.clone(), PROBE_INTERVAL, shutdown.clone());
        let registry = Arc::new(Registry::from_models(models));
        let scheduler: Arc<Scheduler> = Scheduler::start(store.clone(), &registry, SchedulerConfig::default());
        let roots = cfg
            .source_roots
            .iter()
            .map(|r| r.canonicalize().expect("source root"))
            .collect();
        let state = AppState::new(
            registry.clone(),
            store,
            scheduler,
            Arc::new(roots),
            cfg.limits,
            shutdown.clone(),
            sluice_server::NodeConfig::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app(state)).await.expect("serve");
        });
        Server {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            sqlite,
            task,
            registry,
            shutdown,
            _data: data,
        }
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`; the status and the body as JSON (`Null` if it is not JSON).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(self.url(path)).send().await.expect("GET");
        into_json(resp).await
    }

    /// POST a JSON body to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self.http.post(self.url(path)).json(body).send().await.expect("POST");
        into_json(resp).await
    }

    /// POST raw bytes with a content type to `path`.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        into_json(resp).await
    }

    /// DELETE `path`.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.delete(self.url(path)).send().await.expect("DELETE");
        into_json(resp).await
    }

    /// Creates a job; panics unless the answer is 201 with an id. Returns the job view.
    pub async fn create(&self, body: Value) -> Value {
        let (status, job) = self.post("/v1/jobs", &body).await;
        assert_eq!(status, StatusCode::CREATED, "creating {body}: {job}");
        assert!(job["id"].as_str().is_some_and(|id| !id.is_empty()), "no id in {job}");
        job
    }

    /// `GET /v1/jobs/{id}`, which must succeed.
    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET job {id}: {job}");
        job
    }

    /// Polls the job until `done(view)` holds; panics with the last view after [`DEADLINE`].
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(start.elapsed() < DEADLINE, "job {id} never {what}: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the job until it reaches a terminal status; returns its view.
    pub async fn wait_end(&self, id: &str) -> Value {
        self.wait_for(id, "ended", is_terminal).await
    }

    /// `GET /v1/jobs/{id}/results{query}` as parsed NDJSON lines.
    pub async fn results(&self, id: &str, query: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/jobs/{id}/results{query}")))
            .send()
            .await
            .expect("GET results");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.expect("results body");
        assert_eq!(status, StatusCode::OK, "results of {id}{query}: {text}");
        assert!(ctype.starts_with("application/x-ndjson"), "content type {ctype}");
        parse_ndjson(&text)
    }
}

/// Parses NDJSON, every line an object.
pub fn parse_ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"));
            assert!(v.is_object(), "NDJSON line is not an object: {l}");
            v
        })
        .collect()
}

async fn into_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("response body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Whether a job view is in a terminal status.
pub fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("COMPLETED" | "CANCELED" | "TIMEDOUT" | "FAILED")
    )
}

/// A job view's count `name`.
pub fn count(job: &Value, name: &str) -> u64 {
    job["counts"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {name} in {job}"))
}

/// Checks that the counts add up: finished + pending = total.
pub fn assert_counts_add_up(job: &Value) {
    let sum: u64 = ["pending", "completed", "failed", "canceled", "timedout"]
        .iter()
        .map(|k| count(job, k))
        .sum();
    assert_eq!(sum, count(job, "total"), "counts do not add up: {job}");
}

/// Checks an error answer: the status, the `{"error": {"code", "message"}}`
/// shape, and that the message contains `needle` (case-insensitive).
pub fn assert_error(what: &str, got: (StatusCode, Value), status: StatusCode, code: &str, needle: &str) {
    let (s, body) = got;
    assert!(!s.is_server_error(), "{what}: server error {s}: {body}");
    assert_eq!(s, status, "{what}: {body}");
    let err = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no error object in {body}"));
    assert_eq!(err.len(), 2, "{what}: error has other fields: {body}");
    assert_eq!(err.get("code").and_then(Value::as_str), Some(code), "{what}: {body}");
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no message in {body}"));
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: message {message:?} does not mention {needle:?}"
    );
}

/// The keys of result lines, checking that none occurs twice.
pub fn unique_keys(lines: &[Value]) -> HashSet<String> {
    let mut keys = HashSet::new();
    for l in lines {
        let key = l["key"].as_str().unwrap_or_else(|| panic!("no key in {l}")).to_string();
        assert!(keys.insert(key.clone()), "key {key} listed twice");
    }
    keys
}

/// The result line of `key`.
pub fn line<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["key"] == key)
        .unwrap_or_else(|| panic!("no result line for {key}"))
}

/// A `multipart/form-data` body of files: returns the content type and the body.
pub fn multipart(files: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = "sluice-test-boundary-7d1f0c2a";
    let mut body = Vec::new();
    for (name, data) in files {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n").as_bytes(),
        );
        body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `output.tensors.y.data` of a tiny-MLP result line.
pub fn mlp_output(line: &Value) -> Vec<f64> {
    line["output"]["tensors"]["y"]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no y output in {line}"))
        .iter()
        .map(|x| x.as_f64().expect("output value"))
        .collect()
}
