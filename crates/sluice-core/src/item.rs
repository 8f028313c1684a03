//! Work items: what users send in and what they get back, one result per input id.

use serde::{Deserialize, Serialize};

use crate::error::ItemError;
use crate::tensor::NamedTensors;

/// Identifies an input within its job or run; results are matched back by it.
pub type ItemId = String;

/// One raw input, before model-specific pre-processing.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Text for tokenizer-based models.
    Text(String),
    /// Encoded bytes, e.g. a JPEG or PNG image.
    Bytes(Vec<u8>),
    /// A JSON value: raw tensors for `tensor` models (`{"name": [[..]]}`).
    Json(serde_json::Value),
    /// Already-decoded tensors (no batch dimension).
    Tensors(NamedTensors),
}

impl Input {
    /// Short description for error messages and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Text(_) => "text",
            Input::Bytes(_) => "bytes",
            Input::Json(_) => "json",
            Input::Tensors(_) => "tensors",
        }
    }
}

/// A class label with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// Class index in the model's output.
    pub class_id: usize,
    /// Human name, from the model's labels file (or the index as text).
    pub label: String,
    /// Probability or confidence.
    pub score: f32,
}

/// One detected object; box in pixels of the original image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Class index.
    pub class_id: usize,
    /// Class name.
    pub label: String,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// `[x_min, y_min, x_max, y_max]` in original-image pixels.
    pub bbox: [f32; 4],
}

/// A post-processed result for one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A sentence embedding.
    Embedding(Vec<f32>),
    /// Detected objects, highest score first.
    Detections(Vec<Detection>),
    /// Top-k classes, highest score first.
    Classes(Vec<Label>),
    /// Raw output tensors.
    Tensors(NamedTensors),
    /// Named output files (OMI workers): each is inlined as JSON when it
    /// parses as JSON, else as UTF-8 text, else as `{"base64": ".."}`.
    Files(std::collections::BTreeMap<String, serde_json::Value>),
}

/// The outcome for one item: exactly one of these per input id.
pub type ItemResult = Result<Output, ItemError>;
