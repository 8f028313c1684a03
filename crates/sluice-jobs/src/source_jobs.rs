//! Source jobs that survive crashes, and say why when their source fails.
//!
//! A `source` job reads a file, folder or object-store URI on the server into
//! its inputs, in chunks of [`CHUNK`], on a blocking thread of the node that
//! holds the job's **ingest claim** (see `sluice_store`, "Source ingestion"):
//! the node that created the job takes it with the job
//! (`Store::create_source_job`), and its keeper ([`Jobs::spawn_ingest_keeper`])
//! renews the claims of the jobs this process reads every third of the lease.
//!
//! **Resuming.** Sources are read in a deterministic order with deterministic
//! keys (`sluice-io`), and a job's inputs are numbered in the order they were
//! added, so a job that holds `total` inputs holds exactly the first `total`
//! records of its source. A reader that resumes (this node after a restart,
//! [`Jobs::resume_ingests`] at start; or any api node once the claim of a
//! dead one expired, the keeper's rounds) opens the source again, skips
//! `total` records, checks that the last one skipped is the job's last stored
//! input (a source that changed meanwhile fails the job instead of mixing two
//! versions), and adds the rest. Every chunk goes in with
//! `Store::add_ingested`, which only the claim holder may call and only right
//! after the inputs already stored: two readers never add the same record,
//! and a reader that lost its claim adds nothing and stops.
//!
//! **Failing with a reason.** A source that fails part-way (a read error, an
//! object store that stops answering, a key given twice, more inputs than a
//! job may hold, a source that vanished or changed before a resume) closes the
//! job with the reason as its `error` (`Store::finish_ingest`): the inputs
//! read before still run and keep their results, and the job then ends
//! `FAILED` with that reason, shown by `GET /v1/jobs/{id}`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use sluice_store::{InputValue, Job, Store, StoreError};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::ingest::{self, SourceRecord, SourceSpec};
use crate::{Jobs, ShutdownSignal};

/// Inputs per chunk: one store transaction each.
pub const CHUNK: usize = 1000;

/// **For tests only.** When this environment variable holds a number of
/// milliseconds, source ingestion sleeps that long after storing each chunk
/// of [`CHUNK`] inputs, so that a test can kill the server while a source is
/// still being read. Never set it in production.
pub const TEST_INGEST_DELAY_ENV: &str = "SLUICE_TEST_INGEST_DELAY_MS";

/// The test-only pause after each chunk ([`TEST_INGEST_DELAY_ENV`]), read once.
fn test_delay() -> Option<Duration> {
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    *DELAY.get_or_init(|| {
        let delay = std::env::var(TEST_INGEST_DELAY_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        if let Some(d) = delay {
            tracing::warn!(
                delay_ms = d.as_millis() as u64,
                "{TEST_INGEST_DELAY_ENV} is set: source ingestion pauses after every chunk (a test knob)"
            );
        }
        delay
    })
}

/// The source jobs this process reads now: the keeper renews their claims
/// and never starts a second reader for one of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Readers(Arc<Mutex<HashSet<String>>>);

impl Readers {
    /// Marks `job_id` as read here; `None` when it is already.
    pub(crate) fn start(&self, job_id: &str) -> Option<ReaderGuard> {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        set.insert(job_id.to_owned()).then(|| ReaderGuard {
            readers: self.clone(),
            job_id: job_id.to_owned(),
        })
    }

    pub(crate) fn contains(&self, job_id: &str) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).contains(job_id)
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// Removes its job from [`Readers`] when the reader ends, however it ends.
pub(crate) struct ReaderGuard {
    readers: Readers,
    job_id: String,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.readers
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.job_id);
    }
}

/// How one reading of a job's source ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestEnd {
    /// The source was read to its end: the job is closed with `total` inputs.
    Closed {
        /// Inputs in the job.
        total: u64,
    },
    /// The source could not be read to its end: the job is closed with
    /// `reason` as its error; its `total` stored inputs still run.
    Failed {
        /// Inputs in the job.
        total: u64,
        /// Why (the job's `error`).
        reason: String,
    },
    /// The reading stopped without settling the job: the server is shutting
    /// down (the claim is given up, the job resumes later), another node took
    /// the ingestion over, or the job ended meanwhile (canceled, timed out).
    Stopped(String),
}

/// Whether a store failure may pass (a dropped connection, a database
/// restart, a full disk), so that the call is worth retrying.
fn transient(e: &StoreError) -> bool {
    e.failure_class().is_some_and(|c| c != "corrupt")
}

/// One reading of one source job's source by the node holding its claim.
/// Blocking: run it on a thread of its own; store calls go through `handle`.
pub(crate) struct Ingest {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) job_id: String,
    pub(crate) node: String,
    pub(crate) max_inputs: u64,
    pub(crate) shutdown: ShutdownSignal,
    /// Called after each chunk is stored (wakes the model's feeder).
    pub(crate) on_added: Box<dyn Fn() + Send>,
    pub(crate) handle: Handle,
}

impl Ingest {
    /// Reads `records` (the job's source, opened again from its start) into
    /// the job, which holds `stored` inputs already: skips that many records,
    /// checks the last of them against the job, stores the rest chunk by
    /// chunk and settles the job.
    pub(crate) fn run(&self, mut records: impl Iterator<Item = SourceRecord>, stored: u64) -> IngestEnd {
        if stored > 0 {
            if let Err(end) = self.skip(&mut records, stored) {
                return end;
            }
        }
        let mut at = stored;
        let mut buf: Vec<(String, InputValue)> = Vec::with_capacity(CHUNK);
        let mut keys: HashSet<String> = HashSet::with_capacity(CHUNK);
        loop {
            if self.shutdown.is_set() {
                return self.stop_for_shutdown();
            }
            match records.next() {
                Some(Ok((key, value))) => {
                    if keys.contains(&key) {
                        // A key given twice within one chunk: store what comes before it, so that
                        // the store refuses it against those and the job keeps them.
                        if let Err(end) = self.flush(&mut at, std::mem::take(&mut buf)) {
                            return end;
                        }
                        keys.clear();
                    }
                    keys.insert(key.clone());
                    buf.push((key, value));
                    if buf.len() >= CHUNK {
                        if let Err(end) = self.flush(&mut at, std::mem::take(&mut buf)) {
                            return end;
                        }
                        keys.clear();
                    }
                }
                Some(Err(e)) => {
                    if let Err(end) = self.flush(&mut at, std::mem::take(&mut buf)) {
                        return end;
                    }
                    return self.fail(format!("reading the source stopped after {at} inputs: {e}"));
                }
                None => {
                    if let Err(end) = self.flush(&mut at, std::mem::take(&mut buf)) {
                        return end;
                    }
                    return self.settle(None);
                }
            }
        }
    }

    /// Skips the `stored` records the job holds already; the last one must
    /// be the job's input `stored - 1`.
    fn skip(&self, records: &mut impl Iterator<Item = SourceRecord>, stored: u64) -> Result<(), IngestEnd> {
        let mut seen = 0u64;
        let mut last = String::new();
        while seen < stored {
            if seen.is_multiple_of(CHUNK as u64) && self.shutdown.is_set() {
                return Err(self.stop_for_shutdown());
            }
            match records.next() {
                Some(Ok((key, _))) => {
                    seen += 1;
                    last = key;
                }
                Some(Err(e)) => {
                    return Err(self.fail(format!(
                        "reading the source again to resume it stopped after {seen} of the {stored} records \
                         already stored: {e}"
                    )))
                }
                None => {
                    return Err(self.fail(format!(
                        "the source has {seen} records now, fewer than the {stored} inputs already read from it: \
                         it changed since the job started"
                    )))
                }
            }
        }
        let found = self
            .handle
            .block_on(self.retrying("checking the stored inputs", || self.store.result(&self.job_id, &last)));
        match found {
            Ok(Some(item)) if u64::try_from(item.seq).ok() == Some(stored - 1) => {
                tracing::info!(job = %self.job_id, skipped = stored, "resuming the source after the inputs already stored");
                Ok(())
            }
            Ok(_) => Err(self.fail(format!(
                "the source changed since the job started: its record {stored} has the key '{last}', which is not \
                 the job's input {stored}"
            ))),
            Err(_) if self.shutdown.is_set() => Err(self.stop_for_shutdown()),
            Err(e) => Err(IngestEnd::Stopped(format!("cannot check the stored inputs: {e}"))),
        }
    }

    /// Stores one chunk right after the `at` inputs stored; on success `at`
    /// grows by its length. Stores what fits or comes before a key given
    /// twice, then fails the job with the reason.
    fn flush(&self, at: &mut u64, mut chunk: Vec<(String, InputValue)>) -> Result<(), IngestEnd> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.shutdown.is_set() {
            return Err(self.stop_for_shutdown());
        }
        let room = usize::try_from(self.max_inputs.saturating_sub(*at)).unwrap_or(usize::MAX);
        let over = chunk.len() > room;
        chunk.truncate(room);
        if !chunk.is_empty() {
            match self.handle.block_on(self.add(*at, &chunk)) {
                Ok(true) => {
                    *at += chunk.len() as u64;
                    (self.on_added)();
                    if let Some(delay) = test_delay() {
                        std::thread::sleep(delay);
                    }
                }
                Ok(false) => {
                    return Err(IngestEnd::Stopped(
                        "another node reads the job's source now (this node's claim expired)".into(),
                    ))
                }
                Err(_) if self.shutdown.is_set() => return Err(self.stop_for_shutdown()),
                Err(StoreError::DuplicateKey(key)) => {
                    let before = chunk.iter().position(|(k, _)| *k == key).unwrap_or(0);
                    chunk.truncate(before);
                    self.flush(at, chunk)?;
                    return Err(self.fail(format!(
                        "the source gives the key '{key}' twice (again in record {}): keys must be unique in a job; \
                         the {at} inputs before it run",
                        *at + 1
                    )));
                }
                Err(StoreError::Conflict(why)) => {
                    return Err(IngestEnd::Stopped(format!("the job takes no more inputs: {why}")))
                }
                Err(e) => {
                    return Err(self.fail(format!("storing the source's inputs failed after {at} inputs: {e}")));
                }
            }
        }
        if over {
            return Err(self.fail(format!(
                "the source has more than {} inputs, the most a job may hold; the first {at} run",
                self.max_inputs
            )));
        }
        Ok(())
    }

    /// `Store::add_ingested`, retried while the store fails in a way that may
    /// pass. A call whose answer was lost may still have committed: a retry
    /// then finds the job moved past `at`, and the job's total tells.
    async fn add(&self, at: u64, chunk: &[(String, InputValue)]) -> Result<bool, StoreError> {
        let n = chunk.len() as u64;
        let mut attempt = 0u32;
        loop {
            let err = match self
                .store
                .add_ingested(&self.job_id, &self.node, at, chunk.to_vec(), self.max_inputs)
                .await
            {
                Ok(true) => return Ok(true),
                Ok(false) if attempt == 0 => return Ok(false),
                Ok(false) => match self.store.get_job(&self.job_id).await {
                    Ok(Some(job)) => return Ok(job.total >= at + n),
                    Ok(None) => return Err(StoreError::NotFound(self.job_id.clone())),
                    Err(e) if transient(&e) => e,
                    Err(e) => return Err(e),
                },
                Err(e) if transient(&e) => e,
                Err(e) => return Err(e),
            };
            if self.shutdown.is_set() {
                return Err(err);
            }
            attempt += 1;
            if attempt <= 5 || attempt.is_multiple_of(30) {
                tracing::warn!(job = %self.job_id, error = %err, attempt, "adding source inputs failed; retrying");
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Runs `op` until it succeeds, fails in a way that does not pass, or the
    /// server shuts down.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0u32;
        loop {
            match op().await {
                Err(e) if transient(&e) && !self.shutdown.is_set() => {
                    attempt += 1;
                    if attempt <= 5 || attempt.is_multiple_of(30) {
                        tracing::warn!(job = %self.job_id, error = %e, attempt, "{what} failed; retrying");
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// Closes the job with `reason` as its error ([`IngestEnd::Failed`]).
    pub(crate) fn fail(&self, reason: String) -> IngestEnd {
        self.settle(Some(reason))
    }

    /// Settles the job: closed at the end of its source, or with an error.
    fn settle(&self, error: Option<String>) -> IngestEnd {
        let settled = self.handle.block_on(self.retrying("settling the source job", || {
            self.store.finish_ingest(&self.job_id, &self.node, error.as_deref())
        }));
        match (settled, error) {
            (Ok(Some(job)), None) => IngestEnd::Closed { total: job.total },
            (Ok(Some(job)), Some(reason)) if job.error.is_some() => IngestEnd::Failed {
                total: job.total,
                reason,
            },
            (Ok(Some(job)), Some(_)) => IngestEnd::Stopped(format!("the job had ended already ({})", job.status)),
            (Ok(None), _) => IngestEnd::Stopped("another node reads the job's source now".into()),
            (Err(e), _) => IngestEnd::Stopped(format!("cannot settle the job: {e}")),
        }
    }

    /// Stops at the shutdown without another store call (the runtime may be
    /// going away): the server gives the claim up ([`Jobs::release_ingests`]),
    /// and the job resumes elsewhere at once, or here at the next start.
    fn stop_for_shutdown(&self) -> IngestEnd {
        IngestEnd::Stopped("the server is shutting down".into())
    }
}

/// The pause before retry `attempt` of a store call: 200 ms more each time, at most 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt.min(25)))
}

impl Jobs {
    /// This node's claim length (ingest and export claims), ms.
    pub(crate) fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Creates a source job with this node's ingest claim and starts reading
    /// its source.
    pub(crate) async fn create_source_job(
        &self,
        new: sluice_store::NewJob,
        spec: SourceSpec,
    ) -> Result<Job, crate::JobsError> {
        let job = self
            .store
            .create_source_job(new, &self.node_id, self.lease_ms())
            .await?;
        self.start_ingest(&job, spec);
        Ok(job)
    }

    /// Starts reading `job`'s source on a blocking thread, after the
    /// `job.total` inputs it holds; this node holds its ingest claim. Does
    /// nothing when this process reads it already.
    fn start_ingest(&self, job: &Job, spec: SourceSpec) {
        let Some(guard) = self.readers.start(&job.id) else {
            return;
        };
        let jobs = self.clone();
        let (job_id, model, stored) = (job.id.clone(), job.model.clone(), job.total);
        let source_options = job.source_options.clone();
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let scheduler = jobs.scheduler.clone();
            let notify_model = model.clone();
            let ingest = Ingest {
                store: jobs.store.clone(),
                job_id: job_id.clone(),
                node: jobs.node_id.to_string(),
                max_inputs: jobs.limits.max_inputs_per_job,
                shutdown: jobs.shutdown.clone(),
                on_added: Box::new(move || scheduler.notify(&notify_model)),
                handle,
            };
            let records = ingest::ReadOptions::of(source_options.as_deref())
                .and_then(|read| ingest::source_records(&spec, &jobs.source_roots, jobs.limits.max_input_bytes, &read));
            let end = match records {
                Ok(records) => ingest.run(records, stored),
                Err(e) => ingest.fail(format!("cannot read the source: {e}")),
            };
            match &end {
                IngestEnd::Closed { total } => {
                    tracing::info!(job = %job_id, inputs = total, source = %spec, "source ingested");
                }
                IngestEnd::Failed { total, reason } => tracing::warn!(
                    job = %job_id, inputs = total, source = %spec, reason = %reason,
                    "source ingestion failed; the job ends FAILED once the inputs stored have run"
                ),
                IngestEnd::Stopped(why) => {
                    tracing::info!(job = %job_id, source = %spec, why = %why, "source ingestion stopped");
                }
            }
            jobs.scheduler.notify(&model);
        });
    }

    /// Takes over the source jobs whose reading stopped and resumes each
    /// after the inputs it holds: those whose ingest claim expired (their
    /// node died) or was released (a graceful stop), and at start
    /// (`at_start`) those this node held before a crash. Each is claimed with
    /// one conditional update, so two api nodes never read the same job.
    /// Returns how many it resumed. Only nodes that accept jobs read sources.
    pub async fn resume_ingests(&self, at_start: bool) -> usize {
        if !self.role.accepts_jobs() {
            return 0;
        }
        let held_by = at_start.then_some(&*self.node_id);
        let ids = match self.store.ingests_to_resume(held_by).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the source jobs to resume; trying again later");
                return 0;
            }
        };
        let mut resumed = 0;
        for id in ids {
            if self.readers.contains(&id) {
                continue;
            }
            let job = match self.store.claim_ingest(&id, &self.node_id, self.lease_ms()).await {
                Ok(Some(job)) => job,
                Ok(None) => continue, // another node was faster, or the job ended
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "cannot claim the source job's ingestion");
                    continue;
                }
            };
            match self.resolve_for_resume(&job) {
                Ok(spec) => {
                    tracing::info!(job = %id, stored = job.total, source = %spec, "resuming the job's source");
                    self.start_ingest(&job, spec);
                    resumed += 1;
                }
                Err(reason) => {
                    tracing::warn!(job = %id, reason = %reason, "the job's source cannot be resumed");
                    if let Err(e) = self.store.finish_ingest(&id, &self.node_id, Some(&reason)).await {
                        tracing::error!(job = %id, error = %e, "cannot settle the source job");
                    }
                    self.scheduler.notify(&job.model);
                }
            }
        }
        resumed
    }

    /// The job's source, checked against this node's roots again.
    fn resolve_for_resume(&self, job: &Job) -> Result<SourceSpec, String> {
        let Some(source) = job.source.as_deref() else {
            return Err("the job records no source to read".into());
        };
        if !sluice_io::is_object_uri(source) && !std::path::Path::new(source).exists() {
            return Err(format!(
                "cannot read the source again to resume it: {source} no longer exists; the {} inputs read before run",
                job.total
            ));
        }
        ingest::resolve_source(source, &self.source_roots, &self.object_roots)
            .map_err(|e| format!("cannot read the source again to resume it: {e}"))
    }

    /// Starts this node's ingest keeper: every third of the lease until the
    /// shutdown, it renews the ingest claims of the source jobs this process
    /// reads, and takes over those whose claim expired or was released
    /// ([`Jobs::resume_ingests`]). Run one per node that accepts jobs, after
    /// [`Jobs::resume_ingests`]`(true)` at start.
    pub fn spawn_ingest_keeper(&self) -> JoinHandle<()> {
        let jobs = self.clone();
        tokio::spawn(async move {
            let every = (jobs.lease / 3).max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = jobs.shutdown.wait() => return,
                }
                jobs.renew_ingest_claims().await;
                jobs.resume_ingests(false).await;
            }
        })
    }

    /// Gives up the ingest claims of the source jobs this process reads (a
    /// graceful stop, after the shutdown signal stopped their readers), so
    /// that another node goes on reading them at once, or this one at its
    /// next start. A chunk a reader was still storing is safe: the store adds
    /// it only while the claim is still this node's. Returns how many claims
    /// were given up.
    pub async fn release_ingests(&self) -> usize {
        let mut released = 0;
        for id in self.readers.ids() {
            match self.store.release_ingest(&id, &self.node_id).await {
                Ok(true) => released += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot give up the ingest claim; it expires"),
            }
        }
        if released > 0 {
            tracing::info!(jobs = released, "gave up the ingest claims of the sources being read");
        }
        released
    }

    /// Renews the ingest claim of every source job this process reads.
    async fn renew_ingest_claims(&self) {
        for id in self.readers.ids() {
            match self.store.claim_ingest(&id, &self.node_id, self.lease_ms()).await {
                Ok(Some(_)) => {}
                // Settled just now, ended, or taken over: its reader finds out at its next chunk.
                Ok(None) => tracing::debug!(job = %id, "the ingest claim is no longer this node's"),
                Err(e) => tracing::warn!(job = %id, error = %e, "cannot renew the ingest claim"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::{JobStatus, NewJob, SqliteStore};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn records(keys: impl IntoIterator<Item = String>) -> Vec<SourceRecord> {
        keys.into_iter()
            .map(|k| {
                let v = InputValue::Text(format!("value of {k}"));
                Ok((k, v))
            })
            .collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i:05}")).collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        job: Job,
    }

    async fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).await?);
        let job = store
            .create_source_job(
                NewJob {
                    model: "m".into(),
                    source: Some("/data/in.jsonl".into()),
                    ..NewJob::default()
                },
                "node-a",
                600_000,
            )
            .await?;
        Ok(Fixture { _dir: dir, store, job })
    }

    fn ingest(f: &Fixture, node: &str, max_inputs: u64) -> Ingest {
        Ingest {
            store: f.store.clone(),
            job_id: f.job.id.clone(),
            node: node.to_owned(),
            max_inputs,
            shutdown: ShutdownSignal::default(),
            on_added: Box::new(|| {}),
            handle: Handle::current(),
        }
    }

    /// Runs an ingest on a blocking thread, as the server does.
    async fn run(ingest: Ingest, source: Vec<SourceRecord>, stored: u64) -> Result<IngestEnd, tokio::task::JoinError> {
        tokio::task::spawn_blocking(move || ingest.run(source.into_iter(), stored)).await
    }

    /// Every stored key of the job, in seq order.
    async fn stored_keys(f: &Fixture) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = f.store.pending_items(&f.job.id, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            out.extend(page.into_iter().map(|r| r.key));
        }
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_read_skips_the_stored_inputs_and_adds_each_other_once() -> TestResult {
        let f = fixture().await?;
        let all = keys(2_500);
        // A first reader stored 1,200 inputs (one chunk and a bit) before its process died.
        assert!(
            f.store
                .add_ingested(
                    &f.job.id,
                    "node-a",
                    0,
                    records(all[..1_000].to_vec()).into_iter().collect::<Result<_, _>>()?,
                    u64::MAX
                )
                .await?
        );
        assert!(
            f.store
                .add_ingested(
                    &f.job.id,
                    "node-a",
                    1_000,
                    records(all[1_000..1_200].to_vec())
                        .into_iter()
                        .collect::<Result<_, _>>()?,
                    u64::MAX
                )
                .await?
        );
        let end = run(ingest(&f, "node-a", u64::MAX), records(all.clone()), 1_200).await?;
        assert_eq!(end, IngestEnd::Closed { total: 2_500 });
        assert_eq!(stored_keys(&f).await?, all, "each record once, in the source's order");
        let job = f.store.get_job(&f.job.id).await?.ok_or("job")?;
        assert!(job.closed && job.error.is_none(), "{job:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_that_fails_part_way_closes_the_job_with_the_reason() -> TestResult {
        let f = fixture().await?;
        let mut source = records(keys(1_500));
        source.push(Err("cannot read s3://b/in.jsonl: connection reset".into()));
        source.extend(records(["never".to_string()]));
        let end = run(ingest(&f, "node-a", u64::MAX), source, 0).await?;
        let IngestEnd::Failed { total, reason } = end else {
            panic!("not failed: {end:?}");
        };
        assert_eq!(total, 1_500, "the records read before the failure are kept");
        assert!(
            reason.contains("after 1500 inputs") && reason.contains("connection reset"),
            "{reason}"
        );
        let job = f.store.get_job(&f.job.id).await?.ok_or("job")?;
        assert_eq!(job.error.as_deref(), Some(reason.as_str()));
        assert!(
            job.closed && job.status == JobStatus::Submitted && job.pending == 1_500,
            "{job:?}"
        );
        assert_eq!(stored_keys(&f).await?, keys(1_500));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_given_twice_keeps_the_inputs_before_it_and_fails_with_the_key() -> TestResult {
        let f = fixture().await?;
        // Record 1,101 repeats the key of record 3 (in another chunk); record 1,401 repeats
        // one of its own chunk, and is never reached.
        let mut ks = keys(1_100);
        ks.push("k00002".into());
        ks.extend((0..300).map(|i| format!("late{i}")));
        ks.push("late5".into());
        let end = run(ingest(&f, "node-a", u64::MAX), records(ks.clone()), 0).await?;
        let IngestEnd::Failed { total, reason } = end else {
            panic!("not failed: {end:?}");
        };
        assert_eq!(total, 1_100);
        assert!(
            reason.contains("'k00002' twice") && reason.contains("record 1101"),
            "{reason}"
        );
        assert_eq!(stored_keys(&f).await?, ks[..1_100]);

        // Within one chunk: the inputs before the repeat are kept too.
        let g = fixture().await?;
        let ks: Vec<String> = ["a", "b", "c", "b", "d"].map(String::from).to_vec();
        let end = run(ingest(&g, "node-a", u64::MAX), records(ks), 0).await?;
        assert!(
            matches!(&end, IngestEnd::Failed { total: 3, reason } if reason.contains("'b' twice") && reason.contains("record 4")),
            "{end:?}"
        );
        assert_eq!(stored_keys(&g).await?, ["a", "b", "c"]);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_inputs_than_a_job_holds_keep_the_first_and_fail() -> TestResult {
        let f = fixture().await?;
        let end = run(ingest(&f, "node-a", 1_050), records(keys(2_000)), 0).await?;
        assert!(
            matches!(&end, IngestEnd::Failed { total: 1_050, reason } if reason.contains("more than 1050")),
            "{end:?}"
        );
        assert_eq!(stored_keys(&f).await?, keys(1_050));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_that_changed_before_the_resume_fails_instead_of_mixing() -> TestResult {
        // Shorter than what was stored.
        let f = fixture().await?;
        let first: Vec<(String, InputValue)> = records(keys(10)).into_iter().collect::<Result<_, _>>()?;
        assert!(
            f.store
                .add_ingested(&f.job.id, "node-a", 0, first.clone(), u64::MAX)
                .await?
        );
        let end = run(ingest(&f, "node-a", u64::MAX), records(keys(7)), 10).await?;
        assert!(
            matches!(&end, IngestEnd::Failed { total: 10, reason } if reason.contains("fewer than the 10")),
            "{end:?}"
        );

        // Other records in front.
        let g = fixture().await?;
        assert!(g.store.add_ingested(&g.job.id, "node-a", 0, first, u64::MAX).await?);
        let mut other = records((0..10).map(|i| format!("new{i}")));
        other.extend(records(keys(20)));
        let end = run(ingest(&g, "node-a", u64::MAX), other, 10).await?;
        assert!(
            matches!(&end, IngestEnd::Failed { total: 10, reason } if reason.contains("changed") && reason.contains("'new9'")),
            "{end:?}"
        );
        assert_eq!(
            stored_keys(&g).await?,
            keys(10),
            "nothing of the changed source is added"
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_without_the_claim_adds_nothing_and_stops() -> TestResult {
        let f = fixture().await?;
        let end = run(ingest(&f, "node-b", u64::MAX), records(keys(50)), 0).await?;
        assert!(matches!(end, IngestEnd::Stopped(_)), "{end:?}");
        assert!(stored_keys(&f).await?.is_empty());
        let job = f.store.get_job(&f.job.id).await?.ok_or("job")?;
        assert!(!job.closed, "another node's job is not settled: {job:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_stops_the_read_and_leaves_the_job_to_resume() -> TestResult {
        let f = fixture().await?;
        let ingest = ingest(&f, "node-a", u64::MAX);
        ingest.shutdown.trigger();
        let end = run(ingest, records(keys(50)), 0).await?;
        assert!(matches!(end, IngestEnd::Stopped(_)), "{end:?}");
        let job = f.store.get_job(&f.job.id).await?.ok_or("job")?;
        assert!(!job.closed && job.total == 0, "{job:?}");
        // Still this node's: it takes the job back at its next start.
        assert!(f.store.ingests_to_resume(None).await?.is_empty());
        assert_eq!(f.store.ingests_to_resume(Some("node-a")).await?, vec![f.job.id.clone()]);
        Ok(())
    }
}
