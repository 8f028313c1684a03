//! Batches too big for memory, through the server (issue 16): a job on a
//! model whose runtime runs out of memory above 5 items completes with every
//! item ok and the same results as on a model with room, `/metrics` shows the
//! effective batch size and the back-offs, and a real-time request with more
//! rows than a batch holds is split across batches and answered as one.

mod common;

use common::{memory_limited_mlp, mlp_output as y, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-5, "{what}: {a:?} vs {b:?}");
    }
}

fn row(i: usize) -> Value {
    let f = i as f64;
    json!([f * 0.01, -f * 0.02, 0.5, (f * 0.37).sin()])
}

/// The value of `name{model="m"}` in a Prometheus exposition.
fn metric(text: &str, name: &str, model: &str) -> f64 {
    let prefix = format!("{name}{{model=\"{model}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_model_out_of_memory_above_5_items_completes_with_every_item_ok() {
    let (tight, memory) = memory_limited_mlp("tight", 32).await;
    memory.limit_items(5);
    // The same model with no memory limit.
    let (roomy, _) = memory_limited_mlp("roomy", 32).await;
    let server = Server::start(vec![tight, roomy]).await;

    let inputs: serde_json::Map<String, Value> = (0..1200).map(|i| (format!("k{i:04}"), row(i))).collect();
    let mut ids = Vec::new();
    for model in ["tight", "roomy"] {
        let job = server.create(json!({"model": model, "inputs": inputs})).await;
        ids.push(job["id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        let end = server.wait_end(id).await;
        assert_eq!(end["status"], "COMPLETED", "{end}");
        assert_eq!(common::count(&end, "completed"), 1200, "{end}");
        assert_eq!(common::count(&end, "failed"), 0, "no item failed: {end}");
    }
    let tight_lines = server.results(&ids[0], "").await;
    let roomy_lines = server.results(&ids[1], "").await;
    assert_eq!(tight_lines.len(), 1200);
    let roomy_by_key: std::collections::HashMap<&str, &Value> = roomy_lines
        .iter()
        .map(|l| (l["key"].as_str().expect("key"), l))
        .collect();
    for l in &tight_lines {
        let key = l["key"].as_str().expect("key");
        assert_close(&y(l), &y(roomy_by_key[key]), key);
    }
    assert!(memory.failures() > 0, "the limit was hit");
    assert_eq!(memory.largest_items(), 5);

    let resp = reqwest::get(server.url("/metrics")).await.expect("GET /metrics");
    let text = resp.text().await.expect("metrics body");
    let effective = metric(&text, "sluice_model_effective_batch_size", "tight");
    assert!(effective == 5.0 || effective == 6.0, "effective size {effective}");
    assert!(metric(&text, "sluice_model_batch_size_backoffs_total", "tight") >= 3.0);
    assert!(metric(&text, "sluice_model_out_of_memory_batches_total", "tight") >= 3.0);
    assert_eq!(metric(&text, "sluice_model_effective_batch_size", "roomy"), 32.0);
    assert_eq!(metric(&text, "sluice_model_batch_size_backoffs_total", "roomy"), 0.0);
    // The dashboard's stats show the same.
    let (status, stats) = server.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    let tight_stats = stats["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "tight"))
        .unwrap_or_else(|| panic!("no tight model in {stats}"));
    assert!(tight_stats["batch_size_backoffs"].as_u64() >= Some(3), "{tight_stats}");
    assert_eq!(tight_stats["max_batch_size"], 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_more_rows_than_a_batch_is_split_across_batches_and_answered_as_one() {
    // 4 items per batch, and the runtime of `tight` fits 3 of them.
    let (tight, memory) = memory_limited_mlp("tight", 4).await;
    memory.limit_items(3);
    let server = Server::start(vec![tight]).await;
    let rows: Vec<Value> = (0..50).map(row).collect();
    let data: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter().map(|x| x.as_f64().expect("number")))
        .collect();
    let body = json!({"inputs": [{"name": "x", "shape": [50, 4], "datatype": "FP32", "data": data}]});
    let (status, all) = server.post("/v2/models/tight/infer", &body).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["outputs"][0]["shape"], json!([50, 3]));
    let all = all["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect::<Vec<_>>();
    for (i, r) in rows.iter().enumerate().step_by(7) {
        let one = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": r}]});
        let (status, single) = server.post("/v2/models/tight/infer", &one).await;
        assert_eq!(status, StatusCode::OK, "{single}");
        let single: Vec<f64> = single["outputs"][0]["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        assert_close(&all[i * 3..i * 3 + 3], &single, &format!("row {i}"));
    }
    assert_eq!(memory.largest_items(), 3, "no runtime call held more than fits");
}
