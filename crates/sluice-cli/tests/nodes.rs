//! Node roles and the node table on one machine (SQLite): what `--role`,
//! `--node-id` and `--store` do for a user before a second machine is in
//! play. The many-node behaviour on PostgreSQL is in `scaleout.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{run_sluice, text, write_model, ServerProc};
use serde_json::{json, Value};

fn inputs(n: usize) -> Value {
    let map: serde_json::Map<String, Value> = (0..n).map(|i| (format!("k{i:03}"), json!([i as f64, 0.5]))).collect();
    Value::Object(map)
}

fn node<'a>(nodes: &'a Value, id: &str) -> Option<&'a Value> {
    nodes["nodes"].as_array()?.iter().find(|n| n["id"] == id)
}

fn start(models: &Path, data: &Path, log: &Path, extra: &[&str]) -> ServerProc {
    ServerProc::start_with(models, data, None, log, extra)
}

#[test]
fn an_api_node_takes_jobs_and_a_node_that_runs_models_finishes_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    write_model(&models, "noop", &[]);
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");

    // An api node runs no model, is ready on the models it declares, and accepts jobs.
    let mut api = start(&models, &data, &log, &["--role", "api", "--node-id", "front-1"]);
    let (_, health) = api.get("/readyz");
    assert_eq!(health["declared_models"], json!(["noop"]), "{health}");
    assert_eq!(health["ready_models"], json!([]), "{health}");
    let (status, nodes) = api.get("/v1/nodes");
    assert_eq!(status, 200, "{nodes}");
    let me = node(&nodes, "front-1").unwrap_or_else(|| panic!("front-1 not listed: {nodes}"));
    assert_eq!(me["role"], "api");
    assert_eq!(me["models"], json!([]));
    assert_eq!(me["this_node"], true);
    assert_eq!(me["address"].as_str(), api.base.strip_prefix("http://"));
    let (status, job) = api.post("/v1/jobs", &json!({"model": "noop", "inputs": inputs(50)}));
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("job id").to_owned();
    // Real-time requests need a node that runs the model.
    let (status, refused) = api.post("/v1/models/noop/infer", &json!({"inputs": [[1.0]]}));
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("api node"),
        "{refused}"
    );
    // Nothing runs it here.
    std::thread::sleep(Duration::from_millis(500));
    let job = api.job(&id);
    assert_eq!(job["counts"]["pending"], 50, "{job}");
    let (code, took) = api.terminate(Duration::from_secs(10));
    assert!(code.success(), "api node exit {code}: {}", api.log_text());
    assert!(took < Duration::from_secs(5));

    // A worker on the same store runs it, and refuses new jobs.
    let worker = start(&models, &data, &log, &["--role", "worker", "--node-id", "gpu-1"]);
    let done = worker.wait_for(&id, "completed", |j| j["status"] == "COMPLETED");
    assert_eq!(done["counts"]["completed"], 50, "{done}");
    let (status, refused) = worker.post("/v1/jobs", &json!({"model": "noop", "inputs": inputs(1)}));
    assert_eq!(status, 409, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("worker") && message.contains("api node"), "{refused}");
    let (_, nodes) = worker.get("/v1/nodes");
    let me = node(&nodes, "gpu-1").unwrap_or_else(|| panic!("gpu-1 not listed: {nodes}"));
    assert_eq!(me["role"], "worker");
    assert_eq!(me["models"], json!(["noop"]));
    assert!(
        node(&nodes, "front-1").is_none(),
        "a node that stopped gracefully stays listed: {nodes}"
    );
    let (_, results) = worker.get(&format!("/v1/jobs/{id}/results/k007"));
    assert_eq!(
        results["output"]["tensors"]["output"]["data"],
        json!([7.0, 0.5]),
        "{results}"
    );
}

#[test]
fn bad_node_flags_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    for (args, expect) in [
        (vec!["--role", "boss"], "all, api or worker"),
        (
            vec!["--store", "mysql://db/jobs"],
            "unsupported store URL scheme \"mysql\"",
        ),
        (vec!["--node-id", "a b"], "--node-id"),
        (vec!["--lease-s", "0"], "--lease-s"),
    ] {
        let mut all = vec![
            "serve",
            "--models",
            "models",
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
        ];
        all.extend(&args);
        let out = run_sluice(&all);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
