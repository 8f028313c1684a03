//! OMI workers through the whole engine: real Python workers started through
//! the SDK (`sdk/python/examples/echo_test_worker.py`), on loopback gRPC.
//!
//! Batches larger than one reach the worker (it reports the batch size it
//! saw); a failing item fails alone; a crash mid-batch is retried on the
//! restarted worker and every item succeeds; a hung worker times out and is
//! restarted; an input that crashes workers twice is quarantined; no worker
//! process survives the model. Skipped, with a message, only when the venv
//! (`bash scripts/setup.sh`) is missing.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{Backend, Input, ItemErrorKind, ModelSpec, Output};
use sluice_engine::{Completion, Model, Reply};
use sluice_omi::OmiBackend;
use tokio::sync::mpsc;

struct Fixture {
    spec: ModelSpec,
    _state: tempfile::TempDir,
}

/// A model.toml for the test worker, or `None` when the venv is missing.
fn fixture(worker_batch: usize, max_batch: usize, run_timeout_s: f64) -> Option<Fixture> {
    let root = common::repo_root();
    let py = root.join(".sluice/venv/bin/python");
    if !py.exists() {
        eprintln!("SKIPPED: {} missing; {}", py.display(), common::SETUP);
        return None;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let worker = root.join("sdk/python/examples/echo_test_worker.py");
    let sdk = root.join("sdk/python");
    let toml = format!(
        r#"
runtime = "omi"
max_batch_size = {max_batch}
max_batch_delay_ms = 50
preprocess_threads = 1
group_by_length = false
[processing]
type = "bytes"
[omi]
command = [{py:?}, {worker:?}]
env = {{ PYTHONPATH = {sdk:?}, TEST_WORKER_STATE = {state:?}, TEST_WORKER_BATCH = "{worker_batch}" }}
run_timeout_s = {run_timeout_s}
restart_backoff_ms = 50
restart_backoff_max_ms = 200
start_timeout_s = 60
shutdown_grace_ms = 2000
"#,
        py = py.display().to_string(),
        worker = worker.display().to_string(),
        sdk = sdk.display().to_string(),
        state = state.path().display().to_string(),
    );
    let mut spec = ModelSpec::parse(&toml).expect("spec");
    spec.name = "echo-omi".into();
    spec.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Some(Fixture { spec, _state: state })
}

async fn start(spec: &ModelSpec) -> (Model, Arc<OmiBackend>) {
    let spec2 = spec.clone();
    let backend = Arc::new(
        tokio::task::spawn_blocking(move || OmiBackend::load(&spec2))
            .await
            .expect("load task")
            .expect("workers start"),
    );
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let model = common::start_model(spec.clone(), dyn_backend).await;
    (model, backend)
}

/// Submits all `texts` at once and returns their completions by id (`t0`, `t1`, ...).
async fn run_all(model: &Model, texts: &[&str]) -> HashMap<String, Completion> {
    let (tx, mut rx) = mpsc::channel(texts.len().max(1));
    for (i, t) in texts.iter().enumerate() {
        model
            .submit(
                format!("t{i}"),
                Input::Text((*t).to_string()),
                Reply::Stream(tx.clone()),
            )
            .await
            .expect("submit");
    }
    drop(tx);
    let mut out = HashMap::new();
    while let Some(c) = rx.recv().await {
        assert!(out.insert(c.id.clone(), c).is_none(), "an id came back twice");
    }
    assert_eq!(out.len(), texts.len(), "every item completes once");
    out
}

fn files(c: &Completion) -> &std::collections::BTreeMap<String, serde_json::Value> {
    match &c.result {
        Ok(Output::Files(f)) => f,
        other => panic!("{}: files expected, got {other:?}", c.id),
    }
}

fn number(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("number expected, got {v}"))
}

fn error(c: &Completion) -> &sluice_core::ItemError {
    c.result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("{}: error expected", c.id))
}

/// Polls (bounded) until none of `pids` is a running process.
fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    while pids.iter().any(alive) {
        assert!(
            Instant::now() < deadline,
            "worker processes {pids:?} still run after the model closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_item_failures_crash_and_poison() {
    let Some(fx) = fixture(4, 16, 30.0) else { return };
    let (model, backend) = start(&fx.spec).await;
    assert_eq!(backend.worker_batch_size(), Some(4));
    assert_eq!(
        model.spec().max_batch_size,
        4,
        "the worker's batch size caps the config's"
    );
    let first_pids = backend.worker_pids();
    assert_eq!(first_pids.len(), 1);

    // Batches larger than one reach the worker; FAIL and RAISE fail alone.
    let mut texts: Vec<String> = (0..14).map(|i| format!("item-{i}")).collect();
    texts.insert(3, "FAIL".into());
    texts.insert(9, "RAISE".into());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let done = run_all(&model, &refs).await;
    let mut largest = 0;
    for (i, t) in texts.iter().enumerate() {
        let c = &done[&format!("t{i}")];
        match t.as_str() {
            "FAIL" => assert!(error(c).message.contains("FAIL marker"), "{:?}", c.result),
            "RAISE" => assert!(error(c).message.contains("RAISE marker"), "{:?}", c.result),
            _ => {
                let f = files(c);
                assert_eq!(f["output"], serde_json::json!(t.to_uppercase()));
                let seen = number(&f["batch_size"]);
                assert!(seen <= 4, "the worker saw a batch of {seen} > its batch size");
                largest = largest.max(seen);
            }
        }
    }
    assert!(largest > 1, "the worker only ever saw single items");
    assert_eq!(backend.counters().restarts, 0);

    // A crash mid-batch: the batch is retried on the restarted worker; every item succeeds.
    let done = run_all(&model, &["a", "b", "CRASHONCE", "c"]).await;
    for c in done.values() {
        assert!(c.result.is_ok(), "{}: {:?}", c.id, c.result);
    }
    let counters = backend.counters();
    assert_eq!((counters.crashes, counters.restarts, counters.retries), (1, 1, 1));
    assert_ne!(backend.worker_pids(), first_pids, "a new worker process");

    // A poison input (crashes every worker it reaches) is quarantined; the rest succeed.
    let done = run_all(&model, &["p", "CRASH", "q", "r"]).await;
    for (i, t) in ["p", "CRASH", "q", "r"].iter().enumerate() {
        let c = &done[&format!("t{i}")];
        if *t == "CRASH" {
            let e = error(c);
            assert_eq!(e.kind, ItemErrorKind::Inference);
            assert!(e.message.contains("poison input"), "{}", e.message);
        } else {
            assert_eq!(files(c)["output"], serde_json::json!(t.to_uppercase()));
        }
    }
    let counters = backend.counters();
    assert_eq!(counters.quarantined, 1);
    // It comes back: failed at once, no worker taken down.
    let done = run_all(&model, &["CRASH", "s"]).await;
    assert!(error(&done["t0"]).message.contains("quarantined"));
    assert!(done["t1"].result.is_ok());
    assert_eq!(backend.counters().crashes, counters.crashes);

    // No worker outlives the model.
    let pids = backend.worker_pids();
    assert_eq!(pids.len(), 1);
    model.close();
    model.join().await;
    wait_gone(&pids);
    wait_gone(&first_pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_worker_times_out_and_restarts() {
    let Some(fx) = fixture(8, 8, 1.5) else { return };
    let (model, backend) = start(&fx.spec).await;
    let first_pids = backend.worker_pids();

    // The worker hangs once: timeout, kill, restart, the batch succeeds on the new worker.
    let done = run_all(&model, &["a", "HANGONCE", "b"]).await;
    for c in done.values() {
        assert!(c.result.is_ok(), "{}: {:?}", c.id, c.result);
    }
    let counters = backend.counters();
    assert_eq!((counters.timeouts, counters.restarts), (1, 1));
    wait_gone(&first_pids);

    // An input that hangs every time times out twice and is quarantined; later items succeed.
    let done = run_all(&model, &["HANG"]).await;
    let e = error(&done["t0"]);
    assert_eq!(e.kind, ItemErrorKind::Timeout);
    assert!(e.message.contains("poison input"), "{}", e.message);
    let done = run_all(&model, &["later", "items"]).await;
    assert_eq!(files(&done["t0"])["output"], serde_json::json!("LATER"));
    assert_eq!(files(&done["t1"])["output"], serde_json::json!("ITEMS"));

    let pids = backend.worker_pids();
    model.close();
    model.join().await;
    wait_gone(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_response_is_bisected() {
    // A worker that returns fewer outputs than inputs: the engine bisects; only SHORT's item
    // lacks a result when alone... which the worker then also drops, so it alone fails.
    let Some(fx) = fixture(8, 8, 30.0) else { return };
    let (model, backend) = start(&fx.spec).await;
    let done = run_all(&model, &["x", "SHORT", "y"]).await;
    assert!(
        error(&done["t1"]).message.contains("0 outputs for 1 inputs"),
        "{:?}",
        done["t1"].result
    );
    assert!(done["t0"].result.is_ok() && done["t2"].result.is_ok());
    assert_eq!(backend.counters().restarts, 0);
    let pids = backend.worker_pids();
    model.close();
    model.join().await;
    wait_gone(&pids);
}
