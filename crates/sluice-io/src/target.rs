//! Where a sink's files go: a local folder, or a prefix in an object store.
//!
//! Every file is first written whole to a local temporary file, then
//! committed under its final name: renamed into place in a local folder
//! (after an fsync), uploaded to an object store (a multipart upload,
//! retried with backoff). A file visible under its final name is therefore
//! always whole, and committing the same name again replaces it atomically,
//! which is what lets a job's output be rewritten idempotently after a
//! crash.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart};
use url::Url;

use crate::object::{on_io_thread, said, store_for};
use crate::sink::SinkError;

/// Attempts of one upload before it is reported as failed (the store's
/// client also retries each request on its own).
const UPLOAD_ATTEMPTS: u32 = 4;

/// Upload chunk size (each a part of a multipart upload).
const CHUNK: usize = 8 << 20;

/// A local folder or an object-store prefix that files are committed to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A folder on this machine.
    Local(PathBuf),
    /// A prefix in an object store, such as `s3://bucket/out/`.
    Object {
        /// The URI as given, for messages.
        uri: String,
        /// The store.
        store: Arc<dyn ObjectStore>,
        /// The prefix inside the store (no trailing `/`).
        prefix: ObjectPath,
    },
}

fn object_err(uri: &str, message: String) -> SinkError {
    SinkError::Object {
        uri: uri.to_owned(),
        message,
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Target {
    /// A local folder (created when missing) or, for an object-store URI, a
    /// prefix; the store is configured from the environment as for sources.
    pub fn open(spec: &str) -> Result<Target, SinkError> {
        if !crate::is_object_uri(spec) {
            let dir = Path::new(spec);
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            return Ok(Target::Local(dir.to_path_buf()));
        }
        let url = Url::parse(spec).map_err(|e| object_err(spec, format!("not a valid URI: {e}")))?;
        let (store, prefix) = store_for(&url).map_err(|m| object_err(spec, m))?;
        Ok(Target::Object {
            uri: spec.to_owned(),
            store,
            prefix,
        })
    }

    /// The folder or URI, for messages.
    pub fn display(&self) -> String {
        match self {
            Target::Local(d) => d.display().to_string(),
            Target::Object { uri, .. } => uri.clone(),
        }
    }

    /// Where `name` is, for messages.
    pub fn name_of(&self, name: &str) -> String {
        match self {
            Target::Local(d) => d.join(name).display().to_string(),
            Target::Object { uri, .. } => format!("{}/{name}", uri.trim_end_matches('/')),
        }
    }

    fn key(prefix: &ObjectPath, name: &str) -> ObjectPath {
        prefix.clone().join(name)
    }

    /// The names of the files directly in the folder or under the prefix.
    /// For an object store this also checks that the bucket exists and
    /// answers, so a bad output fails before any work is done.
    pub fn names(&self) -> Result<Vec<String>, SinkError> {
        match self {
            Target::Local(dir) => {
                let mut out = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
                    out.push(entry.map_err(io_err(dir))?.file_name().to_string_lossy().into_owned());
                }
                Ok(out)
            }
            Target::Object { uri, store, prefix } => {
                let (store, prefix) = (store.clone(), prefix.clone());
                on_io_thread(async move {
                    let listed = store.list_with_delimiter(Some(&prefix)).await.map_err(|e| said(&e))?;
                    Ok(listed
                        .objects
                        .into_iter()
                        .filter_map(|m| m.location.filename().map(str::to_owned))
                        .collect())
                })
                .map_err(|m| object_err(uri, m))?
                .map_err(|m: String| object_err(uri, m))
            }
        }
    }

    /// A new temporary file for `name`: in the folder itself for a local
    /// target (so the rename stays on one file system), else in the system's
    /// temporary folder.
    pub fn temp_file(&self, name: &str) -> Result<(File, PathBuf), SinkError> {
        match self {
            Target::Local(dir) => {
                let path = dir.join(format!(".{name}.tmp"));
                let file = File::create(&path).map_err(io_err(&path))?;
                Ok((file, path))
            }
            Target::Object { .. } => {
                // A name of its own in the system's temporary folder, created exclusively.
                let tmp = std::env::temp_dir();
                tempfile::Builder::new()
                    .prefix("sluice-")
                    .suffix(&format!("-{name}.tmp"))
                    .tempfile_in(&tmp)
                    .and_then(|f| f.keep().map_err(|e| e.error))
                    .map_err(io_err(&tmp))
            }
        }
    }

    /// Gives the whole temporary file `tmp` its final name `name` (see the
    /// module docs); the temporary file is gone afterwards.
    pub fn commit(&self, file: File, tmp: &Path, name: &str) -> Result<(), SinkError> {
        match self {
            Target::Local(dir) => {
                file.sync_all().map_err(io_err(tmp))?;
                drop(file);
                let dest = dir.join(name);
                std::fs::rename(tmp, &dest).map_err(io_err(&dest))
            }
            Target::Object { store, prefix, .. } => {
                drop(file);
                let result =
                    upload(store, &Self::key(prefix, name), tmp).map_err(|m| object_err(&self.name_of(name), m));
                let _ = std::fs::remove_file(tmp);
                result
            }
        }
    }

    /// Writes a small file (a manifest) whole under `name`: locally through
    /// a temporary file and a rename, to a store in one PUT (no temporary
    /// file, no multipart upload).
    pub fn put_small(&self, name: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        match self {
            Target::Local(_) => {
                let (mut file, tmp) = self.temp_file(name)?;
                std::io::Write::write_all(&mut file, &bytes).map_err(io_err(&tmp))?;
                self.commit(file, &tmp, name)
            }
            Target::Object { store, prefix, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, name));
                on_io_thread(async move { store.put(&key, bytes.into()).await.map(|_| ()).map_err(|e| said(&e)) })
                    .map_err(|m| object_err(&self.name_of(name), m))?
                    .map_err(|m| object_err(&self.name_of(name), m))
            }
        }
    }

    /// Reads a small file whole; `None` when there is none by that name.
    pub fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, SinkError> {
        match self {
            Target::Local(dir) => {
                let path = dir.join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            Target::Object { store, prefix, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, name));
                on_io_thread(async move {
                    match store.get(&key).await {
                        Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())).map_err(|e| said(&e)),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(said(&e)),
                    }
                })
                .map_err(|m| object_err(&self.name_of(name), m))?
                .map_err(|m| object_err(&self.name_of(name), m))
            }
        }
    }

    /// Removes `name`; a file that is not there is no error.
    pub fn delete(&self, name: &str) -> Result<(), SinkError> {
        match self {
            Target::Local(dir) => {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
                    _ => Ok(()),
                }
            }
            Target::Object { store, prefix, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, name));
                on_io_thread(async move {
                    match store.delete(&key).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(said(&e)),
                    }
                })
                .map_err(|m| object_err(&self.name_of(name), m))?
                .map_err(|m| object_err(&self.name_of(name), m))
            }
        }
    }
}

/// Uploads the file at `from` to `key`, retrying the whole upload with
/// backoff (1 s, 2 s, 4 s) when the store fails; the last error is returned.
fn upload(store: &Arc<dyn ObjectStore>, key: &ObjectPath, from: &Path) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..UPLOAD_ATTEMPTS {
        if attempt > 0 {
            let wait = Duration::from_secs(1 << (attempt - 1));
            tracing::warn!(key = %key, attempt, error = %last, "upload failed; retrying in {wait:?}");
            std::thread::sleep(wait);
        }
        let mut file = File::open(from).map_err(|e| format!("cannot read the temporary file: {e}"))?;
        let (store, key) = (store.clone(), key.clone());
        let attempt = on_io_thread(async move {
            let upload = store.put_multipart(&key).await.map_err(|e| said(&e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        writer.abort().await.ok();
                        return Err(format!("cannot read the temporary file: {e}"));
                    }
                };
                writer.wait_for_capacity(2).await.map_err(|e| said(&e))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map(|_| ()).map_err(|e| said(&e))
        });
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) | Err(e) => last = e,
        }
    }
    Err(format!("upload failed after {UPLOAD_ATTEMPTS} attempts: {last}"))
}
