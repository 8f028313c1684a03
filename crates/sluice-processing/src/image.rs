//! Image models: encoded pictures in, boxes or labels out.
//!
//! Users send JPEG or PNG bytes (a file, a video frame) and want results in
//! the pixels of the picture they sent. This module owns both ends of that
//! trip: pre-processing decodes, fits the picture to the model's input size
//! (stretched or letterboxed), normalises it into a float tensor in the
//! layout and channel order the graph expects, and records the geometry in
//! [`ImageMeta`]; post-processing decodes a NanoDet detection head (or a
//! classifier's scores) and maps every box back through that geometry.
//!
//! Pre-processing runs for every frame of a video, so it writes straight into
//! one pre-sized buffer through a per-channel lookup table: no per-pixel
//! allocation and no per-pixel arithmetic beyond the resize itself.

use std::borrow::Cow;

use ::image::imageops::{self, FilterType};
use ::image::RgbImage;
use sluice_core::spec::{ChannelOrder, ImagePostprocess, ImageSpec, Layout, ModelSpec, ResizeMode};
use sluice_core::{
    DType, Detection, Input, ItemError, ItemErrorKind, Label, ModelSignature, NamedTensors, Output, Tensor, TensorData,
};

use crate::{read_labels, ImageMeta, Meta, Prepared, ProcessingError, Processor};

/// Most candidate boxes (highest scores first) that enter non-maximum
/// suppression, as NanoDet's own `nms_pre`; bounds the work on a noisy frame
/// or with a very low score threshold.
const NMS_PRE: usize = 1000;

/// Pre- and post-processing for image models (`type = "image"`).
///
/// Built once per model by [`ImageProcessor::new`] from the model's
/// `[processing]` table and checked against its graph; then shared by all
/// processing threads.
pub struct ImageProcessor {
    /// Graph input receiving the image tensor.
    input: String,
    /// Model input width in pixels.
    width: u32,
    /// Model input height in pixels.
    height: u32,
    /// How pictures are fitted to `width` x `height`.
    resize: ResizeMode,
    /// Tensor layout.
    layout: Layout,
    /// For each tensor channel, the index of its colour in an RGB pixel.
    source_channel: [usize; 3],
    /// `lut[c][v]`: the tensor value of colour value `v` in tensor channel `c`,
    /// i.e. `(v * scale - mean[c]) / std[c]`, computed once.
    lut: Box<[[f32; 256]; 3]>,
    /// What the outputs mean.
    head: Head,
    /// Largest picture accepted, in pixels.
    max_pixels: u64,
}

/// The interpretation of the model's outputs.
enum Head {
    Nanodet(NanodetHead),
    Classification(ClassificationHead),
}

/// Settings of a NanoDet detection head.
struct NanodetHead {
    labels: Vec<String>,
    score_threshold: f32,
    iou_threshold: f32,
    max_detections: usize,
    strides: Vec<u32>,
}

/// Settings of a classification head.
struct ClassificationHead {
    labels: Vec<String>,
    /// The output holding the scores; `None` when the graph declared none, in
    /// which case the item must return exactly one tensor.
    output: Option<String>,
    softmax: bool,
    top_k: usize,
}

/// One NanoDet feature level: which outputs hold its scores and box
/// distributions, and its grid.
#[derive(Debug, Clone, PartialEq)]
struct Level {
    stride: u32,
    /// Cells per row of the feature map.
    grid_width: usize,
    /// Cells in the feature map (rows of both outputs).
    cells: usize,
    /// Index (into the list given to [`pair_levels`]) of the class scores.
    scores: usize,
    /// Index of the box distributions.
    boxes: usize,
    /// Classes per cell.
    classes: usize,
    /// Bins per box side (`reg_max + 1`).
    bins: usize,
}

/// A scored box before suppression, in model-input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    class: usize,
    score: f32,
    bbox: [f32; 4],
}

impl ImageProcessor {
    /// Builds the processor for `spec`, reading its labels file (relative to
    /// the model folder) and checking the spec against the graph: the input
    /// must exist and accept the tensor `size`/`layout` produce, and where the
    /// graph declares static output shapes, a NanoDet head must find one pair
    /// of outputs per stride.
    pub fn new(
        spec: &ImageSpec,
        model: &ModelSpec,
        signature: &ModelSignature,
    ) -> Result<ImageProcessor, ProcessingError> {
        let labels = match &spec.postprocess {
            ImagePostprocess::Nanodet { labels, .. }
            | ImagePostprocess::Classification {
                labels: Some(labels), ..
            } => read_labels(&model.resolve(labels))?,
            ImagePostprocess::Classification { labels: None, .. } => Vec::new(),
        };
        ImageProcessor::with_labels(spec, labels, signature)
    }

    /// [`ImageProcessor::new`] with the labels already read.
    fn with_labels(
        spec: &ImageSpec,
        labels: Vec<String>,
        signature: &ModelSignature,
    ) -> Result<ImageProcessor, ProcessingError> {
        let info = signature.input(&spec.input).ok_or_else(|| {
            let names: Vec<&str> = signature.inputs.iter().map(|i| i.name.as_str()).collect();
            ProcessingError::Config(format!(
                "image input '{}' is not an input of the model; its inputs are: {}",
                spec.input,
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })?;
        let [width, height] = spec.size;
        if width == 0 || height == 0 {
            return Err(ProcessingError::Config(format!(
                "processing.size must be positive, got [{width}, {height}]"
            )));
        }
        if spec.std.iter().any(|s| *s == 0.0 || !s.is_finite())
            || !spec.scale.is_finite()
            || spec.mean.iter().any(|m| !m.is_finite())
        {
            return Err(ProcessingError::Config(format!(
                "processing.scale, mean and std must be finite and std non-zero, got scale {}, mean {:?}, std {:?}",
                spec.scale, spec.mean, spec.std
            )));
        }
        // An empty declared shape means the backend does not know the rank.
        if !info.shape.is_empty() {
            info.check_item(DType::F32, &item_shape(spec.layout, width, height))
                .map_err(|e| {
                    ProcessingError::Config(format!(
                        "{e}; processing.size [{width}, {height}] with layout {:?} gives that shape",
                        spec.layout
                    ))
                })?;
        }

        let source_channel = match spec.channels {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let mut lut = Box::new([[0.0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (f32::from(v as u8) * spec.scale - spec.mean[c]) / spec.std[c];
            }
        }

        let head = match &spec.postprocess {
            ImagePostprocess::Nanodet {
                score_threshold,
                iou_threshold,
                max_detections,
                strides,
                ..
            } => {
                let head = NanodetHead {
                    labels,
                    score_threshold: *score_threshold,
                    iou_threshold: *iou_threshold,
                    max_detections: *max_detections,
                    strides: strides.clone(),
                };
                head.check(signature, spec.size)?;
                Head::Nanodet(head)
            }
            ImagePostprocess::Classification {
                output, softmax, top_k, ..
            } => {
                let names: Vec<&str> = signature.outputs.iter().map(|o| o.name.as_str()).collect();
                let output = match output {
                    Some(name) if !names.is_empty() && !names.contains(&name.as_str()) => {
                        return Err(ProcessingError::Config(format!(
                            "classification output '{name}' is not an output of the model; its outputs are: {}",
                            names.join(", ")
                        )));
                    }
                    Some(name) => Some(name.clone()),
                    None => names.first().map(|n| (*n).to_string()),
                };
                if *top_k == 0 {
                    return Err(ProcessingError::Config(
                        "classification top_k must be at least 1".into(),
                    ));
                }
                Head::Classification(ClassificationHead {
                    labels,
                    output,
                    softmax: *softmax,
                    top_k: *top_k,
                })
            }
        };

        Ok(ImageProcessor {
            input: spec.input.clone(),
            width,
            height,
            resize: spec.resize,
            layout: spec.layout,
            source_channel,
            lut,
            head,
            max_pixels: spec.max_pixels,
        })
    }

    /// Fits an already-decoded picture to the model input and normalises it:
    /// the tensor for the graph input (no batch dimension) and the geometry
    /// that maps model pixels back to `image`'s pixels. Decoded video frames
    /// can enter here directly, skipping an encode/decode round trip.
    pub fn tensor_from_rgb(&self, image: &RgbImage) -> Result<(Tensor, ImageMeta), ItemError> {
        self.tensor_from_scaled(image, image.dimensions())
    }

    /// Like [`ImageProcessor::tensor_from_rgb`] for pixels that were already
    /// scaled from a `source` (width, height) picture, such as a video frame
    /// scaled by the decoder: when they have the size this model's resize
    /// gives, they are used as they are; boxes map back to `source` pixels.
    pub fn tensor_from_scaled(&self, image: &RgbImage, source: (u32, u32)) -> Result<(Tensor, ImageMeta), ItemError> {
        let (w, h) = source;
        if w == 0 || h == 0 || image.width() == 0 || image.height() == 0 {
            return Err(ItemError::invalid(format!("image has no pixels ({w}x{h})")));
        }
        let (tw, th) = (self.width, self.height);
        let (nw, nh) = match self.resize {
            ResizeMode::Stretch => (tw, th),
            ResizeMode::Letterbox => {
                let scale = f64::min(f64::from(tw) / f64::from(w), f64::from(th) / f64::from(h));
                let fit = |side: u32, target: u32| ((f64::from(side) * scale).round() as u32).clamp(1, target);
                (fit(w, tw), fit(h, th))
            }
        };
        let resized: Cow<'_, RgbImage> = if (nw, nh) == image.dimensions() {
            Cow::Borrowed(image)
        } else {
            Cow::Owned(imageops::resize(image, nw, nh, FilterType::Triangle))
        };
        let (pad_x, pad_y) = ((tw - nw) / 2, (th - nh) / 2);
        let data = self.normalise(&resized, pad_x as usize, pad_y as usize);
        let tensor = Tensor::new(item_shape(self.layout, tw, th), TensorData::F32(data))
            .map_err(|e| ItemError::new(ItemErrorKind::Internal, format!("image tensor: {e}")))?;
        let meta = ImageMeta {
            width: w,
            height: h,
            scale_x: nw as f32 / w as f32,
            scale_y: nh as f32 / h as f32,
            pad_x: pad_x as f32,
            pad_y: pad_y as f32,
        };
        Ok((tensor, meta))
    }

    /// Writes `image` (already resized) into a new model-sized buffer at
    /// `(pad_x, pad_y)`; the rest is black, normalised like any pixel.
    fn normalise(&self, image: &RgbImage, pad_x: usize, pad_y: usize) -> Vec<f32> {
        let (tw, th) = (self.width as usize, self.height as usize);
        let (iw, ih) = (image.width() as usize, image.height() as usize);
        let padded = iw != tw || ih != th;
        let raw = image.as_raw();
        let src_rows = raw.chunks_exact(iw * 3).take(ih);
        let [s0, s1, s2] = self.source_channel;
        let [l0, l1, l2] = &*self.lut;
        match self.layout {
            Layout::Nchw => {
                let plane = tw * th;
                let mut out = Vec::with_capacity(3 * plane);
                for table in self.lut.iter() {
                    out.resize(out.len() + plane, table[0]);
                }
                let (p0, rest) = out.split_at_mut(plane);
                let (p1, p2) = rest.split_at_mut(plane);
                for (y, src) in src_rows.enumerate() {
                    let start = (y + pad_y) * tw + pad_x;
                    let range = start..start + iw;
                    for (((px, d0), d1), d2) in src
                        .chunks_exact(3)
                        .zip(&mut p0[range.clone()])
                        .zip(&mut p1[range.clone()])
                        .zip(&mut p2[range])
                    {
                        *d0 = l0[usize::from(px[s0])];
                        *d1 = l1[usize::from(px[s1])];
                        *d2 = l2[usize::from(px[s2])];
                    }
                }
                out
            }
            Layout::Nhwc => {
                let mut out = vec![0.0f32; 3 * tw * th];
                if padded {
                    for d in out.chunks_exact_mut(3) {
                        d.copy_from_slice(&[l0[0], l1[0], l2[0]]);
                    }
                }
                for (y, src) in src_rows.enumerate() {
                    let start = ((y + pad_y) * tw + pad_x) * 3;
                    for (px, d) in src.chunks_exact(3).zip(out[start..start + iw * 3].chunks_exact_mut(3)) {
                        d[0] = l0[usize::from(px[s0])];
                        d[1] = l1[usize::from(px[s1])];
                        d[2] = l2[usize::from(px[s2])];
                    }
                }
                out
            }
        }
    }
}

impl ImageProcessor {
    fn prepared(&self, tensor: Tensor, meta: ImageMeta) -> Prepared {
        let mut tensors = NamedTensors::new();
        tensors.insert(self.input.clone(), tensor);
        Prepared {
            tensors,
            len: 1,
            meta: Meta::Image(meta),
        }
    }

    /// A decoded video frame: RGB pixels, usually already scaled to this
    /// model's size by the decoder.
    fn prepare_frame(&self, frame: sluice_core::Frame) -> Result<Prepared, ItemError> {
        let (w, h) = (frame.width, frame.height);
        if u64::from(w) * u64::from(h) > self.max_pixels {
            return Err(ItemError::invalid(format!(
                "video frame of {w}x{h} pixels is over this model's limit of {} pixels",
                self.max_pixels
            )));
        }
        let image = RgbImage::from_raw(w, h, frame.rgb).ok_or_else(|| {
            ItemError::invalid(format!("video frame of {w}x{h} pixels does not hold {w}x{h}x3 bytes"))
        })?;
        let (tensor, meta) = self.tensor_from_scaled(&image, (frame.source_width, frame.source_height))?;
        Ok(self.prepared(tensor, meta))
    }
}

impl Processor for ImageProcessor {
    fn preprocess(&self, input: Input) -> Result<Prepared, ItemError> {
        let bytes = match input {
            Input::Bytes(bytes) => bytes,
            Input::Frame(frame) => return self.prepare_frame(frame),
            other => {
                return Err(ItemError::invalid(format!(
                    "image models take bytes (an encoded JPEG or PNG image), got {}",
                    other.kind()
                )))
            }
        };
        if bytes.is_empty() {
            return Err(ItemError::invalid("cannot decode image: the input is empty"));
        }
        check_complete_jpeg(&bytes)?;
        let decoded = crate::decode::decode_rgb(&bytes, self.max_pixels, crate::decode::DecodeBudget::global())?;
        drop(bytes);
        let (tensor, meta) = self.tensor_from_rgb(&decoded.image)?;
        drop(decoded);
        Ok(self.prepared(tensor, meta))
    }

    fn postprocess(&self, outputs: NamedTensors, meta: &Meta) -> Result<Output, ItemError> {
        match &self.head {
            Head::Nanodet(head) => {
                let Meta::Image(meta) = meta else {
                    return Err(ItemError::new(
                        ItemErrorKind::Internal,
                        "detection post-processing needs the item's image geometry",
                    ));
                };
                head.detect(&outputs, [self.width, self.height], meta)
                    .map(Output::Detections)
            }
            Head::Classification(head) => head.classify(&outputs).map(Output::Classes),
        }
    }
}

impl NanodetHead {
    /// Checks the head against the graph's output shapes where they are all
    /// static; otherwise the pairing is only done, from the actual tensors,
    /// at post-processing time (where it is done in any case).
    fn check(&self, signature: &ModelSignature, size: [u32; 2]) -> Result<(), ProcessingError> {
        if self.strides.is_empty() || self.strides.contains(&0) {
            return Err(ProcessingError::Config(format!(
                "nanodet strides must be positive and at least one, got {:?}",
                self.strides
            )));
        }
        let mut sorted = self.strides.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.strides.len() {
            return Err(ProcessingError::Config(format!(
                "nanodet strides must differ, got {:?}",
                self.strides
            )));
        }
        if !(0.0..=1.0).contains(&self.iou_threshold) || !self.score_threshold.is_finite() {
            return Err(ProcessingError::Config(format!(
                "nanodet iou_threshold must be within [0, 1] and score_threshold finite, got {} and {}",
                self.iou_threshold, self.score_threshold
            )));
        }
        let mut shapes = Vec::with_capacity(signature.outputs.len());
        for o in &signature.outputs {
            // Declared shapes include the batch dimension.
            match o.shape.as_slice() {
                [_, Some(rows), Some(cols)] => shapes.push((o.name.as_str(), *rows, *cols)),
                _ => return Ok(()),
            }
        }
        if shapes.is_empty() {
            return Ok(());
        }
        let levels = pair_levels(&shapes, size, &self.strides, self.labels.len())
            .map_err(|e| ProcessingError::Config(format!("nanodet outputs do not fit processing.size: {e}")))?;
        if let Some(level) = levels.first() {
            if level.classes != self.labels.len() {
                tracing::warn!(
                    classes = level.classes,
                    labels = self.labels.len(),
                    "nanodet head has a different number of classes than the labels file; \
                     classes without a label are named by their index"
                );
            }
        }
        Ok(())
    }

    /// Decodes one item's head outputs into detections in original pixels.
    fn detect(&self, outputs: &NamedTensors, size: [u32; 2], meta: &ImageMeta) -> Result<Vec<Detection>, ItemError> {
        let mut shapes = Vec::with_capacity(outputs.len());
        let mut values = Vec::with_capacity(outputs.len());
        for (name, tensor) in outputs {
            let (rows, cols) = matrix_dims(&tensor.shape).ok_or_else(|| {
                ItemError::inference(format!(
                    "nanodet output '{name}' has shape {:?}; expected [cells, values] (optionally with leading 1s)",
                    tensor.shape
                ))
            })?;
            let v = float_values(name, tensor)?;
            if v.len() != rows * cols {
                return Err(ItemError::inference(format!(
                    "nanodet output '{name}' has {} values for shape {:?}",
                    v.len(),
                    tensor.shape
                )));
            }
            shapes.push((name.as_str(), rows, cols));
            values.push(v);
        }
        let levels = pair_levels(&shapes, size, &self.strides, self.labels.len()).map_err(ItemError::inference)?;
        let candidates = decode_levels(&levels, &values, self.score_threshold, size);
        let kept = nms(candidates, self.iou_threshold, self.max_detections);
        Ok(kept
            .into_iter()
            .map(|c| {
                let (x0, y0) = meta.to_original(c.bbox[0], c.bbox[1]);
                let (x1, y1) = meta.to_original(c.bbox[2], c.bbox[3]);
                Detection {
                    class_id: c.class,
                    label: label_of(&self.labels, c.class),
                    score: c.score,
                    bbox: [x0, y0, x1, y1],
                }
            })
            .collect())
    }
}

impl ClassificationHead {
    /// Turns one item's scores into its top-k labels.
    fn classify(&self, outputs: &NamedTensors) -> Result<Vec<Label>, ItemError> {
        let (name, tensor) = match &self.output {
            Some(name) => outputs.get_key_value(name).ok_or_else(|| {
                ItemError::inference(format!(
                    "classification output '{name}' is missing; the model returned: {}",
                    outputs.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?,
            None => match outputs.iter().next() {
                Some(only) if outputs.len() == 1 => only,
                _ => {
                    return Err(ItemError::inference(format!(
                        "classification needs processing.postprocess.output to choose among {} outputs",
                        outputs.len()
                    )))
                }
            },
        };
        if tensor.shape.iter().filter(|d| **d != 1).count() > 1 || tensor.numel() == 0 {
            return Err(ItemError::inference(format!(
                "classification output '{name}' has shape {:?} per item; expected one vector of class scores",
                tensor.shape
            )));
        }
        let mut scores = float_values(name, tensor)?.into_owned();
        if self.softmax {
            softmax_in_place(&mut scores);
        }
        Ok(top_k(&scores, self.top_k)
            .into_iter()
            .map(|i| Label {
                class_id: i,
                label: label_of(&self.labels, i),
                score: scores[i],
            })
            .collect())
    }
}

/// The item tensor shape (no batch dimension) for a model input size.
fn item_shape(layout: Layout, width: u32, height: u32) -> Vec<usize> {
    let (w, h) = (width as usize, height as usize);
    match layout {
        Layout::Nchw => vec![3, h, w],
        Layout::Nhwc => vec![h, w, 3],
    }
}

/// `(rows, cols)` of a tensor that is a matrix once leading 1s are dropped
/// (`[2704, 80]`, `[1, 2704, 80]`).
fn matrix_dims(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [lead @ .., rows, cols] if lead.iter().all(|d| *d == 1) => Some((*rows, *cols)),
        _ => None,
    }
}

/// A tensor's values as f32 (borrowed when they already are).
fn float_values<'a>(name: &str, tensor: &'a Tensor) -> Result<Cow<'a, [f32]>, ItemError> {
    match &tensor.data {
        TensorData::F32(v) => Ok(Cow::Borrowed(v)),
        TensorData::F64(v) => Ok(Cow::Owned(v.iter().map(|x| *x as f32).collect())),
        other => Err(ItemError::inference(format!(
            "output '{name}' is {}; expected float32",
            other.dtype()
        ))),
    }
}

/// Class name for an index: the labels file's line, or the index itself.
fn label_of(labels: &[String], class: usize) -> String {
    labels.get(class).cloned().unwrap_or_else(|| class.to_string())
}

/// Matches NanoDet outputs to strides by cell count.
///
/// Each level has two outputs with `ceil(W/s) * ceil(H/s)` rows: class scores
/// (`classes` columns) and box-side distributions (`4 * (reg_max + 1)`
/// columns). Names are not used: exporters call them `Identity_3:0` and the
/// like, in no useful order. `outputs` holds `(name, rows, cols)`; every one
/// must belong to a level and every stride must find its pair.
fn pair_levels(
    outputs: &[(&str, usize, usize)],
    size: [u32; 2],
    strides: &[u32],
    num_labels: usize,
) -> Result<Vec<Level>, String> {
    let list = || {
        outputs
            .iter()
            .map(|(n, r, c)| format!("'{n}' [{r}, {c}]"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut used = vec![false; outputs.len()];
    let mut levels = Vec::with_capacity(strides.len());
    for &stride in strides {
        let grid_width = size[0].div_ceil(stride) as usize;
        let grid_height = size[1].div_ceil(stride) as usize;
        let cells = grid_width * grid_height;
        let matching: Vec<usize> = (0..outputs.len()).filter(|i| outputs[*i].1 == cells).collect();
        let [a, b] = matching[..] else {
            return Err(format!(
                "stride {stride} needs two outputs with {cells} cells ({grid_width}x{grid_height} for a {}x{} input), \
                 class scores and box distributions; found {} among {}",
                size[0],
                size[1],
                matching.len(),
                list()
            ));
        };
        let (ca, cb) = (outputs[a].2, outputs[b].2);
        let (scores, boxes) = if ca == num_labels && cb != num_labels {
            (a, b)
        } else if cb == num_labels && ca != num_labels {
            (b, a)
        } else if !ca.is_multiple_of(4) && cb.is_multiple_of(4) {
            (a, b)
        } else if !cb.is_multiple_of(4) && ca.is_multiple_of(4) {
            (b, a)
        } else {
            return Err(format!(
                "cannot tell class scores from box distributions for stride {stride}: '{}' [{cells}, {ca}] and '{}' [{cells}, {cb}] \
                 (the labels file has {num_labels} classes)",
                outputs[a].0, outputs[b].0
            ));
        };
        if outputs[scores].2 == 0 {
            return Err(format!(
                "class scores '{}' for stride {stride} have no classes",
                outputs[scores].0
            ));
        }
        let box_cols = outputs[boxes].2;
        if box_cols == 0 || !box_cols.is_multiple_of(4) {
            return Err(format!(
                "box distributions '{}' for stride {stride} have {box_cols} values per cell; expected 4 * (reg_max + 1)",
                outputs[boxes].0
            ));
        }
        used[a] = true;
        used[b] = true;
        levels.push(Level {
            stride,
            grid_width,
            cells,
            scores,
            boxes,
            classes: outputs[scores].2,
            bins: box_cols / 4,
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(format!(
            "output '{}' [{}, {}] matches no stride of {strides:?} for a {}x{} input",
            outputs[i].0, outputs[i].1, outputs[i].2, size[0], size[1]
        ));
    }
    Ok(levels)
}

/// Every (cell, class) whose score reaches `threshold`, with its box in
/// model-input pixels, clamped to the input.
///
/// A cell at column `x`, row `y` of a level with stride `s` is centred at
/// `((x + 0.5) * s, (y + 0.5) * s)`; each side's distance (left, top, right,
/// bottom) is the expectation of the softmax over its `reg_max + 1` bins,
/// times `s`. Scores are already sigmoid outputs and are used as they are.
fn decode_levels(levels: &[Level], values: &[Cow<'_, [f32]>], threshold: f32, size: [u32; 2]) -> Vec<Candidate> {
    let (w, h) = (size[0] as f32, size[1] as f32);
    let mut out = Vec::new();
    for level in levels {
        let stride = level.stride as f32;
        let scores = values[level.scores].chunks_exact(level.classes);
        let boxes = values[level.boxes].chunks_exact(4 * level.bins);
        for (cell, (row, dist)) in scores.zip(boxes).enumerate() {
            let mut bbox = None;
            for (class, &score) in row.iter().enumerate() {
                if score.is_nan() || score < threshold {
                    continue;
                }
                let bbox = *bbox.get_or_insert_with(|| {
                    let cx = ((cell % level.grid_width) as f32 + 0.5) * stride;
                    let cy = ((cell / level.grid_width) as f32 + 0.5) * stride;
                    let d = |side: usize| expected_bin(&dist[side * level.bins..(side + 1) * level.bins]) * stride;
                    [
                        (cx - d(0)).clamp(0.0, w),
                        (cy - d(1)).clamp(0.0, h),
                        (cx + d(2)).clamp(0.0, w),
                        (cy + d(3)).clamp(0.0, h),
                    ]
                });
                out.push(Candidate { class, score, bbox });
            }
        }
    }
    out
}

/// `sum_j j * softmax(logits)_j`: the distance, in cells, a distribution
/// predicts.
fn expected_bin(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut total, mut weighted) = (0.0f32, 0.0f32);
    for (j, &l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        total += e;
        weighted += j as f32 * e;
    }
    if total > 0.0 {
        weighted / total
    } else {
        0.0
    }
}

/// Per-class non-maximum suppression: highest score first, a box is dropped
/// when it overlaps a kept box of its class by more than `iou_threshold`.
/// Returns at most `max_detections`, highest score first.
fn nms(mut candidates: Vec<Candidate>, iou_threshold: f32, max_detections: usize) -> Vec<Candidate> {
    // Stable: equal scores keep their decode order, so results are repeatable.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(NMS_PRE);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() >= max_detections {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class != c.class || iou(&k.bbox, &c.bbox) <= iou_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes; 0 when both are empty.
fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Numerically stable softmax (the maximum is subtracted first).
fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0f32;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        total += *x;
    }
    if total > 0.0 && total.is_finite() {
        for x in v.iter_mut() {
            *x /= total;
        }
    }
}

/// Indices of the `k` highest scores, highest first; ties by lower index.
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(idx.len());
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx.truncate(k);
    idx
}

/// The JPEG decoder fills a truncated file's missing rows with grey and
/// reports success; a half-written frame must fail instead of giving wrong
/// detections. A complete JPEG ends with the end-of-image marker `FF D9`
/// (possibly followed by a little padding or trailing metadata).
fn check_complete_jpeg(bytes: &[u8]) -> Result<(), ItemError> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let tail = &bytes[bytes.len().saturating_sub(64 * 1024)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(ItemError::invalid(
            "cannot decode image: truncated JPEG (no end-of-image marker)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use ::image::{DynamicImage, ImageFormat, Rgb};
    use sluice_core::TensorInfo;

    use super::*;

    fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut out, format)
            .expect("encode");
        out.into_inner()
    }

    fn png(img: &RgbImage) -> Vec<u8> {
        encode(img, ImageFormat::Png)
    }

    fn classification() -> ImagePostprocess {
        ImagePostprocess::Classification {
            labels: None,
            output: None,
            softmax: true,
            top_k: 3,
        }
    }

    fn spec(size: [u32; 2], resize: ResizeMode, layout: Layout, channels: ChannelOrder) -> ImageSpec {
        ImageSpec {
            input: "x".into(),
            size,
            resize,
            layout,
            channels,
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            max_pixels: sluice_core::spec::DEFAULT_MAX_PIXELS,
            postprocess: classification(),
        }
    }

    fn info(name: &str, shape: &[Option<usize>]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: shape.to_vec(),
        }
    }

    /// A graph whose input fits `spec` and whose outputs are `outputs`.
    fn signature(spec: &ImageSpec, outputs: Vec<TensorInfo>) -> ModelSignature {
        let [w, h] = spec.size.map(|d| Some(d as usize));
        let shape = match spec.layout {
            Layout::Nchw => [None, Some(3), h, w],
            Layout::Nhwc => [None, h, w, Some(3)],
        };
        ModelSignature {
            inputs: vec![info(&spec.input, &shape)],
            outputs,
        }
    }

    fn processor(spec: &ImageSpec) -> ImageProcessor {
        ImageProcessor::with_labels(
            spec,
            Vec::new(),
            &signature(spec, vec![info("probs", &[None, Some(3)])]),
        )
        .expect("processor")
    }

    fn prepare(p: &ImageProcessor, img: &RgbImage) -> (Tensor, ImageMeta) {
        let prepared = p.preprocess(Input::Bytes(png(img))).expect("preprocess");
        assert_eq!(prepared.len, 1);
        let Meta::Image(meta) = prepared.meta else {
            panic!("image meta expected")
        };
        let tensor = prepared.tensors.get("x").expect("input tensor").clone();
        (tensor, meta)
    }

    fn floats(t: &Tensor) -> &[f32] {
        match &t.data {
            TensorData::F32(v) => v,
            other => panic!("f32 expected, got {}", other.dtype()),
        }
    }

    /// 2x2 picture with distinct channel values 1..=12, row-major RGB.
    fn counting() -> RgbImage {
        RgbImage::from_fn(2, 2, |x, y| {
            let base = ((y * 2 + x) * 3) as u8;
            Rgb([base + 1, base + 2, base + 3])
        })
    }

    #[test]
    fn nchw_and_nhwc_layouts_rgb_and_bgr() {
        let img = counting();
        let cases = [
            (
                Layout::Nchw,
                ChannelOrder::Rgb,
                vec![3, 2, 2],
                [1, 4, 7, 10, 2, 5, 8, 11, 3, 6, 9, 12],
            ),
            (
                Layout::Nhwc,
                ChannelOrder::Rgb,
                vec![2, 2, 3],
                [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            ),
            (
                Layout::Nchw,
                ChannelOrder::Bgr,
                vec![3, 2, 2],
                [3, 6, 9, 12, 2, 5, 8, 11, 1, 4, 7, 10],
            ),
            (
                Layout::Nhwc,
                ChannelOrder::Bgr,
                vec![2, 2, 3],
                [3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10],
            ),
        ];
        for (layout, channels, shape, want) in cases {
            for resize in [ResizeMode::Stretch, ResizeMode::Letterbox] {
                let p = processor(&spec([2, 2], resize, layout, channels));
                let (t, meta) = prepare(&p, &img);
                assert_eq!(t.shape, shape, "{layout:?} {channels:?}");
                let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                assert_eq!(floats(&t), want.as_slice(), "{layout:?} {channels:?} {resize:?}");
                assert_eq!(
                    (meta.scale_x, meta.scale_y, meta.pad_x, meta.pad_y),
                    (1.0, 1.0, 0.0, 0.0)
                );
            }
        }
    }

    #[test]
    fn normalisation_is_exact_and_mean_std_follow_channel_order() {
        let mut s = spec([2, 2], ResizeMode::Stretch, Layout::Nhwc, ChannelOrder::Bgr);
        s.scale = 1.0 / 255.0;
        s.mean = [0.406, 0.456, 0.485];
        s.std = [0.225, 0.224, 0.229];
        let (t, _) = prepare(&processor(&s), &counting());
        let v = floats(&t);
        let src = counting();
        for (i, px) in src.pixels().enumerate() {
            for c in 0..3 {
                let colour = f32::from(px.0[2 - c]); // BGR: tensor channel 0 is blue
                let want = (colour * s.scale - s.mean[c]) / s.std[c];
                assert_eq!(v[i * 3 + c], want, "pixel {i} channel {c}");
            }
        }
    }

    #[test]
    fn stretch_fills_the_input() {
        let img = RgbImage::from_pixel(8, 4, Rgb([200, 100, 50]));
        let p = processor(&spec([4, 4], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb));
        let (t, meta) = prepare(&p, &img);
        assert_eq!(t.shape, vec![3, 4, 4]);
        let v = floats(&t);
        assert!(v[..16].iter().all(|x| *x == 200.0), "{v:?}");
        assert!(v[16..32].iter().all(|x| *x == 100.0));
        assert!(v[32..].iter().all(|x| *x == 50.0));
        assert_eq!(
            meta,
            ImageMeta {
                width: 8,
                height: 4,
                scale_x: 0.5,
                scale_y: 1.0,
                pad_x: 0.0,
                pad_y: 0.0
            }
        );
        assert_eq!(meta.to_original(4.0, 2.0), (8.0, 2.0));
        assert_eq!(meta.to_original(2.0, 1.0), (4.0, 1.0));
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads_centred_with_black() {
        let img = RgbImage::from_pixel(8, 4, Rgb([200, 100, 50]));
        let mut s = spec([4, 4], ResizeMode::Letterbox, Layout::Nhwc, ChannelOrder::Rgb);
        s.mean = [10.0, 10.0, 10.0];
        let (t, meta) = prepare(&processor(&s), &img);
        assert_eq!(t.shape, vec![4, 4, 3]);
        assert_eq!(
            meta,
            ImageMeta {
                width: 8,
                height: 4,
                scale_x: 0.5,
                scale_y: 0.5,
                pad_x: 0.0,
                pad_y: 1.0
            }
        );
        let v = floats(&t);
        for y in 0..4 {
            let row = &v[y * 12..(y + 1) * 12];
            let want: [f32; 3] = if (1..3).contains(&y) {
                [190.0, 90.0, 40.0]
            } else {
                [-10.0; 3]
            };
            for px in row.chunks_exact(3) {
                assert_eq!(px, want, "row {y}");
            }
        }
        // Model pixel (2, 2) is the centre of the picture; padding maps to the edge.
        assert_eq!(meta.to_original(2.0, 2.0), (4.0, 2.0));
        assert_eq!(meta.to_original(0.0, 0.0), (0.0, 0.0));
        assert_eq!(meta.to_original(4.0, 4.0), (8.0, 4.0));

        // Portrait: padded left and right.
        let tall = RgbImage::from_pixel(3, 12, Rgb([255, 255, 255]));
        let p = processor(&spec([8, 8], ResizeMode::Letterbox, Layout::Nchw, ChannelOrder::Rgb));
        let (t, meta) = prepare(&p, &tall);
        assert_eq!(
            (meta.scale_x, meta.scale_y, meta.pad_x, meta.pad_y),
            (2.0 / 3.0, 2.0 / 3.0, 3.0, 0.0)
        );
        let v = floats(&t);
        for y in 0..8 {
            let row: Vec<f32> = v[y * 8..(y + 1) * 8].to_vec();
            assert_eq!(row, vec![0.0, 0.0, 0.0, 255.0, 255.0, 0.0, 0.0, 0.0], "row {y}");
        }
        assert_eq!(meta.to_original(4.0, 4.0), (1.5, 6.0));
    }

    #[test]
    fn decodes_jpeg() {
        let img = RgbImage::from_pixel(16, 8, Rgb([0, 128, 255]));
        let p = processor(&spec([8, 8], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb));
        let prepared = p
            .preprocess(Input::Bytes(encode(&img, ImageFormat::Jpeg)))
            .expect("jpeg");
        assert_eq!(prepared.tensors["x"].shape, vec![3, 8, 8]);
        assert!(matches!(
            prepared.meta,
            Meta::Image(ImageMeta {
                width: 16,
                height: 8,
                ..
            })
        ));
    }

    #[test]
    fn truncated_jpeg_fails_instead_of_decoding_grey_rows() {
        let img = RgbImage::from_fn(64, 64, |x, y| Rgb([(x * 4) as u8, (y * 4) as u8, 77]));
        let p = processor(&spec([8, 8], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        let half = jpeg[..jpeg.len() / 2].to_vec();
        let err = p.preprocess(Input::Bytes(half)).expect_err("truncated");
        assert_eq!(err.kind, ItemErrorKind::InvalidInput);
        assert!(err.message.contains("truncated JPEG"), "{}", err.message);
        p.preprocess(Input::Bytes(jpeg)).expect("the complete file decodes");
    }

    #[test]
    fn bad_inputs_are_invalid_input() {
        let p = processor(&spec([4, 4], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb));
        for bytes in [
            b"not an image at all".to_vec(),
            Vec::new(),
            png(&counting())[..20].to_vec(),
        ] {
            let err = p.preprocess(Input::Bytes(bytes)).expect_err("undecodable");
            assert_eq!(err.kind, ItemErrorKind::InvalidInput);
            assert!(err.message.contains("cannot decode"), "{}", err.message);
        }
        let err = p.preprocess(Input::Text("dog.jpg".into())).expect_err("text");
        assert_eq!(err.kind, ItemErrorKind::InvalidInput);
        assert!(
            err.message.contains("bytes") && err.message.contains("text"),
            "{}",
            err.message
        );
    }

    #[test]
    fn graph_must_have_the_input_with_a_fitting_shape() {
        let s = spec([4, 4], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb);
        let mut sig = signature(&s, vec![]);
        sig.inputs = vec![
            info("images", &[None, Some(3), Some(4), Some(4)]),
            info("scale", &[None]),
        ];
        let Err(ProcessingError::Config(msg)) = ImageProcessor::with_labels(&s, vec![], &sig) else {
            panic!("config error expected")
        };
        assert!(msg.contains("'x'") && msg.contains("images, scale"), "{msg}");

        let nhwc = spec([4, 4], ResizeMode::Stretch, Layout::Nhwc, ChannelOrder::Rgb);
        let Err(ProcessingError::Config(msg)) = ImageProcessor::with_labels(&nhwc, vec![], &signature(&s, vec![]))
        else {
            panic!("config error expected")
        };
        assert!(msg.contains("layout"), "{msg}");

        // Unknown rank: nothing to check.
        let mut sig = signature(&s, vec![]);
        sig.inputs[0].shape.clear();
        assert!(ImageProcessor::with_labels(&s, vec![], &sig).is_ok());
    }

    fn cand(class: usize, score: f32, bbox: [f32; 4]) -> Candidate {
        Candidate { class, score, bbox }
    }

    #[test]
    fn nms_suppresses_overlaps_within_a_class_only() {
        let a = cand(0, 0.9, [0.0, 0.0, 10.0, 10.0]);
        let a_overlap = cand(0, 0.8, [1.0, 1.0, 11.0, 11.0]); // IoU 81/119 = 0.68
        let a_far = cand(0, 0.7, [20.0, 20.0, 30.0, 30.0]);
        let b_overlap = cand(1, 0.85, [1.0, 1.0, 11.0, 11.0]);
        let kept = nms(vec![a_far, a_overlap, b_overlap, a], 0.6, 10);
        assert_eq!(kept, vec![a, b_overlap, a_far]);
        // A looser threshold keeps the overlapping box.
        assert_eq!(nms(vec![a, a_overlap], 0.7, 10), vec![a, a_overlap]);
        // Capped at max_detections, best first.
        assert_eq!(nms(vec![a_far, a, b_overlap], 0.6, 2), vec![a, b_overlap]);
        assert!((iou(&a.bbox, &a_overlap.bbox) - 81.0 / 119.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0; 4], &[0.0; 4]), 0.0);
    }

    fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::F32(v)).expect("tensor")
    }

    fn classifier(labels: Vec<String>, softmax: bool, top_k: usize) -> ImageProcessor {
        let mut s = spec([2, 2], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb);
        s.postprocess = ImagePostprocess::Classification {
            labels: None,
            output: Some("logits".into()),
            softmax,
            top_k,
        };
        let sig = signature(
            &s,
            vec![info("features", &[None, Some(8)]), info("logits", &[None, Some(4)])],
        );
        ImageProcessor::with_labels(&s, labels, &sig).expect("classifier")
    }

    #[test]
    fn classification_softmax_top_k() {
        let p = classifier(vec!["cat".into(), "dog".into(), "fox".into()], true, 3);
        let mut out = NamedTensors::new();
        out.insert("features".into(), tensor(&[8], vec![0.0; 8]));
        // Large logits: a naive softmax would overflow.
        out.insert("logits".into(), tensor(&[1, 4], vec![1000.0, 1002.0, 999.0, 1002.0]));
        let Output::Classes(classes) = p.postprocess(out, &Meta::None).expect("classes") else {
            panic!("classes expected")
        };
        let e = [(-2.0f32).exp(), 1.0, (-3.0f32).exp(), 1.0];
        let total: f32 = e.iter().sum();
        let got: Vec<(usize, &str)> = classes.iter().map(|l| (l.class_id, l.label.as_str())).collect();
        // Ties go to the lower index; class 3 has no label and is named by its index.
        assert_eq!(got, vec![(1, "dog"), (3, "3"), (0, "cat")]);
        for l in &classes {
            assert!((l.score - e[l.class_id] / total).abs() < 1e-6, "{l:?}");
        }

        let raw = classifier(vec![], false, 10);
        let mut out = NamedTensors::new();
        out.insert("logits".into(), tensor(&[4], vec![0.1, 0.4, 0.3, 0.2]));
        let Output::Classes(classes) = raw.postprocess(out, &Meta::None).expect("classes") else {
            panic!("classes expected")
        };
        let got: Vec<(usize, f32)> = classes.iter().map(|l| (l.class_id, l.score)).collect();
        assert_eq!(got, vec![(1, 0.4), (2, 0.3), (3, 0.2), (0, 0.1)]);
    }

    #[test]
    fn classification_output_errors() {
        let p = classifier(vec![], true, 1);
        let mut out = NamedTensors::new();
        out.insert("features".into(), tensor(&[2], vec![0.0; 2]));
        let err = p.postprocess(out.clone(), &Meta::None).expect_err("missing");
        assert_eq!(err.kind, ItemErrorKind::Inference);
        assert!(
            err.message.contains("'logits'") && err.message.contains("features"),
            "{}",
            err.message
        );
        out.insert("logits".into(), tensor(&[2, 2], vec![0.0; 4]));
        let err = p.postprocess(out, &Meta::None).expect_err("shape");
        assert!(err.message.contains("[2, 2]"), "{}", err.message);

        let mut s = spec([2, 2], ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb);
        s.postprocess = ImagePostprocess::Classification {
            labels: None,
            output: Some("nope".into()),
            softmax: true,
            top_k: 1,
        };
        let sig = signature(&s, vec![info("logits", &[None, Some(4)])]);
        let Err(ProcessingError::Config(msg)) = ImageProcessor::with_labels(&s, vec![], &sig) else {
            panic!("config error expected")
        };
        assert!(msg.contains("'nope'") && msg.contains("logits"), "{msg}");
    }

    #[test]
    fn top_k_and_softmax_edges() {
        assert_eq!(top_k(&[0.5, 0.9, 0.1], 5), vec![1, 0, 2]);
        assert_eq!(top_k(&[0.5, 0.9, 0.1, 0.9], 2), vec![1, 3]);
        let mut v = vec![0.0f32, 0.0];
        softmax_in_place(&mut v);
        assert_eq!(v, vec![0.5, 0.5]);
    }

    const SIZE: [u32; 2] = [64, 64];
    const CLASSES: usize = 3;
    const BINS: usize = 8;

    fn nanodet(labels: Vec<String>, outputs: Vec<TensorInfo>) -> Result<ImageProcessor, ProcessingError> {
        let mut s = spec(SIZE, ResizeMode::Stretch, Layout::Nchw, ChannelOrder::Rgb);
        s.postprocess = ImagePostprocess::Nanodet {
            labels: "labels.txt".into(),
            score_threshold: 0.35,
            iou_threshold: 0.6,
            max_detections: 100,
            strides: vec![8, 16, 32],
        };
        ImageProcessor::with_labels(&s, labels, &signature(&s, outputs))
    }

    fn labels() -> Vec<String> {
        vec!["person".into(), "bicycle".into(), "car".into()]
    }

    /// Head outputs of a 64x64 input: 64, 16 and 4 cells; all scores zero and
    /// all distributions flat, except what `edit` writes into stride 16's.
    fn fake_head(edit: impl FnOnce(&mut [f32], &mut [f32])) -> NamedTensors {
        let mut out = NamedTensors::new();
        // Names deliberately in no useful order.
        let names = [
            ("Identity_3:0", "Identity:0"),
            ("Identity_5:0", "Identity_1:0"),
            ("Identity_4:0", "Identity_2:0"),
        ];
        let mut edit = Some(edit);
        for (&cells, (score_name, box_name)) in [64usize, 16, 4].iter().zip(names) {
            let mut scores = vec![0.0; cells * CLASSES];
            let mut boxes = vec![0.0; cells * 4 * BINS];
            if cells == 16 {
                if let Some(edit) = edit.take() {
                    edit(&mut scores, &mut boxes);
                }
            }
            out.insert(score_name.into(), tensor(&[1, cells, CLASSES], scores));
            out.insert(box_name.into(), tensor(&[1, cells, 4 * BINS], boxes));
        }
        out
    }

    /// Sets the distribution of `side` of `cell` to put equal mass on `bins`.
    fn put(boxes: &mut [f32], cell: usize, side: usize, bins: &[usize]) {
        let d = &mut boxes[cell * 4 * BINS + side * BINS..][..BINS];
        d.fill(-100.0);
        for b in bins {
            d[*b] = 5.0;
        }
    }

    #[test]
    fn nanodet_decodes_a_known_cell_to_original_pixels() {
        let sig_outputs = vec![
            info("Identity:0", &[None, Some(16), Some(4 * BINS)]),
            info("Identity_3:0", &[None, Some(16), Some(CLASSES)]),
            info("Identity_1:0", &[None, Some(64), Some(4 * BINS)]),
            info("Identity_4:0", &[None, Some(64), Some(CLASSES)]),
            info("Identity_2:0", &[None, Some(4), Some(4 * BINS)]),
            info("Identity_5:0", &[None, Some(4), Some(CLASSES)]),
        ];
        let p = nanodet(labels(), sig_outputs).expect("nanodet");
        // Stride 16, 4x4 grid: cell 6 is column 2, row 1, centred at (40, 24).
        let outputs = fake_head(|scores, boxes| {
            scores[6 * CLASSES + 2] = 0.9; // car
            scores[6 * CLASSES + 1] = 0.5; // bicycle, same box
            scores[6 * CLASSES] = 0.3; // person, below the threshold
            put(boxes, 6, 0, &[1]); // left: 1 cell = 16
            put(boxes, 6, 1, &[0, 1]); // top: 0.5 cell = 8
            put(boxes, 6, 2, &[1]); // right: 16
            put(boxes, 6, 3, &[3]); // bottom: 48, past the edge: clamped to 64
        });
        // The picture was 128x256, stretched to 64x64.
        let meta = Meta::Image(ImageMeta {
            width: 128,
            height: 256,
            scale_x: 0.5,
            scale_y: 0.25,
            pad_x: 0.0,
            pad_y: 0.0,
        });
        let Output::Detections(dets) = p.postprocess(outputs, &meta).expect("detections") else {
            panic!("detections expected")
        };
        assert_eq!(dets.len(), 2, "{dets:?}");
        assert_eq!(
            (dets[0].class_id, dets[0].label.as_str(), dets[0].score),
            (2, "car", 0.9)
        );
        assert_eq!(
            (dets[1].class_id, dets[1].label.as_str(), dets[1].score),
            (1, "bicycle", 0.5)
        );
        // Model box (24, 16, 56, 64) -> original (48, 64, 112, 256).
        for d in &dets {
            for (got, want) in d.bbox.iter().zip([48.0, 64.0, 112.0, 256.0]) {
                assert!((got - want).abs() < 1e-3, "{:?}", d.bbox);
            }
        }
    }

    #[test]
    fn nanodet_flat_distribution_and_unlabelled_class() {
        let p = nanodet(vec!["person".into()], vec![]).expect("nanodet");
        let outputs = fake_head(|scores, _| scores[5 * CLASSES + 2] = 0.8); // column 1, row 1
        let meta = Meta::Image(ImageMeta {
            width: 64,
            height: 64,
            scale_x: 1.0,
            scale_y: 1.0,
            pad_x: 0.0,
            pad_y: 0.0,
        });
        let Output::Detections(dets) = p.postprocess(outputs, &meta).expect("detections") else {
            panic!("detections expected")
        };
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].label, "2");
        // Flat over 8 bins: 3.5 cells = 56 px each side of (24, 24), clamped.
        assert_eq!(dets[0].bbox, [0.0, 0.0, 64.0, 64.0]);
    }

    #[test]
    fn nanodet_shape_errors_are_inference_errors() {
        let p = nanodet(labels(), vec![]).expect("nanodet");
        let meta = Meta::Image(ImageMeta {
            width: 64,
            height: 64,
            scale_x: 1.0,
            scale_y: 1.0,
            pad_x: 0.0,
            pad_y: 0.0,
        });
        let mut missing = fake_head(|_, _| {});
        missing.remove("Identity_2:0");
        let err = p.postprocess(missing, &meta).expect_err("missing level");
        assert_eq!(err.kind, ItemErrorKind::Inference);
        assert!(
            err.message.contains("stride 32") && err.message.contains("found 1"),
            "{}",
            err.message
        );

        let mut extra = fake_head(|_, _| {});
        extra.insert("extra".into(), tensor(&[1, 7, 2], vec![0.0; 14]));
        let err = p.postprocess(extra, &meta).expect_err("extra output");
        assert!(err.message.contains("'extra'"), "{}", err.message);

        let mut cube = fake_head(|_, _| {});
        cube.insert(
            "Identity:0".into(),
            tensor(&[2, 16, 4 * BINS], vec![0.0; 32 * 4 * BINS]),
        );
        let err = p.postprocess(cube, &meta).expect_err("batch of two");
        assert!(err.message.contains("Identity:0"), "{}", err.message);

        // Both 4 columns wide and neither matches the labels: ambiguous.
        let shapes = [("a", 16, 4), ("b", 16, 8)];
        let err = pair_levels(&shapes, [16, 16], &[4], 80).expect_err("ambiguous");
        assert!(err.contains("cannot tell"), "{err}");
        // Scores found by the labels count, boxes by elimination.
        let levels = pair_levels(&[("b", 16, 44), ("s", 16, 80)], [16, 16], &[4], 80).expect("paired");
        assert_eq!(
            (levels[0].scores, levels[0].boxes, levels[0].bins, levels[0].grid_width),
            (1, 0, 11, 4)
        );
        // An empty labels file must not make a zero-width output the scores.
        let err = pair_levels(&[("b", 16, 44), ("s", 16, 0)], [16, 16], &[4], 0).expect_err("no classes");
        assert!(err.contains("no classes"), "{err}");
    }

    #[test]
    fn nanodet_static_outputs_are_checked_against_the_size() {
        // Outputs of a 416x416 NanoDet-m while the spec says 64x64.
        let outputs = [2704usize, 676, 169]
            .iter()
            .flat_map(|c| {
                [
                    info("s", &[None, Some(*c), Some(80)]),
                    info("b", &[None, Some(*c), Some(44)]),
                ]
            })
            .collect();
        let Err(ProcessingError::Config(msg)) = nanodet(labels(), outputs) else {
            panic!("config error expected")
        };
        assert!(msg.contains("stride 8") && msg.contains("64 cells"), "{msg}");
        // Dynamic output shapes are resolved per item instead.
        assert!(nanodet(labels(), vec![info("s", &[None, None, Some(80)])]).is_ok());
    }
}
