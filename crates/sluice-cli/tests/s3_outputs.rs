//! `sluice run` writing results to an S3-compatible object store (moto on
//! loopback) as rolling JSONL and Parquet parts with a manifest, read back
//! with boto3, pyarrow and DuckDB: each input exactly once over all parts,
//! the same outputs as a local run, kept input columns equal to the input's.

mod common;

use std::process::{Output, Stdio};

use common::moto::{Moto, SECRET_KEY};
use common::outputs::{assert_close, by_id, corpus, floats, labels, model_dir, read_back, text_ids_model};
use common::{assert_success, repo_root, require_onnxruntime, sluice_cmd, text};
use serde_json::{json, Value};

fn run(moto: &Moto, args: &[&str]) -> Output {
    sluice_cmd()
        .args(args)
        .envs(moto.env())
        .stdin(Stdio::null())
        .output()
        .expect("cannot start the sluice binary")
}

#[test]
fn ten_thousand_texts_from_s3_to_parquet_and_jsonl_parts_in_s3_match_a_local_run() {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("corpus");
    moto.bucket("results");
    let work = tempfile::tempdir().expect("tempdir");
    let local = corpus(work.path(), 10_000);
    // One malformed line among them: it fails alone, into the error parts.
    let mut body = std::fs::read_to_string(&local).expect("corpus");
    body.push_str("{\"id\": \"broken\", \"text\": \n");
    std::fs::write(&local, body).expect("write");
    moto.upload(&local, "corpus", "social/texts.jsonl");
    let model = text_ids_model(work.path());

    let baseline = work.path().join("local.jsonl");
    let o = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            local.to_str().expect("utf-8"),
            "--output",
            baseline.to_str().expect("utf-8"),
            "-q",
        ],
    );
    assert_success(&o, "local run");
    let want = by_id(&std::fs::read_to_string(&baseline).expect("baseline"));
    assert_eq!(want.len(), 10_001);

    for (format, prefix) in [("parquet", "run/parquet/"), ("jsonl", "run/jsonl/")] {
        let uri = format!("s3://results/{prefix}");
        let o = run(
            &moto,
            &[
                "run",
                "--model",
                &model,
                "--input",
                "s3://corpus/social/texts.jsonl",
                "--output",
                &uri,
                "--output-format",
                format,
                "--max-part-bytes",
                "200000",
                "--keep-columns",
                "lang,n",
                "-q",
            ],
        );
        assert_success(&o, &format!("run to {uri}"));
        for stream in [&o.stdout, &o.stderr] {
            assert!(!text(stream).contains(SECRET_KEY), "the secret key was printed");
        }
        let got = read_back(&moto, work.path(), "results", prefix);
        let manifest = &got["manifest"];
        assert_eq!(manifest["format"], format);
        assert_eq!(manifest["complete"], true);
        assert_eq!(manifest["counts"], json!({"total": 10_001, "ok": 10_000, "failed": 1}));
        let parts = manifest["parts"].as_array().expect("parts");
        assert!(parts.len() > 1, "200 kB parts roll: {manifest}");
        // Only committed files are there: the parts, the error part, the manifest.
        let mut listed: Vec<String> = parts
            .iter()
            .chain(manifest["error_parts"].as_array().expect("error parts"))
            .map(|p| p["file"].as_str().expect("file").to_string())
            .collect();
        listed.push("_manifest.json".into());
        listed.sort();
        let names: Vec<String> = serde_json::from_value(got["names"].clone()).expect("names");
        assert_eq!(names, listed);

        let rows = got["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 10_000);
        let mut seen = std::collections::HashSet::new();
        for r in rows {
            let id = r["id"].as_str().expect("id");
            assert!(seen.insert(id.to_string()), "{id} twice over the parts");
            let base = &want[id];
            let n: usize = id.rsplit('#').next().and_then(|s| s.parse().ok()).expect("n in id");
            assert_eq!(r["n"], json!(n), "{id}: kept column n");
            assert_eq!(
                r["lang"].as_str(),
                id.trim_start_matches("short-").split('-').next(),
                "{id}"
            );
            let emb = if format == "parquet" {
                assert!(r["error_code"].is_null(), "{r}");
                floats(&r["embedding"])
            } else {
                floats(&r["output"]["embedding"])
            };
            assert_close(&emb, &floats(&base["output"]["embedding"]), id);
        }
        let errors = got["errors"].as_array().expect("errors");
        assert_eq!(errors.len(), 1);
        // The malformed last line is keyed by its line number, as in the local run.
        assert_eq!(errors[0]["id"], "10001", "{}", errors[0]);
        assert_eq!(want["10001"]["error"]["code"], "invalid_input");
        assert_eq!(errors[0]["error"]["code"], "invalid_input");
        if format == "parquet" {
            let schema: Vec<(String, String)> = serde_json::from_value(got["schema"].clone()).expect("schema");
            let names: Vec<&str> = schema.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["id", "lang", "n", "embedding", "error_code", "error_message"]);
            assert_eq!(schema[1].1, "string");
            assert_eq!(schema[2].1, "int64");
            assert!(
                schema[3].1.starts_with("list<") && schema[3].1.contains("float"),
                "{schema:?}"
            );
            // DuckDB agrees: per part, rows == distinct ids, and every embedding has one length.
            for row in got["duckdb"].as_array().expect("duckdb") {
                assert_eq!(row[0], row[1], "{row}");
                assert_eq!(row[2], row[3], "{row}");
            }
        }
    }
}

#[test]
fn minilm_embeddings_in_a_parquet_file_in_s3_are_lists_of_384_float32() {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("results");
    let work = tempfile::tempdir().expect("tempdir");
    let local = corpus(work.path(), 200);
    let model = model_dir("minilm-l6");
    let o = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            local.to_str().expect("utf-8"),
            "--output",
            "s3://results/one/embeddings.parquet",
            "--keep-columns",
            "lang",
            "-q",
        ],
    );
    assert_success(&o, "run to one Parquet object");
    let report = work.path().join("one.json");
    let into = work.path().join("one.parquet");
    moto.boto3(&format!(
        r#"
import json, pyarrow.parquet as pq, duckdb
s3.download_file("results", "one/embeddings.parquet", {into:?})
t = pq.read_table({into:?})
lens = duckdb.sql("select min(len(embedding)), max(len(embedding)), count(*) from read_parquet('{path}')").fetchall()[0]
json.dump({{"schema": [[f.name, str(f.type)] for f in t.schema], "rows": t.num_rows, "lens": lens,
           "first": t.slice(0, 1).to_pylist()[0]}}, open({report:?}, "w"))
"#,
        into = into.display().to_string(),
        path = into.display(),
        report = report.display().to_string(),
    ));
    let got: Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
    assert_eq!(got["rows"], 200);
    assert_eq!(got["lens"], json!([384, 384, 200]));
    assert_eq!(
        got["schema"],
        json!([
            ["id", "string"],
            ["lang", "string"],
            ["embedding", "list<item: float>"],
            ["error_code", "string"],
            ["error_message", "string"]
        ])
    );
    let norm: f64 = floats(&got["first"]["embedding"])
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "normalised embedding, norm {norm}");
}

#[test]
fn an_output_bucket_that_does_not_exist_fails_before_the_model_runs() {
    let moto = Moto::start();
    let work = tempfile::tempdir().expect("tempdir");
    let local = corpus(work.path(), 10);
    for out in ["s3://no-such-bucket/out/", "s3://no-such-bucket/out.parquet"] {
        let o = run(
            &moto,
            &[
                "run",
                "--model",
                &model_dir("minilm-l6"),
                "--input",
                local.to_str().expect("utf-8"),
                "--output",
                out,
                "-q",
            ],
        );
        assert!(!o.status.success(), "{out}: should fail");
        let err = text(&o.stderr);
        assert!(
            err.contains("NoSuchBucket") && err.contains("no-such-bucket"),
            "{out}: {err}"
        );
        assert!(!err.contains(SECRET_KEY) && !err.contains("panicked"), "{err}");
    }
}

#[test]
fn an_image_prefix_in_s3_gives_detections_as_lists_of_structs_in_parquet() {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("footage");
    moto.bucket("results");
    let images = repo_root().join("data/images");
    let files = moto.upload_images("footage", "day1/");
    let model = model_dir("nanodet-m");
    let work = tempfile::tempdir().expect("tempdir");
    let baseline = work.path().join("local.jsonl");
    let o = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            images.to_str().expect("utf-8"),
            "--output",
            baseline.to_str().expect("utf-8"),
            "-q",
        ],
    );
    assert_success(&o, "local run");
    let want = by_id(&std::fs::read_to_string(&baseline).expect("baseline"));
    let o = run(
        &moto,
        &[
            "run",
            "--model",
            &model,
            "--input",
            "s3://footage/day1/",
            "--output",
            "s3://results/detections/",
            "--output-format",
            "parquet",
            "-q",
        ],
    );
    assert_success(&o, "run to S3 Parquet parts");
    let report = work.path().join("det.json");
    moto.boto3(&format!(
        r#"
import io, json, pyarrow.parquet as pq
m = json.loads(s3.get_object(Bucket="results", Key="detections/_manifest.json")["Body"].read())
rows, schema = [], None
for p in m["parts"]:
    t = pq.read_table(io.BytesIO(s3.get_object(Bucket="results", Key="detections/" + p["file"])["Body"].read()))
    schema = [[f.name, str(f.type)] for f in t.schema]
    rows += t.to_pylist()
json.dump({{"schema": schema, "rows": rows}}, open({report:?}, "w"))
"#,
        report = report.display().to_string(),
    ));
    let got: Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
    let schema = got["schema"].as_array().expect("schema");
    assert_eq!(schema[1][0], "detections");
    let t = schema[1][1].as_str().expect("type");
    assert!(
        t.starts_with("list<item: struct<class_id: int64") && t.contains("label: string") && t.contains("bbox: list<"),
        "{t}"
    );
    let rows = got["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), files.len());
    for r in rows {
        let id = r["id"].as_str().expect("id");
        assert_eq!(
            labels(&r["detections"]),
            labels(&want[id]["output"]["detections"]),
            "{id}"
        );
        for (d, w) in r["detections"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(want[id]["output"]["detections"].as_array().into_iter().flatten())
        {
            assert_close(&floats(&d["bbox"]), &floats(&w["bbox"]), id);
        }
    }
}

#[test]
fn a_parquet_input_with_kept_columns_gives_what_the_same_jsonl_gives() {
    require_onnxruntime();
    let moto = Moto::start();
    moto.bucket("corpus");
    let work = tempfile::tempdir().expect("tempdir");
    let jsonl = corpus(work.path(), 500);
    let table = work.path().join("texts.parquet");
    // The same rows as a Parquet table, made by pyarrow, in two row groups.
    moto.boto3(&format!(
        r#"
import json, pyarrow as pa, pyarrow.parquet as pq
rows = [json.loads(l) for l in open({jsonl:?})]
pq.write_table(pa.Table.from_pylist(rows), {table:?}, row_group_size=300)
s3.upload_file({table:?}, "corpus", "tables/texts.parquet")
"#,
        jsonl = jsonl.display().to_string(),
        table = table.display().to_string(),
    ));
    let model = text_ids_model(work.path());
    let mut outs = Vec::new();
    for input in [
        jsonl.display().to_string(),
        "s3://corpus/tables/texts.parquet".to_string(),
    ] {
        let o = run(
            &moto,
            &[
                "run",
                "--model",
                &model,
                "--input",
                &input,
                "--keep-columns",
                "lang,n",
                "-q",
            ],
        );
        assert_success(&o, &format!("run on {input}"));
        outs.push(by_id(&text(&o.stdout)));
    }
    assert_eq!(outs[0].len(), 500);
    assert_eq!(outs[0].len(), outs[1].len());
    for (id, a) in &outs[0] {
        let b = &outs[1][id];
        assert_eq!(a["lang"], b["lang"], "{id}");
        assert_eq!(a["n"], b["n"], "{id}");
        assert_close(
            &floats(&a["output"]["embedding"]),
            &floats(&b["output"]["embedding"]),
            id,
        );
    }
}
