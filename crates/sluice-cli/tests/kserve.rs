//! `sluice serve` driven by the official Triton client, `tritonclient[http,grpc]`
//! from PyPI, over real HTTP and gRPC on loopback: health, metadata and
//! inference on a small ONNX model (checked against ONNX Runtime) and on
//! MiniLM with BYTES inputs. The checks themselves live in
//! `tests/kserve/tritonclient_check.py`; this test serves the models, runs
//! the script with the project's venv and fails with its output.

mod common;

use std::process::Command;

use common::*;

#[test]
fn tritonclient_http_and_grpc() {
    require_onnxruntime();
    let root = repo_root();
    let python = root.join(".sluice/venv/bin/python");
    assert!(python.is_file(), "{} is missing; {SETUP}", python.display());
    let tmp = tempfile::tempdir().expect("temp dir");
    let models = tmp.path().join("models");
    let mlp = root.join("crates/sluice-engine/tests/fixtures/tiny_mlp.onnx");
    assert!(mlp.is_file(), "{} is missing", mlp.display());
    std::fs::create_dir_all(models.join("tiny-mlp")).expect("model folder");
    std::fs::write(
        models.join("tiny-mlp/model.toml"),
        format!(
            "runtime = \"onnx\"\nmodel_file = {}\nmax_batch_size = 8\nmax_batch_delay_ms = 2\n\
             group_by_length = false\nintra_op_threads = 1\n[processing]\ntype = \"tensor\"\n",
            toml_path(&mlp)
        ),
    )
    .expect("model.toml");
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
    let server = ServerProc::start(&models, &tmp.path().join("data"), None, &tmp.path().join("server.log"));
    let http = server.base.trim_start_matches("http://").to_string();
    let out = Command::new(&python)
        .arg(root.join("tests/kserve/tritonclient_check.py"))
        .arg(&http)
        .arg(&server.grpc)
        .arg(&mlp)
        .output()
        .expect("cannot run the venv's python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all tritonclient checks passed"),
        "tritonclient checks failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    println!("{stdout}");
}
