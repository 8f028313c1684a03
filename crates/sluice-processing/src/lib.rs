//! Built-in pre- and post-processing: how raw inputs become tensors and how
//! output tensors become results a user wants (embeddings, detections, labels).
//!
//! Pre-processing runs per item on the engine's processing threads, before
//! batching, so a bad input (undecodable image, empty text, wrong shape) fails
//! alone and never reaches a batch. Post-processing runs per item after the
//! batch returns, with whatever the item's pre-processing recorded in
//! [`Meta`] (its token count, its letterbox transform).

use std::sync::Arc;

use sluice_core::spec::{ModelSpec, ProcessingSpec};
use sluice_core::{Input, ItemError, ModelSignature, NamedTensors, Output};

pub mod bytes;
pub mod decode;
pub mod image;
pub mod tensor;
pub mod text;

/// Why a model's processing chain could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    /// A file the chain needs (tokenizer, labels) is missing or unreadable.
    #[error("cannot read {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Cause.
        message: String,
    },
    /// The configuration does not fit the model graph.
    #[error("{0}")]
    Config(String),
}

/// Where an image item's pixels went, to map boxes back to the original.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageMeta {
    /// Original width in pixels.
    pub width: u32,
    /// Original height in pixels.
    pub height: u32,
    /// Model pixels per original pixel, horizontally.
    pub scale_x: f32,
    /// Model pixels per original pixel, vertically.
    pub scale_y: f32,
    /// Left padding in model pixels (letterbox).
    pub pad_x: f32,
    /// Top padding in model pixels (letterbox).
    pub pad_y: f32,
}

impl ImageMeta {
    /// Maps a point in model-input pixels to original-image pixels, clamped.
    pub fn to_original(&self, x: f32, y: f32) -> (f32, f32) {
        let ox = ((x - self.pad_x) / self.scale_x).clamp(0.0, self.width as f32);
        let oy = ((y - self.pad_y) / self.scale_y).clamp(0.0, self.height as f32);
        (ox, oy)
    }
}

/// What post-processing needs to know about an item.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    /// Nothing.
    None,
    /// Text: tokens in the item (before padding).
    Text {
        /// Token count.
        tokens: usize,
    },
    /// Image: the geometry of the resize.
    Image(ImageMeta),
}

/// A pre-processed item, ready to be batched.
///
/// When the items of a batch differ in size (token sequences), runtimes pad
/// them with zeros; models with ragged inputs take an attention mask, whose
/// zeros make the padded positions (whatever their value) irrelevant.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Model inputs for this item, without the batch dimension.
    pub tensors: NamedTensors,
    /// Size along the padded dimension (tokens), used to group similar items;
    /// 1 for fixed-size inputs.
    pub len: usize,
    /// Data for post-processing.
    pub meta: Meta,
}

/// A model's processing chain.
pub trait Processor: Send + Sync {
    /// Turns one raw input into model inputs. CPU-bound; runs on a processing thread.
    fn preprocess(&self, input: Input) -> Result<Prepared, ItemError>;

    /// Turns one item's model outputs into its result.
    fn postprocess(&self, outputs: NamedTensors, meta: &Meta) -> Result<Output, ItemError>;

    /// Whether [`Processor::preprocess`] is cheap enough (a few checks, no
    /// decoding or tokenizing) to run inline on an async task instead of
    /// being handed to a thread; real-time requests skip a thread hop then.
    fn is_cheap(&self) -> bool {
        false
    }
}

/// Builds the processing chain `spec` declares, checked against the graph.
pub fn build(spec: &ModelSpec, signature: &ModelSignature) -> Result<Arc<dyn Processor>, ProcessingError> {
    Ok(match &spec.processing {
        ProcessingSpec::Text(t) => Arc::new(text::TextProcessor::new(t, spec, signature)?),
        ProcessingSpec::Image(i) => Arc::new(image::ImageProcessor::new(i, spec, signature)?),
        ProcessingSpec::Tensor(t) => Arc::new(tensor::TensorProcessor::new(t, signature)?),
        ProcessingSpec::Bytes(b) => Arc::new(bytes::BytesProcessor::new(b, signature)?),
    })
}

/// Reads a labels file: one class name per line.
pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>, ProcessingError> {
    let text = std::fs::read_to_string(path).map_err(|e| ProcessingError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Inputs for tests of other crates (feature `test-util`).
#[cfg(feature = "test-util")]
pub mod test_util {
    use std::io::Write as _;

    /// A valid grayscale PNG of `width` x `height` black pixels, written
    /// row by row without holding the picture: a decompression bomb (22000 x
    /// 22000 is about 470 KB on disk, 484 million pixels decoded).
    pub fn bomb_png(width: u32, height: u32) -> Vec<u8> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        // 8-bit grayscale, deflate, adaptive filtering, no interlace.
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        // Each row: filter byte 0, then `width` zero pixels.
        let row = vec![0u8; width as usize + 1];
        for _ in 0..height {
            let _ = z.write_all(&row);
        }
        let idat = z.finish().unwrap_or_default();
        for part in idat.chunks(1 << 20) {
            chunk(&mut png, b"IDAT", part);
        }
        chunk(&mut png, b"IEND", &[]);
        png
    }
}
