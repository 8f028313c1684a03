//! The one error type of the jobs runtime.
//!
//! Messages name the problem for the client that made the request; a store
//! failure keeps its [`StoreError`] so the caller decides what to show (the
//! HTTP server keeps the database's own text in the log).

use sluice_store::StoreError;

/// Why a job operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The request is malformed, e.g. a priority out of range or an input
    /// value that cannot be parsed.
    #[error("{0}")]
    Invalid(String),
    /// Unknown job or model (or model version).
    #[error("{0}")]
    NotFound(String),
    /// The model exists but failed to load.
    #[error("{0}")]
    ModelUnavailable(String),
    /// Not allowed, e.g. a source path outside the allowed roots.
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the job's state, e.g. inputs for a closed job.
    #[error("{0}")]
    Conflict(String),
    /// An input, or the job's number of inputs, is over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// The job store refused or failed the operation.
    #[error(transparent)]
    Store(#[from] StoreError),
}
