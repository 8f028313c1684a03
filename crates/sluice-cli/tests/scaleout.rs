//! Many nodes on one PostgreSQL (issue 11), as a user runs them: one api node and two workers, each
//! a `sluice serve` process on the same `--store`, a real model (the MLP on ONNX Runtime) and real
//! jobs read from a source file. The database is one of its own on the test server
//! (`sluice_store::test_util`); the test looks into it only to see who holds which lease.
//!
//! - a worker killed with `kill -9` mid-job: its leases expire and the other worker runs its items;
//!   the job ends with exactly one result per input, read through the api node;
//! - a worker stopped with SIGTERM releases its leases, and the other takes them within 2 s;
//! - every node's database connection terminated mid-job (`pg_terminate_backend`): the job still
//!   completes, each input exactly once;
//! - a store URL that cannot connect: a clear error naming the host, exit non-zero.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{require_onnxruntime, run_sluice, text, write_mlp, write_mlp_inputs, ServerProc, DEADLINE};
use serde_json::{json, Value};
use sluice_store::test_util::TestDatabase;
use sqlx::Connection as _;

/// A PostgreSQL database for one test, and a runtime to query it with.
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

    fn url(&self) -> &str {
        self.db.url()
    }

    /// The first column of every row of `sql`, on the test database (or the server's
    /// maintenance database with `admin`).
    fn column(&self, sql: &str, admin: bool) -> Vec<i64> {
        let url = if admin { self.db.admin_url() } else { self.db.url() };
        self.rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            let rows: Vec<i64> = sqlx::query_scalar(sql)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let _ = conn.close().await;
            rows
        })
    }

    /// The pending items `node` holds a lease on.
    fn leased_by(&self, node: &str) -> Vec<i64> {
        self.column(
            &format!("SELECT seq FROM items WHERE state = 'pending' AND lease_node = '{node}' ORDER BY seq"),
            false,
        )
    }
}

/// `n` MLP inputs `i00000`.. in a JSONL file under `root`.
fn source(root: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(root).expect("source root");
    let path = root.join("inputs.jsonl");
    write_mlp_inputs(&path, n);
    path
}

/// One api node and two workers (`w1`, `w2`) on the store, each with its own data folder.
struct Cluster {
    _tmp: tempfile::TempDir,
    api: ServerProc,
    workers: Vec<ServerProc>,
    input: PathBuf,
}

fn cluster(db: &Db, n: usize, lease_s: u64) -> Cluster {
    require_onnxruntime();
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    // The MLP, 8 items a batch on one thread: a real model, slow enough that a 20,000-item
    // job takes a while on two workers.
    write_mlp(&models, 8, Some(1));
    let root = tmp.path().join("sources");
    let input = source(&root, n);
    let lease = lease_s.to_string();
    let node = |id: &str, role: &str| {
        ServerProc::start_with(
            &models,
            &tmp.path().join(format!("data-{id}")),
            Some(&root),
            &tmp.path().join(format!("{id}.log")),
            &[
                "--store",
                db.url(),
                "--node-id",
                id,
                "--role",
                role,
                "--lease-s",
                &lease,
            ],
        )
    };
    let api = node("api", "api");
    let workers = vec![node("w1", "worker"), node("w2", "worker")];
    Cluster {
        api,
        workers,
        input,
        _tmp: tmp,
    }
}

impl Cluster {
    fn submit(&self) -> String {
        let (status, job) = self.api.post(
            "/v1/jobs",
            &json!({"model": "mlp", "source": self.input.display().to_string()}),
        );
        assert_eq!(status, 201, "{job}");
        job["id"].as_str().expect("job id").to_owned()
    }

    fn logs(&self) -> String {
        let mut all = format!("--- api\n{}", self.api.log_text());
        for (i, w) in self.workers.iter().enumerate() {
            all.push_str(&format!("\n--- w{}\n{}", i + 1, w.log_text()));
        }
        all
    }

    /// Waits until the job is finished; its view.
    fn finished(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let job = self.api.job(id);
            if job["status"] != "SUBMITTED" && job["status"] != "IN_PROGRESS" {
                return job;
            }
            assert!(
                start.elapsed() < DEADLINE * 2,
                "job {id} never finished: {job}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every result line of the job, read from the api node.
    fn result_keys(&self, id: &str) -> Vec<String> {
        let mut keys = Vec::new();
        self.api
            .http
            .each_line(&self.api.url(&format!("/v1/jobs/{id}/results")), |line| {
                let v: Value = serde_json::from_slice(line).expect("a JSON result line");
                assert_eq!(v["state"], "done", "{v}");
                keys.push(v["key"].as_str().expect("key").to_owned());
            });
        keys
    }

    /// Checks that the job completed with exactly one result per input.
    fn assert_each_input_once(&self, id: &str, n: usize) {
        let job = self.finished(id);
        assert_eq!(job["status"], "COMPLETED", "{job}\n{}", self.logs());
        assert_eq!(job["counts"]["completed"], n, "{job}");
        assert_eq!(job["counts"]["total"], n, "{job}");
        let keys = self.result_keys(id);
        let unique: HashSet<&String> = keys.iter().collect();
        assert_eq!((keys.len(), unique.len()), (n, n), "results: each key once");
        for i in [0, n / 2, n - 1] {
            assert!(unique.contains(&format!("i{i:05}")), "i{i:05} has no result");
        }
        // Any node answers for any job alike: all state is in the store.
        for w in &self.workers {
            if w.try_get("/healthz").is_ok() {
                assert_eq!(w.job(id)["counts"], job["counts"], "another node's view of the job");
            }
        }
    }
}

fn completed(job: &Value) -> u64 {
    job["counts"]["completed"].as_u64().unwrap_or(0)
}

fn leases_of(nodes: &Value, id: &str) -> Option<u64> {
    nodes["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["leases"].as_u64()
}

#[test]
fn a_worker_killed_mid_job_loses_nothing_and_the_other_runs_its_items() {
    const N: usize = 20_000;
    let db = Db::new();
    let mut c = cluster(&db, N, 3);
    let id = c.submit();
    c.api
        .wait_for(&id, "ran 10% of its items", |j| completed(j) >= N as u64 / 10);

    // Kill w1 while it holds leases.
    let held = db.leased_by("w1");
    c.workers[0].child.kill().expect("kill -9 w1");
    c.workers[0].child.wait().expect("w1 gone");
    let still_held = db.leased_by("w1");
    let job = c.api.job(&id);
    assert!(
        completed(&job) < N as u64,
        "the job finished before the kill; the test proves nothing: {job}"
    );
    assert!(
        !held.is_empty() && !still_held.is_empty(),
        "w1 held no lease when killed"
    );
    let (_, nodes) = c.api.get("/v1/nodes");
    assert!(leases_of(&nodes, "w1").is_some_and(|l| l > 0), "{nodes}");

    c.assert_each_input_once(&id, N);
    // What w1 held when it died was run by w2, the only worker left.
    assert!(db.leased_by("w1").is_empty());
    let pending = db.column(
        &format!(
            "SELECT count(*) FROM items WHERE state <> 'done' AND seq IN ({})",
            still_held.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        ),
        false,
    );
    assert_eq!(pending, vec![0]);
    let log = c.workers[1].log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_worker_stopped_with_sigterm_hands_its_leases_over_at_once() {
    const N: usize = 8_000;
    let db = Db::new();
    // Leases of a minute: only a release (not an expiry) can hand items over within 2 s.
    let mut c = cluster(&db, N, 60);
    let id = c.submit();
    c.api
        .wait_for(&id, "ran 5% of its items", |j| completed(j) >= N as u64 / 20);
    assert!(!db.leased_by("w1").is_empty(), "w1 held no lease");
    let (status, took) = c.workers[0].terminate(Duration::from_secs(40));
    assert!(status.success(), "w1 exit {status}:\n{}", c.logs());
    let stopped = Instant::now();
    // Nothing is left leased to w1 once it exited...
    assert_eq!(db.leased_by("w1"), Vec::<i64>::new(), "w1 kept leases after SIGTERM");
    eprintln!("w1 exited {took:?} after SIGTERM");
    // ...and w2 claims the lowest pending items (what w1 released) within 2 s.
    let released = db.column(
        "SELECT min(seq) FROM items WHERE state = 'pending' AND lease_node IS NULL",
        false,
    );
    let first = released.first().copied().expect("pending items left");
    loop {
        let taken = db.column(
            &format!("SELECT count(*) FROM items WHERE seq = {first} AND (state <> 'pending' OR lease_node = 'w2')"),
            false,
        );
        if taken == vec![1] {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "w2 did not take item {first} within 2 s of w1's exit\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("w2 took the released items {:?} after w1 exited", stopped.elapsed());
    let job = c.api.job(&id);
    assert!(completed(&job) < N as u64, "the job ended before w2 took over: {job}");
    c.assert_each_input_once(&id, N);
    let (_, nodes) = c.api.get("/v1/nodes");
    assert!(
        leases_of(&nodes, "w1").is_none(),
        "a stopped node stays listed: {nodes}"
    );
}

#[test]
fn every_database_connection_terminated_mid_job_loses_and_duplicates_nothing() {
    const N: usize = 6_000;
    let db = Db::new();
    let c = cluster(&db, N, 5);
    let id = c.submit();
    c.api
        .wait_for(&id, "ran 10% of its items", |j| completed(j) >= N as u64 / 10);
    let kill_all = format!(
        "SELECT pg_terminate_backend(pid)::int::bigint FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.db.name()
    );
    let mut terminated = 0;
    for _ in 0..3 {
        terminated += db.column(&kill_all, true).len();
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(terminated >= 3, "only {terminated} connections were terminated");
    let job = c.api.job(&id);
    assert!(
        completed(&job) < N as u64,
        "the job ended before the connections were cut: {job}"
    );
    c.assert_each_input_once(&id, N);
    // Every node noticed and went on.
    for w in &c.workers {
        let log = w.log_text();
        assert!(!log.contains("panicked"), "{log}");
    }
    let (status, ready) = c.api.get("/readyz");
    assert_eq!(status, 200, "the api node is ready again: {ready}");
}

#[test]
fn a_store_that_cannot_be_reached_is_named_and_exits_non_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // Port 9 (discard) on loopback: nothing listens there.
    let out = run_sluice(&[
        "serve",
        "--models",
        "models",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--store",
        "postgres://sluice:s3cret-pw@127.0.0.1:9/jobs",
        "--node-id",
        "w9",
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "started without its store:\n{err}");
    assert!(err.contains("127.0.0.1:9"), "the host is not named:\n{err}");
    assert!(err.to_lowercase().contains("refused"), "the cause is not named:\n{err}");
    assert!(!err.contains("s3cret-pw"), "the password leaked:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}
