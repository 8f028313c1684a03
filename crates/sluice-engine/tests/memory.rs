//! Batches too big for memory (issue 16): a runtime that runs out of memory
//! above N items or T padded tokens (the fault-injecting wrapper around real
//! ONNX Runtime fixture models) never fails an item that a smaller batch
//! fits. The batch is split and retried, the effective max batch size backs
//! off to N and grows back once the limit is lifted, and with a token budget
//! no batch exceeds it.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_core::{ItemErrorKind, ModelSpec};
use sluice_engine::fault::{FaultyBackend, Memory};
use sluice_engine::{Completion, Meta, Model, Prepared, Reply};
use tokio::sync::mpsc;

/// Starts `spec` behind a fault-injecting backend; returns its memory handle.
async fn faulty_model(spec: ModelSpec) -> (Model, Arc<Memory>) {
    let backend = load_backend(&spec).await;
    let faulty = FaultyBackend::new(backend, Duration::ZERO);
    let memory = faulty.memory();
    (start_model(spec, Arc::new(faulty)).await, memory)
}

/// Submits `items` as bulk work (as a job does) and collects every completion.
async fn run_bulk(model: &Model, items: &[(String, TextItem)]) -> HashMap<String, Completion> {
    let (tx, rx) = mpsc::channel(256);
    let feeder = {
        let model = model.clone();
        let prepared: Vec<(String, Prepared)> = items
            .iter()
            .map(|(id, item)| {
                let p = Prepared {
                    tensors: item.tensors(),
                    len: item.ids.len(),
                    meta: Meta::None,
                };
                (id.clone(), p)
            })
            .collect();
        tokio::spawn(async move {
            for (id, p) in prepared {
                model
                    .submit_prepared(id, p, Reply::Stream(tx.clone()))
                    .await
                    .expect("submit");
            }
        })
    };
    let done = collect(rx).await;
    feeder.await.expect("feeder");
    done
}

/// `n` text items of `len(i)` tokens, ids unique per item.
fn text_items(prefix: &str, n: usize, len: impl Fn(usize) -> usize) -> Vec<(String, TextItem)> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), TextItem::new(100 * i as i64, len(i))))
        .collect()
}

/// Every item succeeded with its own rows.
fn assert_all_ok(done: &HashMap<String, Completion>, items: &[(String, TextItem)]) {
    assert_ids(done, items.iter().map(|(id, _)| id));
    for (id, item) in items {
        assert_padded_rows(&done[id], item);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_above_n_items_backs_off_to_n_and_grows_back_once_lifted() {
    let n = 5;
    let (model, memory) = faulty_model(text_ids_spec(32, 2, false)).await;
    memory.limit_items(n);

    let items = text_items("a", 2000, |i| 1 + i % 7);
    let done = run_bulk(&model, &items).await;
    assert_all_ok(&done, &items);
    let s = model.stats();
    assert_eq!(s.items_ok, 2000, "no item failed: {s:?}");
    assert!(memory.failures() > 0, "the limit was hit");
    assert!(s.out_of_memory_batches >= memory.failures() as u64 - 1, "{s:?}");
    assert!(s.batch_size_backoffs >= 3, "32 → 16 → 8 → 4 at least: {s:?}");
    assert_eq!(
        memory.largest_items(),
        n,
        "batches grew back up to the limit, never past it"
    );
    // Settled: the size in force is N (or N + 1 for the one batch that retries it, which
    // fails and goes back), and most dispatched batches hold N items.
    assert!(
        s.effective_batch_size == n as u64 || s.effective_batch_size == n as u64 + 1,
        "effective size {} after the run",
        s.effective_batch_size
    );
    let mode = (2..s.batch_sizes.len())
        .max_by_key(|&k| s.batch_sizes[k])
        .expect("batch sizes");
    assert_eq!(mode, n, "most batches hold N items: {:?}", s.batch_sizes);

    // The memory is freed: the size grows back to the configured 32.
    memory.lift();
    let more = text_items("b", 12_000, |i| 1 + i % 7);
    let done = run_bulk(&model, &more).await;
    assert_all_ok(&done, &more);
    let s = model.stats();
    assert_eq!(s.effective_batch_size, 32, "grew back: {s:?}");
    assert_eq!(memory.largest_items(), 32);
    assert_eq!(s.items_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_above_t_tokens_splits_and_a_token_budget_avoids_it() {
    // Lengths 4..=64: a batch of 16 long items is 1,024 tokens, over the 256 that fit.
    let tokens = 256;
    let lens = |i: usize| 4 + (i * 37) % 61;

    let (model, memory) = faulty_model(text_ids_spec(16, 2, true)).await;
    memory.limit_tokens(tokens);
    let items = text_items("t", 1500, lens);
    let done = run_bulk(&model, &items).await;
    assert_all_ok(&done, &items);
    assert!(memory.failures() > 0, "without a budget, some batches did not fit");
    assert!(memory.largest_tokens() <= tokens);
    assert_eq!(model.stats().items_failed, 0);

    // With max_batch_tokens at what fits, no batch is over it: nothing runs out of memory.
    let mut spec = text_ids_spec(16, 2, true);
    spec.max_batch_tokens = Some(tokens);
    let (model, memory) = faulty_model(spec).await;
    memory.limit_tokens(tokens);
    let done = run_bulk(&model, &items).await;
    assert_all_ok(&done, &items);
    assert_eq!(
        memory.failures(),
        0,
        "the budget kept every batch within {tokens} tokens"
    );
    assert!(memory.largest_tokens() <= tokens);
    let s = model.stats();
    assert_eq!(s.out_of_memory_batches, 0);
    assert_eq!(s.effective_batch_size, 16, "no back-off was needed");
    // Short items still fill batches: the budget limits tokens, not items.
    assert!(s.mean_batch_size() > 4.0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_longer_than_the_budget_runs_alone_and_one_that_never_fits_fails_alone() {
    let mut spec = text_ids_spec(8, 2, true);
    spec.max_batch_tokens = Some(64);
    let (model, memory) = faulty_model(spec).await;
    // 100 tokens fit alone, 300 do not fit at all.
    memory.limit_tokens(100);
    let mut items = text_items("s", 200, |i| 2 + i % 6);
    items.push(("long".into(), TextItem::new(900_000, 90)));
    items.push(("huge".into(), TextItem::new(800_000, 300)));
    let done = run_bulk(&model, &items).await;
    assert_ids(&done, items.iter().map(|(id, _)| id));
    assert_failed(
        &done["huge"],
        ItemErrorKind::Inference,
        "out of memory with this item alone",
    );
    for (id, item) in items.iter().filter(|(id, _)| id != "huge") {
        assert_padded_rows(&done[id], item);
    }
    assert_eq!(done["long"].batch_size, 1, "over the budget: alone");
    assert_eq!(model.stats().items_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_max_batch_bytes_is_split_like_one_out_of_memory() {
    // Items of 8 tokens: two i64 tensors of 8 = 128 bytes; 512 bytes hold 4 of them.
    let mut spec = text_ids_spec(16, 2, false);
    spec.max_batch_bytes = Some(512);
    let (model, memory) = faulty_model(spec).await;
    let items = text_items("m", 600, |_| 8);
    let done = run_bulk(&model, &items).await;
    assert_all_ok(&done, &items);
    let s = model.stats();
    assert!(s.out_of_memory_batches > 0, "{s:?}");
    assert_eq!(memory.largest_items(), 4, "no call held more than 512 bytes of input");
    assert!(s.effective_batch_size <= 5, "backed off to what fits: {s:?}");
}
