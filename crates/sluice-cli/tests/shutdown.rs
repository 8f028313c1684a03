//! `--shutdown-grace-s` bounds shutdown whatever clients are connected
//! (issue 10, finding 3): a client following a job's results with
//! `?wait=true` gets what is recorded and its stream ends; the feeders stop
//! at the signal, so the job does not go on running during the shutdown.
//!
//! Each test runs `sluice serve` as a child process, as a user would, and
//! sends it SIGTERM while a follower is connected.

mod common;

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use common::{require_onnxruntime, write_mlp, Http, ServerProc};
use serde_json::{json, Value};

/// The grace period given to the server.
const GRACE_S: u64 = 5;

fn count(job: &Value, name: &str) -> u64 {
    job["counts"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {name} in {job}"))
}

/// The MLP at batch size 1 on one thread: slow enough that a 10,000-item job
/// runs for many seconds.
fn slow_mlp(models: &Path) {
    write_mlp(models, 1, Some(1));
}

fn tensor_line(i: usize) -> Value {
    let v: Vec<u8> = (0..512).map(|j| ((i * 31 + j * 7) % 10) as u8).collect();
    json!({"id": format!("i{i:05}"), "tensor": v})
}

/// Follows `/v1/jobs/{id}/results?wait=true` on its own thread; the thread
/// ends with the number of lines read when the stream ends (it panics if the
/// connection breaks instead of ending cleanly).
fn follow(base: &str, id: &str) -> std::thread::JoinHandle<usize> {
    let url = format!("{base}/v1/jobs/{id}/results?wait=true");
    std::thread::spawn(move || {
        let http = Http::new();
        let mut lines = 0usize;
        http.each_line(&url, |_| lines += 1);
        lines
    })
}

#[test]
fn a_results_follower_does_not_hold_shutdown_open_and_feeding_stops_at_the_signal() {
    const N: usize = 10_000;
    require_onnxruntime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    slow_mlp(&models);
    let root = tmp.path().join("sources");
    std::fs::create_dir(&root).expect("source root");
    let input = root.join("inputs.jsonl");
    {
        let mut w = std::io::BufWriter::new(File::create(&input).expect("inputs"));
        for i in 0..N {
            serde_json::to_writer(&mut w, &tensor_line(i)).expect("line");
            w.write_all(b"\n").expect("newline");
        }
        w.flush().expect("flush");
    }
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let grace = GRACE_S.to_string();
    let mut server = ServerProc::start_with(&models, &data, Some(&root), &log, &["--shutdown-grace-s", &grace]);
    let (status, job) = server.post(
        "/v1/jobs",
        &json!({"model": "mlp", "source": input.display().to_string()}),
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    server.wait_for(&id, "read its source and ran 100 items", |j| {
        count(j, "total") == N as u64 && count(j, "completed") >= 100
    });
    let follower = follow(&server.base, &id);
    std::thread::sleep(Duration::from_millis(300));
    let before = count(&server.job(&id), "completed");
    assert!(
        before < N as u64 / 2,
        "the job is too fast for this test: {before} of {N} done"
    );

    let (status, took) = server.terminate(Duration::from_secs(GRACE_S + 10));
    assert!(status.success(), "exit status {status}:\n{}", server.log_text());
    eprintln!("exited {took:?} after SIGTERM with a follower connected");
    let lines = follower.join().expect("the follower's stream ended cleanly");
    assert!(
        lines as u64 >= before,
        "the follower got what was recorded: {lines} < {before}"
    );

    // Restart on the same data: what ran during the shutdown is what was in
    // flight at the signal (a few batches of one item), not the job's backlog.
    let log2 = tmp.path().join("server2.log");
    let restarted = ServerProc::start_with(&models, &data, Some(&root), &log2, &["--shutdown-grace-s", &grace]);
    let after = count(&restarted.job(&id), "completed");
    assert!(
        after <= before + 200,
        "{} items ran after the signal (completed {before} before it, {after} after)",
        after.saturating_sub(before)
    );
    drop(restarted);
}

#[test]
fn a_follower_of_an_open_job_that_is_never_closed_does_not_block_shutdown() {
    require_onnxruntime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    slow_mlp(&models);
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let grace = GRACE_S.to_string();
    let mut server = ServerProc::start_with(&models, &data, None, &log, &["--shutdown-grace-s", &grace]);
    let (status, job) = server.post("/v1/jobs", &json!({"model": "mlp", "open": true}));
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("id").to_string();
    let body: String = (0..20).map(|i| format!("{}\n", tensor_line(i))).collect();
    let (status, added) = server
        .http
        .send(
            reqwest::Client::new()
                .post(server.url(&format!("/v1/jobs/{id}/inputs")))
                .header("content-type", "application/x-ndjson")
                .body(body),
        )
        .expect("upload");
    assert_eq!(status, 200, "{added}");
    server.wait_for(&id, "ran its 20 inputs", |j| count(j, "completed") == 20);
    let follower = follow(&server.base, &id);
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = server.terminate(Duration::from_secs(GRACE_S + 10));
    assert!(status.success(), "exit status {status}:\n{}", server.log_text());
    eprintln!("exited {took:?} after SIGTERM with a follower of an open job");
    assert_eq!(follower.join().expect("the follower's stream ended cleanly"), 20);
}
