//! `sluice serve` as a user runs it: the real binary as a child process on a
//! loopback port, driven over HTTP and with `sluice jobs`. Checks that a job
//! gives the same results as `sluice run`, that a job survives `kill -9` of
//! the server and completes after a restart with exactly one result per
//! input, and what `sluice jobs list / status / results / cancel` print.
//!
//! Every server is killed when its guard drops, also when a test fails.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
fn count(job: &Value, name: &str) -> u64 {
    job["counts"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {name} in {job}"))
}

fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("COMPLETED" | "CANCELED" | "TIMEDOUT" | "FAILED")
    )
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(f)
        .lines()
        .map(|l| l.expect("line"))
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn embedding(v: &Value) -> Vec<f64> {
    v["output"]["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn job_results_equal_sluice_run() {
    require_onnxruntime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    write_model(
        &models,
        "minilm-l6",
        &[
            (
                "model_file = \"model.onnx\"",
                format!(
                    "model_file = {}",
                    toml_path(&repo_model_file("minilm-l6", "model.onnx"))
                ),
            ),
            (
                "tokenizer = \"tokenizer.json\"",
                format!(
                    "tokenizer = {}",
                    toml_path(&repo_model_file("minilm-l6", "tokenizer.json"))
                ),
            ),
        ],
    );
    // The first 50 texts of the sample.
    let sample = std::fs::read_to_string(repo_root().join("data/texts/sample.jsonl")).expect("sample texts");
    let texts: Vec<&str> = sample.lines().filter(|l| !l.trim().is_empty()).take(50).collect();
    assert_eq!(texts.len(), 50);
    let input = tmp.path().join("texts.jsonl");
    std::fs::write(&input, texts.join("\n") + "\n").expect("write texts");

    let server = ServerProc::start(&models, &tmp.path().join("data"), None, &tmp.path().join("server.log"));
    let via_jobs = tmp.path().join("jobs.jsonl");
    let o = run_sluice(&[
        "jobs",
        "--server",
        &server.base,
        "submit",
        "--model",
        "minilm-l6",
        "--input",
        &input.display().to_string(),
        "--tags",
        "equality",
        "--wait",
        "--output",
        &via_jobs.display().to_string(),
    ]);
    assert_success(&o, "sluice jobs submit --wait");
    let id = text(&o.stdout).trim().to_string();
    assert_eq!(id.len(), 32, "submit prints the job id, got {id:?}");
    assert!(text(&o.stderr).contains("COMPLETED"), "{}", text(&o.stderr));

    let via_run = tmp.path().join("run.jsonl");
    let o = run_sluice(&[
        "run",
        "--model",
        &models.join("minilm-l6").display().to_string(),
        "--input",
        &input.display().to_string(),
        "--output",
        &via_run.display().to_string(),
        "--quiet",
    ]);
    assert_success(&o, "sluice run");

    let jobs: HashMap<String, Value> = read_jsonl(&via_jobs)
        .into_iter()
        .map(|v| (v["key"].as_str().expect("key").to_string(), v))
        .collect();
    let run: HashMap<String, Value> = read_jsonl(&via_run)
        .into_iter()
        .map(|v| (v["id"].as_str().expect("id").to_string(), v))
        .collect();
    assert_eq!(jobs.len(), 50, "one job result per input");
    assert_eq!(run.len(), 50, "one run result per input");
    assert_eq!(
        jobs.keys().collect::<HashSet<_>>(),
        run.keys().collect::<HashSet<_>>(),
        "the same ids"
    );
    let mut worst = 0f64;
    for (key, r) in &run {
        let j = &jobs[key];
        assert_eq!(j["state"], "done", "{j}");
        let (a, b) = (embedding(j), embedding(r));
        assert_eq!(a.len(), 384);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("largest difference between the job's and the run's embeddings: {worst:e}");
    assert!(worst <= 1e-6, "embeddings differ by up to {worst}");
}

/// A line of the results stream of the `mlp` model, read without building
/// a JSON tree of its 512 output values (a 20,000-line stream is ~100 MB).
#[derive(serde::Deserialize)]
struct ResultRow {
    key: String,
    state: String,
    cursor: i64,
    output: Option<MlpOutput>,
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct MlpOutput {
    tensors: MlpTensors,
}

#[derive(serde::Deserialize)]
struct MlpTensors {
    output: MlpTensor,
}

#[derive(serde::Deserialize)]
struct MlpTensor {
    data: Vec<serde::de::IgnoredAny>,
}

#[test]
fn job_survives_kill_9_and_completes_after_restart() {
    const N: usize = 20_000;
    require_onnxruntime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    write_mlp(&models, 8, None);
    let root = tmp.path().join("sources");
    std::fs::create_dir(&root).expect("source root");
    let input = root.join("inputs.jsonl");
    write_mlp_inputs(&input, N);
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");

    let server = ServerProc::start(&models, &data, Some(&root), &log);
    let (status, job) = server.post(
        "/v1/jobs",
        &json!({"model": "mlp", "source": input.display().to_string()}),
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("id").to_string();

    // This test kills the server once the source is fully read (and the job
    // closed), while the items run; a kill while the source is still being
    // read is `source_resume.rs`. Ingestion closes the job right after its
    // last chunk, in the store's write queue ahead of the results recorded
    // after it: so once all inputs are in, wait until results have been
    // recorded twice more, then kill at >= 20%.
    let ingested = server.wait_for(&id, "ingested its source", |j| count(j, "total") == N as u64);
    let after = count(&ingested, "completed");
    let mut increments = 0;
    let mut last = after;
    let at_kill = server.wait_for(&id, "reached 20%", |j| {
        let c = count(j, "completed");
        if c > last {
            increments += 1;
            last = c;
        }
        increments >= 2 && c >= N as u64 / 5
    });
    drop(server); // SIGKILL
    let killed_at = count(&at_kill, "completed");
    eprintln!("killed the server with {killed_at} of {N} items completed");
    assert!(
        killed_at < N as u64 && !is_terminal(&at_kill),
        "the job finished before the kill; make the model slower: {at_kill}"
    );

    let server = ServerProc::start(&models, &data, Some(&root), &log);
    let job = server.wait_for(&id, "ended after the restart", is_terminal);
    assert_eq!(job["status"], "COMPLETED", "{job}\nserver log:\n{}", server.log_text());
    assert_eq!(count(&job, "total"), N as u64, "{job}");
    assert_eq!(count(&job, "completed"), N as u64, "{job}");
    assert_eq!(count(&job, "pending"), 0, "{job}");
    for k in ["failed", "canceled", "timedout"] {
        assert_eq!(count(&job, k), 0, "{job}");
    }
    assert!(count(&job, "completed") > killed_at);

    let mut keys = HashSet::with_capacity(N);
    let mut lines = 0usize;
    let mut last_cursor = -1i64;
    server
        .http
        .each_line(&server.url(&format!("/v1/jobs/{id}/results")), |line| {
            let v: ResultRow = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("bad result line ({e}): {}", String::from_utf8_lossy(line)));
            lines += 1;
            assert_eq!(v.state, "done", "{}: {:?}", v.key, v.error);
            let outputs = v.output.map(|o| o.tensors.output.data.len());
            assert_eq!(outputs, Some(512), "{}", v.key);
            assert!(v.cursor > last_cursor, "cursors out of order at {}", v.key);
            last_cursor = v.cursor;
            assert!(keys.insert(v.key.clone()), "{} has two results", v.key);
        });
    assert_eq!(lines, N);
    assert_eq!(keys.len(), N);
    assert!(keys.contains("i00000") && keys.contains(&format!("i{:05}", N - 1)));
}

#[test]
fn jobs_list_status_results_and_cancel_print_sensible_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    write_model(&models, "noop", &[]);
    let input = tmp.path().join("vectors.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"input\": [1, 2, 3]}\n{\"id\": \"b\", \"input\": [4, 5, 6]}\n{\"id\": \"c\", \"input\": [7, 8, 9]}\n",
    )
    .expect("write inputs");
    let server = ServerProc::start(&models, &tmp.path().join("data"), None, &tmp.path().join("server.log"));
    let base = server.base.clone();
    let jobs = |args: &[&str]| -> Output {
        let mut all = vec!["jobs", "--server", base.as_str()];
        all.extend_from_slice(args);
        run_sluice(&all)
    };

    let o = jobs(&[
        "submit",
        "--model",
        "noop",
        "--input",
        &input.display().to_string(),
        "--tags",
        "cli,demo",
        "--wait",
    ]);
    assert_success(&o, "jobs submit");
    let id = text(&o.stdout).trim().to_string();
    assert_eq!(id.len(), 32, "submit prints the job id, got {id:?}");
    let err = text(&o.stderr);
    assert!(err.contains("uploading 3 inputs"), "{err}");
    assert!(err.contains("COMPLETED") && err.contains("3 completed"), "{err}");

    // status: the job as pretty JSON.
    let o = jobs(&["status", &id]);
    assert_success(&o, "jobs status");
    let v: Value = serde_json::from_slice(&o.stdout).expect("status prints JSON");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "COMPLETED");
    assert_eq!(v["model"], "noop");
    assert_eq!(v["tags"], json!(["cli", "demo"]));
    assert_eq!(count(&v, "total"), 3);
    assert_eq!(count(&v, "completed"), 3);
    assert!(text(&o.stdout).lines().count() > 5, "pretty-printed");

    // results: NDJSON on stdout, a count on stderr.
    let o = jobs(&["results", &id]);
    assert_success(&o, "jobs results");
    let lines: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    let a = lines.iter().find(|l| l["key"] == "a").expect("result a");
    assert_eq!(a["state"], "done");
    assert_eq!(a["output"]["tensors"]["output"]["data"], json!([1.0, 2.0, 3.0]));
    assert!(text(&o.stderr).contains("3 results"), "{}", text(&o.stderr));

    // An open job stays SUBMITTED until canceled.
    let (status, open) = server.post("/v1/jobs", &json!({"model": "noop", "open": true, "tags": ["demo"]}));
    assert_eq!(status, 201, "{open}");
    let open_id = open["id"].as_str().expect("id").to_string();

    // list: a header and one row per job, newest first.
    let o = jobs(&["list"]);
    assert_success(&o, "jobs list");
    let out = text(&o.stdout);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(rows[0], ["ID", "STATUS", "MODEL", "TOTAL", "DONE", "FAILED"], "{out}");
    assert_eq!(rows[1], [open_id.as_str(), "SUBMITTED", "noop", "0", "0", "0"], "{out}");
    assert_eq!(rows[2], [id.as_str(), "COMPLETED", "noop", "3", "3", "0"], "{out}");

    let o = jobs(&["list", "--status", "completed", "--tag", "demo", "--model", "noop"]);
    assert_success(&o, "jobs list --status --tag --model");
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains(&id) && !out.contains(&open_id), "{out}");
    let o = jobs(&["list", "--tag", "nope"]);
    assert_success(&o, "jobs list --tag nope");
    assert_eq!(
        text(&o.stdout).lines().count(),
        1,
        "only the header: {}",
        text(&o.stdout)
    );

    // cancel: "<id> CANCELED".
    let o = jobs(&["cancel", &open_id]);
    assert_success(&o, "jobs cancel");
    assert_eq!(text(&o.stdout).trim(), format!("{open_id} CANCELED"));
    assert_eq!(server.job(&open_id)["status"], "CANCELED");
    // Canceling a finished job leaves it as it was.
    let o = jobs(&["cancel", &id]);
    assert_success(&o, "jobs cancel (finished job)");
    assert_eq!(text(&o.stdout).trim(), format!("{id} COMPLETED"));

    // Errors name the problem and fail.
    let unknown = "0123456789abcdef0123456789abcdef";
    for args in [
        vec!["status", unknown],
        vec!["cancel", unknown],
        vec!["results", unknown],
    ] {
        let o = jobs(&args);
        assert!(!o.status.success(), "jobs {args:?} should fail");
        let err = text(&o.stderr);
        assert!(err.contains("404") && err.contains(unknown), "jobs {args:?}: {err}");
    }
    let o = jobs(&["list", "--status", "sleeping"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("400"), "{}", text(&o.stderr));

    // SIGTERM: a graceful shutdown, exit status 0.
    let mut server = server;
    let o = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .output()
        .expect("kill -TERM");
    assert!(o.status.success(), "kill -TERM: {}", text(&o.stderr));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "sluice serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "graceful shutdown exited with {status}:\n{}",
        server.log_text()
    );
}
