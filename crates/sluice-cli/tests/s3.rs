//! `sluice run` on inputs in an S3-compatible object store (moto on
//! loopback, buckets and objects made with boto3): the same results as the
//! same data read from local files, bad URIs named with a non-zero exit,
//! and credentials never printed.

mod common;

use std::collections::HashMap;
use std::process::{Output, Stdio};

use common::moto::{Moto, SECRET_KEY};
use common::{assert_success, repo_model_file, repo_root, require_onnxruntime, sluice_cmd, text, ServerProc};
use serde_json::Value;

fn run(moto: &Moto, args: &[&str]) -> Output {
    sluice_cmd()
        .args(args)
        .envs(moto.env())
        .stdin(Stdio::null())
        .output()
        .expect("cannot start the sluice binary")
}

/// Output lines by id, each id once.
fn results(stdout: &[u8]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for line in text(stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line}: {e}"));
        let id = v["id"].as_str().unwrap_or_else(|| panic!("no id: {line}")).to_string();
        assert!(out.insert(id.clone(), v).is_none(), "{id} twice");
    }
    out
}

fn assert_no_secret(o: &Output) {
    for stream in [&o.stdout, &o.stderr] {
        assert!(!text(stream).contains(SECRET_KEY), "the secret key was printed");
    }
}

fn model_dir(name: &str) -> String {
    let toml = repo_model_file(name, "model.toml");
    toml.parent().expect("model folder").display().to_string()
}

fn cosine(a: &Value, b: &Value) -> f64 {
    let v = |x: &Value| -> Vec<f64> {
        x["output"]["embedding"]
            .as_array()
            .unwrap_or_else(|| panic!("no embedding: {x}"))
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    let (a, b) = (v(a), v(b));
    assert_eq!(a.len(), 384);
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(&a) * n(&b))
}

/// A moto server with a bucket `corpus`, and a local JSONL file of the
/// first `n` real texts of data/texts/sample.jsonl to upload to it.
fn corpus(n: usize) -> (Moto, tempfile::TempDir, std::path::PathBuf) {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("corpus");
    let dir = tempfile::tempdir().expect("tempdir");
    let sample = std::fs::read_to_string(repo_root().join("data/texts/sample.jsonl")).expect("sample.jsonl");
    let local = dir.path().join("texts.jsonl");
    std::fs::write(&local, sample.lines().take(n).collect::<Vec<_>>().join("\n") + "\n").expect("write");
    (moto, dir, local)
}

#[test]
fn texts_in_s3_give_the_same_embeddings_as_the_local_file() {
    let (moto, _dir, local) = corpus(600);
    moto.upload(&local, "corpus", "social/2026-12-07/texts.jsonl");
    let model = model_dir("minilm-l6");

    let from_file = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            local.to_str().expect("utf-8"),
            "-q",
        ],
    );
    assert_success(&from_file, "sluice run on the local file");
    let from_s3 = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            "s3://corpus/social/2026-12-07/texts.jsonl",
            "-q",
        ],
    );
    assert_success(&from_s3, "sluice run on s3://");
    assert_no_secret(&from_s3);

    let (a, b) = (results(&from_file.stdout), results(&from_s3.stdout));
    assert_eq!(a.len(), 600);
    let mut keys: Vec<_> = a.keys().collect();
    keys.sort();
    let mut keys_s3: Vec<_> = b.keys().collect();
    keys_s3.sort();
    assert_eq!(keys, keys_s3, "the same ids from S3 as from the file");
    for (id, v) in &a {
        let c = cosine(v, &b[id]);
        assert!(c > 0.9999, "{id}: cosine {c}");
    }
}

/// Issue 13: video in an object store: a prefix of videos (copied to a
/// temporary file each, decoded by ffmpeg) gives the same frames, ids and
/// detections as the same files in a local folder; a cut MP4 fails alone.
#[test]
fn a_prefix_of_videos_in_s3_gives_the_frames_of_the_local_files() {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("footage");
    let local = tempfile::tempdir().expect("tempdir");
    let vtest = repo_root().join("data/video/vtest.avi");
    std::fs::copy(&vtest, local.path().join("a.avi")).expect("copy");
    let mp4 = std::fs::read(repo_root().join("data/video/bigbuckbunny.mp4")).expect("mp4");
    std::fs::write(local.path().join("b-cut.mp4"), &mp4[..mp4.len() / 2]).expect("cut");
    moto.upload(&local.path().join("a.avi"), "footage", "drone/day2/a.avi");
    moto.upload(&local.path().join("b-cut.mp4"), "footage", "drone/day2/b-cut.mp4");
    let model = model_dir("nanodet-m");
    let args = |input: &str| run(&moto, &["run", "--model", &model, "--input", input, "--fps", "1", "-q"]);
    let from_disk = args(local.path().to_str().expect("utf-8"));
    assert_success(&from_disk, "sluice run on the local videos");
    let from_s3 = args("s3://footage/drone/day2/");
    assert_success(&from_s3, "sluice run on the prefix of videos");
    let (a, b) = (results(&from_disk.stdout), results(&from_s3.stdout));
    assert_eq!(a.len(), 21, "20 frames at 1 fps and the cut video's error");
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect());
    for (id, v) in &a {
        assert_eq!(
            v["output"], b[id]["output"],
            "{id}: the same frame, the same detections"
        );
    }
    assert!(b["b-cut.mp4"]["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("not a video")));
    assert_eq!(b["a.avi@12.000"]["video"], "a.avi");
}

#[test]
fn an_image_prefix_in_s3_is_read_like_a_local_folder() {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("footage");
    let images = repo_root().join("data/images");
    let files = moto.upload_images("footage", "drone/day1/");
    // Not an image: it fails alone, like a corrupt local file.
    let junk = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(junk.path(), b"not an image").expect("write");
    moto.upload(junk.path(), "footage", "drone/day1/zz-broken.jpg");
    let model = model_dir("nanodet-m");

    let local = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            images.to_str().expect("utf-8"),
            "-q",
        ],
    );
    assert_success(&local, "sluice run on data/images");
    let s3 = run(
        &moto,
        &["run", "--model", &model, "--input", "s3://footage/drone/day1/", "-q"],
    );
    assert_success(&s3, "sluice run on the prefix");
    let (a, b) = (results(&local.stdout), results(&s3.stdout));
    assert_eq!(b.len(), files.len() + 1, "{}", text(&s3.stdout));
    for (id, v) in &a {
        // Keys are relative to the folder / the prefix, so they match.
        let w = b.get(id).unwrap_or_else(|| panic!("{id} missing from the S3 run"));
        let labels = |x: &Value| -> Vec<String> {
            x["output"]["detections"]
                .as_array()
                .unwrap_or_else(|| panic!("no detections: {x}"))
                .iter()
                .map(|d| d["label"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(labels(v), labels(w), "{id}");
    }
    assert_eq!(
        b["zz-broken.jpg"]["error"]["code"], "invalid_input",
        "{}",
        b["zz-broken.jpg"]
    );
}

#[test]
fn missing_buckets_and_keys_are_named_and_exit_non_zero() {
    let moto = Moto::start();
    moto.bucket("present");
    let model = model_dir("noop");
    for (uri, needle) in [
        ("s3://absent-bucket/texts.jsonl", "NoSuchBucket"),
        ("s3://present/no/such/key.jsonl", "no object has this key"),
    ] {
        let o = run(&moto, &["run", "--model", &model, "--input", uri, "-q"]);
        assert!(!o.status.success(), "{uri}: should fail");
        let err = text(&o.stderr);
        assert!(err.contains(uri) && err.contains(needle), "{uri}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_no_secret(&o);
    }
}

#[test]
fn a_job_reads_its_source_from_s3_under_an_allowed_prefix() {
    let (moto, dir, local) = corpus(300);
    moto.upload(&local, "corpus", "social/day1/texts.jsonl");
    moto.upload(&local, "corpus", "private/texts.jsonl");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let log = dir.path().join("server.log");
    let server = ServerProc::start_env(
        &repo_root().join("models"),
        &data,
        None,
        &log,
        &["--source-root", "s3://corpus/social"],
        &moto.env(),
    );

    let (status, job) = server.post(
        "/v1/jobs",
        &serde_json::json!({"model": "minilm-l6", "source": "s3://corpus/social/day1/texts.jsonl"}),
    );
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("job id").to_string();
    let done = server.wait_for(&id, "ended", |j| {
        matches!(
            j["status"].as_str(),
            Some("COMPLETED" | "CANCELED" | "TIMEDOUT" | "FAILED")
        )
    });
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", server.log_text());
    assert_eq!(done["counts"]["completed"], 300, "{done}");

    // The same embeddings as `sluice run` on the local copy.
    let run = run(
        &moto,
        &[
            "run",
            "--model",
            &model_dir("minilm-l6"),
            "--input",
            local.to_str().expect("utf-8"),
            "-q",
        ],
    );
    assert_success(&run, "sluice run on the local file");
    let want = results(&run.stdout);
    let mut n = 0;
    server
        .http
        .each_line(&server.url(&format!("/v1/jobs/{id}/results")), |line| {
            let v: Value = serde_json::from_slice(line).expect("result line");
            let key = v["key"].as_str().expect("key");
            let c = cosine(&v, &want[key]);
            assert!(c > 0.9999, "{key}: cosine {c}");
            n += 1;
        });
    assert_eq!(n, 300);

    // Outside the allowed prefix, and a missing object under it.
    for (source, code) in [
        ("s3://corpus/private/texts.jsonl", 403),
        ("s3://corpus/social/../private/texts.jsonl", 403),
        ("s3://corpus/social/day2/missing.jsonl", 400),
    ] {
        let (status, body) = server.post("/v1/jobs", &serde_json::json!({"model": "minilm-l6", "source": source}));
        assert_eq!(status, code, "{source}: {body}");
        assert!(
            body.to_string().contains(source),
            "{source}: the error names it: {body}"
        );
        assert!(!body.to_string().contains(SECRET_KEY));
    }
    assert!(
        !server.log_text().contains(SECRET_KEY),
        "the secret key is in the server log"
    );
}
