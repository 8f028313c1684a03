//! The batcher: one task per model that owns the waiting items.
//!
//! It pulls items from the bounded model queue into a small window, waits for
//! a free instance, asks [`sluice_core::policy::decide`] what to release, and
//! hands the batch to the instance threads. Forming the batch only once an
//! instance is free means the policy chooses among everything that waits at
//! that moment, which is what makes length grouping effective under load.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::policy::{self, Decision, Pending, PolicyConfig};
use sluice_core::spec::ModelSpec;
use sluice_core::ItemId;
use sluice_processing::Prepared;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::model::Reply;
use crate::stats::Stats;

/// An item waiting for its batch.
pub(crate) struct Queued {
    pub id: ItemId,
    pub prepared: Prepared,
    pub reply: Reply,
    /// When the item was submitted (queue time is measured from here).
    pub submitted: Instant,
    /// When it entered the model queue (the batching delay counts from here).
    pub enqueued: Instant,
    /// Set when the item's run or job was canceled.
    pub cancel: Option<crate::model::CancelFlag>,
}

/// A batch on its way to an instance; the permit frees the instance slot.
pub(crate) struct Batch {
    pub items: Vec<Queued>,
    pub permit: OwnedSemaphorePermit,
}

pub(crate) struct Config {
    policy: PolicyConfig,
    /// Most items held for the policy to choose from.
    window: usize,
}

pub(crate) fn config(spec: &ModelSpec) -> Config {
    Config {
        policy: PolicyConfig {
            max_batch_size: spec.max_batch_size,
            max_delay: spec.max_delay(),
            group_by_length: spec.group_by_length,
        },
        window: spec
            .batch_window
            .unwrap_or_else(|| spec.max_batch_size.saturating_mul(16))
            .max(spec.max_batch_size),
    }
}

pub(crate) async fn run(
    rx: async_channel::Receiver<Queued>,
    tx: async_channel::Sender<Batch>,
    cfg: Config,
    instances: usize,
    stats: Arc<Stats>,
) {
    let free = Arc::new(Semaphore::new(instances));
    let mut pending: VecDeque<Queued> = VecDeque::with_capacity(cfg.window);
    let mut closed = false;
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut meta: Vec<Pending> = Vec::with_capacity(cfg.window);
    // What the window gauge shows, so it is written only when it changes.
    let mut shown = 0usize;
    loop {
        if pending.is_empty() {
            if closed {
                break;
            }
            match rx.recv().await {
                Ok(q) => pending.push_back(q),
                Err(_) => {
                    closed = true;
                    continue;
                }
            }
        }
        while pending.len() < cfg.window {
            match rx.try_recv() {
                Ok(q) => pending.push_back(q),
                Err(async_channel::TryRecvError::Empty) => break,
                Err(async_channel::TryRecvError::Closed) => {
                    closed = true;
                    break;
                }
            }
        }
        if pending.len() != shown {
            shown = pending.len();
            stats.set_window(shown);
        }
        let slot = match permit.take() {
            Some(p) => p,
            None => match free.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let room = !closed && pending.len() < cfg.window;
                    tokio::select! {
                        biased;
                        p = free.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                        q = rx.recv(), if room => {
                            match q {
                                Ok(q) => pending.push_back(q),
                                Err(_) => closed = true,
                            }
                            continue;
                        }
                    }
                }
            },
        };
        let now = Instant::now();
        meta.clear();
        meta.extend(pending.iter().map(|q| Pending {
            len: q.prepared.len,
            waited: now.saturating_duration_since(q.enqueued),
        }));
        match policy::decide(&meta, &cfg.policy, closed) {
            Decision::Idle => permit = Some(slot),
            Decision::Wait(d) => {
                permit = Some(slot);
                let room = !closed && pending.len() < cfg.window;
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    q = rx.recv(), if room => match q {
                        Ok(q) => pending.push_back(q),
                        Err(_) => closed = true,
                    },
                }
            }
            Decision::Dispatch(plan) => {
                let items = take(&mut pending, &plan.indices);
                shown = pending.len();
                stats.set_window(shown);
                let tokens: usize = items.iter().map(|q| q.prepared.len).sum();
                stats.record_batch(items.len(), tokens, plan.padding, plan.fifo_padding);
                if tx.send(Batch { items, permit: slot }).await.is_err() {
                    tracing::error!("all model instances are gone; the batcher stops");
                    break;
                }
            }
        }
    }
}

/// Removes the items at `indices` (ascending) from `pending`, keeping the
/// order of the rest.
fn take(pending: &mut VecDeque<Queued>, indices: &[usize]) -> Vec<Queued> {
    let contiguous = indices.iter().enumerate().all(|(k, &i)| k == i);
    if contiguous {
        return pending.drain(..indices.len()).collect();
    }
    let mut taken = Vec::with_capacity(indices.len());
    let mut rest = VecDeque::with_capacity(pending.len());
    let mut next = indices.iter().peekable();
    for (i, q) in pending.drain(..).enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            taken.push(q);
        } else {
            rest.push_back(q);
        }
    }
    *pending = rest;
    taken
}
