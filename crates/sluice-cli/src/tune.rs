//! `sluice tune`: find the batch size, instances and intra-op threads that
//! give the most items/s on this machine within a latency and a memory
//! budget, and optionally write them into the model's `model.toml`.
//!
//! Every configuration is measured the way `sluice bench` measures one
//! (`bench::through_engine` on the same pre-processed samples): the model is
//! started with the candidate settings, warmed up, fed as fast as it takes
//! items for a fixed time, and stopped. Per configuration it records items/s,
//! the per-item latency p50/p99 (submission to the end of the item's batch
//! call: what a latency budget means), the batch call p50 and the process's
//! peak resident memory.
//!
//! The search: the shipped setting first (model.toml with any override flags),
//! then batch sizes 1, 2, 4, ... up to 256 (or the model's own limit) until
//! throughput stops growing, memory breaks its budget or a batch fails, then
//! instances and intra-op threads (ONNX only) for the best one or two batch
//! sizes. `--time-budget-s` sets how long each measurement lasts and narrows
//! the search when it cannot fit. The results are kept in
//! `<model dir>/.tune.json` for the server to show.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sluice_core::spec::RuntimeKind;
use sluice_core::{Backend, ModelSpec};
use sluice_engine::Prepared;

use crate::bench;
use crate::Overrides;

/// Arguments of `sluice tune`.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Model folder (holding model.toml) or name under ./models.
    #[arg(long, short)]
    model: String,
    /// Largest acceptable per-item latency p99 (submission to the end of its batch's call), in ms.
    #[arg(long)]
    latency_budget_ms: Option<f64>,
    /// Largest acceptable peak resident memory of the process, in MiB.
    #[arg(long)]
    memory_budget_mb: Option<f64>,
    /// Seconds the whole search may take; a tight budget measures fewer configurations.
    #[arg(long, default_value_t = 180.0)]
    time_budget_s: f64,
    /// Sample inputs (default: as for `sluice bench`).
    #[arg(long, short)]
    input: Option<String>,
    /// Write the chosen max_batch_size, instances and intra_op_threads into model.toml.
    #[arg(long)]
    write: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// Largest batch size the sweep tries.
const MAX_BATCH: usize = 256;
/// Shortest measurement of one configuration, seconds (warm-up excluded).
const MIN_MEASURE_S: f64 = 0.5;
/// Longest measurement of one configuration, seconds.
const MAX_MEASURE_S: f64 = 10.0;
/// Guess of a configuration's cost beyond its measurement (start, warm-up,
/// drain) until one has been seen.
const OVERHEAD_GUESS_S: f64 = 0.3;
/// Throughput growth a larger batch must bring to keep the sweep going.
const GROWTH: f64 = 1.05;
/// Throughput this close to the best (a share) counts as a tie when choosing.
const TIE: f64 = 0.03;
/// Width of the terminal chart's bars, in characters.
const CHART_WIDTH: usize = 40;

/// The settings `sluice tune` searches over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// Largest batch per model call.
    pub max_batch_size: usize,
    /// Parallel model instances.
    pub instances: usize,
    /// ONNX Runtime intra-op threads per instance (0: its default); `None`
    /// for runtimes without them.
    pub intra_op_threads: Option<usize>,
}

impl Setting {
    fn of(spec: &ModelSpec) -> Setting {
        Setting {
            max_batch_size: spec.max_batch_size,
            instances: spec.instances,
            intra_op_threads: (spec.runtime == RuntimeKind::Onnx).then_some(spec.intra_op_threads),
        }
    }

    /// `spec` with these settings, checked as model.toml's are.
    fn apply(self, base: &ModelSpec) -> Result<ModelSpec, String> {
        let mut spec = base.clone();
        spec.max_batch_size = self.max_batch_size;
        spec.instances = self.instances;
        if let Some(t) = self.intra_op_threads {
            spec.intra_op_threads = t;
        }
        spec.validate()?;
        Ok(spec)
    }

    /// `batch 16, 1 instance, 2 threads`.
    fn label(self) -> String {
        self.parts(None).join(", ")
    }

    /// The parts of [`Setting::label`] that differ from `other` (all without one).
    fn parts(self, other: Option<Setting>) -> Vec<String> {
        let mut v = Vec::new();
        if other.is_none_or(|o| o.max_batch_size != self.max_batch_size) {
            v.push(format!("batch {}", self.max_batch_size));
        }
        if other.is_none_or(|o| o.instances != self.instances) {
            v.push(plural(self.instances, "instance"));
        }
        if let Some(t) = self.intra_op_threads {
            if other.is_none_or(|o| o.intra_op_threads != self.intra_op_threads) {
                v.push(if t == 0 {
                    "default threads".into()
                } else {
                    plural(t, "thread")
                });
            }
        }
        v
    }

    /// `max_batch_size = 16, instances = 1, intra_op_threads = 2`.
    fn assignment(self) -> String {
        let mut s = format!(
            "max_batch_size = {}, instances = {}",
            self.max_batch_size, self.instances
        );
        if let Some(t) = self.intra_op_threads {
            s.push_str(&format!(", intra_op_threads = {t}"));
        }
        s
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TuneRow {
    /// What was measured.
    #[serde(flatten)]
    pub setting: Setting,
    /// How long it was measured, seconds (warm-up excluded).
    pub seconds: f64,
    /// Items completed per second.
    pub items_per_s: f64,
    /// Per-item latency p50 (submission to the end of its batch call), ms.
    pub p50_ms: f64,
    /// Per-item latency p99, ms.
    pub p99_ms: f64,
    /// Batch call p50, ms.
    pub batch_p50_ms: f64,
    /// Batch call p99, ms.
    pub batch_p99_ms: f64,
    /// Mean items per executed batch.
    pub mean_batch: f64,
    /// Peak resident memory of the process during the measurement, MiB
    /// (`None` where it cannot be read).
    pub peak_rss_mib: Option<f64>,
    /// Items that finished with an error.
    pub failed_items: u64,
    /// The first item error, if any.
    pub item_error: Option<String>,
    /// Why the configuration could not be measured.
    pub error: Option<String>,
    /// The shipped setting (model.toml with any override flags).
    pub shipped: bool,
    /// p99 above the latency budget.
    pub over_latency: bool,
    /// Peak memory above the memory budget.
    pub over_memory: bool,
}

impl TuneRow {
    /// A row for `setting` with nothing measured yet.
    fn unmeasured(setting: Setting, seconds: f64, shipped: bool) -> TuneRow {
        TuneRow {
            setting,
            seconds,
            items_per_s: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            batch_p50_ms: 0.0,
            batch_p99_ms: 0.0,
            mean_batch: 0.0,
            peak_rss_mib: None,
            failed_items: 0,
            item_error: None,
            error: None,
            shipped,
            over_latency: false,
            over_memory: false,
        }
    }
}

/// The budgets a chosen setting must keep.
#[derive(Debug, Clone, Copy, Serialize)]
struct Budgets {
    latency_ms: Option<f64>,
    memory_mib: Option<f64>,
}

impl Budgets {
    fn over_latency(&self, r: &TuneRow) -> bool {
        self.latency_ms.is_some_and(|b| r.p99_ms > b)
    }

    fn over_memory(&self, r: &TuneRow) -> bool {
        matches!((self.memory_mib, r.peak_rss_mib), (Some(b), Some(p)) if p > b)
    }

    /// Failed outright, or some items failed: never chosen.
    fn broken(r: &TuneRow) -> bool {
        r.error.is_some() || r.failed_items > 0
    }

    fn fits(&self, r: &TuneRow) -> bool {
        !Self::broken(r) && !self.over_latency(r) && !self.over_memory(r)
    }

    /// How far over its budgets a row is (the largest measured/budget ratio).
    fn excess(&self, r: &TuneRow) -> f64 {
        let lat = self.latency_ms.map_or(0.0, |b| r.p99_ms / b.max(f64::MIN_POSITIVE));
        let mem = match (self.memory_mib, r.peak_rss_mib) {
            (Some(b), Some(p)) => p / b.max(f64::MIN_POSITIVE),
            _ => 0.0,
        };
        lat.max(mem)
    }

    /// Better rows first: fitting ones by items/s, then the closest to fitting.
    fn rank(&self, a: &TuneRow, b: &TuneRow) -> Ordering {
        match (self.fits(a), self.fits(b)) {
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (true, true) => b.items_per_s.total_cmp(&a.items_per_s),
            (false, false) => self
                .excess(a)
                .total_cmp(&self.excess(b))
                .then(b.items_per_s.total_cmp(&a.items_per_s)),
        }
    }

    /// The best unbroken row and whether it fits. Among fitting rows within
    /// [`TIE`] of the best throughput (the difference is noise on a shared
    /// machine), the one with the lowest p99 wins: same work, less latency.
    fn choose(&self, rows: &[TuneRow]) -> Option<(usize, bool)> {
        let (best, fits) = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !Self::broken(r))
            .min_by(|a, b| self.rank(a.1, b.1))
            .map(|(i, r)| (i, self.fits(r)))?;
        if !fits {
            return Some((best, false));
        }
        let floor = rows[best].items_per_s * (1.0 - TIE);
        rows.iter()
            .enumerate()
            .filter(|(_, r)| self.fits(r) && r.items_per_s >= floor)
            .min_by(|a, b| a.1.p99_ms.total_cmp(&b.1.p99_ms))
            .map(|(i, _)| (i, true))
    }
}

/// Peak resident memory of this process over one measurement: the kernel's
/// high-water mark reset by `clear_refs`, or else the largest `VmRSS`
/// sampled every 20 ms; `None` off Linux.
struct PeakRss {
    reset: bool,
    sampler: Option<(Arc<AtomicBool>, tokio::task::JoinHandle<u64>)>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let reset = cfg!(target_os = "linux") && std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let sampler = (!reset && status_kib("VmRSS").is_some()).then(|| {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let task = tokio::spawn(async move {
                let mut peak = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while !flag.load(AtomicOrdering::Relaxed) {
                    tick.tick().await;
                    peak = peak.max(status_kib("VmRSS").unwrap_or(0));
                }
                peak
            });
            (stop, task)
        });
        PeakRss { reset, sampler }
    }

    async fn finish(self) -> Option<f64> {
        let kib = if self.reset {
            status_kib("VmHWM")?
        } else {
            let (stop, task) = self.sampler?;
            stop.store(true, AtomicOrdering::Relaxed);
            let sampled = task.await.unwrap_or(0);
            sampled.max(status_kib("VmRSS").unwrap_or(0))
        };
        Some(kib as f64 / 1024.0)
    }
}

/// A `kB` field of `/proc/self/status`.
#[cfg(target_os = "linux")]
fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(not(target_os = "linux"))]
fn status_kib(_field: &str) -> Option<u64> {
    None
}

/// The loaded backend, reloaded only when a setting it was loaded with
/// changes: ONNX fixes its threads at load, OMI its number of workers.
#[derive(Default)]
struct Backends {
    key: Option<(usize, usize)>,
    current: Option<Arc<dyn Backend>>,
}

impl Backends {
    async fn get(&mut self, spec: &ModelSpec) -> anyhow::Result<Arc<dyn Backend>> {
        let key = (
            if spec.runtime == RuntimeKind::Omi {
                spec.instances
            } else {
                0
            },
            if spec.runtime == RuntimeKind::Onnx {
                spec.intra_op_threads
            } else {
                0
            },
        );
        if self.key == Some(key) {
            if let Some(b) = &self.current {
                return Ok(b.clone());
            }
        }
        self.release().await;
        let s = spec.clone();
        let backend = tokio::task::spawn_blocking(move || sluice_engine::load_backend(&s)).await??;
        self.key = Some(key);
        self.current = Some(backend.clone());
        Ok(backend)
    }

    /// Drops the backend off the async threads (an OMI backend stops its
    /// workers gracefully only there).
    async fn release(&mut self) {
        self.key = None;
        if let Some(old) = self.current.take() {
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
    }
}

/// The state of one search.
struct Search<'a> {
    base: &'a ModelSpec,
    samples: &'a [Prepared],
    budgets: Budgets,
    backends: Backends,
    rows: Vec<TuneRow>,
    started: Instant,
    budget: Duration,
    /// Configurations still planned (an upper bound while the sweep runs).
    planned_left: usize,
    /// Time each configuration took beyond its measurement.
    overheads: Vec<Duration>,
    /// What the time budget left out.
    skipped: Vec<String>,
    /// Why a dimension or the sweep stopped.
    notes: Vec<String>,
}

impl Search<'_> {
    fn find(&self, s: Setting) -> Option<usize> {
        self.rows.iter().position(|r| r.setting == s)
    }

    /// What a configuration costs beyond its measurement (starting the
    /// model or its workers, warm-up, drain): the mean so far.
    fn overhead(&self) -> Duration {
        match u32::try_from(self.overheads.len()) {
            Ok(n) if n > 0 => self.overheads.iter().sum::<Duration>() / n,
            _ => Duration::from_secs_f64(OVERHEAD_GUESS_S),
        }
    }

    /// The next measurement's length: what is left of the time budget shared
    /// by the configurations still planned, less each one's overhead.
    fn next_per(&self) -> Duration {
        let left = self.budget.saturating_sub(self.started.elapsed()).as_secs_f64();
        let per = left / self.planned_left.max(1) as f64 - self.overhead().as_secs_f64();
        Duration::from_secs_f64(per.clamp(MIN_MEASURE_S, MAX_MEASURE_S))
    }

    /// Whether one more configuration fits in what is left of the time budget
    /// (the first always does), counting the largest overhead seen so far.
    fn fits_another(&self) -> bool {
        let overhead = self.overheads.iter().copied().max().unwrap_or_else(|| self.overhead());
        self.rows.is_empty() || self.started.elapsed() + self.next_per() + overhead <= self.budget
    }

    /// Measures `s`; `None` when it is not a valid setting (noted).
    async fn measure(&mut self, s: Setting, shipped: bool) -> Option<usize> {
        let spec = match s.apply(self.base) {
            Ok(spec) => spec,
            Err(e) => {
                self.notes
                    .push(format!("{} is not a valid setting ({e}): not measured", s.label()));
                return None;
            }
        };
        let per = self.next_per();
        self.planned_left = self.planned_left.saturating_sub(1);
        eprint!("measuring {} for {:.1}s ... ", s.label(), per.as_secs_f64());
        let t = Instant::now();
        let outcome = match self.backends.get(&spec).await {
            Ok(backend) => {
                let peak = PeakRss::start();
                let m = bench::through_engine(
                    &spec,
                    backend,
                    self.samples,
                    s.max_batch_size,
                    per,
                    spec.group_by_length,
                )
                .await;
                let peak = peak.finish().await;
                m.map(|m| (m, peak))
            }
            Err(e) => Err(e),
        };
        self.overheads.push(t.elapsed().saturating_sub(per));
        let mut row = TuneRow::unmeasured(s, per.as_secs_f64(), shipped);
        match outcome {
            Ok((m, peak)) => {
                row.items_per_s = m.items_per_s;
                row.p50_ms = m.item_p50_ms;
                row.p99_ms = m.item_p99_ms;
                row.batch_p50_ms = m.p50_ms;
                row.batch_p99_ms = m.p99_ms;
                row.mean_batch = m.mean_batch;
                row.peak_rss_mib = peak;
                row.failed_items = m.failed_items;
                row.item_error = m.first_error;
            }
            Err(e) => {
                tracing::warn!(setting = %s.label(), error = %format!("{e:#}"), "configuration failed");
                row.error = Some(format!("{e:#}"));
            }
        }
        row.over_latency = self.budgets.over_latency(&row);
        row.over_memory = self.budgets.over_memory(&row);
        match &row.error {
            Some(e) => eprintln!("failed: {e}"),
            None => eprintln!(
                "{} items/s, p99 {}, peak {}",
                count(row.items_per_s),
                ms(row.p99_ms),
                mib(row.peak_rss_mib)
            ),
        }
        self.rows.push(row);
        Some(self.rows.len() - 1)
    }

    /// Batch sizes at the shipped instances and threads, doubling until
    /// throughput stops growing, a budget or an error stops it, or time runs out.
    async fn sweep(&mut self, shipped: Setting, sizes: &[usize]) {
        let mut best = 0.0_f64;
        let mut stalls = 0;
        let mut slow = 0;
        for (k, &b) in sizes.iter().enumerate() {
            let s = Setting {
                max_batch_size: b,
                ..shipped
            };
            let idx = match self.find(s) {
                Some(i) => i,
                None if !self.fits_another() => {
                    let left: Vec<String> = sizes
                        .get(k..)
                        .unwrap_or_default()
                        .iter()
                        .filter(|&&b| {
                            self.find(Setting {
                                max_batch_size: b,
                                ..shipped
                            })
                            .is_none()
                        })
                        .map(ToString::to_string)
                        .collect();
                    if !left.is_empty() {
                        self.skipped.push(format!("batch sizes {}", left.join(", ")));
                    }
                    return;
                }
                None => match self.measure(s, false).await {
                    Some(i) => i,
                    None => return,
                },
            };
            let Some(r) = self.rows.get(idx) else { return };
            let stop = if let Some(e) = &r.error {
                Some(format!("batch {b} failed ({e})"))
            } else if r.failed_items > 0 {
                Some(format!(
                    "{} failed at batch {b} (first: {})",
                    plural(usize::try_from(r.failed_items).unwrap_or(usize::MAX), "item"),
                    r.item_error.as_deref().unwrap_or("unknown")
                ))
            } else if self.budgets.over_memory(r) {
                Some(format!("batch {b} broke the memory budget"))
            } else {
                stalls = if r.items_per_s < best * GROWTH { stalls + 1 } else { 0 };
                best = best.max(r.items_per_s);
                slow = if self.budgets.over_latency(r) { slow + 1 } else { 0 };
                if stalls >= 2 {
                    Some(format!(
                        "items/s grew by less than {:.0}% twice in a row (batch {b})",
                        (GROWTH - 1.0) * 100.0
                    ))
                } else if slow >= 2 {
                    Some(format!(
                        "p99 was over the latency budget twice in a row (batch {b}); larger batches only wait longer"
                    ))
                } else {
                    None
                }
            };
            if let Some(why) = stop {
                if k + 1 < sizes.len() {
                    self.notes.push(format!("batch sweep stopped: {why}"));
                }
                return;
            }
        }
    }

    /// Instances (and intra-op threads) for the best one or two batch sizes.
    async fn spread(&mut self, combos: &[(usize, Option<usize>)]) {
        let mut order: Vec<&TuneRow> = self.rows.iter().filter(|r| !Budgets::broken(r)).collect();
        order.sort_by(|a, b| self.budgets.rank(a, b));
        let mut top: Vec<usize> = Vec::new();
        for r in order {
            if !top.contains(&r.setting.max_batch_size) && top.len() < 2 {
                top.push(r.setting.max_batch_size);
            }
        }
        let todo: Vec<Setting> = top
            .iter()
            .flat_map(|&b| {
                combos.iter().map(move |&(instances, intra_op_threads)| Setting {
                    max_batch_size: b,
                    instances,
                    intra_op_threads,
                })
            })
            .filter(|&s| self.find(s).is_none())
            .collect();
        self.planned_left = todo.len();
        let mut left: Vec<(usize, usize)> = top.iter().map(|&b| (b, 0)).collect();
        for s in todo {
            if self.fits_another() {
                self.measure(s, false).await;
            } else {
                self.planned_left = self.planned_left.saturating_sub(1);
                if let Some(l) = left.iter_mut().find(|l| l.0 == s.max_batch_size) {
                    l.1 += 1;
                }
            }
        }
        let what = if combos.iter().any(|c| c.1.is_some()) {
            "instances/threads combination"
        } else {
            "instance count"
        };
        for (b, n) in left.into_iter().filter(|l| l.1 > 0) {
            self.skipped.push(format!("{} for batch {b}", plural(n, what)));
        }
    }
}

/// Batch sizes 1, 2, 4, ... up to `cap`, and `cap` itself.
fn sweep_sizes(cap: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut b = 1;
    while b <= cap {
        v.push(b);
        b *= 2;
    }
    if v.last() != Some(&cap) {
        v.push(cap);
    }
    v
}

/// Instances 1, 2, 4, ... up to the cores, times intra-op threads 1, 2 and
/// the cores (ONNX), keeping instances × threads within the cores; the
/// shipped pair is left out (the sweep measured it).
fn combos(shipped: Setting, cores: usize) -> Vec<(usize, Option<usize>)> {
    let mut instances = sweep_sizes(cores);
    instances.dedup();
    let threads: Vec<Option<usize>> = match shipped.intra_op_threads {
        None => vec![None],
        Some(t) => {
            let mut v = vec![1, 2, cores, t];
            v.retain(|&x| x >= 1 && x <= cores);
            v.sort_unstable();
            v.dedup();
            v.into_iter().map(Some).collect()
        }
    };
    let mut out = Vec::new();
    for &i in &instances {
        for &t in &threads {
            if i * t.unwrap_or(1) <= cores && (i, t) != (shipped.instances, shipped.intra_op_threads) {
                out.push((i, t));
            }
        }
    }
    out
}

/// Seconds per measurement: the budget shared by the planned configurations,
/// less each one's overhead, within [`MIN_MEASURE_S`, `MAX_MEASURE_S`].
fn per_measurement(budget_s: f64, planned: usize) -> f64 {
    (budget_s / planned.max(1) as f64 - OVERHEAD_GUESS_S).clamp(MIN_MEASURE_S, MAX_MEASURE_S)
}

/// The setting of the chosen row, as kept in `.tune.json`.
#[derive(Debug, Serialize)]
struct Chosen {
    #[serde(flatten)]
    setting: Setting,
    items_per_s: f64,
    p99_ms: f64,
    peak_rss_mib: Option<f64>,
    fits_budgets: bool,
    reason: String,
}

/// The shipped setting and its throughput, as kept in `.tune.json`.
#[derive(Debug, Serialize)]
struct Shipped {
    #[serde(flatten)]
    setting: Setting,
    items_per_s: Option<f64>,
}

/// What `.tune.json` holds.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: &'a str,
    backend: &'a str,
    measured_at: u64,
    cores: usize,
    time_budget_s: f64,
    seconds_per_measurement: f64,
    elapsed_s: f64,
    narrowed: bool,
    skipped: &'a [String],
    notes: &'a [String],
    budgets: Budgets,
    rows: &'a [TuneRow],
    chosen: Chosen,
    shipped: Shipped,
    ratio: Option<f64>,
}

/// Runs `sluice tune`.
pub async fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        args.time_budget_s.is_finite() && args.time_budget_s > 0.0,
        "--time-budget-s must be positive"
    );
    for (name, v) in [
        ("--latency-budget-ms", args.latency_budget_ms),
        ("--memory-budget-mb", args.memory_budget_mb),
    ] {
        anyhow::ensure!(v.is_none_or(|v| v.is_finite() && v > 0.0), "{name} must be positive");
    }
    let mut spec = crate::load_spec(&args.model)?;
    args.overrides.apply(&mut spec)?;
    let file = if Path::new(&args.model).is_file() {
        PathBuf::from(&args.model)
    } else {
        spec.dir.join("model.toml")
    };
    let budgets = Budgets {
        latency_ms: args.latency_budget_ms,
        memory_mib: args.memory_budget_mb,
    };
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let shipped = Setting::of(&spec);

    let mut backends = Backends::default();
    let backend = backends.get(&spec).await?;
    let backend_desc = backend.describe();
    let cap = backend
        .max_batch_size()
        .filter(|&n| n > 0)
        .map_or(MAX_BATCH, |n| n.min(MAX_BATCH));
    let sizes = sweep_sizes(cap);
    let samples = bench::prepare_samples(
        &spec,
        backend.as_ref(),
        args.input.as_deref(),
        cap.max(shipped.max_batch_size),
    )
    .await?;
    drop(backend);
    let combos = combos(shipped, cores);
    let planned = 1 + sizes.iter().filter(|&&b| b != shipped.max_batch_size).count() + 2 * combos.len();
    let per = per_measurement(args.time_budget_s, planned);

    let mut search = Search {
        base: &spec,
        samples: &samples,
        budgets,
        backends,
        rows: Vec::new(),
        started,
        budget: Duration::from_secs_f64(args.time_budget_s),
        planned_left: planned,
        overheads: Vec::new(),
        skipped: Vec::new(),
        notes: Vec::new(),
    };
    if shipped.intra_op_threads.is_none() {
        search.notes.push(format!(
            "intra-op threads apply to ONNX models only: not searched for this {} model",
            runtime_name(spec.runtime)
        ));
    }
    if spec.runtime == RuntimeKind::Omi {
        search
            .notes
            .push("peak RSS is this process's: the OMI workers' own memory is not included".into());
    }
    if budgets.memory_mib.is_some() && status_kib("VmRSS").is_none() {
        search
            .notes
            .push("peak memory cannot be read on this system: the memory budget is not checked".into());
    }
    search.measure(shipped, true).await;
    search.sweep(shipped, &sizes).await;
    search.spread(&combos).await;
    search.backends.release().await;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} on {backend_desc}: {} sample items, {cores} cores, {per:.1}s per measurement planned \
         (time budget {}s for up to {planned} configurations; each row's own in .tune.json)",
        spec.name,
        samples.len(),
        args.time_budget_s,
    );

    let mut rows = std::mem::take(&mut search.rows);
    rows.sort_by_key(|r| {
        (
            r.setting.max_batch_size,
            r.setting.instances,
            r.setting.intra_op_threads,
        )
    });
    print_table(&rows, &budgets);
    let Some((chosen_idx, fits)) = budgets.choose(&rows) else {
        let first = rows
            .iter()
            .find_map(|r| r.error.as_ref().or(r.item_error.as_ref()))
            .map_or(String::new(), |e| format!(" (first error: {e})"));
        anyhow::bail!(
            "no configuration ran without errors{first}; if the sample inputs do not suit the model, pass --input"
        );
    };
    let chosen = rows.get(chosen_idx).context("chosen row")?;
    print_chart(&rows, chosen_idx);
    for n in &search.notes {
        println!("note: {n}");
    }
    let narrowed = !search.skipped.is_empty();
    if narrowed {
        println!(
            "note: the time budget ({}s) narrowed the search: skipped {}",
            args.time_budget_s,
            search.skipped.join("; ")
        );
    }
    println!(
        "measured {} configurations in {elapsed:.1}s (time budget {}s)",
        rows.len(),
        args.time_budget_s
    );
    if !fits {
        println!(
            "warning: no configuration meets the budgets ({}); choosing the one closest to fitting",
            budget_words(&budgets)
        );
    }
    let reason = reason(&rows, chosen_idx, &budgets, fits);
    println!("chosen: {reason}");
    let shipped_row = rows.iter().find(|r| r.shipped && !Budgets::broken(r));
    let ratio = shipped_row.map(|s| chosen.items_per_s / s.items_per_s.max(1e-9));
    match (shipped_row, ratio) {
        (Some(s), Some(ratio)) => println!(
            "chosen vs shipped: {} items/s vs {} items/s (ratio {ratio:.2}){}",
            count(chosen.items_per_s),
            count(s.items_per_s),
            if chosen.setting == shipped {
                ": the shipped setting is the best"
            } else {
                ""
            }
        ),
        _ => println!(
            "chosen vs shipped: the shipped setting ({}) did not run without errors",
            shipped.label()
        ),
    }

    let report = Report {
        model: &spec.name,
        backend: &backend_desc,
        measured_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        cores,
        time_budget_s: args.time_budget_s,
        seconds_per_measurement: per,
        elapsed_s: elapsed,
        narrowed,
        skipped: &search.skipped,
        notes: &search.notes,
        budgets,
        rows: &rows,
        chosen: Chosen {
            setting: chosen.setting,
            items_per_s: chosen.items_per_s,
            p99_ms: chosen.p99_ms,
            peak_rss_mib: chosen.peak_rss_mib,
            fits_budgets: fits,
            reason,
        },
        shipped: Shipped {
            setting: shipped,
            items_per_s: shipped_row.map(|r| r.items_per_s),
        },
        ratio,
    };
    let text = serde_json::to_string_pretty(&report)?;
    // Kept beside the model so `GET /v1/models/{name}` and the dashboard can show it.
    let kept = spec.dir.join(sluice_server::api::models::TUNE_FILE);
    match std::fs::write(&kept, &text) {
        Ok(()) => println!("results kept in {}", kept.display()),
        Err(e) => tracing::warn!(path = %kept.display(), error = %e, "cannot keep the tune results"),
    }

    if args.write {
        if !fits {
            println!("{} not written: no configuration meets the budgets", file.display());
        } else if write_setting(&file, chosen.setting)? {
            println!("{} updated: {}", file.display(), chosen.setting.assignment());
        } else {
            println!("{} already holds {}", file.display(), chosen.setting.assignment());
        }
    }
    Ok(())
}

fn runtime_name(r: RuntimeKind) -> &'static str {
    match r {
        RuntimeKind::Onnx => "onnx",
        RuntimeKind::Noop => "noop",
        RuntimeKind::Omi => "omi",
    }
}

/// `p99 ≤ 0.001 ms, peak ≤ 512 MiB`.
fn budget_words(b: &Budgets) -> String {
    let mut v = Vec::new();
    if let Some(l) = b.latency_ms {
        v.push(format!("p99 ≤ {l} ms"));
    }
    if let Some(m) = b.memory_mib {
        v.push(format!("peak ≤ {m} MiB"));
    }
    v.join(", ")
}

/// The one-line explanation of the choice.
fn reason(rows: &[TuneRow], chosen: usize, budgets: &Budgets, fits: bool) -> String {
    let Some(c) = rows.get(chosen) else {
        return String::new();
    };
    let mut s = format!(
        "{}: {} items/s, p99 {}",
        c.setting.assignment(),
        count(c.items_per_s),
        ms(c.p99_ms)
    );
    if let Some(l) = budgets.latency_ms {
        s.push_str(&format!(" (budget {l} ms)"));
    }
    s.push_str(&format!(", peak {}", mib(c.peak_rss_mib)));
    if let Some(m) = budgets.memory_mib {
        s.push_str(&format!(" (budget {m} MiB)"));
    }
    let measured = rows.iter().filter(|r| !Budgets::broken(r)).count();
    let fastest = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| !Budgets::broken(r))
        .max_by(|a, b| a.1.items_per_s.total_cmp(&b.1.items_per_s));
    if !fits {
        s.push_str(&format!(
            "; none of the {measured} configurations measured meets the budgets: this one comes closest"
        ));
        return s;
    }
    match fastest {
        Some((i, f)) if i != chosen && f.items_per_s > c.items_per_s => {
            let pct = 100.0 * (f.items_per_s / c.items_per_s.max(1e-9) - 1.0);
            let mut why = Vec::new();
            if f.over_latency {
                why.push(format!("its p99 {} breaks the latency budget", ms(f.p99_ms)));
            }
            if f.over_memory {
                why.push(format!("its peak {} breaks the memory budget", mib(f.peak_rss_mib)));
            }
            if why.is_empty() {
                why.push(format!(
                    "within {:.0}% counts as a tie, and its p99 is {} against {}",
                    100.0 * TIE,
                    ms(f.p99_ms),
                    ms(c.p99_ms)
                ));
            }
            s.push_str(&format!(
                "; {} was {pct:.0}% faster but {}",
                f.setting.parts(Some(c.setting)).join(", "),
                why.join(" and ")
            ));
        }
        _ => s.push_str(&format!(
            "; the fastest of the {measured} configurations measured{}",
            if budgets.latency_ms.is_some() || budgets.memory_mib.is_some() {
                ", within the budgets"
            } else {
                ""
            }
        )),
    }
    s
}

/// `4,210` (items/s and counts), with decimals below 100.
fn count(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x.abs() < 100.0 {
        return format!("{x:.1}");
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// `38 ms`, `4.2 ms`, `0.52 ms`.
fn ms(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0} ms")
    } else if x >= 1.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

fn mib(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), |m| format!("{m:.0} MiB"))
}

fn threads_cell(t: Option<usize>) -> String {
    match t {
        None => "-".into(),
        Some(0) => "default".into(),
        Some(t) => t.to_string(),
    }
}

fn print_table(rows: &[TuneRow], budgets: &Budgets) {
    println!(
        "{:>6} {:>9} {:>8} {:>12} {:>9} {:>9} {:>10} {:>9}  notes",
        "batch", "instances", "threads", "items/s", "p50 ms", "p99 ms", "batch p50", "peak MiB"
    );
    for r in rows {
        let mut notes = Vec::new();
        if r.shipped {
            notes.push("shipped".to_string());
        }
        if let Some(e) = &r.error {
            notes.push(format!("✗ error: {e}"));
        } else if r.failed_items > 0 {
            notes.push(format!(
                "✗ {} failed",
                plural(usize::try_from(r.failed_items).unwrap_or(usize::MAX), "item")
            ));
        }
        if budgets.over_latency(r) {
            notes.push("✗ latency".into());
        }
        if budgets.over_memory(r) {
            notes.push("✗ memory".into());
        }
        println!(
            "{:>6} {:>9} {:>8} {:>12} {:>9.2} {:>9.2} {:>10.2} {:>9}  {}",
            r.setting.max_batch_size,
            r.setting.instances,
            threads_cell(r.setting.intra_op_threads),
            count(r.items_per_s),
            r.p50_ms,
            r.p99_ms,
            r.batch_p50_ms,
            r.peak_rss_mib.map_or_else(|| "n/a".into(), |m| format!("{m:.0}")),
            notes.join(", ")
        );
    }
    if budgets.latency_ms.is_some() || budgets.memory_mib.is_some() {
        println!("(✗: breaks a budget: {})", budget_words(budgets));
    }
}

/// A horizontal bar of `frac` (0..=1) of [`CHART_WIDTH`], in eighths of a block.
fn bar(frac: f64) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (frac.clamp(0.0, 1.0) * (CHART_WIDTH * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    // A partial block for the rest, or the padding's blank.
    s.push(PARTS.get(eighths % 8).copied().unwrap_or(' '));
    s.truncate(s.trim_end().len());
    let used = s.chars().count();
    s.push_str(&" ".repeat(CHART_WIDTH.saturating_sub(used)));
    s
}

fn print_chart(rows: &[TuneRow], chosen: usize) {
    let top = rows.iter().map(|r| r.items_per_s).fold(0.0_f64, f64::max).max(1e-9);
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut l = format!("b={} i={}", r.setting.max_batch_size, r.setting.instances);
            if let Some(t) = r.setting.intra_op_threads {
                l.push_str(&format!(" t={}", threads_cell(Some(t))));
            }
            l
        })
        .collect();
    let w = labels.iter().map(String::len).max().unwrap_or(0);
    println!("items/s per configuration:");
    for (i, (r, l)) in rows.iter().zip(&labels).enumerate() {
        println!(
            "  {l:<w$} │{}│ {}{}",
            bar(r.items_per_s / top),
            count(r.items_per_s),
            if i == chosen { "  ◀ chosen" } else { "" }
        );
    }
}

/// Sets the chosen keys in `file` keeping its comments and layout (keys
/// missing from the file go after its other top-level keys), proves the
/// result loads as a model.toml, and replaces the file. `Ok(false)` when
/// the file already holds the setting.
fn write_setting(file: &Path, s: Setting) -> anyhow::Result<bool> {
    let current = ModelSpec::load(file).with_context(|| format!("cannot read {}", file.display()))?;
    if Setting::of(&current) == s {
        return Ok(false);
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {}", file.display()))?;
    set_key(&mut doc, "max_batch_size", s.max_batch_size)?;
    set_key(&mut doc, "instances", s.instances)?;
    if let Some(t) = s.intra_op_threads {
        set_key(&mut doc, "intra_op_threads", t)?;
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.toml".into());
    let tmp = file.with_file_name(format!(".{name}.tune-tmp"));
    std::fs::write(&tmp, doc.to_string()).with_context(|| format!("cannot write {}", tmp.display()))?;
    let checked = ModelSpec::load(&tmp).map_err(anyhow::Error::from).and_then(|written| {
        anyhow::ensure!(
            Setting::of(&written) == s,
            "the written file does not hold the chosen setting"
        );
        if let Ok(meta) = std::fs::metadata(file) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))
    });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("{} left unchanged", file.display())));
    }
    Ok(true)
}

/// Sets a top-level integer key, keeping the decoration (comments, spacing)
/// of a value already there; a new key is appended to the top-level keys.
fn set_key(doc: &mut toml_edit::DocumentMut, key: &str, v: usize) -> anyhow::Result<()> {
    let n = i64::try_from(v).with_context(|| format!("{key} = {v} is too large"))?;
    match doc.get_mut(key) {
        Some(item) => {
            let value = item
                .as_value_mut()
                .with_context(|| format!("{key} in model.toml is not a plain value"))?;
            let decor = value.decor().clone();
            *value = toml_edit::Value::from(n);
            *value.decor_mut() = decor;
        }
        None => {
            doc.insert(key, toml_edit::value(n));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b: usize, ips: f64, p99: f64) -> TuneRow {
        let setting = Setting {
            max_batch_size: b,
            instances: 1,
            intra_op_threads: Some(0),
        };
        TuneRow {
            items_per_s: ips,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            peak_rss_mib: Some(100.0),
            ..TuneRow::unmeasured(setting, 1.0, false)
        }
    }

    #[test]
    fn the_fastest_within_the_budget_is_chosen() {
        let budgets = Budgets {
            latency_ms: Some(50.0),
            memory_mib: None,
        };
        let mut rows = vec![row(8, 3000.0, 20.0), row(16, 4210.0, 38.0), row(32, 4340.0, 61.0)];
        for r in &mut rows {
            r.over_latency = budgets.over_latency(r);
        }
        let (i, fits) = budgets.choose(&rows).expect("a choice");
        assert_eq!((i, fits), (1, true));
        let why = reason(&rows, i, &budgets, fits);
        assert!(
            why.starts_with(
                "max_batch_size = 16, instances = 1, intra_op_threads = 0: 4,210 items/s, p99 38 ms (budget 50 ms)"
            ),
            "{why}"
        );
        assert!(
            why.ends_with("batch 32 was 3% faster but its p99 61 ms breaks the latency budget"),
            "{why}"
        );
    }

    #[test]
    fn a_throughput_tie_goes_to_the_lower_latency() {
        let budgets = Budgets {
            latency_ms: None,
            memory_mib: None,
        };
        // 128 is 2% faster than 64 (noise) at twice the p99; 256 is slower.
        let rows = vec![
            row(32, 12300.0, 12.0),
            row(64, 14770.0, 18.0),
            row(128, 15060.0, 40.0),
            row(256, 14400.0, 72.0),
        ];
        let (i, fits) = budgets.choose(&rows).expect("a choice");
        assert_eq!((i, fits), (1, true));
        let why = reason(&rows, i, &budgets, fits);
        assert!(
            why.ends_with("batch 128 was 2% faster but within 3% counts as a tie, and its p99 is 40 ms against 18 ms"),
            "{why}"
        );
        // Beyond the tie, throughput wins.
        let rows = vec![row(64, 14000.0, 18.0), row(128, 15060.0, 40.0)];
        assert_eq!(budgets.choose(&rows), Some((1, true)));
    }

    #[test]
    fn without_a_fit_the_closest_is_chosen() {
        let budgets = Budgets {
            latency_ms: Some(0.001),
            memory_mib: None,
        };
        let rows = vec![row(1, 100.0, 0.5), row(2, 200.0, 0.4), row(4, 300.0, 0.9)];
        assert_eq!(budgets.choose(&rows), Some((1, false)));
    }

    #[test]
    fn combos_stay_within_the_cores() {
        let shipped = Setting {
            max_batch_size: 32,
            instances: 1,
            intra_op_threads: Some(0),
        };
        assert_eq!(combos(shipped, 2), vec![(1, Some(1)), (1, Some(2)), (2, Some(1))]);
        let noop = Setting {
            intra_op_threads: None,
            ..shipped
        };
        assert_eq!(combos(noop, 4), vec![(2, None), (4, None)]);
    }

    #[test]
    fn sizes_double_up_to_the_cap() {
        assert_eq!(sweep_sizes(256).len(), 9);
        assert_eq!(sweep_sizes(48), vec![1, 2, 4, 8, 16, 32, 48]);
        assert_eq!(sweep_sizes(1), vec![1]);
    }

    #[test]
    fn numbers_read_as_in_the_output() {
        assert_eq!(count(4210.4), "4,210");
        assert_eq!(count(1_234_567.0), "1,234,567");
        assert_eq!(count(42.25), "42.2");
        assert_eq!(bar(1.0).chars().count(), CHART_WIDTH);
        assert_eq!(bar(0.5).trim_end().chars().count(), CHART_WIDTH / 2);
    }

    #[test]
    fn write_keeps_comments_and_inserts_missing_keys_before_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("model.toml");
        std::fs::write(
            &file,
            "# A comment\nruntime = \"noop\"\nmax_batch_size = 64 # the old one\n\n[processing]\ntype = \"tensor\"\n",
        )
        .expect("write");
        let s = Setting {
            max_batch_size: 8,
            instances: 2,
            intra_op_threads: None,
        };
        assert!(write_setting(&file, s).expect("written"));
        let text = std::fs::read_to_string(&file).expect("read");
        assert_eq!(
            text,
            "# A comment\nruntime = \"noop\"\nmax_batch_size = 8 # the old one\ninstances = 2\n\n[processing]\ntype = \"tensor\"\n"
        );
        assert!(!write_setting(&file, s).expect("checked"), "already held");
    }
}
