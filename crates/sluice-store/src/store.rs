//! The backend-neutral contract of the job store. The server holds an `Arc<dyn Store>`, so that the
//! SQLite and PostgreSQL implementations are interchangeable; every guarantee the server relies on
//! (atomicity, idempotent recording, cursor semantics, leases) is stated here, each backend keeps
//! it, and one conformance suite (`crates/sluice-store/tests/`) checks both.

use async_trait::async_trait;

use crate::{
    Claim, Completion, ExportClaim, InputValue, ItemResult, ItemRow, Job, JobFilter, NewJob, NodeInfo, NodeStatus,
    StoreError, StoreHealth,
};

/// Durable store of bulk jobs, their inputs and their results.
///
/// All methods are safe to call concurrently. A job id that does not exist gives
/// [`StoreError::NotFound`] unless a method says otherwise.
#[async_trait]
pub trait Store: Send + Sync {
    /// Creates a job in status `SUBMITTED` with no input, accepting inputs until
    /// [`close_job`](Store::close_job).
    async fn create_job(&self, job: NewJob) -> Result<Job, StoreError>;

    /// Creates a job with all its inputs and closes it, in one transaction: the job appears whole
    /// (every input in, closed, `total` = their number) or, if anything fails or the process dies
    /// half-way, not at all. What an inline submission uses.
    ///
    /// Errors: those of [`add_inputs_within`](Store::add_inputs_within), plus
    /// [`StoreError::Invalid`] when `inputs` is empty.
    async fn create_job_with_inputs(
        &self,
        job: NewJob,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<Job, StoreError>;

    /// Appends inputs to a job, atomically: either all of them are added (and `total` grows by their
    /// number) or none is. Each gets the next `seq` in order.
    ///
    /// Errors: [`StoreError::DuplicateKey`] if a key is already in the job or occurs twice in
    /// `inputs`; [`StoreError::Conflict`] if the job is closed or terminal. Large jobs are added by
    /// calling this repeatedly with chunks (e.g. 1,000 inputs each).
    async fn add_inputs(&self, job_id: &str, inputs: Vec<(String, InputValue)>) -> Result<u64, StoreError> {
        self.add_inputs_within(job_id, inputs, u64::MAX).await
    }

    /// [`add_inputs`](Store::add_inputs) with a bound on the job's size: when the job would then
    /// hold more than `max_inputs` inputs, nothing is added and the call fails with
    /// [`StoreError::TooManyInputs`]. The check and the insert are one transaction, so concurrent
    /// calls cannot together take a job past the bound.
    async fn add_inputs_within(
        &self,
        job_id: &str,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<u64, StoreError>;

    /// Closes a job: no more inputs. If it has no pending item left it finishes at once: `COMPLETED`
    /// (also when it has no input at all, with `total` 0) or `FAILED` if no item succeeded (or the
    /// job has an [`error`](Job::error)). Closing a closed or terminal job returns it unchanged.
    async fn close_job(&self, job_id: &str) -> Result<Job, StoreError>;

    /// Creates a `source` job (`job.source` names what it reads) whose inputs one node at a time
    /// reads in and adds, like [`create_job`](Store::create_job), with its **ingest claim** held
    /// by `node` for `lease_ms` from now, in the same transaction: no other node can claim the
    /// job's ingestion before the claim expires.
    ///
    /// The ingest claim (the job's `ingest_node` and `ingest_until`) says which node reads a
    /// source job's source; it is the job-level counterpart of an item's lease. The holder renews
    /// it with [`claim_ingest`](Store::claim_ingest) well within the lease, adds what it reads with
    /// [`add_ingested`](Store::add_ingested) (refused to any other node) and settles the job with
    /// [`finish_ingest`](Store::finish_ingest). When the holder dies, its claim expires and any
    /// node may claim the job and go on reading where its stored inputs stop
    /// ([`ingests_to_resume`](Store::ingests_to_resume)); a node that stops gracefully gives its
    /// claims up at once ([`release_ingest`](Store::release_ingest)).
    async fn create_source_job(&self, job: NewJob, node: &str, lease_ms: u64) -> Result<Job, StoreError>;

    /// Claims the ingestion of a source job for `node` for `lease_ms` from now, or renews `node`'s
    /// claim: one conditional update, which succeeds only while the job is active, not closed, a
    /// source job (made by [`create_source_job`](Store::create_source_job)), and its claim is
    /// `node`'s own, expired or released. Returns the job when `node` holds the claim afterwards,
    /// `None` otherwise (another node holds it, or the job is closed, terminal or not a source
    /// job). Two nodes claiming at once never both succeed.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown job.
    async fn claim_ingest(&self, job_id: &str, node: &str, lease_ms: u64) -> Result<Option<Job>, StoreError>;

    /// Ids of the source jobs whose ingestion may be claimed now, oldest first: active, not closed,
    /// with a claim that expired or was released, or (when `held_by` is given) a claim held by
    /// that node (the node's previous run, at its start, after a crash). A hint:
    /// [`claim_ingest`](Store::claim_ingest) decides.
    async fn ingests_to_resume(&self, held_by: Option<&str>) -> Result<Vec<String>, StoreError>;

    /// Appends inputs read from a source job's source, as [`add_inputs_within`](Store::add_inputs_within)
    /// does (atomically, with the same errors), but only while `node` holds the job's ingest claim
    /// (expired or not: no other node has claimed it since) and the job holds exactly `at` inputs,
    /// so that the inputs go exactly after those already stored. Returns `false`, adding nothing,
    /// when either does not hold: another node took the ingestion over, or the job moved on.
    async fn add_ingested(
        &self,
        job_id: &str,
        node: &str,
        at: u64,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<bool, StoreError>;

    /// Settles a source job when `node`, holding its ingest claim, stops reading its source: closes
    /// it (no more inputs) and ends the claim. With `error` (the source failed part-way, the job
    /// would go past its input limit, ...), the reason is kept as the job's
    /// [`error`](Job::error): the inputs already stored still run, and the job then ends `FAILED`
    /// (at once when none is pending). Without, the job completes as [`close_job`](Store::close_job)
    /// says. A closed or terminal job is returned unchanged (settling twice is harmless); `None`
    /// when the claim is another node's (nothing changed).
    async fn finish_ingest(&self, job_id: &str, node: &str, error: Option<&str>) -> Result<Option<Job>, StoreError>;

    /// Gives up `node`'s ingest claim on a job (a node stopping gracefully): the claim is expired
    /// at once, so any node may claim the job and go on reading. Returns whether `node` held it.
    async fn release_ingest(&self, job_id: &str, node: &str) -> Result<bool, StoreError>;

    /// Claims the writing of a job's output for `node` for `lease_ms` from now, or renews
    /// `node`'s claim: one conditional update, which succeeds only while the job has an
    /// [`output`](crate::NewJob::output) not yet finished ([`finish_export`](Store::finish_export))
    /// and its export claim is `node`'s own, expired, released or never taken. Returns the job and
    /// the last saved checkpoint when `node` holds the claim afterwards, `None` otherwise. Two
    /// nodes claiming at once never both succeed. See "Job outputs" in the crate documentation.
    ///
    /// Errors: [`StoreError::NotFound`] for an unknown job.
    async fn claim_export(&self, job_id: &str, node: &str, lease_ms: u64) -> Result<Option<ExportClaim>, StoreError>;

    /// Ids of the jobs whose output may be claimed now, oldest first: with an output not finished
    /// and an export claim never taken, expired or released, or (when `held_by` is given) held by
    /// that node. A hint: [`claim_export`](Store::claim_export) decides.
    async fn exports_to_resume(&self, held_by: Option<&str>) -> Result<Vec<String>, StoreError>;

    /// Saves the checkpoint of a job's output (what is committed, `rows` results in all), only
    /// while `node` holds its export claim (expired or not: no other node has claimed it since)
    /// and the output is not finished. Returns whether it was saved.
    async fn save_export(&self, job_id: &str, node: &str, checkpoint: &str, rows: u64) -> Result<bool, StoreError>;

    /// Records that a job's output is finished: written (`error` `None`) or failed with that
    /// reason, and ends the claim; only while `node` holds the claim. Returns whether it was
    /// recorded. The job itself is not changed: its results stay in the store.
    async fn finish_export(&self, job_id: &str, node: &str, error: Option<&str>) -> Result<bool, StoreError>;

    /// Gives up `node`'s export claim on a job (a node stopping gracefully): any node may claim
    /// it at once. Returns whether `node` held it.
    async fn release_export(&self, job_id: &str, node: &str) -> Result<bool, StoreError>;

    /// The job with this id, if any.
    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError>;

    /// Jobs matching `filter`, newest first, one page at a time: returns the page and the cursor of
    /// the next one (`None` on the last page). The cursor is opaque.
    async fn list_jobs(&self, filter: JobFilter) -> Result<(Vec<Job>, Option<String>), StoreError>;

    /// Every job not in a terminal status, highest priority first, then oldest first: what the feeder
    /// serves, and what resumes after a restart.
    async fn active_jobs(&self) -> Result<Vec<Job>, StoreError>;

    /// Up to `limit` pending items of a job with `seq > after_seq` (all if `None`), in `seq` order.
    ///
    /// Nothing is marked as taken: the feeder keeps its own cursor, and after a restart it starts
    /// again from `None` and gets exactly the items that have no outcome yet.
    async fn pending_items(&self, job_id: &str, after_seq: Option<i64>, limit: u32)
        -> Result<Vec<ItemRow>, StoreError>;

    /// Records finished items, all in one transaction, and returns how many were newly recorded.
    ///
    /// An item is only updated while it is still `pending`: a second completion for the same item
    /// (after a crash and a re-run, or after a cancel) changes nothing. Each newly recorded item gets
    /// the next `done_seq` of its job; the job's counters grow by exactly the recorded items; a
    /// `SUBMITTED` job becomes `IN_PROGRESS`; a closed job left with no pending item becomes
    /// `COMPLETED` (or `FAILED` when no item succeeded or the job has an [`error`](Job::error)). Completions for unknown jobs are skipped
    /// with a warning; a completion whose state is not `done`/`failed` rejects the whole call with
    /// [`StoreError::Invalid`].
    async fn record(&self, completions: Vec<Completion>) -> Result<u64, StoreError>;

    /// Notes that the job's first item was fed: `SUBMITTED` → `IN_PROGRESS`, sets `started_at`.
    /// No effect on a job past `SUBMITTED`.
    async fn mark_started(&self, job_id: &str) -> Result<(), StoreError>;

    /// Up to `limit` finished items of a job with `done_seq > after_done_seq` (all if `None`), in
    /// `done_seq` order. Reading page after page with the last `done_seq` as the next cursor returns
    /// every outcome exactly once, also while the job is still running.
    async fn results(
        &self,
        job_id: &str,
        after_done_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ItemResult>, StoreError>;

    /// The item of a job with this key, finished or not (`state` is `pending` until it finishes);
    /// `None` if the job has no such key.
    async fn result(&self, job_id: &str, key: &str) -> Result<Option<ItemResult>, StoreError>;

    /// Cancels a job: every pending item becomes `canceled` (with a `done_seq`), the job
    /// `CANCELED`. A terminal job is returned unchanged.
    async fn cancel_job(&self, job_id: &str) -> Result<Job, StoreError>;

    /// Times a job out: every pending item becomes `timedout` (with a `done_seq`), the job
    /// `TIMEDOUT`. A terminal job is returned unchanged.
    async fn timeout_job(&self, job_id: &str) -> Result<Job, StoreError>;

    /// Ids of the active jobs whose deadline (`created_at + timeout_ms`) is before `now_ms` (unix ms).
    async fn expired_jobs(&self, now_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Claims up to `claim.limit` pending items of the active jobs of `claim.model` for
    /// `claim.node`, leased for `claim.lease_ms` from now, and returns them (each job's items in
    /// `seq` order). One transaction: two nodes claiming at once never get the same item.
    ///
    /// An item is claimable while it is `pending` and has no lease, or its lease has expired. A
    /// claim is fair between the model's active jobs: the limit is shared in proportion to their
    /// weights (`1 + priority`, priority clamped to 0..=9, see [`fair_shares`](crate::fair_shares)),
    /// and what a job cannot use goes to the others; since every claim of every node shares this
    /// way, fairness holds across nodes. A `SUBMITTED` job that gets items becomes `IN_PROGRESS`.
    ///
    /// A lease is a promise, not a lock: [`record`](Store::record) accepts the first result for a
    /// pending item from any node, leased or not, so an item whose lease expired while its first
    /// node was still running it has one result whichever node finishes first.
    async fn claim(&self, claim: Claim) -> Result<Vec<ItemRow>, StoreError>;

    /// Extends every lease `node` holds on a pending item to `lease_ms` from now; returns how many.
    /// A live node calls it well within the lease (e.g. every third of it).
    async fn renew_leases(&self, node: &str, lease_ms: u64) -> Result<u64, StoreError>;

    /// Drops every lease `node` holds on a pending item, so any node can claim those items at once
    /// (a node stopping gracefully, or starting again after a crash under the same id); returns
    /// how many. Wakes the other nodes (see [`work_notices`](Store::work_notices)).
    async fn release_leases(&self, node: &str) -> Result<u64, StoreError>;

    /// Writes `node`'s row in the node table with the heartbeat time now (inserting it the first
    /// time). What [`nodes`](Store::nodes) lists.
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError>;

    /// Removes `node_id`'s row (a node stopping gracefully, after releasing its leases).
    async fn remove_node(&self, node_id: &str) -> Result<(), StoreError>;

    /// The nodes whose last heartbeat is at most `max_age_ms` old, by id, each with the number of
    /// unexpired leases it holds on pending items.
    async fn nodes(&self, max_age_ms: u64) -> Result<Vec<NodeStatus>, StoreError>;

    /// A receiver of the names of models that may have new claimable work (or `*`: any model):
    /// inputs added (or an inline job created), leases released. Notices from every process on the same store arrive
    /// (PostgreSQL: `LISTEN`/`NOTIFY`; SQLite: this process). A notice is a hint to claim now, not
    /// a promise of work; lagging receivers lose notices, so a worker still claims periodically
    /// (expired leases announce nothing).
    fn work_notices(&self) -> tokio::sync::broadcast::Receiver<String>;

    /// Whether the store can write, as its last writes saw it (see [`StoreHealth`]).
    fn health(&self) -> StoreHealth;

    /// Makes one tiny write, to learn whether the store can write again after a failure; its
    /// outcome updates [`health`](Store::health) like any other write.
    async fn probe_write(&self) -> Result<(), StoreError>;
}
