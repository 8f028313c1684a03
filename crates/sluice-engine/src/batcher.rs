//! The batcher: one task per model that owns the waiting items.
//!
//! It pulls items from the bounded model queue (bulk) and the bounded
//! real-time queue into two lanes, waits for a free instance, asks
//! [`sluice_core::policy::decide_lanes`] what to release, and hands the batch
//! to the instance threads. Forming the batch only once an instance is free
//! means the policy chooses among everything that waits at that moment, which
//! is what makes length grouping effective under load and lets a real-time
//! item overtake the bulk items queued before it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::policy::{self, LaneDecision, Moment, Pending, PolicyConfig};
use sluice_core::spec::ModelSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::item::{Batch, Queued};
use crate::limit::Limiter;
use crate::stats::Stats;

pub(crate) struct Config {
    policy: PolicyConfig,
    /// Share of each batch kept for bulk items (`bulk_min_share`).
    bulk_share: f64,
    /// Most bulk items held for the policy to choose from.
    window: usize,
}

pub(crate) fn config(spec: &ModelSpec) -> Config {
    Config {
        policy: PolicyConfig {
            max_batch_size: spec.max_batch_size,
            max_delay: spec.max_delay(),
            group_by_length: spec.group_by_length,
            bulk_reserve: PolicyConfig::reserve_for(spec.max_batch_size, spec.bulk_min_share),
            max_batch_tokens: spec.max_batch_tokens,
        },
        bulk_share: spec.bulk_min_share,
        window: spec
            .batch_window
            .unwrap_or_else(|| spec.max_batch_size.saturating_mul(16))
            .max(spec.max_batch_size),
    }
}

/// The two inbound queues.
pub(crate) struct Inbound {
    pub bulk: async_channel::Receiver<Queued>,
    pub realtime: async_channel::Receiver<Queued>,
}

/// What the batcher holds: the two lanes and whether their queues closed.
struct Lanes {
    bulk: VecDeque<Queued>,
    realtime: VecDeque<Queued>,
    bulk_closed: bool,
    rt_closed: bool,
}

impl Lanes {
    fn is_empty(&self) -> bool {
        self.bulk.is_empty() && self.realtime.is_empty()
    }

    fn len(&self) -> usize {
        self.bulk.len() + self.realtime.len()
    }

    /// Moves whatever is queued now into the lanes, without waiting.
    fn drain(&mut self, inbound: &Inbound, window: usize) {
        loop {
            match inbound.realtime.try_recv() {
                Ok(q) => self.realtime.push_back(q),
                Err(async_channel::TryRecvError::Empty) => break,
                Err(async_channel::TryRecvError::Closed) => {
                    self.rt_closed = true;
                    break;
                }
            }
        }
        while self.bulk.len() < window {
            match inbound.bulk.try_recv() {
                Ok(q) => self.bulk.push_back(q),
                Err(async_channel::TryRecvError::Empty) => break,
                Err(async_channel::TryRecvError::Closed) => {
                    self.bulk_closed = true;
                    break;
                }
            }
        }
    }

    /// Waits for the next item of either queue (real-time first); `bulk_room`
    /// says whether the bulk lane may take more. Returns at once when both
    /// queues are closed or nothing may be taken.
    async fn recv(&mut self, inbound: &Inbound, bulk_room: bool) {
        let take_bulk = bulk_room && !self.bulk_closed;
        if self.rt_closed && !take_bulk {
            std::future::pending::<()>().await;
        }
        tokio::select! {
            biased;
            q = inbound.realtime.recv(), if !self.rt_closed => match q {
                Ok(q) => self.realtime.push_back(q),
                Err(_) => self.rt_closed = true,
            },
            q = inbound.bulk.recv(), if take_bulk => match q {
                Ok(q) => self.bulk.push_back(q),
                Err(_) => self.bulk_closed = true,
            },
        }
    }

    /// Fails the real-time items that no longer need to run: their deadline
    /// passed or their client went away.
    fn prune(&mut self, now: Instant, stats: &Stats) {
        if self.realtime.iter().all(|q| q.skip_reason(now).is_none()) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.realtime.len());
        for q in self.realtime.drain(..) {
            match q.skip_reason(now) {
                Some(reason) => q.skip(reason, stats),
                None => kept.push_back(q),
            }
        }
        self.realtime = kept;
    }
}

pub(crate) async fn run(
    inbound: Inbound,
    tx: async_channel::Sender<Batch>,
    mut cfg: Config,
    instances: usize,
    stats: Arc<Stats>,
    limiter: Arc<Limiter>,
) {
    let free = Arc::new(Semaphore::new(instances));
    let mut lanes = Lanes {
        bulk: VecDeque::with_capacity(cfg.window),
        realtime: VecDeque::new(),
        bulk_closed: false,
        rt_closed: false,
    };
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut rt_meta: Vec<Pending> = Vec::new();
    let mut bulk_meta: Vec<Pending> = Vec::with_capacity(cfg.window);
    // What the window gauge shows, so it is written only when it changes.
    let mut shown = 0usize;
    loop {
        if lanes.is_empty() {
            if lanes.bulk_closed && lanes.rt_closed {
                break;
            }
            lanes.recv(&inbound, true).await;
            continue;
        }
        lanes.drain(&inbound, cfg.window);
        lanes.prune(Instant::now(), &stats);
        if lanes.len() != shown {
            shown = lanes.len();
            stats.set_window(shown);
        }
        if lanes.is_empty() {
            continue;
        }
        let slot = match permit.take() {
            Some(p) => p,
            None => match free.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let room = lanes.bulk.len() < cfg.window;
                    // While every instance is busy, wake at the first real-time
                    // deadline to drop the expired items (and free their slots).
                    let expiry = lanes.realtime.iter().filter_map(|q| q.deadline).min();
                    tokio::select! {
                        biased;
                        p = free.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                        () = lanes.recv(&inbound, room) => continue,
                        () = sleep_until(expiry) => continue,
                    }
                }
            },
        };
        let now = Instant::now();
        let waited = |q: &Queued| Pending {
            len: q.prepared.len,
            waited: now.saturating_duration_since(q.enqueued),
        };
        rt_meta.clear();
        rt_meta.extend(lanes.realtime.iter().map(waited));
        bulk_meta.clear();
        bulk_meta.extend(lanes.bulk.iter().map(waited));
        let moment = Moment {
            flush: lanes.bulk_closed,
            // We hold one permit: the model is idle when every other one is free too.
            idle: free.available_permits() + 1 == instances && inbound.realtime.is_empty() && inbound.bulk.is_empty(),
        };
        // The size in force now: the configured one, or less after out-of-memory failures.
        let effective = limiter.effective();
        if effective != cfg.policy.max_batch_size {
            cfg.policy.max_batch_size = effective;
            cfg.policy.bulk_reserve = PolicyConfig::reserve_for(effective, cfg.bulk_share);
        }
        let lanes_now = policy::Lanes {
            realtime: &rt_meta,
            bulk: &bulk_meta,
        };
        match policy::decide_lanes(lanes_now, &cfg.policy, moment) {
            LaneDecision::Idle => permit = Some(slot),
            LaneDecision::Wait(d) => {
                permit = Some(slot);
                let room = lanes.bulk.len() < cfg.window;
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = lanes.recv(&inbound, room) => {}
                }
            }
            LaneDecision::Dispatch(plan) => {
                let mut items: Vec<Queued> = lanes.realtime.drain(..plan.realtime.len()).collect();
                items.extend(take(&mut lanes.bulk, &plan.bulk.indices));
                shown = lanes.len();
                stats.set_window(shown);
                let tokens: usize = items.iter().map(|q| q.prepared.len).sum();
                stats.record_batch(items.len(), tokens, plan.bulk.padding, plan.bulk.fifo_padding);
                stats.record_realtime_batched(plan.realtime.len());
                if tx.send(Batch { items, permit: slot }).await.is_err() {
                    tracing::error!("all model instances are gone; the batcher stops");
                    break;
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no such instant.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
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
