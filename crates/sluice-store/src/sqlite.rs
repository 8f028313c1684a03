//! The SQLite implementation of [`Store`]: one database file, `sluice.db`, in the server's data
//! directory. It exists so that a single-node server needs no database service, while keeping every
//! guarantee of the trait across `kill -9` (see the crate documentation for the argument).
//!
//! All writes go through one connection (a pool of size 1) and start with `BEGIN IMMEDIATE`, so
//! in-process writers queue instead of failing with `SQLITE_BUSY`, and a second process would wait
//! on the busy timeout rather than break a transaction half-way. Reads use a separate pool; in WAL
//! mode they never block the writer nor wait for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor as _, Sqlite, SqlitePool};

use crate::common::{
    bounded_reason, end_state, finished_count, group_completions, lease_i64, no_inputs, now_ms, prepare_job,
    prepare_rows, prepare_source_job, refuse_inputs, to_i64, HealthCell, ItemRecord, JobRecord, NodeRecord,
    PreparedJob, ResultRecord, Rows, Tally, ACTIVE_STATUSES, END_STATUS, JOB_COLUMNS, NOTICE_CAPACITY, RESULT_COLUMNS,
};
use crate::fair::FairRounds;
use crate::{
    Claim, Completion, ExportClaim, InputValue, ItemResult, ItemRow, ItemState, Job, JobFilter, JobStatus, NewJob,
    NodeInfo, NodeStatus, Store, StoreError, StoreHealth,
};

/// The schema, embedded from `crates/sluice-store/migrations/` and applied by [`SqliteStore::open`].
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Name of the database file inside the data directory.
pub const DB_FILE_NAME: &str = "sluice.db";

/// How long a statement waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the read pool.
const READ_CONNECTIONS: u32 = 4;

/// Free space [`Store::probe_write`] asks for before it calls the store writable again.
const PROBE_HEADROOM: usize = 1 << 20;

/// The scratch file [`Store::probe_write`] writes beside the database, and removes.
const PROBE_FILE_NAME: &str = ".sluice-write-probe";

/// Rows per multi-row `INSERT` in [`Store::add_inputs`] (5 bound values each).
const INSERT_ROWS_PER_STATEMENT: usize = 100;

/// The feeder's page: pending items after a seq, through the partial index of pending items.
const PENDING_ITEMS_SQL: &str = "SELECT seq, key, input_kind, input FROM items INDEXED BY items_pending \
     WHERE job_pk = ?1 AND state = 'pending' AND seq > ?2 ORDER BY seq LIMIT ?3";

/// `record`, step 1: the rowids of the given seqs (a JSON array) that are still pending. `CROSS JOIN`
/// keeps the batch as the outer loop, so each item is one index probe.
const PENDING_ROWIDS_SQL: &str = "SELECT items.seq, items.rowid FROM json_each(?1) AS c \
     CROSS JOIN items INDEXED BY items_pending \
     ON items.job_pk = ?2 AND items.seq = c.value AND items.state = 'pending'";

/// `record`, step 2: one UPDATE for the batch, a JSON array of
/// `[rowid, state, output, error_code, error_message, queue_ms, model_ms, done_seq]`, each row still
/// guarded by `state = 'pending'`.
const RECORD_ITEMS_SQL: &str = "UPDATE items SET state = c.value ->> 1, output = c.value ->> 2, \
     error_code = c.value ->> 3, error_message = c.value ->> 4, queue_ms = c.value ->> 5, \
     model_ms = c.value ->> 6, done_seq = c.value ->> 7 \
     FROM json_each(?1) AS c WHERE items.rowid = c.value ->> 0 AND items.state = 'pending'";

/// The results page: finished items after a done_seq, through the partial index of finished items.
const RESULTS_SQL: &str = "SELECT seq, key, state, output, error_code, error_message, queue_ms, model_ms, done_seq \
     FROM items INDEXED BY items_done WHERE job_pk = ?1 AND done_seq > ?2 ORDER BY done_seq LIMIT ?3";

/// Cancel / timeout: every pending item of a job takes the final state, numbered from a base
/// done_seq in seq order.
const END_ITEMS_SQL: &str = "UPDATE items SET state = ?1, error_code = ?2, error_message = ?3, \
     done_seq = ?4 + r.rn - 1 \
     FROM (SELECT rowid AS rid, row_number() OVER (ORDER BY seq) AS rn \
           FROM items INDEXED BY items_pending WHERE job_pk = ?5 AND state = 'pending') AS r \
     WHERE items.rowid = r.rid";

/// `claim`: up to ?4 claimable items of one job (pending, with no lease or an expired one) in seq
/// order, leased to a node until a time; returns them.
const CLAIM_SQL: &str = "UPDATE items SET lease_node = ?1, lease_until = ?2 WHERE rowid IN \
     (SELECT rowid FROM items INDEXED BY items_pending WHERE job_pk = ?3 AND state = 'pending' \
      AND (lease_until IS NULL OR lease_until <= ?5) ORDER BY seq LIMIT ?4) \
     RETURNING seq, key, input_kind, input";

/// A [`Store`] kept in a SQLite database file (WAL mode, `synchronous=NORMAL`).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    health: HealthCell,
    /// `PRAGMA max_page_count` applied to every writer connection; 0: SQLite's default. Only a
    /// test sets it (`set_max_page_count`, feature `test-util`), to make SQLite report a full disk.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    page_limit: Arc<AtomicU64>,
    /// Work notices of this process (see [`Store::work_notices`]).
    notices: tokio::sync::broadcast::Sender<String>,
    /// Where the next claim starts its turn between jobs (see [`fair_shares`]).
    turn: Arc<AtomicUsize>,
}

/// A write transaction (`BEGIN IMMEDIATE`) on the writer connection, ended by
/// [`SqliteStore::finish`].
///
/// sqlx's own `Transaction` is not used for writes: when SQLite rolls a transaction back by itself
/// (a full disk failing the COMMIT), sqlx's rollback fails and it keeps counting the transaction as
/// open, so the pooled connection then refuses every `BEGIN` ("attempted to call begin_with at
/// non-zero transaction depth") until the process restarts. Here a failed write rolls back
/// explicitly, and a connection whose rollback fails, or whose transaction is abandoned (the
/// calling future dropped half-way), is closed instead of going back to the pool (closing rolls
/// back whatever is open); the pool opens a fresh one.
struct WriteTx {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `data_dir/sluice.db`, creating `data_dir` too, and brings its schema
    /// up to date. Opening the same directory after a crash resumes every job where it stood.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE_NAME);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("cache_size", "-32768");
        let page_limit = Arc::new(AtomicU64::new(0));
        let limit = page_limit.clone();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(move |conn, _| {
                let pages = limit.load(Ordering::SeqCst);
                Box::pin(async move {
                    if pages > 0 {
                        conn.execute(format!("PRAGMA max_page_count = {pages}").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options)
            .await?;
        tracing::info!(path = %path.display(), "job store opened");
        Ok(SqliteStore {
            writer,
            reader,
            path,
            health: HealthCell::default(),
            page_limit,
            notices: tokio::sync::broadcast::channel(NOTICE_CAPACITY).0,
            turn: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Test hook: sets `PRAGMA max_page_count` on the writer connection (and on any that replaces
    /// it), so that a write needing more pages fails as on a full disk (`SQLITE_FULL`); `None`
    /// lifts the limit. SQLite never sets it below the current size, so `Some(1)` means "no more
    /// pages than now". Returns the limit in force.
    #[cfg(feature = "test-util")]
    pub async fn set_max_page_count(&self, pages: Option<u64>) -> Result<u64, StoreError> {
        // SQLite's largest page count.
        let pages = pages.unwrap_or(4_294_967_294);
        let mut conn = self.writer.acquire().await?;
        let set: i64 = sqlx::query_scalar(&format!("PRAGMA max_page_count = {pages}"))
            .fetch_one(&mut *conn)
            .await?;
        let set = u64::try_from(set).unwrap_or(0);
        self.page_limit.store(set, Ordering::SeqCst);
        Ok(set)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes every connection, waiting for those in use to be returned. Not needed for durability
    /// (each committed transaction is in the WAL already); it lets a test or a clean shutdown release
    /// the file.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`); end it with [`SqliteStore::finish`].
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let mut conn = match self.writer.acquire().await {
            Ok(conn) => conn,
            Err(e) => return Err(self.note_failure(e.into())),
        };
        match conn.execute("BEGIN IMMEDIATE").await {
            Ok(_) => Ok(WriteTx { conn, open: true }),
            Err(e) => {
                conn.close_on_drop();
                Err(self.note_failure(e.into()))
            }
        }
    }

    /// Ends a write transaction: commits it when `result` is a success, rolls it back otherwise or
    /// when the commit fails, and notes the outcome in the store's health.
    async fn finish<T>(&self, mut tx: WriteTx, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let err = match result {
            Ok(value) => match tx.conn.execute("COMMIT").await {
                Ok(_) => {
                    tx.open = false;
                    self.note_success();
                    return Ok(value);
                }
                Err(e) => StoreError::from(e),
            },
            Err(e) => e,
        };
        match tx.conn.execute("ROLLBACK").await {
            Ok(_) => tx.open = false,
            // SQLite may have rolled back already (a full disk at COMMIT); whatever the state, the
            // connection is closed when `tx` drops and a fresh one replaces it.
            Err(e) => tracing::warn!(error = %e, "rollback failed; the writer connection is replaced"),
        }
        Err(self.note_failure(err))
    }

    /// Marks the store writable after a write committed.
    fn note_success(&self) {
        self.health.note_success();
    }

    /// Marks the store not writable when `err` is a failure of the database; returns `err`.
    fn note_failure(&self, err: StoreError) -> StoreError {
        self.health.note_failure(err)
    }

    /// Appends `rows` to a job inside the caller's transaction, after checking that it takes inputs
    /// and stays within `max_inputs`.
    async fn insert_inputs(
        conn: &mut SqliteConnection,
        pk: i64,
        job: &Job,
        rows: &Rows,
        max_inputs: u64,
    ) -> Result<(), StoreError> {
        refuse_inputs(job, rows.len(), max_inputs)?;
        let added = to_i64(rows.len() as u64)?;
        let mut seq = to_i64(job.total)?;
        for chunk in rows.chunks(INSERT_ROWS_PER_STATEMENT) {
            let mut sql = String::from("INSERT INTO items (job_pk, seq, key, input_kind, input) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,?)");
            }
            let mut query = sqlx::query(&sql);
            for (key, kind, blob) in chunk {
                query = query.bind(pk).bind(seq).bind(key).bind(*kind).bind(blob);
                seq += 1;
            }
            if let Err(err) = query.execute(&mut *conn).await {
                if is_unique_violation(&err) {
                    return Err(StoreError::DuplicateKey(existing_key(conn, pk, chunk).await?));
                }
                return Err(err.into());
            }
        }
        sqlx::query("UPDATE jobs SET total = total + ?1 WHERE pk = ?2")
            .bind(added)
            .bind(pk)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Ends a job that is not terminal yet: its pending items take `state`, the job `status`.
    async fn end_job(&self, job_id: &str, state: ItemState, status: JobStatus) -> Result<Job, StoreError> {
        let (code, message, counter) = end_state(state)?;
        let mut tx = self.begin_write().await?;
        let result: Result<Job, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, job) = load_job(conn, job_id).await?;
            if job.status.is_terminal() {
                return Ok(job);
            }
            let base = finished_count(&job)?;
            let now = now_ms();
            let ended = sqlx::query(END_ITEMS_SQL)
                .bind(state.as_str())
                .bind(code)
                .bind(message)
                .bind(base)
                .bind(pk)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            sqlx::query(&format!(
                "UPDATE jobs SET {counter} = {counter} + ?1, status = ?2, closed = 1, finished_at = ?3 WHERE pk = ?4"
            ))
            .bind(to_i64(ended)?)
            .bind(status.as_str())
            .bind(now)
            .bind(pk)
            .execute(&mut *conn)
            .await?;
            tracing::info!(job_id = %job_id, %status, items = ended, "job ended");
            Ok(load_job(conn, job_id).await?.1)
        }
        .await;
        self.finish(tx, result).await
    }
}

impl SqliteStore {
    /// One update of a job's export columns: `sql` binds `?1` and `?2` to `values`, `?3` to the
    /// job id and `?4` to the node; returns whether a row changed.
    async fn export_update(
        &self,
        sql: &str,
        values: (Option<String>, Option<i64>),
        job_id: &str,
        node: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<u64, StoreError> = async {
            Ok(sqlx::query(sql)
                .bind(values.0)
                .bind(values.1)
                .bind(job_id)
                .bind(node)
                .execute(&mut *tx.conn)
                .await?
                .rows_affected())
        }
        .await;
        Ok(self.finish(tx, result).await? > 0)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_job(&self, new: NewJob) -> Result<Job, StoreError> {
        let job = prepare_job(new)?;
        let mut tx = self.begin_write().await?;
        let result: Result<Job, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (_, id) = insert_job(conn, &job).await?;
            Ok(load_job(conn, &id).await?.1)
        }
        .await;
        let job = self.finish(tx, result).await?;
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
        let mut tx = self.begin_write().await?;
        let result: Result<Job, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, id) = insert_job(conn, &job).await?;
            let created = load_job(conn, &id).await?.1;
            Self::insert_inputs(conn, pk, &created, &rows, max_inputs).await?;
            sqlx::query("UPDATE jobs SET closed = 1 WHERE pk = ?1")
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            finish_if_done(conn, pk, now_ms()).await?;
            Ok(load_job(conn, &id).await?.1)
        }
        .await;
        let job = self.finish(tx, result).await?;
        tracing::debug!(job_id = %job.id, model = %job.model, total = job.total, "job created with its inputs");
        let _ = self.notices.send(job.model.clone());
        Ok(job)
    }

    async fn add_inputs_within(
        &self,
        job_id: &str,
        inputs: Vec<(String, InputValue)>,
        max_inputs: u64,
    ) -> Result<u64, StoreError> {
        let rows = prepare_rows(inputs)?;
        let mut tx = self.begin_write().await?;
        let result: Result<String, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, job) = load_job(conn, job_id).await?;
            Self::insert_inputs(conn, pk, &job, &rows, max_inputs).await?;
            Ok(job.model)
        }
        .await;
        let model = self.finish(tx, result).await?;
        tracing::debug!(job_id = %job_id, added = rows.len(), "inputs added");
        let _ = self.notices.send(model);
        Ok(rows.len() as u64)
    }

    async fn close_job(&self, job_id: &str) -> Result<Job, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<Job, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, job) = load_job(conn, job_id).await?;
            if job.closed || job.status.is_terminal() {
                return Ok(job);
            }
            sqlx::query("UPDATE jobs SET closed = 1 WHERE pk = ?1")
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            finish_if_done(conn, pk, now_ms()).await?;
            let job = load_job(conn, job_id).await?.1;
            tracing::debug!(job_id = %job_id, total = job.total, status = %job.status, "job closed");
            Ok(job)
        }
        .await;
        self.finish(tx, result).await
    }

    async fn create_source_job(&self, new: NewJob, node: &str, lease_ms: u64) -> Result<Job, StoreError> {
        let job = prepare_source_job(new)?;
        let mut tx = self.begin_write().await?;
        let result: Result<Job, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, id) = insert_job(conn, &job).await?;
            sqlx::query("UPDATE jobs SET ingest_node = ?1, ingest_until = ?2 WHERE pk = ?3")
                .bind(node)
                .bind(now_ms().saturating_add(lease_i64(lease_ms)))
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            Ok(load_job(conn, &id).await?.1)
        }
        .await;
        let job = self.finish(tx, result).await?;
        tracing::debug!(job_id = %job.id, model = %job.model, node, "source job created");
        Ok(job)
    }

    async fn claim_ingest(&self, job_id: &str, node: &str, lease_ms: u64) -> Result<Option<Job>, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<Option<Job>, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let now = now_ms();
            let claimed: Option<i64> = sqlx::query_scalar(&format!(
                "UPDATE jobs SET ingest_node = ?1, ingest_until = ?2 \
                 WHERE id = ?3 AND status IN {ACTIVE_STATUSES} AND closed = 0 AND ingest_node IS NOT NULL \
                   AND (ingest_node = ?1 OR ingest_until IS NULL OR ingest_until <= ?4) \
                 RETURNING pk"
            ))
            .bind(node)
            .bind(now.saturating_add(lease_i64(lease_ms)))
            .bind(job_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            let job = load_job(conn, job_id).await?.1;
            Ok(claimed.map(|_| job))
        }
        .await;
        self.finish(tx, result).await
    }

    async fn ingests_to_resume(&self, held_by: Option<&str>) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE status IN {ACTIVE_STATUSES} AND closed = 0 AND ingest_node IS NOT NULL \
               AND (ingest_until IS NULL OR ingest_until <= ?1 OR ingest_node = ?2) ORDER BY pk"
        ))
        .bind(now_ms())
        .bind(held_by)
        .fetch_all(&self.reader)
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
        let mut tx = self.begin_write().await?;
        let result: Result<Option<String>, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, job) = load_job(conn, job_id).await?;
            let owner: Option<String> = sqlx::query_scalar("SELECT ingest_node FROM jobs WHERE pk = ?1")
                .bind(pk)
                .fetch_one(&mut *conn)
                .await?;
            if owner.as_deref() != Some(node) || job.total != at {
                return Ok(None);
            }
            Self::insert_inputs(conn, pk, &job, &rows, max_inputs).await?;
            Ok(Some(job.model))
        }
        .await;
        let Some(model) = self.finish(tx, result).await? else {
            tracing::debug!(job_id = %job_id, node, at, "source inputs refused: not this node's ingestion");
            return Ok(false);
        };
        tracing::debug!(job_id = %job_id, added = rows.len(), at, "source inputs added");
        let _ = self.notices.send(model);
        Ok(true)
    }

    async fn finish_ingest(&self, job_id: &str, node: &str, error: Option<&str>) -> Result<Option<Job>, StoreError> {
        let error = error.map(bounded_reason);
        let mut tx = self.begin_write().await?;
        let result: Result<Option<Job>, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let (pk, job) = load_job(conn, job_id).await?;
            if job.closed || job.status.is_terminal() {
                return Ok(Some(job));
            }
            let owner: Option<String> = sqlx::query_scalar("SELECT ingest_node FROM jobs WHERE pk = ?1")
                .bind(pk)
                .fetch_one(&mut *conn)
                .await?;
            if owner.as_deref() != Some(node) {
                return Ok(None);
            }
            sqlx::query("UPDATE jobs SET closed = 1, error = ?1, ingest_until = NULL WHERE pk = ?2")
                .bind(&error)
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            finish_if_done(conn, pk, now_ms()).await?;
            Ok(Some(load_job(conn, job_id).await?.1))
        }
        .await;
        let job = self.finish(tx, result).await?;
        if let Some(job) = &job {
            tracing::debug!(job_id = %job_id, total = job.total, status = %job.status, error = ?job.error, "source job settled");
        }
        Ok(job)
    }

    async fn release_ingest(&self, job_id: &str, node: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<bool, StoreError> = async {
            let released = sqlx::query(&format!(
                "UPDATE jobs SET ingest_until = 0 WHERE id = ?1 AND ingest_node = ?2 AND closed = 0 \
                 AND status IN {ACTIVE_STATUSES}"
            ))
            .bind(job_id)
            .bind(node)
            .execute(&mut *tx.conn)
            .await?
            .rows_affected();
            Ok(released > 0)
        }
        .await;
        self.finish(tx, result).await
    }

    async fn claim_export(&self, job_id: &str, node: &str, lease_ms: u64) -> Result<Option<ExportClaim>, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<Option<ExportClaim>, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let now = now_ms();
            let claimed: Option<(Option<String>,)> = sqlx::query_as(
                "UPDATE jobs SET export_node = ?1, export_until = ?2 \
                 WHERE id = ?3 AND output IS NOT NULL AND export_state IS NULL \
                   AND (export_node IS NULL OR export_node = ?1 OR export_until IS NULL OR export_until <= ?4) \
                 RETURNING export_checkpoint",
            )
            .bind(node)
            .bind(now.saturating_add(lease_i64(lease_ms)))
            .bind(job_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            let job = load_job(conn, job_id).await?.1;
            Ok(claimed.map(|(checkpoint,)| ExportClaim { job, checkpoint }))
        }
        .await;
        self.finish(tx, result).await
    }

    async fn exports_to_resume(&self, held_by: Option<&str>) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE output IS NOT NULL AND export_state IS NULL \
               AND (export_node IS NULL OR export_until IS NULL OR export_until <= ?1 OR export_node = ?2) \
             ORDER BY pk",
        )
        .bind(now_ms())
        .bind(held_by)
        .fetch_all(&self.reader)
        .await?)
    }

    async fn save_export(&self, job_id: &str, node: &str, checkpoint: &str, rows: u64) -> Result<bool, StoreError> {
        let rows = to_i64(rows)?;
        self.export_update(
            "UPDATE jobs SET export_checkpoint = ?1, export_rows = ?2 \
             WHERE id = ?3 AND export_node = ?4 AND export_state IS NULL",
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
                "UPDATE jobs SET export_state = '{state}', export_error = ?1, export_until = NULL \
                 WHERE ?2 IS NULL AND id = ?3 AND export_node = ?4 AND export_state IS NULL"
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
             WHERE ?1 IS NULL AND ?2 IS NULL AND id = ?3 AND export_node = ?4 AND export_state IS NULL",
            (None, None),
            job_id,
            node,
        )
        .await
    }

    async fn get_job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        Ok(find_job(&mut conn, job_id).await?.map(|(_, job)| job))
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
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR model = ?2) \
               AND (?3 IS NULL OR pk IN (SELECT job_pk FROM job_tags WHERE tag = ?3)) \
               AND (?4 IS NULL OR pk < ?4) \
             ORDER BY pk DESC LIMIT ?5"
        ))
        .bind(filter.status.map(JobStatus::as_str))
        .bind(&filter.model)
        .bind(&filter.tag)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
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
        .fetch_all(&self.reader)
        .await?;
        records.into_iter().map(|r| r.into_job().map(|(_, job)| job)).collect()
    }

    async fn pending_items(
        &self,
        job_id: &str,
        after_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ItemRow>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let pk = job_pk(&mut conn, job_id).await?;
        let records: Vec<ItemRecord> = sqlx::query_as(PENDING_ITEMS_SQL)
            .bind(pk)
            .bind(after_seq.unwrap_or(-1))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        records.into_iter().map(|r| r.into_item(job_id)).collect()
    }

    async fn record(&self, completions: Vec<Completion>) -> Result<u64, StoreError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let given = completions.len();
        let groups = group_completions(completions)?;
        let mut tx = self.begin_write().await?;
        let result: Result<u64, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let now = now_ms();
            let mut recorded = 0u64;
            for (job_id, group) in &groups {
                let Some((pk, job)) = find_job(conn, job_id).await? else {
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
                // Which of these items are still pending (the guard that makes recording idempotent)...
                let seqs: Vec<i64> = group.iter().map(|p| p.completion.seq).collect();
                let mut pending: HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(PENDING_ROWIDS_SQL)
                    .bind(json_text(&seqs)?)
                    .bind(pk)
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .collect();
                // ...then one UPDATE for all of them, each with the next done_seq. The first completion
                // of an item in the call wins; later ones are no-ops, as they would be in a later call.
                let mut next_done_seq = finished_count(&job)?;
                let mut tally = Tally::default();
                let mut updates = Vec::with_capacity(pending.len());
                for p in group {
                    let c = &p.completion;
                    let Some(rowid) = pending.remove(&c.seq) else { continue };
                    let (q, m) = tally.add(c);
                    updates.push(serde_json::json!([
                        rowid,
                        c.state.as_str(),
                        p.output,
                        c.error_code,
                        c.error_message,
                        q,
                        m,
                        next_done_seq
                    ]));
                    next_done_seq += 1;
                }
                if updates.is_empty() {
                    continue;
                }
                let expected = updates.len() as u64;
                let changed = sqlx::query(RECORD_ITEMS_SQL)
                    .bind(json_text(&updates)?)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                if changed != expected {
                    // Cannot happen with a single writer; rolling back keeps the counters exact if it does.
                    return Err(StoreError::Corrupt(format!(
                        "job {job_id}: {changed} items updated where {expected} were pending"
                    )));
                }
                sqlx::query(
                    "UPDATE jobs SET completed = completed + ?1, failed = failed + ?2, \
                 queue_ms_total = queue_ms_total + ?3, model_ms_total = model_ms_total + ?4, \
                 started_at = COALESCE(started_at, ?5), \
                 status = CASE WHEN status = 'SUBMITTED' THEN 'IN_PROGRESS' ELSE status END \
                 WHERE pk = ?6",
                )
                .bind(tally.completed)
                .bind(tally.failed)
                .bind(tally.queue_ms)
                .bind(tally.model_ms)
                .bind(now)
                .bind(pk)
                .execute(&mut *conn)
                .await?;
                finish_if_done(conn, pk, now).await?;
                recorded += expected;
            }
            Ok(recorded)
        }
        .await;
        let recorded = self.finish(tx, result).await?;
        tracing::trace!(given, recorded, "completions recorded");
        Ok(recorded)
    }

    async fn mark_started(&self, job_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<(), StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let changed = sqlx::query(
                "UPDATE jobs SET status = 'IN_PROGRESS', started_at = COALESCE(started_at, ?1) \
             WHERE id = ?2 AND status = 'SUBMITTED'",
            )
            .bind(now_ms())
            .bind(job_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if changed == 0 {
                // Either past SUBMITTED already (fine) or unknown.
                job_pk(conn, job_id).await?;
            }
            Ok(())
        }
        .await;
        self.finish(tx, result).await
    }

    async fn results(
        &self,
        job_id: &str,
        after_done_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ItemResult>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let pk = job_pk(&mut conn, job_id).await?;
        let records: Vec<ResultRecord> = sqlx::query_as(RESULTS_SQL)
            .bind(pk)
            .bind(after_done_seq.unwrap_or(-1))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        records.into_iter().map(|r| r.into_result(job_id)).collect()
    }

    async fn result(&self, job_id: &str, key: &str) -> Result<Option<ItemResult>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let pk = job_pk(&mut conn, job_id).await?;
        let record: Option<ResultRecord> = sqlx::query_as(&format!(
            "SELECT {RESULT_COLUMNS} FROM items WHERE job_pk = ?1 AND key = ?2"
        ))
        .bind(pk)
        .bind(key)
        .fetch_optional(&mut *conn)
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
        let ids = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE status IN {ACTIVE_STATUSES} AND timeout_ms IS NOT NULL \
             AND created_at + timeout_ms < ?1 ORDER BY pk"
        ))
        .bind(now_ms)
        .fetch_all(&self.reader)
        .await?;
        Ok(ids)
    }

    async fn claim(&self, claim: Claim) -> Result<Vec<ItemRow>, StoreError> {
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let offset = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut tx = self.begin_write().await?;
        let result: Result<Vec<ItemRow>, StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let now = now_ms();
            let until = now.saturating_add(i64::try_from(claim.lease_ms).unwrap_or(i64::MAX));
            let jobs: Vec<(i64, String, i32, String)> = sqlx::query_as(&format!(
                "SELECT pk, id, priority, status FROM jobs WHERE model = ?1 AND status IN {ACTIVE_STATUSES} \
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
            for pk in started {
                sqlx::query(
                    "UPDATE jobs SET status = 'IN_PROGRESS', started_at = COALESCE(started_at, ?1) \
                     WHERE pk = ?2 AND status = 'SUBMITTED'",
                )
                .bind(now)
                .bind(pk)
                .execute(&mut *conn)
                .await?;
            }
            Ok(claimed)
        }
        .await;
        self.finish(tx, result).await
    }

    async fn renew_leases(&self, node: &str, lease_ms: u64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<u64, StoreError> = async {
            let until = now_ms().saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX));
            Ok(sqlx::query(
                "UPDATE items INDEXED BY items_leased SET lease_until = ?1 \
                 WHERE lease_node = ?2 AND state = 'pending' AND lease_node IS NOT NULL",
            )
            .bind(until)
            .bind(node)
            .execute(&mut *tx.conn)
            .await?
            .rows_affected())
        }
        .await;
        self.finish(tx, result).await
    }

    async fn release_leases(&self, node: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<u64, StoreError> = async {
            Ok(sqlx::query(
                "UPDATE items INDEXED BY items_leased SET lease_node = NULL, lease_until = NULL \
                 WHERE lease_node = ?1 AND state = 'pending' AND lease_node IS NOT NULL",
            )
            .bind(node)
            .execute(&mut *tx.conn)
            .await?
            .rows_affected())
        }
        .await;
        let released = self.finish(tx, result).await?;
        if released > 0 {
            tracing::debug!(node, released, "leases released");
            let _ = self.notices.send("*".to_owned());
        }
        Ok(released)
    }

    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let models = json_text(&node.models)?;
        let mut tx = self.begin_write().await?;
        let result: Result<(), StoreError> = async {
            sqlx::query(
                "INSERT INTO nodes (id, role, models, address, started_at, heartbeat_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET role = excluded.role, \
                 models = excluded.models, address = excluded.address, started_at = excluded.started_at, \
                 heartbeat_at = excluded.heartbeat_at",
            )
            .bind(&node.id)
            .bind(&node.role)
            .bind(&models)
            .bind(&node.address)
            .bind(node.started_at)
            .bind(now_ms())
            .execute(&mut *tx.conn)
            .await?;
            Ok(())
        }
        .await;
        self.finish(tx, result).await
    }

    async fn remove_node(&self, node_id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result: Result<(), StoreError> = async {
            sqlx::query("DELETE FROM nodes WHERE id = ?1")
                .bind(node_id)
                .execute(&mut *tx.conn)
                .await?;
            Ok(())
        }
        .await;
        self.finish(tx, result).await
    }

    async fn nodes(&self, max_age_ms: u64) -> Result<Vec<NodeStatus>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        let now = now_ms();
        let since = now.saturating_sub(i64::try_from(max_age_ms).unwrap_or(i64::MAX));
        let records: Vec<NodeRecord> = sqlx::query_as(
            "SELECT n.id, n.role, n.models, n.address, n.started_at, n.heartbeat_at, \
             (SELECT COUNT(*) FROM items INDEXED BY items_leased WHERE lease_node = n.id \
              AND state = 'pending' AND lease_node IS NOT NULL AND lease_until > ?2) AS leases \
             FROM nodes AS n WHERE n.heartbeat_at >= ?1 ORDER BY n.id",
        )
        .bind(since)
        .bind(now)
        .fetch_all(&mut *conn)
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
        // A tiny write may fit in free pages while real ones still fail: first make sure there is
        // room for PROBE_HEADROOM bytes on the file system...
        let probe_file = self.path.with_file_name(PROBE_FILE_NAME);
        let written = tokio::task::spawn_blocking(move || {
            let written = write_probe_file(&probe_file);
            let _ = std::fs::remove_file(&probe_file);
            written
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        if let Err(e) = written {
            return Err(self.note_failure(StoreError::Io(e)));
        }
        // ...and inside the database's own page limit, then that a write commits.
        let mut tx = self.begin_write().await?;
        let result: Result<(), StoreError> = async {
            let conn: &mut SqliteConnection = &mut tx.conn;
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await?;
            let max_pages: i64 = sqlx::query_scalar("PRAGMA max_page_count")
                .fetch_one(&mut *conn)
                .await?;
            let page_size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *conn).await?;
            let headroom = i64::try_from(PROBE_HEADROOM).unwrap_or(i64::MAX) / page_size.max(1);
            if pages.saturating_add(headroom) > max_pages {
                return Err(StoreError::Io(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "the database is at its page limit",
                )));
            }
            sqlx::query(
                "INSERT INTO write_probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )
            .bind(now_ms())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        .await;
        self.finish(tx, result).await
    }
}

/// Writes [`PROBE_HEADROOM`] bytes to `path` and syncs them: fails when the file system is full.
fn write_probe_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0u8; 64 << 10];
    for _ in 0..PROBE_HEADROOM / block.len() {
        file.write_all(&block)?;
    }
    file.sync_all()
}

/// Inserts a job row (status `SUBMITTED`, no input) and its tags; returns its key and id.
async fn insert_job(conn: &mut SqliteConnection, job: &PreparedJob) -> Result<(i64, String), StoreError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let new = &job.new;
    let pk: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (id, model, version, status, open, priority, tags, timeout_ms, source, \
             created_at, output, source_options) VALUES (?1, ?2, ?3, 'SUBMITTED', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             RETURNING pk",
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
    for tag in &job.tags {
        sqlx::query("INSERT INTO job_tags (job_pk, tag) VALUES (?1, ?2)")
            .bind(pk)
            .bind(tag)
            .execute(&mut *conn)
            .await?;
    }
    Ok((pk, id))
}

/// Makes a closed, active job with no pending item `COMPLETED` (or `FAILED` when it had inputs and
/// none succeeded).
async fn finish_if_done(conn: &mut SqliteConnection, pk: i64, now: i64) -> Result<(), StoreError> {
    let finished: Option<String> = sqlx::query_scalar(&format!(
        "UPDATE jobs SET status = {END_STATUS}, finished_at = ?1 \
         WHERE pk = ?2 AND closed = 1 AND status IN {ACTIVE_STATUSES} \
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

/// The job with this id and its internal key, if any.
async fn find_job(conn: &mut SqliteConnection, job_id: &str) -> Result<Option<(i64, Job)>, StoreError> {
    let record: Option<JobRecord> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await?;
    record.map(JobRecord::into_job).transpose()
}

/// The job with this id and its internal key, or [`StoreError::NotFound`].
async fn load_job(conn: &mut SqliteConnection, job_id: &str) -> Result<(i64, Job), StoreError> {
    find_job(conn, job_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(job_id.to_owned()))
}

/// The internal key of the job with this id, or [`StoreError::NotFound`].
async fn job_pk(conn: &mut SqliteConnection, job_id: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT pk FROM jobs WHERE id = ?1")
        .bind(job_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::NotFound(job_id.to_owned()))
}

/// The first key of `chunk` that the job already has (called after a unique violation).
async fn existing_key(
    conn: &mut SqliteConnection,
    pk: i64,
    chunk: &[(String, &'static str, Vec<u8>)],
) -> Result<String, StoreError> {
    for (key, _, _) in chunk {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM items WHERE job_pk = ?1 AND key = ?2")
            .bind(pk)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
        if found.is_some() {
            return Ok(key.clone());
        }
    }
    Err(StoreError::Corrupt(
        "unique violation on insert, but no key of the chunk exists".into(),
    ))
}

/// `value` as JSON text, for the `json_each(?)` parameters.
fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("cannot serialise a batch: {e}")))
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    //! Guards the query plans that keep the store fast on huge jobs: every per-item statement must
    //! search an index, never scan `items`.

    use super::*;
    use sqlx::Row as _;

    async fn plan(conn: &mut SqliteConnection, sql: &str, binds: usize) -> Result<String, StoreError> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query(&explain);
        for _ in 0..binds {
            query = query.bind(1i64);
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let details = rows
            .iter()
            .map(|row| row.try_get::<String, _>(3))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(details.join("\n"))
    }

    #[tokio::test]
    async fn per_item_statements_search_indexes() -> Result<(), StoreError> {
        let dir = tempfile::TempDir::new()?;
        let store = SqliteStore::open(dir.path()).await?;
        let mut conn = store.writer.acquire().await?;
        for (name, sql, binds, wanted) in [
            (
                "pending_items",
                PENDING_ITEMS_SQL,
                3,
                vec!["items_pending (job_pk=? AND seq>?)"],
            ),
            (
                "record step 1",
                PENDING_ROWIDS_SQL,
                2,
                vec!["SCAN c", "items_pending (job_pk=? AND seq=?)"],
            ),
            (
                "record step 2",
                RECORD_ITEMS_SQL,
                1,
                vec!["SCAN c", "SEARCH items USING INTEGER PRIMARY KEY (rowid=?)"],
            ),
            ("results", RESULTS_SQL, 3, vec!["items_done (job_pk=? AND done_seq>?)"]),
            (
                "cancel",
                END_ITEMS_SQL,
                5,
                vec![
                    "items_pending (job_pk=?)",
                    "SEARCH items USING INTEGER PRIMARY KEY (rowid=?)",
                ],
            ),
        ] {
            let plan = plan(&mut conn, sql, binds).await?;
            for step in wanted {
                assert!(plan.contains(step), "{name}: plan lacks {step:?}:\n{plan}");
            }
            assert!(!plan.contains("SCAN items"), "{name} scans items:\n{plan}");
        }
        Ok(())
    }
}
