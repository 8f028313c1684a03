//! Sluice's engine: turns a stream of single items into batched model calls.
//!
//! Per model, items flow through four stages, each bounded:
//!
//! ```text
//! submit ─▶ [pre-processing queue] ─▶ processing threads (decode, tokenize)
//!        ─▶ [model queue] ─▶ batcher task (policy::decide_lanes) ─▶ [batch channel]
//! infer_realtime ─▶ (pre-process on the blocking pool) ─▶ [real-time queue] ─▶ batcher task
//!        ─▶ instance threads (Runtime::run, bisect failures, post-process) ─▶ Reply
//! ```
//!
//! The batcher is one async task, on a thread of its own, that owns the waiting items; it forms a batch
//! only when an instance is free, so the policy picks from everything that
//! waits at that moment. Inference and processing run on dedicated OS
//! threads, never on the async executor. A failed batch is bisected until
//! only the failing items fail; one that runs out of memory is split and
//! retried, and the model's effective batch size backs off (`limit`).

mod batcher;
#[cfg(any(test, feature = "test-util"))]
pub mod fault;
mod instance;
mod item;
mod limit;
mod model;
pub mod noop;
mod stats;

pub use item::{CancelFlag, Completion, Reply};
pub use model::{load_backend, EngineError, Model, QueueDepth, RealtimeOptions, SubmitOptions};
pub use stats::{LatencyHistogram, Stats, StatsSnapshot, LATENCY_BUCKETS};

/// Re-exported so callers can pre-process items themselves (benchmarks).
pub use sluice_processing::{Meta, Prepared};
