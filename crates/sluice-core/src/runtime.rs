//! The seam between the engine and the things that execute models.
//!
//! A [`Backend`] is a loaded model description (an ONNX file, a fleet of
//! out-of-process workers, a fault-injecting mock); it creates one [`Runtime`]
//! per model instance. Each runtime is owned by a dedicated thread, so it may
//! hold `&mut` state (ONNX Runtime sessions need it) and may block freely.

use serde::Serialize;

use crate::error::{BatchError, ItemError};
use crate::tensor::{DType, NamedTensors};

/// Name, element type and shape of one model input or output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    /// Graph name.
    pub name: String,
    /// Element type, when known.
    pub dtype: Option<DType>,
    /// Dimensions including the batch dimension; `None` is dynamic.
    pub shape: Vec<Option<usize>>,
}

impl TensorInfo {
    /// Checks an item tensor (no batch dimension) against this declaration.
    pub fn check_item(&self, dtype: DType, shape: &[usize]) -> Result<(), String> {
        if let Some(want) = self.dtype {
            if want != dtype {
                return Err(format!("input '{}' must be {want}, got {dtype}", self.name));
            }
        }
        let declared = self.shape.get(1..).unwrap_or(&[]);
        if declared.len() != shape.len() {
            return Err(format!(
                "input '{}' expects shape {} per item, got {:?}",
                self.name,
                fmt_dims(declared),
                shape
            ));
        }
        for (d, s) in declared.iter().zip(shape) {
            if let Some(d) = d {
                if d != s {
                    return Err(format!(
                        "input '{}' expects shape {} per item, got {:?}",
                        self.name,
                        fmt_dims(declared),
                        shape
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Formats dimensions with `?` for dynamic ones: `[?, 3, 224, 224]`.
pub fn fmt_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// What a model takes and returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelSignature {
    /// Inputs, in graph order.
    pub inputs: Vec<TensorInfo>,
    /// Outputs, in graph order.
    pub outputs: Vec<TensorInfo>,
}

impl ModelSignature {
    /// Looks up an input by name.
    pub fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

/// One model instance: a batch of items in, one result per item out.
///
/// `batch[i]` holds item `i`'s tensors without the batch dimension; the
/// returned vector must have exactly `batch.len()` entries in the same order.
/// A per-item `Err` fails that item alone; `Err(BatchError)` fails the call and
/// makes the engine bisect the batch.
pub trait Runtime: Send {
    /// Runs one batch. Blocking; called on the instance's own thread.
    fn run(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError>;
}

/// A loaded model from which instances are created.
pub trait Backend: Send + Sync {
    /// Inputs and outputs of the model.
    fn signature(&self) -> &ModelSignature;

    /// Where it runs, for display (`"onnx cpu, 2 threads"`).
    fn describe(&self) -> String;

    /// Creates instance number `index` (each runs on its own thread).
    fn create_instance(&self, index: usize) -> Result<Box<dyn Runtime>, BatchError>;

    /// The largest batch the model itself accepts, when it declares one (an
    /// OMI worker's `Status`); the engine uses the smaller of this and the
    /// spec's `max_batch_size`.
    fn max_batch_size(&self) -> Option<usize> {
        None
    }
}
