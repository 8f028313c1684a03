//! Streaming input readers for `sluice run` and `sluice bench`.
//!
//! Inputs are read on a plain thread and handed over through a small bounded
//! channel, so a run over a file of any size holds only a few hundred items in
//! memory. A line that cannot be parsed becomes a per-item failure under its
//! line number instead of stopping the run.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use sluice_core::spec::ProcessingSpec;
use sluice_core::Input;
use tokio::sync::mpsc;

/// One input read from the source; a parse error fails only this item.
pub struct RawItem {
    /// Input id (from the file, or the line / row number).
    pub id: String,
    /// The input, or why it could not be read.
    pub input: Result<Input, String>,
}

/// Which fields of JSONL/CSV records hold the id and the payload.
#[derive(Debug, Clone)]
pub struct Fields {
    /// Id field name.
    pub id: String,
    /// Payload field name (text, or tensor JSON).
    pub value: String,
}

impl Fields {
    /// The id field and the payload field, defaulting to `text` (or `input`
    /// for tensor models).
    pub fn new(kind: Kind, id: &str, value: Option<&str>) -> Fields {
        let default = if kind == Kind::Tensor { "input" } else { "text" };
        Fields {
            id: id.to_string(),
            value: value.unwrap_or(default).to_string(),
        }
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
        match p {
            ProcessingSpec::Text(_) => Kind::Text,
            ProcessingSpec::Image(_) => Kind::Image,
            ProcessingSpec::Tensor(_) => Kind::Tensor,
            ProcessingSpec::Bytes(_) => Kind::Text,
        }
    }
}

/// An opened input source.
pub enum Source {
    /// A line-oriented file.
    Lines {
        /// The file.
        path: PathBuf,
        /// How lines are read.
        format: Format,
    },
    /// Image files.
    Files(Vec<PathBuf>),
}

/// Line-oriented formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object (or tensor) per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
    /// One text per line.
    Plain,
}

impl Source {
    /// Opens `spec` (a file, a directory or a glob) for a model of `kind`.
    pub fn open(spec: &str, kind: Kind) -> anyhow::Result<Source> {
        let path = Path::new(spec);
        if kind == Kind::Image {
            let files = if path.is_dir() {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .with_context(|| format!("cannot list {spec}"))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                v.sort();
                v
            } else if path.is_file() {
                vec![path.to_path_buf()]
            } else {
                let mut v: Vec<PathBuf> = glob::glob(spec)
                    .with_context(|| format!("invalid glob {spec}"))?
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect();
                v.sort();
                v
            };
            if files.is_empty() {
                bail!("no image files found at {spec} (give a directory, a file or a glob like 'frames/*.jpg')");
            }
            return Ok(Source::Files(files));
        }
        if !path.is_file() {
            bail!("input file {spec} not found");
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let format = match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Format::Jsonl,
            "csv" => Format::Csv,
            _ if kind == Kind::Tensor => Format::Jsonl,
            _ => Format::Plain,
        };
        Ok(Source::Lines {
            path: path.to_path_buf(),
            format,
        })
    }

    /// Counts the items (one cheap pass over the file) for the progress bar.
    pub fn count(&self) -> anyhow::Result<u64> {
        match self {
            Source::Files(f) => Ok(f.len() as u64),
            Source::Lines { path, format } => {
                let reader = BufReader::with_capacity(1 << 20, File::open(path)?);
                let mut n = 0u64;
                for line in reader.split(b'\n') {
                    if !line?.iter().all(u8::is_ascii_whitespace) {
                        n += 1;
                    }
                }
                Ok(if *format == Format::Csv { n.saturating_sub(1) } else { n })
            }
        }
    }

    /// Starts a reader thread; items arrive on the returned channel.
    pub fn stream(self, kind: Kind, fields: Fields) -> mpsc::Receiver<RawItem> {
        let (tx, rx) = mpsc::channel(256);
        std::thread::spawn(move || {
            let result = match self {
                Source::Files(files) => read_files(&files, &tx),
                Source::Lines { path, format } => read_lines(&path, format, kind, &fields, &tx),
            };
            if let Err(e) = result {
                tracing::error!("input reading stopped: {e:#}");
            }
        });
        rx
    }
}

fn read_files(files: &[PathBuf], tx: &mpsc::Sender<RawItem>) -> anyhow::Result<()> {
    for f in files {
        let input = std::fs::read(f)
            .map(Input::Bytes)
            .map_err(|e| format!("cannot read {}: {e}", f.display()));
        let item = RawItem {
            id: f.display().to_string(),
            input,
        };
        if tx.blocking_send(item).is_err() {
            break;
        }
    }
    Ok(())
}

fn read_lines(
    path: &Path,
    format: Format,
    kind: Kind,
    fields: &Fields,
    tx: &mpsc::Sender<RawItem>,
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if format == Format::Csv {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(BufReader::new(file));
        let headers = rdr.headers()?.clone();
        let id_col = headers.iter().position(|h| h == fields.id);
        let Some(val_col) = headers.iter().position(|h| h == fields.value) else {
            bail!(
                "CSV {} has no '{}' column (columns: {:?}); pass --field",
                path.display(),
                fields.value,
                headers
            );
        };
        for (row, rec) in rdr.records().enumerate() {
            let n = row + 1;
            let item = match rec {
                Ok(rec) => RawItem {
                    id: id_col
                        .and_then(|c| rec.get(c))
                        .map_or_else(|| n.to_string(), str::to_string),
                    input: rec
                        .get(val_col)
                        .map(|v| payload_from_str(v, kind))
                        .unwrap_or_else(|| Err(format!("row {n} has no '{}' value", fields.value))),
                },
                Err(e) => RawItem {
                    id: n.to_string(),
                    input: Err(format!("bad CSV row {n}: {e}")),
                },
            };
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
        return Ok(());
    }
    let reader = BufReader::with_capacity(1 << 16, file);
    // `n` is the physical line number (blank lines are skipped but counted),
    // so ids and messages point at the right line of the file.
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = match format {
            Format::Plain => RawItem {
                id: n.to_string(),
                input: payload_from_str(&line, kind),
            },
            _ => parse_json_line(&line, n, kind, fields),
        };
        if tx.blocking_send(item).is_err() {
            break;
        }
    }
    Ok(())
}

fn payload_from_str(s: &str, kind: Kind) -> Result<Input, String> {
    match kind {
        Kind::Text => Ok(Input::Text(s.to_string())),
        Kind::Tensor => serde_json::from_str(s)
            .map(Input::Json)
            .map_err(|e| format!("tensor input is not JSON: {e}")),
        Kind::Image => Err("image inputs are files: give a directory or glob".into()),
    }
}

fn parse_json_line(line: &str, n: usize, kind: Kind, fields: &Fields) -> RawItem {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return RawItem {
                id: n.to_string(),
                input: Err(format!("line {n} is not valid JSON: {e}")),
            }
        }
    };
    let id = match value.get(&fields.id) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(x)) => x.to_string(),
        _ => n.to_string(),
    };
    let input = match (kind, value.get(&fields.value)) {
        (Kind::Text, Some(serde_json::Value::String(s))) => Ok(Input::Text(s.clone())),
        (Kind::Text, Some(other)) => Err(format!("'{}' must be a string, got {other}", fields.value)),
        (Kind::Text, None) if value.is_string() => Ok(Input::Text(value.as_str().unwrap_or_default().to_string())),
        (Kind::Tensor, Some(v)) => Ok(Input::Json(v.clone())),
        (Kind::Tensor, None) if !value.is_object() => Ok(Input::Json(value.clone())),
        (_, None) => Err(format!("line {n} has no '{}' field", fields.value)),
        (Kind::Image, Some(_)) => Err("image inputs are files: give a directory or glob".into()),
    };
    RawItem { id, input }
}
