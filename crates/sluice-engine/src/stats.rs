//! Live counters of one model: what the batcher did and what it bought.
//!
//! Updated with relaxed atomics from the batcher and instance threads, read
//! as a [`StatsSnapshot`] by the CLI summary, `sluice bench` and (later) the
//! metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Counters of one model.
#[derive(Debug)]
pub struct Stats {
    items_ok: AtomicU64,
    items_failed: AtomicU64,
    batches: AtomicU64,
    batched_items: AtomicU64,
    bisections: AtomicU64,
    tokens: AtomicU64,
    padding: AtomicU64,
    fifo_padding: AtomicU64,
    run_nanos: AtomicU64,
    queue_nanos: AtomicU64,
    /// `histogram[n]` counts batches of `n` items.
    histogram: Vec<AtomicU64>,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// Items that produced a result.
    pub items_ok: u64,
    /// Items that failed (pre-processing, inference or post-processing).
    pub items_failed: u64,
    /// Batches executed (not counting bisection re-runs).
    pub batches: u64,
    /// Items in those batches.
    pub batched_items: u64,
    /// Extra runtime calls made to isolate failing items.
    pub bisections: u64,
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
            batches: AtomicU64::new(0),
            batched_items: AtomicU64::new(0),
            bisections: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            padding: AtomicU64::new(0),
            fifo_padding: AtomicU64::new(0),
            run_nanos: AtomicU64::new(0),
            queue_nanos: AtomicU64::new(0),
            histogram: (0..=max_batch_size).map(|_| AtomicU64::new(0)).collect(),
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

    pub(crate) fn record_run(&self, nanos: u64) {
        self.run_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn record_queue(&self, nanos: u64) {
        self.queue_nanos.fetch_add(nanos, Relaxed);
    }

    pub(crate) fn record_bisection(&self) {
        self.bisections.fetch_add(1, Relaxed);
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
            batches: self.batches.load(Relaxed),
            batched_items: self.batched_items.load(Relaxed),
            bisections: self.bisections.load(Relaxed),
            tokens: self.tokens.load(Relaxed),
            padding: self.padding.load(Relaxed),
            fifo_padding: self.fifo_padding.load(Relaxed),
            run_seconds: self.run_nanos.load(Relaxed) as f64 / 1e9,
            queue_seconds: self.queue_nanos.load(Relaxed) as f64 / 1e9,
            batch_sizes: self.histogram.iter().map(|h| h.load(Relaxed)).collect(),
        }
    }
}
