//! `/metrics`, `/v1/stats`, the dashboard page and kept bench results, on a
//! real jobs server with a real ONNX model: a job runs through the tiny MLP
//! (some items slow, some failing in pre-processing, some failing in
//! inference), the test scrapes `/metrics` while it runs and after it ends,
//! and checks that the counters and histograms add up to what the job did.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use common::{count, is_terminal, slow_input, tiny_mlp_spec, Server, DEADLINE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sluice_core::Backend;
use sluice_engine::fault::{FaultyBackend, FAIL_CUE};
use sluice_engine::Model;
use sluice_server::metrics::names;

/// One sample of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (enough of it for what the server writes),
/// checking that every sample's family was announced with `# TYPE` first.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().expect("TYPE name");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (head.to_string(), BTreeMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.iter().any(|t| t == f)))
            .unwrap_or(&name);
        assert!(
            typed.last().is_some_and(|t| t == family),
            "{name} is not in the family announced last ({:?})",
            typed.last()
        );
        out.push(Sample { name, labels, value });
    }
    out
}

/// The value of the one sample named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {want:?}: {found:?}");
    found[0].value
}

/// Checks one histogram of `model`: cumulative buckets never decrease, the
/// `+Inf` bucket equals `_count`; returns `(count, sum)`.
fn histogram(samples: &[Sample], name: &str, model: &str) -> (f64, f64) {
    let bucket = format!("{name}_bucket");
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == bucket && s.labels.get("model").map(String::as_str) == Some(model))
        .collect();
    assert!(buckets.len() >= 2, "{name}: too few buckets");
    for w in buckets.windows(2) {
        assert!(w[0].value <= w[1].value, "{name}: buckets decrease: {w:?}");
        let le = |s: &Sample| s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
        assert!(le(w[0]) < le(w[1]), "{name}: bounds out of order: {w:?}");
    }
    let last = buckets[buckets.len() - 1];
    assert_eq!(last.labels["le"], "+Inf");
    let count = value(samples, &format!("{name}_count"), &[("model", model)]);
    let sum = value(samples, &format!("{name}_sum"), &[("model", model)]);
    assert_eq!(last.value, count, "{name}: +Inf bucket != count");
    (count, sum)
}

async fn scrape(server: &Server) -> Vec<Sample> {
    let resp = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "content type {ctype}");
    parse(&resp.text().await.expect("metrics body"))
}

/// The tiny MLP behind a fault injector, served from a copy of its folder
/// (so the test can keep bench results beside it).
async fn model_in(dir: &std::path::Path, name: &str) -> Model {
    std::fs::copy(common::fixtures().join("tiny_mlp.onnx"), dir.join("tiny_mlp.onnx")).expect("copy model");
    let mut spec = tiny_mlp_spec(name, 4);
    spec.dir = dir.to_path_buf();
    common::require_onnxruntime();
    tokio::task::spawn_blocking(move || {
        let inner = sluice_engine::load_backend(&spec).expect("load the tiny MLP");
        let backend: Arc<dyn Backend> = Arc::new(FaultyBackend::new(inner, std::time::Duration::from_millis(100)));
        Model::start(spec, backend).expect("start the model")
    })
    .await
    .expect("start task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_to_what_a_job_did() {
    let dir = tempfile::tempdir().expect("model dir");
    let model = "mlp-metrics";
    let server = Server::start(vec![model_in(dir.path(), model).await]).await;

    // 60 inputs: every 5th sleeps 100 ms in the runtime (so the job lasts about
    // a second), 3 have the wrong shape (fail in pre-processing), 2 poison their
    // batch (fail in inference, after bisection).
    let mut inputs = serde_json::Map::new();
    for i in 0..60usize {
        let v = match i {
            7 | 23 | 41 => json!([1.0, 2.0]),
            13 | 37 => json!([FAIL_CUE, 0.0, 0.0, 0.0]),
            _ if i % 5 == 0 => slow_input(i),
            _ => json!([i as f64, 0.5, -1.0, 2.0]),
        };
        inputs.insert(format!("k{i:02}"), v);
    }
    let job = server.create(json!({"model": model, "inputs": inputs})).await;
    let id = job["id"].as_str().expect("id").to_string();

    // While it runs: every histogram is consistent and the job is listed.
    let start = Instant::now();
    let mut seen_running = false;
    loop {
        let samples = scrape(&server).await;
        let view = server.job(&id).await;
        if is_terminal(&view) {
            break;
        }
        for h in [
            names::BATCH_SIZE,
            names::BATCH_FILL,
            names::QUEUE_WAIT,
            names::BATCH_DURATION,
        ] {
            histogram(&samples, h, model);
        }
        let job_items = |state: &str| value(&samples, names::JOB_ITEMS, &[("job", &id), ("state", state)]);
        assert_eq!(job_items("total"), 60.0);
        let done = value(&samples, names::ITEMS, &[("model", model), ("outcome", "ok")])
            + value(&samples, names::ITEMS, &[("model", model), ("outcome", "failed")]);
        assert!(done <= 60.0, "{done} items finished of 60");
        assert!(job_items("completed") + job_items("failed") + job_items("pending") <= 60.0);
        if job_items("pending") > 0.0 && job_items("completed") > 0.0 {
            seen_running = true;
        }
        assert!(start.elapsed() < DEADLINE, "the job did not end: {view}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen_running, "never scraped the job while it ran");

    let view = server.job(&id).await;
    assert_eq!(view["status"], "COMPLETED", "{view}");
    assert_eq!(count(&view, "completed"), 55, "{view}");
    assert_eq!(count(&view, "failed"), 5, "{view}");

    let samples = scrape(&server).await;
    let ok = value(&samples, names::ITEMS, &[("model", model), ("outcome", "ok")]);
    let failed = value(&samples, names::ITEMS, &[("model", model), ("outcome", "failed")]);
    assert_eq!(ok, count(&view, "completed") as f64);
    assert_eq!(failed, count(&view, "failed") as f64);
    // Canceled items have their own outcome (issue 10, finding 11); none here.
    assert_eq!(
        value(&samples, names::ITEMS, &[("model", model), ("outcome", "canceled")]),
        0.0
    );

    let batches = value(&samples, names::BATCHES, &[("model", model)]);
    let (size_count, size_sum) = histogram(&samples, names::BATCH_SIZE, model);
    assert_eq!(size_count, batches, "batch-size histogram count != batches");
    // Every item that passed pre-processing was in exactly one batch.
    assert_eq!(size_sum, 57.0, "items in batches");
    assert!(batches >= 57.0 / 4.0, "{batches} batches for 57 items with max 4");
    let (fill_count, fill_sum) = histogram(&samples, names::BATCH_FILL, model);
    assert_eq!(fill_count, batches);
    assert!((fill_sum - size_sum / 4.0).abs() < 1e-9, "fill sum {fill_sum}");
    let (wait_count, wait_sum) = histogram(&samples, names::QUEUE_WAIT, model);
    assert_eq!(wait_count, 57.0, "one queue wait per batched item");
    assert!(wait_sum > 0.0);
    let (run_count, run_sum) = histogram(&samples, names::BATCH_DURATION, model);
    assert_eq!(run_count, batches, "one duration per executed batch");
    // 11 slow items (every 5th, minus none of the bad ones) slept 100 ms each.
    assert!(run_sum >= 1.1, "batch time {run_sum}s");
    assert!(value(&samples, names::BISECTIONS, &[("model", model)]) >= 2.0);
    assert_eq!(value(&samples, names::MAX_BATCH_SIZE, &[("model", model)]), 4.0);
    assert_eq!(value(&samples, names::BUSY_INSTANCES, &[("model", model)]), 0.0);
    for stage in ["preprocess", "model", "batcher"] {
        assert_eq!(
            value(&samples, names::QUEUE_DEPTH, &[("model", model), ("stage", stage)]),
            0.0
        );
    }
    assert_eq!(value(&samples, names::JOBS_ACTIVE, &[]), 0.0);
    assert!(
        !samples.iter().any(|s| s.name == names::JOB_ITEMS),
        "a finished job is still listed"
    );
    assert!(value(&samples, names::RSS, &[]) > 1e6);

    // The dashboard's summary agrees.
    let (status, stats) = server.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    let m = &stats["models"][0];
    assert_eq!(m["name"], model);
    assert_eq!(m["items_ok"], 55);
    assert_eq!(m["items_failed"], 5);
    assert_eq!(m["batches"].as_f64(), Some(batches));
    let per_size: u64 = m["batch_sizes"]
        .as_array()
        .expect("batch_sizes")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(per_size as f64, batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_kept_bench_results_are_served() {
    let dir = tempfile::tempdir().expect("model dir");
    let bench = json!({"model": "mlp-bench", "rows": [
        {"batch_size": 1, "items_per_s": 100.0, "speedup": 1.0},
        {"batch_size": 4, "items_per_s": 250.0, "speedup": 2.5}
    ]});
    std::fs::write(
        dir.path().join(sluice_server::api::models::BENCH_FILE),
        bench.to_string(),
    )
    .expect("write bench");
    let server = Server::start(vec![model_in(dir.path(), "mlp-bench").await]).await;

    let (status, view) = server.get("/v1/models/mlp-bench").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["bench"], bench);
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(stats["models"][0]["bench"], bench);

    let resp = server.http.get(server.url("/")).send().await.expect("GET /");
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.expect("page");
    assert!(page.contains("<title>Sluice</title>"));
    assert!(page.contains("/v1/stats"));
    assert!(!page.contains("http://") || page.contains("http://www.w3.org/2000/svg"));
    assert!(
        !page.contains("https://"),
        "the page must not load anything from the network"
    );
}
