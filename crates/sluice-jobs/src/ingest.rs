//! Turning request bodies and server-side files into job inputs.
//!
//! The rules for what an input value looks like in JSON, and for keys and
//! line numbers in source files, live in `sluice-io`, which `sluice run`
//! reads through too: inline jobs, JSONL uploads and `source` files accept
//! the same forms (a string is text; `{"text": ..}` is text; `{"base64": ..}`
//! is bytes, an image; `{"tensor": ..}` or any array/object is a JSON
//! tensor). This module maps them onto the store's [`InputValue`].

use std::path::{Path, PathBuf};

use sluice_core::Input;
use sluice_io::{Fields, LocalSource, SourceOptions, Want};
use sluice_store::InputValue;

use crate::error::JobsError;

/// The store's value for an input read by `sluice-io`.
fn stored(input: Result<Input, String>) -> InputValue {
    match input {
        Ok(Input::Text(t)) => InputValue::Text(t),
        Ok(Input::Bytes(b)) => InputValue::Bytes(b),
        Ok(Input::Json(j)) => InputValue::Json(j),
        Ok(Input::Tensors(t)) => InputValue::Json(serde_json::to_value(t).unwrap_or_default()),
        Err(message) => InputValue::Invalid(message),
    }
}

/// Parses one input value ([`sluice_io::value_from_json`]).
pub fn value_from_json(v: serde_json::Value) -> Result<InputValue, String> {
    sluice_io::value_from_json(v).map(|i| stored(Ok(i)))
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

/// Parses one JSONL record of an upload under `sluice-io`'s rules: a key
/// (`key` or `id`, else `n`) and a value (`value`, `text`, `base64`, `tensor`
/// or `input`). An upload is all or nothing, so a bad line is an error.
pub fn record_from_json(line: &str, n: usize) -> Result<(String, InputValue), String> {
    let record = sluice_io::json_record(line, n as u64, Want::Any, &Fields::default());
    match record.input {
        Ok(input) => Ok((record.key, stored(Ok(input)))),
        Err(message) => Err(message),
    }
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

/// Streams a source (JSONL / CSV / plain-text file, or a folder of files)
/// as `(key, input)` chunks of up to `chunk` items, calling `sink` per chunk.
/// A malformed line, or an input larger than `max_input`, becomes an invalid
/// input that fails alone in the job.
///
/// Every file is opened only after resolving its links: one that leads
/// outside `roots` (a symlink planted in a folder) fails alone, with a
/// message that says nothing about the file it points to.
pub fn read_source(
    path: &Path,
    roots: &[PathBuf],
    chunk: usize,
    max_input: usize,
    mut sink: impl FnMut(Vec<(String, InputValue)>) -> Result<(), String>,
) -> Result<u64, String> {
    let mut opts = SourceOptions::new(Want::Any);
    opts.roots = Some(roots.to_vec());
    opts.max_file_bytes = Some(max_input);
    let spec = path
        .to_str()
        .ok_or_else(|| format!("source {} is not UTF-8", path.display()))?;
    let records = LocalSource::open(spec, opts)
        .and_then(LocalSource::records)
        .map_err(|e| e.to_string())?;
    let chunk = chunk.max(1);
    let mut buf = Vec::with_capacity(chunk);
    let mut total = 0u64;
    for record in records {
        let record = record.map_err(|e| e.to_string())?;
        let mut value = stored(record.input);
        if input_size(&value) > max_input {
            value = InputValue::Invalid(format!("input is larger than the limit of {max_input} bytes"));
        }
        buf.push((record.key, value));
        total += 1;
        if buf.len() >= chunk {
            sink(std::mem::take(&mut buf))?;
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
    fn upload_records_are_all_or_nothing_and_map_to_store_values() {
        assert_eq!(
            record_from_json(r#"{"id": 7, "base64": "AAE="}"#, 1),
            Ok(("7".into(), InputValue::Bytes(vec![0, 1])))
        );
        assert_eq!(
            record_from_json(r#"{"tensor": [1]}"#, 3),
            Ok(("3".into(), InputValue::Json(serde_json::json!([1]))))
        );
        assert!(record_from_json("nope", 2).expect_err("not JSON").contains("line 2"));
        assert_eq!(
            value_from_json(serde_json::json!("hi")),
            Ok(InputValue::Text("hi".into()))
        );
    }

    #[test]
    fn source_chunks_and_the_input_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let file = root.join("in.txt");
        let body: String = (0..25).map(|i| format!("text {i}\n")).collect::<String>() + &"x".repeat(40);
        std::fs::write(&file, body).expect("write");
        let mut chunks = Vec::new();
        let n = read_source(&file, std::slice::from_ref(&root), 10, 20, |c| {
            chunks.push(c);
            Ok(())
        })
        .expect("read");
        assert_eq!(n, 26);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 6]);
        assert_eq!(chunks[2][5].0, "26");
        assert!(matches!(&chunks[2][5].1, InputValue::Invalid(m) if m.contains("limit of 20 bytes")));
        let outside = tempfile::tempdir().expect("tempdir");
        let elsewhere = outside.path().join("in.txt");
        std::fs::write(&elsewhere, "secret\n").expect("write");
        let refused = read_source(&elsewhere, std::slice::from_ref(&root), 10, 20, |_| Ok(()));
        assert!(refused
            .expect_err("outside")
            .contains("outside the allowed source roots"));
    }
}
