//! Turning request bodies and server-side files into job inputs.
//!
//! One place decides what an input value looks like in JSON, so inline jobs,
//! JSONL uploads and `source` files all accept the same forms:
//! a string is text; `{"text": ".."}` is text; `{"base64": ".."}` is bytes
//! (an image); `{"tensor": ..}` or any array/object is a JSON tensor.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sluice_store::InputValue;

use crate::error::JobsError;

/// Parses one input value.
pub fn value_from_json(v: serde_json::Value) -> Result<InputValue, String> {
    match v {
        serde_json::Value::String(s) => Ok(InputValue::Text(s)),
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("text") => match o.remove("text") {
            Some(serde_json::Value::String(s)) => Ok(InputValue::Text(s)),
            _ => Err("'text' must be a string".into()),
        },
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("base64") => match o.remove("base64") {
            Some(serde_json::Value::String(s)) => base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map(InputValue::Bytes)
                .map_err(|e| format!("invalid base64: {e}")),
            _ => Err("'base64' must be a string".into()),
        },
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("tensor") => {
            Ok(InputValue::Json(o.remove("tensor").unwrap_or_default()))
        }
        serde_json::Value::Null => Err("input is null".into()),
        other => Ok(InputValue::Json(other)),
    }
}

/// Size of an input in bytes (for the per-input limit).
pub fn input_size(v: &InputValue) -> usize {
    match v {
        InputValue::Text(t) => t.len(),
        InputValue::Bytes(b) => b.len(),
        InputValue::Json(j) => j.to_string().len(),
        InputValue::Invalid(m) => m.len(),
    }
}

/// Parses one JSONL record: a key (`key` or `id`) and a value (`value`, or
/// `text` / `base64` / `tensor`). `line` numbers messages and default keys.
pub fn record_from_json(line: &str, n: usize) -> Result<(String, InputValue), String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {n} is not valid JSON: {e}"))?;
    let serde_json::Value::Object(mut o) = v else {
        return Err(format!("line {n} must be a JSON object with a key and a value"));
    };
    let key = match o.remove("key").or_else(|| o.remove("id")) {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(x)) => x.to_string(),
        Some(_) => return Err(format!("line {n}: 'key' must be a string or a number")),
        None => n.to_string(),
    };
    let value = if let Some(v) = o.remove("value") {
        v
    } else if o.len() == 1 {
        serde_json::Value::Object(o)
    } else {
        return Err(format!(
            "line {n}: give the input as 'value', 'text', 'base64' or 'tensor' (found fields {:?})",
            o.keys().collect::<Vec<_>>()
        ));
    };
    let value = value_from_json(value).map_err(|e| format!("line {n} (key '{key}'): {e}"))?;
    Ok((key, value))
}

/// Resolves a `source` path, allowing only paths under the configured roots.
pub fn resolve_source(path: &str, roots: &[PathBuf]) -> Result<PathBuf, JobsError> {
    if roots.is_empty() {
        return Err(JobsError::Forbidden(
            "server-side sources are disabled: start the server with --source-root DIR".into(),
        ));
    }
    let p = Path::new(path);
    let canonical = p
        .canonicalize()
        .map_err(|_| JobsError::Forbidden(format!("source {path} is not under an allowed root")))?;
    if roots.iter().any(|r| canonical.starts_with(r)) {
        Ok(canonical)
    } else {
        Err(JobsError::Forbidden(format!(
            "source {path} is not under an allowed root"
        )))
    }
}

/// Why a file of a source folder was not read. The messages name neither the
/// target of a link nor its size: a source must not become a way to probe
/// files outside the allowed roots.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRefusal {
    /// The file, once its links are resolved, is not under an allowed root.
    OutsideRoots,
    /// Larger than the per-input limit.
    TooLarge(usize),
    /// The file could not be opened or read.
    Io(std::io::ErrorKind),
}

impl std::fmt::Display for ReadRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadRefusal::OutsideRoots => f.write_str("it is a link that leads outside the allowed source roots"),
            ReadRefusal::TooLarge(limit) => write!(f, "it is larger than the limit of {limit} bytes"),
            ReadRefusal::Io(kind) => write!(f, "{kind}"),
        }
    }
}

/// Opens a file for reading only if it lies under `roots` once its links are
/// resolved; on Linux the opened descriptor's own path (`/proc/self/fd/N`) is
/// checked too, so a link swapped in after the check cannot redirect the read.
pub fn open_confined(path: &Path, roots: &[PathBuf]) -> Result<std::fs::File, ReadRefusal> {
    let under_roots = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    let resolved = path.canonicalize().map_err(|e| ReadRefusal::Io(e.kind()))?;
    if !under_roots(&resolved) {
        return Err(ReadRefusal::OutsideRoots);
    }
    let file = std::fs::File::open(&resolved).map_err(|e| ReadRefusal::Io(e.kind()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        // What was opened, whatever links changed in between; refuse when it
        // cannot be told (fail closed).
        let actual =
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|_| ReadRefusal::OutsideRoots)?;
        if !under_roots(&actual) {
            return Err(ReadRefusal::OutsideRoots);
        }
    }
    Ok(file)
}

/// Reads a file of a source folder through [`open_confined`], refusing one
/// larger than `max_input` bytes without reading it.
pub fn read_confined(path: &Path, roots: &[PathBuf], max_input: usize) -> Result<Vec<u8>, ReadRefusal> {
    use std::io::Read as _;
    let file = open_confined(path, roots)?;
    let meta = file.metadata().map_err(|e| ReadRefusal::Io(e.kind()))?;
    if !meta.is_file() {
        return Err(ReadRefusal::Io(std::io::ErrorKind::InvalidInput));
    }
    let limit = u64::try_from(max_input).unwrap_or(u64::MAX);
    if meta.len() > limit {
        return Err(ReadRefusal::TooLarge(max_input));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Bounded even if the file grows while it is read.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ReadRefusal::Io(e.kind()))?;
    if bytes.len() > max_input {
        return Err(ReadRefusal::TooLarge(max_input));
    }
    Ok(bytes)
}

/// Streams a source (JSONL / CSV / plain-text file, or a folder of files) as
/// `(key, input)` chunks of up to `chunk` items, calling `sink` per chunk.
/// A malformed line becomes an invalid input that fails alone in the job.
///
/// Every file of a folder is opened only after resolving its links: one that
/// leads outside `roots` (a symlink planted in the folder) fails alone, with
/// a message that says nothing about the file it points to.
pub fn read_source(
    path: &Path,
    roots: &[PathBuf],
    chunk: usize,
    max_input: usize,
    mut sink: impl FnMut(Vec<(String, InputValue)>) -> Result<(), String>,
) -> Result<u64, String> {
    let mut buf = Vec::with_capacity(chunk);
    let mut total = 0u64;
    let mut push = |item: (String, InputValue), buf: &mut Vec<(String, InputValue)>| -> Result<(), String> {
        let item = if input_size(&item.1) > max_input {
            let msg = format!("input is larger than the limit of {max_input} bytes");
            (item.0, InputValue::Invalid(msg))
        } else {
            item
        };
        buf.push(item);
        total += 1;
        if buf.len() >= chunk {
            sink(std::mem::take(buf))?;
        }
        Ok(())
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot list {}: {e}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let key = f.strip_prefix(path).unwrap_or(&f).display().to_string();
            let value = match read_confined(&f, roots, max_input) {
                Ok(b) => InputValue::Bytes(b),
                Err(why) => InputValue::Invalid(format!("cannot read {key}: {why}")),
            };
            push((key, value), &mut buf)?;
        }
    } else {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let file = open_confined(path, roots).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let reader = std::io::BufReader::with_capacity(1 << 16, file);
        if ext == "csv" {
            let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
            let headers = rdr.headers().map_err(|e| format!("bad CSV header: {e}"))?.clone();
            let id_col = headers.iter().position(|h| h == "id" || h == "key");
            let text_col = headers
                .iter()
                .position(|h| h == "text")
                .ok_or_else(|| format!("CSV has no 'text' column (columns: {headers:?})"))?;
            for (i, rec) in rdr.records().enumerate() {
                let n = i + 1;
                let item = match rec {
                    Ok(r) => (
                        id_col
                            .and_then(|c| r.get(c))
                            .map_or_else(|| n.to_string(), str::to_string),
                        r.get(text_col).map_or_else(
                            || InputValue::Invalid(format!("row {n} has no text")),
                            |t| InputValue::Text(t.into()),
                        ),
                    ),
                    Err(e) => (n.to_string(), InputValue::Invalid(format!("bad CSV row {n}: {e}"))),
                };
                push(item, &mut buf)?;
            }
        } else {
            let jsonl = matches!(ext.as_str(), "jsonl" | "ndjson" | "json");
            let mut n = 0usize;
            let mut reader = reader;
            let mut raw = Vec::new();
            loop {
                raw.clear();
                let read = reader
                    .read_until(b'\n', &mut raw)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if read == 0 {
                    break;
                }
                if raw.last() == Some(&b'\n') {
                    raw.pop();
                    if raw.last() == Some(&b'\r') {
                        raw.pop();
                    }
                }
                // A line that is not UTF-8 is a malformed line: it fails alone.
                let line = std::str::from_utf8(&raw).ok();
                if line.is_some_and(|l| l.trim().is_empty()) {
                    continue;
                }
                n += 1;
                let item = match line {
                    None => (
                        n.to_string(),
                        InputValue::Invalid(format!("line {n} is not valid UTF-8")),
                    ),
                    Some(line) if jsonl => {
                        record_from_json(line, n).unwrap_or_else(|msg| (n.to_string(), InputValue::Invalid(msg)))
                    }
                    Some(line) => (n.to_string(), InputValue::Text(line.to_string())),
                };
                push(item, &mut buf)?;
            }
        }
    }
    if !buf.is_empty() {
        sink(buf)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_forms() {
        assert_eq!(
            value_from_json(serde_json::json!("hi")),
            Ok(InputValue::Text("hi".into()))
        );
        assert_eq!(
            value_from_json(serde_json::json!({"text": "hi"})),
            Ok(InputValue::Text("hi".into()))
        );
        assert_eq!(
            value_from_json(serde_json::json!({"base64": "AAE="})),
            Ok(InputValue::Bytes(vec![0, 1]))
        );
        assert!(value_from_json(serde_json::json!({"base64": "!!"})).is_err());
        assert_eq!(
            value_from_json(serde_json::json!({"tensor": [1, 2]})),
            Ok(InputValue::Json(serde_json::json!([1, 2])))
        );
        assert!(value_from_json(serde_json::Value::Null).is_err());
    }

    #[test]
    fn jsonl_records() {
        assert_eq!(
            record_from_json(r#"{"id": 7, "text": "x"}"#, 1),
            Ok(("7".into(), InputValue::Text("x".into())))
        );
        assert_eq!(
            record_from_json(r#"{"text": "x"}"#, 3),
            Ok(("3".into(), InputValue::Text("x".into())))
        );
        assert!(record_from_json("nope", 2).expect_err("not JSON").contains("line 2"));
        assert!(record_from_json(r#"{"key": "a", "text": "x", "b": 1}"#, 1).is_err());
    }
}
