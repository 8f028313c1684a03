//! Benchmark (not a test): the MLP served by a Python OMI worker
//! (`models/mlp-omi`, onnxruntime inside the worker) through Sluice, against
//! the same worker's raw batch throughput.
//!
//! Raw: one worker, `Run` called back to back with full batches of the
//! worker's batch size, from Rust (no queueing, no batching decisions, the
//! client's cost is as small as it gets). Sluice: the same worker program
//! started by the `omi` runtime, fed through the whole engine (pre-processing,
//! queues, batcher, supervision, post-processing) with many items in flight.
//! Both use the same random inputs. Prints items/s of both and the ratio.
//!
//! `bash scripts/bench_omi.sh [--seconds S]` builds and runs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::{Input, ModelSpec};
use sluice_engine::{Model, Reply};
use sluice_omi::proto::{self, modzy_model_client::ModzyModelClient};
use tokio::sync::mpsc;

const WIDTH: usize = 512;

fn samples(n: usize) -> Vec<Vec<u8>> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            (0..WIDTH)
                .flat_map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
                })
                .collect()
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn raw(spec: &ModelSpec, inputs: &[Vec<u8>], batch: usize, secs: f64) -> anyhow_free::Result<f64> {
    let omi = spec.omi.as_ref().ok_or("no [omi] table")?;
    let (program, args) = omi.command.split_first().ok_or("no command")?;
    let port = free_port();
    let mut child = Command::new(spec.resolve(program.as_ref()))
        .args(args)
        .current_dir(&spec.dir)
        .envs(omi.env.iter())
        .env("PSC_MODEL_PORT", port.to_string())
        .env("PSC_MODEL_HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = loop {
            match ModzyModelClient::connect(endpoint.clone()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        client = client.max_decoding_message_size(64 << 20);
        client
            .status(proto::StatusRequest {})
            .await
            .map_err(|e| e.to_string())?;
        let requests: Vec<proto::RunRequest> = inputs
            .chunks(batch)
            .filter(|c| c.len() == batch)
            .map(|c| proto::RunRequest {
                inputs: c
                    .iter()
                    .map(|b| proto::InputItem {
                        input: [("input".to_string(), b.clone())].into(),
                    })
                    .collect(),
                detect_drift: false,
                explain: false,
            })
            .collect();
        // Warm-up, then back-to-back full batches.
        for r in requests.iter().take(3) {
            client.run(r.clone()).await.map_err(|e| e.to_string())?;
        }
        let started = Instant::now();
        let mut items = 0usize;
        let mut i = 0;
        while started.elapsed().as_secs_f64() < secs {
            let r = &requests[i % requests.len()];
            let resp = client.run(r.clone()).await.map_err(|e| e.to_string())?.into_inner();
            assert!(
                resp.outputs.iter().all(|o| o.success),
                "raw run failed: {}",
                resp.message
            );
            items += resp.outputs.len();
            i += 1;
        }
        Ok(items as f64 / started.elapsed().as_secs_f64())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    Ok(result?)
}

async fn through_sluice(spec: ModelSpec, inputs: &[Vec<u8>], secs: f64) -> anyhow_free::Result<(f64, f64)> {
    let model = tokio::task::spawn_blocking(move || Model::load(spec)).await??;
    let in_flight = model.spec().max_batch_size * 8;
    let (tx, mut rx) = mpsc::channel(in_flight * 2);
    // Warm-up.
    for (i, b) in inputs.iter().take(in_flight).enumerate() {
        model
            .submit(format!("w{i}"), Input::Bytes(b.clone()), Reply::Stream(tx.clone()))
            .await?;
    }
    for _ in 0..in_flight.min(inputs.len()) {
        rx.recv().await.ok_or("stream closed")?;
    }
    let before = model.stats();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut done = 0usize;
    let mut failed = 0usize;
    while started.elapsed().as_secs_f64() < secs {
        while sent - done < in_flight {
            let b = inputs[sent % inputs.len()].clone();
            model
                .submit(format!("i{sent}"), Input::Bytes(b), Reply::Stream(tx.clone()))
                .await?;
            sent += 1;
        }
        let c = rx.recv().await.ok_or("stream closed")?;
        failed += usize::from(c.result.is_err());
        done += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = model.stats();
    let batches = after.batches.saturating_sub(before.batches).max(1);
    let mean_batch = after.batched_items.saturating_sub(before.batched_items) as f64 / batches as f64;
    assert_eq!(failed, 0, "items failed through Sluice");
    model.close();
    while sent > done {
        rx.recv().await.ok_or("stream closed")?;
        done += 1;
    }
    drop(tx);
    model.join().await;
    Ok((done as f64 / elapsed, mean_batch))
}

/// Tiny error plumbing without extra dependencies.
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow_free::Result<()> {
    let mut secs = 10.0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            secs = args
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or("--seconds needs a number")?;
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let spec = ModelSpec::load(&root.join("models/mlp-omi"))?;
    let batch = spec.max_batch_size;
    let inputs = samples(512);
    println!("mlp-omi: Python OMI worker (onnxruntime), batch {batch}, {secs}s per measurement");
    let raw_ips = raw(&spec, &inputs, batch, secs).await?;
    println!("raw worker (Run with {batch}-item batches back to back): {raw_ips:.0} items/s");
    let (sluice_ips, mean_batch) = through_sluice(spec, &inputs, secs).await?;
    println!(
        "through Sluice ({} in flight): {sluice_ips:.0} items/s, mean batch {mean_batch:.1}",
        batch * 8
    );
    println!("ratio: {:.1}% of raw", 100.0 * sluice_ips / raw_ips);
    Ok(())
}
