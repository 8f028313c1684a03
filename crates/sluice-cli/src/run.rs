//! `sluice run`: one model over a file or folder, results streamed to a sink (sluice-io).

use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_core::{ItemError, ItemErrorKind};
use sluice_engine::{CancelFlag, Completion, Model, Reply, SubmitOptions};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sluice_io::summary::Summaries;
use sluice_io::{open_sink, Ending, Format, Kept, Outcome, PartsOptions, ResultRow, Sink, SinkInfo};
use tokio::sync::mpsc;

use crate::inputs::{self, Kind};
use crate::Overrides;

/// Arguments of `sluice run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model folder (holding model.toml) or name under ./models.
    #[arg(long, short)]
    model: String,
    /// Input: JSONL / CSV / plain-text lines, a folder or glob of images, or
    /// video files (a file, folder or glob of .mp4, .avi, .mkv, ...: frames
    /// sampled by ffmpeg, see --fps).
    #[arg(long, short)]
    input: String,
    #[command(flatten)]
    video: inputs::VideoArgs,
    /// Video: write per-video summaries here (JSON): duration, frames
    /// processed and failed, and per label the detections per minute and
    /// the most seen in one frame.
    #[arg(long)]
    summary: Option<std::path::PathBuf>,
    /// Where results go: a JSONL or Parquet file with one row per input id,
    /// "-" for stdout, or a folder (a path ending in "/", or an existing
    /// folder) of rolling parts with failed inputs in errors-*.jsonl and
    /// _manifest.json. Files and folders may be object-store URIs
    /// (s3://bucket/out/, gs://, az://, file://).
    #[arg(long, short, default_value = "-")]
    output: String,
    /// Format of the results: jsonl or parquet (default: the output file's
    /// extension, else jsonl).
    #[arg(long, value_parser = clap::value_parser!(Format))]
    output_format: Option<Format>,
    /// Input columns (JSONL fields, CSV or Parquet columns) copied into each
    /// result row beside the id, comma-separated: --keep-columns lang,date.
    #[arg(long, value_delimiter = ',')]
    keep_columns: Vec<String>,
    /// In a folder output, start a new part once one holds this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_part_bytes: u64,
    /// Field holding the input in JSONL/CSV records (default: "text", or "input" for tensor models).
    #[arg(long)]
    field: Option<String>,
    /// Field holding the id in JSONL/CSV records (default: the line or row number).
    #[arg(long, default_value = "id")]
    id_field: String,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// Kept columns of the items in flight, by key, until their results are written.
type KeptInFlight = Arc<Mutex<HashMap<String, VecDeque<Kept>>>>;

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Checked before the model loads (and again by the source layer when it opens).
    sluice_io::Fields {
        keep: args.keep_columns.clone(),
        ..sluice_io::Fields::default()
    }
    .check_keep()?;
    let mut spec = crate::load_spec(&args.model)?;
    args.overrides.apply(&mut spec)?;
    let kind = Kind::of(&spec.processing);
    let describe = spec.processing.describe();
    let video = args.video.options(describe.takes.frame_fit())?;
    let source = inputs::open_video(
        &args.input,
        kind,
        &args.id_field,
        args.field.as_deref(),
        &args.keep_columns,
        Some(video),
    )?;
    let videos = match &source {
        sluice_io::Source::Video(v) => Some((v.videos(), v.infos(), v.ffmpeg().display().to_string())),
        _ => None,
    };
    if videos.is_none() && (args.video.sampling_given() || args.summary.is_some()) {
        anyhow::bail!(
            "--fps, --every, --keyframes and --summary apply to video inputs ({}); {} has none",
            sluice_io::video::VIDEO_EXTENSIONS.join(", "),
            args.input
        );
    }
    if videos.is_some() {
        // A decoded frame is large: let the model's queues hold a few
        // batches of them, not a thousand (decoding waits instead).
        spec.queue_capacity = spec.queue_capacity.min(4 * spec.max_batch_size).max(1);
        // Frames have one size: a window of two batches is all the batcher
        // needs to choose from (length grouping has nothing to group).
        let window = spec.batch_window.unwrap_or(16 * spec.max_batch_size);
        spec.batch_window = Some(window.min(2 * spec.max_batch_size).max(spec.max_batch_size));
    }
    let summaries = videos.as_ref().map(|_| Summaries::new(describe.gives.min_score()));
    let total = source.count()?;
    let name = spec.name.clone();
    // The output is opened before the model loads, so a bad one fails at once.
    let mut sink = {
        let (output, format, max_part_bytes) = (args.output.clone(), args.output_format, args.max_part_bytes);
        tokio::task::spawn_blocking(move || open_sink(&output, format, PartsOptions { max_part_bytes })).await??
    };
    sink.begin(&SinkInfo {
        model: name.clone(),
        version: spec.version.clone(),
    })?;
    let model = tokio::task::spawn_blocking(move || Model::load(spec)).await??;

    // The total is known for local files; an object store is not read twice.
    let bar = match (args.quiet, total) {
        (true, _) => ProgressBar::hidden(),
        (false, Some(n)) => ProgressBar::new(n),
        (false, None) => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{spinner} {msg} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}"
    } else {
        "{spinner} {msg} {pos} items {per_sec}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_message(name.clone());

    let (tx, rx) = mpsc::channel::<Completion>(1024);
    let kept: KeptInFlight = Arc::default();
    let writer = {
        let bar = bar.clone();
        let kept = kept.clone();
        tokio::task::spawn_blocking(move || write_results(rx, sink, &kept, &bar, summaries))
    };

    let started = Instant::now();
    let mut items = inputs::stream(source);
    let mut interrupted = false;
    let mut read_error = None;
    let cancel = CancelFlag::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            item = items.recv() => item,
            _ = &mut ctrl_c => { interrupted = true; None }
        };
        let item = match next {
            None => break,
            Some(Ok(item)) => item,
            Some(Err(e)) => {
                // The source cannot be read further: finish what was read, then fail.
                read_error = Some(e);
                break;
            }
        };
        if let Some(k) = item.keep {
            let mut map = kept.lock().map_err(|_| anyhow::anyhow!("kept columns lock poisoned"))?;
            map.entry(item.key.clone()).or_default().push_back(k);
        }
        match item.input {
            Ok(input) => {
                let opts = SubmitOptions {
                    cancel: Some(cancel.clone()),
                };
                model
                    .submit_with(item.key, input, Reply::Stream(tx.clone()), opts)
                    .await?;
            }
            Err(message) => {
                let c = Completion {
                    id: item.key.into(),
                    result: Err(ItemError::new(ItemErrorKind::InvalidInput, message)),
                    queue_time: std::time::Duration::ZERO,
                    run_time: std::time::Duration::ZERO,
                    batch_size: 0,
                };
                tx.send(c).await.context("result writer stopped")?;
            }
        }
    }
    drop(items);
    if interrupted {
        bar.println("interrupted: stopping; items not yet run are dropped, results so far are kept");
        cancel.cancel();
    }
    model.close();
    drop(tx);
    let finish = async {
        model.join().await;
        writer.await
    };
    let (mut sink, written, summaries) = finish.await??;
    let ending = Ending {
        complete: !interrupted && read_error.is_none(),
    };
    // Committing may upload to an object store: off the async threads.
    tokio::task::spawn_blocking(move || sink.finish(ending)).await??;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let s = model.stats();
    // Padding only means something where items differ in length (text).
    let padding = if kind == Kind::Text {
        format!(
            "; padding {:.1}% (length grouping saved {} tokens)",
            100.0 * s.padding_ratio(),
            s.padding_saved()
        )
    } else {
        String::new()
    };
    eprintln!(
        "{name}: {} items ({} ok, {} failed) in {elapsed:.2}s = {:.1} items/s; mean batch {:.1} of max {}{padding}{}",
        written.total,
        written.ok,
        written.failed,
        written.total as f64 / elapsed.max(1e-9),
        s.mean_batch_size(),
        model.spec().max_batch_size,
        if interrupted {
            format!(" [interrupted: {} items not run]", written.canceled)
        } else {
            String::new()
        }
    );
    if let Some((count, infos, ffmpeg)) = &videos {
        let decoded = infos
            .lock()
            .map(|i| i.values().filter(|v| v.is_ok()).count())
            .unwrap_or(0);
        eprintln!("{name}: {decoded} of {count} videos decoded by {ffmpeg}");
        if let (Some(path), Some(mut summary)) = (&args.summary, summaries) {
            if let Ok(infos) = infos.lock() {
                for (video, info) in infos.iter() {
                    summary.video(video, info.as_ref().ok().and_then(|i| i.duration_s));
                }
            }
            let mut json = summary.to_json();
            if let Some(o) = json.as_object_mut() {
                o.insert("model".into(), name.clone().into());
            }
            write_summary(path, &json)?;
            eprintln!("{name}: per-video summary in {}", path.display());
        }
    }
    if s.out_of_memory_batches > 0 {
        eprintln!(
            "{name}: {} batches ran out of memory and were split and retried; the batch size backed off {} times and ends at {} of {} (set max_batch_size or max_batch_tokens lower, or run sluice tune: docs/tuning.md)",
            s.out_of_memory_batches,
            s.batch_size_backoffs,
            s.effective_batch_size,
            model.spec().max_batch_size
        );
    }
    if let Some(e) = read_error {
        return Err(
            anyhow::Error::new(e).context(format!("reading {} stopped; results so far are written", args.input))
        );
    }
    if interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// Counts of what was written.
pub struct Written {
    total: u64,
    ok: u64,
    failed: u64,
    canceled: u64,
}

/// Writes each completion to the sink as it arrives, adding video results
/// to `summaries`; hands the sink and the summaries back for
/// [`Sink::finish`] once every completion is in.
fn write_results(
    mut rx: mpsc::Receiver<Completion>,
    mut sink: Box<dyn Sink>,
    kept: &KeptInFlight,
    bar: &ProgressBar,
    mut summaries: Option<Summaries>,
) -> anyhow::Result<(Box<dyn Sink>, Written, Option<Summaries>)> {
    let mut w = Written {
        total: 0,
        ok: 0,
        failed: 0,
        canceled: 0,
    };
    let mut json = Vec::with_capacity(4096);
    while let Some(c) = rx.blocking_recv() {
        let key = c.id.to_string();
        let row_kept = {
            let mut map = kept.lock().map_err(|_| anyhow::anyhow!("kept columns lock poisoned"))?;
            match map.get_mut(&key) {
                Some(q) => {
                    let k = q.pop_front();
                    if q.is_empty() {
                        map.remove(&key);
                    }
                    k
                }
                None => None,
            }
        };
        if let (Some(summaries), Some(k)) = (summaries.as_mut(), &row_kept) {
            add_to_summary(summaries, &key, k, &c.result);
        }
        let outcome = match &c.result {
            Err(e) if e.kind == ItemErrorKind::Canceled => {
                w.canceled += 1;
                continue;
            }
            Err(e) => {
                w.failed += 1;
                Outcome::Failed {
                    code: e.kind.code(),
                    message: &e.message,
                }
            }
            Ok(output) => {
                w.ok += 1;
                json.clear();
                serde_json::to_writer(&mut json, output)?;
                Outcome::Ok(std::str::from_utf8(&json)?)
            }
        };
        sink.write(&ResultRow {
            key: &key,
            outcome,
            kept: row_kept.as_ref(),
        })?;
        w.total += 1;
        bar.inc(1);
    }
    Ok((sink, w, summaries))
}

/// Adds one video result to the summaries: a frame (ok or failed), or the
/// failed record of a whole video (keyed by the video itself).
fn add_to_summary(s: &mut Summaries, key: &str, kept: &Kept, result: &sluice_core::ItemResult) {
    let Some(video) = kept.get("video").and_then(|v| v.as_str()) else {
        return;
    };
    let t = kept.get("t").and_then(serde_json::Value::as_f64);
    match (result, t) {
        (Err(e), _) if e.kind == ItemErrorKind::Canceled => {}
        (Err(e), _) if key == video => s.video_failed(video, &e.message),
        (Err(_), Some(t)) => s.frame_failed(video, t),
        (Ok(output), Some(t)) => s.frame(video, t, output),
        (_, None) => {}
    }
}

/// Writes `json` to `path` whole (a temporary file renamed over it).
fn write_summary(path: &std::path::Path, json: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
