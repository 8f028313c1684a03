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
pub use sluice_io::Sampling;
use sluice_io::{is_object_uri, Fields, Source, SourceOptions, Want};
use sluice_store::InputValue;

use crate::error::JobsError;

/// The store's value for an input read by `sluice-io`.
fn stored(input: Result<Input, String>) -> InputValue {
    match input {
        Ok(Input::Text(t)) => InputValue::Text(t),
        Ok(Input::Bytes(b)) => InputValue::Bytes(b),
        Ok(Input::Json(j)) => InputValue::Json(j),
        Ok(Input::Tensors(t)) => InputValue::Json(serde_json::to_value(t).unwrap_or_default()),
        Ok(Input::Frame(f)) => match frame_png(&f) {
            Ok(png) => InputValue::Bytes(png),
            Err(message) => InputValue::Invalid(message),
        },
        Err(message) => InputValue::Invalid(message),
    }
}

/// A video frame of a job's source, stored as a PNG file (lossless, and an
/// image model's usual input). Job sources decode frames at the video's own
/// size, so the picture's pixels are the video's and boxes need no mapping.
fn frame_png(f: &sluice_core::Frame) -> Result<Vec<u8>, String> {
    use image::ImageEncoder as _;
    if (f.width, f.height) != (f.source_width, f.source_height) {
        return Err("a scaled video frame cannot be stored in a job".into());
    }
    let mut png = Vec::with_capacity(f.rgb.len() / 2);
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Sub,
    )
    .write_image(&f.rgb, f.width, f.height, image::ExtendedColorType::Rgb8)
    .map_err(|e| format!("cannot store the video frame: {e}"))?;
    Ok(png)
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

/// A `source` that passed the roots check: a canonical local path, or an
/// object-store URI under an allowed object-store root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A local file or folder.
    Local(PathBuf),
    /// An object or prefix, such as `s3://bucket/prefix/texts.jsonl`.
    Object(String),
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Local(p) => write!(f, "{}", p.display()),
            SourceSpec::Object(u) => f.write_str(u),
        }
    }
}

/// Whether the object-store URI `uri` lies under `root` (a URI prefix that
/// ends at a `/`), with no `.` or `..` segment, plain or percent-encoded.
pub(crate) fn object_under(uri: &str, root: &str) -> bool {
    let Some((_, rest)) = uri.split_once("://") else {
        return false;
    };
    let dotted = rest.split('/').any(|seg| {
        let decoded = seg.replace("%2e", ".").replace("%2E", ".");
        decoded == "." || decoded == ".."
    });
    if dotted || rest.contains('\\') {
        return false;
    }
    let root = root.trim_end_matches('/');
    uri == root || uri.strip_prefix(root).is_some_and(|tail| tail.starts_with('/'))
}

/// Resolves a `source`, allowing only paths under the configured folders
/// and URIs under the configured object-store prefixes.
pub fn resolve_source(path: &str, roots: &[PathBuf], object_roots: &[String]) -> Result<SourceSpec, JobsError> {
    if roots.is_empty() && object_roots.is_empty() {
        return Err(JobsError::Forbidden(
            "server-side sources are disabled: start the server with --source-root DIR or --source-root s3://BUCKET/PREFIX"
                .into(),
        ));
    }
    let refused = || JobsError::Forbidden(format!("source {path} is not under an allowed root"));
    if is_object_uri(path) {
        return if object_roots.iter().any(|r| object_under(path, r)) {
            Ok(SourceSpec::Object(path.to_owned()))
        } else {
            Err(refused())
        };
    }
    let canonical = Path::new(path).canonicalize().map_err(|_| refused())?;
    if roots.iter().any(|r| canonical.starts_with(r)) {
        Ok(SourceSpec::Local(canonical))
    } else {
        Err(refused())
    }
}

/// How a source job's source is read, kept with the job (the store's
/// `source_options`, as JSON) so that a resumed ingestion reads it the same
/// way.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOptions {
    /// Which frames of video files become inputs; `None`: every frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<sluice_io::Sampling>,
}

impl ReadOptions {
    /// The options a job records (`None`: the defaults).
    pub fn of(stored: Option<&str>) -> Result<ReadOptions, String> {
        stored.map_or(Ok(ReadOptions::default()), |text| {
            serde_json::from_str(text).map_err(|e| format!("the job's source options do not parse: {e}"))
        })
    }
}

/// Options for reading a source of a job: any value form; local files
/// confined to `roots`; inputs over `max_input` bytes fail alone unread.
fn job_source_options(roots: &[PathBuf], max_input: usize, read: &ReadOptions) -> SourceOptions {
    let mut opts = SourceOptions::new(Want::Any);
    opts.roots = Some(roots.to_vec());
    opts.max_file_bytes = Some(max_input);
    // Video files: frames at the video's size, one video at a time, so that
    // a source read again after a crash gives its records in the same order.
    opts.video = Some(sluice_io::VideoOptions {
        sampling: read.video.unwrap_or_default(),
        decoders: 1,
        ..sluice_io::VideoOptions::default()
    });
    opts
}

/// Checks that an object-store source can be opened (the bucket and the
/// object or prefix exist), so a job on a missing one is refused at once.
/// Blocking (network I/O): call it off the async executor.
pub fn check_object_source(uri: &str, max_input: usize) -> Result<(), JobsError> {
    Source::open(uri, job_source_options(&[], max_input, &ReadOptions::default()))
        .map(drop)
        .map_err(|e| JobsError::Invalid(e.to_string()))
}

/// One record of a source as a job input: its key and value, or why the
/// source cannot be read any further.
pub type SourceRecord = Result<(String, InputValue), String>;

/// Opens a source (JSONL / CSV / plain-text file, a folder of files, an
/// object or a prefix) and returns its records as job inputs, in the
/// source's deterministic order (`sluice-io`: the same keys and the same
/// order every time the same source is read). A malformed line, or an input
/// larger than `max_input`, becomes an invalid input that fails alone; an
/// `Err` item means the source stopped being readable there (it is the
/// last). Blocking: read it off the async executor.
///
/// Every file is opened only after resolving its links: one that leads
/// outside `roots` (a symlink planted in a folder) fails alone, with a
/// message that says nothing about the file it points to.
pub fn source_records(
    source: &SourceSpec,
    roots: &[PathBuf],
    max_input: usize,
    read: &ReadOptions,
) -> Result<impl Iterator<Item = SourceRecord>, String> {
    let opts = job_source_options(roots, max_input, read);
    let spec = match source {
        SourceSpec::Local(path) => path
            .to_str()
            .ok_or_else(|| format!("source {} is not UTF-8", path.display()))?,
        SourceSpec::Object(uri) => uri.as_str(),
    };
    let records = Source::open(spec, opts)
        .and_then(Source::records)
        .map_err(|e| e.to_string())?;
    Ok(records.map(move |record| {
        let record = record.map_err(|e| e.to_string())?;
        let mut value = stored(record.input);
        if input_size(&value) > max_input {
            value = InputValue::Invalid(format!("input is larger than the limit of {max_input} bytes"));
        }
        Ok((record.key, value))
    }))
}

/// Streams a source ([`source_records`]) as `(key, input)` chunks of up to
/// `chunk` items, calling `sink` per chunk; returns the number of inputs.
pub fn read_source(
    source: &SourceSpec,
    roots: &[PathBuf],
    chunk: usize,
    max_input: usize,
    mut sink: impl FnMut(Vec<(String, InputValue)>) -> Result<(), String>,
) -> Result<u64, String> {
    let chunk = chunk.max(1);
    let mut buf = Vec::with_capacity(chunk);
    let mut total = 0u64;
    for record in source_records(source, roots, max_input, &ReadOptions::default())? {
        buf.push(record?);
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

    /// A job's video source (real ffmpeg from scripts/setup.sh, the
    /// committed vtest.avi cut to 1 s): every frame, in order, as a PNG
    /// image at the video's size, keyed `<video>@<seconds>`, confined to the
    /// roots; a file that is not a video fails alone.
    #[test]
    fn a_video_source_gives_every_frame_as_a_png_keyed_by_its_time() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ffmpeg = root.join(".sluice/bin/ffmpeg");
        assert!(
            ffmpeg.is_file(),
            "run `bash scripts/setup.sh` first (it installs ffmpeg)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let clip = dir.path().join("clip.avi");
        let st = std::process::Command::new(&ffmpeg)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
            .arg(root.join("data/video/vtest.avi"))
            .args(["-t", "1", "-c", "copy", "-y"])
            .arg(&clip)
            .status()
            .expect("ffmpeg runs");
        assert!(st.success());
        std::fs::write(dir.path().join("notes.avi"), b"not a video").expect("write");
        let folder = dir.path().canonicalize().expect("canonical");
        let records: Vec<(String, InputValue)> = source_records(
            &SourceSpec::Local(folder.clone()),
            std::slice::from_ref(&folder),
            16 << 20,
            &ReadOptions::default(),
        )
        .expect("opens")
        .collect::<Result<_, _>>()
        .expect("reads");
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        let mut want: Vec<String> = (0..10)
            .map(|i| format!("clip.avi@{:.3}", f64::from(i) / 10.0))
            .collect();
        want.push("notes.avi".into());
        assert_eq!(keys, want);
        for (key, value) in &records[..10] {
            let InputValue::Bytes(png) = value else {
                panic!("{key}: {value:?}")
            };
            let img = image::load_from_memory(png).expect("a PNG");
            assert_eq!((img.width(), img.height()), (768, 576), "{key}");
        }
        assert!(matches!(&records[10].1, InputValue::Invalid(m) if m.contains("not a video")));
    }

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
    fn object_sources_only_under_their_roots() {
        let roots = ["s3://bucket/allowed/".to_string()];
        let ok = |u: &str| resolve_source(u, &[], &roots);
        assert_eq!(
            ok("s3://bucket/allowed/day1/texts.jsonl").expect("under the root"),
            SourceSpec::Object("s3://bucket/allowed/day1/texts.jsonl".into())
        );
        assert!(ok("s3://bucket/allowed/").is_ok());
        for bad in [
            "s3://bucket/allowed-not/x.jsonl",
            "s3://bucket/other/x.jsonl",
            "s3://other/allowed/x.jsonl",
            "gs://bucket/allowed/x.jsonl",
            "s3://bucket/allowed/../other/x.jsonl",
            "s3://bucket/allowed/%2e%2e/other/x.jsonl",
            "s3://bucket/allowed/%2E%2E/other/x.jsonl",
        ] {
            assert!(matches!(ok(bad), Err(JobsError::Forbidden(_))), "{bad}");
        }
        // A local path is not allowed by an object-store root alone.
        assert!(matches!(ok("/etc/passwd"), Err(JobsError::Forbidden(_))));
    }

    #[test]
    fn source_chunks_and_the_input_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let file = root.join("in.txt");
        let body: String = (0..25).map(|i| format!("text {i}\n")).collect::<String>() + &"x".repeat(40);
        std::fs::write(&file, body).expect("write");
        let mut chunks = Vec::new();
        let n = read_source(&SourceSpec::Local(file), std::slice::from_ref(&root), 10, 20, |c| {
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
        let refused = read_source(
            &SourceSpec::Local(elsewhere),
            std::slice::from_ref(&root),
            10,
            20,
            |_| Ok(()),
        );
        assert!(refused
            .expect_err("outside")
            .contains("outside the allowed source roots"));
    }
}
