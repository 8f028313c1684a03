//! The values that cross the [`Store`](crate::Store) boundary: jobs, their inputs, the results the
//! engine writes back and what readers get. They are plain data, independent of any backend, and
//! serialise with serde so the server can put them on the wire as they are.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The life cycle of a job.
///
/// `SUBMITTED` → `IN_PROGRESS` (first item fed or first result recorded) → one of the terminal
/// states. A job only becomes `COMPLETED`/`FAILED` once it is closed and has no pending item.
/// A job with an [`error`](Job::error) (its source could not be read to the end) ends `FAILED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Accepted; no item has started yet.
    Submitted,
    /// At least one item was fed to the engine or has a result.
    InProgress,
    /// Closed and every item finished, at least one successfully (or the job had no input).
    Completed,
    /// Canceled by a user; the items still pending at that moment are `canceled`.
    Canceled,
    /// Its deadline passed; the items still pending at that moment are `timedout`.
    Timedout,
    /// Closed and every item finished, none successfully (and it had at least one input); or closed
    /// with an [`error`](Job::error), such as a source that failed part-way, once every input it
    /// holds finished.
    Failed,
}

impl JobStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Submitted,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Canceled,
        JobStatus::Timedout,
        JobStatus::Failed,
    ];

    /// The upper-case name used on the wire and in the database (`"IN_PROGRESS"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Submitted => "SUBMITTED",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Timedout => "TIMEDOUT",
            JobStatus::Failed => "FAILED",
        }
    }

    /// Whether the job is finished for good (`COMPLETED`, `CANCELED`, `TIMEDOUT`, `FAILED`).
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Submitted | JobStatus::InProgress)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown job status {s:?}")))
    }
}

/// The state of one input of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// No result yet: the feeder will (re)send it to the engine.
    Pending,
    /// Finished successfully; the result has an `output`.
    Done,
    /// Finished with an error; the result has an `error`.
    Failed,
    /// The job was canceled before this item finished.
    Canceled,
    /// The job timed out before this item finished.
    Timedout,
}

impl ItemState {
    /// Every state.
    pub const ALL: [ItemState; 5] = [
        ItemState::Pending,
        ItemState::Done,
        ItemState::Failed,
        ItemState::Canceled,
        ItemState::Timedout,
    ];

    /// The lower-case name used on the wire and in the database (`"done"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
            ItemState::Canceled => "canceled",
            ItemState::Timedout => "timedout",
        }
    }

    /// Whether the item has its one final outcome (everything but `pending`).
    pub fn is_finished(self) -> bool {
        self != ItemState::Pending
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ItemState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown item state {s:?}")))
    }
}

/// One input of a job, as submitted. Stored as a kind plus a BLOB (UTF-8 text, raw bytes or
/// serialised JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum InputValue {
    /// A text input (a prompt, a sentence to embed, ...).
    Text(String),
    /// A binary input (an encoded image, ...).
    Bytes(Vec<u8>),
    /// A structured input.
    Json(serde_json::Value),
    /// An input that could not be read (a malformed line of a source file); it fails alone with
    /// this message instead of running.
    Invalid(String),
}

impl InputValue {
    /// The name of the variant as stored: `"text"`, `"bytes"` or `"json"`.
    pub fn kind(&self) -> &'static str {
        match self {
            InputValue::Text(_) => "text",
            InputValue::Bytes(_) => "bytes",
            InputValue::Json(_) => "json",
            InputValue::Invalid(_) => "invalid",
        }
    }

    /// The stored form: the kind and the BLOB.
    pub fn to_blob(&self) -> Result<(&'static str, Vec<u8>), StoreError> {
        let blob = match self {
            InputValue::Text(text) => text.as_bytes().to_vec(),
            InputValue::Bytes(bytes) => bytes.clone(),
            InputValue::Json(value) => serde_json::to_vec(value)
                .map_err(|e| StoreError::Invalid(format!("input JSON cannot be serialised: {e}")))?,
            InputValue::Invalid(message) => message.as_bytes().to_vec(),
        };
        Ok((self.kind(), blob))
    }

    /// Rebuilds a value from its stored form.
    pub fn from_blob(kind: &str, blob: Vec<u8>) -> Result<Self, StoreError> {
        match kind {
            "text" => String::from_utf8(blob)
                .map(InputValue::Text)
                .map_err(|e| StoreError::Corrupt(format!("text input is not UTF-8: {e}"))),
            "bytes" => Ok(InputValue::Bytes(blob)),
            "invalid" => Ok(InputValue::Invalid(String::from_utf8_lossy(&blob).into_owned())),
            "json" => serde_json::from_slice(&blob)
                .map(InputValue::Json)
                .map_err(|e| StoreError::Corrupt(format!("JSON input does not parse: {e}"))),
            other => Err(StoreError::Corrupt(format!("unknown input kind {other:?}"))),
        }
    }
}

/// What a user submits to create a job (its inputs come separately, through
/// [`Store::add_inputs`](crate::Store::add_inputs)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewJob {
    /// The model that runs every item.
    pub model: String,
    /// An optional model version.
    pub version: Option<String>,
    /// Scheduling priority, higher first; 0 by default.
    pub priority: i32,
    /// Free-form labels, usable as a `list_jobs` filter. Duplicates are kept once.
    pub tags: Vec<String>,
    /// Deadline in milliseconds after creation; see [`Store::expired_jobs`](crate::Store::expired_jobs).
    pub timeout_ms: Option<u64>,
    /// `true` for an *open* job that receives its inputs over several calls before being closed;
    /// `false` for an inline job whose inputs all come with its submission. The store treats
    /// both alike (inputs are accepted until [`Store::close_job`](crate::Store::close_job)); the
    /// flag is kept so the server can tell them apart, e.g. after a restart.
    pub open: bool,
    /// Where the job came from (a client name, a file, ...), for information only.
    pub source: Option<String>,
    /// How a source job's source is read, as JSON text opaque to the store (the jobs runtime's
    /// video sampling); `None`: the defaults.
    pub source_options: Option<String>,
    /// Where the job's results are written as they arrive, besides the store (see
    /// [`OutputSpec`] and "Job outputs" in the crate documentation).
    pub output: Option<OutputSpec>,
}

/// Where a job's results go besides the store: a folder or object-store prefix and a format.
/// The store keeps it with the job and the progress of the one node writing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// A local folder or an object-store prefix (`s3://bucket/out/`).
    pub uri: String,
    /// The format of the result parts (`jsonl` or `parquet`).
    pub format: String,
}

/// How far the writing of a job's [`OutputSpec`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputState {
    /// Results are being written as they arrive.
    Writing,
    /// Every result is written, and the manifest.
    Written,
    /// The output could not be written (see [`JobOutput::error`]); the results are in the store.
    Failed,
}

/// A job's output and its progress, as [`Job::output`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutput {
    /// Where, as submitted.
    pub uri: String,
    /// The format, as submitted.
    pub format: String,
    /// How far.
    pub state: OutputState,
    /// Results in committed parts.
    pub rows: u64,
    /// Why the output failed, when it did.
    pub error: Option<String>,
}

/// What [`Store::claim_export`](crate::Store::claim_export) hands the node that now writes a job's
/// output: the job, and the checkpoint the previous writer saved, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportClaim {
    /// The job, with its [`output`](Job::output).
    pub job: Job,
    /// The last checkpoint saved with [`Store::save_export`](crate::Store::save_export), opaque to
    /// the store; `None` when nothing was committed yet.
    pub checkpoint: Option<String>,
}

/// A job as stored, with its progress counters.
///
/// Times are unix milliseconds (UTC). `pending = total - completed - failed - canceled - timedout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Random 128-bit id, 32 lower-case hex digits.
    pub id: String,
    /// The model that runs every item.
    pub model: String,
    /// The model version, if one was given.
    pub version: Option<String>,
    /// Where the job is in its life cycle.
    pub status: JobStatus,
    /// Whether the job was submitted as an open job (see [`NewJob::open`]).
    pub open: bool,
    /// Whether the job takes no more inputs: [`Store::close_job`](crate::Store::close_job) was
    /// called or the job is terminal. Only a closed job can become `COMPLETED`/`FAILED`.
    pub closed: bool,
    /// Scheduling priority, higher first.
    pub priority: i32,
    /// The job's labels.
    pub tags: Vec<String>,
    /// Deadline in milliseconds after `created_at`, if any.
    pub timeout_ms: Option<u64>,
    /// Where the job came from, if given.
    pub source: Option<String>,
    /// How its source is read (see [`NewJob::source_options`]).
    #[serde(default)]
    pub source_options: Option<String>,
    /// Creation time, unix ms.
    pub created_at: i64,
    /// When the first item was fed or got a result, unix ms.
    pub started_at: Option<i64>,
    /// When the job reached a terminal status, unix ms.
    pub finished_at: Option<i64>,
    /// Number of inputs.
    pub total: u64,
    /// Inputs without a final outcome yet.
    pub pending: u64,
    /// Items finished successfully (`done`).
    pub completed: u64,
    /// Items finished with an error (`failed`).
    pub failed: u64,
    /// Items canceled with the job.
    pub canceled: u64,
    /// Items that timed out with the job.
    pub timedout: u64,
    /// Sum of the recorded items' queue times, ms.
    pub queue_ms_total: f64,
    /// Sum of the recorded items' model times, ms.
    pub model_ms_total: f64,
    /// Why the job failed as a whole, if it did: a `source` job whose source could not be read to
    /// the end (see [`Store::finish_ingest`](crate::Store::finish_ingest)). The inputs stored
    /// before still run; the job then ends `FAILED`.
    pub error: Option<String>,
    /// Where its results are written besides the store, and how far, if the job has an output.
    #[serde(default)]
    pub output: Option<JobOutput>,
}

/// Filter and page for [`Store::list_jobs`](crate::Store::list_jobs). Jobs come newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this model.
    pub model: Option<String>,
    /// Only jobs carrying this tag.
    pub tag: Option<String>,
    /// Page size; 0 means [`JobFilter::DEFAULT_LIMIT`], and it is capped at [`JobFilter::MAX_LIMIT`].
    pub limit: u32,
    /// The `next_cursor` of the previous page, or `None` for the first page.
    pub cursor: Option<String>,
}

impl JobFilter {
    /// Page size used when `limit` is 0.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// Largest page size.
    pub const MAX_LIMIT: u32 = 1000;

    /// The page size actually used.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }
}

/// A pending item, as handed to the feeder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRow {
    /// The job it belongs to.
    pub job_id: String,
    /// 0-based insertion order within the job; the feeder's cursor.
    pub seq: i64,
    /// The user's name for this input, unique within the job.
    pub key: String,
    /// The input itself.
    pub input: InputValue,
}

/// The error of a failed (or canceled / timed-out) item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemError {
    /// A short machine-readable code (`"canceled"` and `"timedout"` for items the job's end
    /// caught pending; otherwise whatever the engine reported).
    pub code: String,
    /// A human-readable message.
    pub message: String,
}

/// The outcome of one item, as readers get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The job it belongs to.
    pub job_id: String,
    /// 0-based insertion order within the job.
    pub seq: i64,
    /// The user's name for this input.
    pub key: String,
    /// `pending` until it finishes, then its one final state.
    pub state: ItemState,
    /// The model's output, for `done` items.
    pub output: Option<serde_json::Value>,
    /// The error, for `failed`, `canceled` and `timedout` items.
    pub error: Option<ItemError>,
    /// Time the item waited before the model ran it, ms (recorded items only).
    pub queue_ms: Option<f64>,
    /// Time the model spent on it, ms (recorded items only).
    pub model_ms: Option<f64>,
    /// 0-based order in which the item finished within its job; the results cursor. `None` while
    /// pending.
    pub done_seq: Option<i64>,
}

/// One finished item, as the result writer hands it to [`Store::record`](crate::Store::record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    /// The job it belongs to.
    pub job_id: String,
    /// The item's `seq` (from its [`ItemRow`]).
    pub seq: i64,
    /// `done` or `failed`; other states are rejected.
    pub state: ItemState,
    /// The output of a `done` item, as the JSON text the processor produced: stored as it is,
    /// never parsed and serialised again on the way in.
    pub output: Option<Box<serde_json::value::RawValue>>,
    /// The error code of a `failed` item.
    pub error_code: Option<String>,
    /// The error message of a `failed` item.
    pub error_message: Option<String>,
    /// Time the item waited before the model ran it, ms.
    pub queue_ms: f64,
    /// Time the model spent on it, ms.
    pub model_ms: f64,
}

impl Completion {
    /// A successful completion with an output value (serialised once, here).
    pub fn done(job_id: impl Into<String>, seq: i64, output: serde_json::Value, queue_ms: f64, model_ms: f64) -> Self {
        // Serialising a `Value` cannot fail (its map keys are strings).
        let output = serde_json::value::to_raw_value(&output).ok();
        Completion::done_raw(job_id, seq, output, queue_ms, model_ms)
    }

    /// A successful completion whose output is already JSON text.
    pub fn done_raw(
        job_id: impl Into<String>,
        seq: i64,
        output: Option<Box<serde_json::value::RawValue>>,
        queue_ms: f64,
        model_ms: f64,
    ) -> Self {
        Completion {
            job_id: job_id.into(),
            seq,
            state: ItemState::Done,
            output,
            error_code: None,
            error_message: None,
            queue_ms,
            model_ms,
        }
    }

    /// A failed completion.
    pub fn failed(
        job_id: impl Into<String>,
        seq: i64,
        code: impl Into<String>,
        message: impl Into<String>,
        queue_ms: f64,
        model_ms: f64,
    ) -> Self {
        Completion {
            job_id: job_id.into(),
            seq,
            state: ItemState::Failed,
            output: None,
            error_code: Some(code.into()),
            error_message: Some(message.into()),
            queue_ms,
            model_ms,
        }
    }
}

/// Whether the store can write, as its last writes saw it: what `/readyz` reports.
///
/// A store starts writable. A write that fails in the database (disk full, I/O error, read-only
/// file, ...) marks it not writable, with the class of the failure and its time; the next write
/// that commits (a request, a recorded result, or [`Store::probe_write`](crate::Store::probe_write))
/// marks it writable again. Failures that are the caller's (an unknown job, a duplicate key, ...)
/// change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `false` while the last write failed in the database.
    pub writable: bool,
    /// The last failed write, if any since the store was opened.
    pub last_write_error: Option<WriteFailure>,
    /// Unix ms of the last write that committed, if any since the store was opened.
    pub last_write_ok_at: Option<i64>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            writable: true,
            last_write_error: None,
            last_write_ok_at: None,
        }
    }
}

/// A write that failed in the database: its class, never the database's own message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFailure {
    /// `disk_full`, `io_error`, `read_only`, `busy`, `corrupt`, `cannot_open` or `database`.
    pub class: String,
    /// Unix ms.
    pub at: i64,
}

/// What a node asks of [`Store::claim`](crate::Store::claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The claiming node's id (see [`NodeInfo::id`]).
    pub node: String,
    /// The model whose jobs' items are claimed.
    pub model: String,
    /// Most items to claim.
    pub limit: u32,
    /// How long the lease lasts from now, ms, unless renewed.
    pub lease_ms: u64,
}

/// A node of a Sluice installation, as it announces itself in its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique name of the node (`--node-id`).
    pub id: String,
    /// `all`, `api` or `worker`.
    pub role: String,
    /// The models it claims work for (empty for an api node).
    pub models: Vec<String>,
    /// Where it listens, if it serves HTTP.
    pub address: Option<String>,
    /// When the node started, unix ms.
    pub started_at: i64,
}

/// A live node, as [`Store::nodes`](crate::Store::nodes) lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// What the node announced.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Its last heartbeat, unix ms (the store's clock).
    pub heartbeat_at: i64,
    /// Unexpired leases it holds on pending items.
    pub leases: u64,
}
