//! The v2 protocol over gRPC: `inference.GRPCInferenceService` (tonic).
//!
//! The service definition lives in `proto/grpc_service.proto` and carries the
//! methods Sluice implements with the message and field numbers of Triton's
//! `grpc_service.proto`, so stubs generated from Triton's file call it
//! unchanged. Tensors travel as `raw_input_contents` / `raw_output_contents`
//! (what Triton returns and `tritonclient` sends), or as typed `contents`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::{V2Error, WireData, WireTensor};
use crate::registry::Registry;

/// Code generated from `proto/grpc_service.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::infer_parameter::ParameterChoice;

impl From<V2Error> for Status {
    fn from(e: V2Error) -> Status {
        let msg = e.to_string();
        match e {
            V2Error::BadRequest(_) => Status::invalid_argument(msg),
            V2Error::NotFound(_) => Status::not_found(msg),
            // Not RESOURCE_EXHAUSTED: that is the retryable overload answer.
            V2Error::TooLarge(_) => Status::invalid_argument(msg),
            V2Error::Overloaded(_) => Status::resource_exhausted(msg),
            V2Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            V2Error::Unavailable(_) => Status::unavailable(msg),
            V2Error::Internal(_) => Status::internal(msg),
        }
    }
}

/// The gRPC service over the served models.
#[derive(Clone)]
pub struct InferenceService {
    registry: Arc<Registry>,
    max_message_bytes: usize,
}

impl InferenceService {
    /// A service answering for `registry`'s models.
    pub fn new(registry: Arc<Registry>) -> InferenceService {
        InferenceService {
            registry,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The tonic server wrapper, accepting messages up to `max_message_bytes`.
    pub fn into_server(mut self, max_message_bytes: usize) -> GrpcInferenceServiceServer<InferenceService> {
        self.max_message_bytes = max_message_bytes;
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

/// tonic's own default message limit, used until [`InferenceService::into_server`] sets one.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Parses the `grpc-timeout` header ("100m", "5S", ...), which tonic clients
/// and `tritonclient` (`client_timeout`) send as the call's deadline.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A positive whole number from a parameter; `None` for any other value.
fn param_u64(p: &pb::InferParameter) -> Option<u64> {
    match p.parameter_choice.as_ref()? {
        ParameterChoice::Int64Param(v) => u64::try_from(*v).ok(),
        ParameterChoice::Uint64Param(v) => Some(*v),
        ParameterChoice::DoubleParam(v) if *v >= 0.0 && v.is_finite() && v.fract() == 0.0 && *v < 1.8e19 => {
            // A timeout in microseconds, checked whole and in range above.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(*v as u64)
        }
        _ => None,
    }
    .filter(|&v| v > 0)
}

fn from_contents(
    name: &str,
    datatype: &str,
    shape: Vec<usize>,
    c: pb::InferTensorContents,
) -> Result<WireTensor, V2Error> {
    use sluice_core::{DType, Tensor, TensorData};
    let bad = |e: sluice_core::TensorError| V2Error::BadRequest(format!("input '{name}': {e}"));
    let data = match super::parse_datatype(datatype)? {
        None => WireData::Bytes(c.bytes_contents),
        Some(dtype) => {
            let data = match dtype {
                DType::F32 => TensorData::F32(c.fp32_contents),
                DType::F64 => TensorData::F64(c.fp64_contents),
                DType::I64 => TensorData::I64(c.int64_contents),
                DType::I32 => TensorData::I32(c.int_contents),
                DType::Bool => TensorData::Bool(c.bool_contents),
                DType::U8 => TensorData::U8(
                    c.uint_contents
                        .into_iter()
                        .map(|v| {
                            u8::try_from(v)
                                .map_err(|_| V2Error::BadRequest(format!("input '{name}': {v} is not a UINT8")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                DType::I8 => TensorData::I8(
                    c.int_contents
                        .into_iter()
                        .map(|v| {
                            i8::try_from(v)
                                .map_err(|_| V2Error::BadRequest(format!("input '{name}': {v} is not an INT8")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            WireData::Numeric(Tensor::new(shape.clone(), data).map_err(bad)?)
        }
    };
    if let WireData::Bytes(b) = &data {
        let numel = super::numel(name, &shape)?;
        if b.len() != numel {
            return Err(V2Error::BadRequest(format!(
                "input '{name}': shape {shape:?} needs {numel} BYTES elements, got {}",
                b.len()
            )));
        }
    }
    Ok(WireTensor {
        name: name.into(),
        shape,
        data,
    })
}

fn decode(req: pb::ModelInferRequest, limits: &super::InputLimits) -> Result<super::InferRequest, V2Error> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(V2Error::BadRequest(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let shape = super::parse_shape(&input.name, &input.shape, limits)?;
        let t = match raw.next() {
            Some(bytes) => super::tensor_from_raw(&input.name, &input.datatype, shape, &bytes)?,
            None => from_contents(&input.name, &input.datatype, shape, input.contents.unwrap_or_default())?,
        };
        inputs.push(t);
    }
    let timeout = match req.parameters.get("timeout") {
        None => None,
        Some(p) => Some(param_u64(p).map(Duration::from_micros).ok_or_else(|| {
            V2Error::BadRequest("parameters.timeout must be a positive whole number of microseconds".into())
        })?),
    };
    Ok(super::InferRequest {
        id: req.id,
        inputs,
        outputs: req.outputs.into_iter().map(|o| o.name).collect(),
        timeout,
    })
}

fn tensor_meta(t: super::TensorMeta) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.registry.ready().next().is_some();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = super::lookup(&self.registry, &r.name, Some(&r.version)).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: super::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::EXTENSIONS.iter().map(|e| (*e).to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let model = super::lookup(&self.registry, &r.name, Some(&r.version))?;
        let meta = super::metadata(model);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: meta.name,
            versions: meta.versions,
            platform: meta.platform,
            inputs: meta.inputs.into_iter().map(tensor_meta).collect(),
            outputs: meta.outputs.into_iter().map(tensor_meta).collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(&req).map(|t| Instant::now() + t);
        let r = req.into_inner();
        let model = super::lookup(&self.registry, &r.model_name, Some(&r.model_version))?;
        let limits = super::InputLimits::for_model(model, self.max_message_bytes);
        let request = decode(r, &limits)?;
        let resp = super::infer(model, request, deadline, &limits).await?;
        let raw_output_contents = resp.outputs.iter().map(super::raw_bytes).collect();
        let outputs = resp
            .outputs
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name.clone(),
                datatype: t.datatype().into(),
                shape: t.wire_shape(),
                parameters: Default::default(),
                contents: None,
            })
            .collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: resp.model_name,
            model_version: resp.model_version,
            id: resp.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let mut r = Request::new(());
        r.metadata_mut().insert("grpc-timeout", "250m".parse().expect("value"));
        assert_eq!(grpc_timeout(&r), Some(Duration::from_millis(250)));
        r.metadata_mut().insert("grpc-timeout", "3S".parse().expect("value"));
        assert_eq!(grpc_timeout(&r), Some(Duration::from_secs(3)));
        r.metadata_mut().insert("grpc-timeout", "x".parse().expect("value"));
        assert_eq!(grpc_timeout(&r), None);
    }

    #[test]
    fn raw_contents_must_match_the_inputs() {
        let req = pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 1],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0; 4], vec![0; 4]],
            ..Default::default()
        };
        let err = decode(req, &super::super::InputLimits::default()).expect_err("two raw for one input");
        assert!(err.to_string().contains("raw_input_contents"), "{err}");
    }

    #[test]
    fn typed_contents_build_tensors() {
        let req = pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: vec![1.0, 2.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            parameters: [(
                "timeout".to_string(),
                pb::InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(2000)),
                },
            )]
            .into(),
            ..Default::default()
        };
        let r = decode(req, &super::super::InputLimits::default()).expect("decodes");
        assert_eq!(r.timeout, Some(Duration::from_millis(2)));
        assert_eq!(r.inputs[0].shape, vec![1, 2]);
    }
}
