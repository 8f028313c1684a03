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
    fixture_with(worker_batch, max_batch, run_timeout_s, "", "")
}

/// [`fixture`] with extra worker environment (`, KEY = "v"` entries) and extra `[omi]` keys.
fn fixture_with(
    worker_batch: usize,
    max_batch: usize,
    run_timeout_s: f64,
    extra_env: &str,
    extra_omi: &str,
) -> Option<Fixture> {
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
env = {{ PYTHONPATH = {sdk:?}, TEST_WORKER_STATE = {state:?}, TEST_WORKER_BATCH = "{worker_batch}"{extra_env} }}
run_timeout_s = {run_timeout_s}
restart_backoff_ms = 50
restart_backoff_max_ms = 200
start_timeout_s = 60
shutdown_grace_ms = 2000
{extra_omi}
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
        assert!(out.insert(c.id.to_string(), c).is_none(), "an id came back twice");
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

/// Issue 10, finding 12: `sluice serve --models models` (a relative path) could not start the
/// shipped `models/mlp-omi`: its program path (`../../.sluice/venv/bin/python`) was joined to the
/// relative model folder and then resolved again from inside it, where the worker starts. Here the
/// model is loaded through a relative path from this crate's folder (cargo's working directory for
/// tests), as the CLI does, and one real item runs through the MLP worker. The path goes through
/// `../sluice-engine` so that it does not also happen to resolve from inside the model folder
/// (`crates/sluice-engine` and `models/mlp-omi` are both two levels deep);
/// `crates/sluice-cli/tests/cli.rs::run_mlp_omi_from_a_relative_model_path` runs the binary itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_omi_starts_from_a_relative_models_path() {
    let root = common::repo_root();
    if !root.join(".sluice/venv/bin/python").exists() {
        eprintln!("SKIPPED: the venv is missing; {}", common::SETUP);
        return;
    }
    common::require_file(&root.join("models/mlp/model.onnx"));
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(
        cwd.canonicalize().expect("cwd"),
        root.join("crates/sluice-engine"),
        "cargo runs integration tests in the crate folder"
    );
    let relative = std::path::Path::new("../sluice-engine/../../models/mlp-omi");
    let spec = ModelSpec::load(relative).expect("models/mlp-omi/model.toml");
    assert!(spec.dir.is_relative());
    let (model, backend) = start(&spec).await;
    let row: Vec<u8> = (0..512).flat_map(|i| (i as f32 / 512.0).to_le_bytes()).collect();
    let c = model.infer("row", Input::Bytes(row)).await;
    let out = files(&c);
    assert!(out.contains_key("output"), "{out:?}");
    let pids = backend.worker_pids();
    model.close();
    model.join().await;
    wait_gone(&pids);
}

/// Sends `signal` (`-KILL`, `-STOP`, `-CONT`) to `pid` with the `kill` command.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// Worker processes of this test (their environment names `state`, the fixture's state folder).
fn children_of_fixture(state: &std::path::Path) -> Vec<u32> {
    sluice_omi::test_util::children_with_env(&format!("TEST_WORKER_STATE={}", state.display()))
}

/// Issue 10, finding 6: a worker killed while it runs a batch, and its replacement killed again
/// right after it appears (while it starts, before it answers `Status`), failed every item of the
/// batch for good ("OMI worker unavailable ... exited (signal 9) before answering Status"). A
/// failed start is the worker's failure: the items wait for the next restart and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_again_while_restarting_fails_no_item() {
    // Each start takes 0.5 s before serving, so the second kill lands before `Status`.
    let Some(fx) = fixture_with(8, 8, 60.0, ", TEST_WORKER_START_DELAY = \"0.5\"", "") else {
        return;
    };
    let (model, backend) = start(&fx.spec).await;
    let first = backend.worker_pids();
    assert_eq!(first.len(), 1);
    let state = fx._state.path().to_path_buf();

    // A batch that takes a second on the worker (SLOW), with 23 more items queued behind it.
    let mut texts: Vec<String> = (0..24).map(|i| format!("item-{i}")).collect();
    texts[0] = "SLOW".into();
    let runner = {
        let model = model.clone();
        tokio::spawn(async move {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            run_all(&model, &refs).await
        })
    };
    // Kill the worker while it runs the SLOW batch, then its replacement as soon as it exists.
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(first[0], "-KILL");
    let replacement = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now: Vec<u32> = children_of_fixture(&state)
                .into_iter()
                .filter(|p| *p != first[0])
                .collect();
            if let Some(&pid) = now.first() {
                break pid;
            }
            assert!(Instant::now() < deadline, "no replacement worker was started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    signal(replacement, "-KILL");

    let done = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("the items complete")
        .expect("runner task");
    for (id, c) in &done {
        assert!(c.result.is_ok(), "{id}: {:?}", c.result);
    }
    assert_eq!(done.len(), 24);
    let counters = backend.counters();
    assert!(
        counters.failed_starts >= 1,
        "the replacement was killed while it started: {counters:?}"
    );
    assert!(counters.restarts >= 1, "{counters:?}");
    let pids = backend.worker_pids();
    assert!(!pids.contains(&first[0]) && !pids.contains(&replacement));
    model.close();
    model.join().await;
    wait_gone(&pids);
}

/// Issue 10, finding 6, the bound: a worker that can never be started again fails the waiting
/// items only after `max_failed_restarts` consecutive failed restarts, as `unavailable`, with a
/// message that says so; while it stays down, later items fail at once with the same reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_that_cannot_restart_fails_items_after_bounded_restarts() {
    let Some(fx) = fixture_with(
        8,
        8,
        60.0,
        ", TEST_WORKER_START_ONCE = \"1\"",
        "max_failed_restarts = 3",
    ) else {
        return;
    };
    let (model, backend) = start(&fx.spec).await;
    let first = backend.worker_pids();
    signal(first[0], "-KILL");
    wait_gone(&first);
    let done = run_all(&model, &["a", "b", "c"]).await;
    for c in done.values() {
        let e = error(c);
        assert_eq!(e.kind, ItemErrorKind::Unavailable, "{e:?}");
        assert!(e.message.contains("3 restart(s) in a row failed"), "{}", e.message);
        assert!(e.message.contains("before answering Status"), "{}", e.message);
    }
    let counters = backend.counters();
    assert_eq!(counters.failed_starts, 3, "{counters:?}");
    assert_eq!(counters.restarts, 0, "{counters:?}");
    // Down: the next item fails at once (no further start within the backoff cap).
    let done = run_all(&model, &["d"]).await;
    assert_eq!(error(&done["t0"]).kind, ItemErrorKind::Unavailable);
    assert_eq!(backend.counters().failed_starts, 3);
    model.close();
    model.join().await;
}

/// Issue 10, finding 7, the real-time side: while the worker is stopped (SIGSTOP) with a batch on
/// it, a real-time request with a short deadline is answered `timeout` at its deadline, not when
/// the worker comes back (it waited for the whole run timeout before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_deadline_is_kept_while_the_worker_is_stopped() {
    // Hang detection far away: this test is about the waiting side alone.
    let Some(fx) = fixture_with(8, 8, 120.0, "", "hang_timeout_s = 120") else {
        return;
    };
    let (model, backend) = start(&fx.spec).await;
    let pid = backend.worker_pids()[0];
    signal(pid, "-STOP");
    let (tx, mut rx) = mpsc::channel(4);
    model
        .submit("bulk", Input::Text("bulk".into()), Reply::Stream(tx))
        .await
        .expect("submit");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opts = sluice_engine::RealtimeOptions {
        deadline: Some(Instant::now() + Duration::from_millis(300)),
    };
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        model.infer_realtime(vec![Input::Text("rt".into())], opts),
    )
    .await;
    let outcome = match answered {
        Ok(o) => o.expect("accepted"),
        Err(_) => {
            signal(pid, "-CONT");
            panic!("the real-time request was not answered while the worker was stopped");
        }
    };
    assert_eq!(outcome.len(), 1);
    assert_eq!(error(&outcome[0]).kind, ItemErrorKind::Timeout, "{:?}", outcome[0]);
    assert!(
        rx.try_recv().is_err(),
        "the bulk item cannot have completed: the worker is stopped"
    );
    signal(pid, "-CONT");
    let bulk = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the bulk item completes once the worker runs again")
        .expect("a completion");
    assert_eq!(files(&bulk)["output"], serde_json::json!("BULK"));
    model.close();
    model.join().await;
    wait_gone(&[pid]);
}

/// Issue 10, finding 7, the supervision side: a stopped worker (SIGSTOP) stops answering the
/// health probes of the `Run` it holds; after `hang_timeout_s` (here 1 s, run timeout 120 s) it is
/// killed, a new worker is started and the batch is retried there: every item completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_worker_is_found_hung_and_replaced() {
    let Some(fx) = fixture_with(8, 8, 120.0, "", "hang_timeout_s = 1.0") else {
        return;
    };
    let (model, backend) = start(&fx.spec).await;
    let first = backend.worker_pids();
    signal(first[0], "-STOP");
    let done = tokio::time::timeout(Duration::from_secs(60), run_all(&model, &["a", "b", "c"])).await;
    let Ok(done) = done else {
        signal(first[0], "-CONT");
        panic!("the items did not complete: the stopped worker was not replaced");
    };
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            files(&done[&format!("t{i}")])["output"],
            serde_json::json!(t.to_uppercase())
        );
    }
    let counters = backend.counters();
    assert_eq!(
        (counters.hangs, counters.restarts, counters.timeouts),
        (1, 1, 0),
        "{counters:?}"
    );
    wait_gone(&first);
    let pids = backend.worker_pids();
    model.close();
    model.join().await;
    wait_gone(&pids);
}

/// Issue 10, finding 11: an input the worker refuses as invalid (the SDK's `InvalidInput`, or a
/// `Run` aborted with gRPC `INVALID_ARGUMENT`) fails as `invalid_input` (HTTP 400), not as an
/// inference error (500); its neighbours succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_inputs_are_invalid_input_errors() {
    let Some(fx) = fixture(8, 8, 30.0) else { return };
    let (model, backend) = start(&fx.spec).await;
    let done = run_all(&model, &["ok", "INVALID", "ABORTINVALID", "fine"]).await;
    let invalid = error(&done["t1"]);
    assert_eq!(invalid.kind, ItemErrorKind::InvalidInput, "{invalid:?}");
    assert!(invalid.message.contains("INVALID marker"), "{}", invalid.message);
    let aborted = error(&done["t2"]);
    assert_eq!(aborted.kind, ItemErrorKind::InvalidInput, "{aborted:?}");
    assert!(aborted.message.contains("ABORTINVALID marker"), "{}", aborted.message);
    assert_eq!(files(&done["t0"])["output"], serde_json::json!("OK"));
    assert_eq!(files(&done["t3"])["output"], serde_json::json!("FINE"));
    assert_eq!(backend.counters().restarts, 0);
    let pids = backend.worker_pids();
    model.close();
    model.join().await;
    wait_gone(&pids);
}

/// Issue 16: a Python worker whose `process` raises `MemoryError` for more than 3 items. The SDK
/// answers RESOURCE_EXHAUSTED, the engine splits the batch instead of failing it, and the model's
/// effective batch size backs off to 3: every item succeeds, none in a batch of more than 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_out_of_memory_backs_the_batch_size_off_and_fails_no_item() {
    let Some(fx) = fixture_with(8, 8, 30.0, ", TEST_WORKER_MEMORY_ITEMS = \"3\"", "") else {
        return;
    };
    let (model, backend) = start(&fx.spec).await;
    let texts: Vec<String> = (0..240).map(|i| format!("text {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let done = run_all(&model, &refs).await;
    for (i, t) in texts.iter().enumerate() {
        let f = files(&done[&format!("t{i}")]);
        assert_eq!(f["output"], serde_json::json!(t.to_uppercase()));
        assert!(number(&f["batch_size"]) <= 3, "ran in a batch of {}", f["batch_size"]);
    }
    let s = model.stats();
    assert_eq!(s.items_failed, 0, "{s:?}");
    assert!(s.out_of_memory_batches > 0 && s.batch_size_backoffs > 0, "{s:?}");
    assert!(
        s.effective_batch_size == 3 || s.effective_batch_size == 4,
        "settled at 3 (4 only while it is retried): {s:?}"
    );
    assert_eq!(backend.counters().restarts, 0, "out of memory is not a crash");
    let pids = backend.worker_pids();
    model.close();
    model.join().await;
    wait_gone(&pids);
}
