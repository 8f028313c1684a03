//! Source jobs survive crashes and say why they failed (issue 12), with the
//! real `sluice serve` binary: a source job whose server is killed with
//! SIGKILL while it is still storing the source's inputs resumes where it
//! stopped after a restart and completes with exactly one result per line of
//! the source; a source that fails part-way ends the job FAILED with the
//! reason in `GET /v1/jobs/{id}`, the inputs read before it run; on
//! PostgreSQL, another api node takes over the source of one that died; and
//! object-store sources (an object, a prefix listed in key order) on moto
//! resume alike.
//!
//! Ingestion is slowed with the test-only knob `SLUICE_TEST_INGEST_DELAY_MS`
//! (a pause after each chunk of 1,000 inputs), so that the kill comes while
//! the source is being read; each test checks that it did.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::moto::Moto;
use common::{write_model, ServerProc};
use serde_json::{json, Value};
use sluice_store::test_util::TestDatabase;
use sqlx::Connection as _;

/// Lines of the source: 50 chunks.
const N: usize = 50_000;

/// The test-only pause after each stored chunk, ms: 50 chunks take 3 s or more.
const DELAY_MS: u64 = 60;

/// The key of line `i` (0-based) of a source.
fn key(i: usize) -> String {
    format!("k{i:05}")
}

/// Writes `n` lines `{"id": "k00000", "tensor": [i, 0.5]}` to `path`; with
/// `repeat = Some((line, of))`, line `line` (0-based) takes the key of line `of`.
fn write_source(path: &Path, n: usize, repeat: Option<(usize, usize)>) {
    use std::io::Write as _;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).expect("source file"));
    for i in 0..n {
        let k = match repeat {
            Some((line, of)) if line == i => key(of),
            _ => key(i),
        };
        writeln!(w, r#"{{"id": "{k}", "tensor": [{i}, 0.5]}}"#).expect("write line");
    }
    w.flush().expect("flush");
}

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

/// A folder with the `noop` model (it echoes its input), a source root and a data folder.
struct Setup {
    tmp: tempfile::TempDir,
    models: PathBuf,
    root: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let models = tmp.path().join("models");
        write_model(&models, "noop", &[]);
        let root = tmp.path().join("sources");
        std::fs::create_dir(&root).expect("source root");
        let data = tmp.path().join("data");
        Setup {
            tmp,
            models,
            root,
            data,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.log"))
    }

    /// `sluice serve` on this setup's data, as node `node`, pausing `delay_ms`
    /// after each chunk of a source it stores (0: no pause).
    fn server(&self, node: &str, delay_ms: u64, extra: &[&str]) -> ServerProc {
        self.server_env(node, delay_ms, extra, Vec::new())
    }

    /// [`Setup::server`] with more environment variables.
    fn server_env(&self, node: &str, delay_ms: u64, extra: &[&str], more: Vec<(&str, String)>) -> ServerProc {
        let mut args = vec!["--node-id", node];
        args.extend_from_slice(extra);
        // The jobs runtime's INFO lines say when a source is resumed.
        let mut env = vec![("SLUICE_LOG", "warn,sluice_jobs=info".to_owned())];
        env.extend(more);
        if delay_ms > 0 {
            env.push(("SLUICE_TEST_INGEST_DELAY_MS", delay_ms.to_string()));
        }
        ServerProc::start_env(&self.models, &self.data, Some(&self.root), &self.log(node), &args, &env)
    }
}

/// Submits a source job; its id.
fn submit(server: &ServerProc, source: &Path) -> String {
    submit_uri(server, &source.display().to_string())
}

/// Submits a job on the source `uri`; its id.
fn submit_uri(server: &ServerProc, uri: &str) -> String {
    let (status, job) = server.post("/v1/jobs", &json!({"model": "noop", "source": uri}));
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().expect("job id").to_owned()
}

/// Waits until the job holds some of the source's `n` inputs, not all, and
/// kills the server with SIGKILL; the job as seen last before the kill.
fn kill_mid_ingest(mut server: ServerProc, id: &str, n: usize) -> Value {
    let seen = server.wait_for(id, "stored part of its source", |j| count(j, "total") > 0);
    server.child.kill().expect("kill -9");
    let _ = server.child.wait();
    let stored = count(&seen, "total");
    assert!(
        stored < n as u64 && !is_terminal(&seen),
        "the source was read whole before the kill; raise the test delay: {seen}"
    );
    eprintln!("killed the server with {stored} of {n} inputs stored");
    seen
}

/// Every result line of a job: (key, state, the input's first value echoed back).
fn results(server: &ServerProc, id: &str) -> Vec<(String, String, Option<f64>)> {
    let mut out = Vec::new();
    server
        .http
        .each_line(&server.url(&format!("/v1/jobs/{id}/results")), |line| {
            let v: Value = serde_json::from_slice(line)
                .unwrap_or_else(|e| panic!("bad result line ({e}): {}", String::from_utf8_lossy(line)));
            let echoed = v["output"]["tensors"]["output"]["data"][0].as_f64();
            out.push((
                v["key"].as_str().expect("key").to_owned(),
                v["state"].as_str().expect("state").to_owned(),
                echoed,
            ));
        });
    out
}

/// Checks that the job has exactly one `done` result for each of the
/// source's first `n` lines, keyed as the source gives them and carrying that
/// line's input.
fn assert_each_line_once(server: &ServerProc, id: &str, n: usize) {
    let rows = results(server, id);
    let mut keys = HashSet::with_capacity(n);
    for (k, state, echoed) in &rows {
        assert_eq!(state, "done", "{k}");
        assert!(keys.insert(k.clone()), "{k} has two results");
        let line: usize = k
            .strip_prefix('k')
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("a key the source does not give: {k}"));
        assert!(line < n, "a key past the lines read: {k}");
        assert_eq!(*echoed, Some(line as f64), "{k} ran on another line's input");
    }
    assert_eq!(rows.len(), n, "one result per line");
    assert_eq!(keys.len(), n);
}

#[test]
fn a_source_job_killed_mid_ingest_resumes_after_restart_with_each_input_once() {
    let s = Setup::new();
    let source = s.root.join("inputs.jsonl");
    write_source(&source, N, None);

    let server = s.server("n1", DELAY_MS, &[]);
    let id = submit(&server, &source);
    kill_mid_ingest(server, &id, N);

    // The same node starts again on the same data (no test delay now): it
    // goes on reading where the stored inputs stop.
    let server = s.server("n1", 0, &[]);
    let job = server.wait_for(&id, "ended after the restart", is_terminal);
    let log = server.log_text();
    assert_eq!(job["status"], "COMPLETED", "{job}\nserver log:\n{log}");
    assert!(job["error"].is_null(), "{job}");
    assert_eq!(count(&job, "total"), N as u64, "{job}");
    assert_eq!(count(&job, "completed"), N as u64, "{job}");
    for k in ["pending", "failed", "canceled", "timedout"] {
        assert_eq!(count(&job, k), 0, "{job}");
    }
    assert!(log.contains("resuming the job's source"), "{log}");
    assert_each_line_once(&server, &id, N);
}

#[test]
fn a_source_that_fails_part_way_fails_the_job_with_the_reason_and_runs_what_was_read() {
    const LINES: usize = 30_000;
    let s = Setup::new();
    // Line 20,001 gives the key of line 5 again: the source cannot be read
    // into the job past it.
    let source = s.root.join("repeats.jsonl");
    write_source(&source, LINES, Some((20_000, 4)));
    let server = s.server("n1", 0, &[]);
    let id = submit(&server, &source);
    let job = server.wait_for(&id, "ended", is_terminal);
    assert_eq!(job["status"], "FAILED", "{job}\nserver log:\n{}", server.log_text());
    assert_eq!(job["error"]["code"], "source_failed", "{job}");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("'k00004' twice") && message.contains("record 20001"),
        "{job}"
    );
    // The 20,000 lines before it ran and keep their results.
    assert_eq!(count(&job, "total"), 20_000, "{job}");
    assert_eq!(count(&job, "completed"), 20_000, "{job}");
    assert_eq!(count(&job, "pending"), 0, "{job}");
    assert_each_line_once(&server, &id, 20_000);

    // A listing shows the reason too.
    let (status, list) = server.get("/v1/jobs?status=FAILED");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["jobs"][0]["error"], job["error"], "{list}");
}

#[test]
fn a_source_gone_when_its_job_resumes_fails_it_with_the_reason() {
    let s = Setup::new();
    let source = s.root.join("inputs.jsonl");
    write_source(&source, N, None);
    let server = s.server("n1", DELAY_MS, &[]);
    let id = submit(&server, &source);
    kill_mid_ingest(server, &id, N);
    std::fs::remove_file(&source).expect("remove the source");

    let server = s.server("n1", 0, &[]);
    let job = server.wait_for(&id, "ended after the restart", is_terminal);
    assert_eq!(job["status"], "FAILED", "{job}\nserver log:\n{}", server.log_text());
    assert_eq!(job["error"]["code"], "source_failed", "{job}");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no longer exists") && message.contains("inputs.jsonl"),
        "{job}"
    );
    // What was stored before the crash ran, once each.
    let stored = count(&job, "total");
    assert!(stored > 0 && stored < N as u64, "{job}");
    assert_eq!(count(&job, "completed"), stored, "{job}");
    assert_each_line_once(&server, &id, stored as usize);
}

/// A PostgreSQL database for one test, and a runtime to look into it.
struct Db {
    db: TestDatabase,
    rt: tokio::runtime::Runtime,
}

impl Db {
    fn new() -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let db = rt
            .block_on(TestDatabase::create())
            .unwrap_or_else(|e| panic!("a test database: {e}"));
        Db { db, rt }
    }

    /// The node holding the job's ingest claim.
    fn ingest_node(&self, id: &str) -> Option<String> {
        self.rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(self.db.url()).await.expect("connect");
            let node: Option<String> = sqlx::query_scalar("SELECT ingest_node FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .expect("the job's row");
            let _ = conn.close().await;
            node
        })
    }
}

#[test]
fn on_postgres_another_api_node_takes_over_the_source_of_one_that_died() {
    let db = Db::new();
    let s = Setup::new();
    let source = s.root.join("inputs.jsonl");
    write_source(&source, N, None);
    let shared = ["--store", db.db.url(), "--lease-s", "2"];
    // 100 ms after each of the 50 chunks: 30 chunks take 3 s at least, longer than a lease.
    let a = s.server("api-a", 100, &shared);
    let b = s.server("api-b", 0, &shared);
    let id = submit(&a, &source);

    // While "api-a" reads the source, "api-b" does not take it over (the claim
    // is renewed well within its 2 s); once "api-a" is killed, its claim
    // expires and "api-b" goes on after the inputs stored.
    let seen = a.wait_for(&id, "stored a few chunks", |j| count(j, "total") >= 5_000);
    assert_eq!(db.ingest_node(&id).as_deref(), Some("api-a"));
    let watched = b.wait_for(&id, "read on by api-a for longer than a lease", |j| {
        count(j, "total") >= 35_000
    });
    assert!(count(&seen, "total") < N as u64, "read whole too soon: {seen}");
    assert_eq!(
        db.ingest_node(&id).as_deref(),
        Some("api-a"),
        "taken over from a live node: {watched}\napi-b log:\n{}",
        b.log_text()
    );
    kill_mid_ingest(a, &id, N);
    let job = b.wait_for(&id, "ended on api-b", is_terminal);
    assert_eq!(job["status"], "COMPLETED", "{job}\napi-b log:\n{}", b.log_text());
    assert_eq!(count(&job, "total"), N as u64, "{job}");
    assert_eq!(count(&job, "completed"), N as u64, "{job}");
    assert_eq!(db.ingest_node(&id).as_deref(), Some("api-b"), "api-b read the rest");
    assert!(b.log_text().contains("resuming the job's source"));
    assert_each_line_once(&b, &id, N);
}

#[test]
fn an_object_store_source_killed_mid_ingest_resumes_after_restart() {
    let moto = Moto::start();
    moto.bucket("corpus");
    let s = Setup::new();
    let local = s.tmp.path().join("inputs.jsonl");
    write_source(&local, N, None);
    moto.upload(&local, "corpus", "jobs/day1/inputs.jsonl");
    let roots = ["--source-root", "s3://corpus/jobs"];
    let uri = "s3://corpus/jobs/day1/inputs.jsonl";

    let server = s.server_env("n1", DELAY_MS, &roots, moto.env());
    let id = submit_uri(&server, uri);
    kill_mid_ingest(server, &id, N);
    let server = s.server_env("n1", 0, &roots, moto.env());
    let job = server.wait_for(&id, "ended after the restart", is_terminal);
    assert_eq!(job["status"], "COMPLETED", "{job}\nserver log:\n{}", server.log_text());
    assert_eq!(count(&job, "total"), N as u64, "{job}");
    assert_eq!(count(&job, "completed"), N as u64, "{job}");
    assert_each_line_once(&server, &id, N);
}

#[test]
fn an_object_prefix_killed_mid_ingest_resumes_in_key_order_with_each_object_once() {
    const OBJECTS: usize = 2_500;
    let moto = Moto::start();
    moto.bucket("corpus");
    // One object per input, listed in key order: o00000.json, o00001.json, ...
    moto.boto3(&format!(
        "for i in range({OBJECTS}):\n    s3.put_object(Bucket='corpus', Key='frames/o%05d.json' % i, Body=b'[1.0]')"
    ));
    let s = Setup::new();
    let roots = ["--source-root", "s3://corpus/frames"];
    // A long pause after each chunk: the kill comes after the first of three.
    let server = s.server_env("n1", 1_000, &roots, moto.env());
    let id = submit_uri(&server, "s3://corpus/frames/");
    kill_mid_ingest(server, &id, OBJECTS);

    let server = s.server_env("n1", 0, &roots, moto.env());
    let job = server.wait_for(&id, "ended after the restart", is_terminal);
    assert!(job["error"].is_null(), "{job}\nserver log:\n{}", server.log_text());
    assert_eq!(count(&job, "total"), OBJECTS as u64, "{job}");
    assert_eq!(count(&job, "pending"), 0, "{job}");
    // Each object has one result (the echo model takes no raw bytes: each
    // fails alone, the same way), under its key, none twice, none missing.
    let rows = results(&server, &id);
    let keys: HashSet<&str> = rows.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!((rows.len(), keys.len()), (OBJECTS, OBJECTS), "each object once");
    for i in 0..OBJECTS {
        assert!(
            keys.contains(format!("o{i:05}.json").as_str()),
            "o{i:05}.json has no result"
        );
    }
}

#[test]
fn a_graceful_stop_gives_the_source_up_to_the_next_node_at_once() {
    let s = Setup::new();
    let source = s.root.join("inputs.jsonl");
    write_source(&source, N, None);
    // A claim that would outlive the test's patience unless it is given up.
    let long = ["--lease-s", "600"];
    let mut server = s.server("n1", DELAY_MS, &long);
    let id = submit(&server, &source);
    let seen = server.wait_for(&id, "stored part of its source", |j| count(j, "total") > 0);
    let (code, _) = server.terminate(std::time::Duration::from_secs(30));
    assert!(code.success(), "exit {code}: {}", server.log_text());
    assert!(count(&seen, "total") < N as u64, "read whole before the stop: {seen}");
    assert!(
        server.log_text().contains("gave up the ingest claims"),
        "{}",
        server.log_text()
    );
    drop(server);

    // Another node id: it may only take the job because the claim was given up.
    let server = s.server("n2", 0, &long);
    let job = server.wait_for(&id, "ended on the next node", is_terminal);
    assert_eq!(job["status"], "COMPLETED", "{job}\nserver log:\n{}", server.log_text());
    assert_eq!(count(&job, "total"), N as u64, "{job}");
    assert_each_line_once(&server, &id, N);
}
