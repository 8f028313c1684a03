//! The `omi` runtime: models served by out-of-process workers speaking the
//! Open Model Interface (the chassis project's `ModzyModel` gRPC service).
//!
//! A model in any framework (PyTorch, TensorFlow, scikit-learn, ...) runs in
//! its own process and batches with its own code; Sluice drives it like any
//! in-process runtime, through the same queues, batcher and failure isolation.
//! Each engine instance owns one worker. Items are `map<string, bytes>`, so
//! they travel as 1-D `u8` tensors keyed by input name (`type = "bytes"`
//! processing makes them from raw inputs).
//!
//! Supervision, per instance: the worker is started (or connected to) and
//! asked `Status` before any `Run`; an idle worker is health-checked with
//! `Status` before its next batch; during a `Run` it is probed with `Status`
//! on a second connection, and one that answers no probe for `hang_timeout_s`
//! is hung. A worker that crashes, hangs or exceeds its run timeout is killed
//! and restarted with exponential backoff, and the batch it held is retried
//! once on the restarted worker. A restart that fails (the new worker exits
//! or gives no `Status`) is the worker's failure, not the items': they wait
//! and the restart is tried again, with the backoff, until
//! `max_failed_restarts` consecutive failures; only then do the items fail,
//! as `unavailable`, with the reason. A batch that brings a worker
//! down twice fails as a [`BatchError`], so the engine bisects it; a single
//! item that does is quarantined as a "poison input" (it fails at once from
//! then on, without reaching a worker), so one bad input cannot take the
//! fleet down over and over.

#[cfg(feature = "test-util")]
pub mod test_util;
mod worker;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::spec::{ModelSpec, OmiSpec};
use sluice_core::{
    Backend, BatchError, DType, ItemError, ItemErrorKind, ModelSignature, NamedTensors, Runtime, Tensor, TensorData,
    TensorInfo,
};

use crate::worker::{CallFault, HangWatch, Launch, Worker};

/// Messages and client generated from `proto/omi/model.proto` (no package,
/// as in chassis: methods are `/ModzyModel/Status`, `/ModzyModel/Run`, `/ModzyModel/Shutdown`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Default run timeout when neither model.toml nor the worker's `Status` gives one.
const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the OMI backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum OmiError {
    /// The model.toml has no usable `[omi]` table.
    #[error("{0}")]
    Config(String),
    /// A worker could not be started or did not answer `Status`.
    #[error("{0}")]
    Start(String),
}

/// Supervision counters of one OMI model, over all its workers.
#[derive(Debug, Default)]
pub struct OmiCounters {
    restarts: AtomicU64,
    crashes: AtomicU64,
    timeouts: AtomicU64,
    retries: AtomicU64,
    quarantined: AtomicU64,
    hangs: AtomicU64,
    failed_starts: AtomicU64,
}

/// A snapshot of [`OmiCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OmiCountersSnapshot {
    /// Workers restarted after a crash, a timeout or a failed health check.
    pub restarts: u64,
    /// Workers found dead (process exit, broken connection, failed health check).
    pub crashes: u64,
    /// `Run` calls that exceeded the run timeout.
    pub timeouts: u64,
    /// Batches retried on a restarted worker.
    pub retries: u64,
    /// Items quarantined as poison inputs.
    pub quarantined: u64,
    /// Workers found hung during a `Run` (no answer to `Status` probes for `hang_timeout_s`).
    pub hangs: u64,
    /// Restarts that failed (the new worker exited or gave no `Status` in time).
    pub failed_starts: u64,
}

impl OmiCounters {
    fn snapshot(&self) -> OmiCountersSnapshot {
        OmiCountersSnapshot {
            restarts: self.restarts.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
            hangs: self.hangs.load(Ordering::Relaxed),
            failed_starts: self.failed_starts.load(Ordering::Relaxed),
        }
    }
}

/// Settings and state shared by a model's instances.
struct Shared {
    model: String,
    launch: Vec<Launch>,
    start_timeout: Duration,
    status_timeout: Duration,
    run_timeout: Duration,
    hang: HangWatch,
    health_interval: Duration,
    max_failed_restarts: u32,
    backoff: Duration,
    backoff_max: Duration,
    shutdown_grace: Duration,
    rt: TokioHandle,
    counters: OmiCounters,
    /// Fingerprints of poison inputs.
    quarantine: Mutex<HashSet<u64>>,
    /// Process id of each instance's current worker.
    pids: Mutex<Vec<Option<u32>>>,
}

impl Shared {
    fn set_pid(&self, index: usize, pid: Option<u32>) {
        if let Ok(mut pids) = self.pids.lock() {
            if let Some(slot) = pids.get_mut(index) {
                *slot = pid;
            }
        }
    }
}

/// Owns the Tokio runtime that drives the gRPC clients; shut down without
/// blocking, so dropping it from async code is safe.
struct TokioHandle(Option<tokio::runtime::Runtime>);

impl TokioHandle {
    fn get(&self) -> &tokio::runtime::Runtime {
        // Only `Drop` takes the runtime out.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime taken before drop"))
    }
}

impl Drop for TokioHandle {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Backend of the `omi` runtime: a fleet of workers, one per instance.
pub struct OmiBackend {
    shared: Arc<Shared>,
    signature: ModelSignature,
    worker_batch: Option<usize>,
    override_batch: bool,
    description: String,
    /// Workers started at load (their `Status` gave the signature), taken by `create_instance`.
    started: Mutex<Vec<Option<Worker>>>,
}

impl OmiBackend {
    /// Starts `spec.instances` workers (or connects to the endpoints) in
    /// parallel and reads their `Status`. Blocking.
    pub fn load(spec: &ModelSpec) -> Result<OmiBackend, OmiError> {
        let omi = spec
            .omi
            .as_ref()
            .ok_or_else(|| OmiError::Config("runtime \"omi\" needs an [omi] table".into()))?;
        let launch = launches(spec, omi)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("sluice-{}-grpc", spec.name))
            .enable_all()
            .build()
            .map_err(|e| OmiError::Start(format!("cannot start the gRPC runtime: {e}")))?;
        let secs = |s: f64| Duration::from_secs_f64(s);
        let mut shared = Shared {
            model: spec.name.clone(),
            launch,
            start_timeout: secs(omi.start_timeout_s),
            status_timeout: secs(omi.status_timeout_s),
            run_timeout: omi.run_timeout_s.map_or(DEFAULT_RUN_TIMEOUT, secs),
            hang: HangWatch::new(secs(omi.hang_timeout_s)),
            health_interval: secs(omi.health_interval_s),
            max_failed_restarts: omi.max_failed_restarts.max(1),
            backoff: Duration::from_millis(omi.restart_backoff_ms),
            backoff_max: Duration::from_millis(omi.restart_backoff_max_ms.max(omi.restart_backoff_ms)),
            shutdown_grace: Duration::from_millis(omi.shutdown_grace_ms),
            rt: TokioHandle(Some(rt)),
            counters: OmiCounters::default(),
            quarantine: Mutex::new(HashSet::new()),
            pids: Mutex::new(vec![None; spec.instances]),
        };
        // Start every worker at once: Python workers take a while to import their framework.
        let results: Vec<Result<Worker, OmiError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..shared.launch.len())
                .map(|i| {
                    let shared = &shared;
                    s.spawn(move || start_worker(shared, i))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(OmiError::Start("worker start panicked".into())))
                })
                .collect()
        });
        let mut workers = Vec::with_capacity(results.len());
        let mut first_error = None;
        for r in results {
            match r {
                Ok(w) => workers.push(Some(w)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for w in workers.into_iter().flatten() {
                w.stop(Some(shared.rt.get()), true, shared.shutdown_grace);
            }
            return Err(e);
        }
        let status = workers
            .first()
            .and_then(|w| w.as_ref())
            .map(|w| w.status.clone())
            .unwrap_or_default();
        if omi.run_timeout_s.is_none() {
            if let Some(t) = status.timeout.as_ref().and_then(|t| parse_duration(&t.run)) {
                shared.run_timeout = t;
            }
        }
        let worker_batch = status
            .features
            .as_ref()
            .and_then(|f| usize::try_from(f.batch_size).ok())
            .filter(|&b| b > 0);
        for (i, w) in workers.iter().enumerate() {
            shared.set_pid(i, w.as_ref().and_then(Worker::pid));
        }
        let signature = signature_of(&status);
        let info = status.model_info.unwrap_or_default();
        let description = format!(
            "omi: {} worker(s) {}{}, run timeout {:?}",
            workers.len(),
            if info.model_name.is_empty() {
                String::new()
            } else {
                format!("'{}' {} ", info.model_name, info.model_version)
            },
            worker_batch.map_or_else(|| "(no batch size declared)".into(), |b| format!("(batch {b})")),
            shared.run_timeout
        );
        Ok(OmiBackend {
            shared: Arc::new(shared),
            signature,
            worker_batch,
            override_batch: omi.override_batch_size,
            description,
            started: Mutex::new(workers),
        })
    }

    /// Supervision counters so far.
    pub fn counters(&self) -> OmiCountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// Process ids of the workers Sluice started and that run now (empty for endpoints).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .pids
            .lock()
            .map(|p| p.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// The batch size the workers declared in `Status`, if any.
    pub fn worker_batch_size(&self) -> Option<usize> {
        self.worker_batch
    }
}

impl Drop for OmiBackend {
    fn drop(&mut self) {
        // Workers never handed to an instance. Dropping may happen on an async
        // thread, where blocking on gRPC is not allowed: those are just killed.
        let in_async = tokio::runtime::Handle::try_current().is_ok();
        if let Ok(mut started) = self.started.lock() {
            for (i, w) in started.iter_mut().enumerate() {
                if let Some(w) = w.take() {
                    let rt = (!in_async).then(|| self.shared.rt.get());
                    w.stop(rt, !in_async, self.shared.shutdown_grace);
                    self.shared.set_pid(i, None);
                }
            }
        }
    }
}

impl Backend for OmiBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn create_instance(&self, index: usize) -> Result<Box<dyn Runtime>, BatchError> {
        if index >= self.shared.launch.len() {
            return Err(BatchError::fatal(format!(
                "instance {index}: the model has {} OMI worker(s)",
                self.shared.launch.len()
            )));
        }
        let worker = self
            .started
            .lock()
            .ok()
            .and_then(|mut s| s.get_mut(index).and_then(Option::take));
        Ok(Box::new(OmiInstance {
            shared: self.shared.clone(),
            index,
            worker,
            last_ok: Instant::now(),
            failures: 0,
            failed_starts: 0,
            down: None,
            max_batch: self.worker_batch.unwrap_or(usize::MAX),
        }))
    }

    fn max_batch_size(&self) -> Option<usize> {
        if self.override_batch {
            None
        } else {
            self.worker_batch
        }
    }
}

fn launches(spec: &ModelSpec, omi: &OmiSpec) -> Result<Vec<Launch>, OmiError> {
    if !omi.endpoints.is_empty() {
        return Ok(omi.endpoints.iter().cloned().map(Launch::Endpoint).collect());
    }
    let Some((program, args)) = omi.command.split_first() else {
        return Err(OmiError::Config("[omi] needs command or endpoints".into()));
    };
    let dir = if spec.dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        spec.dir.clone()
    };
    // The worker starts in the model folder, so a relative program path must
    // not be resolved again from there: make it absolute now, against the
    // model folder as seen from here. A bare name is looked up in `PATH`.
    let program = if program.contains('/') {
        let path = spec.resolve(Path::new(program));
        std::path::absolute(&path)
            .map_err(|e| OmiError::Config(format!("[omi] command: cannot resolve {}: {e}", path.display())))?
    } else {
        PathBuf::from(program)
    };
    let env: Vec<(String, String)> = omi.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok((0..spec.instances)
        .map(|_| Launch::Command {
            program: program.clone(),
            args: args.to_vec(),
            dir: dir.clone(),
            env: env.clone(),
        })
        .collect())
}

fn start_worker(shared: &Shared, index: usize) -> Result<Worker, OmiError> {
    let launch = shared
        .launch
        .get(index)
        .ok_or_else(|| OmiError::Start(format!("no worker {index}")))?;
    Worker::start(
        shared.rt.get(),
        format!("{}#{index}", shared.model),
        launch,
        shared.start_timeout,
        shared.status_timeout,
    )
}

/// The model's inputs and outputs as `Status` declares them: 1-D byte strings.
fn signature_of(status: &proto::StatusResponse) -> ModelSignature {
    let info = |name: &str| TensorInfo {
        name: name.to_string(),
        dtype: Some(DType::U8),
        shape: vec![None, None],
    };
    let mut inputs: Vec<TensorInfo> = status
        .inputs
        .iter()
        .filter(|i| !i.filename.is_empty())
        .map(|i| info(&i.filename))
        .collect();
    if inputs.is_empty() {
        inputs.push(info("input"));
    }
    let outputs = status
        .outputs
        .iter()
        .filter(|o| !o.filename.is_empty())
        .map(|o| info(&o.filename))
        .collect();
    ModelSignature { inputs, outputs }
}

/// Parses an OMI timeout string: `"30"`, `"30s"`, `"500ms"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim().to_ascii_lowercase();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s.as_str(), "s"),
    };
    let v: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => v / 1e3,
        "s" | "sec" | "secs" | "seconds" => v,
        "m" | "min" | "minutes" => v * 60.0,
        "h" | "hours" => v * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Identifies an item by content, to recognise a quarantined input when it comes back.
fn fingerprint(item: &NamedTensors) -> u64 {
    let mut h = DefaultHasher::new();
    for (name, t) in item {
        name.hash(&mut h);
        t.shape.hash(&mut h);
        match &t.data {
            TensorData::U8(b) => b.hash(&mut h),
            other => format!("{other:?}").hash(&mut h),
        }
    }
    h.finish()
}

fn to_request(batch: &[&NamedTensors]) -> Result<proto::RunRequest, ItemError> {
    let mut inputs = Vec::with_capacity(batch.len());
    for item in batch {
        let mut input = std::collections::HashMap::new();
        for (name, t) in item.iter() {
            let TensorData::U8(bytes) = &t.data else {
                return Err(ItemError::invalid(format!(
                    "OMI input '{name}' must be bytes (u8), got {}",
                    t.dtype()
                )));
            };
            input.insert(name.clone(), bytes.clone());
        }
        inputs.push(proto::InputItem { input });
    }
    Ok(proto::RunRequest {
        inputs,
        detect_drift: false,
        explain: false,
    })
}

/// Values of a failed item's `error_code` output that mean the input itself
/// is at fault (the SDK's `InvalidInput`; gRPC's and HTTP's names for it).
const INVALID_CODES: [&str; 4] = ["invalid_input", "invalid_argument", "400", "422"];

fn from_output(out: proto::OutputItem) -> Result<NamedTensors, ItemError> {
    if !out.success {
        let message = out
            .output
            .get("error")
            .map(|e| String::from_utf8_lossy(e).trim().to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the worker reported a failure without an error message".into());
        let invalid = out.output.get("error_code").is_some_and(|c| {
            let code = String::from_utf8_lossy(c).trim().to_ascii_lowercase();
            INVALID_CODES.contains(&code.as_str())
        });
        return Err(if invalid {
            ItemError::invalid(message)
        } else {
            ItemError::inference(message)
        });
    }
    Ok(out
        .output
        .into_iter()
        .map(|(name, bytes)| {
            let t = Tensor {
                shape: vec![bytes.len()],
                data: TensorData::U8(bytes),
            };
            (name, t)
        })
        .collect::<BTreeMap<_, _>>())
}

/// One engine instance: one worker, supervised.
struct OmiInstance {
    shared: Arc<Shared>,
    index: usize,
    worker: Option<Worker>,
    last_ok: Instant,
    /// Consecutive worker failures (drives the restart backoff).
    failures: u32,
    /// Consecutive failed restarts.
    failed_starts: u32,
    /// Set once `max_failed_restarts` restarts in a row failed: when the
    /// last try was and why it failed. Batches then fail at once, and one
    /// restart is tried per `restart_backoff_max_ms`.
    down: Option<(Instant, String)>,
    max_batch: usize,
}

/// How a supervised call of one batch ended.
enum Attempt {
    Done(proto::RunResponse),
    /// The worker died or hung; it has been stopped.
    Lost(String),
    /// The worker refused the request as invalid (gRPC `INVALID_ARGUMENT`).
    Invalid(String),
    /// No worker could be (re)started; the items fail as unavailable.
    Unavailable(String),
}

impl OmiInstance {
    fn label(&self) -> String {
        format!("{}#{}", self.shared.model, self.index)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.shared.rt.get()
    }

    /// Kills the current worker (after a crash or a timeout).
    fn drop_worker(&mut self, reason: &str) {
        if let Some(w) = self.worker.take() {
            tracing::warn!(worker = %self.label(), reason, "OMI worker lost; it will be restarted");
            w.stop(None, false, Duration::ZERO);
        }
        self.shared.set_pid(self.index, None);
        self.failures = self.failures.saturating_add(1);
    }

    /// Makes sure a healthy worker is there: restarts a lost one (after the
    /// backoff), health-checks an idle one. `Err` says why no worker could be started.
    fn ensure_worker(&mut self) -> Result<(), String> {
        if let Some(w) = self.worker.as_mut() {
            if let Some(exit) = w.exited() {
                self.shared.counters.crashes.fetch_add(1, Ordering::Relaxed);
                self.drop_worker(&format!("the process exited ({exit})"));
            } else if self.last_ok.elapsed() >= self.shared.health_interval {
                let health = {
                    let rt = self.shared.rt.get();
                    self.worker
                        .as_mut()
                        .map_or(Ok(()), |w| w.health(rt, self.shared.status_timeout))
                };
                match health {
                    Ok(()) => self.last_ok = Instant::now(),
                    Err(e) => {
                        self.shared.counters.crashes.fetch_add(1, Ordering::Relaxed);
                        self.drop_worker(&format!("health check failed: {e}"));
                    }
                }
            }
        }
        if self.worker.is_some() {
            return Ok(());
        }
        self.restart()
    }

    /// Starts a new worker. A start that fails is the worker's failure, not
    /// the items': it is tried again after the backoff, up to
    /// `max_failed_restarts` consecutive failures; then the items fail
    /// (`Err` with the reason). Once down, one start is tried per
    /// `restart_backoff_max_ms` and batches in between fail at once.
    fn restart(&mut self) -> Result<(), String> {
        let max = self.shared.max_failed_restarts;
        let mut tries = max.saturating_sub(self.failed_starts).max(1);
        if let Some((since, reason)) = &self.down {
            if since.elapsed() < self.shared.backoff_max {
                return Err(reason.clone());
            }
            tries = 1;
        }
        loop {
            let exp = self.failures.saturating_sub(1).min(20);
            let delay = if self.down.is_some() {
                Duration::ZERO
            } else {
                self.shared
                    .backoff
                    .saturating_mul(1 << exp)
                    .min(self.shared.backoff_max)
            };
            std::thread::sleep(delay);
            match start_worker(&self.shared, self.index) {
                Ok(w) => {
                    self.shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(worker = %self.label(), pid = w.pid(), after = ?delay, "OMI worker restarted");
                    self.shared.set_pid(self.index, w.pid());
                    self.worker = Some(w);
                    self.last_ok = Instant::now();
                    self.failed_starts = 0;
                    self.down = None;
                    return Ok(());
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    self.failed_starts = self.failed_starts.saturating_add(1);
                    self.shared.counters.failed_starts.fetch_add(1, Ordering::Relaxed);
                    tries -= 1;
                    if tries == 0 {
                        let reason = format!(
                            "OMI worker unavailable: {} restart(s) in a row failed (max_failed_restarts = {max}); last: {e}",
                            self.failed_starts
                        );
                        tracing::error!(worker = %self.label(), "{reason}");
                        self.down = Some((Instant::now(), reason.clone()));
                        return Err(reason);
                    }
                    tracing::warn!(worker = %self.label(), error = %e, failed = self.failed_starts, "OMI worker restart failed; trying again");
                }
            }
        }
    }

    /// One `Run` of `batch` on a healthy worker.
    fn attempt(&mut self, req: proto::RunRequest) -> Result<Attempt, BatchError> {
        if let Err(reason) = self.ensure_worker() {
            return Ok(Attempt::Unavailable(reason));
        }
        let timeout = self.shared.run_timeout;
        let hang = self.shared.hang;
        let rt_result = {
            let rt = self.shared.rt.get();
            match self.worker.as_mut() {
                Some(w) => w.run(rt, req, timeout, hang),
                None => return Ok(Attempt::Unavailable("OMI worker unavailable".into())),
            }
        };
        match rt_result {
            Ok(resp) => {
                self.last_ok = Instant::now();
                self.failures = 0;
                Ok(Attempt::Done(resp))
            }
            Err(CallFault::Rejected(msg)) => {
                self.last_ok = Instant::now();
                Err(BatchError::new(format!("the worker failed the batch: {msg}")))
            }
            Err(CallFault::Invalid(msg)) => {
                self.last_ok = Instant::now();
                Ok(Attempt::Invalid(msg))
            }
            Err(CallFault::Hung(silent)) => {
                self.shared.counters.hangs.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "the worker answered no health check for {silent:.1?} during a Run (hang timeout {:?})",
                    self.shared.hang.timeout
                );
                self.drop_worker(&reason);
                Ok(Attempt::Lost(reason))
            }
            Err(CallFault::Crashed(msg)) => {
                self.shared.counters.crashes.fetch_add(1, Ordering::Relaxed);
                let reason = format!("the worker crashed ({msg})");
                self.drop_worker(&reason);
                Ok(Attempt::Lost(reason))
            }
            Err(CallFault::TimedOut(t)) => {
                self.shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                let reason = format!("the worker exceeded its run timeout ({t:?})");
                self.drop_worker(&reason);
                Ok(Attempt::Lost(reason))
            }
        }
    }

    /// Runs a chunk no larger than the worker's batch size, retrying once on
    /// a restarted worker when the worker is lost.
    fn run_chunk(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        let req = match to_request(batch) {
            Ok(r) => r,
            // Only bytes reach OMI workers through `type = "bytes"`; anything
            // else is a per-item problem, isolated by bisection.
            Err(e) => return Err(BatchError::new(e.message)),
        };
        let mut lost = Vec::new();
        let resp = loop {
            match self.attempt(req.clone())? {
                Attempt::Done(resp) => break resp,
                Attempt::Unavailable(reason) => {
                    return Ok(batch
                        .iter()
                        .map(|_| Err(ItemError::new(ItemErrorKind::Unavailable, reason.clone())))
                        .collect());
                }
                Attempt::Invalid(msg) if batch.len() == 1 => {
                    return Ok(vec![Err(ItemError::invalid(format!(
                        "the worker refused the input: {msg}"
                    )))]);
                }
                // Which item is invalid? The engine bisects down to single items.
                Attempt::Invalid(msg) => {
                    return Err(BatchError::new(format!(
                        "the worker refused the batch as invalid: {msg}"
                    )));
                }
                Attempt::Lost(reason) if lost.is_empty() => {
                    self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(worker = %self.label(), items = batch.len(), "retrying the batch on the restarted worker");
                    lost.push(reason);
                }
                Attempt::Lost(reason) => {
                    lost.push(reason);
                    return self.lost_twice(batch, &lost);
                }
            }
        };
        if resp.outputs.len() != batch.len() {
            // A single item refused with a client-error status: its input is at fault.
            if batch.len() == 1 && resp.outputs.is_empty() && (400..500).contains(&resp.status_code) {
                return Ok(vec![Err(ItemError::invalid(format!(
                    "the worker refused the input (status {} {}: {})",
                    resp.status_code, resp.status, resp.message
                )))]);
            }
            return Err(BatchError::new(format!(
                "the worker returned {} outputs for {} inputs (status {} {}: {})",
                resp.outputs.len(),
                batch.len(),
                resp.status_code,
                resp.status,
                resp.message
            )));
        }
        Ok(resp.outputs.into_iter().map(from_output).collect())
    }

    /// A batch took down two workers: bisect it, or quarantine a single item.
    fn lost_twice(
        &mut self,
        batch: &[&NamedTensors],
        reasons: &[String],
    ) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        let reasons = reasons.join("; then ");
        let [item] = batch else {
            return Err(BatchError::new(format!("the batch took down two workers: {reasons}")));
        };
        if let Ok(mut q) = self.shared.quarantine.lock() {
            q.insert(fingerprint(item));
        }
        self.shared.counters.quarantined.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(worker = %self.label(), "poison input quarantined: {reasons}");
        let kind = if reasons.contains("timeout") {
            ItemErrorKind::Timeout
        } else {
            ItemErrorKind::Inference
        };
        Ok(vec![Err(ItemError::new(
            kind,
            format!("poison input: it took down two workers ({reasons}); quarantined"),
        ))])
    }
}

impl Runtime for OmiInstance {
    fn run(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        let mut results: Vec<Option<Result<NamedTensors, ItemError>>> = Vec::with_capacity(batch.len());
        let mut live: Vec<usize> = Vec::with_capacity(batch.len());
        {
            let quarantine = self.shared.quarantine.lock().ok();
            for (i, item) in batch.iter().enumerate() {
                if quarantine.as_ref().is_some_and(|q| q.contains(&fingerprint(item))) {
                    results.push(Some(Err(ItemError::inference(
                        "poison input: this input took down two workers before; quarantined",
                    ))));
                } else {
                    results.push(None);
                    live.push(i);
                }
            }
        }
        for chunk in live.chunks(self.max_batch.max(1)) {
            let items: Vec<&NamedTensors> = chunk.iter().filter_map(|&i| batch.get(i).copied()).collect();
            let outs = self.run_chunk(&items)?;
            for (&i, out) in chunk.iter().zip(outs) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(out);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ItemError::new(ItemErrorKind::Internal, "item not run"))))
            .collect())
    }
}

impl Drop for OmiInstance {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            let in_async = tokio::runtime::Handle::try_current().is_ok();
            w.stop((!in_async).then(|| self.rt()), !in_async, self.shared.shutdown_grace);
        }
        self.shared.set_pid(self.index, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn failed_output_carries_the_error_text() {
        let out = proto::OutputItem {
            output: [("error".to_string(), b"bad input\n".to_vec())].into(),
            success: false,
        };
        let err = from_output(out).expect_err("failed");
        assert_eq!(err.message, "bad input");
        let ok = proto::OutputItem {
            output: [("results.json".to_string(), b"{}".to_vec())].into(),
            success: true,
        };
        assert_eq!(from_output(ok).expect("ok")["results.json"].shape, vec![2]);
    }
}
