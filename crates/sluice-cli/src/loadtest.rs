//! `sluice loadtest`: many concurrent real-time clients against a running
//! server, optionally while a bulk job runs on the same model.
//!
//! Each client owns one keep-alive connection and sends single-row KServe v2
//! requests (binary tensor extension, as `tritonclient` does) back to back.
//! The command reports items/s, latency percentiles and the mean batch size
//! the server formed (from `/v1/stats`), and, with `--raw`, raw ONNX Runtime
//! at the model's max batch size measured in the same run, so the ratio is
//! between two figures taken on the same machine minutes apart. With
//! `--bulk-items N` it first submits an N-input job to the same model and
//! measures real-time latency while that job runs, against the bound
//! `max delay + one batch execution + 20 ms`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde_json::{json, Value};
use sluice_core::Tensor;

/// Arguments of `sluice loadtest`.
#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Server base URL.
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Model to load (a tensor model with one FP32 input).
    #[arg(long, short, default_value = "mlp")]
    model: String,
    /// Concurrent clients, one connection each; 0 with --raw measures only raw ONNX Runtime.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Also measure raw ONNX Runtime on this model folder at its max batch size.
    #[arg(long)]
    raw: Option<PathBuf>,
    /// Submit a bulk job of this many inputs to the same model first.
    #[arg(long, default_value_t = 0)]
    bulk_items: usize,
}

/// xorshift values in [-0.5, 0.5): reproducible inputs without a dependency.
fn random_floats(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            #[allow(clippy::cast_precision_loss)]
            let v = (s >> 40) as f32 / (1u64 << 24) as f32;
            v - 0.5
        })
        .collect()
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The model's single input: name and per-row element count.
async fn input_of(http: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<(String, usize)> {
    let meta: Value = http
        .get(format!("{base}/v2/models/{model}"))
        .send()
        .await?
        .error_for_status()
        .with_context(|| format!("model '{model}' is not served at {base}"))?
        .json()
        .await?;
    let input = meta["inputs"]
        .as_array()
        .and_then(|a| a.first())
        .context("the model has no inputs")?;
    anyhow::ensure!(
        input["datatype"] == "FP32",
        "loadtest needs an FP32 input, got {}",
        input["datatype"]
    );
    let name = input["name"].as_str().context("input name")?.to_string();
    let per_row: i64 = input["shape"]
        .as_array()
        .context("input shape")?
        .iter()
        .skip(1)
        .map(|d| d.as_i64().unwrap_or(1).max(1))
        .product();
    Ok((name, usize::try_from(per_row)?))
}

/// One model's counters from `/v1/stats`.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    batches: f64,
    items: f64,
    run_seconds: f64,
}

async fn counters(http: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<Counters> {
    let s: Value = http.get(format!("{base}/v1/stats")).send().await?.json().await?;
    let m = s["models"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == model))
        .context("model missing from /v1/stats")?;
    Ok(Counters {
        batches: m["batches"].as_f64().unwrap_or(0.0),
        items: m["batched_items"].as_f64().unwrap_or(0.0),
        run_seconds: m["run_seconds"].as_f64().unwrap_or(0.0),
    })
}

/// Submits an open job of `n` inputs in chunks and closes it; returns its id.
async fn submit_bulk(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    per_row: usize,
    n: usize,
) -> anyhow::Result<String> {
    let job: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"model": model, "open": true}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = job["id"].as_str().context("job id")?.to_string();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut start = 0;
    while start < n {
        let end = (start + 2_000).min(n);
        let mut body = String::new();
        for i in start..end {
            let t = b64.encode(le_bytes(&random_floats(i as u64 + 1_000_000, per_row)));
            body.push_str(&json!({"key": format!("b{i}"), "tensor": {"shape": [per_row], "b64": t}}).to_string());
            body.push('\n');
        }
        http.post(format!("{base}/v1/jobs/{id}/inputs"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await?
            .error_for_status()?;
        start = end;
    }
    http.post(format!("{base}/v1/jobs/{id}/close"))
        .send()
        .await?
        .error_for_status()?;
    Ok(id)
}

async fn job_done(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<(u64, String)> {
    let job: Value = http.get(format!("{base}/v1/jobs/{id}")).send().await?.json().await?;
    let done = job["counts"]["completed"].as_u64().unwrap_or(0) + job["counts"]["failed"].as_u64().unwrap_or(0);
    Ok((done, job["status"].as_str().unwrap_or("?").to_string()))
}

/// Raw ONNX Runtime at the model's max batch size, items/s.
async fn raw_baseline(dir: PathBuf, seconds: u64) -> anyhow::Result<(f64, usize)> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, usize)> {
        let spec = sluice_core::ModelSpec::load(&dir)?;
        let path = spec.resolve(spec.model_file.as_ref().context("model_file")?);
        let (session, _) = sluice_onnx::open_session(&path, sluice_onnx::SessionConfig::of(&spec)?)?;
        let sig = sluice_onnx::signature_of(&session);
        let info = sig.inputs.first().context("the model has no inputs")?;
        let name = info.name.clone();
        let per_row: usize = info.shape.iter().skip(1).map(|d| d.unwrap_or(1)).product();
        let mut inst = sluice_onnx::OnnxInstance::new(session);
        let b = spec.max_batch_size;
        let batch = Tensor::new(
            vec![b, per_row],
            sluice_core::TensorData::F32(random_floats(7, b * per_row)),
        )?;
        for _ in 0..3 {
            inst.run_stacked(vec![(name.clone(), batch.clone())])
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let start = Instant::now();
        let mut items = 0usize;
        while start.elapsed() < Duration::from_secs(seconds) {
            inst.run_stacked(vec![(name.clone(), batch.clone())])
                .map_err(|e| anyhow::anyhow!(e.message))?;
            items += b;
        }
        Ok((items as f64 / start.elapsed().as_secs_f64(), b))
    })
    .await?
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the load test and prints its figures.
pub async fn loadtest(args: LoadtestArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        let dir = args.raw.context("--clients 0 needs --raw MODEL_DIR")?;
        let (rate, b) = raw_baseline(dir, args.seconds).await?;
        println!("raw ONNX Runtime {rate:.1} items/s at batch {b}");
        return Ok(());
    }
    let base = args.server.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();
    let (input, per_row) = input_of(&http, &base, &args.model).await?;
    let meta: Value = http
        .get(format!("{base}/v1/models/{}", args.model))
        .send()
        .await?
        .json()
        .await?;
    let max_delay_ms = meta["max_batch_delay_ms"].as_f64().unwrap_or(f64::NAN);

    let raw = match &args.raw {
        Some(dir) => {
            println!("raw ONNX Runtime baseline ({} s)...", args.seconds);
            Some(raw_baseline(dir.clone(), args.seconds).await?)
        }
        None => None,
    };

    let job = if args.bulk_items > 0 {
        println!("submitting a bulk job of {} inputs...", args.bulk_items);
        Some(submit_bulk(&http, &base, &args.model, per_row, args.bulk_items).await?)
    } else {
        None
    };

    let head = json!({
        "inputs": [{"name": input, "shape": [1, per_row], "datatype": "FP32",
                    "parameters": {"binary_data_size": per_row * 4}}],
        "outputs": [],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let url = format!("{base}/v2/models/{}/infer", args.model);
    let warm_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let mut body = head.clone().into_bytes();
        body.extend(le_bytes(&random_floats(c as u64, per_row)));
        let (url, head_len) = (url.clone(), head.len());
        tasks.push(tokio::spawn(async move {
            // One connection per client.
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let resp = client
                    .post(&url)
                    .header("inference-header-content-length", head_len)
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match resp {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if t0 >= warm_end {
                    if ok {
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    tokio::time::sleep_until(warm_end.into()).await;
    let before = counters(&http, &base, &args.model).await?;
    let bulk_before = match &job {
        Some(id) => Some(job_done(&http, &base, id).await?),
        None => None,
    };
    let t_start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors += e;
    }
    let elapsed = t_start.elapsed().as_secs_f64();
    let after = counters(&http, &base, &args.model).await?;
    lat.sort_by(f64::total_cmp);
    let rate = lat.len() as f64 / elapsed;
    let batches = after.batches - before.batches;
    let mean_batch = (after.items - before.items) / batches.max(1.0);
    let exec_ms = (after.run_seconds - before.run_seconds) * 1e3 / batches.max(1.0);
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!();
    println!(
        "model {} on {base}, {} clients, {} s measured",
        args.model, args.clients, args.seconds
    );
    println!(
        "  real-time items/s   {rate:10.1}   ({} requests, {errors} errors)",
        lat.len()
    );
    println!("  latency p50 / p99   {p50:8.2} / {p99:.2} ms");
    println!("  mean batch size     {mean_batch:10.2}   (mean batch execution {exec_ms:.2} ms)");
    if let Some((raw_rate, b)) = raw {
        println!("  raw ONNX Runtime    {raw_rate:10.1}   items/s at batch {b}");
        println!("  sluice / raw        {:9.1}%", 100.0 * rate / raw_rate);
    }
    if let (Some(id), Some((done0, _))) = (&job, bulk_before) {
        let (done1, state) = job_done(&http, &base, id).await?;
        let bulk_rate = (done1.saturating_sub(done0)) as f64 / elapsed;
        let bound = max_delay_ms + exec_ms + 20.0;
        println!("  bulk job            {bulk_rate:10.1}   items/s during the window (job {state} at the end)");
        println!(
            "  real-time p99 {p99:.2} ms vs bound {bound:.2} ms (max delay {max_delay_ms} + batch {exec_ms:.2} + 20): {}",
            if p99 <= bound { "within" } else { "OVER" }
        );
        if state == "completed" {
            println!("  note: the bulk job finished inside the window; use more --bulk-items");
        }
        let _ = http.delete(format!("{base}/v1/jobs/{id}")).send().await;
    }
    Ok(())
}
