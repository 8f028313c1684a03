//! Sluice's jobs runtime, independent of any transport.
//!
//! [`Jobs`] is the job lifecycle (create with inline inputs, from a
//! server-side source or open for uploads; add inputs; close; cancel) with
//! the validation of a request that is not specific to HTTP. The
//! [`scheduler`] feeds the models from the store and records results;
//! [`ingest`] turns JSON values and server-side files into job inputs;
//! [`source_jobs`] reads `source` jobs under their ingest claim, resumes them
//! after a crash and fails them with a reason when their source fails;
//! [`exports`] writes jobs' results to folders and object stores as they
//! arrive, exactly once across crashes; [`recovery`] settles at start what a restart interrupted. The HTTP server
//! (`sluice-server`) calls into this crate and only maps requests and errors.

pub mod error;
pub mod exports;
pub mod ingest;
pub mod jobs;
pub mod node;
pub mod recovery;
pub mod registry;
pub mod scheduler;
pub mod source_jobs;
pub mod video_summary;

use std::sync::Arc;

pub use error::JobsError;
pub use exports::{OutputConfig, OutputRequest};
pub use jobs::{Jobs, NewJobRequest};
pub use node::{NodeConfig, Role};
pub use recovery::recover_unclosed;
pub use registry::Registry;
pub use scheduler::{Scheduler, SchedulerConfig};

/// Limits on what one request may carry.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest single input in bytes.
    pub max_input_bytes: usize,
    /// Most inputs in one job.
    pub max_inputs_per_job: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_input_bytes: 16 << 20,
            max_inputs_per_job: 50_000_000,
        }
    }
}

/// A shutdown signal shared by every part of the server that must stop
/// early: set once, seen by all clones.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for ShutdownSignal {
    fn default() -> Self {
        ShutdownSignal(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl ShutdownSignal {
    /// Sets the signal.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Whether the signal is set.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the signal is set.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = rx.wait_for(|set| *set).await;
    }
}
