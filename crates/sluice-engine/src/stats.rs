//! Live counters of one model: what the batcher did and what it bought.
//!
//! Updated with relaxed atomics from the batcher and instance threads, read
//! as a [`StatsSnapshot`] by the CLI summary, `sluice bench` and the server's
//! `/metrics` endpoint. Latency histograms have fixed buckets
//! ([`LATENCY_BUCKETS`]) so recording is one bucket search and one atomic add;
//! the per-item queue-wait histogram is accumulated per batch before it
//! touches the shared atomics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Counters of one model.
#[derive(Debug)]
pub struct Stats {
    items_ok: AtomicU64,
    items_failed: AtomicU64,
    items_canceled: AtomicU64,
    batches: AtomicU64,
    batched_items: AtomicU64,
    batched_realtime: AtomicU64,
    bisections: AtomicU64,
    out_of_memory: AtomicU64,
    backoffs: AtomicU64,
    effective_batch_size: AtomicU64,
    realtime: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    abandoned: AtomicU64,
    tokens: AtomicU64,
    padding: AtomicU64,
    fifo_padding: AtomicU64,
    run_nanos: AtomicU64,
    queue_nanos: AtomicU64,
    /// `histogram[n]` counts batches of `n` items.
    histogram: Vec<AtomicU64>,
    /// Items held by the batcher (its window), set by the batcher task.
    window: AtomicU64,
    /// Instances inside a runtime call now.
    busy: AtomicI64,
    /// Queue wait per item, non-cumulative counts per [`LATENCY_BUCKETS`] slot (last: +Inf).
    queue_hist: [AtomicU64; LATENCY_SLOTS],
    /// Runtime call time per executed batch, same layout.
    run_hist: [AtomicU64; LATENCY_SLOTS],
}

/// Upper bounds (seconds) of the latency histogram buckets; a last,
/// unbounded bucket follows.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Slots of a latency histogram: one per bound plus the unbounded one.
const LATENCY_SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// [`LATENCY_BUCKETS`] in nanoseconds, for the hot path.
const LATENCY_BOUNDS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    60_000_000_000,
];

/// The slot of a duration in nanoseconds.
fn latency_slot(nanos: u64) -> usize {
    LATENCY_BOUNDS_NS
        .iter()
        .position(|&b| nanos <= b)
        .unwrap_or(LATENCY_BOUNDS_NS.len())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Queue waits of one batch's items, added to [`Stats`] in one go.
#[derive(Debug, Default)]
pub(crate) struct QueueWaits {
    nanos: u64,
    slots: [u64; LATENCY_SLOTS],
}

impl QueueWaits {
    /// Adds one item's wait.
    pub(crate) fn add(&mut self, wait: Duration) {
        let n = nanos(wait);
        self.nanos = self.nanos.saturating_add(n);
        if let Some(s) = self.slots.get_mut(latency_slot(n)) {
            *s += 1;
        }
    }
}

/// A latency histogram as read: non-cumulative counts per bucket of
/// [`LATENCY_BUCKETS`], then the count above the last bound, and the sum.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyHistogram {
    /// `counts[i]` = observations in `(LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]`;
    /// the last entry counts those above the last bound.
    pub counts: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Items that produced a result.
    pub items_ok: u64,
    /// Items that failed (pre-processing, inference or post-processing).
    /// Canceled items are not failures: they are in `items_canceled`.
    pub items_failed: u64,
    /// Items dropped unrun because their run or job was canceled or their
    /// real-time client went away.
    pub items_canceled: u64,
    /// Batches executed (not counting bisection re-runs).
    pub batches: u64,
    /// Items in those batches.
    pub batched_items: u64,
    /// Of those, items from the real-time lane (the rest came from the bulk lane).
    pub batched_realtime: u64,
    /// Extra runtime calls made to isolate failing items.
    pub bisections: u64,
    /// Batches that ran out of memory (or over `max_batch_bytes`) and were split.
    pub out_of_memory_batches: u64,
    /// Times the effective max batch size was lowered after one.
    pub batch_size_backoffs: u64,
    /// The max batch size the batcher uses now: the configured one, or less
    /// after out-of-memory failures.
    pub effective_batch_size: u64,
    /// Real-time items accepted.
    pub realtime_items: u64,
    /// Real-time items refused because the real-time queue was full (429).
    pub realtime_rejected: u64,
    /// Items whose deadline passed before they ran (not run).
    pub expired: u64,
    /// Items whose client went away before they ran (not run).
    pub abandoned: u64,
    /// Real elements along the padded dimension (tokens for text).
    pub tokens: u64,
    /// Padding elements added to batch items of different lengths.
    pub padding: u64,
    /// Padding first-come-first-served batches would have added.
    pub fifo_padding: u64,
    /// Total time in runtime calls, seconds.
    pub run_seconds: f64,
    /// Total time items waited from submission to their batch, seconds.
    pub queue_seconds: f64,
    /// `batch_sizes[n]` = batches of `n` items.
    pub batch_sizes: Vec<u64>,
    /// Items held by the batcher, waiting for a batch.
    pub batcher_window: u64,
    /// Instances inside a runtime call at the time of the snapshot.
    pub busy_instances: u64,
    /// Time from submission to the start of the item's batch, per item that ran.
    pub queue_wait: LatencyHistogram,
    /// Runtime call time, per executed batch (bisection re-runs included in its time).
    pub run_time: LatencyHistogram,
}

impl StatsSnapshot {
    /// Mean items per batch.
    pub fn mean_batch_size(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.batched_items as f64 / self.batches as f64
        }
    }

    /// Padding as a share of all elements fed to the model.
    pub fn padding_ratio(&self) -> f64 {
        let total = self.tokens + self.padding;
        if total == 0 {
            0.0
        } else {
            self.padding as f64 / total as f64
        }
    }

    /// Padding elements length grouping avoided.
    pub fn padding_saved(&self) -> u64 {
        self.fifo_padding.saturating_sub(self.padding)
    }
}

impl Stats {
    /// Counters for a model whose batches hold at most `max_batch_size` items.
    pub fn new(max_batch_size: usize) -> Stats {
        Stats {
            items_ok: AtomicU64::new(0),
            items_failed: AtomicU64::new(0),
            items_canceled: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched_items: AtomicU64::new(0),
            batched_realtime: AtomicU64::new(0),
            bisections: AtomicU64::new(0),
            out_of_memory: AtomicU64::new(0),
            backoffs: AtomicU64::new(0),
            effective_batch_size: AtomicU64::new(max_batch_size as u64),
            realtime: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            padding: AtomicU64::new(0),
            fifo_padding: AtomicU64::new(0),
            run_nanos: AtomicU64::new(0),
            queue_nanos: AtomicU64::new(0),
            histogram: (0..=max_batch_size).map(|_| AtomicU64::new(0)).collect(),
            window: AtomicU64::new(0),
            busy: AtomicI64::new(0),
            queue_hist: std::array::from_fn(|_| AtomicU64::new(0)),
            run_hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(crate) fn snapshot_window(&self) -> u64 {
        self.window.load(Relaxed)
    }

    pub(crate) fn set_window(&self, items: usize) {
        self.window.store(items as u64, Relaxed);
    }

    pub(crate) fn instance_busy(&self, busy: bool) {
        self.busy.fetch_add(if busy { 1 } else { -1 }, Relaxed);
    }

    pub(crate) fn record_queue_waits(&self, waits: &QueueWaits) {
        self.queue_nanos.fetch_add(waits.nanos, Relaxed);
        for (h, &n) in self.queue_hist.iter().zip(&waits.slots) {
            if n > 0 {
                h.fetch_add(n, Relaxed);
            }
        }
    }

    pub(crate) fn record_batch(&self, size: usize, tokens: usize, padding: usize, fifo_padding: usize) {
        self.batches.fetch_add(1, Relaxed);
        self.batched_items.fetch_add(size as u64, Relaxed);
        self.tokens.fetch_add(tokens as u64, Relaxed);
        self.padding.fetch_add(padding as u64, Relaxed);
        self.fifo_padding.fetch_add(fifo_padding as u64, Relaxed);
        if let Some(h) = self.histogram.get(size) {
            h.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn record_run(&self, time: Duration) {
        let n = nanos(time);
        self.run_nanos.fetch_add(n, Relaxed);
        if let Some(h) = self.run_hist.get(latency_slot(n)) {
            h.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn record_bisection(&self) {
        self.bisections.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_out_of_memory(&self) {
        self.out_of_memory.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_backoff(&self) {
        self.backoffs.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_effective_batch_size(&self, size: usize) {
        self.effective_batch_size.store(size as u64, Relaxed);
    }

    pub(crate) fn record_realtime(&self, accepted: usize, rejected: usize) {
        self.realtime.fetch_add(accepted as u64, Relaxed);
        self.rejected.fetch_add(rejected as u64, Relaxed);
    }

    pub(crate) fn record_expired(&self) {
        self.expired.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_abandoned(&self) {
        self.abandoned.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_realtime_batched(&self, items: usize) {
        self.batched_realtime.fetch_add(items as u64, Relaxed);
    }

    pub(crate) fn record_canceled(&self) {
        self.items_canceled.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_item(&self, ok: bool) {
        if ok {
            self.items_ok.fetch_add(1, Relaxed);
        } else {
            self.items_failed.fetch_add(1, Relaxed);
        }
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            items_ok: self.items_ok.load(Relaxed),
            items_failed: self.items_failed.load(Relaxed),
            items_canceled: self.items_canceled.load(Relaxed),
            batches: self.batches.load(Relaxed),
            batched_items: self.batched_items.load(Relaxed),
            batched_realtime: self.batched_realtime.load(Relaxed),
            bisections: self.bisections.load(Relaxed),
            out_of_memory_batches: self.out_of_memory.load(Relaxed),
            batch_size_backoffs: self.backoffs.load(Relaxed),
            effective_batch_size: self.effective_batch_size.load(Relaxed),
            realtime_items: self.realtime.load(Relaxed),
            realtime_rejected: self.rejected.load(Relaxed),
            expired: self.expired.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            tokens: self.tokens.load(Relaxed),
            padding: self.padding.load(Relaxed),
            fifo_padding: self.fifo_padding.load(Relaxed),
            run_seconds: self.run_nanos.load(Relaxed) as f64 / 1e9,
            queue_seconds: self.queue_nanos.load(Relaxed) as f64 / 1e9,
            batch_sizes: self.histogram.iter().map(|h| h.load(Relaxed)).collect(),
            batcher_window: self.window.load(Relaxed),
            busy_instances: u64::try_from(self.busy.load(Relaxed)).unwrap_or(0),
            queue_wait: LatencyHistogram {
                counts: self.queue_hist.iter().map(|h| h.load(Relaxed)).collect(),
                sum_seconds: self.queue_nanos.load(Relaxed) as f64 / 1e9,
            },
            run_time: LatencyHistogram {
                counts: self.run_hist.iter().map(|h| h.load(Relaxed)).collect(),
                sum_seconds: self.run_nanos.load(Relaxed) as f64 / 1e9,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_slots_follow_the_bounds() {
        assert_eq!(latency_slot(0), 0);
        assert_eq!(latency_slot(500_000), 0);
        assert_eq!(latency_slot(500_001), 1);
        assert_eq!(latency_slot(60_000_000_000), LATENCY_BUCKETS.len() - 1);
        assert_eq!(latency_slot(u64::MAX), LATENCY_BUCKETS.len());
        for (b, ns) in LATENCY_BUCKETS.iter().zip(LATENCY_BOUNDS_NS) {
            assert_eq!((b * 1e9).round() as u64, ns);
        }
    }

    #[test]
    fn histograms_count_what_was_recorded() {
        let s = Stats::new(4);
        let mut w = QueueWaits::default();
        w.add(Duration::from_micros(100));
        w.add(Duration::from_millis(3));
        w.add(Duration::from_secs(100));
        s.record_queue_waits(&w);
        s.record_run(Duration::from_millis(20));
        s.instance_busy(true);
        s.set_window(7);
        let snap = s.snapshot();
        assert_eq!(snap.queue_wait.count(), 3);
        assert_eq!(snap.queue_wait.counts[0], 1);
        assert_eq!(snap.queue_wait.counts[3], 1);
        assert_eq!(snap.queue_wait.counts[LATENCY_BUCKETS.len()], 1);
        assert!((snap.queue_wait.sum_seconds - 100.0031).abs() < 1e-6);
        assert_eq!(snap.run_time.count(), 1);
        assert_eq!(snap.run_time.counts[5], 1);
        assert_eq!(snap.busy_instances, 1);
        assert_eq!(snap.batcher_window, 7);
    }
}
