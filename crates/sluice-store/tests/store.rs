//! What only SQLite has to show: a real `kill -9` while recording, a full disk, the write probe,
//! and a 100,000-item job. The contract both backends keep is in `conformance.rs`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_store::{Completion, InputValue, ItemState, JobFilter, JobStatus, SqliteStore, Store, StoreError};
use tempfile::TempDir;

mod common;

use common::{done, job, new_job, texts, TestResult};

async fn open(dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqliteStore::open(dir).await?))
}

#[tokio::test]
async fn serialised_names_are_the_documented_ones() -> TestResult {
    assert_eq!(serde_json::to_value(JobStatus::InProgress)?, json!("IN_PROGRESS"));
    assert_eq!(serde_json::to_value(JobStatus::Timedout)?, json!("TIMEDOUT"));
    assert_eq!(serde_json::to_value(ItemState::Timedout)?, json!("timedout"));
    let statuses: HashSet<String> = JobStatus::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(statuses.len(), 6);
    for status in JobStatus::ALL {
        assert_eq!(status.as_str().parse::<JobStatus>()?, status);
        assert_eq!(serde_json::to_value(status)?, json!(status.as_str()));
    }
    Ok(())
}

/// Environment variable that turns [`kill9_child`] into a writer that never stops.
const KILL9_DIR: &str = "SLUICE_STORE_KILL9_DIR";

/// Child half of [`kill_9_while_recording_loses_and_duplicates_nothing`]: does nothing in a normal run.
#[tokio::test]
async fn kill9_child() -> TestResult {
    let Ok(dir) = std::env::var(KILL9_DIR) else {
        return Ok(());
    };
    let store = open(Path::new(&dir)).await?;
    let j = store.active_jobs().await?.into_iter().next().ok_or("no job")?;
    println!("child ready");
    // Record forever, re-sending earlier items as a re-run after a crash would.
    let mut seq = 0i64;
    loop {
        let batch: Vec<Completion> = (seq.saturating_sub(20)..seq + 50).map(|s| done(&j, s)).collect();
        store.record(batch).await?;
        seq += 50;
    }
}

#[tokio::test]
async fn kill_9_while_recording_loses_and_duplicates_nothing() -> TestResult {
    let dir = TempDir::new()?;
    let n = 200_000usize;
    let id = {
        let sqlite = Arc::new(SqliteStore::open(dir.path()).await?);
        let store: Arc<dyn Store> = sqlite.clone();
        let j = store.create_job(new_job("m")).await?;
        for start in (0..n).step_by(5_000) {
            store.add_inputs(&j.id, texts(start..start + 5_000)).await?;
        }
        store.close_job(&j.id).await?;
        sqlite.close().await;
        j.id
    };

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "kill9_child", "--nocapture", "--test-threads=1"])
        .env(KILL9_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    // Let it commit a good number of batches, then kill it without warning.
    let store = open(dir.path()).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while job(&store, &id).await?.completed < 5_000 {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("the child recorded nothing".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill()?; // SIGKILL
    child.wait()?;

    let store = open(dir.path()).await?;
    let j = job(&store, &id).await?;
    assert_eq!(j.status, JobStatus::InProgress);
    assert_eq!(j.total as usize, n);
    assert!(j.completed >= 5_000 && j.completed < n as u64);
    // Counters agree with the items: every finished item once, with done_seqs 0..completed.
    let mut finished = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.results(&id, cursor, 10_000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.done_seq;
        finished.extend(page.into_iter().map(|r| (r.seq, r.done_seq)));
    }
    assert_eq!(finished.len() as u64, j.completed);
    for (i, (_, done_seq)) in finished.iter().enumerate() {
        assert_eq!(*done_seq, Some(i as i64));
    }
    let finished_seqs: HashSet<i64> = finished.iter().map(|(s, _)| *s).collect();
    assert_eq!(finished_seqs.len(), finished.len());
    let mut pending = 0u64;
    let mut cursor = None;
    loop {
        let page = store.pending_items(&id, cursor, 10_000).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        for row in &page {
            assert!(!finished_seqs.contains(&row.seq));
        }
        pending += page.len() as u64;
    }
    assert_eq!(pending, j.pending);
    assert_eq!(pending + j.completed, n as u64);
    println!("kill -9 after {} of {n} items recorded: store consistent", j.completed);
    Ok(())
}

#[tokio::test]
async fn a_100k_item_job_in_chunks_and_batches() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let n = 100_000usize;
    let j = store.create_job(new_job("m")).await?;

    let start = Instant::now();
    for chunk in (0..n).step_by(1_000) {
        store.add_inputs(&j.id, texts(chunk..chunk + 1_000)).await?;
    }
    let add_secs = start.elapsed().as_secs_f64();
    store.close_job(&j.id).await?;

    // Feed it like the server: page through pending items, record in batches of 500.
    let start = Instant::now();
    let mut cursor = None;
    let mut fed = 0usize;
    let mut record_secs = 0.0;
    loop {
        let page = store.pending_items(&j.id, cursor, 2_000).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        fed += page.len();
        for batch in page.chunks(500) {
            let completions = batch
                .iter()
                .map(|r| Completion::done(j.id.clone(), r.seq, json!({"embedding": [0.25, 0.5]}), 1.0, 1.0))
                .collect();
            let t = Instant::now();
            store.record(completions).await?;
            record_secs += t.elapsed().as_secs_f64();
        }
    }
    let total_secs = start.elapsed().as_secs_f64();
    assert_eq!(fed, n);
    let done = job(&store, &j.id).await?;
    assert_eq!((done.status, done.completed as usize), (JobStatus::Completed, n));

    let start = Instant::now();
    let mut read = 0usize;
    let mut cursor = None;
    loop {
        let page = store.results(&j.id, cursor, 5_000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.done_seq;
        read += page.len();
    }
    let read_secs = start.elapsed().as_secs_f64();
    assert_eq!(read, n);

    println!(
        "100k-item job: add_inputs {:.0} items/s (chunks of 1,000); record {:.0} items/s (batches of 500; \
         {:.0} items/s including pending_items reads); results {:.0} items/s",
        n as f64 / add_secs,
        n as f64 / record_secs,
        n as f64 / total_secs,
        n as f64 / read_secs,
    );
    Ok(())
}

/// Inputs large enough that a few of them need new database pages.
fn big_texts(range: std::ops::Range<usize>) -> Vec<(String, InputValue)> {
    range
        .map(|i| (format!("big{i}"), InputValue::Text(format!("{i:08}").repeat(2_000))))
        .collect()
}

fn is_disk_full(result: &Result<u64, StoreError>) -> bool {
    match result {
        Err(e) => e.failure_class() == Some("disk_full"),
        Ok(_) => false,
    }
}

/// Issue 10, finding 2: after SQLite reported a full disk, every later write failed with "attempted
/// to call begin_with at non-zero transaction depth" and nothing recovered until a restart. Now a
/// failed write rolls back cleanly (the job is as before it), the store says it cannot write, later
/// writes fail with the same disk-full class (not a stuck transaction), and once space is back the
/// next write succeeds and the store is writable again.
#[tokio::test]
async fn full_disk_fails_writes_cleanly_and_recovers() -> TestResult {
    let dir = TempDir::new()?;
    let sqlite = SqliteStore::open(dir.path()).await?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    let created = store.create_job(new_job("m")).await?;
    store.add_inputs(&created.id, texts(0..10)).await?;
    assert!(store.health().writable);

    // No more pages than the database has now: the next write that needs space fails.
    sqlite.set_max_page_count(Some(1)).await?;
    for attempt in 0..3 {
        let failed = store
            .add_inputs(&created.id, big_texts(attempt * 100..attempt * 100 + 100))
            .await;
        assert!(is_disk_full(&failed), "attempt {attempt}: {failed:?}");
        let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!message.contains("transaction depth"), "{message}");
        let health = store.health();
        assert!(!health.writable, "{health:?}");
        assert_eq!(
            health.last_write_error.as_ref().map(|f| f.class.as_str()),
            Some("disk_full")
        );
        // All or nothing: the job still holds its first ten inputs.
        assert_eq!(job(&store, &created.id).await?.total, 10);
    }
    let failed_at = store.health().last_write_error.map(|f| f.at);

    // Space is back: the very next write works, on a connection that is not stuck in a transaction.
    sqlite.set_max_page_count(None).await?;
    assert_eq!(store.add_inputs(&created.id, big_texts(0..100)).await?, 100);
    let health = store.health();
    assert!(health.writable, "{health:?}");
    assert!(health.last_write_ok_at >= failed_at);
    store.close_job(&created.id).await?;
    let completions: Vec<Completion> = (0..110).map(|seq| done(&created, seq)).collect();
    assert_eq!(store.record(completions).await?, 110);
    let finished = job(&store, &created.id).await?;
    assert_eq!((finished.status, finished.completed), (JobStatus::Completed, 110));
    let check: String = {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", sqlite.path().display())).await?;
        sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&pool).await?
    };
    assert_eq!(check, "ok");
    Ok(())
}

/// The probe write tells when a store that failed can write again.
#[tokio::test]
async fn probe_write_follows_the_disk() -> TestResult {
    let dir = TempDir::new()?;
    let sqlite = SqliteStore::open(dir.path()).await?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    store.probe_write().await?;
    let created = store.create_job(new_job("m")).await?;
    sqlite.set_max_page_count(Some(1)).await?;
    assert!(is_disk_full(&store.add_inputs(&created.id, big_texts(0..100)).await));
    assert!(!store.health().writable);
    // A tiny write would fit in the free space of existing pages: the probe asks for headroom.
    let probe = store.probe_write().await;
    assert_eq!(probe.err().and_then(|e| e.failure_class()), Some("disk_full"));
    assert!(!store.health().writable);
    sqlite.set_max_page_count(None).await?;
    store.probe_write().await?;
    assert!(store.health().writable);
    Ok(())
}

/// Issue 10, finding 8: a job created with its inputs appears whole or not at all, also
/// when the disk fills up mid-insert (the other failures are in the conformance suite).
#[tokio::test]
async fn create_with_inputs_on_a_full_disk_leaves_nothing() -> TestResult {
    let dir = TempDir::new()?;
    let sqlite = SqliteStore::open(dir.path()).await?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    sqlite.set_max_page_count(Some(1)).await?;
    let full = store
        .create_job_with_inputs(new_job("m"), big_texts(0..200), 1_000)
        .await;
    assert_eq!(full.err().and_then(|e| e.failure_class()), Some("disk_full"));
    sqlite.set_max_page_count(None).await?;
    assert_eq!(
        store.list_jobs(JobFilter::default()).await?.0.len(),
        0,
        "a failed create left a job behind"
    );

    // Once the disk has room again, the same create succeeds whole.
    let created = store
        .create_job_with_inputs(new_job("m"), big_texts(0..200), 1_000)
        .await?;
    assert_eq!((created.total, created.closed), (200, true));
    assert_eq!(store.list_jobs(JobFilter::default()).await?.0.len(), 1);
    Ok(())
}
