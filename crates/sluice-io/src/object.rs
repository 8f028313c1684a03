//! Sources in object stores: `s3://`, `gs://`, `az://` and `file://` URIs,
//! through the `object_store` crate.
//!
//! A URI names one object (read like a local file: JSONL, CSV, Parquet or
//! plain lines by its extension, or one input for [`Want::Bytes`] unless it
//! is Parquet) or a prefix
//! (one input per object under it, like a local folder). A URI that ends in
//! `/` is a prefix; otherwise it is an object when one has that key, else a
//! prefix when objects lie under `key/`.
//!
//! Credentials and endpoints come from the standard environment of each
//! store (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP=true` for a
//! plain-HTTP endpoint). They never appear in errors: messages name the URI
//! and the store's answer only.
//!
//! All I/O runs on a thread of its own with a small Tokio runtime, never on
//! the caller's executor. A prefix is listed as a stream and read with
//! [`READS_IN_FLIGHT`] objects in flight, in listing order; what is read
//! waits in a bounded channel, so memory stays bounded for any number of
//! objects.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, ObjectStoreScheme};
use tokio::sync::mpsc;
use url::Url;

use crate::local::{bytes_record, Format, Records};
use crate::{Record, SourceError, SourceOptions, Want};

/// Objects of a prefix read at the same time.
pub const READS_IN_FLIGHT: usize = 8;

/// Records (prefix) or byte chunks (one object) waiting in memory.
const CHANNEL: usize = 64;

/// Whether `spec` is an object-store URI rather than a local path.
pub fn is_object_uri(spec: &str) -> bool {
    spec.split_once("://").is_some_and(|(scheme, _)| {
        matches!(
            scheme,
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl" | "file"
        )
    })
}

/// What a store said, short: the S3 error code and message when the answer
/// is an S3 error document, else the error's first line. Errors name URLs
/// and answers, never credentials (requests are signed in headers).
pub(crate) fn said(e: &object_store::Error) -> String {
    if let object_store::Error::NotFound { .. } = e {
        return "not found".into();
    }
    let text = e.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find("</")? + start;
        Some(text[start..end].to_owned())
    };
    if let (Some(code), Some(message)) = (tag("Code"), tag("Message")) {
        return format!("{code}: {message}");
    }
    let first = text.lines().next().unwrap_or_default();
    first.chars().take(300).collect()
}

/// Opens the store a URI names, configured from the environment.
pub(crate) fn store_for(url: &Url) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| e.to_string())?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        ObjectStoreScheme::MicrosoftAzure => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| e.to_string())?,
        ),
        ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
        other => return Err(format!("{other:?} URIs are not supported as sources")),
    };
    Ok((store, path))
}

/// Runs `f` to completion on a new thread with its own runtime, so it may
/// be called from anywhere, an async task included.
pub(crate) fn on_io_thread<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
        Ok(rt.block_on(f))
    })
    .join()
    .map_err(|_| "the object-store reader stopped".to_string())?
}

/// Starts `f(tx)` on a thread of its own with its own runtime. The runtime
/// is built here, so a failure to build it is an error, not a channel that
/// closes as if the source were empty.
pub(crate) fn spawn_io<T: Send + 'static>(
    capacity: usize,
    f: impl FnOnce(mpsc::Sender<T>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + 'static,
) -> Result<mpsc::Receiver<T>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let (tx, rx) = mpsc::channel(capacity);
    std::thread::spawn(move || rt.block_on(f(tx)));
    Ok(rx)
}

#[derive(Debug)]
enum Layout {
    Object {
        path: ObjectPath,
        format: Format,
        bytes: bool,
        /// The object's size, for ranged reads (Parquet).
        size: u64,
    },
    Prefix {
        prefix: ObjectPath,
    },
}

/// A source in an object store, opened (the URI resolved to an object or a
/// prefix) but not yet read.
#[derive(Debug)]
pub struct ObjectSource {
    uri: String,
    store: Arc<dyn ObjectStore>,
    layout: Layout,
    opts: SourceOptions,
}

impl ObjectSource {
    /// Opens `uri`: one object, or a prefix. A bad URI, a missing bucket, or
    /// a key with no object at it or under it is [`SourceError::Object`],
    /// naming the URI; kept columns asked of a prefix or an object without
    /// columns are [`SourceError::NoColumns`].
    pub fn open(uri: &str, opts: SourceOptions) -> Result<ObjectSource, SourceError> {
        let fail = |message: String| SourceError::Object {
            uri: uri.to_owned(),
            message,
        };
        let url = Url::parse(uri).map_err(|e| fail(format!("not a valid URI: {e}")))?;
        let (store, path) = store_for(&url).map_err(fail)?;
        let as_prefix = uri.ends_with('/') || path.as_ref().is_empty();
        // One round trip to the store's thread: is it an object (of what
        // size), else is there anything under it?
        let (object_size, any_under) = {
            let store = store.clone();
            let path = path.clone();
            on_io_thread(async move {
                if !as_prefix {
                    match store.head(&path).await {
                        Ok(meta) => return Ok((Some(meta.size), true)),
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(said(&e)),
                    }
                }
                let first = store.list(Some(&path)).next().await.transpose().map_err(|e| said(&e))?;
                Ok((None, first.is_some()))
            })
            .map_err(fail)?
            .map_err(fail)?
        };
        let layout = if let Some(size) = object_size {
            let ext = path.extension().unwrap_or("");
            let format = Format::of_extension(ext, opts.want);
            Layout::Object {
                bytes: opts.want == Want::Bytes && format != Format::Parquet,
                format,
                path,
                size,
            }
        } else if any_under {
            Layout::Prefix { prefix: path }
        } else {
            return Err(fail("no object has this key, and none lies under it".into()));
        };
        let columns = matches!(&layout, Layout::Object { format, bytes: false, .. } if format.has_columns());
        if !opts.fields.keep.is_empty() && !columns {
            return Err(SourceError::NoColumns(uri.to_owned()));
        }
        Ok(ObjectSource {
            uri: uri.to_owned(),
            store,
            layout,
            opts,
        })
    }

    /// The records, read as they are asked for (blocking: use them on a
    /// thread of their own). The reads run on a thread of their own.
    pub fn records(self) -> Result<Records, SourceError> {
        let ObjectSource {
            uri,
            store,
            layout,
            opts,
        } = self;
        let fail = {
            let uri = uri.clone();
            move |message: String| SourceError::Object {
                uri: uri.clone(),
                message,
            }
        };
        match layout {
            Layout::Object { path, bytes: true, .. } => {
                let key = path.filename().unwrap_or(path.as_ref()).to_owned();
                let max = opts.max_file_bytes;
                let want = opts.want;
                let rx = spawn_io(1, move |tx| {
                    Box::pin(async move {
                        let got = read_object(&*store, &path, max).await;
                        let _ = tx.send(Ok(bytes_record(key, got, want))).await;
                    })
                })
                .map_err(&fail)?;
                Ok(Records::from_channel(rx, opts))
            }
            Layout::Object {
                path,
                format: Format::Parquet,
                size,
                ..
            } => crate::parquet_source::object_records(&uri, store, path, size, opts),
            Layout::Object { path, format, .. } => {
                let chunks = spawn_io(CHANNEL, move |tx| {
                    Box::pin(async move {
                        let mut body = match store.get(&path).await {
                            Ok(r) => r.into_stream(),
                            Err(e) => {
                                let _ = tx.send(Err(std::io::Error::other(said(&e)))).await;
                                return;
                            }
                        };
                        while let Some(chunk) = body.next().await {
                            let chunk = chunk.map_err(|e| std::io::Error::other(said(&e)));
                            let stop = chunk.is_err();
                            if tx.send(chunk).await.is_err() || stop {
                                return;
                            }
                        }
                    })
                })
                .map_err(&fail)?;
                let reader: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(
                    1 << 16,
                    ChannelReader {
                        rx: chunks,
                        chunk: Default::default(),
                    },
                ));
                Records::from_reader(&uri, reader, format, opts)
            }
            Layout::Prefix { prefix } => {
                let max = opts.max_file_bytes;
                let want = opts.want;
                let rx = spawn_io(CHANNEL, move |tx| {
                    Box::pin(async move {
                        let list = store.list(Some(&prefix));
                        let (store, base) = (&store, &prefix);
                        let mut reads = list
                            .map_err(|e| said(&e))
                            .map_ok(|meta| async move {
                                let key = relative_key(&meta.location, base);
                                let got = read_object(&**store, &meta.location, max).await;
                                Ok::<Record, String>(bytes_record(key, got, want))
                            })
                            .try_buffered(READS_IN_FLIGHT);
                        while let Some(r) = reads.next().await {
                            let item = r.map_err(|message| SourceError::Object {
                                uri: uri.clone(),
                                message: format!("listing stopped: {message}"),
                            });
                            let stop = item.is_err();
                            if tx.send(item).await.is_err() || stop {
                                return;
                            }
                        }
                    })
                })
                .map_err(&fail)?;
                Ok(Records::from_channel(rx, opts))
            }
        }
    }
}

/// The videos `uri` names, when it is one video object or a prefix whose
/// objects are all videos (by extension), with their keys (the object's
/// name, or its key under the prefix); `None` otherwise.
pub(crate) fn video_objects(uri: &str) -> Result<Option<Vec<(crate::video::VideoFile, String)>>, SourceError> {
    use crate::video::{is_video_path, VideoFile};
    let fail = |message: String| SourceError::Object {
        uri: uri.to_owned(),
        message,
    };
    let url = Url::parse(uri).map_err(|e| fail(format!("not a valid URI: {e}")))?;
    let (store, path) = store_for(&url).map_err(fail)?;
    let is_video = |p: &ObjectPath| is_video_path(std::path::Path::new(p.as_ref()));
    let as_prefix = uri.ends_with('/') || path.as_ref().is_empty();
    if !as_prefix && is_video(&path) {
        let key = path.filename().unwrap_or(path.as_ref()).to_owned();
        return Ok(Some(vec![(VideoFile::Object { store, path }, key)]));
    }
    // A prefix: its first object tells whether to list it all.
    let listed = {
        let (store, path) = (store.clone(), path.clone());
        on_io_thread(async move {
            let mut list = store.list(Some(&path));
            let Some(first) = list.next().await.transpose().map_err(|e| said(&e))? else {
                return Ok(Vec::new());
            };
            if !is_video(&first.location) {
                return Ok(Vec::new());
            }
            let mut all = vec![first.location];
            while let Some(meta) = list.next().await.transpose().map_err(|e| said(&e))? {
                all.push(meta.location);
            }
            Ok::<_, String>(all)
        })
        .map_err(fail)?
        .map_err(fail)?
    };
    if listed.is_empty() || !listed.iter().all(is_video) {
        return Ok(None);
    }
    Ok(Some(
        listed
            .into_iter()
            .map(|location| {
                let key = relative_key(&location, &path);
                (
                    VideoFile::Object {
                        store: store.clone(),
                        path: location,
                    },
                    key,
                )
            })
            .collect(),
    ))
}

/// An object's key relative to the prefix it was listed under.
fn relative_key(location: &ObjectPath, base: &ObjectPath) -> String {
    match location.prefix_match(base) {
        Some(parts) => parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/"),
        None => location.to_string(),
    }
}

/// Reads one object whole, refusing one over `max` bytes.
async fn read_object(store: &dyn ObjectStore, path: &ObjectPath, max: Option<usize>) -> Result<Vec<u8>, String> {
    let got = store.get(path).await.map_err(|e| said(&e))?;
    if let Some(m) = max {
        if got.meta.size > m as u64 {
            return Err(format!("it is larger than the limit of {m} bytes"));
        }
    }
    got.bytes().await.map(|b| b.to_vec()).map_err(|e| said(&e))
}

/// A blocking reader over byte chunks that an I/O thread sends.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: std::io::Cursor<Bytes>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.chunk.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => self.chunk = std::io::Cursor::new(chunk?),
            }
        }
    }
}
