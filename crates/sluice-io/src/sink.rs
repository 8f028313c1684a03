//! Sluice's output layer: where results go.
//!
//! A [`Sink`] takes results one at a time, push-style, between a
//! [`Sink::begin`] and a [`Sink::finish`] hook (the shape of ripgrep's
//! searcher sinks). Two sinks exist today:
//!
//! - [`JsonlSink`]: one JSON line per input on any writer (a file or
//!   stdout): `{"id": .., "output": ..}` or
//!   `{"id": .., "error": {"code": .., "message": ..}}`.
//! - [`PartsSink`]: a folder or an object-store prefix of rolling parts.
//!   Results go to `part-00000.jsonl` (or `.parquet`), `part-00001...`, a
//!   new part once one holds [`PartsOptions::max_part_bytes`]; failed inputs
//!   go to their own parts, `errors-00000.jsonl`, ...; [`Sink::finish`]
//!   writes `_manifest.json` (model, version, format, counts, parts). A part
//!   is written whole to a temporary file and then committed under its final
//!   name ([`Target`]: renamed locally, uploaded to a store), so a part
//!   visible under its final name is whole; `_manifest.json` comes last and
//!   marks the output as finished.
//! - [`FileSink`]: one file, JSONL or Parquet, committed whole at the end
//!   (a Parquet file locally, any file in an object store).
//!
//! Parquet output has typed columns (see [`ParquetTable`]). In JSONL and
//! Parquet alike, kept input columns (`--keep-columns`) are columns of the
//! row beside `id`.
//!
//! [`open_sink`] picks one from an `--output` argument.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::table::ParquetTable;
use crate::target::{io_err, Target};

/// The result of one input, as a sink receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultRow<'a> {
    /// The input's key.
    pub key: &'a str,
    /// The output or the error.
    pub outcome: Outcome<'a>,
    /// Input columns kept beside the result (`--keep-columns`), written
    /// as columns of the row.
    pub kept: Option<&'a crate::Kept>,
}

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The output, as the JSON text the processor produced (written as is).
    Ok(&'a str),
    /// The input failed.
    Failed {
        /// The error code (`invalid_input`, `inference`, ...).
        code: &'a str,
        /// What went wrong.
        message: &'a str,
    },
}

/// What the results are of, given to [`Sink::begin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkInfo {
    /// The model's name.
    pub model: String,
    /// The model's version.
    pub version: String,
}

/// How the run ended, given to [`Sink::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// Every input was read and has its row; false after an interruption or
    /// a source that could not be read to the end.
    pub complete: bool,
}

/// Counts of what a sink wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// All rows.
    pub total: u64,
    /// Rows with an output.
    pub ok: u64,
    /// Rows with an error.
    pub failed: u64,
}

/// Where results go: push-style, one row at a time.
pub trait Sink: Send {
    /// Called once before the first row.
    fn begin(&mut self, info: &SinkInfo) -> Result<(), SinkError>;
    /// One input's row.
    fn write(&mut self, row: &ResultRow<'_>) -> Result<(), SinkError>;
    /// Called once after the last row: flushes and closes what is open.
    fn finish(&mut self, ending: Ending) -> Result<Counts, SinkError>;
}

/// Why results cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or folder cannot be created or written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The output folder already holds results of an earlier run.
    #[error("output folder {path} already holds results ({found}): choose an empty folder or remove them")]
    NotEmpty {
        /// The folder.
        path: String,
        /// One of the files found.
        found: String,
    },
    /// An object store refused or failed a write (after retries), or the
    /// URI is not one. The message is the store's answer, never credentials.
    #[error("cannot write {uri}: {message}")]
    Object {
        /// The object or prefix.
        uri: String,
        /// What went wrong.
        message: String,
    },
    /// A row that cannot be written in the chosen format, or an output
    /// argument that does not fit it.
    #[error("{0}")]
    Format(String),
}

/// The file format of results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// Apache Parquet with typed columns ([`ParquetTable`]).
    Parquet,
}

impl Format {
    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// The format a file name's extension names, if any.
    pub fn of_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" => Ok(Format::Jsonl),
            "parquet" => Ok(Format::Parquet),
            other => Err(format!("unknown output format '{other}' (jsonl or parquet)")),
        }
    }
}

/// Writes one row as a JSON line.
fn write_line(out: &mut impl Write, row: &ResultRow<'_>) -> std::io::Result<()> {
    out.write_all(b"{\"id\":")?;
    serde_json::to_writer(&mut *out, row.key)?;
    for (name, value) in row.kept.into_iter().flatten() {
        out.write_all(b",")?;
        serde_json::to_writer(&mut *out, name)?;
        out.write_all(b":")?;
        serde_json::to_writer(&mut *out, value)?;
    }
    match row.outcome {
        Outcome::Ok(json) => {
            out.write_all(b",\"output\":")?;
            out.write_all(json.as_bytes())?;
        }
        Outcome::Failed { code, message } => {
            out.write_all(b",\"error\":{\"code\":")?;
            serde_json::to_writer(&mut *out, code)?;
            out.write_all(b",\"message\":")?;
            serde_json::to_writer(&mut *out, message)?;
            out.write_all(b"}")?;
        }
    }
    out.write_all(b"}\n")
}

fn count(counts: &mut Counts, row: &ResultRow<'_>) {
    counts.total += 1;
    match row.outcome {
        Outcome::Ok(_) => counts.ok += 1,
        Outcome::Failed { .. } => counts.failed += 1,
    }
}

/// One JSON line per input on a writer.
pub struct JsonlSink {
    out: BufWriter<Box<dyn Write + Send>>,
    name: PathBuf,
    counts: Counts,
}

impl JsonlSink {
    /// Writes to `out`; `name` (a path, or `-` for stdout) names it in errors.
    pub fn new(out: Box<dyn Write + Send>, name: impl Into<PathBuf>) -> JsonlSink {
        JsonlSink {
            out: BufWriter::with_capacity(1 << 20, out),
            name: name.into(),
            counts: Counts::default(),
        }
    }

    /// Creates (or truncates) the file at `path`, and its folder.
    pub fn create(path: &Path) -> Result<JsonlSink, SinkError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let file = File::create(path).map_err(io_err(path))?;
        Ok(JsonlSink::new(Box::new(file), path))
    }
}

impl Sink for JsonlSink {
    fn begin(&mut self, _info: &SinkInfo) -> Result<(), SinkError> {
        Ok(())
    }

    fn write(&mut self, row: &ResultRow<'_>) -> Result<(), SinkError> {
        write_line(&mut self.out, row).map_err(io_err(&self.name))?;
        count(&mut self.counts, row);
        Ok(())
    }

    fn finish(&mut self, _ending: Ending) -> Result<Counts, SinkError> {
        self.out.flush().map_err(io_err(&self.name))?;
        Ok(self.counts)
    }
}

/// Options of a [`PartsSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartsOptions {
    /// A part is closed and the next one started once it holds this many
    /// bytes (a part always holds at least one row).
    pub max_part_bytes: u64,
}

impl Default for PartsOptions {
    /// Parts of 64 MiB.
    fn default() -> PartsOptions {
        PartsOptions {
            max_part_bytes: 64 << 20,
        }
    }
}

/// One finished part, as `_manifest.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// File name inside the output folder.
    pub file: String,
    /// Rows in the part.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// A file being written in one format.
enum PartWriter {
    Jsonl { out: BufWriter<File>, bytes: u64 },
    Parquet(Box<ParquetTable<BufWriter<File>>>),
}

impl PartWriter {
    fn new(file: File, format: Format) -> PartWriter {
        let out = BufWriter::with_capacity(1 << 20, file);
        match format {
            Format::Jsonl => PartWriter::Jsonl { out, bytes: 0 },
            Format::Parquet => PartWriter::Parquet(Box::new(ParquetTable::new(out))),
        }
    }

    fn write(&mut self, row: &ResultRow<'_>, name: &Path) -> Result<(), SinkError> {
        match self {
            PartWriter::Jsonl { out, bytes } => {
                let mut counted = CountingWriter { inner: out, bytes: 0 };
                write_line(&mut counted, row).map_err(io_err(name))?;
                *bytes += counted.bytes;
                Ok(())
            }
            PartWriter::Parquet(t) => t
                .add(row)
                .map_err(|e| SinkError::Format(format!("{}: row '{}': {e}", name.display(), row.key))),
        }
    }

    /// Bytes written so far (an estimate for Parquet).
    fn size(&self) -> u64 {
        match self {
            PartWriter::Jsonl { bytes, .. } => *bytes,
            PartWriter::Parquet(t) => t.size_estimate(),
        }
    }

    /// Flushes the file and hands it back with its size.
    fn finish(self, name: &Path) -> Result<(File, u64), SinkError> {
        let out = match self {
            PartWriter::Jsonl { out, .. } => out,
            PartWriter::Parquet(t) => t
                .finish()
                .map_err(|e| SinkError::Format(format!("{}: {e}", name.display())))?,
        };
        let file = out.into_inner().map_err(|e| io_err(name)(e.into_error()))?;
        let bytes = file.metadata().map_err(io_err(name))?.len();
        Ok((file, bytes))
    }
}

/// The part currently being written.
struct OpenPart {
    writer: PartWriter,
    tmp: PathBuf,
    info: PartInfo,
}

/// A series of rolling parts with one prefix (`part` or `errors`).
struct Series {
    prefix: &'static str,
    format: Format,
    open: Option<OpenPart>,
    done: Vec<PartInfo>,
}

impl Series {
    fn new(prefix: &'static str, format: Format, done: Vec<PartInfo>) -> Series {
        Series {
            prefix,
            format,
            open: None,
            done,
        }
    }

    fn write(&mut self, target: &Target, max_bytes: u64, row: &ResultRow<'_>) -> Result<(), SinkError> {
        let part = match &mut self.open {
            Some(p) => p,
            None => {
                let file = format!("{}-{:05}.{}", self.prefix, self.done.len(), self.format.extension());
                let (out, tmp) = target.temp_file(&file)?;
                self.open.insert(OpenPart {
                    writer: PartWriter::new(out, self.format),
                    tmp,
                    info: PartInfo {
                        file,
                        rows: 0,
                        bytes: 0,
                    },
                })
            }
        };
        part.writer.write(row, &part.tmp)?;
        part.info.rows += 1;
        if part.writer.size() >= max_bytes {
            self.close(target)?;
        }
        Ok(())
    }

    /// Finishes the open part and commits it under its final name.
    fn close(&mut self, target: &Target) -> Result<(), SinkError> {
        let Some(part) = self.open.take() else {
            return Ok(());
        };
        let (file, bytes) = part.writer.finish(&part.tmp)?;
        target.commit(file, &part.tmp, &part.info.file)?;
        self.done.push(PartInfo { bytes, ..part.info });
        Ok(())
    }
}

/// Counts the bytes written through it.
struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `_manifest.json`.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    model: &'a str,
    version: &'a str,
    format: Format,
    complete: bool,
    counts: Counts,
    parts: &'a [PartInfo],
    error_parts: &'a [PartInfo],
    /// Per-video summaries, for a job over video (docs/video.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a serde_json::Value>,
}

/// What a [`PartsSink`] has committed: every finished part and the counts
/// of their rows. A job keeps it beside its results cursor to resume an
/// output after a restart ([`PartsSink::resume`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsState {
    /// Finished result parts, in order.
    pub parts: Vec<PartInfo>,
    /// Finished error parts, in order.
    pub error_parts: Vec<PartInfo>,
    /// Rows in them.
    pub counts: Counts,
}

/// Results in rolling parts, failed inputs in their own parts, and
/// `_manifest.json` at the end (see the module docs).
pub struct PartsSink {
    target: Target,
    options: PartsOptions,
    format: Format,
    info: Option<SinkInfo>,
    results: Series,
    errors: Series,
    counts: Counts,
    /// Counts of the rows in committed parts.
    committed: Counts,
    /// Written into the manifest by [`Sink::finish`].
    summary: Option<serde_json::Value>,
}

/// The name of the manifest file in a parts folder.
pub const MANIFEST: &str = "_manifest.json";

/// Whether `name` is a file a parts sink writes.
fn is_ours(name: &str) -> bool {
    name == MANIFEST
        || ["part-", "errors-", ".part-", ".errors-"]
            .iter()
            .any(|p| name.starts_with(p) && (name.contains(".jsonl") || name.contains(".parquet")))
}

impl PartsSink {
    /// Writes to `target` (a folder is created when missing). A target that
    /// already holds a manifest or parts is refused, so two runs never mix.
    pub fn create(target: Target, format: Format, options: PartsOptions) -> Result<PartsSink, SinkError> {
        if let Some(found) = target.names()?.into_iter().find(|n| is_ours(n)) {
            return Err(SinkError::NotEmpty {
                path: target.display(),
                found,
            });
        }
        Ok(PartsSink::with_state(target, format, options, PartsState::default()))
    }

    /// Goes on writing to `target` after the parts that `state` lists (a
    /// job's output after a restart). Parts and temporary files that
    /// `state` does not list (written after the last checkpoint, before a
    /// crash) are removed first, so the rows they held are written once, by
    /// this sink, again. A manifest is removed too (a crash after it was
    /// written, before the writer recorded the end): [`Sink::finish`] writes
    /// it again.
    pub fn resume(
        target: Target,
        format: Format,
        options: PartsOptions,
        state: PartsState,
    ) -> Result<PartsSink, SinkError> {
        let listed: std::collections::HashSet<&str> = state
            .parts
            .iter()
            .chain(&state.error_parts)
            .map(|p| p.file.as_str())
            .collect();
        for name in target.names()? {
            if is_ours(&name) && !listed.contains(name.as_str()) {
                target.delete(&name)?;
            }
        }
        Ok(PartsSink::with_state(target, format, options, state))
    }

    fn with_state(target: Target, format: Format, options: PartsOptions, state: PartsState) -> PartsSink {
        PartsSink {
            target,
            options,
            format,
            info: None,
            results: Series::new("part", format, state.parts),
            errors: Series::new("errors", Format::Jsonl, state.error_parts),
            counts: state.counts,
            committed: state.counts,
            summary: None,
        }
    }

    /// A summary to write into `_manifest.json` under `summary` (per-video
    /// summaries of a job over video).
    pub fn set_summary(&mut self, summary: serde_json::Value) {
        self.summary = Some(summary);
    }

    /// Finishes and commits the open parts, and returns what is committed:
    /// every row written so far is in a part listed in the state.
    pub fn checkpoint(&mut self) -> Result<PartsState, SinkError> {
        self.results.close(&self.target)?;
        self.errors.close(&self.target)?;
        self.committed = self.counts;
        Ok(self.state())
    }

    /// The committed parts and counts.
    pub fn state(&self) -> PartsState {
        PartsState {
            parts: self.results.done.clone(),
            error_parts: self.errors.done.clone(),
            counts: self.committed,
        }
    }

    /// Whether no part is open (every row written is committed).
    pub fn is_committed(&self) -> bool {
        self.results.open.is_none() && self.errors.open.is_none()
    }
}

impl Sink for PartsSink {
    fn begin(&mut self, info: &SinkInfo) -> Result<(), SinkError> {
        self.info = Some(info.clone());
        Ok(())
    }

    fn write(&mut self, row: &ResultRow<'_>) -> Result<(), SinkError> {
        let series = match row.outcome {
            Outcome::Ok(_) => &mut self.results,
            Outcome::Failed { .. } => &mut self.errors,
        };
        series.write(&self.target, self.options.max_part_bytes.max(1), row)?;
        count(&mut self.counts, row);
        if self.results.open.is_none() && self.errors.open.is_none() {
            self.committed = self.counts;
        }
        Ok(())
    }

    fn finish(&mut self, ending: Ending) -> Result<Counts, SinkError> {
        self.checkpoint()?;
        let info = self.info.clone().unwrap_or(SinkInfo {
            model: String::new(),
            version: String::new(),
        });
        let manifest = Manifest {
            model: &info.model,
            version: &info.version,
            format: self.format,
            complete: ending.complete,
            counts: self.counts,
            parts: &self.results.done,
            error_parts: &self.errors.done,
            summary: self.summary.as_ref(),
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| SinkError::Format(e.to_string()))?;
        self.target.put_small(MANIFEST, text)?;
        Ok(self.counts)
    }
}

/// One file of results, JSONL or Parquet (failed inputs as rows too),
/// written to a temporary file and committed whole by [`Sink::finish`].
pub struct FileSink {
    target: Target,
    name: String,
    writer: Option<PartWriter>,
    tmp: PathBuf,
    counts: Counts,
}

impl FileSink {
    /// A file `name` in `target`.
    pub fn create(target: Target, name: &str, format: Format) -> Result<FileSink, SinkError> {
        let (file, tmp) = target.temp_file(name)?;
        Ok(FileSink {
            target,
            name: name.to_owned(),
            writer: Some(PartWriter::new(file, format)),
            tmp,
            counts: Counts::default(),
        })
    }
}

impl Sink for FileSink {
    fn begin(&mut self, _info: &SinkInfo) -> Result<(), SinkError> {
        Ok(())
    }

    fn write(&mut self, row: &ResultRow<'_>) -> Result<(), SinkError> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| SinkError::Format(format!("{} is already finished", self.name)))?;
        writer.write(row, &self.tmp)?;
        count(&mut self.counts, row);
        Ok(())
    }

    fn finish(&mut self, _ending: Ending) -> Result<Counts, SinkError> {
        if let Some(writer) = self.writer.take() {
            let (file, _) = writer.finish(&self.tmp)?;
            self.target.commit(file, &self.tmp, &self.name)?;
        }
        Ok(self.counts)
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Opens the sink an `--output` argument names, in `format` (by default the
/// file's extension, else JSONL):
///
/// - `-`: JSON lines on stdout;
/// - a path or URI that ends in `/`, or an existing local folder: a
///   [`PartsSink`] (a local folder, or a prefix in an object store);
/// - a local `.jsonl` (or other non-Parquet) file: a [`JsonlSink`], written
///   as results come;
/// - anything else (a local `.parquet` file, any object): a [`FileSink`].
pub fn open_sink(output: &str, format: Option<Format>, parts: PartsOptions) -> Result<Box<dyn Sink>, SinkError> {
    if output == "-" {
        if format == Some(Format::Parquet) {
            return Err(SinkError::Format(
                "Parquet cannot go to stdout: give --output a file (out.parquet) or a folder (out/)".into(),
            ));
        }
        return Ok(Box::new(JsonlSink::new(Box::new(std::io::stdout()), "-")));
    }
    let object = crate::is_object_uri(output);
    if output.ends_with('/') || (!object && Path::new(output).is_dir()) {
        let target = Target::open(output)?;
        return Ok(Box::new(PartsSink::create(target, format.unwrap_or_default(), parts)?));
    }
    let by_name = Format::of_name(output);
    let format = match (format, by_name) {
        (Some(f), Some(n)) if f != n => {
            return Err(SinkError::Format(format!(
                "--output {output} names a .{} file but the output format is {}: make them agree",
                n.extension(),
                f.extension()
            )))
        }
        (f, n) => f.or(n).unwrap_or_default(),
    };
    let (parent, name) = match output.rsplit_once('/') {
        Some((p, n)) if !p.is_empty() && !p.ends_with(':') && !p.ends_with("://") && !p.ends_with(":/") => {
            (format!("{p}/"), n)
        }
        _ if object => {
            return Err(SinkError::Object {
                uri: output.to_owned(),
                message: "give a key inside a bucket, such as s3://bucket/results.parquet, or a prefix ending in /"
                    .into(),
            })
        }
        _ => ("./".to_owned(), output),
    };
    if !object && format == Format::Jsonl {
        return Ok(Box::new(JsonlSink::create(Path::new(output))?));
    }
    let target = Target::open(&parent)?;
    // Fails now, before any work, when the bucket cannot be written to or listed.
    target.names()?;
    Ok(Box::new(FileSink::create(target, name, format)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn info() -> SinkInfo {
        SinkInfo {
            model: "m".into(),
            version: "3".into(),
        }
    }

    fn ok<'a>(key: &'a str, json: &'a str) -> ResultRow<'a> {
        ResultRow {
            key,
            outcome: Outcome::Ok(json),
            kept: None,
        }
    }

    fn failed(key: &str) -> ResultRow<'_> {
        ResultRow {
            key,
            outcome: Outcome::Failed {
                code: "invalid_input",
                message: "line 2: \"bad\"\nvalue",
            },
            kept: None,
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .expect("read part")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn jsonl_lines_are_valid_json_with_the_output_as_produced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/out.jsonl");
        let mut sink = JsonlSink::create(&path).expect("create");
        sink.begin(&info()).expect("begin");
        sink.write(&ok("a\"1", r#"{"embedding":[0.5,1.0]}"#)).expect("write");
        sink.write(&failed("b")).expect("write");
        let counts = sink.finish(Ending { complete: true }).expect("finish");
        assert_eq!(
            counts,
            Counts {
                total: 2,
                ok: 1,
                failed: 1
            }
        );
        let got = lines(&path);
        assert_eq!(
            got[0],
            serde_json::json!({"id": "a\"1", "output": {"embedding": [0.5, 1.0]}})
        );
        assert_eq!(
            got[1],
            serde_json::json!({"id": "b", "error": {"code": "invalid_input", "message": "line 2: \"bad\"\nvalue"}})
        );
    }

    #[test]
    fn parts_roll_at_the_size_limit_and_errors_get_their_own_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let mut sink = PartsSink::create(
            Target::open(&out.display().to_string()).expect("target"),
            Format::Jsonl,
            PartsOptions { max_part_bytes: 100 },
        )
        .expect("create");
        sink.begin(&info()).expect("begin");
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            if i % 5 == 4 {
                sink.write(&failed(k)).expect("write");
            } else {
                sink.write(&ok(k, r#"{"tensors":{"y":[1,2,3]}}"#)).expect("write");
            }
        }
        let counts = sink.finish(Ending { complete: true }).expect("finish");
        assert_eq!(
            counts,
            Counts {
                total: 20,
                ok: 16,
                failed: 4
            }
        );

        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).expect("manifest")).expect("manifest JSON");
        assert_eq!(manifest["model"], "m");
        assert_eq!(manifest["version"], "3");
        assert_eq!(manifest["complete"], true);
        assert_eq!(
            manifest["counts"],
            serde_json::json!({"total": 20, "ok": 16, "failed": 4})
        );
        let parts = manifest["parts"].as_array().expect("parts");
        assert!(parts.len() > 1, "100-byte parts roll: {manifest}");
        let mut seen = Vec::new();
        for (kind, list) in [
            ("output", parts),
            ("error", manifest["error_parts"].as_array().expect("errors")),
        ] {
            for (n, p) in list.iter().enumerate() {
                let file = p["file"].as_str().expect("file");
                let prefix = if kind == "output" { "part" } else { "errors" };
                assert_eq!(file, format!("{prefix}-{n:05}.jsonl"));
                let path = out.join(file);
                assert_eq!(p["bytes"], std::fs::metadata(&path).expect("part").len());
                let rows = lines(&path);
                assert_eq!(p["rows"], rows.len() as u64);
                for r in rows {
                    assert!(r.get(kind).is_some(), "{file}: {r}");
                    seen.push(r["id"].as_str().expect("id").to_string());
                }
            }
        }
        seen.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(seen, want, "each key exactly once over all parts");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_folder_with_earlier_results_is_refused_and_an_empty_run_has_a_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = || Target::open(&dir.path().display().to_string()).expect("target");
        let mut sink = PartsSink::create(target(), Format::Jsonl, PartsOptions::default()).expect("create");
        sink.begin(&info()).expect("begin");
        let counts = sink.finish(Ending { complete: false }).expect("finish");
        assert_eq!(counts, Counts::default());
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).expect("manifest")).expect("JSON");
        assert_eq!(manifest["complete"], false);
        assert_eq!(manifest["parts"], serde_json::json!([]));

        match PartsSink::create(target(), Format::Jsonl, PartsOptions::default()) {
            Err(SinkError::NotEmpty { found, .. }) => assert_eq!(found, MANIFEST),
            other => panic!("expected NotEmpty, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn open_sink_tells_files_from_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = format!("{}/parts/", dir.path().display());
        let mut s = open_sink(&folder, None, PartsOptions::default()).expect("folder");
        s.begin(&info()).expect("begin");
        s.write(&ok("x", "1")).expect("write");
        s.finish(Ending { complete: true }).expect("finish");
        assert!(dir.path().join("parts/part-00000.jsonl").is_file());
        assert!(dir.path().join("parts/_manifest.json").is_file());

        let file = dir.path().join("one.jsonl");
        let mut s = open_sink(&file.display().to_string(), None, PartsOptions::default()).expect("file");
        s.begin(&info()).expect("begin");
        s.write(&ok("x", "1")).expect("write");
        s.finish(Ending { complete: true }).expect("finish");
        assert_eq!(lines(&file), vec![serde_json::json!({"id": "x", "output": 1})]);
    }
}
