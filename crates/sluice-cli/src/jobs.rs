//! `sluice jobs ...`: a client of the jobs server.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_core::Input;

use crate::inputs::{self, Kind};

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub struct ServerArg {
    /// Server URL.
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
}

/// `sluice jobs ...`
#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Submit a file (JSONL / CSV / lines) or a folder of images as a job.
    Submit(SubmitArgs),
    /// Show a job's status and counts.
    Status {
        /// Job id.
        id: String,
    },
    /// Stream a job's results (NDJSON) to stdout or a file.
    Results {
        /// Job id.
        id: String,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Follow the job until it ends.
        #[arg(long)]
        wait: bool,
        /// Continue after this cursor.
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Filter by status.
        #[arg(long)]
        status: Option<String>,
        /// Filter by model.
        #[arg(long)]
        model: Option<String>,
        /// Filter by tag.
        #[arg(long)]
        tag: Option<String>,
        /// Most jobs shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// Arguments of `sluice jobs submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Model name on the server.
    #[arg(long, short)]
    model: String,
    /// Input file or image folder / glob.
    #[arg(long, short)]
    input: String,
    /// Payload kind: text, image or tensor (default: from the model's processing).
    #[arg(long)]
    kind: Option<String>,
    /// Field holding the input in JSONL/CSV records.
    #[arg(long)]
    field: Option<String>,
    /// Field holding the id.
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Scheduling priority 0..9.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Tags (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Job time limit in ms.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Inputs per upload request.
    #[arg(long, default_value_t = 5000)]
    chunk: usize,
    /// Wait for the job to finish, with a progress bar.
    #[arg(long)]
    wait: bool,
    /// With --wait: write the results here when done.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Have the server write the results, as they arrive, to this folder
    /// or object-store prefix (under one of its --output-root), as parts
    /// with a manifest (docs/outputs.md, "Jobs").
    #[arg(long)]
    write_to: Option<String>,
    /// The format of the parts --write-to writes: jsonl (default) or parquet.
    #[arg(long, requires = "write_to")]
    write_format: Option<String>,
}

async fn check(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("(no message)");
        bail!("server answered {status}: {msg}");
    }
    Ok(body)
}

pub async fn jobs(server: ServerArg, cmd: JobsCommand) -> anyhow::Result<()> {
    let base = server.server.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();
    match cmd {
        JobsCommand::Submit(args) => submit(&http, &base, args).await,
        JobsCommand::Status { id } => {
            let v = check(http.get(format!("{base}/v1/jobs/{id}")).send().await?).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        JobsCommand::Results {
            id,
            output,
            wait,
            cursor,
        } => {
            let n = stream_results(&http, &base, &id, output.as_ref(), wait, cursor).await?;
            eprintln!("{n} results");
            Ok(())
        }
        JobsCommand::Cancel { id } => {
            let v = check(http.delete(format!("{base}/v1/jobs/{id}")).send().await?).await?;
            println!(
                "{} {}",
                v["id"].as_str().unwrap_or(&id),
                v["status"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        JobsCommand::List {
            status,
            model,
            tag,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(m) = model {
                q.push(("model", m));
            }
            if let Some(t) = tag {
                q.push(("tag", t));
            }
            let v = check(http.get(format!("{base}/v1/jobs")).query(&q).send().await?).await?;
            println!(
                "{:<34} {:<12} {:<14} {:>9} {:>9} {:>7}",
                "ID", "STATUS", "MODEL", "TOTAL", "DONE", "FAILED"
            );
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:<34} {:<12} {:<14} {:>9} {:>9} {:>7}",
                    j["id"].as_str().unwrap_or(""),
                    j["status"].as_str().unwrap_or(""),
                    j["model"].as_str().unwrap_or(""),
                    j["counts"]["total"],
                    j["counts"]["completed"],
                    j["counts"]["failed"]
                );
            }
            Ok(())
        }
    }
}

fn upload_line(id: &str, input: Input) -> anyhow::Result<serde_json::Value> {
    Ok(match input {
        Input::Text(t) => serde_json::json!({"key": id, "text": t}),
        Input::Bytes(b) => {
            serde_json::json!({"key": id, "base64": base64::engine::general_purpose::STANDARD.encode(b)})
        }
        Input::Json(j) => serde_json::json!({"key": id, "tensor": j}),
        Input::Tensors(t) => serde_json::json!({"key": id, "tensor": serde_json::to_value(t).unwrap_or_default()}),
        // Decoded frames come only from video sources, which `sluice run`
        // reads; a job's inputs travel as files, text or tensors.
        other @ Input::Frame(_) => bail!(
            "input {id} is a {}: video is read by `sluice run`, not uploaded to a job",
            other.kind()
        ),
    })
}

async fn submit(http: &reqwest::Client, base: &str, args: SubmitArgs) -> anyhow::Result<()> {
    let kind = match args.kind.as_deref() {
        Some("text") => Kind::Text,
        Some("image") => Kind::Image,
        Some("tensor") => Kind::Tensor,
        Some(other) => bail!("--kind must be text, image or tensor, not {other}"),
        None => {
            let m = check(http.get(format!("{base}/v1/models/{}", args.model)).send().await?).await?;
            match m["processing"]["type"].as_str() {
                Some("image") => Kind::Image,
                Some("tensor") => Kind::Tensor,
                _ => Kind::Text,
            }
        }
    };
    let source = inputs::open(&args.input, kind, &args.id_field, args.field.as_deref(), &[])?;
    let total = source.count()?;
    let job = check(
        http.post(format!("{base}/v1/jobs"))
            .json(&serde_json::json!({
                "model": args.model, "open": true, "priority": args.priority, "tags": args.tags,
                "timeout_ms": args.timeout_ms,
                "output": args.write_to.as_ref().map(|uri| serde_json::json!({"uri": uri, "format": args.write_format})),
            }))
            .send()
            .await?,
    )
    .await?;
    let id = job["id"].as_str().context("server returned no job id")?.to_string();
    match total {
        Some(n) => eprintln!("job {id}: uploading {n} inputs"),
        None => eprintln!("job {id}: uploading inputs from {}", args.input),
    }
    let mut rx = inputs::stream(source);
    let mut body = Vec::new();
    let mut in_body = 0usize;
    let mut skipped = 0u64;
    let chunk = args.chunk.max(1);
    loop {
        let item = rx.recv().await;
        let flush = item.is_none() || in_body >= chunk;
        if flush && in_body > 0 {
            check(
                http.post(format!("{base}/v1/jobs/{id}/inputs"))
                    .header("content-type", "application/x-ndjson")
                    .body(std::mem::take(&mut body))
                    .send()
                    .await?,
            )
            .await
            .with_context(|| format!("uploading inputs to job {id}"))?;
            in_body = 0;
        }
        let item = match item {
            None => break,
            Some(item) => item.with_context(|| format!("reading {}; job {id} stays open", args.input))?,
        };
        match item.input {
            Ok(input) => {
                let line = upload_line(&item.key, input)
                    .with_context(|| format!("submitting to job {id}, which stays open"))?;
                serde_json::to_writer(&mut body, &line)?;
                body.push(b'\n');
                in_body += 1;
            }
            Err(e) => {
                skipped += 1;
                eprintln!("skipping input {}: {e}", item.key);
            }
        }
    }
    check(http.post(format!("{base}/v1/jobs/{id}/close")).send().await?).await?;
    if skipped > 0 {
        eprintln!("{skipped} unreadable inputs were not submitted");
    }
    println!("{id}");
    if !args.wait {
        return Ok(());
    }
    // The job's own total, read with each poll (the source's count may be unknown).
    let bar = ProgressBar::new(total.unwrap_or(0).saturating_sub(skipped));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    let final_job = loop {
        let j = check(http.get(format!("{base}/v1/jobs/{id}")).send().await?).await?;
        let c = &j["counts"];
        if let Some(n) = c["total"].as_u64() {
            bar.set_length(n);
        }
        let finished = ["completed", "failed", "canceled", "timedout"]
            .iter()
            .map(|k| c[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        bar.set_position(finished);
        bar.set_message(j["status"].as_str().unwrap_or("").to_string());
        if matches!(
            j["status"].as_str(),
            Some("COMPLETED" | "CANCELED" | "TIMEDOUT" | "FAILED")
        ) {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    bar.finish_and_clear();
    let c = &final_job["counts"];
    eprintln!(
        "job {id} {}: {} completed, {} failed, {} canceled, {} timed out; {:.1} items/s",
        final_job["status"].as_str().unwrap_or("?"),
        c["completed"],
        c["failed"],
        c["canceled"],
        c["timedout"],
        final_job["items_per_s"].as_f64().unwrap_or(0.0)
    );
    if let Some(out) = args.output {
        let n = stream_results(http, base, &id, Some(&out), false, None).await?;
        eprintln!("{n} results written to {}", out.display());
    }
    if let Some(uri) = &args.write_to {
        // The server commits the last parts and the manifest just after the job ends.
        let output = loop {
            let j = check(http.get(format!("{base}/v1/jobs/{id}")).send().await?).await?;
            if j["output"]["state"] != "writing" {
                break j["output"].clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if output["state"] != "written" {
            bail!(
                "the server could not write the results to {uri}: {}; they stay readable with `sluice jobs results {id}`",
                output["error"].as_str().unwrap_or("(no reason given)")
            );
        }
        eprintln!("{} results written to {uri} (parts and _manifest.json)", output["rows"]);
    }
    Ok(())
}

async fn stream_results(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    output: Option<&PathBuf>,
    wait: bool,
    cursor: Option<i64>,
) -> anyhow::Result<u64> {
    let mut q: Vec<(&str, String)> = vec![("wait", wait.to_string())];
    if let Some(c) = cursor {
        q.push(("cursor", c.to_string()));
    }
    let resp = http
        .get(format!("{base}/v1/jobs/{id}/results"))
        .query(&q)
        .send()
        .await?;
    if !resp.status().is_success() {
        check(resp).await?;
        bail!("unexpected response");
    }
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut n = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(n)
}
