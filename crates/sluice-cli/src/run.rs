//! `sluice run`: one model over a file or folder, results streamed to JSONL.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_core::{ItemError, ItemErrorKind};
use sluice_engine::{CancelFlag, Completion, Model, Reply, SubmitOptions};
use tokio::sync::mpsc;

use crate::inputs::{self, Kind};
use crate::Overrides;

/// Arguments of `sluice run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model folder (holding model.toml) or name under ./models.
    #[arg(long, short)]
    model: String,
    /// Input: JSONL / CSV / plain-text lines, or a folder or glob of images.
    #[arg(long, short)]
    input: String,
    /// Output JSONL file, one line per input id ("-" for stdout).
    #[arg(long, short, default_value = "-")]
    output: String,
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

/// Output line for one item: `{"id", "output"}` or `{"id", "error": {"code", "message"}}`.
#[derive(serde::Serialize)]
pub struct ResultLine<'a> {
    id: &'a sluice_core::ItemId,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a sluice_core::Output>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a ItemError>,
}

impl<'a> ResultLine<'a> {
    /// The line for a completion.
    pub fn of(c: &'a Completion) -> ResultLine<'a> {
        ResultLine {
            id: &c.id,
            output: c.result.as_ref().ok(),
            error: c.result.as_ref().err(),
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut spec = crate::load_spec(&args.model)?;
    args.overrides.apply(&mut spec)?;
    let kind = Kind::of(&spec.processing);
    let source = inputs::open(&args.input, kind, &args.id_field, args.field.as_deref())?;
    let total = source.count()?;
    let name = spec.name.clone();
    let model = tokio::task::spawn_blocking(move || Model::load(spec)).await??;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_message(name.clone());

    let (tx, rx) = mpsc::channel::<Completion>(1024);
    let out_path = args.output.clone();
    let writer = {
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || write_results(rx, &out_path, &bar))
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
    let written = finish.await??;
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

fn write_results(mut rx: mpsc::Receiver<Completion>, path: &str, bar: &ProgressBar) -> anyhow::Result<Written> {
    let sink: Box<dyn Write> = if path == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let p = PathBuf::from(path);
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        Box::new(std::fs::File::create(&p).with_context(|| format!("cannot create {path}"))?)
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, sink);
    let mut w = Written {
        total: 0,
        ok: 0,
        failed: 0,
        canceled: 0,
    };
    while let Some(c) = rx.blocking_recv() {
        if c.result.as_ref().is_err_and(|e| e.kind == ItemErrorKind::Canceled) {
            w.canceled += 1;
            continue;
        }
        serde_json::to_writer(&mut out, &ResultLine::of(&c))?;
        out.write_all(b"\n")?;
        w.total += 1;
        if c.result.is_ok() {
            w.ok += 1;
        } else {
            w.failed += 1;
        }
        bar.inc(1);
    }
    out.flush()?;
    Ok(w)
}
