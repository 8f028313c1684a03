//! What both backends share: checks made before a transaction, the grouping of completions, and
//! rows decoded into the public types (`sqlx::FromRow` is generic over the database, so one
//! decoder serves SQLite and PostgreSQL alike). A leaf module: it depends on the types only.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{
    Completion, InputValue, ItemError, ItemResult, ItemRow, ItemState, Job, JobOutput, JobStatus, NewJob, NodeInfo,
    NodeStatus, OutputSpec, OutputState, StoreError, StoreHealth, WriteFailure,
};

/// Work notices a slow receiver may fall behind by before it loses some.
pub(crate) const NOTICE_CAPACITY: usize = 256;

/// The current time in unix milliseconds, as the store records it.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A store's health as its writes see it (see [`StoreHealth`]), shared by its clones.
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthCell(Arc<Mutex<StoreHealth>>);

impl HealthCell {
    /// The current health.
    pub(crate) fn get(&self) -> StoreHealth {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Marks the store writable after a write committed.
    pub(crate) fn note_success(&self) {
        let mut health = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !health.writable {
            tracing::info!("the job store writes again");
        }
        health.writable = true;
        health.last_write_ok_at = Some(now_ms());
    }

    /// Marks the store not writable when `err` is a failure of the database (not of the request,
    /// nor a conflict between transactions that a retry resolves), logging its detail; returns
    /// `err`.
    pub(crate) fn note_failure(&self, err: StoreError) -> StoreError {
        if matches!(
            err,
            StoreError::Database(_) | StoreError::Io(_) | StoreError::Unreachable { .. }
        ) {
            let class = err.failure_class().unwrap_or("database");
            tracing::error!(error = %err, class, "a write to the job store failed");
            let mut health = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            health.writable = false;
            health.last_write_error = Some(WriteFailure {
                class: class.to_owned(),
                at: now_ms(),
            });
        }
        err
    }
}

/// Columns of `jobs`, in the order [`JobRecord`] names them.
pub(crate) const JOB_COLUMNS: &str = "pk, id, model, version, status, open, closed, priority, tags, timeout_ms, \
     source, created_at, started_at, finished_at, total, completed, failed, canceled, timedout, queue_ms_total, \
     model_ms_total, error, output, export_state, export_rows, export_error, source_options";

/// Columns of `items` that make an [`ItemResult`] (see [`ResultRecord`]).
pub(crate) const RESULT_COLUMNS: &str =
    "seq, key, state, output, error_code, error_message, queue_ms, model_ms, done_seq";

/// The statuses of jobs that are not finished, as an SQL list.
pub(crate) const ACTIVE_STATUSES: &str = "('SUBMITTED', 'IN_PROGRESS')";

/// The status a closed job with no pending item ends in, as an SQL expression over its row:
/// `FAILED` when it has an error (its source failed part-way) or when it had inputs and none
/// succeeded, else `COMPLETED`.
pub(crate) const END_STATUS: &str =
    "CASE WHEN error IS NOT NULL OR (completed = 0 AND total > 0) THEN 'FAILED' ELSE 'COMPLETED' END";

/// The reason a job is failed with is kept to this many bytes (cut at a character boundary).
pub(crate) const MAX_ERROR_BYTES: usize = 2000;

/// `reason`, cut to [`MAX_ERROR_BYTES`] at a character boundary.
pub(crate) fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_ERROR_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_ERROR_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// A job validated for insertion.
pub(crate) struct PreparedJob {
    pub(crate) new: NewJob,
    pub(crate) tags: Vec<String>,
    pub(crate) tags_json: String,
    pub(crate) timeout_ms: Option<i64>,
    /// The job's [`OutputSpec`] as JSON, for the `output` column.
    pub(crate) output_json: Option<String>,
}

/// Inputs in their stored form: key, kind, BLOB.
pub(crate) type Rows = Vec<(String, &'static str, Vec<u8>)>;

/// Checks a new job before its transaction: a model name, a representable timeout, tags once each.
pub(crate) fn prepare_job(new: NewJob) -> Result<PreparedJob, StoreError> {
    if new.model.trim().is_empty() {
        return Err(StoreError::Invalid("a job needs a model name".into()));
    }
    let timeout_ms = new.timeout_ms.map(to_i64).transpose()?;
    let mut seen = HashSet::new();
    let tags: Vec<String> = new
        .tags
        .iter()
        .filter(|tag| seen.insert((*tag).clone()))
        .cloned()
        .collect();
    let tags_json = serde_json::to_string(&tags).map_err(|e| StoreError::Invalid(format!("tags: {e}")))?;
    if let Some(output) = &new.output {
        if output.uri.trim().is_empty() || output.format.trim().is_empty() {
            return Err(StoreError::Invalid("a job output needs a uri and a format".into()));
        }
    }
    let output_json = output_json(&new)?;
    Ok(PreparedJob {
        new,
        tags,
        tags_json,
        timeout_ms,
        output_json,
    })
}

/// Checks a new source job before its transaction: [`prepare_job`]'s checks, plus a `source` and
/// not open (its inputs come from the source only).
pub(crate) fn prepare_source_job(new: NewJob) -> Result<PreparedJob, StoreError> {
    if new.source.is_none() {
        return Err(StoreError::Invalid("a source job needs a source".into()));
    }
    if new.open {
        return Err(StoreError::Invalid("a source job cannot be open".into()));
    }
    prepare_job(new)
}

/// A lease length in ms as the databases store it (saturating).
pub(crate) fn lease_i64(lease_ms: u64) -> i64 {
    i64::try_from(lease_ms).unwrap_or(i64::MAX)
}

/// Inputs in their stored form, refusing a key given twice (named precisely, before any write).
pub(crate) fn prepare_rows(inputs: Vec<(String, InputValue)>) -> Result<Rows, StoreError> {
    let mut keys = HashSet::with_capacity(inputs.len());
    for (key, _) in &inputs {
        if !keys.insert(key.as_str()) {
            return Err(StoreError::DuplicateKey(key.clone()));
        }
    }
    drop(keys);
    let mut rows = Vec::with_capacity(inputs.len());
    for (key, value) in inputs {
        let (kind, blob) = value.to_blob()?;
        rows.push((key, kind, blob));
    }
    Ok(rows)
}

/// A completion checked for recording, with its output as the text to store.
pub(crate) struct Prepared {
    pub(crate) completion: Completion,
    pub(crate) output: Option<String>,
}

/// Checks completions before the transaction (only `done`/`failed`) and groups them by job,
/// keeping the given order within each job (it becomes the `done_seq` order) and the order in
/// which jobs first appear.
pub(crate) fn group_completions(completions: Vec<Completion>) -> Result<Vec<(String, Vec<Prepared>)>, StoreError> {
    let mut groups: Vec<(String, Vec<Prepared>)> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for c in completions {
        if !matches!(c.state, ItemState::Done | ItemState::Failed) {
            return Err(StoreError::Invalid(format!(
                "a completion must be done or failed, not {} (job {}, seq {})",
                c.state, c.job_id, c.seq
            )));
        }
        // The processor's JSON text, stored as it is.
        let output = c.output.as_ref().map(|raw| raw.get().to_owned());
        let i = *group_of.entry(c.job_id.clone()).or_insert_with(|| {
            groups.push((c.job_id.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(Prepared { completion: c, output });
    }
    Ok(groups)
}

/// The sums a batch of recorded items adds to its job's counters.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) completed: i64,
    pub(crate) failed: i64,
    pub(crate) queue_ms: f64,
    pub(crate) model_ms: f64,
}

impl Tally {
    /// Counts one newly recorded completion; returns its (queue, model) times as stored.
    pub(crate) fn add(&mut self, c: &Completion) -> (f64, f64) {
        let (q, m) = (finite_ms(c.queue_ms), finite_ms(c.model_ms));
        if c.state == ItemState::Done {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
        self.queue_ms += q;
        self.model_ms += m;
        (q, m)
    }
}

/// The error code and message given to the items a job's end leaves unfinished, and the job
/// counter they go to.
pub(crate) fn end_state(state: ItemState) -> Result<(&'static str, &'static str, &'static str), StoreError> {
    match state {
        ItemState::Canceled => Ok(("canceled", "the job was canceled before this item finished", "canceled")),
        ItemState::Timedout => Ok(("timedout", "the job timed out before this item finished", "timedout")),
        other => Err(StoreError::Invalid(format!("cannot end a job with items {other}"))),
    }
}

/// A row of `jobs`.
#[derive(sqlx::FromRow)]
pub(crate) struct JobRecord {
    pk: i64,
    id: String,
    model: String,
    version: Option<String>,
    status: String,
    open: bool,
    closed: bool,
    priority: i32,
    tags: String,
    timeout_ms: Option<i64>,
    source: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    total: i64,
    completed: i64,
    failed: i64,
    canceled: i64,
    timedout: i64,
    queue_ms_total: f64,
    model_ms_total: f64,
    error: Option<String>,
    output: Option<String>,
    export_state: Option<String>,
    export_rows: Option<i64>,
    export_error: Option<String>,
    source_options: Option<String>,
}

impl JobRecord {
    /// The job and its internal key.
    pub(crate) fn into_job(self) -> Result<(i64, Job), StoreError> {
        let tags = serde_json::from_str(&self.tags).map_err(|e| StoreError::Corrupt(format!("job tags: {e}")))?;
        let total = to_u64(self.total, "total")?;
        let completed = to_u64(self.completed, "completed")?;
        let failed = to_u64(self.failed, "failed")?;
        let canceled = to_u64(self.canceled, "canceled")?;
        let timedout = to_u64(self.timedout, "timedout")?;
        let finished = completed + failed + canceled + timedout;
        let pending = total
            .checked_sub(finished)
            .ok_or_else(|| StoreError::Corrupt(format!("job counts {finished} finished items of {total}")))?;
        let job = Job {
            id: self.id,
            model: self.model,
            version: self.version,
            status: JobStatus::from_str(&self.status).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            open: self.open,
            closed: self.closed,
            priority: self.priority,
            tags,
            timeout_ms: self.timeout_ms.map(|t| to_u64(t, "timeout_ms")).transpose()?,
            source: self.source,
            source_options: self.source_options,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            total,
            pending,
            completed,
            failed,
            canceled,
            timedout,
            queue_ms_total: self.queue_ms_total,
            model_ms_total: self.model_ms_total,
            error: self.error,
            output: None,
        };
        let job = Job {
            output: job_output(self.output, self.export_state, self.export_rows, self.export_error)?,
            ..job
        };
        Ok((self.pk, job))
    }
}

/// A job's output and its progress from their columns: `output` (the [`OutputSpec`] as JSON),
/// `export_state` (`NULL` while writing, then `written` or `failed`), `export_rows`,
/// `export_error`.
fn job_output(
    output: Option<String>,
    state: Option<String>,
    rows: Option<i64>,
    error: Option<String>,
) -> Result<Option<JobOutput>, StoreError> {
    let Some(output) = output else {
        return Ok(None);
    };
    let spec: OutputSpec =
        serde_json::from_str(&output).map_err(|e| StoreError::Corrupt(format!("job output: {e}")))?;
    let state = match state.as_deref() {
        None => OutputState::Writing,
        Some("written") => OutputState::Written,
        Some("failed") => OutputState::Failed,
        Some(other) => return Err(StoreError::Corrupt(format!("unknown output state {other:?}"))),
    };
    Ok(Some(JobOutput {
        uri: spec.uri,
        format: spec.format,
        state,
        rows: to_u64(rows.unwrap_or(0), "export_rows")?,
        error,
    }))
}

/// The `output` column of a new job: its [`OutputSpec`] as JSON.
fn output_json(new: &NewJob) -> Result<Option<String>, StoreError> {
    new.output
        .as_ref()
        .map(|o| serde_json::to_string(o).map_err(|e| StoreError::Invalid(format!("job output: {e}"))))
        .transpose()
}

/// A finished (or pending) item as [`RESULT_COLUMNS`] selects it.
#[derive(sqlx::FromRow)]
pub(crate) struct ResultRecord {
    seq: i64,
    key: String,
    state: String,
    output: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
    queue_ms: Option<f64>,
    model_ms: Option<f64>,
    done_seq: Option<i64>,
}

impl ResultRecord {
    /// The item's result.
    pub(crate) fn into_result(self, job_id: &str) -> Result<ItemResult, StoreError> {
        let error = match (self.error_code, self.error_message) {
            (None, None) => None,
            (code, message) => Some(ItemError {
                code: code.unwrap_or_else(|| "error".to_owned()),
                message: message.unwrap_or_default(),
            }),
        };
        Ok(ItemResult {
            job_id: job_id.to_owned(),
            seq: self.seq,
            key: self.key,
            state: ItemState::from_str(&self.state).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            output: self
                .output
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("item output: {e}")))?,
            error,
            queue_ms: self.queue_ms,
            model_ms: self.model_ms,
            done_seq: self.done_seq,
        })
    }
}

/// A pending item with its input: `seq, key, input_kind, input`.
#[derive(sqlx::FromRow)]
pub(crate) struct ItemRecord {
    seq: i64,
    key: String,
    input_kind: String,
    input: Vec<u8>,
}

impl ItemRecord {
    /// The item, as the feeder gets it.
    pub(crate) fn into_item(self, job_id: &str) -> Result<ItemRow, StoreError> {
        Ok(ItemRow {
            job_id: job_id.to_owned(),
            seq: self.seq,
            key: self.key,
            input: InputValue::from_blob(&self.input_kind, self.input)?,
        })
    }
}

/// A row of `nodes` with the count of its unexpired leases.
#[derive(sqlx::FromRow)]
pub(crate) struct NodeRecord {
    id: String,
    role: String,
    models: String,
    address: Option<String>,
    started_at: i64,
    heartbeat_at: i64,
    leases: i64,
}

impl NodeRecord {
    /// The node's status.
    pub(crate) fn into_status(self) -> Result<NodeStatus, StoreError> {
        Ok(NodeStatus {
            info: NodeInfo {
                id: self.id,
                role: self.role,
                models: serde_json::from_str(&self.models)
                    .map_err(|e| StoreError::Corrupt(format!("node models: {e}")))?,
                address: self.address,
                started_at: self.started_at,
            },
            heartbeat_at: self.heartbeat_at,
            leases: to_u64(self.leases, "leases")?,
        })
    }
}

/// A stored integer that must not be negative.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} is negative: {value}")))
}

/// A count or duration as the databases store it.
pub(crate) fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{value} is out of range")))
}

/// Durations are stored as fractional milliseconds; non-finite or negative values become 0.
pub(crate) fn finite_ms(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        value
    } else {
        0.0
    }
}

/// How many items of the job have their final outcome: also the next `done_seq`.
pub(crate) fn finished_count(job: &Job) -> Result<i64, StoreError> {
    to_i64(job.completed + job.failed + job.canceled + job.timedout)
}

/// Why a job takes no inputs (terminal or closed), if it does not.
pub(crate) fn refuse_inputs(job: &Job, added: usize, max_inputs: u64) -> Result<(), StoreError> {
    let job_id = &job.id;
    if job.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "job {job_id} is {}: it takes no inputs",
            job.status
        )));
    }
    if job.closed {
        return Err(StoreError::Conflict(format!(
            "job {job_id} is closed: it takes no more inputs"
        )));
    }
    if job.total.saturating_add(added as u64) > max_inputs {
        return Err(StoreError::TooManyInputs { limit: max_inputs });
    }
    Ok(())
}

/// The error for a job created with its inputs but given none.
pub(crate) fn no_inputs() -> StoreError {
    StoreError::Invalid("a job created with its inputs needs at least one".into())
}
