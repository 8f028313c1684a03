//! Helpers for tests that inject faults into real OMI workers (feature `test-util`).

/// Live (not zombie) children of this process whose environment holds
/// `entry` (`KEY=VALUE`): the worker processes a test started, from the moment
/// they exist (before they answer `Status`), so a test can kill or stop one.
/// Linux only (reads `/proc`); empty elsewhere.
pub fn children_with_env(entry: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry_dir in dir.flatten() {
        let Some(pid) = entry_dir.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the fields after the last ')'.
        let mut rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or_default()
            .split_whitespace();
        let (state, ppid) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid != Some(me) || state == Some("Z") {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()) {
            out.push(pid);
        }
    }
    out
}
