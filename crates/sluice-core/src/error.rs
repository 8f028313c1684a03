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
}

impl BatchError {
    /// A failure that may be caused by (some of) the batch's items.
    pub fn new(message: impl Into<String>) -> BatchError {
        BatchError {
            message: message.into(),
            item_dependent: true,
        }
    }

    /// A failure of the runtime that no choice of items avoids.
    pub fn fatal(message: impl Into<String>) -> BatchError {
        BatchError {
            message: message.into(),
            item_dependent: false,
        }
    }
}
