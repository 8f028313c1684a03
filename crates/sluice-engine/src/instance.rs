//! Model instance threads: run batches, isolate failing items, post-process.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use sluice_core::{BatchError, ItemError, ItemErrorKind, NamedTensors, Runtime};
use sluice_processing::Processor;

use crate::item::{Batch, Completion, DoneGuard};
use crate::limit::Limiter;
use crate::stats::{QueueWaits, Stats};

pub(crate) struct Context {
    pub model: String,
    pub index: usize,
    pub processor: Arc<dyn Processor>,
    pub stats: Arc<Stats>,
    pub limiter: Arc<Limiter>,
    pub _done: Arc<DoneGuard>,
}

pub(crate) fn run(mut runtime: Box<dyn Runtime>, rx: async_channel::Receiver<Batch>, ctx: Context) {
    while let Ok(batch) = rx.recv_blocking() {
        let Batch { items: all, permit } = batch;
        let now = Instant::now();
        let mut items = Vec::with_capacity(all.len());
        for q in all {
            match q.skip_reason(now) {
                Some(reason) => q.skip(reason, &ctx.stats),
                None => items.push(q),
            }
        }
        if items.is_empty() {
            continue;
        }
        let started = Instant::now();
        let inputs: Vec<&NamedTensors> = items.iter().map(|q| &q.prepared.tensors).collect();
        let span = tracing::debug_span!(
            "batch",
            model = %ctx.model,
            instance = ctx.index,
            size = items.len(),
            duration_ms = tracing::field::Empty
        );
        ctx.stats.instance_busy(true);
        let outcomes = span.in_scope(|| run_isolating(runtime.as_mut(), &inputs, &ctx.stats, &ctx.limiter));
        ctx.stats.instance_busy(false);
        let run_time = started.elapsed();
        ctx.stats.record_run(run_time);
        if !span.is_disabled() {
            span.record("duration_ms", run_time.as_secs_f64() * 1e3);
            tracing::debug!(parent: &span, "batch ran");
        }
        // The instance is free for the next batch while we post-process this one.
        drop(permit);
        let size = items.len();
        let mut waits = QueueWaits::default();
        for q in &items {
            waits.add(started.saturating_duration_since(q.submitted));
        }
        ctx.stats.record_queue_waits(&waits);
        for (q, outcome) in items.into_iter().zip(outcomes) {
            let queue_time = started.saturating_duration_since(q.submitted);
            let result = outcome.and_then(|tensors| {
                catch_unwind(AssertUnwindSafe(|| {
                    ctx.processor.postprocess(tensors, &q.prepared.meta)
                }))
                .unwrap_or_else(|p| {
                    Err(ItemError::new(
                        ItemErrorKind::Internal,
                        format!("post-processing panicked: {}", panic_message(&p)),
                    ))
                })
            });
            ctx.stats.record_item(result.is_ok());
            // Free the real-time slot before answering, so a client that got
            // its answer never sees its slot still taken.
            drop(q._slot);
            q.reply.send(Completion {
                id: q.id,
                result,
                queue_time,
                run_time,
                batch_size: size,
            });
        }
    }
    // Release the runtime (an OMI worker process, a session) before `ctx`
    // signals that the model is done, so `Model::join` means "all released".
    drop(runtime);
    drop(ctx);
}

/// Runs `batch`; when the whole call fails, splits it in halves and retries
/// each, down to single items, so only the items that fail get an error. A
/// batch that runs out of memory (or is over `max_batch_bytes`) is split the
/// same way and the model's batch size backs off: its items fail only if one
/// alone does not fit.
pub(crate) fn run_isolating(
    runtime: &mut dyn Runtime,
    batch: &[&NamedTensors],
    stats: &Stats,
    limiter: &Limiter,
) -> Vec<Result<NamedTensors, ItemError>> {
    let error = match limiter.over_bytes(batch) {
        Some(e) => e,
        None => {
            let outcome = catch_unwind(AssertUnwindSafe(|| runtime.run(batch)))
                .unwrap_or_else(|p| Err(BatchError::new(format!("runtime panicked: {}", panic_message(&p)))));
            match outcome {
                Ok(results) if results.len() == batch.len() => {
                    limiter.succeeded(batch.len(), stats);
                    return results;
                }
                Ok(results) => BatchError::new(format!(
                    "runtime returned {} results for {} items",
                    results.len(),
                    batch.len()
                )),
                Err(e) => e,
            }
        }
    };
    let out_of_memory = error.is_out_of_memory();
    if batch.len() == 1 || !error.item_dependent {
        let message = if out_of_memory && batch.len() == 1 {
            format!("out of memory with this item alone in its batch: {}", error.message)
        } else {
            error.message
        };
        return batch
            .iter()
            .map(|_| Err(ItemError::inference(message.clone())))
            .collect();
    }
    if out_of_memory {
        limiter.ran_out_of_memory(batch.len(), &error, stats);
    } else {
        stats.record_bisection();
    }
    let mid = batch.len() / 2;
    let mut left = run_isolating(runtime, &batch[..mid], stats, limiter);
    left.extend(run_isolating(runtime, &batch[mid..], stats, limiter));
    left
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
