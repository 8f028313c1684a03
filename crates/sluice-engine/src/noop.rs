//! A runtime that does no work: it echoes each item's `input` tensor as its
//! `output`. Used to measure the engine's own overhead (queue, batcher,
//! channels) with `runtime = "noop"` in model.toml.

use sluice_core::{Backend, BatchError, DType, ItemError, ModelSignature, NamedTensors, Runtime, TensorInfo};

/// Backend of the `noop` runtime.
pub struct NoopBackend {
    signature: ModelSignature,
}

impl NoopBackend {
    /// A model with one float32 input `input` `[batch, n]` and the same output.
    pub fn new() -> NoopBackend {
        let info = |name: &str| TensorInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: vec![None, None],
        };
        NoopBackend {
            signature: ModelSignature {
                inputs: vec![info("input")],
                outputs: vec![info("output")],
            },
        }
    }
}

impl Default for NoopBackend {
    fn default() -> Self {
        NoopBackend::new()
    }
}

impl Backend for NoopBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn describe(&self) -> String {
        "noop (echo)".into()
    }

    fn create_instance(&self, _index: usize) -> Result<Box<dyn Runtime>, BatchError> {
        Ok(Box::new(Noop))
    }
}

struct Noop;

impl Runtime for Noop {
    fn run(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        Ok(batch
            .iter()
            .map(|item| {
                let mut out = NamedTensors::new();
                if let Some(t) = item.get("input") {
                    out.insert("output".to_string(), t.clone());
                }
                Ok(out)
            })
            .collect())
    }
}
