//! The OMI proto is byte-compatible with the chassis project's: same package
//! (none), service, messages, field numbers, types and labels; bytes encoded by
//! chassis's generated Python code decode into our prost types and back.
//!
//! The other side is the `chassisml-protobuf` wheel in `.sluice/venv`
//! (installed by `scripts/setup.sh`), driven through `chassis_proto.py`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prost::Message;
use protox::prost_reflect::prost_types::{DescriptorProto, FileDescriptorProto};
use sluice_omi::proto as p;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, or `None` (the test is skipped with a message) when setup has not run.
fn python() -> Option<PathBuf> {
    let py = root().join(".sluice/venv/bin/python");
    if py.exists() {
        Some(py)
    } else {
        eprintln!("SKIPPED: {} missing; run `bash scripts/setup.sh`", py.display());
        None
    }
}

fn helper(py: &Path, mode: &str, stdin: Option<String>) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chassis_proto.py");
    let mut child = Command::new(py)
        .arg(script)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "chassis_proto.py {mode} failed");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Must match `samples()` in chassis_proto.py.
fn samples() -> (p::StatusResponse, p::RunRequest, p::RunResponse, p::ShutdownResponse) {
    let status = p::StatusResponse {
        status_code: 200,
        status: "OK".into(),
        message: "ready".into(),
        model_info: Some(p::ModelInfo {
            model_name: "mlp".into(),
            model_version: "1.2".into(),
            model_author: "me".into(),
            model_type: "grpc".into(),
            source: "sluice".into(),
        }),
        description: Some(p::ModelDescription {
            summary: "s".into(),
            details: "d".into(),
            technical: "t".into(),
            performance: "p".into(),
        }),
        inputs: vec![p::ModelInput {
            filename: "input".into(),
            accepted_media_types: vec!["application/octet-stream".into(), "text/plain".into()],
            max_size: "5M".into(),
            description: "in".into(),
        }],
        outputs: vec![p::ModelOutput {
            filename: "results.json".into(),
            media_type: "application/json".into(),
            max_size: "1M".into(),
            description: "out".into(),
        }],
        resources: Some(p::ModelResources {
            required_ram: "2Gi".into(),
            num_cpus: 1.5,
            num_gpus: 2,
        }),
        timeout: Some(p::ModelTimeout {
            status: "60s".into(),
            run: "120s".into(),
        }),
        features: Some(p::ModelFeatures {
            adversarial_defense: true,
            batch_size: 32,
            retrainable: true,
            results_format: "json".into(),
            drift_format: "d".into(),
            explanation_format: "e".into(),
        }),
    };
    let run_request = p::RunRequest {
        inputs: vec![
            p::InputItem {
                input: [
                    ("input".to_string(), vec![0u8, 1, 255]),
                    ("config".to_string(), b"{}".to_vec()),
                ]
                .into(),
            },
            p::InputItem {
                input: [("input".to_string(), vec![])].into(),
            },
        ],
        detect_drift: true,
        explain: true,
    };
    let run_response = p::RunResponse {
        status_code: 200,
        status: "OK".into(),
        message: "1 failed".into(),
        outputs: vec![
            p::OutputItem {
                output: [("results.json".to_string(), br#"{"x": 1}"#.to_vec())].into(),
                success: true,
            },
            p::OutputItem {
                output: [("error".to_string(), b"bad input".to_vec())].into(),
                success: false,
            },
        ],
    };
    let shutdown = p::ShutdownResponse {
        status_code: 200,
        status: "OK".into(),
        message: "bye".into(),
    };
    (status, run_request, run_response, shutdown)
}

#[test]
fn chassis_bytes_decode_into_our_types() {
    let Some(py) = python() else { return };
    let encoded: serde_json::Value = serde_json::from_str(&helper(&py, "encode", None)).expect("json");
    let bytes = |name: &str| unhex(encoded[name].as_str().expect("hex string"));
    let (status, run_request, run_response, shutdown) = samples();
    assert_eq!(
        p::StatusResponse::decode(&*bytes("StatusResponse")).expect("decode"),
        status
    );
    assert_eq!(
        p::RunRequest::decode(&*bytes("RunRequest")).expect("decode"),
        run_request
    );
    assert_eq!(
        p::RunResponse::decode(&*bytes("RunResponse")).expect("decode"),
        run_response
    );
    assert_eq!(
        p::ShutdownResponse::decode(&*bytes("ShutdownResponse")).expect("decode"),
        shutdown
    );
    assert!(bytes("StatusRequest").is_empty() && bytes("ShutdownRequest").is_empty());
}

#[test]
fn our_bytes_decode_in_chassis() {
    let Some(py) = python() else { return };
    let (status, run_request, run_response, shutdown) = samples();
    let payload = serde_json::json!({
        "StatusResponse": hex(&status.encode_to_vec()),
        "RunRequest": hex(&run_request.encode_to_vec()),
        "RunResponse": hex(&run_response.encode_to_vec()),
        "ShutdownResponse": hex(&shutdown.encode_to_vec()),
        "StatusRequest": hex(&p::StatusRequest {}.encode_to_vec()),
        "ShutdownRequest": hex(&p::ShutdownRequest {}.encode_to_vec()),
    });
    let report: serde_json::Value =
        serde_json::from_str(&helper(&py, "decode", Some(payload.to_string()))).expect("json");
    let obj = report.as_object().expect("object");
    assert_eq!(obj.len(), 6, "{report}");
    for (name, verdict) in obj {
        assert_eq!(verdict, "ok", "{name}: {verdict}");
    }
}

/// Name, number, label, type and type name of each field; nested types and map entries too.
fn shape(m: &DescriptorProto) -> String {
    let mut s = format!("message {}", m.name());
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        s.push_str(" (map entry)");
    }
    s.push_str(" {");
    for f in &m.field {
        s.push_str(&format!(
            " {}={} {:?} {:?} {};",
            f.name(),
            f.number(),
            f.label(),
            f.r#type(),
            f.type_name()
        ));
    }
    for n in &m.nested_type {
        s.push_str(&shape(n));
    }
    s.push('}');
    s
}

fn describe(fd: &FileDescriptorProto) -> Vec<String> {
    let mut out = vec![format!("package {:?} syntax {:?}", fd.package, fd.syntax())];
    out.extend(fd.message_type.iter().map(shape));
    for svc in &fd.service {
        for m in &svc.method {
            out.push(format!(
                "rpc {}.{}({}) returns ({}) client_streaming={} server_streaming={}",
                svc.name(),
                m.name(),
                m.input_type(),
                m.output_type(),
                m.client_streaming(),
                m.server_streaming()
            ));
        }
    }
    out
}

#[test]
fn descriptor_matches_chassis() {
    let Some(py) = python() else { return };
    let theirs = FileDescriptorProto::decode(&*unhex(&helper(&py, "descriptor", None))).expect("decode");
    let dir = root().join("proto/omi");
    let set = protox::compile(["model.proto"], [&dir]).expect("compile our proto");
    let ours = set
        .file
        .iter()
        .find(|f| f.name() == "model.proto")
        .expect("model.proto");
    assert_eq!(ours.package, None, "chassis declares no package");
    assert_eq!(describe(ours), describe(&theirs));
    // Same service name, hence the same method paths: /ModzyModel/Status, /ModzyModel/Run, /ModzyModel/Shutdown.
    assert_eq!(theirs.service.first().map(|s| s.name()), Some("ModzyModel"));
}
