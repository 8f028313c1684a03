//! The engine end to end on real ONNX Runtime with small fixture models:
//! batching keeps each item's result its own, ragged items are zero-padded
//! and sliced back, length grouping saves padding, a bad item fails alone
//! (by validation or by bisecting a failed batch), cancellation and shutdown
//! deliver exactly one completion per item.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;
use sluice_core::{Input, ItemErrorKind, NamedTensors};
use sluice_engine::fault::{FaultyBackend, FAIL_CUE, PANIC_CUE, SLEEP_CUE};
use sluice_engine::{CancelFlag, Completion, EngineError, Meta, Model, Prepared, Reply, SubmitOptions};
use tokio::sync::mpsc;

/// The fixture's input rows and the numpy outputs for them.
fn tiny_mlp_expected() -> (Vec<Vec<f32>>, Vec<Vec<f32>>, f32) {
    let path = fixtures().join("tiny_mlp_expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).expect("tiny_mlp_expected.json");
    let rows = |key: &str| -> Vec<Vec<f32>> {
        v[key]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect()
    };
    let tol = v["tolerance"].as_f64().expect("tolerance") as f32;
    (rows("inputs"), rows("outputs"), tol)
}

/// Asserts that a tiny-MLP item's `y` equals `want` within `tol`.
fn assert_y(c: &Completion, want: &[f32], tol: f32) {
    let y = &tensors(c)["y"];
    assert_eq!(y.shape, vec![3], "{}: per-item output shape", c.id);
    for (got, want) in f32s(y).iter().zip(want) {
        assert!(
            (got - want).abs() <= tol,
            "{}: y = {:?}, expected {want:?}",
            c.id,
            f32s(y)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_mlp_batched_results_match_numpy_reference_per_item() {
    let (inputs, outputs, tol) = tiny_mlp_expected();
    let model = load_model(tiny_mlp_spec(8, 50)).await;
    let (tx, rx) = mpsc::channel(64);
    let n = 40;
    for i in 0..n {
        let row = &inputs[i % inputs.len()];
        model
            .submit(format!("item-{i}"), Input::Json(json!(row)), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    let done = collect(rx).await;
    let ids: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
    assert_ids(&done, &ids);
    for (i, id) in ids.iter().enumerate() {
        assert_y(&done[id], &outputs[i % outputs.len()], tol);
    }
    let s = model.stats();
    assert_eq!(s.items_ok, n as u64, "{s:?}");
    assert_eq!(s.items_failed, 0, "{s:?}");
    assert_eq!(s.batched_items, n as u64, "{s:?}");
    assert!(s.mean_batch_size() > 1.0, "items were not batched: {s:?}");
    assert!(
        done.values().any(|c| c.batch_size > 1),
        "no completion reports a batch > 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragged_tensor_items_are_zero_padded_and_sliced_back_per_item() {
    let lens = [3usize, 7, 1, 5, 7, 2];
    let max_len = *lens.iter().max().expect("lens");
    // One batch: the batch is released once all six wait (the delay is long).
    let model = load_model(text_ids_spec(lens.len(), 60_000, false)).await;
    let (tx, rx) = mpsc::channel(64);
    let mut expected = HashMap::new();
    for (i, &len) in lens.iter().enumerate() {
        let item = TextItem::new(100 * i as i64, len);
        model
            .submit(format!("r{i}"), Input::Json(item.json()), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
        expected.insert(format!("r{i}"), item);
    }
    drop(tx);
    let done = collect(rx).await;
    assert_ids(&done, expected.keys());
    for (id, ids) in &expected {
        let c = &done[id];
        assert_eq!(c.batch_size, lens.len(), "{id} ran in a batch of {}", c.batch_size);
        assert_eq!(
            assert_padded_rows(c, ids),
            max_len,
            "{id}: rows = longest item in the batch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_grouping_pads_less_than_first_come_first_served() {
    // Prepared items carry their token count (tensor processing counts 1 per
    // item), as text processing does. A first batch cued to sleep holds the
    // only instance busy, so everything after it waits and the batcher can
    // choose among all of it.
    let spec = text_ids_spec(4, 60_000, true);
    let backend = load_backend(&spec).await;
    let faulty = FaultyBackend::new(backend, Duration::from_millis(1500));
    let model = start_model(spec, std::sync::Arc::new(faulty)).await;
    let (tx, rx) = mpsc::channel(64);
    let mut expected = HashMap::new();
    let mut submit = |id: String, item: TextItem| {
        let model = model.clone();
        let tx = tx.clone();
        let prepared = Prepared {
            tensors: item.tensors(),
            len: item.ids.len(),
            meta: Meta::None,
        };
        expected.insert(id.clone(), item);
        async move {
            model
                .submit_prepared(id, prepared, Reply::Stream(tx))
                .await
                .expect("submit");
        }
    };
    // Blockers: four items of 2 tokens, the first cued to sleep. The fault
    // backend reads the cue from the first input in name order, which is
    // `attention_mask`.
    for b in 0..4 {
        let mut item = TextItem::new(0, 2);
        if b == 0 {
            item.mask[0] = SLEEP_CUE as i64;
        }
        submit(format!("blocker-{b}"), item).await;
    }
    // Then short and long items alternating: FIFO batches would mix them.
    for i in 0..16 {
        let len = if i % 2 == 0 { 2 } else { 30 };
        submit(format!("g{i}"), TextItem::new(1000 * (i + 1), len)).await;
    }
    drop(tx);
    let done = collect(rx).await;
    assert_ids(&done, expected.keys());
    for (id, item) in &expected {
        assert_padded_rows(&done[id], item);
    }
    assert_eq!(
        done["blocker-0"].batch_size, 4,
        "the sleeper ran with the other blockers"
    );
    let s = model.stats();
    assert_eq!(s.items_ok, 20, "{s:?}");
    assert!(s.padding < s.fifo_padding, "grouping saved no padding: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tensor_shape_fails_alone_naming_input_and_expected_shape() {
    let (inputs, outputs, tol) = tiny_mlp_expected();
    let model = load_model(tiny_mlp_spec(8, 20)).await;
    let (tx, rx) = mpsc::channel(64);
    for i in 0..9 {
        let input = if i == 4 {
            json!([1.0, 2.0, 3.0])
        } else {
            json!(inputs[i % inputs.len()])
        };
        model
            .submit(format!("s{i}"), Input::Json(input), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    let done = collect(rx).await;
    let ids: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    assert_ids(&done, &ids);
    for (i, id) in ids.iter().enumerate() {
        if i == 4 {
            assert_failed(&done[id], ItemErrorKind::InvalidInput, "'x'");
            assert_failed(&done[id], ItemErrorKind::InvalidInput, "[4]");
        } else {
            assert_y(&done[id], &outputs[i % outputs.len()], tol);
        }
    }
    let s = model.stats();
    assert_eq!((s.items_ok, s.items_failed), (8, 1), "{s:?}");
}

/// Runs 16 tiny-MLP items as one batch through a [`FaultyBackend`], item 5
/// carrying `cue`; returns the completions and the model.
async fn one_batch_with_cue(cue: f64) -> (HashMap<String, Completion>, Model) {
    let spec = tiny_mlp_spec(16, 60_000);
    let backend = load_backend(&spec).await;
    let model = start_model(spec, std::sync::Arc::new(FaultyBackend::new(backend, Duration::ZERO))).await;
    let (inputs, _, _) = tiny_mlp_expected();
    let (tx, rx) = mpsc::channel(64);
    for i in 0..16 {
        let row: Vec<f32> = if i == 5 {
            vec![cue as f32, 0.0, 0.0, 0.0]
        } else {
            inputs[i % inputs.len()].clone()
        };
        model
            .submit(format!("b{i}"), Input::Json(json!(row)), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    let done = collect(rx).await;
    let ids: Vec<String> = (0..16).map(|i| format!("b{i}")).collect();
    assert_ids(&done, &ids);
    (done, model)
}

fn assert_only_item_5_failed(done: &HashMap<String, Completion>, needle: &str) {
    let (_, outputs, tol) = tiny_mlp_expected();
    for i in 0..16 {
        let c = &done[&format!("b{i}")];
        assert_eq!(c.batch_size, 16, "{} did not run in the batch of 16", c.id);
        if i == 5 {
            assert_failed(c, ItemErrorKind::Inference, needle);
        } else {
            assert_y(c, &outputs[i % outputs.len()], tol);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batch_is_bisected_so_only_the_poisoned_item_fails() {
    let (done, model) = one_batch_with_cue(FAIL_CUE).await;
    assert_only_item_5_failed(&done, "injected failure");
    let s = model.stats();
    assert_eq!(s.batches, 1, "the 16 items should form one batch: {s:?}");
    assert!(s.bisections > 0, "{s:?}");
    assert_eq!((s.items_ok, s.items_failed), (15, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_panic_fails_only_its_item_and_the_model_keeps_serving() {
    let (done, model) = one_batch_with_cue(PANIC_CUE).await;
    assert_only_item_5_failed(&done, "panicked");
    let s = model.stats();
    assert!(s.bisections > 0, "{s:?}");
    // The instance thread survived the panic: later items still run
    // (closing releases them without waiting for the batching delay).
    let (inputs, outputs, tol) = tiny_mlp_expected();
    let (tx, rx) = mpsc::channel(8);
    for (i, row) in inputs.iter().enumerate() {
        model
            .submit(format!("after-{i}"), Input::Json(json!(row)), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    model.close();
    let after = collect(rx).await;
    assert_eq!(after.len(), inputs.len());
    for (i, want) in outputs.iter().enumerate() {
        assert_y(&after[&format!("after-{i}")], want, tol);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_items_waiting_behind_a_busy_instance_complete_as_canceled_without_running() {
    let spec = tiny_mlp_spec(1, 0);
    let backend = load_backend(&spec).await;
    let faulty = FaultyBackend::new(backend, Duration::from_millis(1500));
    let calls = faulty.calls();
    let model = start_model(spec, std::sync::Arc::new(faulty)).await;
    let (tx, rx) = mpsc::channel(64);
    // The first item holds the only instance busy.
    model
        .submit(
            "sleeper",
            Input::Json(json!([SLEEP_CUE, 0.0, 0.0, 0.0])),
            Reply::Stream(tx.clone()),
        )
        .await
        .expect("submit");
    // Wait until it runs, so the items below queue behind it.
    while calls.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let flag = CancelFlag::new();
    for i in 0..6 {
        let opts = SubmitOptions {
            cancel: Some(flag.clone()),
        };
        model
            .submit_with(
                format!("c{i}"),
                Input::Json(json!([1.0, 2.0, 3.0, 4.0])),
                Reply::Stream(tx.clone()),
                opts,
            )
            .await
            .expect("submit");
    }
    flag.cancel();
    drop(tx);
    let done = collect(rx).await;
    assert!(done["sleeper"].result.is_ok(), "{:?}", done["sleeper"]);
    for i in 0..6 {
        let c = &done[&format!("c{i}")];
        assert_failed(c, ItemErrorKind::Canceled, "canceled");
        assert_eq!((c.batch_size, c.run_time), (0, Duration::ZERO), "{} ran", c.id);
    }
    assert_eq!(done.len(), 7);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "only the sleeper's batch may run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_submitted_with_an_already_set_cancel_flag_never_reach_the_runtime() {
    let spec = tiny_mlp_spec(4, 5);
    let backend = load_backend(&spec).await;
    let faulty = FaultyBackend::new(backend, Duration::ZERO);
    let calls = faulty.calls();
    let model = start_model(spec, std::sync::Arc::new(faulty)).await;
    let flag = CancelFlag::new();
    flag.cancel();
    let (tx, rx) = mpsc::channel(64);
    for i in 0..10 {
        let opts = SubmitOptions {
            cancel: Some(flag.clone()),
        };
        model
            .submit_with(
                format!("c{i}"),
                Input::Json(json!([0.0, 0.0, 0.0, 0.0])),
                Reply::Stream(tx.clone()),
                opts,
            )
            .await
            .expect("submit");
    }
    drop(tx);
    let done = collect(rx).await;
    assert_eq!(done.len(), 10);
    for c in done.values() {
        assert_failed(c, ItemErrorKind::Canceled, "canceled");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // Issue 10, finding 11: canceled items are counted as canceled, not as failed.
    let s = model.stats();
    assert_eq!((s.items_canceled, s.items_failed, s.items_ok), (10, 0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_refuses_new_items_and_join_returns_after_every_completion_was_delivered() {
    let (inputs, outputs, tol) = tiny_mlp_expected();
    let model = load_model(tiny_mlp_spec(8, 20)).await;
    let n = 100;
    // Room for every completion: nobody reads until join has returned.
    let (tx, mut rx) = mpsc::channel(n + 1);
    for i in 0..n {
        model
            .submit(
                format!("j{i}"),
                Input::Json(json!(inputs[i % 3])),
                Reply::Stream(tx.clone()),
            )
            .await
            .expect("submit");
    }
    model.close();
    let refused = model
        .submit("late", Input::Json(json!(inputs[0])), Reply::Stream(tx.clone()))
        .await;
    assert!(matches!(refused, Err(EngineError::Closed(_))), "{refused:?}");
    let late = Prepared {
        tensors: NamedTensors::new(),
        len: 1,
        meta: Meta::None,
    };
    let refused = model.submit_prepared("late2", late, Reply::Stream(tx.clone())).await;
    assert!(matches!(refused, Err(EngineError::Closed(_))), "{refused:?}");
    let c = model.infer("late3", Input::Json(json!(inputs[0]))).await;
    assert_failed(&c, ItemErrorKind::Unavailable, "closed");
    drop(tx);

    model.join().await;
    // Everything is already delivered: no waiting from here on.
    let mut seen = HashMap::new();
    loop {
        match rx.try_recv() {
            Ok(c) => {
                let id = c.id.to_string();
                assert!(seen.insert(id.clone(), c).is_none(), "{id} completed twice");
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => panic!("join returned before all completions were sent"),
        }
    }
    let ids: Vec<String> = (0..n).map(|i| format!("j{i}")).collect();
    assert_ids(&seen, &ids);
    for (i, id) in ids.iter().enumerate() {
        assert_y(&seen[id], &outputs[i % 3], tol);
    }
    // join is idempotent.
    model.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_model_returns_each_of_ten_thousand_items_exactly_once() {
    let model = load_model(repo_model_spec("noop")).await;
    let n = 10_000usize;
    let (tx, rx) = mpsc::channel(256);
    let reader = tokio::spawn(collect(rx));
    for i in 0..n {
        model
            .submit(
                format!("n{i}"),
                Input::Json(json!([i as f32, 0.5])),
                Reply::Stream(tx.clone()),
            )
            .await
            .expect("submit");
    }
    drop(tx);
    model.close();
    model.join().await;
    let done = reader.await.expect("reader");
    let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    assert_ids(&done, &ids);
    for (i, id) in ids.iter().enumerate() {
        let out = &tensors(&done[id])["output"];
        assert_eq!(f32s(out), [i as f32, 0.5], "{id} got another item's data");
    }
    let s = model.stats();
    assert_eq!((s.items_ok, s.items_failed), (n as u64, 0), "{s:?}");
}
