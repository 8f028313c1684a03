//! Opening files only under allowed roots.

use std::path::{Path, PathBuf};

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
