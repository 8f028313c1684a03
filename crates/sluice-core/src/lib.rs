//! Sluice's shared vocabulary.
//!
//! Every other crate (backends, processing, engine, CLI, server) speaks in the
//! types defined here, so this crate stays small and dependency-light: tensors
//! and their stacking/splitting, work items and their results, the per-model
//! configuration read from `model.toml`, the [`Runtime`] trait that backends
//! implement, and the batching policy as a pure function.

pub mod describe;
pub mod error;
pub mod item;
pub mod local;
pub mod policy;
pub mod runtime;
pub mod spec;
pub mod tensor;

pub use describe::{Describe, FrameFit, Gives, Takes};
pub use error::{BatchError, ItemError, ItemErrorKind};
pub use item::{Detection, Frame, Input, ItemId, ItemResult, Label, Output};
pub use runtime::{Backend, ModelSignature, Runtime, TensorInfo};
pub use spec::{ModelSpec, SpecError};
pub use tensor::{DType, NamedTensors, Tensor, TensorData, TensorError};
