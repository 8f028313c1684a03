//! Hostile shapes and values on every real-time front end, against a real
//! server on loopback (issue 10, findings 1 and 11): a zero-sized dimension
//! with a huge batch dimension used to abort the process (SIGABRT, "memory
//! allocation of 61572651155456 bytes failed") or panic on capacity
//! overflow; more rows than the real-time capacity were turned into items
//! before being refused. Each request here must get a 4xx JSON answer (gRPC:
//! INVALID_ARGUMENT) and the server must answer normally afterwards.

mod common;

use common::{repo_model, tiny_mlp, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sluice_server::v2::grpc::pb;
use sluice_server::v2::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_server::v2::grpc::InferenceService;
use sluice_server::Registry;

/// The exact bodies of the finding: 92 bytes with a 2^40 batch of empty rows,
/// 2^62 (capacity overflow) and 3,000,000 (86 bytes, 3 GB of RSS).
const HUGE_EMPTY_BATCHES: [u64; 3] = [1_099_511_627_776, 4_611_686_018_427_387_904, 3_000_000];

fn zero_sized(name: &str, rows: u64) -> String {
    format!(r#"{{"inputs":[{{"name":"{name}","shape":[{rows},0],"datatype":"FP32","data":[]}}]}}"#)
}

/// POSTs a raw body; the status and the JSON body (panics if it is not JSON).
async fn post_text(server: &Server, path: &str, body: String) -> (StatusCode, Value) {
    let resp = server
        .http
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: no answer ({e}); did the server die?"));
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text:?}"));
    (status, v)
}

fn v2_error(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no v2 error string in {body}"))
}

async fn assert_still_serves_noop(server: &Server) {
    let ok = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let (status, body) = server.post("/v2/models/noop/infer", &ok).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outputs"][0]["data"], json!([1.0, 2.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_zero_sized_dimension_with_a_huge_batch_is_refused_not_fatal() {
    let server = Server::start(vec![repo_model("noop").await, tiny_mlp("mlp").await]).await;
    for rows in HUGE_EMPTY_BATCHES {
        for (model, input) in [("noop", "input"), ("mlp", "x")] {
            let body = zero_sized(input, rows);
            let (status, resp) = post_text(&server, &format!("/v2/models/{model}/infer"), body.clone()).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{model} {body}: {resp}");
            let msg = v2_error(&resp);
            assert!(
                msg.contains(&rows.to_string()) && msg.contains("at most 512 rows"),
                "{msg}"
            );
        }
        assert_still_serves_noop(&server).await;
    }
    // The same with the binary extension: an empty binary tensor.
    let head = r#"{"inputs":[{"name":"input","shape":[1099511627776,0],"datatype":"FP32","parameters":{"binary_data_size":0}}]}"#;
    let resp = server
        .http
        .post(server.url("/v2/models/noop/infer"))
        .header("inference-header-content-length", head.len())
        .body(head)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.expect("JSON");
    assert!(v2_error(&body).contains("rows"), "{body}");
    assert_still_serves_noop(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_shapes_whose_product_overflows_or_is_too_large_are_bad_requests() {
    let server = Server::start(vec![repo_model("noop").await]).await;
    for shape in [
        json!([1, 4294967296u64, 4294967296u64]),
        json!([1, 0, 1099511627776u64]),
        json!([1, 9223372036854775807u64, 0]),
        json!([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    ] {
        let body = json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]});
        let (status, resp) = server.post("/v2/models/noop/infer", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shape}: {resp}");
        assert!(v2_error(&resp).contains("input 'input'"), "{resp}");
    }
    assert_still_serves_noop(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_zero_sized_dimension_with_a_huge_batch_is_refused_not_fatal() {
    let registry = std::sync::Arc::new(Registry::from_models(vec![repo_model("noop").await]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let service = InferenceService::new(registry.clone()).into_server(64 << 20);
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("gRPC server");
    });
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let request = |rows: i64, raw: bool| pb::ModelInferRequest {
        model_name: "noop".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows, 0],
            contents: (!raw).then(pb::InferTensorContents::default),
            ..Default::default()
        }],
        raw_input_contents: if raw { vec![Vec::new()] } else { Vec::new() },
        ..Default::default()
    };
    for rows in HUGE_EMPTY_BATCHES {
        for raw in [false, true] {
            let rows = i64::try_from(rows).expect("fits");
            let err = client.model_infer(request(rows, raw)).await.expect_err("refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains("at most 512 rows"), "{}", err.message());
        }
    }
    let ok = pb::ModelInferRequest {
        model_name: "noop".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            contents: Some(pb::InferTensorContents {
                fp32_contents: vec![1.0, 2.0],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = client.model_infer(ok).await.expect("still serves").into_inner();
    assert_eq!(resp.outputs[0].shape, vec![1, 2]);
    // Rows within the capacity but not all free are still the retryable answer;
    // more than the capacity is not, so `timeout` values that are not
    // positive whole microseconds are refused as well.
    let mut bad_timeout = request(1, false);
    bad_timeout.inputs[0].shape = vec![1, 0];
    bad_timeout.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(-1)),
        },
    );
    let err = client.model_infer(bad_timeout).await.expect_err("bad timeout");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_more_inputs_than_the_capacity_are_refused_before_decoding() {
    let mut spec = common::tiny_mlp_spec("mlp", 8);
    spec.realtime_queue_capacity = 4;
    let server = Server::start(vec![common::slow_mlp_from(spec).await]).await;
    let inputs: Vec<Value> = (0..5).map(|_| json!([1.0, 2.0, 3.0, 4.0])).collect();
    let (status, resp) = server.post("/v1/models/mlp/infer", &json!({ "inputs": inputs })).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(resp["error"]["code"], "too_large", "{resp}");
    // The tensor parser of the processing chain bounds shapes too.
    let huge = json!({"inputs": [{"shape": [1099511627776u64, 0], "data": []}]});
    let (status, resp) = server.post("/v1/models/mlp/infer", &huge).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{resp}"
    );
    let (status, resp) = server
        .post("/v1/models/mlp/infer", &json!({"inputs": [[1.0, 2.0, 3.0, 4.0]]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_and_v1_body_limit_answers_are_json() {
    let cfg = common::Config {
        limits: sluice_server::Limits {
            max_body_bytes: 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = Server::with(vec![repo_model("noop").await], cfg).await;
    let data: Vec<f64> = vec![1.0; 1000];
    let body = json!({"inputs": [{"name": "input", "shape": [1, 1000], "datatype": "FP32", "data": data}]});
    let (status, resp) = post_text(&server, "/v2/models/noop/infer", body.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert!(v2_error(&resp).contains("1024 bytes"), "{resp}");
    let (status, resp) = post_text(&server, "/v2/models/noop/versions/1/infer", body.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    let v1 = json!({ "inputs": [data] });
    let (status, resp) = post_text(&server, "/v1/models/noop/infer", v1.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(resp["error"]["code"], "too_large", "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_timeout_parameter_must_be_positive_microseconds() {
    let server = Server::start(vec![repo_model("noop").await]).await;
    for timeout in [json!(-1), json!("abc"), json!(0), json!(1.5), json!(null)] {
        let body = json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}],
            "parameters": {"timeout": timeout}});
        let (status, resp) = server.post("/v2/models/noop/infer", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "timeout {timeout}: {resp}");
        assert!(v2_error(&resp).contains("parameters.timeout"), "{resp}");
    }
    let ok = json!({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}],
        "parameters": {"timeout": 5_000_000}});
    assert_eq!(server.post("/v2/models/noop/infer", &ok).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_fp32_values_out_of_range_are_bad_requests() {
    let server = Server::start(vec![repo_model("noop").await]).await;
    for v in ["1e39", "-1e39", "1.7976931348623157e308"] {
        let body = format!(r#"{{"inputs":[{{"name":"input","shape":[1,1],"datatype":"FP32","data":[{v}]}}]}}"#);
        let (status, resp) = post_text(&server, "/v2/models/noop/infer", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}: {resp}");
        let msg = v2_error(&resp);
        assert!(
            msg.contains("input 'input'") && msg.contains("out of range for float32"),
            "{msg}"
        );
    }
    // JSON has no NaN or infinity; a literal is a JSON error, not a value.
    let body = r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[NaN]}]}"#.to_string();
    assert_eq!(
        post_text(&server, "/v2/models/noop/infer", body).await.0,
        StatusCode::BAD_REQUEST
    );
    // The largest float32 is still accepted and answered as a number.
    let body = r#"{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[3.4028235e38]}]}"#.to_string();
    let (status, resp) = post_text(&server, "/v2/models/noop/infer", body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert!(resp["outputs"][0]["data"][0].as_f64().is_some(), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_timeout_ms_zero_is_a_bad_request_like_jobs() {
    let server = Server::start(vec![repo_model("noop").await]).await;
    let (status, resp) = server
        .post("/v1/models/noop/infer", &json!({"inputs": [[1.0]], "timeout_ms": 0}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(resp["error"]["message"], "timeout_ms must be positive");
    let (status, jobs) = server
        .post(
            "/v1/jobs",
            &json!({"model": "noop", "inputs": {"a": [1.0]}, "timeout_ms": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{jobs}");
    assert_eq!(jobs["error"]["message"], resp["error"]["message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_integer_values_are_range_checked_and_must_be_integral() {
    let server = Server::start(vec![repo_model("noop").await]).await;
    for (datatype, v) in [
        ("INT8", "300"),
        ("INT8", "-129"),
        ("UINT8", "-1"),
        ("UINT8", "256"),
        ("INT32", "2147483648"),
        ("INT64", "9223372036854775808"),
        ("INT64", "1e300"),
        ("BOOL", "2"),
        ("INT32", "1.5"),
    ] {
        let body = format!(r#"{{"inputs":[{{"name":"input","shape":[1,1],"datatype":"{datatype}","data":[{v}]}}]}}"#);
        let (status, resp) = post_text(&server, "/v2/models/noop/infer", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{datatype} {v}: {resp}");
        let msg = v2_error(&resp);
        let shown = if v.contains('e') { "1e300" } else { v };
        assert!(
            msg.contains("input 'input'") && (msg.contains(shown) || msg.contains("not an integer")),
            "{datatype} {v}: {msg}"
        );
    }
}
