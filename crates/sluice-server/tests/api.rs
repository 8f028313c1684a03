//! The jobs API end to end over HTTP on loopback: a real server (axum on
//! `127.0.0.1:0`), a real SQLite store in a temporary folder and real models
//! (MiniLM, NanoDet, the tiny MLP fixture, and a slow variant of it built
//! with the engine's fault injection). Nothing here depends on timing except
//! through polling with a deadline; orderings (a small job finishing while a
//! large one still waits) are asserted, durations are not.

mod common;

use std::collections::HashSet;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sluice_server::Limits;

/// `output.embedding` of a result line.
fn embedding(line: &Value) -> Vec<f64> {
    line["output"]["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {line}"))
        .iter()
        .map(|x| x.as_f64().expect("embedding value"))
        .collect()
}

/// The fixture's reference inputs and outputs of the tiny MLP.
fn mlp_expected() -> (Vec<Value>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(fixtures().join("tiny_mlp_expected.json")).expect("tiny_mlp_expected.json");
    let v: Value = serde_json::from_str(&text).expect("expected JSON");
    let inputs = v["inputs"].as_array().expect("inputs").clone();
    let outputs = v["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            o.as_array()
                .expect("output row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect();
    (inputs, outputs)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_text_job_on_minilm() {
    let server = Server::start(vec![repo_model("minilm-l6").await]).await;
    let resp = server
        .http
        .post(server.url("/v1/jobs"))
        .json(&json!({
            "model": "minilm-l6",
            "tags": ["demo"],
            "inputs": {
                "a": "the first text",
                "b": {"text": "the second text, a little longer than the first"},
                "c": "A poet who reads his verse in public may have other nasty habits.",
                "empty": ""
            }
        }))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location header")
        .to_string();
    let job: Value = resp.json().await.expect("job JSON");
    let id = job["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["model"], "minilm-l6");
    assert_eq!(job["tags"], json!(["demo"]));
    assert_eq!(count(&job, "total"), 4);

    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 3, "{job}");
    assert_eq!(count(&job, "failed"), 1, "{job}");
    assert_eq!(count(&job, "pending"), 0, "{job}");
    assert_counts_add_up(&job);
    assert!(job["finished_at"].is_i64(), "{job}");

    let lines = server.results(&id, "").await;
    assert_eq!(lines.len(), 4);
    let keys = unique_keys(&lines);
    assert_eq!(keys, ["a", "b", "c", "empty"].iter().map(|s| s.to_string()).collect());
    let mut cursors = Vec::new();
    for l in &lines {
        cursors.push(l["cursor"].as_i64().unwrap_or_else(|| panic!("no cursor in {l}")));
        if l["key"] == "empty" {
            continue;
        }
        assert_eq!(l["state"], "done", "{l}");
        let e = embedding(l);
        assert_eq!(e.len(), 384, "{l}");
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "embedding of {} has norm {norm}", l["key"]);
    }
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursors not increasing: {cursors:?}"
    );
    let empty = line(&lines, "empty");
    assert_eq!(empty["state"], "failed");
    assert_eq!(empty["error"]["code"], "invalid_input", "{empty}");
    assert!(empty.get("output").is_none(), "{empty}");

    // One input by key.
    let (status, a) = server.get(&format!("/v1/jobs/{id}/results/a")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a["key"], "a");
    assert_eq!(a["state"], "done");
    assert_eq!(embedding(&a), embedding(line(&lines, "a")));
    let (status, e) = server.get(&format!("/v1/jobs/{id}/results/empty")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["state"], "failed");
    assert_eq!(e["error"]["code"], "invalid_input");
    assert_error(
        "unknown key",
        server.get(&format!("/v1/jobs/{id}/results/nope")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_tensor_job_on_tiny_mlp() {
    let server = Server::start(vec![tiny_mlp("tiny-mlp").await]).await;
    let (inputs, outputs) = mlp_expected();
    // The three forms of a tensor input: a bare array, {"tensor": ..}, and named tensors.
    let job = server
        .create(json!({
            "model": "tiny-mlp",
            "inputs": {
                "bare": inputs[0],
                "wrapped": {"tensor": inputs[1]},
                "named": {"x": inputs[2]},
                "wrong-shape": [1.0, 2.0, 3.0]
            }
        }))
        .await;
    let id = job["id"].as_str().expect("id");
    let job = server.wait_end(id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 3, "{job}");
    assert_eq!(count(&job, "failed"), 1, "{job}");
    assert_counts_add_up(&job);

    let lines = server.results(id, "").await;
    assert_eq!(unique_keys(&lines).len(), 4);
    for (key, want) in ["bare", "wrapped", "named"].iter().zip(&outputs) {
        let l = line(&lines, key);
        assert_eq!(l["state"], "done", "{l}");
        assert_close(&mlp_output(l), want, 1e-5, key);
    }
    let bad = line(&lines, "wrong-shape");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_input", "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_job_with_jsonl_uploads() {
    let server = Server::start(vec![tiny_mlp("tiny-mlp").await]).await;
    let (inputs, outputs) = mlp_expected();
    let job = server.create(json!({"model": "tiny-mlp", "open": true})).await;
    let id = job["id"].as_str().expect("id").to_string();
    assert_eq!(job["open"], true);
    assert_eq!(job["status"], "SUBMITTED");
    let inputs_path = format!("/v1/jobs/{id}/inputs");

    let first = format!(
        "{}\n{}\n\n{}\n",
        json!({"key": "a", "tensor": inputs[0]}),
        json!({"key": "b", "value": inputs[1]}),
        json!({"id": 7, "tensor": inputs[2]})
    );
    let (status, added) = server
        .post_raw(&inputs_path, "application/x-ndjson", first.into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added, json!({"added": 3, "total": 3}));

    // A duplicate key or a malformed line rejects the whole upload.
    let dup = format!("{}\n", json!({"key": "a", "tensor": inputs[0]}));
    assert_error(
        "duplicate key",
        server
            .post_raw(&inputs_path, "application/x-ndjson", dup.into_bytes())
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "'a'",
    );
    let malformed = format!(
        "{}\n{{\"key\": \"z\", \"tensor\": [1, 2\n",
        json!({"key": "y", "tensor": inputs[0]})
    );
    assert_error(
        "malformed line",
        server
            .post_raw(&inputs_path, "application/x-ndjson", malformed.into_bytes())
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "line",
    );

    let second = format!(
        "{}\n{}\n",
        json!({"key": "d", "tensor": inputs[1]}),
        json!({"key": "e", "tensor": inputs[2]})
    );
    let (status, added) = server
        .post_raw(&inputs_path, "application/x-ndjson", second.into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added, json!({"added": 2, "total": 5}));
    let job = server.job(&id).await;
    assert_eq!(count(&job, "total"), 5);
    assert_eq!(job["open"], true);

    let (status, closed) = server.post(&format!("/v1/jobs/{id}/close"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["open"], false, "{closed}");
    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 5, "{job}");
    assert_counts_add_up(&job);

    let lines = server.results(&id, "").await;
    let keys = unique_keys(&lines);
    assert_eq!(keys, ["a", "b", "7", "d", "e"].iter().map(|s| s.to_string()).collect());
    assert_close(&mlp_output(line(&lines, "7")), &outputs[2], 1e-5, "7");
    assert_close(&mlp_output(line(&lines, "d")), &outputs[1], 1e-5, "d");

    // Closed: no more inputs; closing again changes nothing.
    let late = format!("{}\n", json!({"key": "late", "tensor": inputs[0]}));
    assert_error(
        "upload after close",
        server
            .post_raw(&inputs_path, "application/x-ndjson", late.into_bytes())
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "does not take inputs",
    );
    let (status, again) = server.post(&format!("/v1/jobs/{id}/close"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["status"], "COMPLETED");
    assert_eq!(count(&again, "total"), 5);

    // An inline job is not open either.
    let inline = server
        .create(json!({"model": "tiny-mlp", "inputs": {"a": inputs[0]}}))
        .await;
    assert_error(
        "upload to an inline job",
        server
            .post_raw(
                &format!("/v1/jobs/{}/inputs", inline["id"].as_str().expect("id")),
                "application/x-ndjson",
                b"{\"key\": \"b\", \"tensor\": [0, 0, 0, 0]}\n".to_vec(),
            )
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_images_to_nanodet() {
    let server = Server::start(vec![repo_model("nanodet-m").await]).await;
    let job = server.create(json!({"model": "nanodet-m", "open": true})).await;
    let id = job["id"].as_str().expect("id").to_string();
    let mut files: Vec<(&str, Vec<u8>)> = ["dog.jpg", "kite.jpg", "person.jpg"]
        .iter()
        .map(|n| (*n, std::fs::read(image(n)).expect("image")))
        .collect();
    files.push(("corrupt.jpg", b"\xff\xd8\xff\xe0 this is not really a JPEG".to_vec()));
    let (ctype, body) = multipart(&files);
    let (status, added) = server.post_raw(&format!("/v1/jobs/{id}/inputs"), &ctype, body).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added, json!({"added": 4, "total": 4}));
    let (status, _) = server.post(&format!("/v1/jobs/{id}/close"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);

    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 3, "{job}");
    assert_eq!(count(&job, "failed"), 1, "{job}");
    assert_counts_add_up(&job);

    let lines = server.results(&id, "").await;
    assert_eq!(unique_keys(&lines).len(), 4);
    let corrupt = line(&lines, "corrupt.jpg");
    assert_eq!(corrupt["state"], "failed", "{corrupt}");
    assert_eq!(corrupt["error"]["code"], "invalid_input", "{corrupt}");
    for name in ["dog.jpg", "kite.jpg", "person.jpg"] {
        let l = line(&lines, name);
        assert_eq!(l["state"], "done", "{l}");
        assert!(l["output"]["detections"].is_array(), "{l}");
    }
    let dog = line(&lines, "dog.jpg");
    let labels: Vec<&str> = dog["output"]["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .filter_map(|d| d["label"].as_str())
        .collect();
    assert!(labels.contains(&"dog"), "no dog in dog.jpg: {labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_jobs_read_files_and_folders_under_the_roots() {
    let root = tempfile::tempdir().expect("source root");
    let (inputs, outputs) = mlp_expected();
    // A JSONL file with a malformed third line and a blank line.
    let jsonl = root.path().join("inputs.jsonl");
    let text = format!(
        "{}\n{}\n{{\"id\": \"broken\", \"tensor\": [1, 2\n\n{}\n{}\n",
        json!({"id": "a", "tensor": inputs[0]}),
        json!({"id": "b", "tensor": inputs[1]}),
        json!({"key": "c", "tensor": inputs[2]}),
        json!({"id": 4, "value": inputs[0]})
    );
    std::fs::write(&jsonl, text).expect("write JSONL");
    // A folder of images.
    let frames = root.path().join("frames");
    std::fs::create_dir(&frames).expect("frames folder");
    for name in ["dog.jpg", "kite.jpg"] {
        std::fs::copy(image(name), frames.join(name)).expect("copy image");
    }

    let server = Server::with(
        vec![tiny_mlp("tiny-mlp").await, repo_model("nanodet-m").await],
        Config {
            source_roots: vec![root.path().to_path_buf()],
            ..Config::default()
        },
    )
    .await;

    let job = server
        .create(json!({"model": "tiny-mlp", "source": jsonl.display().to_string()}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "total"), 5, "{job}");
    assert_eq!(count(&job, "completed"), 4, "{job}");
    assert_eq!(count(&job, "failed"), 1, "{job}");
    assert_counts_add_up(&job);
    let lines = server.results(&id, "").await;
    let keys = unique_keys(&lines);
    assert_eq!(keys, ["a", "b", "3", "c", "4"].iter().map(|s| s.to_string()).collect());
    let broken = line(&lines, "3");
    assert_eq!(broken["state"], "failed", "{broken}");
    assert_eq!(broken["error"]["code"], "invalid_input", "{broken}");
    let msg = broken["error"]["message"].as_str().expect("message");
    assert!(msg.contains("line 3"), "message does not name the line: {msg}");
    assert_close(&mlp_output(line(&lines, "c")), &outputs[2], 1e-5, "c");
    assert_close(&mlp_output(line(&lines, "4")), &outputs[0], 1e-5, "4");

    let job = server
        .create(json!({"model": "nanodet-m", "source": frames.display().to_string()}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 2, "{job}");
    let lines = server.results(&id, "").await;
    assert_eq!(
        unique_keys(&lines),
        ["dog.jpg", "kite.jpg"].iter().map(|s| s.to_string()).collect()
    );
    assert!(lines.iter().all(|l| l["state"] == "done"), "{lines:?}");

    // Outside the roots, escaping them, or missing: 403, and no job is created.
    let outside = repo_root().join("data/texts/sample.jsonl");
    let escaping = format!("{}/../../../../../../etc/hostname", root.path().display());
    let missing = root.path().join("missing.jsonl");
    for path in [outside.display().to_string(), escaping, missing.display().to_string()] {
        assert_error(
            &format!("source {path}"),
            server
                .post("/v1/jobs", &json!({"model": "tiny-mlp", "source": path}))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
            "not under an allowed root",
        );
    }
    let (status, list) = server.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(2), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_pending_items() {
    let server = Server::start(vec![slow_mlp("slow", 4).await]).await;
    let job = server
        .create(json!({"model": "slow", "inputs": slow_inputs(200)}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    server
        .wait_for(&id, "completed an item", |j| count(j, "completed") >= 1)
        .await;

    let (status, canceled) = server.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "CANCELED", "{canceled}");
    assert!(canceled["finished_at"].is_i64(), "{canceled}");

    let job = server.job(&id).await;
    assert_eq!(job["status"], "CANCELED", "{job}");
    let completed = count(&job, "completed");
    assert!((1..200).contains(&completed), "{job}");
    assert_eq!(count(&job, "pending"), 0, "{job}");
    assert_eq!(count(&job, "failed"), 0, "{job}");
    assert_eq!(completed + count(&job, "canceled"), 200, "{job}");
    assert_counts_add_up(&job);
    assert!(job["eta_s"].is_null(), "{job}");

    let lines = server.results(&id, "").await;
    assert_eq!(lines.len(), 200);
    let keys = unique_keys(&lines);
    assert_eq!(keys, slow_inputs(200).keys().cloned().collect::<HashSet<_>>());
    let mut done = 0;
    for l in &lines {
        match l["state"].as_str() {
            Some("done") => done += 1,
            Some("canceled") => assert_eq!(l["error"]["code"], "canceled", "{l}"),
            _ => panic!("unexpected result line {l}"),
        }
    }
    assert_eq!(done, completed);

    // Canceling again changes nothing.
    let (status, again) = server.delete(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["status"], "CANCELED");
    assert_eq!(count(&again, "completed"), completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_marks_unfinished_items() {
    let server = Server::start(vec![slow_mlp("slow", 4).await]).await;
    let job = server
        .create(json!({"model": "slow", "timeout_ms": 300, "inputs": slow_inputs(100)}))
        .await;
    assert_eq!(job["timeout_ms"], 300);
    let id = job["id"].as_str().expect("id").to_string();
    let job = server.wait_end(&id).await;
    assert_eq!(job["status"], "TIMEDOUT", "{job}");
    let timedout = count(&job, "timedout");
    assert!(timedout > 0, "{job}");
    assert_eq!(count(&job, "completed") + timedout, 100, "{job}");
    assert_counts_add_up(&job);

    let lines = server.results(&id, "").await;
    assert_eq!(unique_keys(&lines).len(), 100);
    let mut seen = 0;
    for l in &lines {
        match l["state"].as_str() {
            Some("done") => {}
            Some("timedout") => {
                seen += 1;
                assert_eq!(l["error"]["code"], "timedout", "{l}");
            }
            _ => panic!("unexpected result line {l}"),
        }
    }
    assert_eq!(seen, timedout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_job_is_not_stuck_behind_a_large_one() {
    let server = Server::start(vec![slow_mlp("slow", 4).await]).await;
    let large = server
        .create(json!({"model": "slow", "inputs": slow_inputs(400)}))
        .await;
    let large_id = large["id"].as_str().expect("id").to_string();
    server
        .wait_for(&large_id, "started", |j| j["status"] == "IN_PROGRESS")
        .await;
    let small_inputs: serde_json::Map<String, Value> = (0..5).map(|i| (format!("s{i}"), slow_input(i))).collect();
    let small = server.create(json!({"model": "slow", "inputs": small_inputs})).await;
    let small_id = small["id"].as_str().expect("id").to_string();

    let small = server.wait_end(&small_id).await;
    assert_eq!(small["status"], "COMPLETED", "{small}");
    assert_eq!(count(&small, "completed"), 5, "{small}");
    let large = server.job(&large_id).await;
    assert_eq!(large["status"], "IN_PROGRESS", "{large}");
    assert!(
        count(&large, "pending") > 200,
        "the large job should still have most of its items pending: {large}"
    );

    // Its last input has not run: a single result says so.
    let (status, last) = server.get(&format!("/v1/jobs/{large_id}/results/k0399")).await;
    assert_eq!(status, StatusCode::OK, "{last}");
    assert_eq!(last["state"], "pending", "{last}");
    assert!(last.get("cursor").is_none() && last.get("output").is_none(), "{last}");

    let (status, _) = server.delete(&format!("/v1/jobs/{large_id}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_resume_from_a_cursor_and_wait_follows_to_the_end() {
    const N: usize = 24;
    let server = Server::start(vec![slow_mlp("slow", 4).await]).await;
    let job = server.create(json!({"model": "slow", "inputs": slow_inputs(N)})).await;
    let id = job["id"].as_str().expect("id").to_string();

    // A follower started now streams every result to the end.
    let follower = {
        let http = server.http.clone();
        let url = server.url(&format!("/v1/jobs/{id}/results?wait=true"));
        tokio::spawn(async move {
            let resp = http.get(url).send().await.expect("GET results?wait=true");
            assert_eq!(resp.status(), StatusCode::OK);
            resp.text().await.expect("wait stream")
        })
    };

    server
        .wait_for(&id, "completed 3 items", |j| count(j, "completed") >= 3)
        .await;
    let first = server.results(&id, "?limit=2").await;
    assert_eq!(first.len(), 2, "{first:?}");
    let mut all = first.clone();
    let mut cursor = first[1]["cursor"].as_i64().expect("cursor");
    loop {
        let terminal = is_terminal(&server.job(&id).await);
        let page = server.results(&id, &format!("?cursor={cursor}&limit=5")).await;
        assert!(page.len() <= 5);
        if let Some(last) = page.last() {
            cursor = last["cursor"].as_i64().expect("cursor");
            all.extend(page);
        } else if terminal {
            break;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(all.len(), N);
    assert_eq!(
        unique_keys(&all),
        slow_inputs(N).keys().cloned().collect::<HashSet<_>>()
    );
    let cursors: Vec<i64> = all.iter().map(|l| l["cursor"].as_i64().expect("cursor")).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    assert!(all.iter().all(|l| l["state"] == "done"));
    assert_eq!(server.job(&id).await["status"], "COMPLETED");

    let streamed = parse_ndjson(&follower.await.expect("follower task"));
    assert_eq!(streamed.len(), N);
    assert_eq!(unique_keys(&streamed).len(), N);
    assert!(streamed.iter().all(|l| l["state"] == "done"));

    // After the end, a cursor at the last line gives nothing; wait=true ends at once.
    assert!(server
        .results(&id, &format!("?cursor={cursor}&wait=true"))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_the_error_shape() {
    let server = Server::with(
        vec![tiny_mlp("tiny-mlp").await],
        Config {
            limits: Limits {
                max_body_bytes: 16 << 10,
                max_input_bytes: 512,
                max_inputs_per_job: 10,
            },
            ..Config::default()
        },
    )
    .await;
    let json_ct = "application/json";
    let ok_input = json!([0.0, 0.0, 0.0, 0.0]);

    assert_error(
        "unknown route",
        server.get("/v1/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "/v1/nope",
    );
    assert_error(
        "wrong method",
        server.post("/v1/models", &json!({})).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "POST",
    );

    assert_error(
        "malformed JSON",
        server
            .post_raw("/v1/jobs", json_ct, br#"{"model": "tiny-mlp", "inputs": "#.to_vec())
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "json",
    );
    assert_error(
        "no JSON content type",
        server
            .post_raw(
                "/v1/jobs",
                "text/plain",
                br#"{"model": "tiny-mlp", "open": true}"#.to_vec(),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "content-type",
    );
    assert_error(
        "unknown field",
        server
            .post("/v1/jobs", &json!({"model": "tiny-mlp", "open": true, "colour": "red"}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "colour",
    );
    assert_error(
        "missing model",
        server.post("/v1/jobs", &json!({"inputs": {"a": ok_input}})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "model",
    );
    assert_error(
        "unknown model",
        server
            .post("/v1/jobs", &json!({"model": "nope", "inputs": {"a": ok_input}}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
    assert_error(
        "unknown version",
        server
            .post(
                "/v1/jobs",
                &json!({"model": "tiny-mlp", "version": "9", "inputs": {"a": ok_input}}),
            )
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "version",
    );
    assert_error(
        "inputs and source",
        server
            .post(
                "/v1/jobs",
                &json!({"model": "tiny-mlp", "inputs": {"a": ok_input}, "source": "/tmp/x.jsonl"}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "exactly one",
    );
    assert_error(
        "no inputs at all",
        server.post("/v1/jobs", &json!({"model": "tiny-mlp"})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "exactly one",
    );
    assert_error(
        "empty inputs",
        server
            .post("/v1/jobs", &json!({"model": "tiny-mlp", "inputs": {}}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "empty",
    );
    assert_error(
        "invalid base64",
        server
            .post(
                "/v1/jobs",
                &json!({"model": "tiny-mlp", "inputs": {"a": ok_input, "photo-7": {"base64": "not base64!"}}}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "photo-7",
    );
    assert_error(
        "null input",
        server
            .post("/v1/jobs", &json!({"model": "tiny-mlp", "inputs": {"n": null}}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "'n'",
    );
    assert_error(
        "priority out of range",
        server
            .post(
                "/v1/jobs",
                &json!({"model": "tiny-mlp", "priority": 10, "inputs": {"a": ok_input}}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "priority",
    );
    assert_error(
        "zero timeout",
        server
            .post(
                "/v1/jobs",
                &json!({"model": "tiny-mlp", "timeout_ms": 0, "inputs": {"a": ok_input}}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "timeout_ms",
    );
    assert_error(
        "source with sources disabled",
        server
            .post("/v1/jobs", &json!({"model": "tiny-mlp", "source": "/tmp"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "disabled",
    );

    // Limits: 16 KiB bodies, 512-byte inputs, 10 inputs per job.
    let big_body = json!({"model": "tiny-mlp", "inputs": {"a": "x".repeat(20 << 10)}});
    assert_error(
        "body over the limit",
        server.post("/v1/jobs", &big_body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "too large",
    );
    assert_error(
        "input over the limit",
        server
            .post(
                "/v1/jobs",
                &json!({"model": "tiny-mlp", "inputs": {"a": ok_input, "huge-one": "y".repeat(600)}}),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "huge-one",
    );
    let eleven: serde_json::Map<String, Value> = (0..11).map(|i| (format!("i{i}"), ok_input.clone())).collect();
    assert_error(
        "too many inputs",
        server
            .post("/v1/jobs", &json!({"model": "tiny-mlp", "inputs": eleven}))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "at most 10",
    );
    // The same limit over several uploads to an open job.
    let open = server.create(json!({"model": "tiny-mlp", "open": true})).await;
    let open_inputs = format!("/v1/jobs/{}/inputs", open["id"].as_str().expect("id"));
    let lines = |from: usize, n: usize| -> Vec<u8> {
        (from..from + n)
            .map(|i| format!("{}\n", json!({"key": format!("k{i}"), "tensor": ok_input})))
            .collect::<String>()
            .into_bytes()
    };
    let (status, added) = server.post_raw(&open_inputs, "application/x-ndjson", lines(0, 8)).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_error(
        "too many inputs over two uploads",
        server.post_raw(&open_inputs, "application/x-ndjson", lines(8, 3)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "at most 10",
    );
    assert_error(
        "upload body over the limit",
        server
            .post_raw(&open_inputs, "application/x-ndjson", vec![b' '; 20 << 10])
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "too large",
    );
    assert_error(
        "empty upload",
        server
            .post_raw(&open_inputs, "application/x-ndjson", b"\n\n".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "no inputs",
    );

    // Unknown jobs.
    let unknown = "0123456789abcdef0123456789abcdef";
    assert_error(
        "GET unknown job",
        server.get(&format!("/v1/jobs/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        unknown,
    );
    assert_error(
        "DELETE unknown job",
        server.delete(&format!("/v1/jobs/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    assert_error(
        "close unknown job",
        server.post(&format!("/v1/jobs/{unknown}/close"), &json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    assert_error(
        "upload to unknown job",
        server
            .post_raw(
                &format!("/v1/jobs/{unknown}/inputs"),
                "application/x-ndjson",
                lines(0, 1),
            )
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    assert_error(
        "results of unknown job",
        server.get(&format!("/v1/jobs/{unknown}/results")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    assert_error(
        "result of unknown job",
        server.get(&format!("/v1/jobs/{unknown}/results/a")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );

    // Bad query strings.
    assert_error(
        "bad status filter",
        server.get("/v1/jobs?status=sleeping").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "sleeping",
    );
    for q in ["limit=0", "limit=1001", "limit=ten", "limit=-1"] {
        assert_error(
            &format!("bad limit {q}"),
            server.get(&format!("/v1/jobs?{q}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "limit",
        );
    }
    assert_error(
        "bad list cursor",
        server.get("/v1/jobs?cursor=not-a-cursor").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "cursor",
    );
    assert_error(
        "unknown query parameter",
        server.get("/v1/jobs?colour=red").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "colour",
    );
    let id = open["id"].as_str().expect("id");
    assert_error(
        "bad results limit",
        server.get(&format!("/v1/jobs/{id}/results?limit=many")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "limit",
    );
    assert_error(
        "bad results cursor",
        server.get(&format!("/v1/jobs/{id}/results?cursor=x")).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "cursor",
    );
    assert_error(
        "unknown model detail",
        server.get("/v1/models/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_openapi() {
    let server = Server::start(vec![tiny_mlp("tiny-mlp").await, slow_mlp("slow", 4).await]).await;

    let (status, models) = server.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models = models.as_array().expect("model list");
    let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["slow", "tiny-mlp"]);
    for m in models {
        assert_eq!(m["ready"], true, "{m}");
        assert_eq!(m["version"], "1", "{m}");
        assert!(m.get("signature").is_none(), "the list has no detail: {m}");
    }
    let slow = models.iter().find(|m| m["name"] == "slow").expect("slow");
    assert_eq!(slow["max_batch_size"], 4);
    assert!(
        slow["backend"].as_str().is_some_and(|b| b.starts_with("faulty")),
        "{slow}"
    );

    let (status, m) = server.get("/v1/models/tiny-mlp").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m["name"], "tiny-mlp");
    assert_eq!(m["signature"]["inputs"][0]["name"], "x", "{m}");
    assert_eq!(m["signature"]["outputs"][0]["name"], "y", "{m}");
    assert_eq!(m["processing"]["type"], "tensor", "{m}");
    assert!(m["stats"].is_object(), "{m}");

    for path in ["/healthz", "/readyz"] {
        let (status, h) = server.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {h}");
        assert_eq!(h["status"], "ok", "{path}: {h}");
        assert_eq!(h["ready_models"], json!(["slow", "tiny-mlp"]), "{path}: {h}");
        assert_eq!(h["failed_models"], json!([]), "{path}: {h}");
    }

    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/inputs",
        "/v1/jobs/{id}/close",
        "/v1/jobs/{id}/results",
        "/v1/jobs/{id}/results/{key}",
        "/v1/models",
        "/v1/models/{name}",
    ] {
        assert!(paths.contains_key(p), "openapi.json lacks {p}");
    }
    assert!(paths["/v1/jobs"].get("post").is_some() && paths["/v1/jobs"].get("get").is_some());
    assert!(paths["/v1/jobs/{id}"].get("delete").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages() {
    let server = Server::start(vec![tiny_mlp("tiny-mlp").await, tiny_mlp("other-mlp").await]).await;
    let input = json!({"a": [0.0, 0.0, 0.0, 0.0]});
    let mut ids = Vec::new();
    for (model, tags) in [
        ("tiny-mlp", json!(["alpha"])),
        ("tiny-mlp", json!(["beta"])),
        ("other-mlp", json!(["alpha", "beta"])),
    ] {
        let job = server
            .create(json!({"model": model, "tags": tags, "inputs": input}))
            .await;
        let id = job["id"].as_str().expect("id").to_string();
        assert_eq!(server.wait_end(&id).await["status"], "COMPLETED");
        ids.push(id);
    }
    // An open job stays SUBMITTED; another is canceled.
    let open = server.create(json!({"model": "tiny-mlp", "open": true})).await;
    ids.push(open["id"].as_str().expect("id").to_string());
    let canceled = server
        .create(json!({"model": "tiny-mlp", "open": true, "tags": ["alpha"]}))
        .await;
    let canceled_id = canceled["id"].as_str().expect("id").to_string();
    let (status, _) = server.delete(&format!("/v1/jobs/{canceled_id}")).await;
    assert_eq!(status, StatusCode::OK);
    ids.push(canceled_id);
    let [j1, j2, j3, j4, j5] = [
        ids[0].as_str(),
        ids[1].as_str(),
        ids[2].as_str(),
        ids[3].as_str(),
        ids[4].as_str(),
    ];

    let list = |query: &'static str| {
        let server = &server;
        async move {
            let (status, v) = server.get(&format!("/v1/jobs{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {v}");
            v["jobs"]
                .as_array()
                .unwrap_or_else(|| panic!("{query}: {v}"))
                .iter()
                .map(|j| j["id"].as_str().expect("id").to_string())
                .collect::<Vec<_>>()
        }
    };
    // Newest first.
    assert_eq!(list("").await, [j5, j4, j3, j2, j1]);
    assert_eq!(list("?status=COMPLETED").await, [j3, j2, j1]);
    assert_eq!(list("?status=completed").await, [j3, j2, j1]);
    assert_eq!(list("?status=SUBMITTED").await, [j4]);
    assert_eq!(list("?status=CANCELED").await, [j5]);
    assert!(list("?status=TIMEDOUT").await.is_empty());
    assert_eq!(list("?model=other-mlp").await, [j3]);
    assert_eq!(list("?model=tiny-mlp").await, [j5, j4, j2, j1]);
    assert_eq!(list("?tag=alpha").await, [j5, j3, j1]);
    assert_eq!(list("?tag=beta").await, [j3, j2]);
    assert_eq!(list("?model=tiny-mlp&tag=alpha&status=COMPLETED").await, [j1]);
    assert!(list("?tag=gamma").await.is_empty());
    assert!(list("?model=nope").await.is_empty());

    // Pages of two, following next_cursor.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_string(),
        };
        let (status, page) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let jobs = page["jobs"].as_array().expect("jobs");
        sizes.push(jobs.len());
        seen.extend(jobs.iter().map(|j| j["id"].as_str().expect("id").to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(seen, [j5, j4, j3, j2, j1]);
    assert_eq!(sizes, [2, 2, 1]);

    // A page of a filtered list.
    let (status, page) = server.get("/v1/jobs?tag=alpha&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let c = page["next_cursor"].as_str().expect("next cursor").to_string();
    let (status, rest) = server.get(&format!("/v1/jobs?tag=alpha&limit=2&cursor={c}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rest["jobs"][0]["id"], json!(j1));
    assert!(rest["next_cursor"].is_null(), "{rest}");

    // The views carry their counts.
    let (_, all) = server.get("/v1/jobs?model=other-mlp").await;
    let v = &all["jobs"][0];
    assert_eq!(v["tags"], json!(["alpha", "beta"]));
    assert_eq!(count(v, "total"), 1);
    assert_eq!(count(v, "completed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_formats_and_unreadable_sources() {
    let root = tempfile::tempdir().expect("source root");
    let (_, outputs) = mlp_expected();
    let write = |name: &str, bytes: &[u8]| {
        let p = root.path().join(name);
        std::fs::write(&p, bytes).expect("write source");
        p.display().to_string()
    };
    // The tiny MLP reads a text input as a JSON tensor, so CSV and plain-text sources work on it.
    let csv = write("rows.csv", b"id,text\nr1,\"[0,0,0,0]\"\nr2,\"[1,-2,0.5,3]\"\n");
    let txt = write("lines.txt", b"[0,0,0,0]\r\n\n[1,-2,0.5,3]\n");
    // A line that is not UTF-8 is a malformed line: it fails alone.
    let latin1 = write(
        "latin1.jsonl",
        b"{\"id\": \"a\", \"tensor\": [0,0,0,0]}\n{\"id\": \"b\", \"text\": \"caf\xe9\"}\n{\"id\": \"c\", \"tensor\": [0,0,0,0]}\n",
    );
    // Sources that cannot be read to the end.
    let no_text = write("no-text.csv", b"id,words\na,\"[0,0,0,0]\"\n");
    let dups = write(
        "dups.jsonl",
        b"{\"id\": \"a\", \"tensor\": [0,0,0,0]}\n{\"id\": \"a\", \"tensor\": [0,0,0,0]}\n",
    );
    let server = Server::with(
        vec![tiny_mlp("tiny-mlp").await],
        Config {
            source_roots: vec![root.path().to_path_buf()],
            ..Config::default()
        },
    )
    .await;
    let run = |source: String| {
        let server = &server;
        async move {
            let job = server.create(json!({"model": "tiny-mlp", "source": source})).await;
            let id = job["id"].as_str().expect("id").to_string();
            let job = server.wait_end(&id).await;
            assert_counts_add_up(&job);
            let lines = server.results(&id, "").await;
            (job, lines)
        }
    };

    let (job, lines) = run(csv).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 2, "{job}");
    assert_close(&mlp_output(line(&lines, "r1")), &outputs[0], 1e-5, "r1");
    assert_close(&mlp_output(line(&lines, "r2")), &outputs[1], 1e-5, "r2");

    let (job, lines) = run(txt).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(count(&job, "completed"), 2, "{job}");
    // Ids are physical line numbers (docs/inputs.md): the blank line 2 is skipped.
    assert_close(&mlp_output(line(&lines, "1")), &outputs[0], 1e-5, "line 1");
    assert_close(&mlp_output(line(&lines, "3")), &outputs[1], 1e-5, "line 3");

    let (job, lines) = run(latin1).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(
        count(&job, "total"),
        3,
        "the lines after the bad one are read too: {job}"
    );
    assert_eq!(count(&job, "completed"), 2, "{job}");
    let bad = line(&lines, "2");
    assert_eq!(bad["state"], "failed", "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_input", "{bad}");
    assert!(
        bad["error"]["message"].as_str().is_some_and(|m| m.contains("line 2")),
        "{bad}"
    );

    // Never COMPLETED on part of the inputs (issue 12): FAILED, with the reason, and the inputs
    // read before the failure run.
    let (job, lines) = run(no_text.clone()).await;
    assert_eq!(job["status"], "FAILED", "{no_text}: {job}");
    assert_eq!(count(&job, "total"), 0, "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("CSV") && e.contains("no-text.csv")),
        "{job}"
    );
    assert_eq!(job["error"]["code"], "source_failed", "{job}");
    assert!(lines.is_empty(), "{lines:?}");
    let (job, lines) = run(dups.clone()).await;
    assert_eq!(job["status"], "FAILED", "{dups}: {job}");
    assert_eq!((count(&job, "total"), count(&job, "completed")), (1, 1), "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("'a' twice") && e.contains("record 2")),
        "{job}"
    );
    assert_eq!(line(&lines, "a")["state"], "done", "{lines:?}");

    // A link inside a root to a file outside it is outside.
    #[cfg(unix)]
    {
        let link = root.path().join("link.jsonl");
        std::os::unix::fs::symlink(repo_root().join("data/texts/sample.jsonl"), &link).expect("symlink");
        assert_error(
            "link out of the root",
            server
                .post(
                    "/v1/jobs",
                    &json!({"model": "tiny-mlp", "source": link.display().to_string()}),
                )
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
            "not under an allowed root",
        );
    }
}
