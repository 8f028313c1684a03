//! Errors that cross crate boundaries: a failure of one item, or of a whole batch.
//!
//! A batch failure is never shown to users as such: the engine bisects the
//! batch until it finds the items that fail, and each of those gets its own
//! [`ItemError`]. That is what lets one malformed input fail alone.

use serde::{Deserialize, Serialize};

/// The category of a per-item failure; stable strings used in JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemErrorKind {
    /// The input could not be decoded or does not fit the model
    /// (undecodable image, empty text, wrong tensor shape).
    InvalidInput,
    /// The model failed on this item.
    Inference,
    /// The item did not finish in time.
    Timeout,
    /// The item was canceled before it ran.
    Canceled,
    /// The engine is shutting down or the model is unavailable.
    Unavailable,
    /// A bug or an unexpected state in Sluice itself.
    Internal,
}

impl ItemErrorKind {
    /// Stable snake_case code, as serialised.
    pub fn code(self) -> &'static str {
        match self {
            ItemErrorKind::InvalidInput => "invalid_input",
            ItemErrorKind::Inference => "inference",
            ItemErrorKind::Timeout => "timeout",
            ItemErrorKind::Canceled => "canceled",
            ItemErrorKind::Unavailable => "unavailable",
            ItemErrorKind::Internal => "internal",
        }
    }
}

/// Why one item failed. Serialised as `{"code": .., "message": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ItemError {
    /// Category.
    #[serde(rename = "code")]
    pub kind: ItemErrorKind,
    /// Human-readable detail naming the problem.
    pub message: String,
}

impl ItemError {
    /// Creates an error of `kind`.
    pub fn new(kind: ItemErrorKind, message: impl Into<String>) -> ItemError {
        ItemError {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for [`ItemErrorKind::InvalidInput`].
    pub fn invalid(message: impl Into<String>) -> ItemError {
        ItemError::new(ItemErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ItemErrorKind::Inference`].
    pub fn inference(message: impl Into<String>) -> ItemError {
        ItemError::new(ItemErrorKind::Inference, message)
    }
}

/// A whole batch failed in the runtime; the engine bisects to isolate the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BatchError {
    /// What the runtime reported.
    pub message: String,
    /// Whether the failure could depend on the items (then bisecting helps).
    /// False for failures of the runtime itself (library missing, device lost).
    pub item_dependent: bool,
    /// The batch did not fit in memory: a smaller batch may succeed, so the
    /// engine splits it and retries, and backs the model's batch size off.
    pub out_of_memory: bool,
}

impl BatchError {
    /// A failure that may be caused by (some of) the batch's items.
    pub fn new(message: impl Into<String>) -> BatchError {
        BatchError {
            message: message.into(),
            item_dependent: true,
            out_of_memory: false,
        }
    }

    /// A failure of the runtime that no choice of items avoids.
    pub fn fatal(message: impl Into<String>) -> BatchError {
        BatchError {
            message: message.into(),
            item_dependent: false,
            out_of_memory: false,
        }
    }

    /// The batch ran out of memory (a smaller one may fit).
    pub fn out_of_memory(message: impl Into<String>) -> BatchError {
        BatchError {
            message: message.into(),
            item_dependent: true,
            out_of_memory: true,
        }
    }

    /// Whether the failure is an out-of-memory error: marked so by the
    /// backend, or reported in words a runtime uses for one (see
    /// [`looks_like_out_of_memory`]).
    pub fn is_out_of_memory(&self) -> bool {
        self.out_of_memory || looks_like_out_of_memory(&self.message)
    }
}

/// Phrases with which runtimes report an allocation failure: ONNX Runtime on
/// CPU ("Failed to allocate memory for requested buffer", `bad_alloc`) and on
/// CUDA ("CUDA failure 2: out of memory", `cudaErrorMemoryAllocation`,
/// `CUBLAS_STATUS_ALLOC_FAILED`, the BFC arena's "Available memory of"),
/// PyTorch and Python OMI workers ("CUDA out of memory", `MemoryError`), and
/// gRPC's `RESOURCE_EXHAUSTED` status an OMI worker may answer with.
const OOM_PHRASES: &[&str] = &[
    "out of memory",
    "failed to allocate memory",
    "bad_alloc",
    "bad allocation",
    "cudaerrormemoryallocation",
    "cuda_error_out_of_memory",
    "cublas_status_alloc_failed",
    "available memory of",
    "memoryerror",
    "resource_exhausted",
    "resource has been exhausted",
    "resourceexhausted",
];

/// Whether a runtime's error message reports an out-of-memory failure.
pub fn looks_like_out_of_memory(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    OOM_PHRASES.iter().any(|p| lower.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_allocation_failures_are_recognised() {
        for m in [
            "Failed to allocate memory for requested buffer of size 268435456",
            "std::bad_alloc",
            "CUDA failure 2: out of memory ; GPU=0 ; hostname=x ; expr=cudaMalloc",
            "BFCArena::AllocateRawInternal Available memory of 0 is smaller than requested bytes of 8388608",
            "the worker failed the batch: Some resource has been exhausted: MemoryError",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ] {
            assert!(looks_like_out_of_memory(m), "{m}");
        }
        for m in [
            "input 'x': expected shape [512], got [3]",
            "the worker failed the batch: ValueError: bad row",
            "injected failure: the batch contains a poisoned item",
        ] {
            assert!(!looks_like_out_of_memory(m), "{m}");
        }
        assert!(BatchError::out_of_memory("max_batch_bytes exceeded").is_out_of_memory());
        assert!(!BatchError::new("shape").is_out_of_memory());
    }
}
