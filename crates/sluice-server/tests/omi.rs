//! OMI workers behind the server: a bulk job and real-time requests (KServe v2
//! and `/v1/models/{m}/infer`) reach a real Python worker started through the
//! SDK (`sdk/python/examples/echo_test_worker.py`) through the same scheduler
//! and batcher as in-process models. A worker that crashes in the middle of a
//! job's batch is restarted and the job completes with every other item
//! succeeding.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{count, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sluice_core::ModelSpec;

fn echo_spec(state: &std::path::Path) -> ModelSpec {
    echo_spec_with(state, "")
}

/// [`echo_spec`] with extra worker environment (`, KEY = "v"` entries).
fn echo_spec_with(state: &std::path::Path, extra_env: &str) -> ModelSpec {
    let root = common::repo_root();
    let py = root.join(".sluice/venv/bin/python");
    assert!(py.is_file(), "{} is missing; {}", py.display(), common::SETUP);
    let toml = format!(
        r#"
runtime = "omi"
max_batch_size = 8
max_batch_delay_ms = 20
preprocess_threads = 1
group_by_length = false
[processing]
type = "bytes"
[omi]
command = [{py:?}, {worker:?}]
env = {{ PYTHONPATH = {sdk:?}, TEST_WORKER_STATE = {state:?}, TEST_WORKER_BATCH = "8"{extra_env} }}
run_timeout_s = 20
restart_backoff_ms = 50
restart_backoff_max_ms = 200
start_timeout_s = 60
"#,
        py = py.display().to_string(),
        worker = root
            .join("sdk/python/examples/echo_test_worker.py")
            .display()
            .to_string(),
        sdk = root.join("sdk/python").display().to_string(),
        state = state.display().to_string(),
    );
    let mut spec = ModelSpec::parse(&toml).expect("spec");
    spec.name = "echo".into();
    spec.dir = root;
    spec
}

async fn echo_model(state: &std::path::Path) -> sluice_engine::Model {
    echo_model_from(echo_spec(state)).await
}

async fn echo_model_from(spec: ModelSpec) -> sluice_engine::Model {
    let spec2 = spec.clone();
    let backend = tokio::task::spawn_blocking(move || sluice_engine::load_backend(&spec2))
        .await
        .expect("load task")
        .unwrap_or_else(|e| panic!("the echo worker did not start: {e}"));
    tokio::task::spawn_blocking(move || sluice_engine::Model::start(spec, Arc::clone(&backend)))
        .await
        .expect("start task")
        .expect("model starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_realtime_requests_reach_omi_workers() {
    let state = tempfile::tempdir().expect("state dir");
    let server = Server::start(vec![echo_model(state.path()).await]).await;

    // A bulk job whose 13th input crashes the worker the first time it is seen.
    let mut inputs = serde_json::Map::new();
    for i in 0..40 {
        let text = match i {
            12 => "CRASHONCE".to_string(),
            30 => "FAIL".to_string(),
            _ => format!("item {i}"),
        };
        inputs.insert(format!("k{i:02}"), Value::String(text));
    }
    let job = server.create(json!({"model": "echo", "inputs": inputs})).await;
    let id = job["id"].as_str().expect("id").to_string();
    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 39, "{job}");
    assert_eq!(count(&job, "failed"), 1, "{job}");
    let lines: HashMap<String, Value> = server
        .results(&id, "")
        .await
        .into_iter()
        .map(|l| (l["key"].as_str().unwrap_or_default().to_string(), l))
        .collect();
    assert_eq!(lines.len(), 40);
    for i in 0..40 {
        let l = &lines[&format!("k{i:02}")];
        match i {
            30 => assert!(
                l["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("FAIL marker")),
                "{l}"
            ),
            12 => assert_eq!(l["output"]["files"]["output"], "CRASHONCE", "{l}"),
            _ => assert_eq!(l["output"]["files"]["output"], format!("ITEM {i}"), "{l}"),
        }
    }
    let batch_sizes: Vec<u64> = lines
        .values()
        .filter_map(|l| l["output"]["files"]["batch_size"].as_u64())
        .collect();
    assert!(
        batch_sizes.iter().any(|&b| b > 1),
        "no batch larger than one: {batch_sizes:?}"
    );

    // KServe v2 with BYTES, several rows.
    let body = json!({"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES", "data": ["abc", "déf"]}]});
    let (status, resp) = server.post("/v2/models/echo/infer", &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let output = resp["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "output"))
        .unwrap_or_else(|| panic!("no output tensor in {resp}"));
    assert_eq!(output["datatype"], "BYTES");
    assert_eq!(output["data"], json!(["ABC", "DÉF"]));
    let (status, meta) = server.get("/v2/models/echo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "BYTES", "shape": [-1]}])
    );

    // The simple route, with a failing item beside a good one.
    let (status, resp) = server
        .post("/v1/models/echo/infer", &json!({"inputs": ["xyz", "FAIL"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["results"][0]["output"]["files"]["output"], "XYZ", "{resp}");
    assert_eq!(resp["results"][1]["error"]["code"], "inference", "{resp}");

    // Issue 10, finding 11: an input the worker refuses as invalid is the client's fault: 400.
    let (status, resp) = server
        .post("/v1/models/echo/infer", &json!({"inputs": ["INVALID"]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("INVALID marker")),
        "{resp}"
    );
    let body = json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["INVALID"]}]});
    let (status, resp) = server.post("/v2/models/echo/infer", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"].as_str().is_some_and(|m| m.contains("INVALID marker")),
        "{resp}"
    );
}

/// Worker processes of this test (their environment names `state`, the fixture's state folder).
fn workers_of(state: &std::path::Path) -> Vec<u32> {
    sluice_omi::test_util::children_with_env(&format!("TEST_WORKER_STATE={}", state.display()))
}

fn kill9(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -9 {pid}");
}

/// Issue 10, finding 6, as reported: during a job, the worker is killed, and its replacement is
/// killed again right after it appears (before it answers `Status`). Before, the batch's items
/// failed for good ("OMI worker unavailable ... exited (signal 9) before answering Status") and
/// the job ended COMPLETED with failures; now every input completes, once, none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_survives_a_worker_killed_again_while_it_restarts() {
    let state = tempfile::tempdir().expect("state dir");
    // Each worker start waits 0.5 s before serving, so the second kill lands before `Status`.
    let spec = echo_spec_with(state.path(), ", TEST_WORKER_START_DELAY = \"0.5\"");
    let server = Server::start(vec![echo_model_from(spec).await]).await;
    let first = workers_of(state.path());
    assert_eq!(first.len(), 1, "{first:?}");

    let mut inputs = serde_json::Map::new();
    for i in 0..64 {
        let text = if i == 0 {
            "SLOW".to_string()
        } else {
            format!("item {i}")
        };
        inputs.insert(format!("k{i:02}"), Value::String(text));
    }
    let job = server.create(json!({"model": "echo", "inputs": inputs})).await;
    let id = job["id"].as_str().expect("id").to_string();
    // The first batch holds SLOW (one second on the worker): kill the worker during it...
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    kill9(first[0]);
    // ...and the replacement as soon as it exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let replacement = loop {
        if let Some(&pid) = workers_of(state.path()).iter().find(|p| **p != first[0]) {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement worker was started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    kill9(replacement);

    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "failed"), 0, "{job}");
    assert_eq!(count(&job, "completed"), 64, "{job}");
    let lines = server.results(&id, "").await;
    let keys: std::collections::HashSet<String> = lines
        .iter()
        .map(|l| l["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!((lines.len(), keys.len()), (64, 64), "every input exactly once");
    for l in &lines {
        assert!(l["output"]["files"]["output"].is_string(), "{l}");
    }
}
