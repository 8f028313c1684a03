//! The PostgreSQL implementation of [`Store`], for several nodes sharing one queue (cargo feature
//! `postgres`). Same tables and invariants as SQLite (the crate documentation), schema embedded from
//! `crates/sluice-store/migrations_postgres/`.
//!
//! - **Claims** lock the rows they lease with `FOR UPDATE SKIP LOCKED`, so concurrent claims from
//!   any number of connections and nodes never wait for each other and never return the same item.
//! - **Recording** locks the jobs it touches (`SELECT … FOR UPDATE`, in `pk` order), picks the
//!   still-pending items of the batch and updates them with one set-based `UPDATE … FROM unnest(…)`
//!   guarded by `state = 'pending'`; since every statement that takes items out of `pending` (record,
//!   cancel, timeout) holds its job's row lock, the `done_seq`s and counters stay exact.
//! - **Inputs** go in with one multi-row `INSERT … SELECT FROM unnest(…)` per call; a duplicate key
//!   rolls the whole call back.
//! - **Leases and heartbeats** use the database's clock, so nodes with skewed clocks agree on expiry.
//! - **Work notices** are `NOTIFY sluice_work, '<model>'`, sent in the transaction that adds work (so
//!   they arrive on commit), and received by one `LISTEN`ing connection per store.
//! - A serialization failure or deadlock (SQLSTATE 40001, 40P01) reruns the transaction (three
//!   tries); a dropped connection fails the call (the pool opens a fresh connection for the next
//!   one), and the jobs runtime retries with backoff.

use std::collections::{HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Transaction};

use crate::common::{
    bounded_reason, end_state, finished_count, group_completions, lease_i64, no_inputs, now_ms, prepare_job,
    prepare_rows, prepare_source_job, refuse_inputs, to_i64, HealthCell, ItemRecord, JobRecord, NodeRecord,
    PreparedJob, ResultRecord, Rows, Tally, ACTIVE_STATUSES, END_STATUS, JOB_COLUMNS, NOTICE_CAPACITY, RESULT_COLUMNS,
};
use crate::error::is_retryable;
use crate::fair::FairRounds;
use crate::{
    host_of, redact_url, Claim, Completion, ExportClaim, InputValue, ItemResult, ItemRow, ItemState, Job, JobFilter,
    JobStatus, NewJob, NodeInfo, NodeStatus, Store, StoreError, StoreHealth,
};

/// The schema, embedded from `crates/sluice-store/migrations_postgres/` and applied by
/// [`PgStore::connect`] (under PostgreSQL's advisory lock, so nodes starting together are safe).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations_postgres");

/// The `LISTEN`/`NOTIFY` channel of work notices.
const CHANNEL: &str = "sluice_work";

/// Connections per node.
const POOL_SIZE: u32 = 8;

/// How long a call waits for a connection, and the first connection for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Tries of a transaction that fails with a serialization failure or deadlock.
const TRIES: u32 = 3;

/// The database's clock in unix ms.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The still-pending items among some seqs of a job (`record`, step 1).
const PENDING_SEQS_SQL: &str = "SELECT seq FROM items WHERE job_pk = $1 AND seq = ANY($2) AND state = 'pending'";

/// One set-based UPDATE for a batch of one job (`record`, step 2), each row still guarded by
/// `state = 'pending'`.
const RECORD_ITEMS_SQL: &str = "UPDATE items AS i SET state = u.state, output = u.output, \
     error_code = u.code, error_message = u.message, queue_ms = u.q, model_ms = u.m, done_seq = u.d \
     FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::float8[], \
                 $9::bigint[]) AS u(seq, state, output, code, message, q, m, d) \
     WHERE i.job_pk = $1 AND i.seq = u.seq AND i.state = 'pending'";

/// Inputs of one call, numbered from a base seq, in one statement.
const INSERT_ITEMS_SQL: &str = "INSERT INTO items (job_pk, seq, key, input_kind, input) \
     SELECT $1, $2 + u.ord - 1, u.key, u.kind, u.input \
     FROM unnest($3::text[], $4::text[], $5::bytea[]) WITH ORDINALITY AS u(key, kind, input, ord) \
     ON CONFLICT DO NOTHING";

/// Cancel / timeout: every pending item of a job takes the final state, numbered from a base
/// done_seq in seq order.
const END_ITEMS_SQL: &str = "UPDATE items AS i SET state = $1, error_code = $2, error_message = $3, \
     done_seq = $4 + r.rn - 1 \
     FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS rn FROM items \
           WHERE job_pk = $5 AND state = 'pending') AS r \
     WHERE i.job_pk = $5 AND i.seq = r.seq";

/// `claim`: up to $4 claimable items of one job in seq order, skipping rows another claim holds,
/// leased to a node until a time; returns them. The rows are found through the partial index of
/// pending items and updated by their `ctid` (a TID scan), so that even the generic plan of the
/// prepared statement never scans the job's items.
const CLAIM_SQL: &str = "UPDATE items SET lease_node = $1, lease_until = $2 WHERE ctid = ANY(ARRAY( \
       SELECT ctid FROM items WHERE job_pk = $3 AND state = 'pending' \
       AND (lease_until IS NULL OR lease_until <= $5) ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED)) \
     RETURNING seq, key, input_kind, input";

/// A [`Store`] in a PostgreSQL database shared by every node of an installation.
pub struct PgStore {
    pool: PgPool,
    /// Where the store is, without a password (for messages).
    place: String,
    health: HealthCell,
    /// Work notices from every node, as the listener receives them.
    notices: tokio::sync::broadcast::Sender<String>,
    /// Where the next claim starts its turn between jobs.
    turn: AtomicUsize,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("store", &self.place)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Reruns a transaction body while it fails with a serialization failure or deadlock.
macro_rules! in_tx {
    ($store:expr, |$conn:ident| $body:block) => {{
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut tx = $store.begin().await?;
            let result: Result<_, StoreError> = async {
                let $conn: &mut PgConnection = &mut *tx;
                $body
            }
            .await;
            match $store.finish(tx, result).await {
                Err(e) if tries < TRIES && is_retryable(&e) => {
                    tracing::debug!(error = %e, tries, "transaction conflict; running it again");
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(tries))).await;
                }
                other => break other,
            }
        }
    }};
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?options]`),
    /// brings its schema up to date and starts listening for work notices.
    ///
    /// Errors: [`StoreError::Unreachable`] naming the host and the cause (refused, unknown host,
    /// authentication failed, no such database, timed out) when the first connection fails; never
    /// the password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let place = host_of(url).to_owned();
        let unreachable = |cause: String| StoreError::Unreachable {
            store: place.clone(),
            cause,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("bad store URL {}: {e}", redact_url(url))))?
            .application_name("sluice");
        // One connection first, so that a failure says why (a pool would only time out).
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(e)) => return Err(unreachable(scrub(&e.to_string(), url))),
            Err(_) => return Err(unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| unreachable(scrub(&e.to_string(), url)))?;
        MIGRATOR.run(&pool).await?;
        let notices = tokio::sync::broadcast::channel(NOTICE_CAPACITY).0;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        let listener = tokio::spawn(listen(listen_pool, notices.clone()));
        tracing::info!(store = %redact_url(url), "job store opened (PostgreSQL)");
        Ok(PgStore {
            pool,
            place,
            health: HealthCell::default(),
            notices,
            turn: AtomicUsize::new(0),
            listener,
        })
    }

    /// Closes every connection (after those in use are returned) and stops listening.
    pub async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }

    /// Starts a transaction.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin()
            .await
            .map_err(|e| self.health.note_failure(StoreError::Database(e)))
    }

    /// Ends a transaction: commits it when `result` is a success, rolls it back otherwise, and
    /// notes the outcome in the store's health.
    async fn finish<T>(
        &self,
        tx: Transaction<'static, Postgres>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match result {
            Ok(value) => match tx.commit().await {
                Ok(()) => {
                    self.health.note_success();
                    Ok(value)
                }
                Err(e) => Err(self.note_failure(StoreError::Database(e))),
            },
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::debug!(error = %rollback, "rollback failed; the connection is dropped");
                }
                Err(self.note_failure(e))
            }
        }
    }

    /// Notes a failure in the health, unless a rerun of the transaction may resolve it.
    fn note_failure(&self, err: StoreError) -> StoreError {
        if is_retryable(&err) {
            err
        } else {
            self.health.note_failure(err)
        }
    }

    /// Ends a job that is not terminal yet: its pending items take `state`, the job `status`.
    async fn end_job(&self, job_id: &str, state: ItemState, status: JobStatus) -> Result<Job, StoreError> {
        let (code, message, counter) = end_state(state)?;
        in_tx!(self, |conn| {
            let (pk, job) = lock_job(conn, job_id).await?;
            if job.status.is_terminal() {
                return Ok(job);
            }
            let ended = sqlx::query(END_ITEMS_SQL)
                .bind(state.as_str())
                .bind(code)
                .bind(message)
                .bind(finished_count(&job)?)
                .bind(pk)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            sqlx::query(&format!(
                "UPDATE jobs SET {counter} = {counter} + $1, status = $2, closed = TRUE, finished_at = $3 \
                 WHERE pk = $4"
            ))
            .bind(to_i64(ended)?)
            .bind(status.as_str())
            .bind(now_ms())
            .bind(pk)
            .execute(&mut *conn)
            .await?;
            tracing::info!(job_id = %job_id, %status, items = ended, "job ended");
            Ok(load_job(conn, job_id).await?.1)
        })
    }
}

/// Receives the work notices of every node: one `LISTEN` connection, opened again (with a pause)
/// whenever it drops. After each (re)connection it sends `*`, since notices may have been missed.
async fn listen(pool: PgPool, notices: tokio::sync::broadcast::Sender<String>) {
    let mut failures = 0u32;
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(mut listener) => {
                if failures > 0 {
                    tracing::info!("listening for work notices again");
                }
                failures = 0;
                let _ = notices.send("*".to_owned());
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notice)) => {
                            let _ = notices.send(notice.payload().to_owned());
                        }
                        // The connection dropped and the next call reconnects: notices may be lost.
                        Ok(None) => {
                            let _ = notices.send("*".to_owned());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the work notice connection failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures <= 3 || failures.is_multiple_of(60) {
                    tracing::warn!(error = %e, failures, "cannot listen for work notices; retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A driver's message with the URL's password (if it appears at all) replaced.
fn scrub(message: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => message.replace(p, "***"),
        None => message.to_owned(),
    }
}

/// The job with this id and its internal key, if any.
async fn find_job(conn: &mut PgConnection, job_id: &str, lock: bool) -> Result<Option<(i64, Job)>, StoreError> {
    let sql = if lock {
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1")
    };
    let record: Option<JobRecord> = sqlx::query_as(&sql).bind(job_id).fetch_optional(&mut *conn).await?;
    record.map(JobRecord::into_job).transpose()
}

/// The job with this id and its internal key, or [`StoreError::NotFound`].
async fn load_job(conn: &mut PgConnection, job_id: &str) -> Result<(i64, Job), StoreError> {
    find_job(conn, job_id, false)
        .await?
        .ok_or_else(|| StoreError::NotFound(job_id.to_owned()))
}

/// [`load_job`], locking the job's row until the transaction ends.
async fn lock_job(conn: &mut PgConnection, job_id: &str) -> Result<(i64, Job), StoreError> {
    find_job(conn, job_id, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(job_id.to_owned()))
}

/// The internal key of the job with this id, or [`StoreError::NotFound`].
async fn job_pk(pool: &PgPool, job_id: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT pk FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(job_id.to_owned()))
}

/// Inserts a job row (status `SUBMITTED`, no input) and its tags; returns its key and id.
async fn insert_job(conn: &mut PgConnection, job: &PreparedJob) -> Result<(i64, String), StoreError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let new = &job.new;
    let pk: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (id, model, version, status, open, priority, tags, timeout_ms, source, created_at, output, \
         source_options) VALUES ($1, $2, $3, 'SUBMITTED', $4, $5, $6, $7, $8, $9, $10, $11) RETURNING pk",
    )
    .bind(&id)
    .bind(&new.model)
    .bind(&new.version)
    .bind(new.open)
    .bind(new.priority)
    .bind(&job.tags_json)
    .bind(job.timeout_ms)
    .bind(&new.source)
    .bind(now_ms())
    .bind(&job.output_json)
    .bind(&new.source_options)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO job_tags (job_pk, tag) SELECT $1, t FROM unnest($2::text[]) AS t")
        .bind(pk)
        .bind(&job.tags)
        .execute(&mut *conn)
        .await?;
    Ok((pk, id))
}

/// Appends `rows` to a job (its row locked by the caller) after checking that it takes inputs and
/// stays within `max_inputs`, and announces the work on commit.
async fn insert_inputs(
    conn: &mut PgConnection,
    pk: i64,
    job: &Job,
    rows: &Rows,
    max_inputs: u64,
) -> Result<(), StoreError> {
    refuse_inputs(job, rows.len(), max_inputs)?;
    let base = to_i64(job.total)?;
    let keys: Vec<&str> = rows.iter().map(|(key, _, _)| key.as_str()).collect();
    let kinds: Vec<&str> = rows.iter().map(|(_, kind, _)| *kind).collect();
    let blobs: Vec<&[u8]> = rows.iter().map(|(_, _, blob)| blob.as_slice()).collect();
    let inserted = sqlx::query(INSERT_ITEMS_SQL)
        .bind(pk)
        .bind(base)
        .bind(&keys)
        .bind(&kinds)
        .bind(&blobs)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if inserted != rows.len() as u64 {
        // A key the job had before this call (keys within the call were checked already).
        let existing: HashSet<String> =
            sqlx::query_scalar("SELECT key FROM items WHERE job_pk = $1 AND key = ANY($2) AND seq < $3")
                .bind(pk)
                .bind(&keys)
                .bind(base)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
        let first = keys.iter().find(|key| existing.contains(**key));
        return Err(match first {
            Some(key) => StoreError::DuplicateKey((*key).to_owned()),
            None => StoreError::Corrupt("an insert skipped rows, but no key of the call exists".into()),
        });
    }
    sqlx::query("UPDATE jobs SET total = total + $1 WHERE pk = $2")
        .bind(to_i64(rows.len() as u64)?)
        .bind(pk)
        .execute(&mut *conn)
        .await?;
    notify(conn, &job.model).await
}

/// Sends a work notice, delivered when the transaction commits.
async fn notify(conn: &mut PgConnection, model: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(model)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Makes a closed, active job with no pending item `COMPLETED` (or `FAILED` when it had inputs and
/// none succeeded).
async fn finish_if_done(conn: &mut PgConnection, pk: i64, now: i64) -> Result<(), StoreError> {
    let finished: Option<String> = sqlx::query_scalar(&format!(
        "UPDATE jobs SET status = {END_STATUS}, finished_at = $1 \
         WHERE pk = $2 AND closed AND status IN {ACTIVE_STATUSES} \
           AND total = completed + failed + canceled + timedout \
         RETURNING status"
    ))
    .bind(now)
    .bind(pk)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(status) = finished {
        tracing::info!(job_pk = pk, %status, "job finished");
    }
    Ok(())
}

/// The columns of one job's batch for [`RECORD_ITEMS_SQL`].
#[derive(Default)]
struct RecordBatch {
    seqs: Vec<i64>,
    states: Vec<&'static str>,
    outputs: Vec<Option<String>>,
    codes: Vec<Option<String>>,
    messages: Vec<Option<String>>,
    queue_ms: Vec<f64>,
    model_ms: Vec<f64>,
    done_seqs: Vec<i64>,
}

impl PgStore {
    /// One update of a job's export columns: `sql` binds `$1` and `$2` to `values`, `$3` to the
    /// job id and `$4` to the node; returns whether a row changed.
    async fn export_update(
        &self,
        sql: &str,
        values: (Option<String>, Option<i64>),
        job_id: &str,
        node: &str,
    ) -> Result<bool, StoreError> {
        in_tx!(self, |conn| {
            let changed = sqlx::query(sql)
                .bind(values.0.clone())
                .bind(values.1)
                .bind(job_id)
                .bind(node)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(changed > 0)
        })
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_job(&self, new: NewJob) -> Result<Job, StoreError> {
        let job = prepare_job(new)?;
        let job = in_tx!(self, |conn| {
            let (_, id) = insert_job(conn, &job).await?;
            Ok(load_job(conn, &id).await?.1)
        })?;
        tracing::debug!(job_id = %job.id, model = %job.model, "job created");
        Ok(job)
    }

    async fn create_job_with_inputs(
        &self,
        new: NewJob,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<Job, StoreError> {
        if inputs.is_empty() {
            return Err(no_inputs());
        }
        let job = prepare_job(new)?;
        let rows = prepare_rows(inputs)?;
        let job = in_tx!(self, |conn| {
            let (pk, id) = insert_job(conn, &job).await?;
            let created = load_job(conn, &id).await?.1;
            insert_inputs(conn, pk, &created, &rows, max_inputs).await?;
            sqlx::query("UPDATE jobs SET closed = TRUE WHERE pk = $1")
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            finish_if_done(conn, pk, now_ms()).await?;
            Ok(load_job(conn, &id).await?.1)
        })?;
        tracing::debug!(job_id = %job.id, model = %job.model, total = job.total, "job created with its inputs");
        Ok(job)
    }

    async fn add_inputs_within(
        &self,
        job_id: &str,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<u64, StoreError> {
        let rows = prepare_rows(inputs)?;
        in_tx!(self, |conn| {
            let (pk, job) = lock_job(conn, job_id).await?;
            insert_inputs(conn, pk, &job, &rows, max_inputs).await
        })?;
        tracing::debug!(job_id = %job_id, added = rows.len(), "inputs added");
        Ok(rows.len() as u64)
    }

    async fn close_job(&self, job_id: &str) -> Result<Job, StoreError> {
        in_tx!(self, |conn| {
            let (pk, job) = lock_job(conn, job_id).await?;
            if job.closed || job.status.is_terminal() {
                return Ok(job);
            }
            sqlx::query("UPDATE jobs SET closed = TRUE WHERE pk = $1")
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            finish_if_done(conn, pk, now_ms()).await?;
            let job = load_job(conn, job_id).await?.1;
            tracing::debug!(job_id = %job_id, total = job.total, status = %job.status, "job closed");
            Ok(job)
        })
    }

    async fn create_source_job(&self, new: NewJob, node: &str, lease_ms: u64) -> Result<Job, StoreError> {
        let job = prepare_source_job(new)?;
        let lease = lease_i64(lease_ms);
        let job = in_tx!(self, |conn| {
            let (pk, id) = insert_job(conn, &job).await?;
            sqlx::query(&format!(
                "UPDATE jobs SET ingest_node = $1, ingest_until = {DB_NOW_MS} + $2 WHERE pk = $3"
            ))
            .bind(node)
            .bind(lease)
            .bind(pk)
            .execute(&mut *conn)
            .await?;
            Ok(load_job(conn, &id).await?.1)
        })?;
        tracing::debug!(job_id = %job.id, model = %job.model, node, "source job created");
        Ok(job)
    }

    async fn claim_ingest(&self, job_id: &str, node: &str, lease_ms: u64) -> Result<Option<Job>, StoreError> {
        let lease = lease_i64(lease_ms);
        in_tx!(self, |conn| {
            // One conditional UPDATE: a concurrent claim waits for this row's lock, then finds
            // the claim taken and changes nothing.
            let claimed: Option<i64> = sqlx::query_scalar(&format!(
                "UPDATE jobs SET ingest_node = $1, ingest_until = {DB_NOW_MS} + $2 \
                 WHERE id = $3 AND status IN {ACTIVE_STATUSES} AND NOT closed AND ingest_node IS NOT NULL \
                   AND (ingest_node = $1 OR ingest_until IS NULL OR ingest_until <= {DB_NOW_MS}) \
                 RETURNING pk"
            ))
            .bind(node)
            .bind(lease)
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?;
            let job = load_job(conn, job_id).await?.1;
            Ok(claimed.map(|_| job))
        })
    }

    async fn ingests_to_resume(&self, held_by: Option<&str>) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE status IN {ACTIVE_STATUSES} AND NOT closed AND ingest_node IS NOT NULL \
               AND (ingest_until IS NULL OR ingest_until <= {DB_NOW_MS} OR ingest_node = $1) ORDER BY pk"
        ))
        .bind(held_by)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn add_ingested(
        &self,
        job_id: &str,
        node: &str,
        at: u64,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<bool, StoreError> {
        let rows = prepare_rows(inputs)?;
        let added = in_tx!(self, |conn| {
            let (pk, job) = lock_job(conn, job_id).await?;
            let owner: Option<String> = sqlx::query_scalar("SELECT ingest_node FROM jobs WHERE pk = $1")
                .bind(pk)
                .fetch_one(&mut *conn)
                .await?;
            if owner.as_deref() != Some(node) || job.total != at {
                return Ok(false);
            }
            insert_inputs(conn, pk, &job, &rows, max_inputs).await?;
            Ok(true)
        })?;
        if added {
            tracing::debug!(job_id = %job_id, added = rows.len(), at, "source inputs added");
        } else {
            tracing::debug!(job_id = %job_id, node, at, "source inputs refused: not this node's ingestion");
        }
        Ok(added)
    }

    async fn finish_ingest(&self, job_id: &str, node: &str, error: Option<&str>) -> Result<Option<Job>, StoreError> {
        let error = error.map(bounded_reason);
        let job = in_tx!(self, |conn| {
            let (pk, job) = lock_job(conn, job_id).await?;
            if job.closed || job.status.is_terminal() {
                return Ok(Some(job));
            }
            let owner: Option<String> = sqlx::query_scalar("SELECT ingest_node FROM jobs WHERE pk = $1")
                .bind(pk)
                .fetch_one(&mut *conn)
                .await?;
            if owner.as_deref() != Some(node) {
                return Ok(None);
            }
            sqlx::query("UPDATE jobs SET closed = TRUE, error = $1, ingest_until = NULL WHERE pk = $2")
                .bind(&error)
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            finish_if_done(conn, pk, now_ms()).await?;
            Ok(Some(load_job(conn, job_id).await?.1))
        })?;
        if let Some(job) = &job {
            tracing::debug!(job_id = %job_id, total = job.total, status = %job.status, error = ?job.error, "source job settled");
        }
        Ok(job)
    }

    async fn release_ingest(&self, job_id: &str, node: &str) -> Result<bool, StoreError> {
        in_tx!(self, |conn| {
            let released = sqlx::query(&format!(
                "UPDATE jobs SET ingest_until = 0 WHERE id = $1 AND ingest_node = $2 AND NOT closed \
                 AND status IN {ACTIVE_STATUSES}"
            ))
            .bind(job_id)
            .bind(node)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(released > 0)
        })
    }

    async fn claim_export(&self, job_id: &str, node: &str, lease_ms: u64) -> Result<Option<ExportClaim>, StoreError> {
        let lease = lease_i64(lease_ms);
        in_tx!(self, |conn| {
            // One conditional UPDATE, as for the ingest claim: a concurrent claim waits for the
            // row's lock, then finds the claim taken.
            let claimed: Option<(Option<String>,)> = sqlx::query_as(&format!(
                "UPDATE jobs SET export_node = $1, export_until = {DB_NOW_MS} + $2 \
                 WHERE id = $3 AND output IS NOT NULL AND export_state IS NULL \
                   AND (export_node IS NULL OR export_node = $1 OR export_until IS NULL \
                        OR export_until <= {DB_NOW_MS}) \
                 RETURNING export_checkpoint"
            ))
            .bind(node)
            .bind(lease)
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?;
            let job = load_job(conn, job_id).await?.1;
            Ok(claimed.map(|(checkpoint,)| ExportClaim { job, checkpoint }))
        })
    }

    async fn exports_to_resume(&self, held_by: Option<&str>) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE output IS NOT NULL AND export_state IS NULL \
               AND (export_node IS NULL OR export_until IS NULL OR export_until <= {DB_NOW_MS} \
                    OR export_node = $1) ORDER BY pk"
        ))
        .bind(held_by)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn save_export(&self, job_id: &str, node: &str, checkpoint: &str, rows: u64) -> Result<bool, StoreError> {
        let rows = to_i64(rows)?;
        self.export_update(
            "UPDATE jobs SET export_checkpoint = $1, export_rows = $2 \
             WHERE id = $3 AND export_node = $4 AND export_state IS NULL",
            (Some(checkpoint.to_owned()), Some(rows)),
            job_id,
            node,
        )
        .await
    }

    async fn finish_export(&self, job_id: &str, node: &str, error: Option<&str>) -> Result<bool, StoreError> {
        let error = error.map(bounded_reason);
        let state = if error.is_some() { "failed" } else { "written" };
        self.export_update(
            &format!(
                "UPDATE jobs SET export_state = '{state}', export_error = $1, export_until = NULL \
                 WHERE $2::BIGINT IS NULL AND id = $3 AND export_node = $4 AND export_state IS NULL"
            ),
            (error, None),
            job_id,
            node,
        )
        .await
    }

    async fn release_export(&self, job_id: &str, node: &str) -> Result<bool, StoreError> {
        self.export_update(
            "UPDATE jobs SET export_until = 0 \
             WHERE $1::TEXT IS NULL AND $2::BIGINT IS NULL AND id = $3 AND export_node = $4 \
               AND export_state IS NULL",
            (None, None),
            job_id,
            node,
        )
        .await
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(find_job(&mut conn, job_id, false).await?.map(|(_, job)| job))
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<(Vec<Job>, Option<String>), StoreError> {
        let before = match &filter.cursor {
            None => None,
            Some(cursor) => Some(
                cursor
                    .parse::<i64>()
                    .map_err(|_| StoreError::Invalid(format!("bad job list cursor {cursor:?}")))?,
            ),
        };
        let limit = filter.effective_limit();
        let records: Vec<JobRecord> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs \
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR model = $2) \
               AND ($3::text IS NULL OR pk IN (SELECT job_pk FROM job_tags WHERE tag = $3)) \
               AND ($4::bigint IS NULL OR pk < $4) \
             ORDER BY pk DESC LIMIT $5"
        ))
        .bind(filter.status.map(JobStatus::as_str))
        .bind(&filter.model)
        .bind(&filter.tag)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut jobs = records
            .into_iter()
            .map(JobRecord::into_job)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|(pk, _)| pk.to_string())
        } else {
            None
        };
        Ok((jobs.into_iter().map(|(_, job)| job).collect(), next))
    }

    async fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let records: Vec<JobRecord> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN {ACTIVE_STATUSES} ORDER BY priority DESC, pk ASC"
        ))
        .fetch_all(&self.pool)
        .await?;
        records.into_iter().map(|r| r.into_job().map(|(_, job)| job)).collect()
    }

    async fn pending_items(
        &self,
        job_id: &str,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ItemRow>, StoreError> {
        let pk = job_pk(&self.pool, job_id).await?;
        let records: Vec<ItemRecord> = sqlx::query_as(
            "SELECT seq, key, input_kind, input FROM items \
             WHERE job_pk = $1 AND state = 'pending' AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(pk)
        .bind(after_seq.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        records.into_iter().map(|r| r.into_item(job_id)).collect()
    }

    async fn record(&self, completions: Vec<Completion>) -> Result<u64, StoreError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let given = completions.len();
        let groups = group_completions(completions)?;
        let ids: Vec<&str> = groups.iter().map(|(id, _)| id.as_str()).collect();
        let recorded = in_tx!(self, |conn| {
            // Lock the jobs in one order (by pk), so that concurrent records cannot deadlock.
            let records: Vec<JobRecord> = sqlx::query_as(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1) ORDER BY pk FOR UPDATE"
            ))
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
            let mut jobs: HashMap<String, (i64, Job)> = HashMap::with_capacity(records.len());
            for record in records {
                let (pk, job) = record.into_job()?;
                jobs.insert(job.id.clone(), (pk, job));
            }
            let now = now_ms();
            let mut recorded = 0u64;
            for (job_id, group) in &groups {
                let Some((pk, job)) = jobs.get(job_id.as_str()) else {
                    tracing::warn!(
                        job_id = %job_id,
                        count = group.len(),
                        "completions for an unknown job are ignored"
                    );
                    continue;
                };
                if job.pending == 0 {
                    continue;
                }
                let seqs: Vec<i64> = group.iter().map(|p| p.completion.seq).collect();
                let mut pending: HashSet<i64> = sqlx::query_scalar(PENDING_SEQS_SQL)
                    .bind(pk)
                    .bind(&seqs)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .collect();
                // The first completion of an item in the call wins, each with the next done_seq.
                let mut next_done_seq = finished_count(job)?;
                let mut tally = Tally::default();
                let mut batch = RecordBatch::default();
                for p in group {
                    let c = &p.completion;
                    if !pending.remove(&c.seq) {
                        continue;
                    }
                    let (q, m) = tally.add(c);
                    batch.seqs.push(c.seq);
                    batch.states.push(c.state.as_str());
                    batch.outputs.push(p.output.clone());
                    batch.codes.push(c.error_code.clone());
                    batch.messages.push(c.error_message.clone());
                    batch.queue_ms.push(q);
                    batch.model_ms.push(m);
                    batch.done_seqs.push(next_done_seq);
                    next_done_seq += 1;
                }
                if batch.seqs.is_empty() {
                    continue;
                }
                let expected = batch.seqs.len() as u64;
                let changed = sqlx::query(RECORD_ITEMS_SQL)
                    .bind(pk)
                    .bind(&batch.seqs)
                    .bind(&batch.states)
                    .bind(&batch.outputs)
                    .bind(&batch.codes)
                    .bind(&batch.messages)
                    .bind(&batch.queue_ms)
                    .bind(&batch.model_ms)
                    .bind(&batch.done_seqs)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if changed != expected {
                    // The job's row lock rules this out; rolling back keeps the counters exact if not.
                    return Err(StoreError::Corrupt(format!(
                        "job {job_id}: {changed} items updated where {expected} were pending"
                    )));
                }
                sqlx::query(
                    "UPDATE jobs SET completed = completed + $1, failed = failed + $2, \
                     queue_ms_total = queue_ms_total + $3, model_ms_total = model_ms_total + $4, \
                     started_at = COALESCE(started_at, $5), \
                     status = CASE WHEN status = 'SUBMITTED' THEN 'IN_PROGRESS' ELSE status END \
                     WHERE pk = $6",
                )
                .bind(tally.completed)
                .bind(tally.failed)
                .bind(tally.queue_ms)
                .bind(tally.model_ms)
                .bind(now)
                .bind(pk)
                .execute(&mut *conn)
                .await?;
                finish_if_done(conn, *pk, now).await?;
                recorded += expected;
            }
            Ok(recorded)
        })?;
        tracing::trace!(given, recorded, "completions recorded");
        Ok(recorded)
    }

    async fn mark_started(&self, job_id: &str) -> Result<(), StoreError> {
        in_tx!(self, |conn| {
            let changed = sqlx::query(
                "UPDATE jobs SET status = 'IN_PROGRESS', started_at = COALESCE(started_at, $1) \
                 WHERE id = $2 AND status = 'SUBMITTED'",
            )
            .bind(now_ms())
            .bind(job_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if changed == 0 {
                // Either past SUBMITTED already (fine) or unknown.
                load_job(conn, job_id).await?;
            }
            Ok(())
        })
    }

    async fn results(
        &self,
        job_id: &str,
        after_done_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ItemResult>, StoreError> {
        let pk = job_pk(&self.pool, job_id).await?;
        let records: Vec<ResultRecord> = sqlx::query_as(&format!(
            "SELECT {RESULT_COLUMNS} FROM items WHERE job_pk = $1 AND done_seq > $2 ORDER BY done_seq LIMIT $3"
        ))
        .bind(pk)
        .bind(after_done_seq.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        records.into_iter().map(|r| r.into_result(job_id)).collect()
    }

    async fn result(&self, job_id: &str, key: &str) -> Result<Option<ItemResult>, StoreError> {
        let pk = job_pk(&self.pool, job_id).await?;
        let record: Option<ResultRecord> = sqlx::query_as(&format!(
            "SELECT {RESULT_COLUMNS} FROM items WHERE job_pk = $1 AND key = $2"
        ))
        .bind(pk)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        record.map(|r| r.into_result(job_id)).transpose()
    }

    async fn cancel_job(&self, job_id: &str) -> Result<Job, StoreError> {
        self.end_job(job_id, ItemState::Canceled, JobStatus::Canceled).await
    }

    async fn timeout_job(&self, job_id: &str) -> Result<Job, StoreError> {
        self.end_job(job_id, ItemState::Timedout, JobStatus::Timedout).await
    }

    async fn expired_jobs(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE status IN {ACTIVE_STATUSES} AND timeout_ms IS NOT NULL \
             AND created_at + timeout_ms < $1 ORDER BY pk"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn claim(&self, claim: Claim) -> Result<Vec<ItemRow>, StoreError> {
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let offset = self.turn.fetch_add(1, Ordering::Relaxed);
        let lease_ms = to_i64(claim.lease_ms).unwrap_or(i64::MAX);
        let (claimed, started) = in_tx!(self, |conn| {
            let now: i64 = sqlx::query_scalar(&format!("SELECT {DB_NOW_MS}"))
                .fetch_one(&mut *conn)
                .await?;
            let until = now.saturating_add(lease_ms);
            let jobs: Vec<(i64, String, i32, String)> = sqlx::query_as(&format!(
                "SELECT pk, id, priority, status FROM jobs WHERE model = $1 AND status IN {ACTIVE_STATUSES} \
                 ORDER BY priority DESC, pk"
            ))
            .bind(&claim.model)
            .fetch_all(&mut *conn)
            .await?;
            let priorities: Vec<i32> = jobs.iter().map(|(_, _, priority, _)| *priority).collect();
            let mut rounds = FairRounds::new(&priorities, claim.limit, offset);
            let mut claimed: Vec<ItemRow> = Vec::new();
            let mut started: Vec<i64> = Vec::new();
            loop {
                let shares = rounds.round();
                if shares.is_empty() {
                    break;
                }
                for (i, share) in shares {
                    let Some((pk, id, _, status)) = jobs.get(i) else {
                        continue;
                    };
                    let records: Vec<ItemRecord> = sqlx::query_as(CLAIM_SQL)
                        .bind(&claim.node)
                        .bind(until)
                        .bind(pk)
                        .bind(i64::from(share))
                        .bind(now)
                        .fetch_all(&mut *conn)
                        .await?;
                    rounds.took(i, share, records.len());
                    if !records.is_empty() && status == "SUBMITTED" && !started.contains(pk) {
                        started.push(*pk);
                    }
                    let mut got = records
                        .into_iter()
                        .map(|r| r.into_item(id))
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    got.sort_by_key(|r| r.seq);
                    claimed.extend(got);
                }
            }
            Ok((claimed, started))
        })?;
        // Apart from the claim, so that a claim never waits for a job row that `record` holds.
        for pk in started {
            sqlx::query(
                "UPDATE jobs SET status = 'IN_PROGRESS', started_at = COALESCE(started_at, $1) \
                 WHERE pk = $2 AND status = 'SUBMITTED'",
            )
            .bind(now_ms())
            .bind(pk)
            .execute(&self.pool)
            .await?;
        }
        Ok(claimed)
    }

    async fn renew_leases(&self, node: &str, lease_ms: u64) -> Result<u64, StoreError> {
        let lease_ms = to_i64(lease_ms).unwrap_or(i64::MAX);
        in_tx!(self, |conn| {
            Ok(sqlx::query(&format!(
                "UPDATE items SET lease_until = {DB_NOW_MS} + $1 \
                 WHERE lease_node = $2 AND state = 'pending' AND lease_node IS NOT NULL"
            ))
            .bind(lease_ms)
            .bind(node)
            .execute(&mut *conn)
            .await?
            .rows_affected())
        })
    }

    async fn release_leases(&self, node: &str) -> Result<u64, StoreError> {
        let released = in_tx!(self, |conn| {
            let released = sqlx::query(
                "UPDATE items SET lease_node = NULL, lease_until = NULL \
                 WHERE lease_node = $1 AND state = 'pending' AND lease_node IS NOT NULL",
            )
            .bind(node)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if released > 0 {
                notify(conn, "*").await?;
            }
            Ok(released)
        })?;
        if released > 0 {
            tracing::debug!(node, released, "leases released");
        }
        Ok(released)
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let models =
            serde_json::to_string(&node.models).map_err(|e| StoreError::Invalid(format!("node models: {e}")))?;
        in_tx!(self, |conn| {
            sqlx::query(&format!(
                "INSERT INTO nodes (id, role, models, address, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4, $5, {DB_NOW_MS}) ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
                 models = excluded.models, address = excluded.address, started_at = excluded.started_at, \
                 heartbeat_at = excluded.heartbeat_at"
            ))
            .bind(&node.id)
            .bind(&node.role)
            .bind(&models)
            .bind(&node.address)
            .bind(node.started_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }

    async fn remove_node(&self, node_id: &str) -> Result<(), StoreError> {
        in_tx!(self, |conn| {
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(node_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }

    async fn nodes(&self, max_age_ms: u64) -> Result<Vec<NodeStatus>, StoreError> {
        let records: Vec<NodeRecord> = sqlx::query_as(&format!(
            "SELECT n.id, n.role, n.models, n.address, n.started_at, n.heartbeat_at, \
             (SELECT COUNT(*) FROM items WHERE lease_node = n.id AND state = 'pending' \
              AND lease_node IS NOT NULL AND lease_until > {DB_NOW_MS}) AS leases \
             FROM nodes AS n WHERE n.heartbeat_at >= {DB_NOW_MS} - $1 ORDER BY n.id"
        ))
        .bind(to_i64(max_age_ms).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        records.into_iter().map(NodeRecord::into_status).collect()
    }

    fn work_notices(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.notices.subscribe()
    }

    fn health(&self) -> StoreHealth {
        self.health.get()
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        in_tx!(self, |conn| {
            sqlx::query(
                "INSERT INTO write_probe (id, at) VALUES (TRUE, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )
            .bind(now_ms())
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn messages_lose_the_password() {
        let url = "postgres://sluice:hunter2@db:5432/jobs";
        assert_eq!(
            scrub("password authentication failed (hunter2)", url),
            "password authentication failed (***)"
        );
        assert_eq!(scrub("refused", "postgres://u@h/db"), "refused");
    }
}
