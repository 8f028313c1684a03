//! all-MiniLM-L6-v2 (models/minilm-l6) through the engine on real ONNX
//! Runtime: embeddings agree with the independent numpy reference
//! (fixtures/minilm_reference.jsonl), padding in a batch does not change
//! them, and an empty text fails alone.

mod common;

use std::collections::HashMap;

use common::*;
use sluice_core::{Input, ItemErrorKind};
use sluice_engine::{Completion, Model, Reply};
use tokio::sync::mpsc;

/// `(id, text)` of the fixture texts, in file order.
fn texts() -> Vec<(String, String)> {
    read_jsonl(&fixtures().join("minilm_texts.jsonl"))
        .iter()
        .map(|v| {
            (
                v["id"].as_str().expect("id").to_string(),
                v["text"].as_str().expect("text").to_string(),
            )
        })
        .collect()
}

/// Reference embeddings by id.
fn reference() -> HashMap<String, Vec<f32>> {
    read_jsonl(&fixtures().join("minilm_reference.jsonl"))
        .iter()
        .map(|v| {
            let e: Vec<f32> = v["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            (v["id"].as_str().expect("id").to_string(), e)
        })
        .collect()
}

/// Submits every `(id, text)`, closes the model (so the last partial batch
/// goes at once) and returns the completions.
async fn run_all(model: &Model, items: &[(String, String)]) -> HashMap<String, Completion> {
    let (tx, rx) = mpsc::channel(256);
    for (id, text) in items {
        model
            .submit(id.clone(), Input::Text(text.clone()), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    model.close();
    let done = collect(rx).await;
    model.join().await;
    assert_ids(&done, items.iter().map(|(id, _)| id));
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_numpy_reference_and_empty_texts_fail_alone() {
    let spec = repo_model_spec("minilm-l6");
    assert_eq!(spec.max_batch_size, 32);
    let model = load_model(spec).await;
    let mut items = texts();
    assert_eq!(items.len(), 43, "fixture texts");
    items.insert(7, ("empty".into(), String::new()));
    items.insert(20, ("blank".into(), " \t \n ".into()));
    let done = run_all(&model, &items).await;

    let reference = reference();
    let mut worst = (1.0f64, String::new());
    for (id, _) in texts() {
        let e = embedding(&done[&id]);
        assert_eq!(e.len(), 384, "{id}");
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{id}: not L2-normalised ({norm})");
        let cos = cosine(e, reference.get(&id).unwrap_or_else(|| panic!("no reference for {id}")));
        if cos < worst.0 {
            worst = (cos, id.clone());
        }
    }
    assert!(
        worst.0 >= 0.9999,
        "cosine with the reference {:.6} for {}",
        worst.0,
        worst.1
    );
    for id in ["empty", "blank"] {
        assert_failed(&done[id], ItemErrorKind::InvalidInput, "empty text");
    }
    let s = model.stats();
    assert_eq!((s.items_ok, s.items_failed), (43, 2), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_batches_give_the_same_embeddings_as_single_items() {
    let items = texts();
    // Batch of 32: the delay is long, so the first 32 texts (of very
    // different lengths) are padded into one batch.
    let mut spec = repo_model_spec("minilm-l6");
    spec.max_batch_size = 32;
    spec.max_batch_delay_ms = 60_000;
    let batched = load_model(spec).await;
    let b32 = run_all(&batched, &items).await;
    let s = batched.stats();
    assert!(
        s.mean_batch_size() > 1.0 && s.padding > 0,
        "expected padded batches: {s:?}"
    );
    assert!(b32.values().any(|c| c.batch_size == 32), "no batch of 32");

    let mut spec = repo_model_spec("minilm-l6");
    spec.max_batch_size = 1;
    let single = load_model(spec).await;
    let b1 = run_all(&single, &items).await;
    let s = single.stats();
    assert_eq!((s.padding, s.batches), (0, items.len() as u64), "{s:?}");

    for (id, _) in &items {
        let cos = cosine(embedding(&b1[id]), embedding(&b32[id]));
        assert!(cos >= 0.99999, "{id}: batch-1 vs batch-32 cosine {cos:.7}");
    }
}
