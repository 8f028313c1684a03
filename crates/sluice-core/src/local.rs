//! Finding what the project's setup script installs under `.sluice/`
//! (ONNX Runtime, ffmpeg): in the working directory or the executable's
//! directory, or any directory above them.

use std::path::{Path, PathBuf};

/// The first `Some` that `probe` returns for the directories from the
/// working directory up to `/`, then from the executable's directory up;
/// `None` when no directory has what `probe` looks for.
pub fn search_ancestors<T>(mut probe: impl FnMut(&Path) -> Option<T>) -> Option<T> {
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        starts.push(dir);
    }
    starts.iter().flat_map(|s| s.ancestors()).find_map(&mut probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_file_above_the_working_directory() {
        // The crate's own manifest sits in the working directory or above
        // it for `cargo test`; a name nothing has is not found.
        let found = search_ancestors(|d| Some(d.join("Cargo.toml")).filter(|p| p.is_file()));
        assert!(found.is_some_and(|p| p.ends_with("Cargo.toml")));
        let none = search_ancestors(|d| Some(d.join("no-such-file.sluice")).filter(|p| p.is_file()));
        assert_eq!(none, None);
    }
}
