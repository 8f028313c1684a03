//! The job lifecycle as a service: what the jobs API does once a request is
//! parsed, whatever transport carried it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{InputValue, Job, NewJob, Store};

use crate::error::JobsError;
use crate::exports::{Exporters, OutputConfig, OutputRequest};
use crate::ingest;
use crate::node::{NodeConfig, Role};
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::source_jobs::Readers;
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
    /// Where to write the results besides the store (see [`crate::exports`]).
    pub output: Option<OutputRequest>,
    /// Which frames of the source's video files become inputs (a `source`
    /// job only); `None`: every frame.
    pub video: Option<sluice_io::Sampling>,
}

/// The jobs service: creates, fills, closes and cancels jobs in the store and
/// tells the scheduler; reads `source` jobs' sources under their ingest claim
/// and resumes them after a crash (`source_jobs`). Cheap to clone (shared
/// handles).
#[derive(Clone)]
pub struct Jobs {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) source_roots: Arc<Vec<PathBuf>>,
    pub(crate) object_roots: Arc<Vec<String>>,
    pub(crate) limits: Limits,
    pub(crate) shutdown: ShutdownSignal,
    pub(crate) role: Role,
    /// This node's id: the holder of the ingest claims it takes.
    pub(crate) node_id: Arc<str>,
    /// How long an ingest claim lasts without a renewal.
    pub(crate) lease: Duration,
    /// The source jobs this process reads now.
    pub(crate) readers: Readers,
    /// Where job outputs may go, and their parts.
    pub(crate) outputs: Arc<OutputConfig>,
    /// The job outputs this process writes now.
    pub(crate) exporters: Exporters,
}

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
        let node = NodeConfig::default();
        Jobs {
            store,
            registry,
            scheduler,
            source_roots,
            object_roots: Arc::new(Vec::new()),
            limits,
            shutdown,
            role: node.role,
            node_id: node.id.into(),
            lease: node.lease,
            readers: Readers::default(),
            outputs: Arc::new(OutputConfig::default()),
            exporters: Exporters::default(),
        }
    }

    /// Where job outputs may be written (`--output-root`) and how they are
    /// cut into parts.
    pub fn with_outputs(mut self, outputs: OutputConfig) -> Jobs {
        self.outputs = Arc::new(outputs);
        self
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

    /// The same service on this node: its role, and its id and lease for the
    /// ingest claims of the `source` jobs it reads.
    pub fn with_node(mut self, node: &NodeConfig) -> Jobs {
        self.role = node.role;
        self.node_id = node.id.as_str().into();
        self.lease = node.lease;
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
        let source_options = match req.video {
            None => None,
            Some(_) if req.source.is_none() => {
                return Err(JobsError::Invalid(
                    "'video' (how frames are sampled) needs a 'source' of video files".into(),
                ))
            }
            Some(sampling) => {
                sampling
                    .check()
                    .map_err(|e| JobsError::Invalid(format!("video: {}", e.replace("--", ""))))?;
                Some(
                    serde_json::to_string(&ingest::ReadOptions { video: Some(sampling) })
                        .map_err(|e| JobsError::Invalid(format!("video: {e}")))?,
                )
            }
        };
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
        let output = match &req.output {
            Some(request) => Some(self.check_output(request).await?),
            None => None,
        };
        let new = NewJob {
            output,
            model: req.model.clone(),
            version: req.version,
            priority: req.priority,
            tags: req.tags,
            timeout_ms: req.timeout_ms,
            open: req.open,
            source: req.source,
            source_options,
        };
        let job = if let Some(items) = inline {
            // One transaction: the job appears with all its inputs, closed, or not at all.
            let job = self
                .store
                .create_job_with_inputs(new, items, self.limits.max_inputs_per_job)
                .await?;
            self.scheduler.notify(&job.model);
            job
        } else if let Some(spec) = source {
            // Created with this node's ingest claim, and read in the background (`source_jobs`).
            self.create_source_job(new, spec).await?
        } else {
            self.store.create_job(new).await?
        };
        if job.output.is_some() {
            // This node writes the output from now on (or, if it cannot claim it, the keeper of another).
            self.start_export(&job.id).await;
        }
        Ok(job)
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
