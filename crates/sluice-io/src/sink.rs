//! Sluice's output layer: where results go.
//!
//! A [`Sink`] takes results one at a time, push-style, between a
//! [`Sink::begin`] and a [`Sink::finish`] hook (the shape of ripgrep's
//! searcher sinks). Two sinks exist today:
//!
//! - [`JsonlSink`]: one JSON line per input on any writer (a file or
//!   stdout): `{"id": .., "output": ..}` or
//!   `{"id": .., "error": {"code": .., "message": ..}}`.
//! - [`PartsSink`]: a folder of rolling parts. Results go to
//!   `part-00000.jsonl`, `part-00001.jsonl`, ..., a new part once one holds
//!   [`PartsOptions::max_part_bytes`]; failed inputs go to their own parts,
//!   `errors-00000.jsonl`, ...; [`Sink::finish`] writes `_manifest.json`
//!   (model, version, counts, parts). A part is written under a temporary
//!   name and renamed when it is complete, so a part that is listed or
//!   visible under its final name is whole; `_manifest.json` comes last and
//!   marks the output as finished.
//!
//! [`open_sink`] picks one from an `--output` argument.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The result of one input, as a sink receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultRow<'a> {
    /// The input's key.
    pub key: &'a str,
    /// The output or the error.
    pub outcome: Outcome<'a>,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes one row as a JSON line.
fn write_line(out: &mut impl Write, row: &ResultRow<'_>) -> std::io::Result<()> {
    out.write_all(b"{\"id\":")?;
    serde_json::to_writer(&mut *out, row.key)?;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartInfo {
    /// File name inside the output folder.
    pub file: String,
    /// Rows in the part.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// The part currently being written.
struct OpenPart {
    out: BufWriter<File>,
    tmp: PathBuf,
    info: PartInfo,
}

/// A series of rolling parts with one prefix (`part` or `errors`).
struct Series {
    prefix: &'static str,
    open: Option<OpenPart>,
    done: Vec<PartInfo>,
}

impl Series {
    fn new(prefix: &'static str) -> Series {
        Series {
            prefix,
            open: None,
            done: Vec::new(),
        }
    }

    fn write(&mut self, dir: &Path, max_bytes: u64, row: &ResultRow<'_>) -> Result<(), SinkError> {
        let part = match &mut self.open {
            Some(p) => p,
            None => {
                let file = format!("{}-{:05}.jsonl", self.prefix, self.done.len());
                let tmp = dir.join(format!(".{file}.tmp"));
                let out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err(&tmp))?);
                self.open.insert(OpenPart {
                    out,
                    tmp,
                    info: PartInfo {
                        file,
                        rows: 0,
                        bytes: 0,
                    },
                })
            }
        };
        let mut counted = CountingWriter {
            inner: &mut part.out,
            bytes: 0,
        };
        write_line(&mut counted, row).map_err(io_err(&part.tmp))?;
        part.info.bytes += counted.bytes;
        part.info.rows += 1;
        if part.info.bytes >= max_bytes {
            self.close(dir)?;
        }
        Ok(())
    }

    /// Flushes the open part, syncs it and gives it its final name.
    fn close(&mut self, dir: &Path) -> Result<(), SinkError> {
        let Some(part) = self.open.take() else {
            return Ok(());
        };
        let file = part.out.into_inner().map_err(|e| io_err(&part.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&part.tmp))?;
        let dest = dir.join(&part.info.file);
        std::fs::rename(&part.tmp, &dest).map_err(io_err(&dest))?;
        self.done.push(part.info);
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
    format: &'static str,
    complete: bool,
    counts: Counts,
    parts: &'a [PartInfo],
    error_parts: &'a [PartInfo],
}

/// Results in a folder of rolling parts, failed inputs in their own parts,
/// and `_manifest.json` at the end (see the module docs).
pub struct PartsSink {
    dir: PathBuf,
    options: PartsOptions,
    info: Option<SinkInfo>,
    results: Series,
    errors: Series,
    counts: Counts,
}

/// The name of the manifest file in a parts folder.
pub const MANIFEST: &str = "_manifest.json";

impl PartsSink {
    /// Creates the folder `dir` when missing. A folder that already holds a
    /// manifest or parts is refused, so two runs never mix.
    pub fn create(dir: &Path, options: PartsOptions) -> Result<PartsSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let name = entry.map_err(io_err(dir))?.file_name();
            let name = name.to_string_lossy();
            let ours = name == MANIFEST
                || ["part-", "errors-", ".part-", ".errors-"]
                    .iter()
                    .any(|p| name.starts_with(p) && name.contains(".jsonl"));
            if ours {
                return Err(SinkError::NotEmpty {
                    path: dir.display().to_string(),
                    found: name.into_owned(),
                });
            }
        }
        Ok(PartsSink {
            dir: dir.to_path_buf(),
            options,
            info: None,
            results: Series::new("part"),
            errors: Series::new("errors"),
            counts: Counts::default(),
        })
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
        series.write(&self.dir, self.options.max_part_bytes.max(1), row)?;
        count(&mut self.counts, row);
        Ok(())
    }

    fn finish(&mut self, ending: Ending) -> Result<Counts, SinkError> {
        self.results.close(&self.dir)?;
        self.errors.close(&self.dir)?;
        let info = self.info.clone().unwrap_or(SinkInfo {
            model: String::new(),
            version: String::new(),
        });
        let manifest = Manifest {
            model: &info.model,
            version: &info.version,
            format: "jsonl",
            complete: ending.complete,
            counts: self.counts,
            parts: &self.results.done,
            error_parts: &self.errors.done,
        };
        let path = self.dir.join(MANIFEST);
        let tmp = self.dir.join(format!(".{MANIFEST}.tmp"));
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| io_err(&tmp)(e.into()))?;
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(self.counts)
    }
}

/// Opens the sink an `--output` argument names: `-` is JSON lines on
/// stdout; a path that ends in `/` or is an existing folder is a
/// [`PartsSink`]; anything else is a [`JsonlSink`] file.
pub fn open_sink(output: &str, parts: PartsOptions) -> Result<Box<dyn Sink>, SinkError> {
    if output == "-" {
        return Ok(Box::new(JsonlSink::new(Box::new(std::io::stdout()), "-")));
    }
    let path = Path::new(output);
    if output.ends_with('/') || path.is_dir() {
        Ok(Box::new(PartsSink::create(path, parts)?))
    } else {
        Ok(Box::new(JsonlSink::create(path)?))
    }
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
        }
    }

    fn failed(key: &str) -> ResultRow<'_> {
        ResultRow {
            key,
            outcome: Outcome::Failed {
                code: "invalid_input",
                message: "line 2: \"bad\"\nvalue",
            },
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
        let mut sink = PartsSink::create(&out, PartsOptions { max_part_bytes: 100 }).expect("create");
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
        let mut sink = PartsSink::create(dir.path(), PartsOptions::default()).expect("create");
        sink.begin(&info()).expect("begin");
        let counts = sink.finish(Ending { complete: false }).expect("finish");
        assert_eq!(counts, Counts::default());
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(MANIFEST)).expect("manifest")).expect("JSON");
        assert_eq!(manifest["complete"], false);
        assert_eq!(manifest["parts"], serde_json::json!([]));

        match PartsSink::create(dir.path(), PartsOptions::default()) {
            Err(SinkError::NotEmpty { found, .. }) => assert_eq!(found, MANIFEST),
            other => panic!("expected NotEmpty, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn open_sink_tells_files_from_folders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = format!("{}/parts/", dir.path().display());
        let mut s = open_sink(&folder, PartsOptions::default()).expect("folder");
        s.begin(&info()).expect("begin");
        s.write(&ok("x", "1")).expect("write");
        s.finish(Ending { complete: true }).expect("finish");
        assert!(dir.path().join("parts/part-00000.jsonl").is_file());
        assert!(dir.path().join("parts/_manifest.json").is_file());

        let file = dir.path().join("one.jsonl");
        let mut s = open_sink(&file.display().to_string(), PartsOptions::default()).expect("file");
        s.begin(&info()).expect("begin");
        s.write(&ok("x", "1")).expect("write");
        s.finish(Ending { complete: true }).expect("finish");
        assert_eq!(lines(&file), vec![serde_json::json!({"id": "x", "output": 1})]);
    }
}
