//! The jobs API when the store cannot write and at its limits (issue 10, findings 2, 9 and 11):
//! a real server on loopback over a real SQLite store, with SQLite made to report a full disk
//! through `PRAGMA max_page_count` (the store's `test-util` hook).

mod common;

use std::time::Instant;

use common::{Config, Server, DEADLINE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sluice_server::Limits;

/// An inline job on `noop` whose inputs need many new database pages.
fn big_job(n: usize, tag: &str) -> Value {
    let inputs: serde_json::Map<String, Value> = (0..n)
        .map(|i| (format!("{tag}{i:04}"), json!(vec![i as f64 + 0.5; 2_000])))
        .collect();
    json!({ "model": "noop", "inputs": inputs })
}

/// POST /v1/jobs; status, `Retry-After`, body.
async fn post_job(server: &Server, body: &Value) -> (StatusCode, Option<String>, Value) {
    let resp = server
        .http
        .post(server.url("/v1/jobs"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/jobs");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, retry, body)
}

/// Finding 2: with SQLite reporting a full disk, job submissions answer 503 with `Retry-After`
/// and a generic message (before: 500 with "attempted to call begin_with at non-zero transaction
/// depth", for every write until a restart), `/readyz` answers 503 saying the store cannot write,
/// and once space is back the probe makes it ready again and jobs run to the end.
#[tokio::test]
async fn full_disk_answers_503_and_recovers_when_space_is_back() {
    let server = Server::start(vec![common::repo_model("noop").await]).await;
    let first = server.create(big_job(5, "warm")).await;
    server.wait_end(first["id"].as_str().expect("id")).await;
    let (status, ready) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["store"]["writable"], json!(true), "{ready}");

    server
        .sqlite
        .set_max_page_count(Some(1))
        .await
        .expect("limit the pages");
    for attempt in 0..3 {
        let (status, retry, body) = post_job(&server, &big_job(200, "full")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "attempt {attempt}: {body}");
        assert_eq!(body["error"]["code"], json!("store_unavailable"), "{body}");
        assert!(
            retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s > 0)),
            "no Retry-After"
        );
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        for internal in [
            "sqlite",
            "database",
            "transaction",
            "begin_with",
            "sql",
            "sluice.db",
            "/tmp",
        ] {
            assert!(!message.contains(internal), "internal text {internal:?} in {message:?}");
        }
        let (status, ready) = server.get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
        assert_eq!(ready["status"], json!("unavailable"), "{ready}");
        assert_eq!(ready["store"]["writable"], json!(false), "{ready}");
        assert_eq!(ready["store"]["last_write_error"], json!("disk_full"), "{ready}");
        assert!(ready["store"]["last_write_error_at"].as_i64().is_some(), "{ready}");
        // Liveness is not readiness: the process is up.
        let (status, _) = server.get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }
    // Nothing of the refused jobs was stored.
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list}");

    server.sqlite.set_max_page_count(None).await.expect("lift the limit");
    let start = Instant::now();
    loop {
        let (status, ready) = server.get("/readyz").await;
        if status == StatusCode::OK {
            assert_eq!(ready["store"]["writable"], json!(true), "{ready}");
            assert_eq!(ready["store"]["last_write_error"], json!("disk_full"), "{ready}");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "/readyz never recovered: {ready}");
        tokio::time::sleep(common::PROBE_INTERVAL).await;
    }
    let job = server.create(big_job(200, "after")).await;
    let id = job["id"].as_str().expect("id");
    let done = server.wait_end(id).await;
    assert_eq!(done["status"], json!("COMPLETED"), "{done}");
    assert_eq!(done["counts"]["completed"], json!(200), "{done}");
    assert_eq!(server.results(id, "").await.len(), 200);
}

/// Finding 9: a key given twice in an inline job was silently dropped (201, total 1).
#[tokio::test]
async fn duplicate_inline_keys_are_refused() {
    let server = Server::start(vec![common::repo_model("noop").await]).await;
    let (status, body) = server
        .post_raw(
            "/v1/jobs",
            "application/json",
            br#"{"model":"noop","inputs":{"a":[1.0],"a":[2.0]}}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("duplicate input key 'a'"), "{body}");
    let (status, body) = server
        .post_raw(
            "/v1/jobs",
            "application/json",
            br#"{"model":"noop","inputs":{"a":[1.0],"b":[2.0],"c":[3.0],"b":[4.0]}}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or_default().contains("'b'"),
        "{body}"
    );
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(0), "{list}");
    // Distinct keys are kept in the order given.
    let job = server
        .create(json!({"model": "noop", "inputs": {"z": [1.0], "a": [2.0]}}))
        .await;
    assert_eq!(job["counts"]["total"], json!(2), "{job}");
}

/// Finding 11: concurrent uploads to an open job could together exceed `max_inputs_per_job`.
/// Now the bound holds whatever the interleaving, and each refused upload answers 413 with the
/// error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_respect_max_inputs_per_job() {
    let limits = Limits {
        max_inputs_per_job: 100,
        ..Limits::default()
    };
    let server = Server::with(
        vec![common::repo_model("noop").await],
        Config {
            limits,
            ..Config::default()
        },
    )
    .await;
    let job = server.create(json!({"model": "noop", "open": true})).await;
    let id = job["id"].as_str().expect("id").to_owned();
    let url = server.url(&format!("/v1/jobs/{id}/inputs"));
    let mut uploads = Vec::new();
    for u in 0..12 {
        // Bodies large enough that reading one takes a while: the uploads overlap.
        let body: String = (0..30)
            .map(|i| {
                format!(
                    "{{\"key\": \"u{u}-{i}\", \"tensor\": {}}}\n",
                    json!(vec![i as f64; 2_000])
                )
            })
            .collect();
        let (http, url) = (server.http.clone(), url.clone());
        uploads.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .expect("upload");
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    let (mut accepted, mut refused) = (0u64, 0u64);
    for upload in uploads {
        let (status, body) = upload.await.expect("upload task");
        match status {
            StatusCode::OK => accepted += body["added"].as_u64().expect("added"),
            StatusCode::PAYLOAD_TOO_LARGE => {
                assert_eq!(body["error"]["code"], json!("too_large"), "{body}");
                assert!(
                    body["error"]["message"].as_str().unwrap_or_default().contains("100"),
                    "{body}"
                );
                refused += 1;
            }
            other => panic!("upload answered {other}: {body}"),
        }
    }
    assert_eq!((accepted, refused), (90, 9));
    // An inline job over the bound is refused the same way, and leaves nothing behind.
    let over: serde_json::Map<String, Value> = (0..101).map(|i| (format!("k{i}"), json!([1.0]))).collect();
    let (status, body) = server.post("/v1/jobs", &json!({"model": "noop", "inputs": over})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], json!("too_large"), "{body}");
    let (_, list) = server.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list}");
    let (status, closed) = server.post(&format!("/v1/jobs/{id}/close"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    let done = server.wait_end(&id).await;
    assert_eq!(done["counts"]["total"], json!(90), "{done}");
    assert_eq!(done["counts"]["completed"], json!(90), "{done}");
}
