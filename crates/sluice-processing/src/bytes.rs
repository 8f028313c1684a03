//! Byte-string models (OMI workers): items are named files, results are named files.
//!
//! An OMI worker takes `map<string, bytes>` per item and returns the same, so
//! items travel as 1-D `u8` tensors keyed by input name. Pre-processing turns
//! raw bytes or text into the default input, and a JSON object
//! (`{"name": "text" | {"base64": ".."}}`) into several inputs; post-processing
//! makes each output file readable: JSON when it parses as JSON, else UTF-8
//! text, else `{"base64": ".."}`.

use std::collections::BTreeMap;

use base64::Engine as _;
use sluice_core::spec::BytesSpec;
use sluice_core::{Input, ItemError, ModelSignature, NamedTensors, Output, Tensor, TensorData};

use crate::{Meta, Prepared, ProcessingError, Processor};

/// Pass-through processing for named byte strings.
pub struct BytesProcessor {
    inputs: Vec<String>,
    default_input: String,
}

impl BytesProcessor {
    /// Creates the processor for a model's declared inputs.
    pub fn new(spec: &BytesSpec, signature: &ModelSignature) -> Result<BytesProcessor, ProcessingError> {
        let inputs: Vec<String> = signature.inputs.iter().map(|i| i.name.clone()).collect();
        let default_input = match &spec.default_input {
            Some(name) if inputs.is_empty() || inputs.contains(name) => name.clone(),
            Some(name) => {
                return Err(ProcessingError::Config(format!(
                    "default_input '{name}' is not an input of the model (inputs: {inputs:?})"
                )))
            }
            None => inputs.first().cloned().unwrap_or_else(|| "input".to_string()),
        };
        Ok(BytesProcessor { inputs, default_input })
    }

    fn check_name(&self, name: &str) -> Result<(), ItemError> {
        if self.inputs.is_empty() || self.inputs.iter().any(|i| i == name) {
            Ok(())
        } else {
            Err(ItemError::invalid(format!(
                "unknown input '{name}' (the model takes {:?})",
                self.inputs
            )))
        }
    }

    fn parse_json(&self, value: &serde_json::Value) -> Result<NamedTensors, ItemError> {
        let mut out = NamedTensors::new();
        match value {
            serde_json::Value::Object(obj) if !is_base64_object(value) => {
                for (name, v) in obj {
                    self.check_name(name)?;
                    out.insert(name.clone(), bytes_tensor(json_bytes(name, v)?));
                }
            }
            other => {
                out.insert(
                    self.default_input.clone(),
                    bytes_tensor(json_bytes(&self.default_input, other)?),
                );
            }
        }
        Ok(out)
    }
}

fn is_base64_object(v: &serde_json::Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("base64").is_some_and(serde_json::Value::is_string))
}

/// The bytes one JSON value stands for: a string as UTF-8, `{"base64": ..}`
/// decoded, anything else as its JSON text.
fn json_bytes(name: &str, v: &serde_json::Value) -> Result<Vec<u8>, ItemError> {
    match v {
        serde_json::Value::String(s) => Ok(s.as_bytes().to_vec()),
        _ if is_base64_object(v) => {
            let b64 = v.get("base64").and_then(serde_json::Value::as_str).unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ItemError::invalid(format!("input '{name}': invalid base64: {e}")))
        }
        other => Ok(other.to_string().into_bytes()),
    }
}

/// A 1-D `u8` tensor holding `bytes`.
pub fn bytes_tensor(bytes: Vec<u8>) -> Tensor {
    Tensor {
        shape: vec![bytes.len()],
        data: TensorData::U8(bytes),
    }
}

/// A readable JSON value for an output file.
pub fn file_value(bytes: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

impl Processor for BytesProcessor {
    fn is_cheap(&self) -> bool {
        true
    }

    fn preprocess(&self, input: Input) -> Result<Prepared, ItemError> {
        let tensors = match input {
            Input::Bytes(b) => NamedTensors::from([(self.default_input.clone(), bytes_tensor(b))]),
            Input::Text(t) => NamedTensors::from([(self.default_input.clone(), bytes_tensor(t.into_bytes()))]),
            Input::Json(v) => self.parse_json(&v)?,
            Input::Tensors(t) => {
                for (name, tensor) in &t {
                    self.check_name(name)?;
                    if !matches!(tensor.data, TensorData::U8(_)) || tensor.shape.len() != 1 {
                        return Err(ItemError::invalid(format!("input '{name}' must be a 1-D u8 tensor")));
                    }
                }
                t
            }
            other @ Input::Frame(_) => {
                return Err(ItemError::invalid(format!(
                    "this model takes named files (bytes, text or a JSON object of inputs), got a {}",
                    other.kind()
                )))
            }
        };
        if tensors.is_empty() {
            return Err(ItemError::invalid("the item has no inputs"));
        }
        Ok(Prepared {
            tensors,
            len: 1,
            meta: Meta::None,
        })
    }

    fn postprocess(&self, outputs: NamedTensors, _meta: &Meta) -> Result<Output, ItemError> {
        let mut files = BTreeMap::new();
        for (name, t) in outputs {
            let value = match &t.data {
                TensorData::U8(b) => file_value(b),
                _ => t.to_json(),
            };
            files.insert(name, value);
        }
        Ok(Output::Files(files))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{DType, TensorInfo};

    fn proc_() -> BytesProcessor {
        let info = |n: &str| TensorInfo {
            name: n.into(),
            dtype: Some(DType::U8),
            shape: vec![None, None],
        };
        let sig = ModelSignature {
            inputs: vec![info("text"), info("config")],
            outputs: vec![info("results.json")],
        };
        BytesProcessor::new(&BytesSpec::default(), &sig).expect("processor")
    }

    fn bytes_of(p: &Prepared, name: &str) -> Vec<u8> {
        match &p.tensors[name].data {
            TensorData::U8(b) => b.clone(),
            other => panic!("u8 expected, got {other:?}"),
        }
    }

    #[test]
    fn text_and_bytes_go_to_the_first_input() {
        let p = proc_().preprocess(Input::Text("héllo".into())).expect("ok");
        assert_eq!(bytes_of(&p, "text"), "héllo".as_bytes());
        let p = proc_().preprocess(Input::Bytes(vec![0, 255])).expect("ok");
        assert_eq!(bytes_of(&p, "text"), [0, 255]);
    }

    #[test]
    fn json_object_names_several_inputs() {
        let p = proc_()
            .preprocess(Input::Json(
                serde_json::json!({"text": "hi", "config": {"base64": "AP8="}}),
            ))
            .expect("ok");
        assert_eq!(bytes_of(&p, "text"), b"hi");
        assert_eq!(bytes_of(&p, "config"), [0, 255]);
        let err = proc_()
            .preprocess(Input::Json(serde_json::json!({"nope": "x"})))
            .expect_err("unknown");
        assert!(err.message.contains("'nope'"), "{}", err.message);
        let err = proc_()
            .preprocess(Input::Json(serde_json::json!({"text": {"base64": "!!"}})))
            .expect_err("base64");
        assert!(err.message.contains("base64"), "{}", err.message);
    }

    #[test]
    fn outputs_become_json_text_or_base64() {
        let outputs = NamedTensors::from([
            ("a.json".to_string(), bytes_tensor(br#"{"x": 1}"#.to_vec())),
            ("b.txt".to_string(), bytes_tensor(b"plain words".to_vec())),
            ("c.bin".to_string(), bytes_tensor(vec![0xff, 0xfe])),
        ]);
        let Output::Files(files) = proc_().postprocess(outputs, &Meta::None).expect("ok") else {
            panic!("files expected")
        };
        assert_eq!(files["a.json"], serde_json::json!({"x": 1}));
        assert_eq!(files["b.txt"], serde_json::json!("plain words"));
        assert_eq!(files["c.bin"], serde_json::json!({"base64": "//4="}));
    }
}
