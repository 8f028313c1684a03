//! The job lifecycle as a service: what the jobs API does once a request is
//! parsed, whatever transport carried it.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_store::{InputValue, Job, NewJob, Store};

use crate::error::JobsError;
use crate::ingest;
use crate::node::Role;
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::{Limits, ShutdownSignal};

/// A request to create a job, as parsed from the client's body. Exactly one
/// of `inputs`, `source` or `open` must be given.
#[derive(Debug, Default)]
pub struct NewJobRequest {
    /// Model name.
    pub model: String,
    /// Model version; `None`: the served one.
    pub version: Option<String>,
    /// Inline inputs by key, in the order given (values in the JSON forms of
    /// [`ingest::value_from_json`]).
    pub inputs: Option<Vec<(String, serde_json::Value)>>,
    /// A file or folder on the server, under an allowed root.
    pub source: Option<String>,
    /// Create an open job that takes inputs until it is closed.
    pub open: bool,
    /// Time limit from creation, ms.
    pub timeout_ms: Option<u64>,
    /// Scheduling priority, 0..=9.
    pub priority: i32,
    /// Free-form labels.
    pub tags: Vec<String>,
}

/// The jobs service: creates, fills, closes and cancels jobs in the store and
/// tells the scheduler. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    scheduler: Arc<Scheduler>,
    source_roots: Arc<Vec<PathBuf>>,
    object_roots: Arc<Vec<String>>,
    limits: Limits,
    shutdown: ShutdownSignal,
    role: Role,
}

/// Why source ingestion stopped early when the server shuts down.
const SHUTTING_DOWN: &str = "the server is shutting down";

impl Jobs {
    /// A service over these parts. `source_roots` are canonical folders
    /// `source` jobs may read; `shutdown` stops source ingestion early.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        scheduler: Arc<Scheduler>,
        source_roots: Arc<Vec<PathBuf>>,
        limits: Limits,
        shutdown: ShutdownSignal,
    ) -> Jobs {
        Jobs {
            store,
            registry,
            scheduler,
            source_roots,
            object_roots: Arc::new(Vec::new()),
            limits,
            shutdown,
            role: Role::All,
        }
    }

    /// Object-store prefixes (`s3://bucket/prefix`, `gs://..`, `az://..`)
    /// under which `source` jobs may read, besides the local roots.
    pub fn with_object_roots(mut self, roots: Vec<String>) -> Jobs {
        self.object_roots = Arc::new(roots);
        self
    }

    /// The same service on a node of this role: a worker takes no new job
    /// (the api nodes do).
    pub fn with_role(mut self, role: Role) -> Jobs {
        self.role = role;
        self
    }

    fn check_model(&self, model: &str, version: Option<&str>) -> Result<(), JobsError> {
        let Some(spec) = self.registry.spec(model) else {
            if let Some(err) = self.registry.failure(model) {
                return Err(JobsError::ModelUnavailable(format!(
                    "model '{model}' failed to load: {err}"
                )));
            }
            let names: Vec<&String> = self.registry.entries().keys().collect();
            return Err(JobsError::NotFound(format!(
                "model '{model}' not found; models: {names:?}"
            )));
        };
        if let Some(v) = version {
            if v != spec.version {
                return Err(JobsError::NotFound(format!(
                    "model '{model}' version '{v}' not found; served version: '{}'",
                    spec.version
                )));
            }
        }
        Ok(())
    }

    fn check_inputs(&self, items: &[(String, InputValue)], existing: u64) -> Result<(), JobsError> {
        let max = self.limits.max_inputs_per_job;
        if existing + items.len() as u64 > max {
            return Err(JobsError::TooLarge(format!("a job holds at most {max} inputs")));
        }
        for (key, v) in items {
            if key.is_empty() {
                return Err(JobsError::Invalid("input keys must not be empty".into()));
            }
            let size = ingest::input_size(v);
            if size > self.limits.max_input_bytes {
                return Err(JobsError::TooLarge(format!(
                    "input '{key}' is {size} bytes; the limit is {} bytes",
                    self.limits.max_input_bytes
                )));
            }
        }
        Ok(())
    }

    /// Creates a job: with its inline inputs, closed, in one transaction; or
    /// open for uploads; or reading a server-side source in the background
    /// (the job is returned at once and closed when the source is read).
    pub async fn create(&self, req: NewJobRequest) -> Result<Job, JobsError> {
        if !self.role.accepts_jobs() {
            return Err(JobsError::Conflict(format!(
                "this node is a {} node: it takes no new job; submit jobs to an api node",
                self.role
            )));
        }
        self.check_model(&req.model, req.version.as_deref())?;
        let modes = usize::from(req.inputs.is_some()) + usize::from(req.source.is_some()) + usize::from(req.open);
        if modes != 1 {
            return Err(JobsError::Invalid(
                "give exactly one of 'inputs', 'source' or 'open': true".into(),
            ));
        }
        if !(0..=9).contains(&req.priority) {
            return Err(JobsError::Invalid("priority must be between 0 and 9".into()));
        }
        if req.timeout_ms == Some(0) {
            return Err(JobsError::Invalid("timeout_ms must be positive".into()));
        }
        let inline = match req.inputs {
            Some(entries) => {
                if entries.is_empty() {
                    return Err(JobsError::Invalid("'inputs' is empty".into()));
                }
                let mut items = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let value =
                        ingest::value_from_json(v).map_err(|e| JobsError::Invalid(format!("input '{k}': {e}")))?;
                    items.push((k, value));
                }
                self.check_inputs(&items, 0)?;
                Some(items)
            }
            None => None,
        };
        let source = match &req.source {
            Some(s) => Some(ingest::resolve_source(s, &self.source_roots, &self.object_roots)?),
            None => None,
        };
        if let Some(ingest::SourceSpec::Object(uri)) = &source {
            // A missing bucket or object is the request's fault: 400 now, not a canceled job later.
            let uri = uri.clone();
            let max_input = self.limits.max_input_bytes;
            tokio::task::spawn_blocking(move || ingest::check_object_source(&uri, max_input))
                .await
                .map_err(|e| JobsError::Invalid(format!("the source could not be checked: {e}")))??;
        }
        let new = NewJob {
            model: req.model.clone(),
            version: req.version,
            priority: req.priority,
            tags: req.tags,
            timeout_ms: req.timeout_ms,
            open: req.open,
            source: req.source,
        };
        let job = if let Some(items) = inline {
            // One transaction: the job appears with all its inputs, closed, or not at all.
            let job = self
                .store
                .create_job_with_inputs(new, items, self.limits.max_inputs_per_job)
                .await?;
            self.scheduler.notify(&job.model);
            job
        } else {
            let job = self.store.create_job(new).await?;
            if let Some(path) = source {
                self.spawn_source_ingest(job.id.clone(), job.model.clone(), path);
            }
            job
        };
        Ok(job)
    }

    fn spawn_source_ingest(&self, job_id: String, model: String, path: ingest::SourceSpec) {
        let handle = tokio::runtime::Handle::current();
        let jobs = self.clone();
        tokio::task::spawn_blocking(move || {
            let store = jobs.store.clone();
            let max_input = jobs.limits.max_input_bytes;
            let max_inputs = jobs.limits.max_inputs_per_job;
            let roots = jobs.source_roots.clone();
            let mut added = 0u64;
            let result = ingest::read_source(&path, &roots, 1000, max_input, |chunk| {
                if jobs.shutdown.is_set() {
                    return Err(SHUTTING_DOWN.to_string());
                }
                let n = chunk.len() as u64;
                handle.block_on(add_source_chunk(
                    store.as_ref(),
                    &job_id,
                    chunk,
                    added,
                    max_inputs,
                    &jobs.shutdown,
                ))?;
                added += n;
                jobs.scheduler.notify(&model);
                Ok(())
            });
            if jobs.shutdown.is_set() && result.as_ref().is_err_and(|e| e == SHUTTING_DOWN) {
                // Left unclosed: settled at the next start like any interrupted read.
                tracing::info!(job = %job_id, "source ingestion stopped by the shutdown");
                return;
            }
            let settled = match &result {
                Ok(n) => {
                    tracing::info!(job = %job_id, inputs = n, source = %path, "source ingested");
                    handle.block_on(close_retrying(store.as_ref(), &job_id, &jobs.shutdown))
                }
                Err(e) => {
                    // As after a restart (`recover_unclosed`): a source that could not be read to the end
                    // is canceled rather than run, and reported COMPLETED, on part of its inputs.
                    tracing::error!(
                        job = %job_id, error = %e, source = %path,
                        "source ingestion stopped; canceling the job"
                    );
                    let canceled = handle.block_on(store.cancel_job(&job_id));
                    if let Ok(job) = &canceled {
                        jobs.scheduler.cancel(job);
                    }
                    canceled
                }
            };
            if let Err(e) = settled {
                tracing::error!(job = %job_id, error = %e, "cannot settle job after ingestion");
            }
            jobs.scheduler.notify(&model);
        });
    }

    /// The job `id`.
    pub async fn get(&self, id: &str) -> Result<Job, JobsError> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| JobsError::NotFound(format!("job '{id}' not found")))
    }

    /// The job `id` if it takes inputs (created open and not closed yet).
    /// Call it before reading an upload, then [`Jobs::add_inputs`].
    pub async fn open_for_inputs(&self, id: &str) -> Result<Job, JobsError> {
        let job = self.get(id).await?;
        if !job.open || job.closed {
            return Err(JobsError::Conflict(format!(
                "job '{id}' does not take inputs: create it with \"open\": true and upload before closing it"
            )));
        }
        Ok(job)
    }

    /// Adds `items` to `job` (from [`Jobs::open_for_inputs`]) within the
    /// limits, and wakes its model's feeder. Returns the inputs added and
    /// the job's inputs now.
    pub async fn add_inputs(&self, job: &Job, items: Vec<(String, InputValue)>) -> Result<(u64, u64), JobsError> {
        if items.is_empty() {
            return Err(JobsError::Invalid("no inputs in the request".into()));
        }
        self.check_inputs(&items, job.total)?;
        // The store checks the bound again in the insert's transaction: concurrent
        // uploads cannot together take the job past it.
        let added = self
            .store
            .add_inputs_within(&job.id, items, self.limits.max_inputs_per_job)
            .await?;
        self.scheduler.notify(&job.model);
        let total = match self.store.get_job(&job.id).await {
            Ok(Some(now)) => now.total,
            _ => job.total + added,
        };
        Ok((added, total))
    }

    /// Closes an open job: no more inputs; it completes when all have run.
    pub async fn close(&self, id: &str) -> Result<Job, JobsError> {
        let job = self.store.close_job(id).await?;
        self.scheduler.notify(&job.model);
        Ok(job)
    }

    /// Cancels a job: items not yet run are dropped from the store and the
    /// engine; a running batch finishes.
    pub async fn cancel(&self, id: &str) -> Result<Job, JobsError> {
        let job = self.store.cancel_job(id).await?;
        self.scheduler.cancel(&job);
        Ok(job)
    }
}

/// Closes a job, retrying with backoff while the store fails in a way that may pass (closing twice
/// is harmless), until it succeeds or the server shuts down.
async fn close_retrying(
    store: &dyn Store,
    job_id: &str,
    shutdown: &ShutdownSignal,
) -> Result<Job, sluice_store::StoreError> {
    let mut attempt = 0u32;
    loop {
        match store.close_job(job_id).await {
            Err(e) if e.failure_class().is_some_and(|c| c != "corrupt") && !shutdown.is_set() => {
                attempt += 1;
                if attempt <= 5 || attempt.is_multiple_of(30) {
                    tracing::warn!(job = %job_id, error = %e, attempt, "closing the job failed; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
            }
            other => return other,
        }
    }
}

/// Adds one chunk of a source job's inputs (the job holding `added` so far), retrying with backoff
/// while the store fails in a way that may pass (a dropped connection, a database restart, a full
/// disk), so that a short outage does not cancel a long ingestion. A call whose answer was lost
/// may still have committed: before each retry the job's total tells whether it did.
async fn add_source_chunk(
    store: &dyn Store,
    job_id: &str,
    chunk: Vec<(String, InputValue)>,
    added: u64,
    max_inputs: u64,
    shutdown: &ShutdownSignal,
) -> Result<(), String> {
    let n = chunk.len() as u64;
    let mut attempt = 0u32;
    loop {
        let err = match store.add_inputs_within(job_id, chunk.clone(), max_inputs).await {
            Ok(_) => return Ok(()),
            Err(e) if e.failure_class().is_some_and(|c| c != "corrupt") => e,
            Err(e) => return Err(e.to_string()),
        };
        attempt += 1;
        if attempt <= 5 || attempt.is_multiple_of(30) {
            tracing::warn!(job = %job_id, error = %err, attempt, "adding source inputs failed; retrying");
        }
        loop {
            if shutdown.is_set() {
                return Err(SHUTTING_DOWN.to_string());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
            match store.get_job(job_id).await {
                Ok(Some(job)) if job.total >= added + n => return Ok(()),
                Ok(Some(_)) => break,
                Ok(None) => return Err(format!("job {job_id} vanished")),
                Err(e) => {
                    attempt += 1;
                    if attempt <= 5 || attempt.is_multiple_of(30) {
                        tracing::warn!(job = %job_id, error = %e, attempt, "the job store is unreachable; retrying");
                    }
                }
            }
        }
    }
}
