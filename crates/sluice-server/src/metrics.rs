//! `GET /metrics`: the server's counters in the Prometheus text format.
//!
//! Operators scrape this to see queues, batches and failures; users see what
//! their batch size buys (batch sizes, fill, padding, latencies). The
//! exposition is written by hand (a few families, fixed buckets) rather than
//! through a metrics crate: every number already lives in the engine's
//! atomics ([`sluice_engine::Stats`]) or the store, so scraping only formats
//! a snapshot. Every metric name is a constant in [`names`], documented in
//! `docs/metrics.md`.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sluice_engine::{LatencyHistogram, StatsSnapshot, LATENCY_BUCKETS};
use sluice_store::Job;

use crate::registry::Entry;
use crate::AppState;

/// Every metric name the server exposes. Keep `docs/metrics.md` in step.
pub mod names {
    /// Counter `{model, outcome="ok"|"failed"}`: items finished.
    pub const ITEMS: &str = "sluice_model_items_total";
    /// Counter `{model}`: batches dispatched to an instance.
    pub const BATCHES: &str = "sluice_model_batches_total";
    /// Counter `{model}`: extra runtime calls made to isolate failing items.
    pub const BISECTIONS: &str = "sluice_model_bisections_total";
    /// Counter `{model}`: real-time items accepted (v2 and `/v1/models/{m}/infer`).
    pub const REALTIME_ITEMS: &str = "sluice_model_realtime_items_total";
    /// Counter `{model, reason="overloaded"|"deadline"|"disconnected"}`:
    /// real-time items refused (429) or dropped before they ran.
    pub const REALTIME_DROPPED: &str = "sluice_model_realtime_dropped_total";
    /// Histogram `{model}`: items per batch.
    pub const BATCH_SIZE: &str = "sluice_model_batch_size";
    /// Histogram `{model}`: items per batch / max batch size.
    pub const BATCH_FILL: &str = "sluice_model_batch_fill_ratio";
    /// Counter `{model}`: real elements along the padded dimension (tokens).
    pub const TOKENS: &str = "sluice_model_tokens_total";
    /// Counter `{model}`: padding elements added to batch items.
    pub const PADDING: &str = "sluice_model_padding_total";
    /// Histogram `{model}`: seconds from submission to the start of the item's batch.
    pub const QUEUE_WAIT: &str = "sluice_model_queue_wait_seconds";
    /// Histogram `{model}`: seconds per batch in the runtime call.
    pub const BATCH_DURATION: &str = "sluice_model_batch_duration_seconds";
    /// Gauge `{model, stage="preprocess"|"model"|"batcher"}`: items waiting.
    pub const QUEUE_DEPTH: &str = "sluice_model_queue_depth";
    /// Gauge `{model}`: instances inside a runtime call.
    pub const BUSY_INSTANCES: &str = "sluice_model_busy_instances";
    /// Gauge `{model}`: instances configured.
    pub const INSTANCES: &str = "sluice_model_instances";
    /// Gauge `{model}`: the model's max batch size.
    pub const MAX_BATCH_SIZE: &str = "sluice_model_max_batch_size";
    /// Gauge `{model}`: the max batch size in force now (lower after out-of-memory back-offs).
    pub const EFFECTIVE_BATCH_SIZE: &str = "sluice_model_effective_batch_size";
    /// Counter `{model}`: batches that ran out of memory (or over `max_batch_bytes`) and were split.
    pub const OUT_OF_MEMORY: &str = "sluice_model_out_of_memory_batches_total";
    /// Counter `{model}`: times the effective max batch size was lowered.
    pub const BACKOFFS: &str = "sluice_model_batch_size_backoffs_total";
    /// Gauge `{model}`: 1 if the model serves, 0 if it failed to load.
    pub const MODEL_UP: &str = "sluice_model_up";
    /// Gauge `{job, model, state="total"|"completed"|"failed"|"pending"}`: items of an active job.
    pub const JOB_ITEMS: &str = "sluice_job_items";
    /// Gauge: jobs not yet finished.
    pub const JOBS_ACTIVE: &str = "sluice_jobs_active";
    /// Gauge: resident set size of the server process, bytes.
    pub const RSS: &str = "sluice_process_resident_memory_bytes";
}

/// Bounds of the batch fill ratio histogram.
pub const FILL_BUCKETS: [f64; 7] = [0.125, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0];

/// Upper bounds of the batch-size histogram of a model: powers of two below
/// its max batch size, then the max itself.
pub fn batch_size_buckets(max_batch_size: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |b| b.checked_mul(2))
        .take_while(|&b| b < max_batch_size)
        .collect();
    v.push(max_batch_size.max(1));
    v
}

/// The resident set size of this process (`VmRSS` of `/proc/self/status`), bytes.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A Prometheus text exposition being written.
#[derive(Default)]
struct Exposition {
    out: String,
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// Writes a histogram from `(upper bound, non-cumulative count)` pairs
    /// (the last bound may be infinite), its sum, and a count equal to the
    /// sum of the buckets.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64) {
        let mut cumulative = 0u64;
        let bucket = format!("{name}_bucket");
        for &(le, n) in buckets {
            cumulative += n;
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                le.to_string()
            };
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative);
        }
        if buckets.last().is_none_or(|(le, _)| !le.is_infinite()) {
            let mut l = labels.to_vec();
            l.push(("le", "+Inf"));
            self.sample(&bucket, &l, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }
}

/// `(bound, count)` pairs of a latency histogram.
fn latency_buckets(h: &LatencyHistogram) -> Vec<(f64, u64)> {
    LATENCY_BUCKETS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(h.counts.iter().copied())
        .collect()
}

/// `(bound, count)` pairs of the batch-size histogram.
fn size_buckets(snap: &StatsSnapshot, max: usize) -> Vec<(f64, u64)> {
    let bounds = batch_size_buckets(max);
    let mut counts = vec![0u64; bounds.len() + 1];
    for (size, &n) in snap.batch_sizes.iter().enumerate() {
        let slot = bounds.iter().position(|&b| size <= b).unwrap_or(bounds.len());
        if let Some(c) = counts.get_mut(slot) {
            *c += n;
        }
    }
    bounds
        .iter()
        .map(|&b| b as f64)
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts)
        .collect()
}

/// `(bound, count)` pairs and the sum of the fill-ratio histogram.
fn fill_buckets(snap: &StatsSnapshot, max: usize) -> (Vec<(f64, u64)>, f64) {
    let max = max.max(1) as f64;
    let mut counts = vec![0u64; FILL_BUCKETS.len() + 1];
    let mut sum = 0.0;
    for (size, &n) in snap.batch_sizes.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let ratio = size as f64 / max;
        sum += ratio * n as f64;
        let slot = FILL_BUCKETS
            .iter()
            .position(|&b| ratio <= b)
            .unwrap_or(FILL_BUCKETS.len());
        if let Some(c) = counts.get_mut(slot) {
            *c += n;
        }
    }
    let pairs = FILL_BUCKETS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts)
        .collect();
    (pairs, sum)
}

/// What one model contributes to a scrape.
struct ModelSample {
    name: String,
    max_batch_size: usize,
    instances: usize,
    stats: StatsSnapshot,
    depth: sluice_engine::QueueDepth,
}

/// Renders the exposition for the given registry state and active jobs.
pub fn render(state: &AppState, jobs: &[Job]) -> String {
    let mut models = Vec::new();
    let mut up = Vec::new();
    for (name, entry) in state.registry.entries() {
        match entry {
            Entry::Ready(m) => {
                up.push((name.clone(), 1));
                models.push(ModelSample {
                    name: name.clone(),
                    max_batch_size: m.spec().max_batch_size,
                    instances: m.spec().instances,
                    stats: m.stats(),
                    depth: m.queue_depth(),
                });
            }
            Entry::Failed { .. } => up.push((name.clone(), 0)),
            // An api node runs no model: the workers report theirs.
            Entry::Declared(_) => {}
        }
    }
    let mut e = Exposition::default();
    e.family(
        names::MODEL_UP,
        "gauge",
        "1 if the model serves, 0 if it failed to load.",
    );
    for (name, v) in &up {
        e.sample(names::MODEL_UP, &[("model", name)], v);
    }
    let per_model = |e: &mut Exposition, name: &str, kind: &str, help: &str, value: &dyn Fn(&ModelSample) -> u64| {
        e.family(name, kind, help);
        for m in &models {
            e.sample(name, &[("model", &m.name)], value(m));
        }
    };
    per_model(
        &mut e,
        names::MAX_BATCH_SIZE,
        "gauge",
        "Largest batch per model call.",
        &|m| m.max_batch_size as u64,
    );
    per_model(
        &mut e,
        names::EFFECTIVE_BATCH_SIZE,
        "gauge",
        "Max batch size in force now: lower than the configured one after out-of-memory back-offs.",
        &|m| m.stats.effective_batch_size,
    );
    per_model(
        &mut e,
        names::OUT_OF_MEMORY,
        "counter",
        "Batches that ran out of memory (or over max_batch_bytes) and were split and retried.",
        &|m| m.stats.out_of_memory_batches,
    );
    per_model(
        &mut e,
        names::BACKOFFS,
        "counter",
        "Times the effective max batch size was lowered after an out-of-memory failure.",
        &|m| m.stats.batch_size_backoffs,
    );
    per_model(&mut e, names::INSTANCES, "gauge", "Model instances configured.", &|m| {
        m.instances as u64
    });
    per_model(
        &mut e,
        names::BUSY_INSTANCES,
        "gauge",
        "Model instances inside a runtime call.",
        &|m| m.stats.busy_instances,
    );
    e.family(names::ITEMS, "counter", "Items finished, by outcome.");
    for m in &models {
        e.sample(names::ITEMS, &[("model", &m.name), ("outcome", "ok")], m.stats.items_ok);
        e.sample(
            names::ITEMS,
            &[("model", &m.name), ("outcome", "failed")],
            m.stats.items_failed,
        );
        e.sample(
            names::ITEMS,
            &[("model", &m.name), ("outcome", "canceled")],
            m.stats.items_canceled,
        );
    }
    per_model(
        &mut e,
        names::BATCHES,
        "counter",
        "Batches dispatched to an instance.",
        &|m| m.stats.batches,
    );
    per_model(
        &mut e,
        names::BISECTIONS,
        "counter",
        "Extra runtime calls made to isolate failing items.",
        &|m| m.stats.bisections,
    );
    per_model(
        &mut e,
        names::REALTIME_ITEMS,
        "counter",
        "Real-time items accepted.",
        &|m| m.stats.realtime_items,
    );
    e.family(
        names::REALTIME_DROPPED,
        "counter",
        "Real-time items refused (queue full) or not run (deadline passed, client gone).",
    );
    for m in &models {
        for (reason, n) in [
            ("overloaded", m.stats.realtime_rejected),
            ("deadline", m.stats.expired),
            ("disconnected", m.stats.abandoned),
        ] {
            e.sample(names::REALTIME_DROPPED, &[("model", &m.name), ("reason", reason)], n);
        }
    }
    per_model(
        &mut e,
        names::TOKENS,
        "counter",
        "Real elements along the padded dimension (tokens for text).",
        &|m| m.stats.tokens,
    );
    per_model(
        &mut e,
        names::PADDING,
        "counter",
        "Padding elements added to batch items.",
        &|m| m.stats.padding,
    );
    e.family(names::QUEUE_DEPTH, "gauge", "Items waiting, by pipeline stage.");
    for m in &models {
        for (stage, n) in [
            ("preprocess", m.depth.preprocess),
            ("model", m.depth.model),
            ("batcher", m.depth.batcher),
        ] {
            e.sample(names::QUEUE_DEPTH, &[("model", &m.name), ("stage", stage)], n);
        }
    }
    e.family(names::BATCH_SIZE, "histogram", "Items per batch.");
    for m in &models {
        let b = size_buckets(&m.stats, m.max_batch_size);
        e.histogram(
            names::BATCH_SIZE,
            &[("model", &m.name)],
            &b,
            m.stats.batched_items as f64,
        );
    }
    e.family(
        names::BATCH_FILL,
        "histogram",
        "Items per batch divided by the max batch size.",
    );
    for m in &models {
        let (b, sum) = fill_buckets(&m.stats, m.max_batch_size);
        e.histogram(names::BATCH_FILL, &[("model", &m.name)], &b, sum);
    }
    e.family(
        names::QUEUE_WAIT,
        "histogram",
        "Seconds from submission to the start of the item's batch.",
    );
    for m in &models {
        let h = &m.stats.queue_wait;
        e.histogram(
            names::QUEUE_WAIT,
            &[("model", &m.name)],
            &latency_buckets(h),
            h.sum_seconds,
        );
    }
    e.family(
        names::BATCH_DURATION,
        "histogram",
        "Seconds per batch in the runtime call.",
    );
    for m in &models {
        let h = &m.stats.run_time;
        e.histogram(
            names::BATCH_DURATION,
            &[("model", &m.name)],
            &latency_buckets(h),
            h.sum_seconds,
        );
    }
    e.family(names::JOBS_ACTIVE, "gauge", "Jobs not finished yet.");
    e.sample(names::JOBS_ACTIVE, &[], jobs.len());
    e.family(names::JOB_ITEMS, "gauge", "Items of an active job, by state.");
    for j in jobs {
        for (s, n) in [
            ("total", j.total),
            ("completed", j.completed),
            ("failed", j.failed),
            ("pending", j.pending),
        ] {
            e.sample(
                names::JOB_ITEMS,
                &[("job", &j.id), ("model", &j.model), ("state", s)],
                n,
            );
        }
    }
    if let Some(rss) = resident_memory_bytes() {
        e.family(names::RSS, "gauge", "Resident set size of the server process, bytes.");
        e.sample(names::RSS, &[], rss);
    }
    e.out
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn handler(State(state): State<AppState>) -> impl IntoResponse {
    let jobs = match state.store.active_jobs().await {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot list active jobs");
            Vec::new()
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        render(&state, &jobs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_buckets_end_at_the_max() {
        assert_eq!(batch_size_buckets(1), vec![1]);
        assert_eq!(batch_size_buckets(32), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(batch_size_buckets(48), vec![1, 2, 4, 8, 16, 32, 48]);
    }

    #[test]
    fn histograms_are_cumulative_and_counted() {
        let mut e = Exposition::default();
        e.histogram(
            "h",
            &[("model", "a\"b")],
            &[(1.0, 2), (2.0, 0), (f64::INFINITY, 1)],
            7.5,
        );
        assert_eq!(
            e.out,
            "h_bucket{model=\"a\\\"b\",le=\"1\"} 2\nh_bucket{model=\"a\\\"b\",le=\"2\"} 2\n\
             h_bucket{model=\"a\\\"b\",le=\"+Inf\"} 3\nh_sum{model=\"a\\\"b\"} 7.5\nh_count{model=\"a\\\"b\"} 3\n"
        );
    }

    #[test]
    fn size_and_fill_buckets_place_each_batch() {
        let snap = StatsSnapshot {
            batch_sizes: vec![0, 1, 0, 2, 1, 0, 0, 0, 4],
            ..StatsSnapshot::default()
        };
        let sizes = size_buckets(&snap, 8);
        assert_eq!(sizes, vec![(1.0, 1), (2.0, 0), (4.0, 3), (8.0, 4), (f64::INFINITY, 0)]);
        let (fill, sum) = fill_buckets(&snap, 8);
        assert_eq!(fill[0], (0.125, 1));
        assert_eq!(fill[2], (0.5, 3));
        assert_eq!(fill[6], (1.0, 4));
        assert!((sum - (1.0 + 6.0 + 4.0 + 32.0) / 8.0).abs() < 1e-9);
    }

    #[test]
    fn rss_is_read() {
        assert!(resident_memory_bytes().is_some_and(|b| b > 0));
    }
}
