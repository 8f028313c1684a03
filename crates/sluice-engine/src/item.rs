//! The items that travel through a model's pipeline and where their
//! answers go: shared by the model handle, the batcher and the instance
//! threads. A leaf module: it depends on nothing else in the crate but
//! [`crate::stats`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{Input, ItemError, ItemErrorKind, ItemId, ItemResult};
use sluice_processing::Prepared;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use crate::stats::Stats;

/// The outcome of one item, with where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The id given at submission.
    pub id: ItemId,
    /// Output or error.
    pub result: ItemResult,
    /// Time from submission until its batch started.
    pub queue_time: Duration,
    /// Time of the runtime call of its batch (zero if it never ran).
    pub run_time: Duration,
    /// Items in its batch (zero if it never ran).
    pub batch_size: usize,
}

/// Where an item's [`Completion`] goes.
#[derive(Debug)]
pub enum Reply {
    /// A single waiter (a real-time request).
    Once(oneshot::Sender<Completion>),
    /// A stream shared by many items (a bulk run or job). Bounded: when the
    /// reader falls behind, instance threads wait, and so do submitters.
    Stream(mpsc::Sender<Completion>),
}

impl Reply {
    /// Delivers a completion. Must be called from a plain thread (not an
    /// async task): a full stream blocks the caller.
    pub(crate) fn send(self, c: Completion) {
        match self {
            // A dropped receiver means nobody waits any more; nothing to do.
            Reply::Once(tx) => {
                let _ = tx.send(c);
            }
            Reply::Stream(tx) => {
                let _ = tx.blocking_send(c);
            }
        }
    }

    /// Whether nobody waits for this reply any more (a real-time client
    /// that disconnected): then the item need not run.
    pub(crate) fn is_abandoned(&self) -> bool {
        match self {
            Reply::Once(tx) => tx.is_closed(),
            Reply::Stream(_) => false,
        }
    }
}

/// A shared cancellation flag, typically one per run or job.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    /// Cancels every item carrying this flag that has not run yet.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelFlag::cancel`] was called.
    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) fn is_canceled(c: Option<&CancelFlag>) -> bool {
    c.is_some_and(CancelFlag::is_canceled)
}

pub(crate) fn canceled_error() -> ItemError {
    ItemError::new(ItemErrorKind::Canceled, "canceled before it ran")
}

pub(crate) struct Request {
    pub id: ItemId,
    pub input: Input,
    pub reply: Reply,
    pub submitted: Instant,
    pub cancel: Option<CancelFlag>,
}

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
    pub cancel: Option<CancelFlag>,
    /// Past this instant the item is not run (real-time requests).
    pub deadline: Option<Instant>,
    /// The item's place in the bounded real-time queue, freed when it is done.
    pub _slot: Option<OwnedSemaphorePermit>,
}

/// Why a queued item is dropped instead of run.
pub(crate) enum Skip {
    Canceled,
    Expired,
    Abandoned,
}

impl Queued {
    /// Whether the item should no longer run, and why.
    pub(crate) fn skip_reason(&self, now: Instant) -> Option<Skip> {
        if is_canceled(self.cancel.as_ref()) {
            return Some(Skip::Canceled);
        }
        if self.deadline.is_some_and(|d| d <= now) {
            return Some(Skip::Expired);
        }
        if self.reply.is_abandoned() {
            return Some(Skip::Abandoned);
        }
        None
    }

    /// Completes the item without running it.
    pub(crate) fn skip(self, reason: Skip, stats: &Stats) {
        let error = match reason {
            Skip::Canceled => canceled_error(),
            Skip::Expired => {
                stats.record_expired();
                sluice_core::ItemError::new(
                    sluice_core::ItemErrorKind::Timeout,
                    "deadline exceeded before the item ran",
                )
            }
            Skip::Abandoned => {
                stats.record_abandoned();
                sluice_core::ItemError::new(sluice_core::ItemErrorKind::Canceled, "the client went away")
            }
        };
        drop(self._slot);
        fail_item(self.id, self.reply, self.submitted, error, stats);
    }
}

/// A batch on its way to an instance; the permit frees the instance slot.
pub(crate) struct Batch {
    pub items: Vec<Queued>,
    pub permit: OwnedSemaphorePermit,
}

/// Signals completion when the last instance thread ends.
pub(crate) struct DoneGuard(pub(crate) watch::Sender<bool>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Completes an item that did not run; a canceled one is counted as
/// canceled, not failed.
pub(crate) fn fail_item(id: ItemId, reply: Reply, submitted: Instant, error: ItemError, stats: &Stats) {
    if error.kind == ItemErrorKind::Canceled {
        stats.record_canceled();
    } else {
        stats.record_item(false);
    }
    reply.send(Completion {
        id,
        result: Err(error),
        queue_time: submitted.elapsed(),
        run_time: Duration::ZERO,
        batch_size: 0,
    });
}
