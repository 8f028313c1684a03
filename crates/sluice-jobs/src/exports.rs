//! Job outputs: a job's results written, as they arrive, to a folder or an
//! object-store prefix, as rolling JSONL or Parquet parts (`sluice-io`'s
//! [`PartsSink`]), failed inputs in `errors-*.jsonl`, and `_manifest.json`
//! once the job has ended.
//!
//! **One writer.** One api node at a time writes a job's output: the holder
//! of the job's export claim (`sluice_store`, "Job outputs"). The node that
//! creates the job claims it at once; the keeper ([`Jobs::spawn_export_keeper`])
//! renews the claims of the outputs this process writes and takes over those
//! whose writer died (the claim expired) or stopped (released).
//!
//! **Exactly once, across crashes.** The writer reads the job's results in
//! `done_seq` order (the store's results cursor). Each time a part is
//! committed (a part is full, the job ended, or [`OutputConfig::flush_every`]
//! passed with rows waiting), it saves a checkpoint in the store: the parts
//! committed so far and the last `done_seq` they hold. A writer that starts
//! (after a crash, on this node or another) reads the checkpoint with its
//! claim, deletes the parts and temporary files the checkpoint does not list
//! (written after it, before the crash; their rows come again), and goes on
//! after its `done_seq`. So every result is in exactly one listed part. Parts
//! are committed whole (local: fsync + rename; object stores: one upload), so
//! a reader never sees half a part.
//!
//! **Failures.** A part that cannot be uploaded is retried with backoff
//! (`sluice-io`'s `Target`); when it still fails, the output is marked failed
//! with the reason (shown on the job as `output.error`). The results stay in
//! the store, readable through the results API; nothing is lost.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_io::{Ending, Format, Outcome, PartsOptions, PartsSink, PartsState, ResultRow, Sink, SinkInfo, Target};
use sluice_store::{ExportClaim, ItemResult, ItemState, Job, JobStatus, OutputSpec, Store, StoreError};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::error::JobsError;
use crate::ingest::object_under;
use crate::source_jobs::Readers;
use crate::{Jobs, ShutdownSignal};

/// Results read from the store per round.
const PAGE: u32 = 1000;

/// How often a writer that caught up looks for new results.
const POLL: Duration = Duration::from_millis(200);

/// Where job outputs may go and how they are cut into parts.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// Canonical local folders under which outputs may be written.
    pub roots: Vec<PathBuf>,
    /// Object-store prefixes (`s3://bucket/prefix`, ...) under which outputs
    /// may be written.
    pub object_roots: Vec<String>,
    /// A part is committed once it holds this many bytes.
    pub max_part_bytes: u64,
    /// Rows waiting in an open part are committed at the latest after this
    /// long (so a slow job's results show up, and a crash redoes little).
    pub flush_every: Duration,
}

impl Default for OutputConfig {
    /// No root (outputs disabled), parts of 64 MiB, a flush every minute.
    fn default() -> OutputConfig {
        OutputConfig {
            roots: Vec::new(),
            object_roots: Vec::new(),
            max_part_bytes: 64 << 20,
            flush_every: Duration::from_secs(60),
        }
    }
}

/// An output as a job request gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRequest {
    /// A folder on the server or an object-store prefix.
    pub uri: String,
    /// `jsonl` or `parquet`; `None`: `jsonl`.
    pub format: Option<String>,
}

impl OutputConfig {
    /// Checks that `uri` is under an allowed root, and returns what to
    /// store: the URI as given, or the folder with its existing part
    /// resolved (symbolic links followed, then checked).
    fn resolve(&self, uri: &str) -> Result<String, JobsError> {
        if self.roots.is_empty() && self.object_roots.is_empty() {
            return Err(JobsError::Forbidden(
                "job outputs are disabled: start the server with --output-root DIR or --output-root s3://BUCKET/PREFIX"
                    .into(),
            ));
        }
        let refused = || JobsError::Forbidden(format!("output {uri} is not under an allowed output root"));
        if sluice_io::is_object_uri(uri) {
            return if self.object_roots.iter().any(|r| object_under(uri, r)) {
                Ok(uri.to_owned())
            } else {
                Err(refused())
            };
        }
        let path = Path::new(uri);
        if !path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(JobsError::Invalid(format!(
                "output {uri}: give an absolute folder without '.' or '..'"
            )));
        }
        // The deepest part that exists, canonical (links followed), then what is still to create.
        let mut existing = path.to_path_buf();
        let mut rest = Vec::new();
        while !existing.exists() {
            let Some(name) = existing.file_name() else {
                return Err(refused());
            };
            rest.push(name.to_owned());
            existing.pop();
        }
        let mut resolved = existing.canonicalize().map_err(|_| refused())?;
        resolved.extend(rest.iter().rev());
        if self.roots.iter().any(|r| resolved.starts_with(r)) {
            Ok(resolved.to_string_lossy().into_owned())
        } else {
            Err(refused())
        }
    }
}

/// What a writer saves in the store after each commit (opaque to it).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// The committed parts.
    parts: PartsState,
    /// The last `done_seq` in them.
    after: Option<i64>,
}

/// How one writing of a job's output ended.
#[derive(Debug)]
enum ExportEnd {
    /// Every result and the manifest are written.
    Written(u64),
    /// The output cannot be written; the reason is on the job.
    Failed(String),
    /// Stopped without settling: shutdown, another node took over, or a
    /// store error (the claim expires and a writer resumes later).
    Stopped(String),
}

/// Why a writing stopped early.
enum Stop {
    /// The output itself failed: settle it as failed.
    Output(String),
    /// Not settled: see [`ExportEnd::Stopped`].
    Quit(String),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Quit(format!("store: {e}"))
    }
}

impl From<sluice_io::SinkError> for Stop {
    fn from(e: sluice_io::SinkError) -> Stop {
        Stop::Output(e.to_string())
    }
}

/// The writer of one job's output, on a blocking thread of the claim holder.
struct Export {
    store: Arc<dyn Store>,
    /// The version of the model that serves the job, for the manifest.
    served_version: Option<String>,
    /// The score threshold of the job's detector, for video summaries.
    min_score: f32,
    node: String,
    config: Arc<OutputConfig>,
    shutdown: ShutdownSignal,
    handle: Handle,
}

impl Export {
    fn run(&self, claim: ExportClaim) -> ExportEnd {
        let id = claim.job.id.clone();
        let end = match self.write(claim) {
            Ok(rows) => ExportEnd::Written(rows),
            Err(Stop::Quit(why)) => return ExportEnd::Stopped(why),
            Err(Stop::Output(reason)) => ExportEnd::Failed(reason),
        };
        let error = match &end {
            ExportEnd::Failed(reason) => Some(reason.as_str()),
            _ => None,
        };
        match self.handle.block_on(self.store.finish_export(&id, &self.node, error)) {
            Ok(true) => end,
            Ok(false) => ExportEnd::Stopped("another node writes the output now".into()),
            Err(e) => ExportEnd::Stopped(format!("cannot record the end of the output: {e}")),
        }
    }

    fn write(&self, claim: ExportClaim) -> Result<u64, Stop> {
        let job = claim.job;
        let output = job
            .output
            .clone()
            .ok_or_else(|| Stop::Output("the job records no output".into()))?;
        let format: Format = output.format.parse().map_err(Stop::Output)?;
        let checkpoint: Checkpoint = match claim.checkpoint.as_deref() {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Stop::Output(format!("the output's checkpoint does not parse: {e}")))?,
            None => Checkpoint::default(),
        };
        let options = PartsOptions {
            max_part_bytes: self.config.max_part_bytes,
        };
        // Whatever the checkpoint does not list was written after it: removed, written again.
        let mut sink = PartsSink::resume(Target::open(&output.uri)?, format, options, checkpoint.parts)?;
        sink.begin(&SinkInfo {
            model: job.model.clone(),
            version: job
                .version
                .clone()
                .or_else(|| self.served_version.clone())
                .unwrap_or_default(),
        })?;
        let mut after = checkpoint.after;
        let mut committed_at = Instant::now();
        // The job once seen terminal: every result was recorded before that, so the next empty
        // page ends the output. Its status is read only when the writer has caught up.
        let mut terminal: Option<Job> = None;
        let ended = loop {
            if self.shutdown.is_set() {
                // Commit what is open, so that the next writer redoes nothing.
                let state = sink.checkpoint()?;
                self.save(&job, state, after)?;
                return Err(Stop::Quit("the server is shutting down".into()));
            }
            let page = self.handle.block_on(self.store.results(&job.id, after, PAGE))?;
            if page.is_empty() {
                if let Some(done) = terminal {
                    break done;
                }
                let now = self
                    .handle
                    .block_on(self.store.get_job(&job.id))?
                    .ok_or_else(|| Stop::Quit("the job is gone".into()))?;
                if now.status.is_terminal() {
                    // Read once more: results recorded between the page and the status.
                    terminal = Some(now);
                    continue;
                }
                if !sink.is_committed() && committed_at.elapsed() >= self.config.flush_every {
                    let state = sink.checkpoint()?;
                    self.save(&job, state, after)?;
                    committed_at = Instant::now();
                }
                self.handle.block_on(async {
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => {}
                        () = self.shutdown.wait() => {}
                    }
                });
                continue;
            }
            let mut committed = None;
            for result in &page {
                write_result(&mut sink, result)?;
                after = result.done_seq.or(after);
                if sink.is_committed() {
                    committed = Some(after);
                }
            }
            if let Some(at) = committed {
                self.save(&job, sink.state(), at)?;
                committed_at = Instant::now();
            }
        };
        let complete =
            ended.status == JobStatus::Completed || (ended.status == JobStatus::Failed && ended.error.is_none());
        // A job over video: per-video summaries in the manifest, read from
        // every result (the same after any number of restarts).
        if let Some(summary) =
            self.handle
                .block_on(crate::video_summary::job_summary(&*self.store, &job.id, self.min_score))?
        {
            sink.set_summary(summary);
        }
        let counts = sink.finish(Ending { complete })?;
        self.save(&job, sink.state(), after)?;
        Ok(counts.total)
    }

    /// Saves the checkpoint; stops when the claim is no longer this node's.
    fn save(&self, job: &Job, parts: PartsState, after: Option<i64>) -> Result<(), Stop> {
        let rows = parts.counts.total;
        let text = serde_json::to_string(&Checkpoint { parts, after })
            .map_err(|e| Stop::Output(format!("the checkpoint cannot be written: {e}")))?;
        if self
            .handle
            .block_on(self.store.save_export(&job.id, &self.node, &text, rows))?
        {
            Ok(())
        } else {
            Err(Stop::Quit("another node writes the output now".into()))
        }
    }
}

/// One stored result as a sink row.
fn write_result(sink: &mut PartsSink, result: &ItemResult) -> Result<(), Stop> {
    let text;
    let outcome = match (&result.output, &result.error) {
        (Some(output), _) if result.state == ItemState::Done => {
            text = output.to_string();
            Outcome::Ok(&text)
        }
        (_, Some(error)) => Outcome::Failed {
            code: &error.code,
            message: &error.message,
        },
        _ => Outcome::Failed {
            code: "internal",
            message: "no output was recorded for this input",
        },
    };
    sink.write(&ResultRow {
        key: &result.key,
        outcome,
        kept: None,
    })?;
    Ok(())
}

impl Jobs {
    /// Checks a requested output (an allowed root, a known format, a store
    /// and bucket that answer, a place that holds no other output) and
    /// returns what the job keeps. Blocking work runs off the executor.
    pub(crate) async fn check_output(&self, request: &OutputRequest) -> Result<OutputSpec, JobsError> {
        let format_name = request.format.as_deref().unwrap_or("jsonl");
        let format: Format = format_name.parse().map_err(JobsError::Invalid)?;
        let uri = self.outputs.resolve(request.uri.trim())?;
        let checked = uri.clone();
        tokio::task::spawn_blocking(move || {
            let target = Target::open(&checked).map_err(|e| JobsError::Invalid(e.to_string()))?;
            PartsSink::create(target, format, PartsOptions::default())
                .map(drop)
                .map_err(|e| JobsError::Invalid(e.to_string()))
        })
        .await
        .map_err(|e| JobsError::Invalid(format!("the output could not be checked: {e}")))??;
        Ok(OutputSpec {
            uri,
            format: format_name.to_owned(),
        })
    }

    /// Claims the output of job `id` for this node and starts writing it;
    /// does nothing when this process writes it already or another node
    /// holds it. Returns whether it started.
    pub(crate) async fn start_export(&self, id: &str) -> bool {
        if self.exporters.contains(id) {
            return false;
        }
        let claim = match self.store.claim_export(id, &self.node_id, self.lease_ms()).await {
            Ok(Some(claim)) => claim,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot claim the job's output");
                return false;
            }
        };
        let Some(guard) = self.exporters.start(id) else {
            return false;
        };
        let export = Export {
            store: self.store.clone(),
            served_version: self.registry.spec(&claim.job.model).map(|s| s.version.clone()),
            min_score: self
                .registry
                .spec(&claim.job.model)
                .map_or(0.0, |s| s.processing.describe().gives.min_score()),
            node: self.node_id.to_string(),
            config: self.outputs.clone(),
            shutdown: self.shutdown.clone(),
            handle: Handle::current(),
        };
        let job_id = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let uri = claim.job.output.as_ref().map(|o| o.uri.clone()).unwrap_or_default();
            match export.run(claim) {
                ExportEnd::Written(rows) => tracing::info!(job = %job_id, rows, output = %uri, "job output written"),
                ExportEnd::Failed(reason) => tracing::warn!(
                    job = %job_id, output = %uri, reason = %reason,
                    "the job's output failed; its results stay in the store"
                ),
                ExportEnd::Stopped(why) => {
                    tracing::info!(job = %job_id, output = %uri, why = %why, "job output stopped")
                }
            }
        });
        true
    }

    /// Takes over the job outputs no node writes: never claimed, claim
    /// expired (the writer died) or released, and at start (`at_start`)
    /// those this node wrote before a crash. Returns how many it started.
    pub async fn resume_exports(&self, at_start: bool) -> usize {
        if !self.role.accepts_jobs() {
            return 0;
        }
        let held_by = at_start.then_some(&*self.node_id);
        let ids = match self.store.exports_to_resume(held_by).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the job outputs to resume; trying again later");
                return 0;
            }
        };
        let mut started = 0;
        for id in ids {
            if self.start_export(&id).await {
                started += 1;
            }
        }
        started
    }

    /// Starts this node's export keeper: every third of the lease until the
    /// shutdown, it renews the export claims of the outputs this process
    /// writes and takes over those no node writes ([`Jobs::resume_exports`]).
    pub fn spawn_export_keeper(&self) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            let every = (jobs.lease / 3).max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = jobs.shutdown.wait() => return,
                }
                for id in jobs.exporters.ids() {
                    if let Err(e) = jobs.store.claim_export(&id, &jobs.node_id, jobs.lease_ms()).await {
                        tracing::warn!(job = %id, error = %e, "cannot renew the export claim");
                    }
                }
                jobs.resume_exports(false).await;
            }
        })
    }

    /// After the shutdown signal: waits (up to `wait`) for this process's
    /// output writers to commit what they hold, then gives their claims up
    /// so another node (or this one's next start) goes on at once. Returns
    /// how many claims were given up.
    pub async fn release_exports(&self, wait: Duration) -> usize {
        let ids = self.exporters.ids();
        let until = tokio::time::Instant::now() + wait;
        while !self.exporters.ids().is_empty() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut released = 0;
        for id in ids {
            match self.store.release_export(&id, &self.node_id).await {
                Ok(true) => released += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot give up the export claim; it expires"),
            }
        }
        if released > 0 {
            tracing::info!(jobs = released, "gave up the claims of the job outputs being written");
        }
        released
    }
}

/// The output writers of one process.
pub(crate) type Exporters = Readers;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> OutputConfig {
        OutputConfig {
            roots: vec![root.canonicalize().expect("root")],
            object_roots: vec!["s3://bucket/out".into()],
            ..OutputConfig::default()
        }
    }

    #[test]
    fn outputs_are_confined_to_their_roots() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir(&root)?;
        let cfg = config(&root);
        let inside = root.join("a/b");
        let resolved = cfg.resolve(&inside.to_string_lossy())?;
        assert!(Path::new(&resolved).starts_with(root.canonicalize()?));
        assert_eq!(cfg.resolve("s3://bucket/out/job1/")?, "s3://bucket/out/job1/");

        let refused = |uri: &str| matches!(cfg.resolve(uri), Err(JobsError::Forbidden(_) | JobsError::Invalid(_)));
        assert!(refused("s3://bucket/other/"));
        assert!(refused("s3://bucket/out/../x/"));
        assert!(refused("s3://bucket/out/%2e%2e/x/"));
        assert!(refused(&dir.path().join("elsewhere").to_string_lossy()));
        assert!(refused(&format!("{}/../x", root.display())));
        assert!(refused("relative/out"));
        // A link inside the root that leads out of it.
        std::os::unix::fs::symlink(dir.path(), root.join("link"))?;
        assert!(refused(&root.join("link/out").to_string_lossy()));

        let none = OutputConfig::default();
        assert!(
            matches!(none.resolve("s3://bucket/out/"), Err(JobsError::Forbidden(m)) if m.contains("--output-root"))
        );
        Ok(())
    }
}
