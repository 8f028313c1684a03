//! Sources on the local file system: a file, a folder or a glob.

use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::confine::{open_confined, read_confined, ReadRefusal};
use crate::parquet_source::{row_count, LocalRows};
use crate::value::{from_text, json_record, kept};
use crate::{Kept, Record, SourceError, SourceOptions, Want};

/// How the records of a file are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Jsonl,
    Csv,
    Parquet,
    Plain,
}

impl Format {
    /// Whether records of this format have named columns to keep.
    pub(crate) fn has_columns(self) -> bool {
        self != Format::Plain
    }

    /// The format a file's extension names.
    fn of(path: &Path, want: Want) -> Format {
        Format::of_extension(path.extension().and_then(|e| e.to_str()).unwrap_or(""), want)
    }

    /// The format a file extension (without its dot) names.
    pub(crate) fn of_extension(ext: &str, want: Want) -> Format {
        match ext.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Format::Jsonl,
            "csv" => Format::Csv,
            "parquet" => Format::Parquet,
            // A tensor model reads JSON whatever the file is called.
            _ if want == Want::Json => Format::Jsonl,
            _ => Format::Plain,
        }
    }
}

#[derive(Debug)]
enum Layout {
    /// One record per line or row of a file.
    File { path: PathBuf, format: Format },
    /// One record per file; keys are relative to `base` when set.
    Files { base: Option<PathBuf>, files: Vec<PathBuf> },
}

/// A source on the local file system, opened (its files found) but not yet
/// read.
#[derive(Debug)]
pub struct LocalSource {
    layout: Layout,
    opts: SourceOptions,
}

impl LocalSource {
    /// Opens `spec`: a folder or a glob (one input per file), or a file (one
    /// input per line or row; for [`Want::Bytes`] the file is one input,
    /// unless it is Parquet). Kept columns asked of a source without columns
    /// are [`SourceError::NoColumns`].
    pub fn open(spec: &str, opts: SourceOptions) -> Result<LocalSource, SourceError> {
        let path = Path::new(spec);
        let layout = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| SourceError::Io {
                    path: spec.to_owned(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            Layout::Files {
                base: Some(path.to_path_buf()),
                files,
            }
        } else if path.is_file() {
            let format = Format::of(path, opts.want);
            if opts.want == Want::Bytes && format != Format::Parquet {
                Layout::Files {
                    base: None,
                    files: vec![path.to_path_buf()],
                }
            } else {
                Layout::File {
                    path: path.to_path_buf(),
                    format,
                }
            }
        } else if spec.contains(['*', '?', '[']) {
            let matches = glob::glob(spec).map_err(|source| SourceError::Glob {
                pattern: spec.to_owned(),
                source,
            })?;
            let mut files: Vec<PathBuf> = matches.filter_map(Result::ok).filter(|p| p.is_file()).collect();
            files.sort();
            Layout::Files { base: None, files }
        } else {
            return Err(SourceError::NotFound(spec.to_owned()));
        };
        if let Layout::Files { files, .. } = &layout {
            if files.is_empty() {
                return Err(SourceError::NoFiles(spec.to_owned()));
            }
        }
        let columns = matches!(&layout, Layout::File { format, .. } if format.has_columns());
        if !opts.fields.keep.is_empty() && !columns {
            return Err(SourceError::NoColumns(spec.to_owned()));
        }
        Ok(LocalSource { layout, opts })
    }

    /// The files of a folder, glob or single file with their keys, when
    /// every one is a video ([`crate::video::is_video_path`]); `None`
    /// otherwise.
    pub(crate) fn video_files(&self) -> Option<Vec<(crate::video::VideoFile, String)>> {
        let files: Vec<&PathBuf> = match &self.layout {
            Layout::Files { files, .. } => files.iter().collect(),
            Layout::File { path, .. } => vec![path],
        };
        if files.is_empty() || !files.iter().all(|f| crate::video::is_video_path(f)) {
            return None;
        }
        let base = match &self.layout {
            Layout::Files { base, .. } => base.as_deref(),
            Layout::File { .. } => None,
        };
        Some(
            files
                .into_iter()
                .map(|f| (crate::video::VideoFile::Local(f.clone()), file_key(f, base)))
                .collect(),
        )
    }

    /// Counts the records (one cheap pass over a file; a Parquet file's
    /// footer; no file is read for a folder), for a progress bar.
    pub fn count(&self) -> Result<u64, SourceError> {
        match &self.layout {
            Layout::Files { files, .. } => Ok(files.len() as u64),
            Layout::File {
                path,
                format: Format::Parquet,
            } => row_count(&path.display().to_string(), &self.open_file(path)?),
            Layout::File { path, format } => {
                let io = |source| SourceError::Io {
                    path: path.display().to_string(),
                    source,
                };
                let reader = BufReader::with_capacity(1 << 20, self.open_file(path)?);
                let mut n = 0u64;
                for line in reader.split(b'\n') {
                    if !line.map_err(io)?.iter().all(u8::is_ascii_whitespace) {
                        n += 1;
                    }
                }
                Ok(if *format == Format::Csv { n.saturating_sub(1) } else { n })
            }
        }
    }

    fn open_file(&self, path: &Path) -> Result<File, SourceError> {
        match &self.opts.roots {
            Some(roots) => open_confined(path, roots).map_err(|why| SourceError::Refused {
                path: path.display().to_string(),
                why,
            }),
            None => File::open(path).map_err(|source| SourceError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The records, read as they are asked for.
    pub fn records(self) -> Result<Records, SourceError> {
        match self.layout {
            Layout::Files { base, files } => Ok(Records {
                state: State::Files {
                    base,
                    files: files.into_iter(),
                },
                opts: self.opts,
            }),
            Layout::File {
                ref path,
                format: Format::Parquet,
            } => {
                let file = self.open_file(path)?;
                let rows = LocalRows::open(&path.display().to_string(), file, &self.opts)?;
                Ok(Records {
                    state: State::Parquet(Box::new(rows)),
                    opts: self.opts,
                })
            }
            Layout::File { ref path, format } => {
                let file = self.open_file(path)?;
                let name = path.display().to_string();
                Records::from_reader(
                    &name,
                    Box::new(BufReader::with_capacity(1 << 16, file)),
                    format,
                    self.opts,
                )
            }
        }
    }

    /// Reads the records on a thread of their own and hands them over
    /// through a channel of `capacity` (so at most that many wait in memory).
    /// A source that stops being readable midway ends with its error.
    pub fn stream(self, capacity: usize) -> mpsc::Receiver<Result<Record, SourceError>> {
        crate::Source::Local(self).stream(capacity)
    }
}

fn csv_state(name: &str, reader: Box<dyn BufRead + Send>, opts: &SourceOptions) -> Result<State, SourceError> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let headers = rdr
        .headers()
        .map_err(|e| SourceError::Csv {
            path: name.to_owned(),
            message: format!("bad header row: {e}"),
        })?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h == name);
    let id_col = match &opts.fields.id {
        Some(f) => column(f),
        None => column("id").or_else(|| column("key")),
    };
    let value_name = opts.fields.value.as_deref().unwrap_or("text");
    let Some(value_col) = column(value_name) else {
        return Err(SourceError::Csv {
            path: name.to_owned(),
            message: format!("no '{value_name}' column (columns: {headers:?})"),
        });
    };
    let keep_cols = opts
        .fields
        .keep
        .iter()
        .map(|k| {
            column(k).map(|c| (k.clone(), c)).ok_or_else(|| SourceError::Csv {
                path: name.to_owned(),
                message: format!("no '{k}' column to keep (columns: {headers:?})"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(State::Csv {
        rows: rdr.into_records(),
        row: 0,
        id_col,
        value_col,
        value_name: value_name.to_owned(),
        keep_cols: (!opts.fields.keep.is_empty()).then_some(keep_cols),
    })
}

enum State {
    Lines {
        name: String,
        reader: Box<dyn BufRead + Send>,
        line: u64,
        jsonl: bool,
        buf: Vec<u8>,
    },
    Csv {
        rows: csv::StringRecordsIntoIter<Box<dyn BufRead + Send>>,
        row: u64,
        id_col: Option<usize>,
        value_col: usize,
        value_name: String,
        /// Kept columns by name and position; `None` when none are asked for.
        keep_cols: Option<Vec<(String, usize)>>,
    },
    /// The rows of a Parquet file.
    Parquet(Box<LocalRows>),
    Files {
        base: Option<PathBuf>,
        files: std::vec::IntoIter<PathBuf>,
    },
    /// Records read on an I/O thread (object stores).
    Channel(mpsc::Receiver<Result<Record, SourceError>>),
    Done,
}

/// The records of a [`LocalSource`], read one at a time (blocking I/O: use
/// it on a thread of its own, or through [`LocalSource::stream`]). An `Err`
/// means the source cannot be read any further; it is the last item.
pub struct Records {
    state: State,
    opts: SourceOptions,
}

impl Records {
    /// The records of one file's content, laid out as `format`; `name`
    /// names it in errors.
    pub(crate) fn from_reader(
        name: &str,
        reader: Box<dyn BufRead + Send>,
        format: Format,
        opts: SourceOptions,
    ) -> Result<Records, SourceError> {
        let state = if format == Format::Csv {
            csv_state(name, reader, &opts)?
        } else if format == Format::Parquet {
            // Parquet needs random access: local files and objects have
            // their own readers (`parquet_source`).
            return Err(SourceError::Parquet {
                path: name.to_owned(),
                message: "Parquet cannot be read as a stream of bytes".into(),
            });
        } else {
            State::Lines {
                name: name.to_owned(),
                reader,
                line: 0,
                jsonl: format == Format::Jsonl,
                buf: Vec::new(),
            }
        };
        Ok(Records { state, opts })
    }

    /// Records that an I/O thread reads and sends.
    pub(crate) fn from_channel(rx: mpsc::Receiver<Result<Record, SourceError>>, opts: SourceOptions) -> Records {
        Records {
            state: State::Channel(rx),
            opts,
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = match &mut self.state {
            State::Done => return None,
            State::Lines {
                name,
                reader,
                line,
                jsonl,
                buf,
            } => next_line(name, reader, line, *jsonl, buf, &self.opts),
            State::Channel(rx) => rx.blocking_recv(),
            State::Parquet(rows) => rows.next(),
            State::Csv {
                rows,
                row,
                id_col,
                value_col,
                value_name,
                keep_cols,
            } => rows.next().map(|rec| {
                *row += 1;
                let n = *row;
                Ok(match rec {
                    Ok(rec) => Record {
                        key: id_col
                            .and_then(|c| rec.get(c))
                            .filter(|k| !k.is_empty())
                            .map_or_else(|| n.to_string(), str::to_owned),
                        input: rec
                            .get(*value_col)
                            .ok_or_else(|| format!("row {n} has no '{value_name}' value"))
                            .and_then(|v| from_text(v, self.opts.want)),
                        keep: csv_kept(keep_cols.as_deref(), Some(&rec)),
                    },
                    Err(e) => Record {
                        key: n.to_string(),
                        input: Err(format!("bad CSV row {n}: {e}")),
                        keep: csv_kept(keep_cols.as_deref(), None),
                    },
                })
            }),
            State::Files { base, files } => files.next().map(|f| Ok(file_record(&f, base.as_deref(), &self.opts))),
        };
        match item {
            None => {
                self.state = State::Done;
                None
            }
            Some(Err(e)) => {
                self.state = State::Done;
                Some(Err(e))
            }
            some => some,
        }
    }
}

/// The kept columns of a CSV row, as strings; `null` for a column the row
/// is too short to have (or a row that could not be read).
fn csv_kept(cols: Option<&[(String, usize)]>, rec: Option<&csv::StringRecord>) -> Option<Kept> {
    cols.map(|cols| {
        cols.iter()
            .map(|(name, c)| {
                let v = rec
                    .and_then(|r| r.get(*c))
                    .map_or(serde_json::Value::Null, |s| serde_json::Value::String(s.to_owned()));
                (name.clone(), v)
            })
            .collect()
    })
}

fn next_line(
    name: &str,
    reader: &mut Box<dyn BufRead + Send>,
    line: &mut u64,
    jsonl: bool,
    buf: &mut Vec<u8>,
    opts: &SourceOptions,
) -> Option<Result<Record, SourceError>> {
    loop {
        buf.clear();
        match reader.read_until(b'\n', buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(source) => {
                return Some(Err(SourceError::Io {
                    path: name.to_owned(),
                    source,
                }))
            }
        }
        *line += 1;
        let n = *line;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        // A line that is not UTF-8 is a malformed line: it fails alone.
        let Ok(text) = std::str::from_utf8(buf) else {
            return Some(Ok(Record {
                key: n.to_string(),
                input: Err(format!("line {n} is not valid UTF-8")),
                keep: if jsonl { kept(None, &opts.fields.keep) } else { None },
            }));
        };
        if text.trim().is_empty() {
            continue;
        }
        return Some(Ok(if jsonl {
            json_record(text, n, opts.want, &opts.fields)
        } else {
            Record {
                key: n.to_string(),
                input: from_text(text, opts.want),
                keep: None,
            }
        }));
    }
}

/// A file's key: its path relative to the folder, or as given or matched.
fn file_key(path: &Path, base: Option<&Path>) -> String {
    base.and_then(|b| path.strip_prefix(b).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn file_record(path: &Path, base: Option<&Path>, opts: &SourceOptions) -> Record {
    let key = file_key(path, base);
    let bytes = match (&opts.roots, opts.max_file_bytes) {
        (Some(roots), max) => read_confined(path, roots, max.unwrap_or(usize::MAX)),
        (None, max) => read_limited(path, max.unwrap_or(usize::MAX)),
    };
    bytes_record(key, bytes.map_err(|why| why.to_string()), opts.want)
}

/// The record of one whole file or object, or why it could not be read.
pub(crate) fn bytes_record(key: String, bytes: Result<Vec<u8>, String>, want: Want) -> Record {
    let input = match bytes {
        Err(why) => Err(format!("cannot read {key}: {why}")),
        Ok(b) => match want {
            Want::Bytes | Want::Any => Ok(sluice_core::Input::Bytes(b)),
            Want::Text | Want::Json => match String::from_utf8(b) {
                Ok(s) => from_text(&s, want),
                Err(_) => Err(format!("{key} is not UTF-8 text")),
            },
        },
    };
    Record { key, input, keep: None }
}

/// Reads a file, refusing one larger than `max` bytes without reading it.
fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>, ReadRefusal> {
    let file = File::open(path).map_err(|e| ReadRefusal::Io(e.kind()))?;
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let len = file.metadata().map_err(|e| ReadRefusal::Io(e.kind()))?.len();
    if len > limit {
        return Err(ReadRefusal::TooLarge(max));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ReadRefusal::Io(e.kind()))?;
    if bytes.len() > max {
        return Err(ReadRefusal::TooLarge(max));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use serde_json::json;
    use sluice_core::Input;

    use super::*;
    use crate::Fields;

    fn write(dir: &Path, name: &str, body: &[u8]) -> String {
        let p = dir.join(name);
        File::create(&p).and_then(|mut f| f.write_all(body)).expect("write");
        p.display().to_string()
    }

    fn read(spec: &str, opts: SourceOptions) -> Vec<Record> {
        LocalSource::open(spec, opts)
            .expect("open")
            .records()
            .expect("records")
            .collect::<Result<_, _>>()
            .expect("read")
    }

    fn keys(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn kept_columns_named_after_result_fields_or_empty_are_refused_by_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "t.jsonl",
            b"{\"id\": \"a\", \"text\": \"x\", \"lang\": \"en\"}\n",
        );
        let open = |keep: &[&str]| {
            let mut opts = SourceOptions::new(Want::Text);
            opts.fields.keep = keep.iter().map(|k| k.to_string()).collect();
            crate::Source::open(&file, opts).map(drop)
        };
        for bad in [&["lang", "output"][..], &["error_code"], &["lang", ""]] {
            match open(bad) {
                Err(SourceError::BadKeep(m)) => assert!(
                    m.contains("output") || m.contains("error_code") || m.contains("empty"),
                    "{m}"
                ),
                other => panic!("{bad:?}: expected BadKeep, got {other:?}"),
            }
        }
        open(&["lang"]).expect("a column of the input");
    }

    #[test]
    fn jsonl_lines_are_numbered_physically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = b"{\"text\": \"a\"}\n\n{\"id\": \"x\", \"text\": \"b\"}\r\nnot json\n\xff\xfe\n{\"text\": \"c\"}";
        let spec = write(dir.path(), "in.jsonl", body);
        let src = LocalSource::open(&spec, SourceOptions::new(Want::Text)).expect("open");
        assert_eq!(src.count().expect("count"), 5);
        let r = read(&spec, SourceOptions::new(Want::Text));
        assert_eq!(keys(&r), ["1", "x", "4", "5", "6"]);
        assert_eq!(r[1].input, Ok(Input::Text("b".into())));
        assert!(r[2]
            .input
            .as_ref()
            .is_err_and(|e| e.starts_with("line 4 is not valid JSON")));
        assert_eq!(r[3].input, Err("line 5 is not valid UTF-8".into()));
        assert_eq!(r[4].input, Ok(Input::Text("c".into())));
    }

    #[test]
    fn csv_rows_and_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = write(dir.path(), "in.csv", b"key,text,lang\nk1,hello,en\n,hola,es\nk3\n");
        let r = read(&spec, SourceOptions::new(Want::Text));
        assert_eq!(keys(&r), ["k1", "2", "k3"]);
        assert_eq!(r[1].input, Ok(Input::Text("hola".into())));
        assert_eq!(r[2].input, Err("row 3 has no 'text' value".into()));
        let mut opts = SourceOptions::new(Want::Text);
        opts.fields = Fields {
            id: Some("lang".into()),
            value: Some("body".into()),
            keep: Vec::new(),
        };
        let err = LocalSource::open(&spec, opts).expect("open").records().err();
        assert!(
            err.is_some_and(|e| e.to_string().contains("no 'body' column")),
            "a missing column is named"
        );
    }

    #[test]
    fn csv_kept_columns_are_strings_by_header_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = write(dir.path(), "in.csv", b"id,text,lang,score\na,hello,en,0.5\nb,hola\n");
        let mut opts = SourceOptions::new(Want::Text);
        opts.fields.keep = vec!["score".into(), "id".into(), "lang".into()];
        let r = read(&spec, opts.clone());
        assert_eq!(keys(&r), ["a", "b"]);
        assert_eq!(
            r[0].keep.clone().map(serde_json::Value::Object),
            Some(json!({"score": "0.5", "id": "a", "lang": "en"}))
        );
        // A short row keeps nulls for the columns it lacks.
        assert_eq!(
            r[1].keep.clone().map(serde_json::Value::Object),
            Some(json!({"score": null, "id": "b", "lang": null}))
        );
        opts.fields.keep.push("missing".into());
        let err = LocalSource::open(&spec, opts).expect("open").records().err();
        assert!(
            matches!(&err, Some(SourceError::Csv { path, message })
                if *path == spec && message.starts_with("no 'missing' column to keep")),
            "{err:?}"
        );
    }

    #[test]
    fn jsonl_kept_fields_and_sources_without_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = write(dir.path(), "in.jsonl", b"{\"text\": \"a\", \"lang\": \"en\"}\n\xff\n");
        let mut opts = SourceOptions::new(Want::Text);
        opts.fields.keep = vec!["lang".into()];
        let r = read(&spec, opts.clone());
        assert_eq!(
            r[0].keep.clone().map(serde_json::Value::Object),
            Some(json!({"lang": "en"}))
        );
        assert_eq!(r[1].input, Err("line 2 is not valid UTF-8".into()));
        assert_eq!(
            r[1].keep.clone().map(serde_json::Value::Object),
            Some(json!({"lang": null}))
        );
        // Plain lines, folders and globs have no columns to keep.
        let lines = write(dir.path(), "in.txt", b"x\n");
        let folder = dir.path().display().to_string();
        for spec in [lines, folder.clone(), format!("{folder}/*.txt")] {
            assert!(
                matches!(LocalSource::open(&spec, opts.clone()), Err(SourceError::NoColumns(s)) if s == spec),
                "{spec}"
            );
        }
        let mut bytes = SourceOptions::new(Want::Bytes);
        bytes.fields.keep = vec!["lang".into()];
        assert!(matches!(
            LocalSource::open(&spec, bytes),
            Err(SourceError::NoColumns(_))
        ));
    }

    #[test]
    fn plain_lines_and_tensor_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = write(dir.path(), "in.txt", b"first\n\nthird\n");
        let r = read(&spec, SourceOptions::new(Want::Any));
        assert_eq!(keys(&r), ["1", "3"]);
        assert_eq!(r[1].input, Ok(Input::Text("third".into())));
        let spec = write(dir.path(), "t.txt", b"[1, 2]\nnope\n");
        let r = read(&spec, SourceOptions::new(Want::Json));
        assert_eq!(r[0].input, Ok(Input::Json(json!([1, 2]))));
        assert!(r[1].input.is_err());
    }

    #[test]
    fn folders_and_globs_give_one_input_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "b.jpg", b"BB");
        write(dir.path(), "a.jpg", b"A");
        write(dir.path(), "c.txt", b"CCC");
        std::fs::create_dir(dir.path().join("sub")).expect("subdir");
        let folder = dir.path().display().to_string();
        let mut opts = SourceOptions::new(Want::Bytes);
        opts.max_file_bytes = Some(2);
        let r = read(&folder, opts);
        assert_eq!(keys(&r), ["a.jpg", "b.jpg", "c.txt"]);
        assert_eq!(r[0].input, Ok(Input::Bytes(b"A".to_vec())));
        assert_eq!(
            r[2].input,
            Err("cannot read c.txt: it is larger than the limit of 2 bytes".into())
        );
        let glob = format!("{folder}/*.jpg");
        let r = read(&glob, SourceOptions::new(Want::Bytes));
        assert_eq!(r.len(), 2);
        assert!(r[0].key.ends_with("a.jpg") && r[0].key.starts_with(&folder));
        assert!(matches!(
            LocalSource::open(&format!("{folder}/*.png"), SourceOptions::new(Want::Bytes)),
            Err(SourceError::NoFiles(_))
        ));
        assert!(matches!(
            LocalSource::open(&format!("{folder}/missing.jsonl"), SourceOptions::new(Want::Text)),
            Err(SourceError::NotFound(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn roots_confine_every_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root");
        write(&root, "ok.bin", b"fine");
        let secret = write(outside.path(), "secret.bin", b"secret");
        std::os::unix::fs::symlink(&secret, root.join("link.bin")).expect("symlink");
        let mut opts = SourceOptions::new(Want::Any);
        opts.roots = Some(vec![root.canonicalize().expect("canonical")]);
        let r = read(&root.display().to_string(), opts.clone());
        assert_eq!(keys(&r), ["link.bin", "ok.bin"]);
        let err = r[0].input.clone().expect_err("link outside");
        assert!(
            err.contains("outside the allowed source roots") && !err.contains("secret"),
            "{err}"
        );
        assert_eq!(r[1].input, Ok(Input::Bytes(b"fine".to_vec())));
        let lines = write(outside.path(), "in.txt", b"x\n");
        let refused = LocalSource::open(&lines, opts).expect("open").records().err();
        assert!(matches!(refused, Some(SourceError::Refused { .. })));
    }

    #[tokio::test]
    async fn stream_hands_records_over_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let spec = write(dir.path(), "in.txt", body.as_bytes());
        let mut rx = LocalSource::open(&spec, SourceOptions::new(Want::Text))
            .expect("open")
            .stream(8);
        let mut n = 0;
        while let Some(r) = rx.recv().await {
            let r = r.expect("record");
            n += 1;
            assert_eq!(r.key, n.to_string());
        }
        assert_eq!(n, 1000);
    }
}
