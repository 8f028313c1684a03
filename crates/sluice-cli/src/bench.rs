//! `sluice bench`: what batching buys on this machine.
//!
//! For each batch size, a model is started with that `max_batch_size` and fed
//! pre-processed sample items as fast as it takes them; the table shows
//! items/s, batch latency, the speedup over batch size 1 and the best size.
//! With `--raw`, each size is also measured by calling ONNX Runtime directly
//! on the same batches (same session options), first-come-first-served in
//! both, so the ratio is the engine's own efficiency. Pre-processing (decode,
//! tokenize) is done once up front and not timed: it does not batch.
//! The rows are kept in `<model dir>/.bench.json` for the server to show.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sluice_core::spec::RuntimeKind;
use sluice_core::{Backend, DType, Input, ModelSpec, Tensor, TensorData};
use sluice_engine::{CancelFlag, Completion, Model, Prepared, Reply, SubmitOptions};
use tokio::sync::mpsc;

use crate::inputs::{self, Kind};
use crate::Overrides;

/// Arguments of `sluice bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model folder (holding model.toml) or name under ./models.
    #[arg(long, short)]
    model: String,
    /// Batch sizes to measure (default: 1, 8, 16, 32, 64 up to the model's max, and the max).
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Option<Vec<usize>>,
    /// Sample inputs (default: data/texts/sample.jsonl for text, data/images for images,
    /// random tensors for tensor models).
    #[arg(long, short)]
    input: Option<String>,
    /// Seconds to measure each configuration.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Repeats of each measurement; the median is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Also measure raw ONNX Runtime on the same batches.
    #[arg(long)]
    raw: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// Batches (per instance) run before the clock starts, in the engine run and
/// the raw baseline alike, so both time the same batches.
const WARM_BATCHES: usize = 2;

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Batch size.
    pub batch_size: usize,
    /// Median items/s through Sluice.
    pub items_per_s: f64,
    /// Mean items per executed batch.
    pub mean_batch: f64,
    /// Batch latency (runtime call) p50, ms.
    pub batch_p50_ms: f64,
    /// Batch latency p99, ms.
    pub batch_p99_ms: f64,
    /// Padding share (text).
    pub padding_ratio: f64,
    /// Median items/s through Sluice with first-come-first-served batches (with --raw).
    pub fifo_items_per_s: Option<f64>,
    /// Median items/s calling ONNX Runtime directly (with --raw).
    pub raw_items_per_s: Option<f64>,
    /// Items/s over batch size 1's (when batch size 1 was measured).
    pub speedup: Option<f64>,
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let mut spec = crate::load_spec(&args.model)?;
    args.overrides.apply(&mut spec)?;
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(args.repeat > 0, "--repeat must be at least 1");
    let sizes = args
        .batch_sizes
        .clone()
        .unwrap_or_else(|| default_sizes(spec.max_batch_size));
    anyhow::ensure!(sizes.iter().all(|&b| b > 0), "batch sizes must be at least 1");
    let max_b = sizes.iter().copied().max().unwrap_or(1);

    let spec_for_load = spec.clone();
    let backend = tokio::task::spawn_blocking(move || sluice_engine::load_backend(&spec_for_load)).await??;
    let samples = prepare_samples(&spec, backend.as_ref(), args.input.as_deref(), max_b).await?;

    println!(
        "{} on {}: {} distinct sample items, {:.1}s per measurement, {} repeat(s), {} instance(s)",
        spec.name,
        backend.describe(),
        samples.len(),
        args.seconds,
        args.repeat,
        spec.instances
    );
    let dur = Duration::from_secs_f64(args.seconds);
    let raw_ok = args.raw && spec.runtime == RuntimeKind::Onnx;
    if args.raw && !raw_ok {
        println!("--raw applies to ONNX models only; skipped");
    }
    let mut rows = Vec::new();
    for &b in &sizes {
        let mut sl = Vec::new();
        let mut fifo = Vec::new();
        let mut raw = Vec::new();
        let mut last = None;
        for _ in 0..args.repeat {
            if raw_ok {
                raw.push(raw_onnx(&spec, &samples, b, dur).await?);
                fifo.push(
                    through_engine(&spec, backend.clone(), &samples, b, dur, false)
                        .await?
                        .items_per_s,
                );
            }
            let m = through_engine(&spec, backend.clone(), &samples, b, dur, spec.group_by_length).await?;
            sl.push(m.items_per_s);
            last = Some(m);
        }
        let m = last.context("no measurement")?;
        rows.push(Row {
            batch_size: b,
            items_per_s: median(&mut sl),
            mean_batch: m.mean_batch,
            batch_p50_ms: m.p50_ms,
            batch_p99_ms: m.p99_ms,
            padding_ratio: m.padding_ratio,
            fifo_items_per_s: raw_ok.then(|| median(&mut fifo)),
            raw_items_per_s: raw_ok.then(|| median(&mut raw)),
            speedup: None,
        });
    }
    if let Some(base) = rows.iter().find(|r| r.batch_size == 1).map(|r| r.items_per_s) {
        for r in &mut rows {
            r.speedup = Some(r.items_per_s / base.max(1e-9));
        }
    }
    print_table(
        &rows,
        raw_ok,
        spec.group_by_length && spec.processing.describe().takes == sluice_core::Takes::Text,
    );
    let v = serde_json::json!({
        "model": spec.name,
        "backend": backend.describe(),
        "measured_at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        "seconds": args.seconds,
        "repeat": args.repeat,
        "rows": rows,
    });
    let text = serde_json::to_string_pretty(&v)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Kept beside the model so `GET /v1/models/{name}` and the dashboard can show it.
    let kept = spec.dir.join(sluice_server::api::models::BENCH_FILE);
    match std::fs::write(&kept, &text) {
        Ok(()) => println!("results kept in {}", kept.display()),
        Err(e) => tracing::warn!(path = %kept.display(), error = %e, "cannot keep the bench results"),
    }
    Ok(())
}

fn default_sizes(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [1, 8, 16, 32, 64].into_iter().filter(|&b| b < max).collect();
    v.push(max);
    v
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn print_table(rows: &[Row], raw: bool, text: bool) {
    let base = rows.iter().find(|r| r.batch_size == 1).map(|r| r.items_per_s);
    print!(
        "{:>6} {:>12} {:>9} {:>10} {:>10}",
        "batch", "items/s", "speedup", "p50 ms", "p99 ms"
    );
    if text {
        print!(" {:>8}", "padding");
    }
    if raw {
        print!(" {:>14} {:>14} {:>9}", "sluice fifo/s", "raw ort/s", "vs raw");
    }
    println!();
    for r in rows {
        let speedup = base.map_or("-".into(), |b| format!("x{:.2}", r.items_per_s / b.max(1e-9)));
        print!(
            "{:>6} {:>12.1} {:>9} {:>10.2} {:>10.2}",
            r.batch_size, r.items_per_s, speedup, r.batch_p50_ms, r.batch_p99_ms
        );
        if text {
            print!(" {:>7.1}%", 100.0 * r.padding_ratio);
        }
        if let (Some(f), Some(w)) = (r.fifo_items_per_s, r.raw_items_per_s) {
            print!(" {f:>14.1} {w:>14.1} {:>8.1}%", 100.0 * f / w.max(1e-9));
        }
        println!();
    }
    if let Some(best) = rows.iter().max_by(|a, b| a.items_per_s.total_cmp(&b.items_per_s)) {
        match base {
            Some(b) => println!(
                "best batch size on this machine: {} ({:.1} items/s, x{:.2} over batch size 1)",
                best.batch_size,
                best.items_per_s,
                best.items_per_s / b.max(1e-9)
            ),
            None => println!(
                "best batch size on this machine: {} ({:.1} items/s)",
                best.batch_size, best.items_per_s
            ),
        }
    }
}

/// Reads and pre-processes up to a few hundred sample items (also used by
/// `sluice tune`, so both measure the same data).
pub(crate) async fn prepare_samples(
    spec: &ModelSpec,
    backend: &dyn Backend,
    input: Option<&str>,
    max_b: usize,
) -> anyhow::Result<Vec<Prepared>> {
    let kind = Kind::of(&spec.processing);
    // A multiple of every power-of-two batch size keeps FIFO batches aligned.
    let want = max_b.max(1) * (512 / max_b.max(1)).max(1);
    let default = match kind {
        Kind::Text => Some("data/texts/sample.jsonl"),
        Kind::Image => Some("data/images"),
        Kind::Tensor => None,
    };
    let raw: Vec<Input> = match input.or(default) {
        Some(path) => {
            let source = inputs::open(path, kind, "id", None, &[])
                .with_context(|| format!("bench inputs ({path}); pass --input"))?;
            let mut rx = inputs::stream(source);
            let mut v = Vec::new();
            while let Some(item) = rx.recv().await {
                let item = item.with_context(|| format!("reading bench inputs ({path})"))?;
                if let Ok(i) = item.input {
                    v.push(i);
                }
                if v.len() >= want {
                    break;
                }
            }
            v
        }
        None => random_tensors(backend.signature(), want)?,
    };
    // Pre-process with the model's chain directly: no need to start a model for it.
    let processor = sluice_processing::build(spec, backend.signature())?;
    let prepared = tokio::task::spawn_blocking(move || {
        raw.into_iter()
            .filter_map(|i| processor.preprocess(i).ok())
            .collect::<Vec<Prepared>>()
    })
    .await?;
    anyhow::ensure!(!prepared.is_empty(), "no usable sample inputs");
    // Cycle to `want` items so every batch size sees the same data.
    let n = prepared.len();
    let mut out = prepared.clone();
    if n < want {
        // Images are large: cap the repetition at the largest batch.
        let target = if kind == Kind::Image { max_b.max(n) } else { want };
        out.extend((n..target).map(|k| prepared[k % n].clone()));
    } else {
        out.truncate(want);
    }
    Ok(out)
}

fn random_tensors(signature: &sluice_core::ModelSignature, n: usize) -> anyhow::Result<Vec<Input>> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut named = sluice_core::NamedTensors::new();
        for info in &signature.inputs {
            let shape: Vec<usize> = info.shape.iter().skip(1).map(|d| d.unwrap_or(16)).collect();
            let count: usize = shape.iter().product();
            let data = match info.dtype {
                Some(DType::F32) | None => TensorData::F32((0..count).map(|_| next()).collect()),
                Some(DType::I64) => TensorData::I64((0..count).map(|_| (next().abs() * 100.0) as i64).collect()),
                Some(other) => anyhow::bail!("cannot make random {other} inputs; pass --input"),
            };
            named.insert(info.name.clone(), Tensor::new(shape, data)?);
        }
        out.push(Input::Tensors(named));
    }
    Ok(out)
}

/// What [`through_engine`] measured for one configuration.
pub(crate) struct Measured {
    /// Items completed per second of the measurement.
    pub(crate) items_per_s: f64,
    /// Mean items per executed batch.
    pub(crate) mean_batch: f64,
    /// Batch latency (runtime call) p50, ms.
    pub(crate) p50_ms: f64,
    /// Batch latency p99, ms.
    pub(crate) p99_ms: f64,
    /// Padding share (text).
    pub(crate) padding_ratio: f64,
    /// Per-item latency (submission to the end of its batch's call) p50, ms.
    pub(crate) item_p50_ms: f64,
    /// Per-item latency p99, ms.
    pub(crate) item_p99_ms: f64,
    /// Items that finished with an error during the measurement.
    pub(crate) failed_items: u64,
    /// The first of those errors.
    pub(crate) first_error: Option<String>,
}

/// Starts a model on `backend` with `spec`'s settings, `b` as its largest
/// batch and `group` as its length grouping, feeds it `samples` for `dur`
/// after a warm-up ([`feed`]), and stops it.
pub(crate) async fn through_engine(
    spec: &ModelSpec,
    backend: Arc<dyn Backend>,
    samples: &[Prepared],
    b: usize,
    dur: Duration,
    group: bool,
) -> anyhow::Result<Measured> {
    let mut s = spec.clone();
    s.max_batch_size = b;
    s.group_by_length = group;
    let model = Model::start(s.clone(), backend)?;
    let run = feed(&model, samples, &s, dur).await;
    model.close();
    model.join().await;
    let run = run?;
    let (before, after) = (run.before, run.after);
    let batches = after.batches.saturating_sub(before.batches);
    let items = after.batched_items.saturating_sub(before.batched_items);
    let tokens = after.tokens.saturating_sub(before.tokens);
    let padding = after.padding.saturating_sub(before.padding);
    let mut lat = run.latencies;
    let mut item_lat = run.item_latencies;
    let pct = |v: &mut [f64], p: f64| percentile(v, p);
    Ok(Measured {
        items_per_s: run.items_per_s,
        mean_batch: if batches == 0 {
            0.0
        } else {
            items as f64 / batches as f64
        },
        p50_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
        padding_ratio: if tokens + padding == 0 {
            0.0
        } else {
            padding as f64 / (tokens + padding) as f64
        },
        item_p50_ms: pct(&mut item_lat, 0.5),
        item_p99_ms: pct(&mut item_lat, 0.99),
        failed_items: after.items_failed.saturating_sub(before.items_failed),
        first_error: run.first_error,
    })
}

/// What one continuous feeding run measured.
struct FeedRun {
    items_per_s: f64,
    latencies: Vec<f64>,
    /// Per-item latency (queue + run), ms, one per measured item.
    item_latencies: Vec<f64>,
    first_error: Option<String>,
    before: sluice_engine::StatsSnapshot,
    after: sluice_engine::StatsSnapshot,
}

/// Feeds items (cycling `samples`) continuously, keeping the model's batch
/// window plus two batches per instance in flight (bounded memory, and the
/// batcher always has a full window to choose from). The clock starts once a
/// few batches have completed (warm-up, queues primed) and stops `dur` later;
/// items still queued then are canceled instead of drained.
async fn feed(model: &Model, samples: &[Prepared], spec: &ModelSpec, dur: Duration) -> anyhow::Result<FeedRun> {
    let b = spec.max_batch_size;
    // Length grouping chooses among the whole batch window; fixed-size inputs need only a batch ready.
    let choice = if spec.group_by_length {
        spec.batch_window.unwrap_or(16 * b).max(b)
    } else {
        b
    };
    let window = choice + 2 * b * spec.instances;
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<Completion>(4096);
    let cancel = CancelFlag::new();
    let warm = (WARM_BATCHES * b * spec.instances).max(8) as u64;
    let counter = {
        let permits = permits.clone();
        let stop = stop.clone();
        let model = model.clone();
        tokio::spawn(async move {
            let mut seen = 0u64;
            let mut measured = 0u64;
            let mut t0: Option<(Instant, sluice_engine::StatsSnapshot)> = None;
            let mut end: Option<(Instant, sluice_engine::StatsSnapshot)> = None;
            let mut lat = Vec::new();
            let mut item_lat = Vec::new();
            let mut first_error: Option<String> = None;
            let mut last_batch = (Duration::ZERO, 0usize);
            while let Some(c) = rx.recv().await {
                permits.add_permits(1);
                let canceled = c
                    .result
                    .as_ref()
                    .is_err_and(|e| e.kind == sluice_core::ItemErrorKind::Canceled);
                if canceled || end.is_some() {
                    continue;
                }
                if let (Err(e), None) = (&c.result, &first_error) {
                    first_error = Some(e.message.clone());
                }
                seen += 1;
                let now = Instant::now();
                let Some((start, _)) = &t0 else {
                    if seen >= warm {
                        t0 = Some((now, model.stats()));
                    }
                    continue;
                };
                measured += 1;
                item_lat.push((c.queue_time + c.run_time).as_secs_f64() * 1e3);
                // One latency sample per batch: consecutive items of a batch share run_time.
                if (c.run_time, c.batch_size) != last_batch {
                    lat.push(c.run_time.as_secs_f64() * 1e3);
                    last_batch = (c.run_time, c.batch_size);
                }
                if now.duration_since(*start) >= dur {
                    end = Some((now, model.stats()));
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            (measured, t0, end, lat, item_lat, first_error)
        })
    };
    let opts = SubmitOptions {
        cancel: Some(cancel.clone()),
    };
    let mut k = 0usize;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        permits.acquire().await?.forget();
        let item = samples[k % samples.len()].clone();
        model
            .submit_prepared_with(k.to_string(), item, Reply::Stream(tx.clone()), opts.clone())
            .await?;
        k += 1;
    }
    cancel.cancel();
    drop(tx);
    let (measured, t0, end, lat, item_lat, first_error) = counter.await?;
    let (Some((start, before)), Some((stop_at, after))) = (t0, end) else {
        anyhow::bail!("the model stopped before the measurement finished");
    };
    Ok(FeedRun {
        items_per_s: measured as f64 / stop_at.duration_since(start).as_secs_f64().max(1e-9),
        latencies: lat,
        item_latencies: item_lat,
        first_error,
        before,
        after,
    })
}

/// The `p` quantile of `v` (sorted in place): the nearest rank; 0 when empty.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0).max(0.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Raw ONNX Runtime: the same first-come-first-served batches, stacked and
/// run in a loop on one session with the model's session options.
async fn raw_onnx(spec: &ModelSpec, samples: &[Prepared], b: usize, dur: Duration) -> anyhow::Result<f64> {
    let spec = spec.clone();
    let samples: Vec<Prepared> = samples.to_vec();
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let path = spec.resolve(spec.model_file.as_ref().context("model_file")?);
        let (session, _) = sluice_onnx::open_session(&path, sluice_onnx::SessionConfig::of(&spec)?)?;
        let mut inst = sluice_onnx::OnnxInstance::new(session);
        let names: Vec<String> = samples[0].tensors.keys().cloned().collect();
        let batches: Vec<Vec<(String, Tensor)>> = samples
            .chunks(b)
            .filter(|c| c.len() == b || samples.len() < b)
            .map(|chunk| {
                names
                    .iter()
                    .map(|n| {
                        let items: Vec<&Tensor> = chunk.iter().filter_map(|p| p.tensors.get(n)).collect();
                        Tensor::stack(n, &items, 0.0).map(|(t, _)| (n.clone(), t))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        anyhow::ensure!(!batches.is_empty(), "no batches");
        // Warm up.
        for batch in batches.iter().take(WARM_BATCHES) {
            inst.run_stacked(batch.clone())
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let start = Instant::now();
        let mut items = 0usize;
        // Continue after the warm-up batches, as the engine run does (its
        // clock starts after two batches), so both time the same batches:
        // text batches differ a lot in cost.
        let mut i = WARM_BATCHES;
        while start.elapsed() < dur {
            let batch = &batches[i % batches.len()];
            let n = batch.first().and_then(|(_, t)| t.shape.first().copied()).unwrap_or(0);
            inst.run_stacked(batch.clone())
                .map_err(|e| anyhow::anyhow!(e.message))?;
            items += n;
            i += 1;
        }
        Ok(items as f64 / start.elapsed().as_secs_f64())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_latency_quantiles_are_within_one_percent() {
        assert!(percentile(&mut [], 0.5).abs() < f64::EPSILON, "empty");
        let mut v: Vec<f64> = (1..=10_000u64).rev().map(|us| us as f64 / 1e3).collect();
        for (p, want_ms) in [(0.5, 5.0), (0.99, 9.9)] {
            let got = percentile(&mut v, p);
            assert!((got / want_ms - 1.0).abs() <= 0.011, "p{p}: {got} ms, want {want_ms}");
        }
        v.push(100_000.0 * 1e3);
        assert!(percentile(&mut v, 1.0) > 1e6, "the longest is the last");
    }
}
