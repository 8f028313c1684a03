//! Raw tensor models: items are JSON tensors, checked against the graph.
//!
//! For any ONNX model without built-in processing. An item is either an
//! object of named tensors (`{"x": [[..]], "mask": {"shape": [..], "b64": ".."}}`)
//! or, for single-input models, one bare tensor. Each tensor excludes the
//! batch dimension; its dtype comes from the graph and its shape is checked
//! against the graph here, so a wrong shape fails that item alone.

use sluice_core::spec::TensorSpec;
use sluice_core::{DType, Input, ItemError, ModelSignature, NamedTensors, Output, Tensor, TensorInfo};

use crate::{Meta, Prepared, ProcessingError, Processor};

/// Pass-through processing for raw tensors.
pub struct TensorProcessor {
    inputs: Vec<TensorInfo>,
    default_input: Option<String>,
}

impl TensorProcessor {
    /// Creates the processor for a graph.
    pub fn new(spec: &TensorSpec, signature: &ModelSignature) -> Result<TensorProcessor, ProcessingError> {
        let default_input = match &spec.default_input {
            Some(name) => {
                if signature.input(name).is_none() {
                    return Err(ProcessingError::Config(format!(
                        "default_input '{name}' is not an input of the model"
                    )));
                }
                Some(name.clone())
            }
            None if signature.inputs.len() == 1 => signature.inputs.first().map(|i| i.name.clone()),
            None => None,
        };
        Ok(TensorProcessor {
            inputs: signature.inputs.clone(),
            default_input,
        })
    }

    fn check(&self, info: &TensorInfo, tensor: &Tensor) -> Result<(), ItemError> {
        info.check_item(tensor.dtype(), &tensor.shape)
            .map_err(ItemError::invalid)
    }
}

impl Processor for TensorProcessor {
    fn is_cheap(&self) -> bool {
        true
    }

    fn preprocess(&self, input: Input) -> Result<Prepared, ItemError> {
        let tensors = match input {
            Input::Tensors(t) => t,
            Input::Json(value) => self.parse(&value)?,
            Input::Text(text) => {
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ItemError::invalid(format!("tensor input is not JSON: {e}")))?;
                self.parse(&value)?
            }
            Input::Bytes(_) => {
                return Err(ItemError::invalid(
                    "this model takes tensors (JSON arrays or base64 little-endian bytes), got raw bytes",
                ))
            }
            other @ Input::Frame(_) => {
                return Err(ItemError::invalid(format!(
                    "this model takes tensors (JSON arrays or base64 little-endian bytes), got a {}",
                    other.kind()
                )))
            }
        };
        for info in &self.inputs {
            let t = tensors
                .get(&info.name)
                .ok_or_else(|| ItemError::invalid(format!("missing input '{}'", info.name)))?;
            self.check(info, t)?;
        }
        if let Some(extra) = tensors.keys().find(|k| !self.inputs.iter().any(|i| &i.name == *k)) {
            return Err(ItemError::invalid(format!("unknown input '{extra}'")));
        }
        // Ragged inputs are padded to the largest item of a batch: the
        // element count is what length grouping should keep similar.
        let len = tensors.values().map(Tensor::numel).max().unwrap_or(1).max(1);
        Ok(Prepared {
            tensors,
            len,
            meta: Meta::None,
        })
    }

    fn postprocess(&self, outputs: NamedTensors, _meta: &Meta) -> Result<Output, ItemError> {
        Ok(Output::Tensors(outputs))
    }
}

impl TensorProcessor {
    fn parse(&self, value: &serde_json::Value) -> Result<NamedTensors, ItemError> {
        let named = value.as_object().filter(|o| !o.contains_key("shape"));
        let mut out = NamedTensors::new();
        match named {
            Some(obj) => {
                for (name, v) in obj {
                    let info = self
                        .inputs
                        .iter()
                        .find(|i| &i.name == name)
                        .ok_or_else(|| ItemError::invalid(format!("unknown input '{name}'")))?;
                    out.insert(name.clone(), parse_one(info, v)?);
                }
            }
            None => {
                let name = self.default_input.as_ref().ok_or_else(|| {
                    ItemError::invalid("this model has several inputs: give an object of named tensors")
                })?;
                let info = self
                    .inputs
                    .iter()
                    .find(|i| &i.name == name)
                    .ok_or_else(|| ItemError::invalid(format!("unknown input '{name}'")))?;
                out.insert(name.clone(), parse_one(info, value)?);
            }
        }
        Ok(out)
    }
}

fn parse_one(info: &TensorInfo, v: &serde_json::Value) -> Result<Tensor, ItemError> {
    Tensor::from_json(v, info.dtype.unwrap_or(DType::F32))
        .map_err(|e| ItemError::invalid(format!("input '{}': {e}", info.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ItemErrorKind;

    fn proc_() -> TensorProcessor {
        let sig = ModelSignature {
            inputs: vec![TensorInfo {
                name: "x".into(),
                dtype: Some(DType::F32),
                shape: vec![None, Some(4)],
            }],
            outputs: vec![],
        };
        TensorProcessor::new(&TensorSpec::default(), &sig).expect("processor")
    }

    #[test]
    fn bare_array_goes_to_the_only_input() {
        let p = proc_()
            .preprocess(Input::Json(serde_json::json!([1, 2, 3, 4])))
            .expect("ok");
        assert_eq!(p.tensors["x"].shape, vec![4]);
    }

    #[test]
    fn wrong_shape_is_an_item_error_naming_the_input() {
        let err = proc_()
            .preprocess(Input::Json(serde_json::json!([1, 2, 3])))
            .expect_err("shape");
        assert_eq!(err.kind, ItemErrorKind::InvalidInput);
        assert!(
            err.message.contains("'x'") && err.message.contains("[4]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_and_missing_inputs() {
        let err = proc_()
            .preprocess(Input::Json(serde_json::json!({"y": [1, 2, 3, 4]})))
            .expect_err("unknown");
        assert!(err.message.contains("unknown input 'y'"), "{}", err.message);
        let err = proc_().preprocess(Input::Text("not json".into())).expect_err("json");
        assert!(err.message.contains("not JSON"), "{}", err.message);
    }
}
