//! Work items: what users send in and what they get back, one result per input id.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ItemError;
use crate::tensor::NamedTensors;

/// Identifies an input within its job or run; results are matched back by it.
///
/// It travels with the item through the engine unchanged, so whoever
/// submitted the item gets its own typed identity back in the completion
/// instead of a string it would have to parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemId {
    /// An input of a run or a request, by its key (a line's id, a file name, a row index).
    Key(String),
    /// An input of a durable job: the job's id and the input's sequence number in it.
    Job {
        /// The job's id.
        job: Arc<str>,
        /// The input's sequence number within the job.
        seq: i64,
    },
}

impl ItemId {
    /// The key of a [`ItemId::Key`]; `None` for a job item.
    pub fn key(&self) -> Option<&str> {
        match self {
            ItemId::Key(k) => Some(k),
            ItemId::Job { .. } => None,
        }
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ItemId::Key(k) => f.write_str(k),
            ItemId::Job { job, seq } => write!(f, "{job}/{seq}"),
        }
    }
}

/// Serialised as its display form: the key, or `job/seq`.
impl Serialize for ItemId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl From<String> for ItemId {
    fn from(key: String) -> Self {
        ItemId::Key(key)
    }
}

impl From<&str> for ItemId {
    fn from(key: &str) -> Self {
        ItemId::Key(key.to_string())
    }
}

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
    /// A decoded video frame (RGB pixels), already scaled by the decoder
    /// to what the model's image processing needs ([`crate::describe::Takes::frame_fit`]).
    Frame(Frame),
}

/// A decoded picture: 8-bit RGB pixels, row by row, and the size of the
/// picture it was scaled from, so that boxes map back to the video's own
/// pixels.
#[derive(Clone, PartialEq)]
pub struct Frame {
    /// Width of `rgb` in pixels.
    pub width: u32,
    /// Height of `rgb` in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, RGB, top row first.
    pub rgb: Vec<u8>,
    /// Width of the picture before scaling (the video's width).
    pub source_width: u32,
    /// Height of the picture before scaling.
    pub source_height: u32,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bytes", &self.rgb.len())
            .field("source_width", &self.source_width)
            .field("source_height", &self.source_height)
            .finish()
    }
}

impl Input {
    /// Short description for error messages and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Text(_) => "text",
            Input::Bytes(_) => "bytes",
            Input::Json(_) => "json",
            Input::Tensors(_) => "tensors",
            Input::Frame(_) => "video frame",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_keep_their_type_and_show_as_before() {
        let job = ItemId::Job {
            job: Arc::from("7f3a"),
            seq: 42,
        };
        let key = ItemId::from("photo.jpg");
        assert_eq!(job.to_string(), "7f3a/42");
        assert_eq!(key.to_string(), "photo.jpg");
        assert_eq!(key.key(), Some("photo.jpg"));
        assert_eq!(job.key(), None);
        // A key that looks like a job tag stays a key: nothing is parsed back.
        let lookalike = ItemId::from("7f3a/42");
        assert_ne!(lookalike, job);
        assert_eq!(lookalike.key(), Some("7f3a/42"));
        assert_eq!(serde_json::to_value(&job).ok(), Some(serde_json::json!("7f3a/42")));
    }
}
