//! The effective batch size of a model after out-of-memory failures.
//!
//! One [`Limiter`] per model, shared by its instance threads (which report
//! how each batch went) and its batcher (which reads the size to form the next
//! batch). The rules live in [`sluice_core::policy::Backoff`], a pure state
//! machine; this wraps it in a lock, mirrors the size in an atomic for the
//! batcher's hot path, and logs and counts every change.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use sluice_core::policy::{Backoff, SizeChange};
use sluice_core::{BatchError, NamedTensors};

use crate::stats::Stats;

pub(crate) struct Limiter {
    model: String,
    state: Mutex<Backoff>,
    effective: AtomicUsize,
    max_batch_bytes: Option<u64>,
}

impl Limiter {
    pub(crate) fn new(model: &str, max_batch_size: usize, max_batch_bytes: Option<u64>) -> Limiter {
        let state = Backoff::new(max_batch_size);
        Limiter {
            model: model.to_string(),
            effective: AtomicUsize::new(state.limit()),
            state: Mutex::new(state),
            max_batch_bytes,
        }
    }

    /// The effective max batch size now.
    pub(crate) fn effective(&self) -> usize {
        self.effective.load(Relaxed)
    }

    /// A batch of `size` items ran.
    pub(crate) fn succeeded(&self, size: usize, stats: &Stats) {
        let change = self.update(|b| b.on_success(size));
        if let Some(SizeChange::Grew { from, to }) = change {
            stats.set_effective_batch_size(to);
            tracing::info!(model = %self.model, from, to, "effective max batch size grew back after successful batches");
        }
    }

    /// A batch of `size` items ran out of memory (`error`); it is split.
    pub(crate) fn ran_out_of_memory(&self, size: usize, error: &BatchError, stats: &Stats) {
        stats.record_out_of_memory();
        let change = self.update(|b| b.on_out_of_memory(size));
        if let Some(SizeChange::BackedOff { from, to, failed }) = change {
            stats.set_effective_batch_size(to);
            stats.record_backoff();
            tracing::warn!(
                model = %self.model,
                from,
                to,
                failed_batch = failed,
                error = %error.message,
                "out of memory: the batch is split and retried, and the effective max batch size backs off"
            );
        } else {
            tracing::debug!(model = %self.model, size, error = %error.message, "out of memory: the batch is split and retried");
        }
    }

    /// The error for a batch over `max_batch_bytes` (its items × its largest
    /// item's input bytes), if one is configured and the batch, of more than
    /// one item, is over it.
    pub(crate) fn over_bytes(&self, batch: &[&NamedTensors]) -> Option<BatchError> {
        let limit = self.max_batch_bytes?;
        if batch.len() < 2 {
            return None;
        }
        let largest = batch.iter().map(|item| item_bytes(item)).max().unwrap_or(0);
        let bytes = largest.saturating_mul(batch.len() as u64);
        (bytes > limit).then(|| {
            BatchError::out_of_memory(format!(
                "a batch of {} items needs {bytes} input bytes, over max_batch_bytes = {limit}",
                batch.len()
            ))
        })
    }

    fn update(&self, f: impl FnOnce(&mut Backoff) -> Option<SizeChange>) -> Option<SizeChange> {
        // A poisoned lock only means another instance panicked while holding it;
        // the state itself is always consistent.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let change = f(&mut state);
        self.effective.store(state.limit(), Relaxed);
        change
    }
}

/// Input bytes of one item.
fn item_bytes(item: &NamedTensors) -> u64 {
    item.values()
        .map(|t| (t.data.len() as u64).saturating_mul(t.dtype().size() as u64))
        .sum()
}
