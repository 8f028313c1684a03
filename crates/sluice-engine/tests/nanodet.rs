//! NanoDet-m (models/nanodet-m) through the engine on real ONNX Runtime and
//! real pictures from data/images: what a person sees in dog.jpg is found
//! where it is, an undecodable file fails alone in a batch of real images,
//! and batching does not change detections.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use sluice_core::{Detection, Input, ItemErrorKind, ModelSpec, Output};
use sluice_engine::{Completion, Model, Reply};
use tokio::sync::mpsc;

fn image(name: &str) -> Vec<u8> {
    let path: PathBuf = repo_root().join("data/images").join(name);
    require_file(&path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn detections(c: &Completion) -> &[Detection] {
    match &c.result {
        Ok(Output::Detections(d)) => d,
        other => panic!("{}: expected detections, got {other:?}", c.id),
    }
}

/// nanodet-m with `max_batch_size` and a long delay: batches are released
/// when full or when the model is closed.
fn spec(max_batch_size: usize) -> ModelSpec {
    let mut spec = repo_model_spec("nanodet-m");
    spec.max_batch_size = max_batch_size;
    spec.max_batch_delay_ms = 60_000;
    spec
}

/// Submits every `(id, bytes)`, closes the model and returns the completions.
async fn run_all(model: &Model, items: Vec<(String, Vec<u8>)>) -> HashMap<String, Completion> {
    let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
    let (tx, rx) = mpsc::channel(64);
    for (id, bytes) in items {
        model
            .submit(id, Input::Bytes(bytes), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    model.close();
    let done = collect(rx).await;
    model.join().await;
    assert_ids(&done, &ids);
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dog_jpg_shows_a_dog_lower_left_and_a_bicycle() {
    let model = load_model(spec(1)).await;
    let done = run_all(&model, vec![("dog".into(), image("dog.jpg"))]).await;
    let dets = detections(&done["dog"]);
    for d in dets {
        println!("{} {:.3} {:?}", d.label, d.score, d.bbox);
    }
    // dog.jpg is 768x576.
    let find = |label: &str| {
        dets.iter()
            .find(|d| d.label == label)
            .unwrap_or_else(|| panic!("no {label} in {dets:?}"))
    };
    let dog = find("dog");
    let bike = find("bicycle");
    let centre = |d: &Detection| ((d.bbox[0] + d.bbox[2]) / 2.0, (d.bbox[1] + d.bbox[3]) / 2.0);
    let (dx, dy) = centre(dog);
    assert!(
        dx < 384.0 && dy > 288.0,
        "dog box {:?} is not in the lower left",
        dog.bbox
    );
    assert!(
        dog.bbox[3] > 450.0,
        "dog box {:?} does not reach the lower part",
        dog.bbox
    );
    // The bicycle spans the middle of the picture.
    assert!(
        bike.bbox[0] < 200.0 && bike.bbox[2] > 450.0,
        "bicycle box {:?}",
        bike.bbox
    );
    for d in dets {
        assert!((0.35..=1.0).contains(&d.score), "{d:?}");
        let [x0, y0, x1, y1] = d.bbox;
        assert!(
            0.0 <= x0 && x0 < x1 && x1 <= 768.0 && 0.0 <= y0 && y0 < y1 && y1 <= 576.0,
            "{d:?}"
        );
    }
    assert!(dets.windows(2).all(|w| w[0].score >= w[1].score), "not sorted by score");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_files_fail_alone_among_real_images() {
    let names = [
        "dog.jpg",
        "horses.jpg",
        "kite.jpg",
        "person.jpg",
        "chelsea.png",
        "coffee.png",
    ];
    let mut items: Vec<(String, Vec<u8>)> = names.iter().map(|n| ((*n).to_string(), image(n))).collect();
    // Bytes that are no picture at all (deterministic pseudo-random).
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    items.insert(2, ("noise.jpg".into(), noise));
    // A JPEG cut off inside its header.
    let dog = image("dog.jpg");
    items.insert(5, ("truncated.jpg".into(), dog[..200].to_vec()));
    let n = items.len();
    let model = load_model(spec(n)).await;
    let done = run_all(&model, items).await;
    for id in ["noise.jpg", "truncated.jpg"] {
        assert_failed(&done[id], ItemErrorKind::InvalidInput, "cannot decode image");
    }
    for name in names {
        let c = &done[name];
        assert!(c.result.is_ok(), "{name}: {:?}", c.result);
        detections(c);
    }
    assert!(!detections(&done["dog.jpg"]).is_empty());
    let s = model.stats();
    assert_eq!((s.items_ok, s.items_failed), (names.len() as u64, 2), "{s:?}");
    // The good images still ran together, in one batch.
    assert_eq!(s.batches, 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_four_copies_gives_the_same_detections_as_one_alone() {
    let dog = image("dog.jpg");
    let single = load_model(spec(1)).await;
    let alone = run_all(&single, vec![("alone".into(), dog.clone())]).await;
    let want = detections(&alone["alone"]);
    assert!(!want.is_empty());

    let batched = load_model(spec(4)).await;
    let items: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("copy-{i}"), dog.clone())).collect();
    let done = run_all(&batched, items).await;
    for i in 0..4 {
        let c = &done[&format!("copy-{i}")];
        assert_eq!(c.batch_size, 4, "{} ran in a batch of {}", c.id, c.batch_size);
        let got = detections(c);
        assert_eq!(got.len(), want.len(), "{}: {got:?} vs {want:?}", c.id);
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.class_id, &g.label), (w.class_id, &w.label), "{}", c.id);
            assert!((g.score - w.score).abs() <= 1e-3, "{}: {g:?} vs {w:?}", c.id);
            for (a, b) in g.bbox.iter().zip(&w.bbox) {
                assert!((a - b).abs() <= 1e-3, "{}: {g:?} vs {w:?}", c.id);
            }
        }
    }
}
