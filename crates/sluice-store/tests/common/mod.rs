//! What the store's test files share: the two backends behind one fixture, and small builders.

#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;

use serde_json::json;
use sluice_store::test_util::TestDatabase;
use sluice_store::{Completion, InputValue, Job, NewJob, PgStore, SqliteStore, Store, StoreError};
use tempfile::TempDir;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Where a test's store lives: a temporary SQLite folder, or a PostgreSQL database of its own
/// (dropped at the end). [`Backend::open`] opens another store on the same data, as another
/// process (or node) would.
pub enum Backend {
    Sqlite(TempDir),
    Postgres(TestDatabase),
}

impl Backend {
    pub async fn sqlite() -> Result<Backend, Box<dyn std::error::Error>> {
        Ok(Backend::Sqlite(TempDir::new()?))
    }

    pub async fn postgres() -> Result<Backend, Box<dyn std::error::Error>> {
        Ok(Backend::Postgres(TestDatabase::create().await?))
    }

    /// A store on this backend's data (each call: new connections).
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Backend::Sqlite(dir) => Arc::new(SqliteStore::open(dir.path()).await?),
            Backend::Postgres(db) => Arc::new(PgStore::connect(db.url()).await?),
        })
    }

    /// Whether work notices cross store instances (PostgreSQL's do; SQLite's stay in-process).
    pub fn notices_cross_processes(&self) -> bool {
        matches!(self, Backend::Postgres(_))
    }
}

pub fn new_job(model: &str) -> NewJob {
    NewJob {
        model: model.to_owned(),
        ..NewJob::default()
    }
}

pub fn texts(range: std::ops::Range<usize>) -> Vec<(String, InputValue)> {
    range
        .map(|i| (format!("k{i}"), InputValue::Text(format!("input {i}"))))
        .collect()
}

pub fn done(job: &Job, seq: i64) -> Completion {
    Completion::done(job.id.clone(), seq, json!({ "seq": seq }), 2.0, 3.0)
}

pub async fn job(store: &Arc<dyn Store>, id: &str) -> Result<Job, Box<dyn std::error::Error>> {
    Ok(store.get_job(id).await?.ok_or("job vanished")?)
}

/// A job of model `m` with `n` inputs `k0..k{n-1}`, closed.
pub async fn closed_job(store: &Arc<dyn Store>, n: usize) -> Result<Job, Box<dyn std::error::Error>> {
    closed_job_of(store, "m", n).await
}

/// A job of `model` with `n` inputs `k0..k{n-1}`, closed.
pub async fn closed_job_of(store: &Arc<dyn Store>, model: &str, n: usize) -> Result<Job, Box<dyn std::error::Error>> {
    let created = store.create_job(new_job(model)).await?;
    store.add_inputs(&created.id, texts(0..n)).await?;
    Ok(store.close_job(&created.id).await?)
}
