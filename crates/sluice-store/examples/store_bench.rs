//! What the store itself sustains, PostgreSQL beside SQLite (a benchmark, not a test: it prints
//! figures and asserts nothing about them).
//!
//! ```text
//! cargo run --release -p sluice-store --example store_bench -- [ITEMS] [CLIENTS] [RECORD_BATCH]
//! ```
//!
//! For each backend: a job of ITEMS inputs (default 100,000) added in chunks of 1,000; then
//! CLIENTS concurrent nodes (default 3; on PostgreSQL each with its own connection pool) claim it
//! in claims of 64 until nothing is left; then the same clients record every item in batches of
//! RECORD_BATCH (default 500, what a node's writer gathers per call).
//! Then, as nodes work, each client claims 64 items and records them, over and over, on a second
//! job of ITEMS inputs.
//! Prints inputs/s, claims/s (and items/s claimed), records/s (items/s recorded) and the
//! claim+record loop's items/s. PostgreSQL
//! is a database of its own on the test server (`sluice_store::test_util`: `SLUICE_TEST_POSTGRES`,
//! else 127.0.0.1:5432, else a throwaway server).

use std::sync::Arc;
use std::time::Instant;

use sluice_store::test_util::TestDatabase;
use sluice_store::{Claim, Completion, InputValue, NewJob, PgStore, SqliteStore, Store, StoreError};

const CLAIM: u32 = 64;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let items: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100_000);
    let clients: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3).max(1);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(500).max(1);
    println!("store bench: {items} items, {clients} concurrent clients, claims of {CLAIM}, record batches of {batch}");

    let dir = tempfile::TempDir::new()?;
    let sqlite: Vec<Arc<dyn Store>> = {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await?);
        vec![store; clients]
    };
    run("sqlite", &sqlite, items, batch).await?;
    drop(sqlite);

    let db = TestDatabase::create().await?;
    let mut postgres: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..clients {
        postgres.push(Arc::new(PgStore::connect(db.url()).await?));
    }
    run("postgres", &postgres, items, batch).await?;
    drop(postgres);
    Ok(())
}

/// One claim of [`CLAIM`] items for `node`, leased for long enough.
async fn claim(store: &dyn Store, node: &str, model: &str) -> Result<Vec<sluice_store::ItemRow>, StoreError> {
    store
        .claim(Claim {
            node: node.to_owned(),
            model: model.to_owned(),
            limit: CLAIM,
            lease_ms: 600_000,
        })
        .await
}

/// Adds `items` short texts to a new job of `model`, in chunks of 1,000, and closes it; returns its id.
async fn filled_job(store: &dyn Store, model: &str, items: usize) -> Result<String, StoreError> {
    let job = store
        .create_job(NewJob {
            model: model.into(),
            ..NewJob::default()
        })
        .await?;
    for chunk in (0..items).step_by(1_000) {
        let inputs: Vec<(String, InputValue)> = (chunk..(chunk + 1_000).min(items))
            .map(|i| {
                (
                    format!("k{i}"),
                    InputValue::Text(format!("a short social media text, number {i}")),
                )
            })
            .collect();
        store.add_inputs(&job.id, inputs).await?;
    }
    store.close_job(&job.id).await?;
    Ok(job.id)
}

async fn run(
    name: &str,
    stores: &[Arc<dyn Store>],
    items: usize,
    batch: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = &stores[0];
    let start = Instant::now();
    let job_id = filled_job(store.as_ref(), "bench", items).await?;
    let add_s = start.elapsed().as_secs_f64();

    // Claims: every client claims until nothing is left.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            let mut calls = 0u64;
            loop {
                let rows = claim(store.as_ref(), &format!("bench-{i}"), "bench").await?;
                calls += 1;
                if rows.is_empty() {
                    return Ok::<_, StoreError>((calls, claimed));
                }
                claimed.extend(rows.into_iter().map(|r| (r.job_id, r.seq)));
            }
        }));
    }
    let mut calls = 0u64;
    let mut claimed = Vec::new();
    for task in tasks {
        let (c, rows) = task.await??;
        calls += c;
        claimed.push(rows);
    }
    let claim_s = start.elapsed().as_secs_f64();
    let claimed_items: usize = claimed.iter().map(Vec::len).sum();

    // Records: each client records what it claimed.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (store, rows) in stores.iter().zip(claimed) {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut recorded = 0u64;
            let batch = batch;
            for batch in rows.chunks(batch) {
                let completions = batch
                    .iter()
                    .map(|(job, seq)| {
                        Completion::done(
                            job.clone(),
                            *seq,
                            serde_json::json!({"label": "en", "score": 0.97}),
                            1.0,
                            1.0,
                        )
                    })
                    .collect();
                recorded += store.record(completions).await?;
            }
            Ok::<_, StoreError>(recorded)
        }));
    }
    let mut recorded = 0u64;
    for task in tasks {
        recorded += task.await??;
    }
    let record_s = start.elapsed().as_secs_f64();
    let done = store.get_job(&job_id).await?.ok_or("job vanished")?;

    // As nodes work: each client claims 64, records them, claims again, on a second job.
    filled_job(store.as_ref(), "bench-mixed", items).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut recorded = 0u64;
            loop {
                let rows = claim(store.as_ref(), &format!("mixed-{i}"), "bench-mixed").await?;
                if rows.is_empty() {
                    return Ok::<_, StoreError>(recorded);
                }
                let completions = rows
                    .iter()
                    .map(|r| Completion::done(r.job_id.clone(), r.seq, serde_json::json!({"label": "en"}), 1.0, 1.0))
                    .collect();
                recorded += store.record(completions).await?;
            }
        }));
    }
    let mut mixed_done = 0u64;
    for task in tasks {
        mixed_done += task.await??;
    }
    let mixed_s = start.elapsed().as_secs_f64();
    println!(
        "{name:>9}: add {:>9.0} inputs/s | claim {:>7.0} claims/s = {:>9.0} items/s | record {:>9.0} items/s \
         | claim+record loop {:>8.0} items/s ({} claimed, {} recorded, job {})",
        items as f64 / add_s,
        calls as f64 / claim_s,
        claimed_items as f64 / claim_s,
        recorded as f64 / record_s,
        mixed_done as f64 / mixed_s,
        claimed_items,
        recorded,
        done.status,
    );
    Ok(())
}
