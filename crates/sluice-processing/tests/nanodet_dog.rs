//! NanoDet decoding against the real model's outputs for `dog.jpg`.
//!
//! `data/nanodet_dog_outputs.json` holds NanoDet-m's raw head outputs for
//! dog.jpg (768x576, stretched to 416x416, RGB / 255, NCHW), recorded with
//! ONNX Runtime, keeping only the cells where some class scores at least 0.2
//! (every other cell is zero, which no threshold used here can tell apart),
//! and the detections a reference decoder produced from them. The
//! end-to-end run through ONNX Runtime lives with the engine's tests.

use std::path::{Path, PathBuf};

use sluice_core::spec::{ModelSpec, ProcessingSpec};
use sluice_core::{DType, Input, ModelSignature, NamedTensors, Output, Tensor, TensorData, TensorInfo};
use sluice_processing::image::ImageProcessor;
use sluice_processing::{ImageMeta, Meta, Processor};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn model_toml(score_threshold: f64, iou_threshold: f64) -> String {
    format!(
        r#"
runtime = "onnx"
model_file = "model.onnx"
max_batch_size = 8
[processing]
type = "image"
input = "input_1:0"
size = [416, 416]
scale = 0.003921569
[processing.postprocess]
type = "nanodet"
labels = "coco.names"
score_threshold = {score_threshold}
iou_threshold = {iou_threshold}
"#
    )
}

/// NanoDet-m 416's graph as ONNX Runtime reports it.
fn signature() -> ModelSignature {
    let info = |name: &str, shape: &[Option<usize>]| TensorInfo {
        name: name.into(),
        dtype: Some(DType::F32),
        shape: shape.to_vec(),
    };
    ModelSignature {
        inputs: vec![info("input_1:0", &[None, Some(3), Some(416), Some(416)])],
        outputs: vec![
            info("Identity_2:0", &[None, Some(169), Some(80)]),
            info("Identity_5:0", &[None, Some(169), Some(44)]),
            info("Identity_1:0", &[None, Some(676), Some(80)]),
            info("Identity:0", &[None, Some(2704), Some(80)]),
            info("Identity_4:0", &[None, Some(676), Some(44)]),
            info("Identity_3:0", &[None, Some(2704), Some(44)]),
        ],
    }
}

fn processor(score_threshold: f64, iou_threshold: f64) -> ImageProcessor {
    let mut spec = ModelSpec::parse(&model_toml(score_threshold, iou_threshold)).expect("model.toml");
    spec.dir = data_dir();
    let ProcessingSpec::Image(image) = &spec.processing else {
        panic!("image processing expected")
    };
    ImageProcessor::new(image, &spec, &signature()).expect("processor")
}

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(data_dir().join("nanodet_dog_outputs.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}

fn f(v: &serde_json::Value) -> f32 {
    v.as_f64().expect("number") as f32
}

/// The recorded outputs as one item's tensors (batch dimension of 1 kept, as
/// some runtimes leave it).
fn outputs(fx: &serde_json::Value) -> NamedTensors {
    let mut out = NamedTensors::new();
    for o in fx["outputs"].as_array().expect("outputs") {
        let shape: Vec<usize> = o["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let cols = shape[2];
        let mut data = vec![0.0f32; shape.iter().product()];
        for e in o["sparse"].as_array().expect("sparse") {
            let cell = e[0].as_u64().expect("cell") as usize;
            let col = e[1].as_u64().expect("col") as usize;
            data[cell * cols + col] = f(&e[2]);
        }
        let name = o["name"].as_str().expect("name").to_string();
        out.insert(name, Tensor::new(shape, TensorData::F32(data)).expect("tensor"));
    }
    out
}

fn meta(fx: &serde_json::Value) -> Meta {
    let m = &fx["meta"];
    Meta::Image(ImageMeta {
        width: m["width"].as_u64().expect("width") as u32,
        height: m["height"].as_u64().expect("height") as u32,
        scale_x: f(&m["scale_x"]),
        scale_y: f(&m["scale_y"]),
        pad_x: f(&m["pad_x"]),
        pad_y: f(&m["pad_y"]),
    })
}

#[test]
fn decodes_recorded_dog_outputs_like_the_reference() {
    let fx = fixture();
    let p = processor(
        fx["score_threshold"].as_f64().expect("thr"),
        fx["iou_threshold"].as_f64().expect("iou"),
    );
    let Output::Detections(dets) = p.postprocess(outputs(&fx), &meta(&fx)).expect("postprocess") else {
        panic!("detections expected")
    };
    for d in &dets {
        println!("{} {:.3} {:?}", d.label, d.score, d.bbox);
    }
    let expected = fx["expected"].as_array().expect("expected");
    assert_eq!(dets.len(), expected.len(), "{dets:?}");
    for (d, e) in dets.iter().zip(expected) {
        assert_eq!(d.label, e["label"].as_str().expect("label"));
        assert_eq!(d.class_id as u64, e["class_id"].as_u64().expect("class"));
        assert!((d.score - f(&e["score"])).abs() < 1e-6, "{d:?} vs {e}");
        for (got, want) in d.bbox.iter().zip(e["bbox"].as_array().expect("bbox")) {
            assert!((got - f(want)).abs() < 0.05, "{d:?} vs {e}");
        }
    }
    // What a person sees in dog.jpg: a bicycle across the middle, the dog
    // lower left, a truck top right.
    let find = |label: &str| dets.iter().find(|d| d.label == label).expect(label);
    let (bike, dog, truck) = (find("bicycle"), find("dog"), find("truck"));
    assert!(bike.score > 0.68 && dog.score > 0.43 && truck.score > 0.3);
    assert!(bike.bbox[0] < 150.0 && bike.bbox[2] > 500.0 && bike.bbox[1] < 200.0 && bike.bbox[3] > 350.0);
    assert!(dog.bbox[2] < 400.0 && dog.bbox[1] > 150.0 && dog.bbox[3] > 500.0);
    assert!(truck.bbox[0] > 400.0 && truck.bbox[3] < 200.0);
}

#[test]
fn default_threshold_keeps_the_confident_objects() {
    let fx = fixture();
    let p = processor(0.35, 0.6);
    let Output::Detections(dets) = p.postprocess(outputs(&fx), &meta(&fx)).expect("postprocess") else {
        panic!("detections expected")
    };
    let labels: Vec<&str> = dets.iter().map(|d| d.label.as_str()).collect();
    assert_eq!(labels, ["bicycle", "dog"]);
}

/// Pre-processing of the real picture, where the shared data is present.
#[test]
fn preprocesses_dog_jpg() {
    let candidates = [
        std::env::var_os("SLUICE_SHARED_DIR").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")),
    ];
    let Some(path) = candidates
        .into_iter()
        .flatten()
        .map(|d| d.join("data/images/dog.jpg"))
        .find(|p| p.is_file())
    else {
        println!("skipped: dog.jpg not found (set SLUICE_SHARED_DIR to the shared folder)");
        return;
    };
    let bytes = std::fs::read(&path).expect("dog.jpg");
    let prepared = processor(0.35, 0.6)
        .preprocess(Input::Bytes(bytes))
        .expect("preprocess");
    assert_eq!(
        prepared.meta,
        Meta::Image(ImageMeta {
            width: 768,
            height: 576,
            scale_x: 416.0 / 768.0,
            scale_y: 416.0 / 576.0,
            pad_x: 0.0,
            pad_y: 0.0,
        })
    );
    let t = &prepared.tensors["input_1:0"];
    assert_eq!(t.shape, vec![3, 416, 416]);
    let TensorData::F32(v) = &t.data else {
        panic!("f32 expected")
    };
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    // Channel means of the same picture resized by Pillow (bilinear).
    for (c, want) in [0.5275f32, 0.5321, 0.4473].iter().enumerate() {
        let plane = &v[c * 416 * 416..(c + 1) * 416 * 416];
        let mean = plane.iter().sum::<f32>() / plane.len() as f32;
        assert!((mean - want).abs() < 0.005, "channel {c}: {mean} vs {want}");
    }
}
