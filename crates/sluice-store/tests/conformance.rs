//! The store contract (`crates/sluice-store/src/store.rs`, the crate documentation), checked on
//! both backends through `Arc<dyn Store>`: SQLite in a temporary folder, and PostgreSQL in a
//! database of its own on the test server (`sluice_store::test_util`: `SLUICE_TEST_POSTGRES`, else
//! 127.0.0.1:5432, else a throwaway server). Every scenario runs once per backend, as
//! `sqlite::NAME` and `postgres::NAME`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_store::{
    Claim, Completion, InputValue, ItemState, JobFilter, JobStatus, NewJob, NodeInfo, OutputSpec, OutputState,
    StoreError,
};

mod common;

use common::{closed_job, closed_job_of, done, job, new_job, texts, Backend, TestResult};

/// Runs each scenario on both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(&super::Backend::sqlite().await?).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> super::TestResult {
                    super::$name(&super::Backend::postgres().await?).await
                }
            )*
        }
    };
}

conformance!(
    lifecycle_counts_and_completion,
    closing_an_empty_job_completes_it,
    unknown_jobs_and_bad_arguments,
    duplicate_keys_are_rejected_atomically,
    pending_items_pages_with_a_cursor_and_skips_finished_items,
    recording_is_idempotent,
    results_cursor_returns_each_result_once_while_the_job_runs,
    cancel_marks_the_rest_and_ignores_late_results,
    timeout_marks_the_rest_and_expiry_is_found,
    a_job_where_nothing_succeeded_fails,
    reopening_resumes_exactly_the_unfinished_items,
    list_jobs_filters_and_pages_newest_first,
    active_jobs_come_by_priority_then_age,
    add_inputs_within_holds_under_concurrency,
    create_with_inputs_is_all_or_nothing,
    claims_lease_items_until_released,
    leases_expire_unless_renewed,
    claims_share_the_limit_by_priority,
    concurrent_claims_never_overlap,
    nodes_are_listed_with_their_leases,
    adding_work_sends_a_notice,
    source_jobs_take_inputs_from_the_claim_holder_only,
    ingest_claims_expire_are_released_and_move_to_one_node,
    concurrent_ingest_claims_have_one_winner,
    a_source_that_fails_part_way_fails_the_job_with_its_reason,
    job_outputs_are_written_by_the_claim_holder_only,
    export_claims_expire_are_released_and_keep_the_checkpoint,
    concurrent_export_claims_have_one_winner,
);

fn claim(node: &str, model: &str, limit: u32, lease_ms: u64) -> Claim {
    Claim {
        node: node.to_owned(),
        model: model.to_owned(),
        limit,
        lease_ms,
    }
}

fn seqs(rows: &[sluice_store::ItemRow]) -> Vec<i64> {
    rows.iter().map(|r| r.seq).collect()
}

const LONG: u64 = 600_000;

async fn create_with_inputs_is_all_or_nothing(b: &Backend) -> TestResult {
    let store = b.open().await?;
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
    assert!(matches!(
        store.create_job_with_inputs(new_job("m"), Vec::new(), 10).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store.list_jobs(JobFilter::default()).await?.0.len(),
        0,
        "a failed create left a job"
    );

    let created = store.create_job_with_inputs(new_job("m"), texts(0..50), 50).await?;
    assert_eq!(
        (created.total, created.closed, created.status),
        (50, true, JobStatus::Submitted)
    );
    let completions: Vec<Completion> = (0..50).map(|seq| done(&created, seq)).collect();
    assert_eq!(store.record(completions).await?, 50);
    assert_eq!(job(&store, &created.id).await?.status, JobStatus::Completed);
    Ok(())
}

async fn claims_lease_items_until_released(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let j = closed_job(&store, 10).await?;
    let other_model = closed_job_of(&store, "other", 3).await?;

    let a = store.claim(claim("a", "m", 4, LONG)).await?;
    assert_eq!(seqs(&a), vec![0, 1, 2, 3]);
    assert!(a.iter().all(|r| r.job_id == j.id));
    assert_eq!(a[0].input, InputValue::Text("input 0".into()));
    // A claim makes the job IN_PROGRESS.
    assert_eq!(job(&store, &j.id).await?.status, JobStatus::InProgress);
    let b_rows = store.claim(claim("b", "m", 100, LONG)).await?;
    assert_eq!(seqs(&b_rows), vec![4, 5, 6, 7, 8, 9]);
    assert!(store.claim(claim("c", "m", 100, LONG)).await?.is_empty());
    assert_eq!(job(&store, &other_model.id).await?.status, JobStatus::Submitted);

    // A lease does not decide who records: the first result for a pending item wins.
    assert_eq!(store.record(vec![done(&j, 0), done(&j, 5)]).await?, 2);
    // Releasing frees what is still pending: a's 1..=3, not 0.
    assert_eq!(store.release_leases("a").await?, 3);
    assert_eq!(store.release_leases("a").await?, 0);
    assert_eq!(seqs(&store.claim(claim("c", "m", 100, LONG)).await?), vec![1, 2, 3]);
    // Finished items are never claimed again, whatever their lease.
    assert_eq!(store.release_leases("b").await?, 5);
    assert_eq!(
        seqs(&store.claim(claim("c", "m", 100, LONG)).await?),
        vec![4, 6, 7, 8, 9]
    );
    // A canceled job's items are not claimable.
    store.cancel_job(&j.id).await?;
    assert_eq!(store.release_leases("c").await?, 0);
    assert!(store.claim(claim("d", "m", 100, LONG)).await?.is_empty());
    assert!(store.claim(claim("d", "m", 0, LONG)).await?.is_empty());
    Ok(())
}

async fn leases_expire_unless_renewed(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let j = closed_job(&store, 6).await?;
    assert_eq!(store.claim(claim("short", "m", 3, 300)).await?.len(), 3);
    assert_eq!(store.claim(claim("kept", "m", 3, 300)).await?.len(), 3);
    assert!(store.claim(claim("other", "m", 10, LONG)).await?.is_empty());
    // "kept" renews in time; "short" does not.
    assert_eq!(store.renew_leases("kept", LONG).await?, 3);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let taken = store.claim(claim("other", "m", 10, LONG)).await?;
    assert_eq!(seqs(&taken), vec![0, 1, 2]);
    // An expired lease that was taken over is not the old holder's any more.
    assert_eq!(store.renew_leases("short", LONG).await?, 0);
    // The slow first holder and the new one both finish item 0: recorded once.
    assert_eq!(store.record(vec![done(&j, 0)]).await?, 1);
    assert_eq!(store.record(vec![done(&j, 0)]).await?, 0);
    assert_eq!(job(&store, &j.id).await?.completed, 1);
    Ok(())
}

async fn claims_share_the_limit_by_priority(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let low = closed_job(&store, 100).await?;
    let high = store
        .create_job(NewJob {
            priority: 3,
            ..new_job("m")
        })
        .await?;
    store.add_inputs(&high.id, texts(0..100)).await?;
    let tiny = closed_job(&store, 1).await?;
    // Weights 1, 4 and 1 over 12 items; the tiny job's unused share goes to the others.
    let rows = store.claim(claim("n", "m", 12, LONG)).await?;
    let count = |id: &str| rows.iter().filter(|r| r.job_id == id).count();
    assert_eq!((count(&high.id), count(&low.id), count(&tiny.id)), (8, 3, 1));
    // Each job's items come in seq order.
    for id in [&high.id, &low.id] {
        let s: Vec<i64> = rows.iter().filter(|r| &r.job_id == id).map(|r| r.seq).collect();
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    }
    // The next claim goes on where this one stopped, across nodes.
    let next = store.claim(claim("other", "m", 10, LONG)).await?;
    let high_next: Vec<i64> = next.iter().filter(|r| r.job_id == high.id).map(|r| r.seq).collect();
    assert_eq!(high_next.first(), Some(&8));
    Ok(())
}

async fn concurrent_claims_never_overlap(b: &Backend) -> TestResult {
    let stores = [b.open().await?, b.open().await?];
    let n = 1_500usize;
    let j = closed_job(&stores[0], n).await?;
    let mut tasks = Vec::new();
    for t in 0..6 {
        let store = stores[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("node{t}");
            let mut got = Vec::new();
            loop {
                let rows = store.claim(claim(&node, "m", 7, LONG)).await?;
                if rows.is_empty() {
                    return Ok::<_, StoreError>(got);
                }
                // Record what was claimed, as a worker would, from the same task.
                let completions = rows
                    .iter()
                    .map(|r| Completion::done(r.job_id.clone(), r.seq, json!(r.seq), 0.0, 0.0))
                    .collect();
                store.record(completions).await?;
                got.extend(rows.into_iter().map(|r| r.seq));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (n, n), "an item was claimed twice or never");
    let finished = job(&stores[1], &j.id).await?;
    assert_eq!((finished.status, finished.completed), (JobStatus::Completed, n as u64));
    let done_seqs: BTreeSet<i64> = stores[1]
        .results(&j.id, None, 10_000)
        .await?
        .iter()
        .filter_map(|r| r.done_seq)
        .collect();
    assert_eq!(done_seqs, (0..n as i64).collect());
    Ok(())
}

async fn nodes_are_listed_with_their_leases(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let info = |id: &str, role: &str| NodeInfo {
        id: id.to_owned(),
        role: role.to_owned(),
        models: if role == "api" { vec![] } else { vec!["m".to_owned()] },
        address: Some("127.0.0.1:8080".into()),
        started_at: 1_700_000_000_000,
    };
    store.heartbeat(&info("w1", "worker")).await?;
    store.heartbeat(&info("api", "api")).await?;
    closed_job(&store, 5).await?;
    store.claim(claim("w1", "m", 3, LONG)).await?;
    let nodes = store.nodes(60_000).await?;
    assert_eq!(
        nodes.iter().map(|n| (n.info.id.as_str(), n.leases)).collect::<Vec<_>>(),
        vec![("api", 0), ("w1", 3)]
    );
    assert_eq!(nodes[1].info, info("w1", "worker"));
    assert!(nodes[1].heartbeat_at >= nodes[1].info.started_at);
    // A heartbeat rewrites the row; a removed node is gone; an old heartbeat is not live.
    let mut changed = info("w1", "all");
    changed.models.push("n".into());
    store.heartbeat(&changed).await?;
    store.remove_node("api").await?;
    let nodes = store.nodes(60_000).await?;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].info, changed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.nodes(1).await?.is_empty());
    Ok(())
}

async fn adding_work_sends_a_notice(b: &Backend) -> TestResult {
    let store = b.open().await?;
    // Another instance hears it where notices cross processes, this one everywhere.
    let listener = if b.notices_cross_processes() {
        b.open().await?
    } else {
        store.clone()
    };
    let mut notices = listener.work_notices();
    let created = store.create_job(new_job("noticed")).await?;
    // The listening connection may still be starting: add until a notice for the model arrives.
    for round in 0..20 {
        store
            .add_inputs(&created.id, vec![(format!("k{round}"), InputValue::Text("x".into()))])
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(model)) = tokio::time::timeout_at(deadline, notices.recv()).await {
            if model == "noticed" {
                return Ok(());
            }
        }
    }
    Err("no work notice for the model within 10 s".into())
}
async fn lifecycle_counts_and_completion(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let created = store
        .create_job(NewJob {
            model: "embed".into(),
            version: Some("v2".into()),
            priority: 5,
            tags: vec!["nightly".into(), "a".into(), "nightly".into()],
            timeout_ms: Some(60_000),
            open: true,
            source: Some("test".into()),
            source_options: None,
            output: None,
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

async fn closing_an_empty_job_completes_it(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let created = store.create_job(new_job("m")).await?;
    let j = store.close_job(&created.id).await?;
    assert_eq!((j.status, j.total), (JobStatus::Completed, 0));
    assert!(j.finished_at.is_some());
    Ok(())
}

async fn unknown_jobs_and_bad_arguments(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn duplicate_keys_are_rejected_atomically(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn pending_items_pages_with_a_cursor_and_skips_finished_items(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn recording_is_idempotent(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn results_cursor_returns_each_result_once_while_the_job_runs(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn cancel_marks_the_rest_and_ignores_late_results(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn timeout_marks_the_rest_and_expiry_is_found(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn a_job_where_nothing_succeeded_fails(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn reopening_resumes_exactly_the_unfinished_items(b: &Backend) -> TestResult {
    let (id, finished) = {
        let store = b.open().await?;
        let j = closed_job(&store, 50).await?;
        let finished: BTreeSet<i64> = (0..50).filter(|s| s % 3 == 0 || *s > 40).collect();
        store.record(finished.iter().map(|s| done(&j, *s)).collect()).await?;
        // Dropped without closing the pools, as a crash would leave it.
        (j.id, finished)
    };

    let store = b.open().await?;
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

async fn list_jobs_filters_and_pages_newest_first(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

async fn active_jobs_come_by_priority_then_age(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

/// Issue 10, finding 11: concurrent uploads cannot together take a job past its bound.
async fn add_inputs_within_holds_under_concurrency(b: &Backend) -> TestResult {
    let store = b.open().await?;
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

fn source_job(source: &str) -> NewJob {
    NewJob {
        source: Some(source.to_owned()),
        ..new_job("m")
    }
}

/// Issue 12: only the node holding a source job's ingest claim adds its inputs, each chunk right
/// after the inputs already stored, and settles it.
async fn source_jobs_take_inputs_from_the_claim_holder_only(b: &Backend) -> TestResult {
    let store = b.open().await?;
    assert!(matches!(
        store.create_source_job(new_job("m"), "a", LONG).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .create_source_job(
                NewJob {
                    open: true,
                    ..source_job("/s")
                },
                "a",
                LONG
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    let j = store.create_source_job(source_job("/data/in.jsonl"), "a", LONG).await?;
    assert_eq!((j.total, j.closed, j.error.clone()), (0, false, None));
    assert_eq!(j.source.as_deref(), Some("/data/in.jsonl"));
    assert_eq!(j.source_options, None);
    // How the source is read (a video's sampling) is kept as given, for a resumed ingestion.
    let v = store
        .create_source_job(
            NewJob {
                source_options: Some(r#"{"fps":2.0}"#.into()),
                ..source_job("/data/footage")
            },
            "a",
            LONG,
        )
        .await?;
    assert_eq!(
        job(&store, &v.id).await?.source_options.as_deref(),
        Some(r#"{"fps":2.0}"#)
    );
    store.cancel_job(&v.id).await?;

    // Held by "a": nobody else claims it or adds to it; "a" renews it.
    assert!(store.claim_ingest(&j.id, "b", LONG).await?.is_none());
    assert!(!store.add_ingested(&j.id, "b", 0, texts(0..3), 100).await?);
    assert!(store.claim_ingest(&j.id, "a", LONG).await?.is_some());
    assert!(store.ingests_to_resume(None).await?.is_empty());
    assert!(store.ingests_to_resume(Some("b")).await?.is_empty());
    assert_eq!(store.ingests_to_resume(Some("a")).await?, vec![j.id.clone()]);

    // Chunks go exactly after the stored inputs.
    assert!(store.add_ingested(&j.id, "a", 0, texts(0..3), 100).await?);
    assert!(
        !store.add_ingested(&j.id, "a", 0, texts(3..6), 100).await?,
        "at 0 again"
    );
    assert!(
        !store.add_ingested(&j.id, "a", 5, texts(3..6), 100).await?,
        "past the end"
    );
    assert!(store.add_ingested(&j.id, "a", 3, texts(3..6), 100).await?);
    assert!(matches!(
        store.add_ingested(&j.id, "a", 6, texts(0..1), 100).await,
        Err(StoreError::DuplicateKey(k)) if k == "k0"
    ));
    assert!(matches!(
        store.add_ingested(&j.id, "a", 6, texts(6..10), 8).await,
        Err(StoreError::TooManyInputs { limit: 8 })
    ));
    let now = job(&store, &j.id).await?;
    assert_eq!((now.total, now.closed), (6, false));
    let pending = store.pending_items(&j.id, None, 100).await?;
    let keys: Vec<&str> = pending.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(seqs(&pending), vec![0, 1, 2, 3, 4, 5]);

    // Only the holder settles it; settling twice changes nothing.
    assert!(store.finish_ingest(&j.id, "b", None).await?.is_none());
    assert!(!job(&store, &j.id).await?.closed);
    let closed = store
        .finish_ingest(&j.id, "a", None)
        .await?
        .ok_or("a holds the claim")?;
    assert_eq!((closed.closed, closed.error.clone()), (true, None));
    assert_eq!(
        store.finish_ingest(&j.id, "b", Some("late")).await?,
        Some(closed.clone())
    );
    assert!(
        store.claim_ingest(&j.id, "a", LONG).await?.is_none(),
        "a closed job has no claim"
    );
    assert!(store.ingests_to_resume(Some("a")).await?.is_empty());
    assert!(matches!(
        store.add_ingested(&j.id, "a", 6, texts(6..7), 100).await,
        Err(StoreError::Conflict(_))
    ));
    let completions: Vec<Completion> = (0..6).map(|seq| done(&closed, seq)).collect();
    assert_eq!(store.record(completions).await?, 6);
    assert_eq!(job(&store, &j.id).await?.status, JobStatus::Completed);

    // Jobs that are not source jobs have no claim to take.
    let plain = closed_job(&store, 2).await?;
    let open = store
        .create_job(NewJob {
            open: true,
            ..new_job("m")
        })
        .await?;
    for id in [&plain.id, &open.id] {
        assert!(store.claim_ingest(id, "a", LONG).await?.is_none());
        assert!(!store.add_ingested(id, "a", 0, texts(10..11), 100).await?);
    }
    assert_eq!(store.finish_ingest(&plain.id, "a", None).await?, Some(plain.clone()));
    assert_eq!(store.finish_ingest(&open.id, "a", None).await?, None);
    assert!(
        !job(&store, &open.id).await?.closed,
        "an open job is not settled as a source job"
    );
    assert!(matches!(
        store.claim_ingest("nope", "a", LONG).await,
        Err(StoreError::NotFound(_))
    ));
    // A canceled source job is no longer claimable.
    let canceled = store.create_source_job(source_job("/s"), "a", 1).await?;
    store.cancel_job(&canceled.id).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.ingests_to_resume(Some("a")).await?.is_empty());
    assert!(store.claim_ingest(&canceled.id, "a", LONG).await?.is_none());
    Ok(())
}

/// Issue 12: a dead holder's claim expires and goes to another node, and a released one at once;
/// the old holder can then add nothing.
async fn ingest_claims_expire_are_released_and_move_to_one_node(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let j = store.create_source_job(source_job("/s"), "a", 300).await?;
    assert!(store.add_ingested(&j.id, "a", 0, texts(0..2), 100).await?);
    assert!(store.claim_ingest(&j.id, "b", LONG).await?.is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Expired: any node may resume it.
    assert_eq!(store.ingests_to_resume(None).await?, vec![j.id.clone()]);
    let taken = store
        .claim_ingest(&j.id, "b", LONG)
        .await?
        .ok_or("b takes the expired claim")?;
    assert_eq!(taken.total, 2, "b goes on after the inputs stored");
    assert!(store.ingests_to_resume(None).await?.is_empty());
    assert!(store.claim_ingest(&j.id, "a", LONG).await?.is_none(), "a lost it");
    assert!(!store.add_ingested(&j.id, "a", 2, texts(2..4), 100).await?);
    assert!(store.finish_ingest(&j.id, "a", Some("a gives up")).await?.is_none());
    assert!(store.add_ingested(&j.id, "b", 2, texts(2..4), 100).await?);

    // A graceful stop gives the claim up at once.
    assert!(!store.release_ingest(&j.id, "a").await?);
    assert!(store.release_ingest(&j.id, "b").await?);
    assert_eq!(store.ingests_to_resume(None).await?, vec![j.id.clone()]);
    // The other store instance (another process or node) sees and takes it.
    let other = b.open().await?;
    let resumed = other
        .claim_ingest(&j.id, "c", LONG)
        .await?
        .ok_or("c claims the released job")?;
    assert_eq!(resumed.total, 4);
    assert!(!store.add_ingested(&j.id, "b", 4, texts(4..5), 100).await?);
    assert!(other.add_ingested(&j.id, "c", 4, texts(4..5), 100).await?);
    let closed = other.finish_ingest(&j.id, "c", None).await?.ok_or("c holds it")?;
    assert_eq!((closed.total, closed.closed), (5, true));
    Ok(())
}

/// Issue 12: of many nodes claiming one expired ingest claim at once, exactly one gets it.
async fn concurrent_ingest_claims_have_one_winner(b: &Backend) -> TestResult {
    let first = b.open().await?;
    let j = first.create_source_job(source_job("/s"), "dead", 1).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        // Half on the same store, half on stores of their own, as other nodes would be.
        let store = if n % 2 == 0 { first.clone() } else { b.open().await? };
        let id = j.id.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{n}");
            let claimed = store.claim_ingest(&id, &node, LONG).await?;
            Ok::<_, StoreError>(claimed.map(|_| node))
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(node) = task.await?? {
            winners.push(node);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let winner = &winners[0];
    for n in 0..8 {
        let node = format!("node-{n}");
        let added = first.add_ingested(&j.id, &node, 0, texts(0..1), 100).await?;
        assert_eq!(added, &node == winner, "{node}");
    }
    Ok(())
}

/// Issue 12: a source that fails part-way keeps its reason on the job; the inputs read before
/// still run, and the job ends FAILED (with the reason) once they have.
async fn a_source_that_fails_part_way_fails_the_job_with_its_reason(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let j = store.create_source_job(source_job("/s"), "a", LONG).await?;
    assert!(store.add_ingested(&j.id, "a", 0, texts(0..3), 100).await?);
    let reason = "the source failed after 3 inputs: cannot read /s: connection reset";
    let settled = store
        .finish_ingest(&j.id, "a", Some(reason))
        .await?
        .ok_or("a holds it")?;
    assert_eq!(settled.error.as_deref(), Some(reason));
    assert!(settled.closed && !settled.status.is_terminal(), "{settled:?}");
    assert_eq!(settled.pending, 3);
    // The stored inputs still run, and their results are kept.
    assert_eq!(store.claim(claim("w", "m", 10, LONG)).await?.len(), 3);
    let completions: Vec<Completion> = (0..3).map(|seq| done(&settled, seq)).collect();
    assert_eq!(store.record(completions).await?, 3);
    let ended = job(&store, &j.id).await?;
    assert_eq!(ended.status, JobStatus::Failed, "{ended:?}");
    assert_eq!((ended.completed, ended.error.as_deref()), (3, Some(reason)));
    assert_eq!(store.results(&j.id, None, 10).await?.len(), 3);
    assert_eq!(
        store.list_jobs(JobFilter::default()).await?.0[0].error.as_deref(),
        Some(reason)
    );

    // With nothing pending it fails at once; a long reason is kept bounded.
    let empty = store.create_source_job(source_job("/s"), "a", LONG).await?;
    let long = "é".repeat(5000);
    let failed = store
        .finish_ingest(&empty.id, "a", Some(&long))
        .await?
        .ok_or("a holds it")?;
    assert_eq!(failed.status, JobStatus::Failed);
    let kept = failed.error.ok_or("no error kept")?;
    assert!(kept.len() <= 2010 && kept.starts_with("éé"), "{} bytes", kept.len());

    // Jobs without one have no error.
    let plain = closed_job(&store, 1).await?;
    assert_eq!(plain.error, None);
    Ok(())
}

fn output_job(uri: &str) -> NewJob {
    NewJob {
        output: Some(OutputSpec {
            uri: uri.to_owned(),
            format: "parquet".to_owned(),
        }),
        ..new_job("m")
    }
}

/// Issue 12: a job's output is kept with the job; only the node holding its export claim saves
/// checkpoints and finishes it; a finished output is claimed no more.
async fn job_outputs_are_written_by_the_claim_holder_only(b: &Backend) -> TestResult {
    let store = b.open().await?;
    assert!(matches!(
        store.create_job(output_job(" ")).await,
        Err(StoreError::Invalid(_))
    ));
    let plain = store.create_job(new_job("m")).await?;
    assert_eq!(plain.output, None);
    assert!(store.claim_export(&plain.id, "a", LONG).await?.is_none(), "no output");
    assert!(matches!(
        store.claim_export("nope", "a", LONG).await,
        Err(StoreError::NotFound(_))
    ));

    let j = store
        .create_job_with_inputs(output_job("s3://b/out/"), texts(0..3), 100)
        .await?;
    let out = j.output.clone().ok_or("the job has its output")?;
    assert_eq!((out.uri.as_str(), out.format.as_str()), ("s3://b/out/", "parquet"));
    assert_eq!((out.state, out.rows, out.error), (OutputState::Writing, 0, None));
    // Never claimed: every node may take it.
    assert_eq!(store.exports_to_resume(None).await?, vec![j.id.clone()]);

    let claim = store.claim_export(&j.id, "a", LONG).await?.ok_or("a claims it")?;
    assert_eq!((claim.job.id.as_str(), claim.checkpoint), (j.id.as_str(), None));
    assert!(store.claim_export(&j.id, "b", LONG).await?.is_none(), "a holds it");
    assert!(store.exports_to_resume(None).await?.is_empty());
    assert!(store.exports_to_resume(Some("b")).await?.is_empty());
    assert_eq!(store.exports_to_resume(Some("a")).await?, vec![j.id.clone()]);

    // Checkpoints from the holder only; a renewal hands the last one back.
    assert!(!store.save_export(&j.id, "b", "{\"by\":\"b\"}", 1).await?);
    assert!(store.save_export(&j.id, "a", "{\"cursor\":1}", 2).await?);
    let renewed = store.claim_export(&j.id, "a", LONG).await?.ok_or("a renews")?;
    assert_eq!(renewed.checkpoint.as_deref(), Some("{\"cursor\":1}"));
    assert_eq!(job(&store, &j.id).await?.output.map(|o| o.rows), Some(2));

    // Finished by the holder only, once.
    assert!(!store.finish_export(&j.id, "b", None).await?);
    assert!(store.finish_export(&j.id, "a", None).await?);
    assert!(!store.finish_export(&j.id, "a", Some("again")).await?);
    let done = job(&store, &j.id).await?.output.ok_or("still there")?;
    assert_eq!((done.state, done.rows, done.error), (OutputState::Written, 2, None));
    assert!(store.claim_export(&j.id, "a", LONG).await?.is_none(), "finished");
    assert!(!store.save_export(&j.id, "a", "{}", 3).await?);
    assert!(store.exports_to_resume(Some("a")).await?.is_empty());
    assert_eq!(
        job(&store, &j.id).await?.status,
        JobStatus::Submitted,
        "the job itself is unchanged"
    );
    Ok(())
}

/// Issue 12: an export claim that expires or is released moves to another node with the last
/// checkpoint; the old holder can save nothing afterwards; a failed output keeps its reason.
async fn export_claims_expire_are_released_and_keep_the_checkpoint(b: &Backend) -> TestResult {
    let store = b.open().await?;
    let j = store.create_job(output_job("/out")).await?;
    assert!(store.claim_export(&j.id, "a", 300).await?.is_some());
    assert!(store.save_export(&j.id, "a", "ck-a", 5).await?);
    assert!(store.claim_export(&j.id, "b", LONG).await?.is_none());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.exports_to_resume(None).await?, vec![j.id.clone()]);
    let taken = store.claim_export(&j.id, "b", LONG).await?.ok_or("b takes it")?;
    assert_eq!(taken.checkpoint.as_deref(), Some("ck-a"));
    assert!(store.claim_export(&j.id, "a", LONG).await?.is_none(), "a lost it");
    assert!(!store.save_export(&j.id, "a", "late", 6).await?);
    assert!(!store.finish_export(&j.id, "a", None).await?);

    // A graceful stop gives it up at once; another store instance takes it.
    assert!(!store.release_export(&j.id, "a").await?);
    assert!(store.release_export(&j.id, "b").await?);
    assert_eq!(store.exports_to_resume(None).await?, vec![j.id.clone()]);
    let other = b.open().await?;
    let resumed = other.claim_export(&j.id, "c", LONG).await?.ok_or("c claims it")?;
    assert_eq!(resumed.checkpoint.as_deref(), Some("ck-a"));
    assert!(!store.save_export(&j.id, "b", "late", 6).await?);
    assert!(other.finish_export(&j.id, "c", Some("the bucket is gone")).await?);
    let failed = job(&store, &j.id).await?.output.ok_or("output")?;
    assert_eq!(failed.state, OutputState::Failed);
    assert_eq!(failed.error.as_deref(), Some("the bucket is gone"));
    assert_eq!(failed.rows, 5);
    assert!(other.exports_to_resume(None).await?.is_empty());
    Ok(())
}

/// Issue 12: of many nodes claiming one job's output at once, exactly one gets it.
async fn concurrent_export_claims_have_one_winner(b: &Backend) -> TestResult {
    let first = b.open().await?;
    let j = first.create_job(output_job("/out")).await?;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let store = if n % 2 == 0 { first.clone() } else { b.open().await? };
        let id = j.id.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{n}");
            let claimed = store.claim_export(&id, &node, LONG).await?;
            Ok::<_, StoreError>(claimed.map(|_| node))
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(node) = task.await?? {
            winners.push(node);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    for n in 0..8 {
        let node = format!("node-{n}");
        let saved = first.save_export(&j.id, &node, "ck", 1).await?;
        assert_eq!(saved, node == winners[0], "{node}");
    }
    Ok(())
}
