//! Real-time inference over HTTP on loopback: the KServe v2 REST routes and
//! `/v1/models/{m}/infer`, with the tiny MLP (real ONNX Runtime). Covers
//! multi-row requests reassembled in order, the protocol's error bodies,
//! deadlines (504), overload (429 with Retry-After, bounded queue, server
//! still answering afterwards) and a client that disconnects (its item does
//! not run). The slow variant of the model sleeps 100 ms per cued batch, which
//! lets a test hold the single instance busy.

mod common;

use std::time::Duration;

use common::{slow_input, slow_mlp, tiny_mlp, tiny_mlp_spec, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A v2 JSON request for the tiny MLP with `rows` of 4 values.
fn v2_body(rows: &[[f64; 4]]) -> Value {
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    json!({
        "id": "r1",
        "inputs": [{"name": "x", "shape": [rows.len(), 4], "datatype": "FP32", "data": data}]
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn v2_error(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no v2 error string in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_rows_are_split_and_reassembled_in_order() {
    let server = Server::start(vec![tiny_mlp("mlp").await]).await;
    let rows = [[0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 1.0, 2.0], [5.0, -5.0, 0.5, 0.0]];
    let (status, batch) = server.post("/v2/models/mlp/infer", &v2_body(&rows)).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["model_name"], "mlp");
    assert_eq!(batch["id"], "r1");
    let out = &batch["outputs"][0];
    assert_eq!(out["name"], "y");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([3, 3]));
    let all = floats(&out["data"]);
    for (i, row) in rows.iter().enumerate() {
        let (status, one) = server.post("/v2/models/mlp/versions/1/infer", &v2_body(&[*row])).await;
        assert_eq!(status, StatusCode::OK, "{one}");
        let single = floats(&one["outputs"][0]["data"]);
        for (a, b) in all[i * 3..i * 3 + 3].iter().zip(&single) {
            assert!((a - b).abs() < 1e-5, "row {i}: batched {a} vs single {b}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_metadata_health_and_errors() {
    let server = Server::start(vec![tiny_mlp("mlp").await]).await;
    let (status, meta) = server.get("/v2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["name"], "sluice");
    assert!(meta["extensions"]
        .as_array()
        .is_some_and(|e| e.contains(&json!("binary_tensor_data"))));
    assert_eq!(server.get("/v2/health/live").await.0, StatusCode::OK);
    assert_eq!(server.get("/v2/health/ready").await.0, StatusCode::OK);
    assert_eq!(server.get("/v2/models/mlp/ready").await.0, StatusCode::OK);
    let (status, m) = server.get("/v2/models/mlp").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        m["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(m["platform"], "onnxruntime_onnx");

    let (status, body) = server.get("/v2/models/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v2_error(&body).contains("unknown model 'nope'"));
    let (status, body) = server.get("/v2/models/mlp/versions/7").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v2_error(&body).contains("no version '7'"));

    let wrong_type = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]});
    let (status, body) = server.post("/v2/models/mlp/infer", &wrong_type).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v2_error(&body).contains("must be FP32"), "{body}");
    let wrong_shape = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (status, body) = server.post("/v2/models/mlp/infer", &wrong_shape).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v2_error(&body).contains("row 0"), "{body}");
    let short = json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (status, body) = server.post("/v2/models/mlp/infer", &short).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v2_error(&body).contains("input 'x'"), "{body}");
    let (status, body) = server
        .post_raw("/v2/models/mlp/infer", "application/json", b"{".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v2_error(&body).contains("invalid inference request JSON"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_binary_tensor_data_in_and_out() {
    let server = Server::start(vec![tiny_mlp("mlp").await]).await;
    let head = json!({
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    for v in [0.1f32, 0.2, 0.3, 0.4, -1.0, 0.0, 1.0, 2.0] {
        body.extend(v.to_le_bytes());
    }
    let resp = server
        .http
        .post(server.url("/v2/models/mlp/infer"))
        .header("inference-header-content-length", head.len())
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    let header_len: usize = resp.headers()["inference-header-content-length"]
        .to_str()
        .expect("header")
        .parse()
        .expect("number");
    let bytes = resp.bytes().await.expect("body");
    let json_part: Value = serde_json::from_slice(&bytes[..header_len]).expect("JSON header");
    assert_eq!(json_part["outputs"][0]["parameters"]["binary_data_size"], 24);
    let raw = &bytes[header_len..];
    assert_eq!(raw.len(), 24);
    let (_, reference) = server
        .post(
            "/v2/models/mlp/infer",
            &v2_body(&[[0.1, 0.2, 0.3, 0.4], [-1.0, 0.0, 1.0, 2.0]]),
        )
        .await;
    let want = floats(&reference["outputs"][0]["data"]);
    for (i, c) in raw.chunks_exact(4).enumerate() {
        let got = f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        assert!((got - want[i]).abs() < 1e-6, "element {i}: {got} vs {}", want[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_infer_returns_one_result_per_input() {
    let server = Server::start(vec![tiny_mlp("mlp").await]).await;
    let (status, body) = server
        .post(
            "/v1/models/mlp/infer",
            &json!({"inputs": [[1, 2, 3, 4], [1, 2, 3], [0, 0, 0, 0]]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert!(results[0]["output"].is_object(), "{body}");
    assert_eq!(results[1]["error"]["code"], "invalid_input", "{body}");
    assert!(results[2]["output"].is_object(), "{body}");
    common::assert_error(
        "all inputs invalid",
        server.post("/v1/models/mlp/infer", &json!({"inputs": [[1, 2]]})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "expects shape",
    );
    common::assert_error(
        "unknown model",
        server
            .post("/v1/models/nope/infer", &json!({"inputs": [[1, 2, 3, 4]]}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
}

/// Holds the slow model's only instance for about 100 ms per cued item.
fn slow_request(n: usize) -> Value {
    let rows: Vec<Value> = (0..n).map(slow_input).collect();
    json!({"inputs": rows})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_passed_before_running_is_504_and_the_item_does_not_run() {
    let model = slow_mlp("slow", 1).await;
    let server = Server::start(vec![model.clone()]).await;
    let busy = {
        let (http, url) = (server.http.clone(), server.url("/v1/models/slow/infer"));
        tokio::spawn(async move { http.post(url).json(&slow_request(3)).send().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let body = json!({
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [7, 7, 7, 7]}],
        "parameters": {"timeout": 30_000}
    });
    let (status, resp) = server.post("/v2/models/slow/infer", &body).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{resp}");
    assert!(v2_error(&resp).contains("deadline exceeded"), "{resp}");
    // The header form, on the v1 route.
    let resp = server
        .http
        .post(server.url("/v1/models/slow/infer"))
        .header("x-sluice-timeout-ms", "20")
        .json(&json!({"inputs": [[7, 7, 7, 7]]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        busy.await.expect("task").expect("busy request").status(),
        StatusCode::OK
    );
    let stats = model.stats();
    assert_eq!(stats.expired, 2);
    assert_eq!(stats.items_ok, 3, "only the three slow items ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_get_its_item_run() {
    let model = slow_mlp("slow", 1).await;
    let server = Server::start(vec![model.clone()]).await;
    let busy = {
        let (http, url) = (server.http.clone(), server.url("/v1/models/slow/infer"));
        tokio::spawn(async move { http.post(url).json(&slow_request(3)).send().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // This client gives up after 50 ms and closes its connection.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .expect("client");
    let gave_up = impatient
        .post(server.url("/v2/models/slow/infer"))
        .json(&v2_body(&[[9.0, 9.0, 9.0, 9.0]]))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    assert_eq!(
        busy.await.expect("task").expect("busy request").status(),
        StatusCode::OK
    );
    // A later request is served; the abandoned one never ran.
    let (status, _) = server
        .post("/v2/models/slow/infer", &v2_body(&[[1.0, 1.0, 1.0, 1.0]]))
        .await;
    assert_eq!(status, StatusCode::OK);
    let stats = model.stats();
    assert_eq!(stats.abandoned, 1, "{stats:?}");
    assert_eq!(
        stats.items_ok, 4,
        "3 slow items and the last request ran, not the abandoned one"
    );
    assert_eq!(model.realtime_waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_429_with_retry_after_and_the_server_stays_up() {
    let mut spec = tiny_mlp_spec("slow", 1);
    spec.realtime_queue_capacity = 4;
    let model = common::slow_mlp_from(spec).await;
    let server = Server::start(vec![model.clone()]).await;
    // 20 concurrent slow single-row requests against a queue of 4.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (http, url) = (server.http.clone(), server.url("/v2/models/slow/infer"));
        let body = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
            "data": slow_input(i)}]});
        tasks.push(tokio::spawn(async move { http.post(url).json(&body).send().await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let resp = t.await.expect("task").expect("response");
        match resp.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(resp.headers()["retry-after"], "1");
                let body: Value = resp.json().await.expect("JSON");
                assert!(v2_error(&body).contains("overloaded"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(model.realtime_waiting() <= 4, "the real-time queue is bounded");
    }
    assert!(refused > 0, "no request was refused");
    assert!(ok >= 4, "at least a queue's worth was served, got {ok}");
    assert_eq!(ok + refused, 20);
    let stats = model.stats();
    assert_eq!(stats.realtime_rejected, refused);
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let line = format!("sluice_model_realtime_dropped_total{{model=\"slow\",reason=\"overloaded\"}} {refused}");
    assert!(metrics.contains(&line), "no {line:?} in /metrics");
    // A multi-row request larger than the queue can ever hold is refused
    // whole, at once, and not as a retryable 429: 413.
    let rows: Vec<f64> = (0..5).flat_map(|_| [1.0, 2.0, 3.0, 4.0]).collect();
    let big = json!({"inputs": [{"name": "x", "shape": [5, 4], "datatype": "FP32", "data": rows}]});
    let (status, body) = server.post("/v2/models/slow/infer", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(v2_error(&body).contains("at most 4 rows"), "{body}");
    // Once drained, the server answers normally.
    let (status, body) = server
        .post("/v2/models/slow/infer", &v2_body(&[[1.0, 2.0, 3.0, 4.0]]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.get("/v2/health/live").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_in_real_time_get_labelled_detections() {
    let server = Server::start(vec![common::repo_model("nanodet-m").await]).await;
    let dog = std::fs::read(common::image("dog.jpg")).expect("image");
    // Multipart on the simple route, a broken file beside the good one.
    let (ctype, body) = common::multipart(&[("dog.jpg", dog.clone()), ("broken.jpg", b"not a JPEG".to_vec())]);
    let (status, resp) = server.post_raw("/v1/models/nanodet-m/infer", &ctype, body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let labels: Vec<&str> = resp["results"][0]["output"]["detections"]
        .as_array()
        .unwrap_or_else(|| panic!("no detections in {resp}"))
        .iter()
        .filter_map(|d| d["label"].as_str())
        .collect();
    assert!(labels.contains(&"dog") && labels.contains(&"bicycle"), "{labels:?}");
    assert_eq!(resp["results"][1]["error"]["code"], "invalid_input", "{resp}");

    // The same image as a v2 BYTES row: one JSON document per row.
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&dog)
    };
    let (status, resp) = server
        .post("/v1/models/nanodet-m/infer", &json!({"inputs": [{"base64": b64}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let head = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
        "parameters": {"binary_data_size": dog.len() + 4}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend(u32::try_from(dog.len()).expect("size").to_le_bytes());
    body.extend(&dog);
    let resp = server
        .http
        .post(server.url("/v2/models/nanodet-m/infer"))
        .header("inference-header-content-length", head.len())
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(v["outputs"][0]["name"], "detections", "{v}");
    let doc: Value = serde_json::from_str(v["outputs"][0]["data"][0].as_str().expect("string")).expect("JSON row");
    assert!(
        doc.as_array().is_some_and(|d| d.iter().any(|x| x["label"] == "dog")),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_in_real_time_get_unit_embeddings() {
    let server = Server::start(vec![common::repo_model("minilm-l6").await]).await;
    let (status, resp) = server
        .post("/v1/models/minilm-l6/infer", &json!({"inputs": ["a short text", ""]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let e = floats(&resp["results"][0]["output"]["embedding"]);
    assert_eq!(e.len(), 384);
    assert!((e.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-3);
    assert_eq!(resp["results"][1]["error"]["code"], "invalid_input", "{resp}");
    let body = json!({"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["one"], ["two"]]}]});
    let (status, resp) = server.post("/v2/models/minilm-l6/infer", &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["outputs"][0]["shape"], json!([2, 384]), "{resp}");
}

/// Issue 10, finding 11: under heavy real-time overload, bulk got 3.3% of the model's items where
/// `bulk_min_share` promises 12.5% while bulk waits. Here real-time clients flood `models/mlp`
/// (real ONNX Runtime) while a job of 1500 inputs from the store waits on the same model; the
/// engine counts the items each lane put into batches, and over a stretch of saturated traffic
/// (the job still pending throughout) bulk's share of the executed items must be close to the
/// promise. Not a timing assertion: items are counted per lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_keeps_its_share_under_saturated_realtime_load() {
    let model = common::repo_model("mlp").await;
    let share = model.spec().bulk_min_share;
    let max = model.spec().max_batch_size;
    let server = Server::start(vec![model.clone()]).await;
    let row: Vec<f64> = (0..512).map(|i| f64::from(i % 7) * 0.25).collect();
    let inputs: serde_json::Map<String, Value> = (0..1500).map(|i| (format!("k{i:04}"), json!(row))).collect();

    // The flood goes straight into the engine's real-time path (the one the v2 routes call), with
    // 24 clients of 8 rows each: HTTP clients in this test process could not saturate the model.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..24 {
        let (model, stop, row) = (model.clone(), stop.clone(), row.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = vec![sluice_core::Input::Json(json!(row)); 8];
                match model
                    .infer_realtime(rows, sluice_engine::RealtimeOptions::default())
                    .await
                {
                    Ok(done) => assert!(done.iter().all(|c| c.result.is_ok())),
                    // Overloaded (429): try again at once.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }));
    }
    // Let the flood build up, then submit the job and wait until it runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = server.create(json!({"model": "mlp", "inputs": inputs})).await;
    let id = job["id"].as_str().expect("id").to_string();
    server
        .wait_for(&id, "running", |j| common::count(j, "completed") > 0)
        .await;

    // A stretch of saturated traffic while the job still waits: a fixed number of executed items
    // (about a fifth of the job's size in bulk items at the promised share), not a fixed time, so
    // that a faster machine does not finish the job inside the stretch.
    let before = model.stats();
    let stretch = 2000;
    let started = std::time::Instant::now();
    let after = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = model.stats();
        if now.batched_items - before.batched_items >= stretch {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the model executed only {} items in 120 s",
            now.batched_items - before.batched_items
        );
    };
    let pending = common::count(&server.job(&id).await, "pending");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let items = after.batched_items - before.batched_items;
    let realtime = after.batched_realtime - before.batched_realtime;
    let bulk = items - realtime;
    let batches = after.batches - before.batches;
    assert!(pending > 0, "the job ended during the measurement; make it larger");
    assert!(
        realtime as f64 >= 0.5 * items as f64 && items as f64 >= 0.9 * (batches * max as u64) as f64,
        "real-time traffic did not saturate the model: {realtime} real-time of {items} items in {batches} batches"
    );
    let got = bulk as f64 / items as f64;
    eprintln!("bulk share {got:.3} ({bulk} of {items} items in {batches} batches; bulk_min_share {share})");
    assert!(
        got >= 0.8 * share,
        "bulk got {got:.3} of the items ({bulk} of {items}) while it waited; bulk_min_share promises {share}"
    );
    let done = server.wait_end(&id).await;
    assert_eq!(common::count(&done, "completed"), 1500, "{done}");
}
