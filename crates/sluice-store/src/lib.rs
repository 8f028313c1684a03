//! Durable store of Sluice bulk jobs.
//!
//! A bulk job is a model name plus many named inputs. The server streams a job's pending items into
//! the engine and writes each result back as it completes; the process may be killed (`kill -9`) at
//! any moment, and on restart every job must resume with every input ending with exactly one result
//! or one failure. Several server processes (nodes) may share one store and its work. This crate is
//! where those guarantees live: the [`Store`] trait (used as `Arc<dyn Store>`), [`SqliteStore`], the
//! embedded single-node implementation (`<data_dir>/sluice.db`, WAL mode, `synchronous=NORMAL`,
//! schema migrations embedded from `crates/sluice-store/migrations/`), the PostgreSQL implementation
//! for many nodes (cargo feature `postgres`), and [`StoreConfig`], which opens either from a URL.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_store::StoreError> {
//! use std::sync::Arc;
//! use sluice_store::{Completion, InputValue, NewJob, SqliteStore, Store};
//!
//! let store: Arc<dyn Store> = Arc::new(SqliteStore::open("/var/lib/sluice".as_ref()).await?);
//! let job = store.create_job(NewJob { model: "embed".into(), ..NewJob::default() }).await?;
//! store.add_inputs(&job.id, vec![("a".into(), InputValue::Text("hello".into()))]).await?;
//! store.close_job(&job.id).await?;
//! for item in store.pending_items(&job.id, None, 1_000).await? {
//!     let output = serde_json::json!({ "len": 5 }); // run the model here
//!     store.record(vec![Completion::done(&job.id, item.seq, output, 3.0, 7.0)]).await?;
//! }
//! let results = store.results(&job.id, None, 1_000).await?;
//! # let _ = results;
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! - `jobs`: one row per job. `pk` is an internal integer key (monotonic: creation order) that items
//!   refer to; `id` is the public random 128-bit id (32 hex digits). Besides the submitted fields it
//!   holds `open` (submitted as an open job), `closed` (no more inputs), `status`, the times (unix
//!   milliseconds, UTC: `created_at`, `started_at`, `finished_at`) and the counters `total`,
//!   `completed`, `failed`, `canceled`, `timedout`, `queue_ms_total`, `model_ms_total`. `pending` is
//!   not stored: it is `total` minus the four finished counters. `error` says why a job failed as a
//!   whole (a source that failed part-way); `ingest_node` and `ingest_until` are the ingest claim
//!   of a `source` job (see "Source ingestion"; `NULL` for other jobs).
//! - `job_tags`: `(tag, job_pk)`, for listing jobs by tag.
//! - `items`: one row per input: `job_pk`, `seq` (0-based insertion order within the job), `key`
//!   (unique within the job, by the index `items_key`), the input as `input_kind` (`text`, `bytes`,
//!   `json`) plus a BLOB, `state` (`pending`, `done`, `failed`, `canceled`, `timedout`), and once
//!   finished `output` (JSON text), `error_code`, `error_message`, `queue_ms`, `model_ms` and
//!   `done_seq`. Two partial indexes keep big jobs fast: `items_pending (job_pk, seq) WHERE state =
//!   'pending'` (the feeder's stream and the target of `record`) and `items_done (job_pk, done_seq)
//!   WHERE done_seq IS NOT NULL` (the results stream). A 10-million-item job is read and updated
//!   through index searches only; a unit test checks the query plans.
//!
//! # Invariants
//!
//! Every statement that moves items out of `pending` runs in the same transaction as the update of
//! the job's counters, which grow by exactly the number of rows that statement changed. Hence, at
//! every commit:
//!
//! 1. each job counter equals the number of its items in that state, and `pending` is the number of
//!    its pending items;
//! 2. the `done_seq`s of a job's finished items are exactly `0, 1, …, finished - 1` (the next one is
//!    always the current number of finished items; uniqueness is also enforced by `items_done`);
//! 3. an item leaves `pending` once and never changes again.
//!
//! Job status moves `SUBMITTED` → `IN_PROGRESS` (on its first claim, [`Store::mark_started`] or the first recorded
//! result) → terminal. A job becomes `COMPLETED` when it is closed and has no pending item (checked
//! by `close_job` and by every `record`), or `FAILED` instead if it has inputs and none succeeded, or
//! if it has an `error` (its source failed part-way: [`Store::finish_ingest`]). A
//! job closed with no input at all completes at once, as `COMPLETED` with `total` 0. `cancel_job` /
//! `timeout_job` turn every pending item into `canceled` / `timedout` (each with a `done_seq` and an
//! error code of that name) and the job into `CANCELED` / `TIMEDOUT`; on a terminal job they change
//! nothing.
//!
//! # Exactly once
//!
//! The engine executes items *at least* once: after a crash, items that were in flight (fed, maybe
//! computed, not yet recorded) are fed again. Results are *recorded* exactly once:
//!
//! - Nothing is *finished* when an item is fed: a claim ([`Store::claim`]) only leases it (see
//!   "Leases"). Whatever was not committed as finished before the crash is still `pending`, so after
//!   a restart [`Store::active_jobs`] lists the job, and the item is claimable again once its lease
//!   is released (a node restarting under its id releases its old leases first) or expires: none
//!   is lost.
//! - [`Store::record`] updates an item only `WHERE state = 'pending'`, in one transaction for the
//!   whole batch, and counts only the rows it changed. A completion for an item that already has an
//!   outcome (a re-run after a crash, a duplicate in the same batch, a late result after a cancel)
//!   changes nothing: none is written twice and no counter drifts.
//! - A transaction is all or nothing. `kill -9` in the middle of one leaves the database as of the
//!   last commit; SQLite's WAL recovery on the next open discards the partial transaction. With
//!   `synchronous=NORMAL` a commit survives the process being killed (it is in the WAL, in the OS
//!   cache); only an OS crash or power loss may lose the last few commits, which rolls those items
//!   back to `pending`: they are re-run and recorded once, so the guarantee still holds.
//! - [`Store::add_inputs`] is atomic too (a duplicate key aborts the whole call), so a job never holds
//!   half of a chunk.
//!
//! # Cursors
//!
//! - **Feeder** — claims: the feeder takes work with [`Store::claim`], which leases what it returns;
//!   it keeps no cursor. [`Store::pending_items`]`(job, after_seq, limit)` still pages a job's
//!   pending items in `seq` order (leased or not) for readers and tools.
//! - **Results** — `done_seq`: [`Store::results`]`(job, after_done_seq, limit)` returns finished items
//!   in completion order. Since `done_seq`s are assigned in increasing order at commit and never
//!   reused, a reader that passes the last `done_seq` it saw gets every outcome exactly once, even
//!   while results keep arriving, and can resume from a saved cursor after any interruption.
//! - **Job list** — [`Store::list_jobs`] pages newest first by keyset on the internal `pk`; its
//!   `next_cursor` is an opaque string.
//!
//! # Leases
//!
//! A claim sets an item's `lease_node` and `lease_until` (unix ms). While the lease runs no other
//! claim returns the item; when it has passed, any node's claim may. The holder renews its leases
//! every third of the lease ([`Store::renew_leases`], the node's heartbeat), so only a node that
//! stopped renewing (dead, or cut off from the store for a whole lease) loses its items. A node
//! stopping gracefully releases its leases at once ([`Store::release_leases`]), which sends a work
//! notice so that idle nodes claim them without waiting. A lease never decides who may record:
//! [`Store::record`] takes the first result for a pending item from any node, and ignores every
//! later one, so an item run by two nodes (its lease expired while the first was slow) still has
//! exactly one result. Claims share their limit between a model's active jobs by weight
//! ([`fair_shares`]): the same rule in every claim of every node keeps the jobs fair across nodes.
//! Work notices ([`Store::work_notices`]) tell idle nodes that a model got work (PostgreSQL:
//! `LISTEN`/`NOTIFY`, across processes; SQLite: within the process); nodes still claim every few
//! seconds, since an expired lease announces nothing. The node table ([`Store::heartbeat`],
//! [`Store::nodes`]) lists the live nodes, their models and the leases they hold.
//!
//! # Source ingestion
//!
//! A `source` job reads its inputs from a file, folder or object-store URI on the server. Sources
//! are read in a deterministic order with deterministic keys (`sluice-io`), and inputs get their
//! `seq` in the order they are added, so a job that holds `total` inputs holds exactly the first
//! `total` records of its source. A reader interrupted by a crash therefore resumes by opening the
//! source again, skipping `total` records and adding the rest.
//!
//! One node at a time reads a job's source: the node named by the job's **ingest claim**
//! (`ingest_node`, `ingest_until`), taken when the job is created
//! ([`Store::create_source_job`]) and renewed by its holder well within the lease
//! ([`Store::claim_ingest`]). [`Store::add_ingested`] adds a chunk only while the caller holds the
//! claim and the job holds exactly the inputs the caller expects (checked in the insert's
//! transaction, under the job's row lock on PostgreSQL), so two readers never add the same records
//! and a reader that lost its claim adds nothing. When the holder dies its claim expires, and
//! [`Store::claim_ingest`], one conditional `UPDATE` that succeeds for one caller only, hands it to
//! another node (or to the same node restarting: [`Store::ingests_to_resume`] lists a node's own
//! claims for it at start). [`Store::finish_ingest`] closes the job when its source ends, or keeps
//! the reason when it failed part-way: the stored inputs still run and the job ends `FAILED`
//! with that `error`.
//!
//! # Job outputs
//!
//! A job with an [`OutputSpec`] has its results written, as they arrive, to a folder or an
//! object-store prefix as rolling parts (by `sluice-jobs`). One node at a time writes a job's
//! output: the node named by the job's **export claim** (`export_node`, `export_until`), taken
//! with [`Store::claim_export`] (one conditional `UPDATE`, as for the ingest claim; also the
//! renewal) by any api node once the job exists or the previous holder's claim expired. The
//! writer reads the results in `done_seq` order and, each time it has committed parts, saves a
//! **checkpoint** with [`Store::save_export`] (refused unless it still holds the claim): the parts
//! committed so far and the last `done_seq` they hold, opaque to the store. A writer that takes
//! over reads the checkpoint back with its claim, removes whatever parts the checkpoint does not
//! list (written after it, before a crash) and goes on after its `done_seq`, so each result is in
//! exactly one part of the finished output. [`Store::finish_export`] records the end (written, or
//! failed with a reason) once the job is terminal and every result is written.
//!
//! # Concurrency
//!
//! [`SqliteStore`] writes through a single connection with `BEGIN IMMEDIATE` transactions, so writers
//! queue in-process and a second process would wait on the busy timeout; reads use a separate pool
//! and, in WAL mode, never block writes. A claim is one such transaction, so two claims never
//! overlap; SQLite is still meant for one node (its notices do not leave the process).
//!
//! `PgStore` (feature `postgres`) runs each operation as one PostgreSQL transaction on a pool of
//! connections. A claim locks the rows it leases with `FOR UPDATE SKIP LOCKED`, so concurrent
//! claims from any number of nodes never wait for each other nor return the same item. Every
//! statement that takes items out of `pending` (`record`, `cancel_job`, `timeout_job`) first locks
//! the job's row (`record` locks its jobs in `pk` order, so two records cannot deadlock), which
//! keeps the invariants above exact under concurrency; a serialization failure or deadlock reruns
//! the transaction. A committed transaction survives the database's crash (PostgreSQL's WAL); a
//! dropped connection fails the call, which the jobs runtime retries (`record` and claims are safe
//! to repeat). Leases and heartbeats use the database's clock, so nodes need not agree on time.
//!
//! # Failed writes
//!
//! A write that fails (a full disk, an I/O error) is rolled back whole, and the writer connection is
//! never left inside a transaction: if the rollback fails, the connection is closed and replaced.
//! [`Store::health`] then says the store cannot write (with the failure's class and time) until a
//! write commits again; [`Store::probe_write`] is the write a server makes to find out.
//! [`Store::create_job_with_inputs`] makes an inline job appear whole or not at all, and
//! [`Store::add_inputs_within`] bounds a job's size inside the insert's transaction.

mod common;
mod config;
mod error;
mod fair;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
mod store;
#[cfg(all(feature = "test-util", feature = "postgres"))]
pub mod test_util;
mod types;

pub use common::now_ms;
pub use config::{host_of, redact_url, StoreConfig};
pub use error::StoreError;
pub use fair::{fair_shares, weight};
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
pub use sqlite::{SqliteStore, DB_FILE_NAME};
pub use store::Store;
pub use types::{
    Claim, Completion, ExportClaim, InputValue, ItemError, ItemResult, ItemRow, ItemState, Job, JobFilter, JobOutput,
    JobStatus, NewJob, NodeInfo, NodeStatus, OutputSpec, OutputState, StoreHealth, WriteFailure,
};
