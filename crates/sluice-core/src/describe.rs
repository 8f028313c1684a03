//! What a model's processing takes and gives, described once.
//!
//! Every front end (the CLI's sources, `/v1/models/{m}/infer`, the KServe v2
//! routes, `sluice models`) asks [`ProcessingSpec::describe`] instead of
//! matching on the processing variants itself, so a new input kind (video
//! frames were the last one) is added here and in the processor that takes
//! it, and nowhere else.

use crate::spec::{ImagePostprocess, ProcessingSpec, ResizeMode};

/// What one item of a model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// A string (tokenized by the model's tokenizer).
    Text,
    /// A picture: an encoded image (JPEG, PNG, ...) or a decoded video
    /// frame, fitted to `size`.
    Image {
        /// The model's input `[width, height]`.
        size: [u32; 2],
        /// Whether the picture keeps its aspect ratio (letterbox) or is
        /// stretched.
        keep_aspect: bool,
    },
    /// Named tensors (JSON arrays, base64 or v2 typed tensors), checked
    /// against the graph.
    Tensors,
    /// Named files (an OMI worker): bytes, text or a JSON object of inputs.
    Files,
}

/// What one item's result is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gives {
    /// One vector.
    Embedding,
    /// Boxes with labels and scores.
    Detections {
        /// Lowest score a detection has (the head's threshold).
        score_threshold: f32,
    },
    /// Top-k labels with scores.
    Classes,
    /// Raw named tensors.
    Tensors,
    /// Named files.
    Files,
}

/// A model's items in and results out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Describe {
    /// What an item is.
    pub takes: Takes,
    /// What a result is.
    pub gives: Gives,
}

/// How a video decoder scales frames for a model: to `width` x `height`,
/// or within it keeping the aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFit {
    /// Target width.
    pub width: u32,
    /// Target height.
    pub height: u32,
    /// Fit within the box keeping the aspect ratio (the model letterboxes).
    pub keep_aspect: bool,
}

impl Gives {
    /// The score from which a result's detections count in summaries: the
    /// detector's own threshold (what it returns already reaches it); 0 for
    /// models that give no detections.
    pub fn min_score(&self) -> f32 {
        match self {
            Gives::Detections { score_threshold } => *score_threshold,
            _ => 0.0,
        }
    }
}

impl Takes {
    /// Short name: `text`, `image`, `tensors` or `files`.
    pub fn name(&self) -> &'static str {
        match self {
            Takes::Text => "text",
            Takes::Image { .. } => "image",
            Takes::Tensors => "tensors",
            Takes::Files => "files",
        }
    }

    /// The name of the single `BYTES` input a KServe v2 client sends
    /// (`text` or `image`); `None` where the graph's own inputs are sent.
    pub fn v2_bytes_input(&self) -> Option<&'static str> {
        match self {
            Takes::Text => Some("text"),
            Takes::Image { .. } => Some("image"),
            Takes::Tensors | Takes::Files => None,
        }
    }

    /// Whether the model takes video frames, and how the decoder scales
    /// them (once, to what the model's resize would produce).
    pub fn frame_fit(&self) -> Option<FrameFit> {
        match *self {
            Takes::Image { size, keep_aspect } => Some(FrameFit {
                width: size[0],
                height: size[1],
                keep_aspect,
            }),
            _ => None,
        }
    }

    /// Whether a bare string sent to the model is its text (text models
    /// and OMI workers, whose default input is a string).
    pub fn takes_strings(&self) -> bool {
        matches!(self, Takes::Text | Takes::Files)
    }
}

impl Gives {
    /// Short name: `embedding`, `detections`, `classes`, `tensors` or `files`.
    pub fn name(&self) -> &'static str {
        match self {
            Gives::Embedding => "embedding",
            Gives::Detections { .. } => "detections",
            Gives::Classes => "classes",
            Gives::Tensors => "tensors",
            Gives::Files => "files",
        }
    }
}

impl ProcessingSpec {
    /// What this processing takes and gives.
    pub fn describe(&self) -> Describe {
        match self {
            ProcessingSpec::Text(_) => Describe {
                takes: Takes::Text,
                gives: Gives::Embedding,
            },
            ProcessingSpec::Image(i) => Describe {
                takes: Takes::Image {
                    size: i.size,
                    keep_aspect: i.resize == ResizeMode::Letterbox,
                },
                gives: match &i.postprocess {
                    ImagePostprocess::Nanodet { score_threshold, .. } => Gives::Detections {
                        score_threshold: *score_threshold,
                    },
                    ImagePostprocess::Classification { .. } => Gives::Classes,
                },
            },
            ProcessingSpec::Tensor(_) => Describe {
                takes: Takes::Tensors,
                gives: Gives::Tensors,
            },
            ProcessingSpec::Bytes(_) => Describe {
                takes: Takes::Files,
                gives: Gives::Files,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_models_take_frames_fitted_like_their_resize() {
        let toml = r#"
            runtime = "onnx"
            model_file = "m.onnx"
            max_batch_size = 4
            [processing]
            type = "image"
            input = "x"
            size = [416, 320]
            resize = "letterbox"
            [processing.postprocess]
            type = "nanodet"
            labels = "coco.names"
            score_threshold = 0.4
        "#;
        let spec = crate::spec::ModelSpec::parse(toml).expect("spec");
        let d = spec.processing.describe();
        assert_eq!(
            d.takes.frame_fit(),
            Some(FrameFit {
                width: 416,
                height: 320,
                keep_aspect: true
            })
        );
        assert_eq!(d.takes.v2_bytes_input(), Some("image"));
        assert_eq!(d.gives, Gives::Detections { score_threshold: 0.4 });
        assert_eq!(d.gives.min_score(), 0.4);
        assert_eq!(Gives::Embedding.min_score(), 0.0);
        assert_eq!(Takes::Text.frame_fit(), None);
        assert!(Takes::Files.takes_strings() && !Takes::Tensors.takes_strings());
    }
}
