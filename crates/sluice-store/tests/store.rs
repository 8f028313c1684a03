//! Behaviour of the job store on real SQLite files: life cycle, atomicity, idempotent recording,
//! the two cursors, cancel/timeout, restart (including a real `kill -9`) and a 100,000-item job.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_store::{
    Completion, InputValue, ItemState, Job, JobFilter, JobStatus, NewJob, SqliteStore, Store, StoreError,
};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn open(dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqliteStore::open(dir).await?))
}

fn new_job(model: &str) -> NewJob {
    NewJob {
        model: model.to_owned(),
        ..NewJob::default()
    }
}

fn texts(range: std::ops::Range<usize>) -> Vec<(String, InputValue)> {
    range
        .map(|i| (format!("k{i}"), InputValue::Text(format!("input {i}"))))
        .collect()
}

fn done(job: &Job, seq: i64) -> Completion {
    Completion::done(job.id.clone(), seq, json!({ "seq": seq }), 2.0, 3.0)
}

async fn job(store: &Arc<dyn Store>, id: &str) -> Result<Job, Box<dyn std::error::Error>> {
    Ok(store.get_job(id).await?.ok_or("job vanished")?)
}

/// A job with `n` inputs `k0..k{n-1}`, closed.
async fn closed_job(store: &Arc<dyn Store>, n: usize) -> Result<Job, Box<dyn std::error::Error>> {
    let created = store.create_job(new_job("m")).await?;
    store.add_inputs(&created.id, texts(0..n)).await?;
    Ok(store.close_job(&created.id).await?)
}

#[tokio::test]
async fn lifecycle_counts_and_completion() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let created = store
        .create_job(NewJob {
            model: "embed".into(),
            version: Some("v2".into()),
            priority: 5,
            tags: vec!["nightly".into(), "a".into(), "nightly".into()],
            timeout_ms: Some(60_000),
            open: true,
            source: Some("test".into()),
        })
        .await?;
    assert_eq!(created.id.len(), 32);
    assert_eq!(created.status, JobStatus::Submitted);
    assert_eq!(
        (created.total, created.pending, created.closed, created.open),
        (0, 0, false, true)
    );
    assert_eq!(created.tags, vec!["nightly".to_owned(), "a".to_owned()]);
    assert!(created.started_at.is_none());

    let inputs = vec![
        ("t".to_owned(), InputValue::Text("hello".into())),
        ("b".to_owned(), InputValue::Bytes(vec![0, 159, 255])),
        ("j".to_owned(), InputValue::Json(json!({"x": [1, 2]}))),
    ];
    assert_eq!(store.add_inputs(&created.id, inputs.clone()).await?, 3);
    assert_eq!(store.add_inputs(&created.id, texts(0..2)).await?, 2);
    let j = job(&store, &created.id).await?;
    assert_eq!((j.total, j.pending), (5, 5));

    let pending = store.pending_items(&created.id, None, 100).await?;
    assert_eq!(pending.len(), 5);
    assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    for (row, (key, input)) in pending.iter().zip(&inputs) {
        assert_eq!(
            (&row.key, &row.input, row.job_id.as_str()),
            (key, input, created.id.as_str())
        );
    }

    store.mark_started(&created.id).await?;
    let j = job(&store, &created.id).await?;
    assert_eq!(j.status, JobStatus::InProgress);
    assert!(j.started_at.is_some());

    let recorded = store
        .record(vec![
            done(&j, 0),
            done(&j, 1),
            Completion::failed(&j.id, 2, "bad_input", "cannot parse", 1.0, 1.0),
        ])
        .await?;
    assert_eq!(recorded, 3);
    let j = job(&store, &created.id).await?;
    assert_eq!((j.completed, j.failed, j.pending), (2, 1, 2));
    assert_eq!((j.queue_ms_total, j.model_ms_total), (5.0, 7.0));
    assert_eq!(j.status, JobStatus::InProgress);

    // Everything done while still open: the job waits for close.
    store.record(vec![done(&j, 3), done(&j, 4)]).await?;
    let j = job(&store, &created.id).await?;
    assert_eq!((j.pending, j.status), (0, JobStatus::InProgress));
    assert!(j.finished_at.is_none());

    let j = store.close_job(&created.id).await?;
    assert_eq!(j.status, JobStatus::Completed);
    assert!(j.closed);
    assert!(j.finished_at.is_some());
    assert_eq!((j.total, j.completed, j.failed, j.pending), (5, 4, 1, 0));
    assert!(!store.active_jobs().await?.iter().any(|a| a.id == j.id));

    let failed = store.result(&j.id, "j").await?.ok_or("no result")?;
    assert_eq!(failed.state, ItemState::Failed);
    let error = failed.error.ok_or("no error")?;
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("bad_input", "cannot parse")
    );
    let ok = store.result(&j.id, "b").await?.ok_or("no result")?;
    assert_eq!(
        (ok.state, ok.output, ok.queue_ms, ok.model_ms),
        (ItemState::Done, Some(json!({"seq": 1})), Some(2.0), Some(3.0))
    );
    assert!(store.result(&j.id, "nope").await?.is_none());

    // Closed: no more inputs; closing again changes nothing.
    assert!(matches!(
        store.add_inputs(&j.id, texts(10..11)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.close_job(&j.id).await?, j);
    Ok(())
}

#[tokio::test]
async fn closing_an_empty_job_completes_it() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let created = store.create_job(new_job("m")).await?;
    let j = store.close_job(&created.id).await?;
    assert_eq!((j.status, j.total), (JobStatus::Completed, 0));
    assert!(j.finished_at.is_some());
    Ok(())
}

#[tokio::test]
async fn unknown_jobs_and_bad_arguments() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    assert!(store.get_job("missing").await?.is_none());
    assert!(matches!(
        store.add_inputs("missing", texts(0..1)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(store.close_job("missing").await, Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.pending_items("missing", None, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.results("missing", None, 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.mark_started("missing").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.cancel_job("missing").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.create_job(new_job(" ")).await,
        Err(StoreError::Invalid(_))
    ));

    // A completion for an unknown job is skipped; a non-final state rejects the whole call.
    let j = closed_job(&store, 2).await?;
    let unknown = Completion::done("missing", 0, json!(1), 0.0, 0.0);
    assert_eq!(store.record(vec![unknown, done(&j, 0)]).await?, 1);
    let mut bad = done(&j, 1);
    bad.state = ItemState::Canceled;
    assert!(matches!(store.record(vec![bad]).await, Err(StoreError::Invalid(_))));
    assert_eq!(job(&store, &j.id).await?.pending, 1);
    Ok(())
}

#[tokio::test]
async fn duplicate_keys_are_rejected_atomically() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let j = store.create_job(new_job("m")).await?;
    store.add_inputs(&j.id, texts(0..2)).await?;

    // Against an earlier call: nothing of the call is added.
    let mut batch = vec![("new".to_owned(), InputValue::Text("x".into()))];
    batch.extend(texts(1..2));
    match store.add_inputs(&j.id, batch).await {
        Err(StoreError::DuplicateKey(key)) => assert_eq!(key, "k1"),
        other => return Err(format!("expected a duplicate key, got {other:?}").into()),
    }
    // Within the call.
    let twice = vec![
        ("d".to_owned(), InputValue::Text("1".into())),
        ("d".to_owned(), InputValue::Text("2".into())),
    ];
    assert!(matches!(store.add_inputs(&j.id, twice).await, Err(StoreError::DuplicateKey(k)) if k == "d"));
    // A duplicate far into a large call, after several INSERT statements already ran.
    let mut big = texts(100..400);
    big.push(("k0".to_owned(), InputValue::Text("again".into())));
    big.extend(texts(400..450));
    assert!(matches!(store.add_inputs(&j.id, big).await, Err(StoreError::DuplicateKey(k)) if k == "k0"));

    let after = job(&store, &j.id).await?;
    assert_eq!(after.total, 2);
    assert!(store.result(&j.id, "new").await?.is_none());
    assert!(store.result(&j.id, "k150").await?.is_none());
    assert_eq!(store.pending_items(&j.id, None, 1000).await?.len(), 2);

    // The job still works and seqs continue without a gap.
    store.add_inputs(&j.id, texts(2..4)).await?;
    let seqs: Vec<i64> = store
        .pending_items(&j.id, None, 10)
        .await?
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![0, 1, 2, 3]);
    // The same key in another job is fine.
    let other = store.create_job(new_job("m")).await?;
    assert_eq!(store.add_inputs(&other.id, texts(0..2)).await?, 2);
    Ok(())
}

#[tokio::test]
async fn pending_items_pages_with_a_cursor_and_skips_finished_items() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let j = closed_job(&store, 25).await?;
    // Finish a few in the middle and at the start.
    store.record(vec![done(&j, 0), done(&j, 11), done(&j, 12)]).await?;

    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = store.pending_items(&j.id, cursor, 10).await?;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        cursor = page.last().map(|r| r.seq);
        seen.extend(page.into_iter().map(|r| r.seq));
    }
    let expected: Vec<i64> = (1..25).filter(|s| *s != 11 && *s != 12).collect();
    assert_eq!(seen, expected);
    assert!(store.pending_items(&j.id, Some(24), 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn recording_is_idempotent() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let j = closed_job(&store, 3).await?;
    assert_eq!(store.record(vec![done(&j, 0)]).await?, 1);
    let first = store.result(&j.id, "k0").await?.ok_or("no result")?;

    // The same item again, with another output, alone and in a batch with itself: no effect.
    let again = Completion::done(j.id.clone(), 0, json!("second"), 100.0, 100.0);
    assert_eq!(store.record(vec![again.clone()]).await?, 0);
    assert_eq!(store.record(vec![again, done(&j, 1), done(&j, 1)]).await?, 1);
    assert_eq!(store.result(&j.id, "k0").await?.ok_or("no result")?, first);
    // An item that does not exist is a no-op too.
    assert_eq!(store.record(vec![done(&j, 99)]).await?, 0);

    let after = job(&store, &j.id).await?;
    assert_eq!((after.completed, after.pending, after.queue_ms_total), (2, 1, 4.0));
    let results = store.results(&j.id, None, 10).await?;
    assert_eq!(
        results.iter().map(|r| (r.seq, r.done_seq)).collect::<Vec<_>>(),
        vec![(0, Some(0)), (1, Some(1))]
    );
    Ok(())
}

#[tokio::test]
async fn results_cursor_returns_each_result_once_while_the_job_runs() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let n = 300usize;
    let j = closed_job(&store, n).await?;
    // Finish items in a scrambled order, a batch between every read.
    let order: Vec<i64> = (0..n as i64).map(|i| (i * 7) % n as i64).collect();
    let mut batches = order.chunks(23);
    let mut cursor = None;
    let mut seen = Vec::new();
    let mut idle_reads = 0;
    while idle_reads < 2 {
        if let Some(batch) = batches.next() {
            store.record(batch.iter().map(|s| done(&j, *s)).collect()).await?;
        }
        let page = store.results(&j.id, cursor, 17).await?;
        if page.is_empty() {
            idle_reads += 1;
            continue;
        }
        for r in &page {
            assert_eq!(r.state, ItemState::Done);
            assert_eq!(r.output, Some(json!({ "seq": r.seq })));
            assert_eq!(r.key, format!("k{}", r.seq));
        }
        cursor = page.last().and_then(|r| r.done_seq);
        seen.extend(page);
    }
    assert_eq!(seen.len(), n);
    assert_eq!(
        seen.iter().map(|r| r.done_seq).collect::<Vec<_>>(),
        (0..n as i64).map(Some).collect::<Vec<_>>()
    );
    // Completion order is the order of recording.
    assert_eq!(seen.iter().map(|r| r.seq).collect::<Vec<_>>(), order);
    assert_eq!(job(&store, &j.id).await?.status, JobStatus::Completed);
    Ok(())
}

#[tokio::test]
async fn cancel_marks_the_rest_and_ignores_late_results() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let j = closed_job(&store, 10).await?;
    store.record(vec![done(&j, 0), done(&j, 5), done(&j, 9)]).await?;

    let canceled = store.cancel_job(&j.id).await?;
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!((canceled.completed, canceled.canceled, canceled.pending), (3, 7, 0));
    assert!(canceled.finished_at.is_some());
    assert!(store.pending_items(&j.id, None, 100).await?.is_empty());

    // Every item has exactly one outcome, with consecutive done_seqs.
    let results = store.results(&j.id, None, 100).await?;
    assert_eq!(
        results.iter().map(|r| r.done_seq).collect::<Vec<_>>(),
        (0..10).map(Some).collect::<Vec<_>>()
    );
    let canceled_seqs: Vec<i64> = results
        .iter()
        .filter(|r| r.state == ItemState::Canceled)
        .map(|r| r.seq)
        .collect();
    assert_eq!(canceled_seqs, vec![1, 2, 3, 4, 6, 7, 8]);
    let item = store.result(&j.id, "k1").await?.ok_or("no result")?;
    assert_eq!(item.error.map(|e| e.code), Some("canceled".to_owned()));

    // Late results and a second cancel change nothing.
    assert_eq!(store.record(vec![done(&j, 1)]).await?, 0);
    assert_eq!(store.cancel_job(&j.id).await?, canceled);
    assert_eq!(store.timeout_job(&j.id).await?, canceled);
    assert!(matches!(
        store.add_inputs(&j.id, texts(20..21)).await,
        Err(StoreError::Conflict(_))
    ));

    // An open job can be canceled too; it gets closed.
    let open = store.create_job(new_job("m")).await?;
    store.add_inputs(&open.id, texts(0..2)).await?;
    let c = store.cancel_job(&open.id).await?;
    assert_eq!((c.status, c.closed, c.canceled), (JobStatus::Canceled, true, 2));
    Ok(())
}

#[tokio::test]
async fn timeout_marks_the_rest_and_expiry_is_found() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let timed = store
        .create_job(NewJob {
            timeout_ms: Some(1_000),
            ..new_job("m")
        })
        .await?;
    store.add_inputs(&timed.id, texts(0..4)).await?;
    store.close_job(&timed.id).await?;
    let untimed = closed_job(&store, 1).await?;

    assert!(store.expired_jobs(timed.created_at + 500).await?.is_empty());
    assert_eq!(
        store.expired_jobs(timed.created_at + 1_001).await?,
        vec![timed.id.clone()]
    );
    let _ = untimed;

    store
        .record(vec![Completion::failed(&timed.id, 2, "oom", "out of memory", 0.0, 0.0)])
        .await?;
    let t = store.timeout_job(&timed.id).await?;
    assert_eq!(t.status, JobStatus::Timedout);
    assert_eq!((t.failed, t.timedout, t.pending), (1, 3, 0));
    assert_eq!(
        store.result(&timed.id, "k0").await?.map(|r| r.state),
        Some(ItemState::Timedout)
    );
    // Terminal jobs are not expired any more.
    assert!(store.expired_jobs(timed.created_at + 10_000).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_job_where_nothing_succeeded_fails() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    // Closed first, then the last failure finishes it.
    let j = closed_job(&store, 3).await?;
    let failures = (0..3)
        .map(|s| Completion::failed(&j.id, s, "e", "boom", 0.0, 0.0))
        .collect();
    assert_eq!(store.record(failures).await?, 3);
    let f = job(&store, &j.id).await?;
    assert_eq!((f.status, f.failed, f.completed), (JobStatus::Failed, 3, 0));
    assert!(f.finished_at.is_some());

    // Failures first, then close finishes it.
    let open = store.create_job(new_job("m")).await?;
    store.add_inputs(&open.id, texts(0..2)).await?;
    store
        .record(
            (0..2)
                .map(|s| Completion::failed(&open.id, s, "e", "boom", 0.0, 0.0))
                .collect(),
        )
        .await?;
    assert_eq!(store.close_job(&open.id).await?.status, JobStatus::Failed);

    // One success is enough to complete.
    let mixed = closed_job(&store, 2).await?;
    store
        .record(vec![
            Completion::failed(&mixed.id, 0, "e", "boom", 0.0, 0.0),
            done(&mixed, 1),
        ])
        .await?;
    assert_eq!(job(&store, &mixed.id).await?.status, JobStatus::Completed);
    Ok(())
}

#[tokio::test]
async fn reopening_resumes_exactly_the_unfinished_items() -> TestResult {
    let dir = TempDir::new()?;
    let (id, finished) = {
        let store = open(dir.path()).await?;
        let j = closed_job(&store, 50).await?;
        let finished: BTreeSet<i64> = (0..50).filter(|s| s % 3 == 0 || *s > 40).collect();
        store.record(finished.iter().map(|s| done(&j, *s)).collect()).await?;
        // Dropped without closing the pools, as a crash would leave it.
        (j.id, finished)
    };

    let store = open(dir.path()).await?;
    let active = store.active_jobs().await?;
    assert_eq!(
        active.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let j = job(&store, &id).await?;
    assert_eq!(
        (j.completed as usize, j.pending as usize),
        (finished.len(), 50 - finished.len())
    );

    let pending: Vec<i64> = store
        .pending_items(&id, None, 1_000)
        .await?
        .iter()
        .map(|r| r.seq)
        .collect();
    let expected: Vec<i64> = (0..50).filter(|s| !finished.contains(s)).collect();
    assert_eq!(pending, expected);

    // The engine re-runs everything it had in flight, including items recorded before the crash.
    let rerun: Vec<Completion> = (0..50).map(|s| done(&j, s)).collect();
    assert_eq!(store.record(rerun).await? as usize, expected.len());
    let j = job(&store, &id).await?;
    assert_eq!((j.status, j.completed, j.pending), (JobStatus::Completed, 50, 0));
    assert_eq!(store.results(&id, None, 1_000).await?.len(), 50);
    Ok(())
}

#[tokio::test]
async fn list_jobs_filters_and_pages_newest_first() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let mut ids = Vec::new();
    for i in 0..7 {
        let tags = if i % 2 == 0 {
            vec!["even".to_owned()]
        } else {
            vec!["odd".to_owned()]
        };
        let model = if i < 4 { "alpha" } else { "beta" };
        let j = store.create_job(NewJob { tags, ..new_job(model) }).await?;
        ids.push(j.id);
    }
    store.cancel_job(&ids[1]).await?;
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    let all = |filter: JobFilter| {
        let store = Arc::clone(&store);
        async move {
            let mut out = Vec::new();
            let mut filter = filter;
            loop {
                let (page, next) = store.list_jobs(filter.clone()).await?;
                assert!(page.len() <= filter.effective_limit() as usize);
                out.extend(page.into_iter().map(|j| j.id));
                match next {
                    Some(cursor) => filter.cursor = Some(cursor),
                    None => return Ok::<_, StoreError>(out),
                }
            }
        }
    };

    let (first, next) = store
        .list_jobs(JobFilter {
            limit: 3,
            ..JobFilter::default()
        })
        .await?;
    assert_eq!(
        first.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        newest_first[..3].to_vec()
    );
    assert!(next.is_some());
    let paged = all(JobFilter {
        limit: 3,
        ..JobFilter::default()
    })
    .await?;
    assert_eq!(paged, newest_first);
    let exact = all(JobFilter {
        limit: 7,
        ..JobFilter::default()
    })
    .await?;
    assert_eq!(exact, newest_first);

    let alpha = all(JobFilter {
        model: Some("alpha".into()),
        limit: 2,
        ..JobFilter::default()
    })
    .await?;
    assert_eq!(
        alpha,
        vec![ids[3].clone(), ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    let odd_beta = all(JobFilter {
        model: Some("beta".into()),
        tag: Some("odd".into()),
        ..JobFilter::default()
    })
    .await?;
    assert_eq!(odd_beta, vec![ids[5].clone()]);
    let canceled = all(JobFilter {
        status: Some(JobStatus::Canceled),
        ..JobFilter::default()
    })
    .await?;
    assert_eq!(canceled, vec![ids[1].clone()]);
    assert!(all(JobFilter {
        tag: Some("none".into()),
        ..JobFilter::default()
    })
    .await?
    .is_empty());

    let bad = store
        .list_jobs(JobFilter {
            cursor: Some("not a cursor".into()),
            ..JobFilter::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
    Ok(())
}

#[tokio::test]
async fn active_jobs_come_by_priority_then_age() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let low = store.create_job(new_job("m")).await?;
    let high = store
        .create_job(NewJob {
            priority: 10,
            ..new_job("m")
        })
        .await?;
    let low2 = store.create_job(new_job("m")).await?;
    let done_job = store.create_job(new_job("m")).await?;
    store.close_job(&done_job.id).await?;
    let order: Vec<String> = store.active_jobs().await?.into_iter().map(|j| j.id).collect();
    assert_eq!(order, vec![high.id, low.id, low2.id]);
    Ok(())
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

/// Issue 10, finding 8: a job created with its inputs appears whole or not at all.
#[tokio::test]
async fn create_with_inputs_is_all_or_nothing() -> TestResult {
    let dir = TempDir::new()?;
    let sqlite = SqliteStore::open(dir.path()).await?;
    let store: Arc<dyn Store> = Arc::new(sqlite.clone());
    let listed = |store: Arc<dyn Store>| async move {
        Ok::<_, StoreError>(store.list_jobs(JobFilter::default()).await?.0.len())
    };

    let mut dup = texts(0..5);
    dup.push(("k2".into(), InputValue::Text("again".into())));
    assert!(matches!(
        store.create_job_with_inputs(new_job("m"), dup, 100).await,
        Err(StoreError::DuplicateKey(k)) if k == "k2"
    ));
    assert!(matches!(
        store.create_job_with_inputs(new_job("m"), texts(0..11), 10).await,
        Err(StoreError::TooManyInputs { limit: 10 })
    ));
    sqlite.set_max_page_count(Some(1)).await?;
    let full = store
        .create_job_with_inputs(new_job("m"), big_texts(0..200), 1_000)
        .await;
    assert_eq!(full.err().and_then(|e| e.failure_class()), Some("disk_full"));
    sqlite.set_max_page_count(None).await?;
    assert_eq!(listed(store.clone()).await?, 0, "a failed create left a job behind");

    let created = store.create_job_with_inputs(new_job("m"), texts(0..50), 50).await?;
    assert_eq!(
        (created.total, created.closed, created.status),
        (50, true, JobStatus::Submitted)
    );
    assert_eq!(listed(store.clone()).await?, 1);
    let completions: Vec<Completion> = (0..50).map(|seq| done(&created, seq)).collect();
    store.record(completions).await?;
    assert_eq!(job(&store, &created.id).await?.status, JobStatus::Completed);
    Ok(())
}

/// Issue 10, finding 11: concurrent uploads cannot together take a job past its bound.
#[tokio::test]
async fn add_inputs_within_holds_under_concurrency() -> TestResult {
    let dir = TempDir::new()?;
    let store = open(dir.path()).await?;
    let created = store
        .create_job(NewJob {
            open: true,
            ..new_job("m")
        })
        .await?;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let id = created.id.clone();
        tasks.push(tokio::spawn(async move {
            store.add_inputs_within(&id, texts(t * 10..t * 10 + 10), 35).await
        }));
    }
    let (mut added, mut refused) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok(n) => added += n,
            Err(StoreError::TooManyInputs { limit: 35 }) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!((added, refused), (30, 5));
    assert_eq!(job(&store, &created.id).await?.total, 30);
    Ok(())
}
