//! Sluice's input and output layer: one reader for every place inputs come
//! from, and one [`Sink`] trait for every place results go to (see
//! [`open_sink`]: a JSONL file, stdout, or a folder of rolling parts with a
//! manifest).
//!
//! `sluice run`, `sluice bench`, `sluice jobs submit` and the server's
//! `source` jobs all read through [`LocalSource`], so a file gives the same
//! keys and the same per-item errors wherever it is used. A source is a file
//! (JSONL, CSV, Parquet or plain lines, told apart by its extension), a folder or a
//! glob (one file per input, such as images). Records come out one at a time
//! ([`Records`], a blocking iterator) or through a small bounded channel
//! ([`LocalSource::stream`]): memory stays flat for any input size.
//!
//! # Keys and numbering (the same everywhere)
//!
//! - **JSONL** (`.jsonl`, `.ndjson`, `.json`): one JSON value a line. The key
//!   is the record's `id` (or `key`) field, a string or a number; without one
//!   it is the line number. Line numbers are **physical**: the first line of
//!   the file is 1, and blank lines are skipped but counted, so a key or a
//!   message points at the right line in an editor. The value is the first
//!   of the fields `value`, `text`, `base64`, `tensor`, `input` that the
//!   record has (other fields are ignored), or the field named by
//!   [`Fields::value`]; a line that is not an object is the value itself.
//! - **CSV** (`.csv`, with a header row): the key is the `id` (or `key`)
//!   column, else the row number, where row 1 is the first row after the
//!   header. The value is the `text` column, or the one [`Fields::value`]
//!   names.
//! - **Parquet** (`.parquet`): one input a row, read a row group at a time
//!   in batches of 1024 rows (only the columns used are decoded). The key is
//!   the [`Fields::id`] column, else `id` or `key` (strings or integers; a
//!   null is the row number), else the row number, where row 1 is the first
//!   row. The value is the [`Fields::value`] column, else the first of
//!   `value`, `text`, `base64`, `tensor`, `input` the file has: a string
//!   column is text (JSON for a tensor model; base64 bytes when the column
//!   is `base64`), a binary column bytes, a list column of numbers a JSON
//!   tensor. A null value fails alone. A file read with
//!   [`Want::Bytes`] is still a table, not one input.
//! - **Plain lines** (any other extension): one input a line, keyed by its
//!   physical line number.
//! - **Files** (a folder, or a glob): one input per regular file, in name
//!   order. The key is the path relative to the folder, or for a glob the
//!   path as it matched.
//!
//! A line or file that cannot be read as an input (bad JSON, not UTF-8, a
//! missing field, a file larger than the limit, a link that leaves the
//! allowed roots) becomes a record whose value is the error: it fails alone.
//! Only a source that cannot be read at all is a [`SourceError`].
//!
//! # Kept columns
//!
//! [`Fields::keep`] names input columns to copy beside each result
//! ([`Record::keep`]): JSONL fields as they are (the key and value fields
//! may be kept too), CSV columns as strings, Parquet columns as JSON
//! (strings, numbers, booleans, lists as arrays, structs as objects, bytes
//! as base64, dates and times in ISO 8601). Every record, failed ones
//! included, then keeps exactly those columns in that order, `null` where
//! it has none. A CSV or Parquet column that the header or schema lacks is a
//! [`SourceError`]; a source without columns is [`SourceError::NoColumns`].

mod confine;
mod local;
mod object;
mod parquet_source;
mod sink;
pub mod summary;
mod table;
mod target;
mod value;
pub mod video;

pub use confine::{open_confined, read_confined, ReadRefusal};
pub use local::{LocalSource, Records};
pub use object::{is_object_uri, ObjectSource, READS_IN_FLIGHT};
pub use sink::{
    open_sink, Counts, Ending, FileSink, Format, JsonlSink, Outcome, PartInfo, PartsOptions, PartsSink, PartsState,
    ResultRow, Sink, SinkError, SinkInfo, MANIFEST,
};
pub use table::{ParquetTable, BATCH_ROWS, ROW_GROUP_ROWS};
pub use target::Target;
pub use value::{json_record, value_from_json};
pub use video::{Sampling, VideoInfo, VideoInfos, VideoOptions, VideoSource};

use std::path::PathBuf;

use sluice_core::Input;

/// One input read from a source: its key, and the input or why it could not
/// be read (that input fails alone).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The input's key (see the crate docs for the rules).
    pub key: String,
    /// The input, or a message that says why it could not be read.
    pub input: Result<Input, String>,
    /// The input columns to copy into the result row ([`Fields::keep`]),
    /// by name; `None` when none are asked for.
    pub keep: Option<Kept>,
}

/// Input columns kept beside a result (SageMaker's JoinSource): column
/// name to value, for the columns [`Fields::keep`] names; a column the
/// record lacks is `null`. Sinks write them in the name order of the map
/// (alphabetical).
pub type Kept = serde_json::Map<String, serde_json::Value>;

/// What the consumer of a source takes, which decides how a value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Text (a tokenizer-based model): values must be strings.
    Text,
    /// Encoded bytes, such as images: files, or `base64` values.
    Bytes,
    /// JSON tensors: any JSON value.
    Json,
    /// Whatever the value's form says (jobs, whose model decides later):
    /// a string is text, `{"text": ..}` text, `{"base64": ..}` bytes,
    /// `{"tensor": ..}` or any other array or object a JSON tensor.
    Any,
}

/// Which fields of JSONL records and CSV rows hold the key and the value.
/// `None` means the default rules of the crate docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// The key field or column.
    pub id: Option<String>,
    /// The value field or column.
    pub value: Option<String>,
    /// Input columns (JSONL fields, CSV columns, Parquet columns) copied
    /// into each result row ([`Record::keep`]); empty for none.
    pub keep: Vec<String>,
}

/// How a source is read.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// What the values are read as.
    pub want: Want,
    /// Key and value fields.
    pub fields: Fields,
    /// When set, every file is opened only if it lies under one of these
    /// (canonical) folders once its links are resolved ([`open_confined`]).
    pub roots: Option<Vec<PathBuf>>,
    /// Files larger than this many bytes fail alone without being read.
    pub max_file_bytes: Option<usize>,
    /// How video files are read ([`video`]); `None`: every frame, at the
    /// video's size. A source is read as video when all its files have a
    /// video extension.
    pub video: Option<VideoOptions>,
}

impl SourceOptions {
    /// Default fields, no roots, no size limit.
    pub fn new(want: Want) -> SourceOptions {
        SourceOptions {
            want,
            fields: Fields::default(),
            roots: None,
            max_file_bytes: None,
            video: None,
        }
    }
}

/// Why a source cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Nothing at the given path.
    #[error("input {0} not found (give a file, a folder or a glob like 'frames/*.jpg')")]
    NotFound(String),
    /// A glob pattern that does not parse.
    #[error("invalid glob {pattern}: {source}")]
    Glob {
        /// The pattern.
        pattern: String,
        /// Why it does not parse.
        #[source]
        source: glob::PatternError,
    },
    /// A folder or glob without a single file.
    #[error("no files found at {0}")]
    NoFiles(String),
    /// The source cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source may not be opened (see [`open_confined`]).
    #[error("cannot open {path}: {why}")]
    Refused {
        /// The file.
        path: String,
        /// Why.
        why: ReadRefusal,
    },
    /// An object-store URI that cannot be opened or read: a bad URI, a
    /// missing bucket, a store that refuses or cannot be reached. The
    /// message is the store's answer; it never holds credentials.
    #[error("cannot read {uri}: {message}")]
    Object {
        /// The URI.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// A CSV file without a header row, or without the value column or a
    /// kept column.
    #[error("CSV {path}: {message}")]
    Csv {
        /// The file.
        path: String,
        /// What is wrong with its header.
        message: String,
    },
    /// A Parquet file or object that is not one (bad magic, a corrupt
    /// footer), that lacks the value column, a named key column or a kept
    /// column, whose value column holds no input the model takes, or whose
    /// read stopped midway.
    #[error("Parquet {path}: {message}")]
    Parquet {
        /// The file or URI.
        path: String,
        /// What is wrong, naming the column when one is.
        message: String,
    },
    /// Video that cannot be read at all: no FFmpeg, bad sampling options,
    /// video asked of a model that does not take images.
    #[error("video: {0}")]
    Decoder(String),
    /// Kept columns ([`Fields::keep`]) asked of a source without columns:
    /// plain lines, a folder, a glob, a prefix, or a file read whole.
    #[error("{0}: --keep-columns needs a JSONL, CSV or Parquet input")]
    NoColumns(String),
    /// A kept column that cannot be one: an empty name, or the name of a
    /// field every result row has ([`RESULT_FIELDS`]).
    #[error("--keep-columns: {0}")]
    BadKeep(String),
}

/// The fields of every result row, which a kept column may not be named
/// after.
pub const RESULT_FIELDS: [&str; 5] = ["id", "output", "error", "error_code", "error_message"];

impl Fields {
    /// Checks the kept columns: none empty, none named after a field of
    /// every result row ([`RESULT_FIELDS`]). [`Source::open`] calls it.
    pub fn check_keep(&self) -> Result<(), SourceError> {
        if self.keep.iter().any(String::is_empty) {
            return Err(SourceError::BadKeep(
                "an empty column name (two commas, or a comma at an end)".into(),
            ));
        }
        if let Some(name) = self.keep.iter().find(|c| RESULT_FIELDS.contains(&c.as_str())) {
            return Err(SourceError::BadKeep(format!(
                "'{name}' is a field of every result row; keep another column"
            )));
        }
        Ok(())
    }
}

/// A source anywhere: a local path ([`LocalSource`]) or an object-store URI
/// ([`ObjectSource`]), told apart by [`is_object_uri`].
#[derive(Debug)]
pub enum Source {
    /// A file, folder or glob on this machine.
    Local(LocalSource),
    /// An object or prefix in an object store.
    Object(ObjectSource),
    /// Video files, decoded into frames by FFmpeg.
    Video(VideoSource),
}

impl Source {
    /// Opens `spec`, a local path or an object-store URI.
    pub fn open(spec: &str, opts: SourceOptions) -> Result<Source, SourceError> {
        opts.fields.check_keep()?;
        if is_object_uri(spec) {
            return match object::video_objects(spec)? {
                Some(files) => Source::video(spec, files, opts),
                None => ObjectSource::open(spec, opts).map(Source::Object),
            };
        }
        let local = LocalSource::open(spec, opts.clone());
        // Video: files with a video extension, or any files once video
        // options were given. Kept columns do not apply (frames have their own).
        let files = match &local {
            Ok(l) => l.video_files(),
            Err(SourceError::NoColumns(_)) => LocalSource::open(
                spec,
                SourceOptions {
                    fields: Fields::default(),
                    ..opts.clone()
                },
            )
            .ok()
            .and_then(|l| l.video_files()),
            Err(_) => None,
        };
        match files {
            Some(files) => Source::video(spec, files, opts),
            None => local.map(Source::Local),
        }
    }

    /// A video source over `files` (local files or objects).
    fn video(spec: &str, files: Vec<(video::VideoFile, String)>, opts: SourceOptions) -> Result<Source, SourceError> {
        if !opts.fields.keep.is_empty() {
            return Err(SourceError::NoColumns(spec.to_owned()));
        }
        if !matches!(opts.want, Want::Bytes | Want::Any) {
            let takes = if opts.want == Want::Text {
                "text"
            } else {
                "JSON tensors"
            };
            return Err(SourceError::Decoder(format!(
                "{spec} is video; video frames go to image models (this model takes {takes})"
            )));
        }
        let video = opts.video.clone().unwrap_or_default();
        VideoSource::new(files, video, opts).map(Source::Video)
    }

    /// The number of records when it is known cheaply (local sources), for
    /// a progress bar; `None` for object stores, which are not read twice.
    pub fn count(&self) -> Result<Option<u64>, SourceError> {
        match self {
            Source::Local(s) => s.count().map(Some),
            Source::Object(_) | Source::Video(_) => Ok(None),
        }
    }

    /// The records, read as they are asked for (blocking).
    pub fn records(self) -> Result<Records, SourceError> {
        match self {
            Source::Local(s) => s.records(),
            Source::Object(s) => s.records(),
            Source::Video(s) => Ok(s.records()),
        }
    }

    /// The records through a channel of `capacity`, read on a thread of
    /// their own; a source that stops being readable ends with its error.
    pub fn stream(self, capacity: usize) -> tokio::sync::mpsc::Receiver<Result<Record, SourceError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        std::thread::spawn(move || {
            let records = match self.records() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            for r in records {
                let stop = r.is_err();
                if tx.blocking_send(r).is_err() || stop {
                    break;
                }
            }
        });
        rx
    }
}
