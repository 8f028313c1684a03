//! Helpers of the tests that write results to object stores and read them
//! back: a cheap text model, a corpus of real texts with columns to keep,
//! and the output of a parts folder in S3 as pyarrow and DuckDB see it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::moto::Moto;
use super::{repo_model_file, repo_root};

pub fn model_dir(name: &str) -> String {
    let toml = repo_model_file(name, "model.toml");
    toml.parent().expect("model folder").display().to_string()
}

/// A cheap text model: the MiniLM tokenizer and a graph that pools token
/// ids (crates/sluice-engine/tests/fixtures/text_ids.onnx).
pub fn text_ids_model(dir: &Path) -> String {
    let graph = repo_root().join("crates/sluice-engine/tests/fixtures/text_ids.onnx");
    let tokenizer = repo_model_file("minilm-l6", "tokenizer.json");
    let model = dir.join("text-ids");
    std::fs::create_dir_all(&model).expect("model dir");
    let toml = format!(
        r#"description = "MiniLM tokenizer + text_ids.onnx"
runtime = "onnx"
model_file = {graph:?}
max_batch_size = 64
max_batch_delay_ms = 5
instances = 1
device = "cpu"
intra_op_threads = 1

[processing]
type = "text"
tokenizer = {tokenizer:?}
max_length = 64
input_ids = "input_ids"
attention_mask = "attention_mask"
token_type_ids = "token_type_ids"
output = "last_hidden_state"
pooling = "mean"
normalize = true
"#,
        graph = graph.display().to_string(),
        tokenizer = tokenizer.display().to_string(),
    );
    std::fs::write(model.join("model.toml"), toml).expect("model.toml");
    model.display().to_string()
}

/// `n` real texts (data/texts/*.jsonl, cycled, each with its own id), with
/// two columns to keep: the language from the id and a running number.
pub fn corpus(dir: &Path, n: usize) -> PathBuf {
    let mut texts = Vec::new();
    for f in ["data/texts/sample.jsonl", "data/texts/short.jsonl"] {
        let body = std::fs::read_to_string(repo_root().join(f)).expect("texts");
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).expect("JSON");
            let id = v["id"].as_str().expect("id").to_string();
            let text = v["text"].as_str().expect("text").to_string();
            texts.push((id, text));
        }
    }
    let path = dir.join("texts.jsonl");
    let mut out = String::new();
    for i in 0..n {
        let (id, text) = &texts[i % texts.len()];
        let lang = id.trim_start_matches("short-").split('-').next().unwrap_or("?");
        let row = json!({"id": format!("{id}#{i}"), "text": text, "lang": lang, "n": i});
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(&path, out).expect("write corpus");
    path
}

/// Lines of a JSONL text, by id, each id once.
pub fn by_id(body: &str) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for line in body.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line}: {e}"));
        let id = v["id"].as_str().unwrap_or_else(|| panic!("no id: {line}")).to_string();
        assert!(out.insert(id.clone(), v).is_none(), "{id} twice");
    }
    out
}

/// Downloads every object under `s3://bucket/prefix` and reads the output
/// with pyarrow and DuckDB; returns what the Python side saw as JSON.
pub fn read_back(moto: &Moto, work: &Path, bucket: &str, prefix: &str) -> Value {
    let into = work.join(format!("download-{}", prefix.replace('/', "_")));
    let report = work.join(format!("{}.json", prefix.replace('/', "_")));
    let script = format!(
        r#"
import json, os, pyarrow.parquet as pq, duckdb
into, report = {into:?}, {report:?}
os.makedirs(into, exist_ok=True)
names = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket={bucket:?}, Prefix={prefix:?}):
    for o in page.get("Contents", []):
        name = o["Key"][len({prefix:?}):]
        names.append(name)
        s3.download_file({bucket:?}, o["Key"], os.path.join(into, name))
manifest = json.load(open(os.path.join(into, "_manifest.json")))
out = {{"names": sorted(names), "manifest": manifest, "rows": [], "errors": []}}
for p in manifest["parts"]:
    path = os.path.join(into, p["file"])
    if p["file"].endswith(".parquet"):
        t = pq.read_table(path)
        out["schema"] = [[f.name, str(f.type)] for f in t.schema]
        out["rows"] += t.to_pylist()
        lens = ", min(len(embedding)), max(len(embedding))" if "embedding" in t.schema.names else ""
        out.setdefault("duckdb", []).append(duckdb.sql(
            f"select count(*), count(distinct id){{lens}} from read_parquet('{{path}}')"
        ).fetchall()[0])
    else:
        out["rows"] += [json.loads(l) for l in open(path)]
for p in manifest["error_parts"]:
    out["errors"] += [json.loads(l) for l in open(os.path.join(into, p["file"]))]
json.dump(out, open(report, "w"))
"#,
        into = into.display().to_string(),
        report = report.display().to_string(),
    );
    moto.boto3(&script);
    serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("report JSON")
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")))
        .collect()
}

pub fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}: {x} vs {y}");
    }
}

/// The labels of a detections list, in order.
pub fn labels(dets: &Value) -> Vec<String> {
    dets.as_array()
        .unwrap_or_else(|| panic!("no detections: {dets}"))
        .iter()
        .map(|d| d["label"].as_str().unwrap_or_default().to_string())
        .collect()
}
