//! How the CLI opens its inputs: through `sluice-io`, the reader jobs use too,
//! with what the model's processing takes deciding how values are read.

use clap::Args;
use sluice_core::spec::ProcessingSpec;
use sluice_core::{FrameFit, Takes};
use sluice_io::{Fields, Record, Sampling, Source, SourceError, SourceOptions, VideoOptions, Want};
use tokio::sync::mpsc;

/// Records waiting between the reader thread and the model.
const READ_AHEAD: usize = 256;
/// Decoded frames waiting between the decoders and the model (each is a
/// picture of the model's size: a few hundred KB).
const FRAMES_AHEAD: usize = 8;

/// How video inputs are sampled and decoded (`sluice run`, `sluice frames`).
#[derive(Args, Debug, Clone, Default)]
pub struct VideoArgs {
    /// Video: sample this many frames per second of footage (0.0, 1/FPS, 2/FPS, ... seconds).
    #[arg(long, group = "sampling")]
    pub fps: Option<f64>,
    /// Video: take every N-th frame (0, N, 2N, ...).
    #[arg(long, group = "sampling", value_name = "N")]
    pub every: Option<u64>,
    /// Video: take only key frames (fast: the others are not decoded).
    #[arg(long, group = "sampling")]
    pub keyframes: bool,
    /// Video: how many videos are decoded at the same time (each by its own ffmpeg process).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub decoders: u64,
}

impl VideoArgs {
    /// Whether a sampling flag was given.
    pub fn sampling_given(&self) -> bool {
        self.fps.is_some() || self.every.is_some() || self.keyframes
    }

    /// The video options for frames fitted as `fit` says, checked.
    pub fn options(&self, fit: Option<FrameFit>) -> Result<VideoOptions, SourceError> {
        let sampling = match (self.fps, self.every, self.keyframes) {
            (Some(f), _, _) => Sampling::Fps(f),
            (_, Some(n), _) => Sampling::Every(n),
            (_, _, true) => Sampling::Keyframes,
            _ => Sampling::All,
        };
        sampling.check().map_err(SourceError::Decoder)?;
        Ok(VideoOptions {
            sampling,
            fit,
            decoders: usize::try_from(self.decoders).unwrap_or(1),
            ffmpeg: None,
        })
    }
}

/// What kind of payload the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Text,
    /// Image files.
    Image,
    /// JSON tensors.
    Tensor,
}

impl Kind {
    /// The kind a processing chain takes.
    pub fn of(p: &ProcessingSpec) -> Kind {
        match p.describe().takes {
            Takes::Text | Takes::Files => Kind::Text,
            Takes::Image { .. } => Kind::Image,
            Takes::Tensors => Kind::Tensor,
        }
    }

    fn want(self) -> Want {
        match self {
            Kind::Text => Want::Text,
            Kind::Image => Want::Bytes,
            Kind::Tensor => Want::Json,
        }
    }
}

/// Opens `spec` (a file, a folder, a glob, or an object-store URI such as
/// `s3://bucket/texts.jsonl` or `s3://bucket/images/`) for a model of `kind`; `id_field`
/// and `field` name the key and value fields of JSONL, CSV and Parquet records
/// (`id_field` "id" keeps the default rules, which also accept `key`), and
/// `keep` the input columns copied into each result row (`--keep-columns`;
/// empty for none). Kept columns asked of a source without columns, or
/// missing from a CSV header or a Parquet schema, are a [`SourceError`].
pub fn open(
    spec: &str,
    kind: Kind,
    id_field: &str,
    field: Option<&str>,
    keep: &[String],
) -> Result<Source, SourceError> {
    open_video(spec, kind, id_field, field, keep, None)
}

/// [`open`], with how videos among the inputs are decoded (`None`: every
/// frame at the video's size).
pub fn open_video(
    spec: &str,
    kind: Kind,
    id_field: &str,
    field: Option<&str>,
    keep: &[String],
    video: Option<VideoOptions>,
) -> Result<Source, SourceError> {
    let mut opts = SourceOptions::new(kind.want());
    opts.video = video;
    opts.fields = Fields {
        id: (id_field != "id").then(|| id_field.to_owned()),
        value: field.map(str::to_owned),
        keep: keep.to_vec(),
    };
    Source::open(spec, opts)
}

/// The source's records through a small bounded channel, read on a thread
/// of their own; an `Err` is the last item.
pub fn stream(source: Source) -> mpsc::Receiver<Result<Record, SourceError>> {
    let ahead = if matches!(source, Source::Video(_)) {
        FRAMES_AHEAD
    } else {
        READ_AHEAD
    };
    source.stream(ahead)
}
