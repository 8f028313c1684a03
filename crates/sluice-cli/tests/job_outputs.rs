//! Jobs that write their results to an S3-compatible object store (moto on
//! loopback) as JSONL and Parquet parts, read back with boto3, pyarrow and
//! DuckDB: the same outputs as a local `sluice run`, each input exactly once
//! over all parts, also after `kill -9` of the server mid-job; outputs only
//! under `--output-root`; a missing bucket is a 400 naming it.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::moto::{Moto, SECRET_KEY};
use common::outputs::{assert_close, by_id, corpus, floats, labels, model_dir, read_back, text_ids_model};
use common::{assert_success, repo_root, require_onnxruntime, sluice_cmd, ServerProc, DEADLINE};
use serde_json::{json, Value};

/// moto with the buckets `corpus` and `results`, `n` real texts in
/// `s3://corpus/social/texts.jsonl` (and locally), and the text-ids model in
/// a models folder.
struct Fixture {
    moto: Moto,
    work: tempfile::TempDir,
    texts: std::path::PathBuf,
    models: std::path::PathBuf,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let moto = Moto::start();
        moto.bucket("corpus");
        moto.bucket("results");
        let work = tempfile::tempdir().expect("tempdir");
        let texts = corpus(work.path(), n);
        moto.upload(&texts, "corpus", "social/texts.jsonl");
        let models = work.path().join("models");
        text_ids_model(&models);
        Fixture {
            moto,
            work,
            texts,
            models,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.work.path().join(name)
    }

    /// [`server`] on this fixture, with its data in `data` and its log in `log`.
    fn server(&self, data: &str, log: &str, env: &[(&str, String)]) -> ServerProc {
        server(&self.moto, &self.models, &self.path(data), &self.path(log), env)
    }
}

/// `sluice run` on local files (the baseline); its results by id.
fn local_run(model: &str, input: &Path, out: &Path) -> HashMap<String, Value> {
    let o = sluice_cmd()
        .args(["run", "--model", model, "--input"])
        .arg(input)
        .arg("--output")
        .arg(out)
        .arg("-q")
        .stdin(Stdio::null())
        .output()
        .expect("cannot start the sluice binary");
    assert_success(&o, "local run");
    by_id(&std::fs::read_to_string(out).expect("baseline"))
}

/// `sluice serve` on `models` with moto's environment, S3 sources under
/// `s3://corpus`, outputs under `s3://results/jobs`, parts of 50 kB.
fn server(moto: &Moto, models: &Path, data: &Path, log: &Path, env: &[(&str, String)]) -> ServerProc {
    let mut all: Vec<(&str, String)> = moto.env();
    all.push(("SLUICE_LOG", "warn,sluice_jobs=info".to_owned()));
    all.extend(env.iter().cloned());
    ServerProc::start_env(
        models,
        data,
        None,
        log,
        &[
            "--source-root",
            "s3://corpus",
            "--output-root",
            "s3://results/jobs",
            "--output-part-mb",
            "0.05",
        ],
        &all,
    )
}

/// Submits a job reading `source` with an output; its id.
fn submit(server: &ServerProc, model: &str, source: &str, uri: &str, format: &str) -> String {
    let body = json!({"model": model, "source": source, "output": {"uri": uri, "format": format}});
    let (status, job) = server.post("/v1/jobs", &body);
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["output"]["uri"], uri, "{job}");
    assert_eq!(job["output"]["state"], "writing", "{job}");
    job["id"].as_str().expect("id").to_string()
}

/// Waits until the job's output is written; the job.
fn wait_written(server: &ServerProc, id: &str) -> Value {
    server.wait_for(id, "wrote its output", |job| {
        assert_ne!(job["output"]["state"], "failed", "{job}");
        job["output"]["state"] == "written"
    })
}

/// Checks the embeddings of `rows` (pyarrow's rows or JSONL lines) against
/// the local run, each id once.
fn assert_rows_match(rows: &[Value], want: &HashMap<String, Value>, parquet: bool) {
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        let id = r["id"].as_str().expect("id");
        assert!(seen.insert(id.to_string()), "{id} twice over the parts");
        let emb = if parquet {
            floats(&r["embedding"])
        } else {
            floats(&r["output"]["embedding"])
        };
        assert_close(&emb, &floats(&want[id]["output"]["embedding"]), id);
    }
}

#[test]
fn jobs_write_parquet_and_jsonl_parts_to_s3_with_the_results_of_a_local_run() {
    require_onnxruntime();
    let fx = Fixture::new(10_000);
    let (moto, work, local, models) = (&fx.moto, fx.work.path(), &fx.texts, &fx.models);
    let files = moto.upload_images("corpus", "footage/day1/");
    let texts_model = models.join("text-ids").display().to_string();
    let detector = model_dir("nanodet-m");
    std::os::unix::fs::symlink(&detector, models.join("nanodet-m")).expect("link the detector");
    let want = local_run(&texts_model, local, &work.join("local.jsonl"));
    assert_eq!(want.len(), 10_000);
    let want_det = local_run(&detector, &repo_root().join("data/images"), &work.join("det.jsonl"));

    let server = fx.server("data", "serve.log", &[]);
    let parquet = submit(
        &server,
        "text-ids",
        "s3://corpus/social/texts.jsonl",
        "s3://results/jobs/parquet/",
        "parquet",
    );
    let jsonl = submit(
        &server,
        "text-ids",
        "s3://corpus/social/texts.jsonl",
        "s3://results/jobs/jsonl/",
        "jsonl",
    );
    let images = submit(
        &server,
        "nanodet-m",
        "s3://corpus/footage/day1/",
        "s3://results/jobs/detections/",
        "parquet",
    );

    for (id, prefix, is_parquet) in [(&parquet, "jobs/parquet/", true), (&jsonl, "jobs/jsonl/", false)] {
        let job = wait_written(&server, id);
        assert_eq!(job["status"], "COMPLETED", "{job}");
        assert_eq!(job["output"]["rows"], 10_000, "{job}");
        let got = read_back(moto, work, "results", prefix);
        let manifest = &got["manifest"];
        assert_eq!(manifest["model"], "text-ids");
        assert_eq!(manifest["version"], "1", "the served version");
        assert_eq!(manifest["complete"], true);
        assert_eq!(manifest["counts"], json!({"total": 10_000, "ok": 10_000, "failed": 0}));
        assert!(
            manifest["parts"].as_array().expect("parts").len() > 1,
            "parts roll: {manifest}"
        );
        let rows = got["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 10_000);
        assert_rows_match(rows, &want, is_parquet);
        if is_parquet {
            let schema: Vec<(String, String)> = serde_json::from_value(got["schema"].clone()).expect("schema");
            let names: Vec<&str> = schema.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["id", "embedding", "error_code", "error_message"]);
            for row in got["duckdb"].as_array().expect("duckdb") {
                assert_eq!(row[0], row[1], "rows == distinct ids: {row}");
            }
        }
        // The results API works as before, beside the output.
        let (status, page) = server.get(&format!("/v1/jobs/{id}/results?limit=5"));
        assert_eq!(status, 200, "{page}");
    }

    wait_written(&server, &images);
    let got = read_back(moto, work, "results", "jobs/detections/");
    let rows = got["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), files.len());
    for r in rows {
        let id = r["id"].as_str().expect("id");
        let base = want_det
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not in the local run"));
        assert_eq!(labels(&r["detections"]), labels(&base["output"]["detections"]), "{id}");
    }
    assert!(!server.log_text().contains(SECRET_KEY), "the secret key was logged");
}

#[test]
fn outputs_outside_the_roots_or_in_a_missing_bucket_are_refused_with_the_reason() {
    let fx = Fixture::new(10);
    let server = fx.server("data", "serve.log", &[]);
    let post = |output: Value| {
        server.post(
            "/v1/jobs",
            &json!({"model": "text-ids", "inputs": {"a": "hello"}, "output": output}),
        )
    };
    let (status, body) = post(json!({"uri": "s3://results/elsewhere/", "format": "parquet"}));
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("output root"), "{body}");
    let (status, body) = post(json!({"uri": "s3://results/jobs/../x/"}));
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(json!({"uri": "s3://results/jobs/a/", "format": "csv"}));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("csv"), "{body}");
    let (status, body) = post(json!({"uri": "/tmp/anywhere"}));
    assert_eq!(status, 403, "{body}");

    // A root in a bucket that does not exist: 400, naming the bucket.
    let other = ServerProc::start_env(
        &fx.models,
        &fx.path("data2"),
        None,
        &fx.path("serve2.log"),
        &["--output-root", "s3://no-such-bucket/out"],
        &fx.moto.env(),
    );
    let (status, body) = other.post(
        "/v1/jobs",
        &json!({"model": "text-ids", "inputs": {"a": "hello"}, "output": {"uri": "s3://no-such-bucket/out/x/"}}),
    );
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(text.contains("no-such-bucket"), "{text}");
    assert!(!text.contains(SECRET_KEY), "{text}");

    // `sluice jobs submit --write-to` uploads local inputs and has the server write the parts.
    let o = sluice_cmd()
        .args([
            "jobs",
            "--server",
            &server.base,
            "submit",
            "--model",
            "text-ids",
            "--input",
        ])
        .arg(&fx.texts)
        .args([
            "--write-to",
            "s3://results/jobs/cli/",
            "--write-format",
            "parquet",
            "--wait",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("sluice jobs submit");
    assert_success(&o, "jobs submit --write-to");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("10 results written to s3://results/jobs/cli/"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = read_back(&fx.moto, fx.work.path(), "results", "jobs/cli/");
    assert_eq!(got["manifest"]["counts"]["total"], 10);
    assert_eq!(got["rows"].as_array().map(Vec::len), Some(10));

    // A place that already holds an output is refused: two jobs never mix their parts.
    let (status, first) = post(json!({"uri": "s3://results/jobs/once/"}));
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().expect("id");
    wait_written(&server, id);
    let (status, body) = post(json!({"uri": "s3://results/jobs/once/"}));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("_manifest.json"), "{body}");
}

/// Every object under `s3://results/<prefix>`: the rows of all JSONL parts
/// and error parts (whatever the manifest says), and the manifest.
fn all_objects(moto: &Moto, work: &Path, prefix: &str) -> (Vec<Value>, Value) {
    let report = work.join("all.json");
    moto.boto3(&format!(
        r#"
import json
rows, manifest, names = [], None, []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="results", Prefix={prefix:?}):
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket="results", Key=o["Key"])["Body"].read().decode()
        name = o["Key"][len({prefix:?}):]
        names.append(name)
        if name == "_manifest.json":
            manifest = json.loads(body)
        else:
            rows += [dict(json.loads(l), _file=name) for l in body.splitlines() if l]
json.dump({{"rows": rows, "manifest": manifest, "names": names}}, open({report:?}, "w"))
"#,
        report = report.display().to_string(),
    ));
    let got: Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
    let rows = got["rows"].as_array().cloned().unwrap_or_default();
    (rows, got["manifest"].clone())
}

#[test]
fn a_job_output_killed_mid_job_has_each_input_once_over_all_parts_after_restart() {
    require_onnxruntime();
    const N: usize = 12_000;
    let fx = Fixture::new(N);
    let (moto, work) = (&fx.moto, fx.work.path());
    // One malformed line: it fails alone, into the error parts.
    let mut body = std::fs::read_to_string(&fx.texts).expect("corpus");
    body.push_str("{\"id\": \"broken\", \"text\": \n");
    std::fs::write(&fx.texts, body).expect("write");
    moto.upload(&fx.texts, "corpus", "social/texts.jsonl");
    // Ingestion pauses after each chunk of 1,000 inputs: results arrive over seconds.
    let slow = [("SLUICE_TEST_INGEST_DELAY_MS", "400".to_owned())];
    let mut first = fx.server("data", "serve.log", &slow);
    let id = submit(
        &first,
        "text-ids",
        "s3://corpus/social/texts.jsonl",
        "s3://results/jobs/killed/",
        "jsonl",
    );
    // Kill once some parts are committed, well before the job ends.
    let start = Instant::now();
    let seen = loop {
        let job = first.job(&id);
        if job["output"]["rows"].as_u64().unwrap_or(0) >= 2_000 {
            break job;
        }
        assert!(start.elapsed() < DEADLINE, "no part committed: {job}");
        std::thread::sleep(Duration::from_millis(20));
    };
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();
    assert_ne!(seen["status"], "COMPLETED", "the job ended before the kill: {seen}");
    let (before, _) = all_objects(moto, work, "jobs/killed/");
    eprintln!(
        "killed with {} rows in committed parts ({} rows in objects)",
        seen["output"]["rows"],
        before.len()
    );
    // The crash window between a part's commit and its checkpoint: a part the
    // checkpoint does not list, holding rows that are written again after the
    // restart. The resumed writer must not keep it.
    let next = before
        .iter()
        .filter_map(|r| r["_file"].as_str())
        .filter(|f| f.starts_with("part-"))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let orphan: String = before
        .iter()
        .take(50)
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().expect("row").remove("_file");
            format!("{r}\n")
        })
        .collect();
    let orphan_file = work.join("orphan.jsonl");
    std::fs::write(&orphan_file, orphan).expect("orphan");
    // Under the next part's name (written over), and under a name no writer reaches (removed).
    for n in [next, 90_000] {
        moto.upload(&orphan_file, "results", &format!("jobs/killed/part-{n:05}.jsonl"));
    }

    let second = fx.server("data", "serve.log", &[]);
    let job = wait_written(&second, &id);
    assert_eq!(job["status"], "COMPLETED", "{job}");
    let (rows, manifest) = all_objects(moto, work, "jobs/killed/");
    assert_eq!(
        manifest["counts"],
        json!({"total": N + 1, "ok": N, "failed": 1}),
        "{manifest}"
    );
    assert_eq!(manifest["complete"], true);
    // Exactly one row per input over every object under the prefix.
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *count.entry(r["id"].as_str().expect("id").to_string()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "inputs in more than one row: {twice:?}");
    assert_eq!(count.len(), N + 1, "every input has its row");
    let failed: Vec<&Value> = rows.iter().filter(|r| r.get("error").is_some()).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["_file"].as_str().is_some_and(|f| f.starts_with("errors-")));
    assert_eq!(second.job(&id)["output"]["rows"], N + 1);
}
