//! The `sluice` binary as a user runs it, from the repository root, on the
//! real models and data: bulk runs over JSONL, plain text, CSV and image
//! folders (one output line per input, bad inputs failing alone), model
//! listing and inspection, the errors a user can hit, and `bench`.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SETUP: &str = "run `bash scripts/setup.sh` in the repository root first";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Fails (never skips) when ONNX Runtime or a model's built files are missing.
fn require_model(name: &str) -> PathBuf {
    if let Err(e) = sluice_onnx::locate_library() {
        panic!("ONNX Runtime is not installed ({e}); {SETUP}");
    }
    let dir = repo_root().join("models").join(name);
    let spec = sluice_core::ModelSpec::load(&dir).unwrap_or_else(|e| panic!("models/{name}: {e}"));
    if let Some(file) = &spec.model_file {
        let path = spec.resolve(file);
        assert!(path.is_file(), "{} is missing; {SETUP}", path.display());
    }
    dir
}

/// Runs `sluice args...` from the repository root, with `env` set.
fn sluice_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).current_dir(repo_root());
    for var in [
        "SLUICE_MODELS",
        "SLUICE_THREADS",
        "SLUICE_DEVICE",
        "SLUICE_LOG",
        "SLUICE_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot start the sluice binary")
}

fn sluice(args: &[&str]) -> Output {
    sluice_env(args, &[])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_success(o: &Output) {
    assert!(
        o.status.success(),
        "sluice failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

fn assert_failure(o: &Output) {
    assert!(
        !o.status.success(),
        "sluice should have failed:\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Reads the output JSONL, checking one line per id; returns lines by id.
fn read_results(path: &Path) -> HashMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = HashMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad output line {line}: {e}"));
        let id = v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {line}"))
            .to_string();
        assert!(out.insert(id.clone(), v).is_none(), "id {id} written twice");
    }
    out
}

/// The embedding of a result line.
fn embedding(v: &serde_json::Value) -> Vec<f64> {
    v["output"]["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Asserts a result line is an error with `code` and a message containing `needle`.
fn assert_error(v: &serde_json::Value, code: &str, needle: &str) {
    let err = &v["error"];
    assert_eq!(err["code"], code, "{v}");
    let msg = err["message"].as_str().unwrap_or_else(|| panic!("no message in {v}"));
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    assert!(v.get("output").is_none(), "{v}");
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn run_jsonl_writes_one_line_per_input_id_and_bad_lines_fail_alone() {
    let model = require_model("minilm-l6");
    let sample = std::fs::read_to_string(repo_root().join("data/texts/sample.jsonl")).expect("data/texts/sample.jsonl");
    let mut lines: Vec<String> = sample.lines().take(297).map(str::to_string).collect();
    assert_eq!(lines.len(), 297, "data/texts/sample.jsonl is too short");
    lines.insert(9, r#"{"id": "broken", "text": "no closing quote}"#.to_string()); // line 10
    lines.insert(99, r#"{"id": "empty-text", "text": ""}"#.to_string());
    lines.insert(
        199,
        r#"{"id": "no-text", "body": "the payload is under another key"}"#.to_string(),
    );
    assert_eq!(lines.len(), 300);
    let mut expected: HashSet<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["id"].as_str().expect("id").to_string())
        .collect();
    expected.insert("10".into());
    assert_eq!(expected.len(), 300, "ids must be unique");

    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write input");
    let output = dir.path().join("out.jsonl");
    let o = sluice(&[
        "run",
        "--model",
        path_str(&model),
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "-q",
    ]);
    assert_success(&o);

    let results = read_results(&output);
    let got: HashSet<String> = results.keys().cloned().collect();
    assert_eq!(got, expected);
    assert_error(&results["10"], "invalid_input", "not valid JSON");
    assert_error(&results["empty-text"], "invalid_input", "empty text");
    assert_error(&results["no-text"], "invalid_input", "'text'");
    let mut ok = 0;
    for (id, v) in &results {
        if ["10", "empty-text", "no-text"].contains(&id.as_str()) {
            continue;
        }
        assert!(v.get("error").is_none(), "{v}");
        let e = embedding(v);
        assert_eq!(e.len(), 384, "{id}");
        ok += 1;
    }
    assert_eq!(ok, 297);
    assert!(
        stderr(&o).contains("300 items (297 ok, 3 failed)"),
        "summary: {}",
        stderr(&o)
    );
}

/// Every JSON line of every file `files` of the folder `dir`, by id.
fn read_parts(dir: &Path, files: &[serde_json::Value]) -> HashMap<String, serde_json::Value> {
    let mut all = HashMap::new();
    for f in files {
        let name = f["file"].as_str().expect("part file name");
        for (id, v) in read_results(&dir.join(name)) {
            assert!(all.insert(id.clone(), v).is_none(), "{id} is in two parts");
        }
    }
    all
}

#[test]
fn run_into_a_folder_writes_rolling_parts_errors_apart_and_a_manifest() {
    let model = require_model("minilm-l6");
    let sample = std::fs::read_to_string(repo_root().join("data/texts/sample.jsonl")).expect("data/texts/sample.jsonl");
    let mut lines: Vec<String> = sample.lines().take(80).map(str::to_string).collect();
    lines.insert(5, r#"{"id": "empty-text", "text": ""}"#.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write input");
    let file = dir.path().join("one.jsonl");
    let folder = dir.path().join("parts");
    let folder_arg = format!("{}/", folder.display());
    let run = |output: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            path_str(&model),
            "--input",
            path_str(&input),
            "--output",
            output,
            "-q",
        ];
        args.extend_from_slice(extra);
        sluice(&args)
    };
    assert_success(&run(path_str(&file), &[]));
    // ~4 KB per embedding line: 20 KB parts hold about five results each.
    assert_success(&run(&folder_arg, &["--max-part-bytes", "20000"]));

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("_manifest.json")).expect("_manifest.json"))
            .expect("manifest is JSON");
    assert_eq!(manifest["model"], "minilm-l6", "{manifest}");
    assert_eq!(manifest["complete"], true, "{manifest}");
    assert_eq!(
        manifest["counts"],
        serde_json::json!({"total": 81, "ok": 80, "failed": 1})
    );
    let parts = manifest["parts"].as_array().expect("parts");
    assert!(parts.len() >= 10, "parts roll at 20 KB: {manifest}");
    for p in &parts[..parts.len() - 1] {
        assert!(
            p["bytes"].as_u64().is_some_and(|b| b >= 20_000),
            "a part closes at 20 KB: {p}"
        );
    }
    let results = read_parts(&folder, parts);
    let errors = read_parts(&folder, manifest["error_parts"].as_array().expect("error_parts"));
    assert_eq!(errors.len(), 1);
    assert_error(&errors["empty-text"], "invalid_input", "empty text");

    // The same results as a run into one file, each id once.
    let single = read_results(&file);
    assert_eq!(single.len(), 81);
    assert_eq!(results.len(), 80);
    for (id, v) in &results {
        let c = cosine(&embedding(v), &embedding(&single[id]));
        assert!(c > 0.9999, "{id}: cosine {c}");
    }

    // A second run into the same folder would mix two runs: refused, and named.
    let again = run(&folder_arg, &[]);
    assert_failure(&again);
    assert!(stderr(&again).contains("already holds results"), "{}", stderr(&again));
}

#[test]
fn run_reads_plain_text_lines_and_csv_with_the_same_embeddings() {
    let model = require_model("minilm-l6");
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Batching, padding and grouping by length.",
        "Ein kurzer deutscher Satz.",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    // Plain text: one text per line; blank lines are skipped, ids are line numbers.
    let txt = dir.path().join("in.txt");
    std::fs::write(&txt, format!("{}\n\n{}\n{}\n", texts[0], texts[1], texts[2])).expect("write txt");
    // CSV: an id,text header; the text with a comma is quoted.
    let csv = dir.path().join("in.csv");
    let mut f = std::fs::File::create(&csv).expect("csv");
    writeln!(f, "id,text").expect("csv");
    for (i, t) in texts.iter().enumerate() {
        writeln!(f, "row-{i},\"{t}\"").expect("csv");
    }
    drop(f);

    let mut runs = Vec::new();
    for input in [&txt, &csv] {
        let out = dir.path().join(format!(
            "{}.out.jsonl",
            input.file_name().expect("name").to_string_lossy()
        ));
        let o = sluice(&[
            "run",
            "--model",
            path_str(&model),
            "--input",
            path_str(input),
            "--output",
            path_str(&out),
            "-q",
        ]);
        assert_success(&o);
        runs.push(read_results(&out));
    }
    let (plain, csv) = (&runs[0], &runs[1]);
    let plain_ids: HashSet<&str> = plain.keys().map(String::as_str).collect();
    // Ids are physical line numbers: the blank line 2 is skipped but counted.
    assert_eq!(plain_ids, HashSet::from(["1", "3", "4"]));
    let csv_ids: HashSet<&str> = csv.keys().map(String::as_str).collect();
    assert_eq!(csv_ids, HashSet::from(["row-0", "row-1", "row-2"]));
    for i in 0..texts.len() {
        let line = ["1", "3", "4"][i];
        let a = embedding(&plain[line]);
        let b = embedding(&csv[&format!("row-{i}")]);
        assert_eq!(a.len(), 384);
        assert!(
            cosine(&a, &b) > 0.99999,
            "text {i} differs between plain text and CSV input"
        );
    }
}

#[test]
fn run_over_an_image_folder_detects_objects_and_a_corrupt_file_fails_alone() {
    let model = require_model("nanodet-m");
    let dir = tempfile::tempdir().expect("tempdir");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("mkdir");
    for name in ["dog.jpg", "kite.jpg", "chelsea.png"] {
        let src = repo_root().join("data/images").join(name);
        assert!(src.is_file(), "{} is missing", src.display());
        std::fs::copy(&src, images.join(name)).expect("copy image");
    }
    std::fs::write(
        images.join("corrupt.jpg"),
        b"\xff\xd8\xff\xe0 this is not really a JPEG",
    )
    .expect("write");
    let out = dir.path().join("detections.jsonl");
    let o = sluice(&[
        "run",
        "--model",
        path_str(&model),
        "--input",
        path_str(&images),
        "--output",
        path_str(&out),
        "-q",
    ]);
    assert_success(&o);
    let results = read_results(&out);
    let by_name: HashMap<String, &serde_json::Value> = results
        .iter()
        .map(|(id, v)| {
            let name = Path::new(id)
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, v)
        })
        .collect();
    let mut names: Vec<&str> = by_name.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["chelsea.png", "corrupt.jpg", "dog.jpg", "kite.jpg"]);
    assert_error(by_name["corrupt.jpg"], "invalid_input", "cannot decode image");
    for name in ["chelsea.png", "dog.jpg", "kite.jpg"] {
        let v = by_name[name];
        assert!(v["output"]["detections"].is_array(), "{name}: {v}");
    }
    let dog: HashSet<&str> = by_name["dog.jpg"]["output"]["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|d| d["label"].as_str().expect("label"))
        .collect();
    assert!(dog.contains("dog") && dog.contains("bicycle"), "{dog:?}");
}

#[test]
fn models_list_shows_the_repository_and_inspect_shows_the_graph_inputs() {
    let repo_models = repo_root().join("models");
    let o = sluice(&["models", "list", "--models", path_str(&repo_models)]);
    assert_success(&o);
    let out = stdout(&o);
    for name in ["minilm-l6", "nanodet-m", "noop", "mlp"] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name} not listed:\n{out}");
    }
    assert!(!out.contains("ERROR"), "{out}");

    let nanodet = require_model("nanodet-m");
    let o = sluice(&["models", "inspect", path_str(&nanodet)]);
    assert_success(&o);
    let out = stdout(&o);
    let input = out
        .lines()
        .find(|l| l.trim_start().starts_with("input_1:0"))
        .unwrap_or_else(|| panic!("input_1:0 not shown:\n{out}"));
    assert!(
        input.contains("float32") && input.contains("[?, 3, 416, 416]"),
        "{input}"
    );
}

/// A copy of models/noop named `name` under `dir`, with `line` added after its `max_batch_size`.
fn noop_with(dir: &Path, name: &str, line: &str) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir(&model).expect("mkdir");
    let toml = std::fs::read_to_string(repo_root().join("models/noop/model.toml")).expect("noop model.toml");
    let toml = toml.replace("max_batch_size = 64", &format!("max_batch_size = 64\n{line}"));
    std::fs::write(model.join("model.toml"), toml).expect("write model.toml");
    model
}

#[test]
fn unknown_key_in_model_toml_is_named_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = noop_with(dir.path(), "typo", "max_batch_sise = 8");
    let o = sluice(&["models", "inspect", path_str(&model)]);
    assert_failure(&o);
    assert!(stderr(&o).contains("max_batch_sise"), "{}", stderr(&o));

    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "[1.0, 2.0]\n").expect("write");
    let o = sluice(&["run", "--model", path_str(&model), "--input", path_str(&input), "-q"]);
    assert_failure(&o);
    assert!(stderr(&o).contains("max_batch_sise"), "{}", stderr(&o));
}

#[test]
fn command_line_overrides_go_through_the_model_toml_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = noop_with(dir.path(), "windowed", "batch_window = 64");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "[1.0, 2.0]\n").expect("write");
    let run = |flags: &[&str]| {
        let mut args = vec!["run", "--model", path_str(&model), "--input", path_str(&input), "-q"];
        args.extend_from_slice(flags);
        sluice(&args)
    };
    // model.toml would refuse max_batch_size = 128 with batch_window = 64; so must the flag.
    for (flags, needle) in [
        (
            &["--batch-size", "128"][..],
            "batch_window must be at least max_batch_size",
        ),
        (&["--batch-size", "0"][..], "max_batch_size must be at least 1"),
        (&["--instances", "0"][..], "instances must be at least 1"),
        (&["--device", "tpu"][..], "tpu"),
    ] {
        let o = run(flags);
        assert_failure(&o);
        assert!(stderr(&o).contains(needle), "{flags:?}: {}", stderr(&o));
    }
    let o = run(&["--batch-size", "32"]);
    assert_success(&o);
}

#[test]
fn missing_onnx_runtime_library_points_to_setup_script() {
    let model = require_model("minilm-l6");
    let o = sluice_env(
        &["models", "inspect", path_str(&model)],
        &[("ORT_DYLIB_PATH", "/nonexistent")],
    );
    assert_failure(&o);
    let err = stderr(&o);
    assert!(
        err.contains("scripts/setup.sh") && err.contains("/nonexistent"),
        "{err}"
    );
}

#[test]
fn missing_input_file_is_reported_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("does-not-exist.jsonl");
    let out = dir.path().join("out.jsonl");
    let o = sluice(&[
        "run",
        "--model",
        "models/noop",
        "--input",
        path_str(&missing),
        "--output",
        path_str(&out),
        "-q",
    ]);
    assert_failure(&o);
    let err = stderr(&o);
    assert!(
        err.contains("does-not-exist.jsonl") && err.contains("not found"),
        "{err}"
    );
    assert!(
        !out.exists(),
        "an output file was created for a run that could not start"
    );
}

#[test]
fn bench_of_noop_model_prints_throughput_table_and_best_batch_size() {
    let o = sluice(&[
        "bench",
        "--model",
        path_str(&repo_root().join("models/noop")),
        "--batch-sizes",
        "1,8",
        "--seconds",
        "0.3",
    ]);
    assert_success(&o);
    let out = stdout(&o);
    assert!(out.contains("items/s"), "{out}");
    assert!(out.contains("best batch size"), "{out}");
    for b in ["1", "8"] {
        assert!(
            out.lines().any(|l| l.split_whitespace().next() == Some(b)),
            "no row for batch size {b}:\n{out}"
        );
    }
}

/// Issue 10, finding 12: `sluice run --model models/mlp-omi` (a relative path, from the repository
/// root as the README says) failed with "cannot start models/mlp-omi/../../.sluice/venv/bin/python":
/// the worker's program path was resolved again from inside the model folder. The run must start
/// the worker; the plain-text line is not 512 float32 values, so the worker itself rejects that
/// item as an invalid input (issue 10, finding 11: an OMI invalid input is `invalid_input`).
#[test]
fn run_mlp_omi_from_a_relative_model_path() {
    let root = repo_root();
    if !root.join(".sluice/venv/bin/python").exists() {
        eprintln!("SKIPPED: the venv is missing; {SETUP}");
        return;
    }
    assert!(
        root.join("models/mlp/model.onnx").is_file(),
        "models/mlp/model.onnx is missing; {SETUP}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "not 2048 bytes of floats\n").expect("write input");
    let output = dir.path().join("out.jsonl");
    let o = sluice(&[
        "run",
        "--model",
        "models/mlp-omi",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "-q",
    ]);
    assert_success(&o);
    let results = read_results(&output);
    assert_eq!(results.len(), 1, "{results:?}");
    let (_, v) = results.iter().next().expect("one result");
    assert_error(v, "invalid_input", "512 float32 values");
}
