//! A model-based property test of the store: random sequences of operations (add inputs, close,
//! claim, release, record, cancel) run against each backend and against a small in-memory model of
//! the contract, and after every step the outcome, the job's counters and status, its pending items
//! and its results (with their `done_seq`s) must be the model's. The same sequences run on SQLite
//! and on PostgreSQL, so the two backends keep one contract.

use std::collections::HashSet;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use sluice_store::{Claim, Completion, InputValue, ItemState, JobStatus, NewJob, Store, StoreError};

mod common;

use common::Backend;

/// One operation of a sequence.
#[derive(Debug, Clone)]
enum Op {
    /// Adds inputs with these key numbers (duplicates allowed: the store must refuse the call).
    Add(Vec<u8>),
    Close,
    Claim {
        node: u8,
        limit: u8,
    },
    Release {
        node: u8,
    },
    /// Completions for these seqs (some may not exist), each done or failed.
    Record(Vec<(u8, bool)>),
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0u8..40, 1..6).prop_map(Op::Add),
        1 => Just(Op::Close),
        3 => (0u8..3, 0u8..6).prop_map(|(node, limit)| Op::Claim { node, limit }),
        1 => (0u8..3).prop_map(|node| Op::Release { node }),
        3 => prop::collection::vec((0u8..24, any::<bool>()), 1..6).prop_map(Op::Record),
        1 => Just(Op::Cancel),
    ]
}

/// An item as the model keeps it.
#[derive(Debug, Clone)]
struct Item {
    key: String,
    state: ItemState,
    lease: Option<u8>,
    done_seq: Option<i64>,
}

/// The contract, for one job, in memory.
#[derive(Debug)]
struct Model {
    items: Vec<Item>,
    closed: bool,
    status: JobStatus,
    finished: i64,
}

/// What an operation returned, comparable between the model and a store.
#[derive(Debug, PartialEq)]
enum Outcome {
    Count(u64),
    Seqs(Vec<i64>),
    Refused(&'static str),
    Done,
}

fn refused(e: &StoreError) -> Outcome {
    Outcome::Refused(match e {
        StoreError::DuplicateKey(_) => "duplicate",
        StoreError::Conflict(_) => "conflict",
        StoreError::NotFound(_) => "not found",
        StoreError::Invalid(_) => "invalid",
        _ => "other",
    })
}

impl Model {
    fn new() -> Model {
        Model {
            items: Vec::new(),
            closed: false,
            status: JobStatus::Submitted,
            finished: 0,
        }
    }

    fn pending(&self) -> usize {
        self.items.iter().filter(|i| i.state == ItemState::Pending).count()
    }

    fn finish_if_done(&mut self) {
        if self.closed && !self.status.is_terminal() && self.pending() == 0 {
            let completed = self.items.iter().any(|i| i.state == ItemState::Done);
            self.status = if !completed && !self.items.is_empty() {
                JobStatus::Failed
            } else {
                JobStatus::Completed
            };
        }
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Add(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| format!("k{k}")).collect();
                let unique: HashSet<&String> = keys.iter().collect();
                if unique.len() < keys.len() {
                    return Outcome::Refused("duplicate");
                }
                if self.status.is_terminal() || self.closed {
                    return Outcome::Refused("conflict");
                }
                if keys.iter().any(|k| self.items.iter().any(|i| &i.key == k)) {
                    return Outcome::Refused("duplicate");
                }
                let n = keys.len() as u64;
                self.items.extend(keys.into_iter().map(|key| Item {
                    key,
                    state: ItemState::Pending,
                    lease: None,
                    done_seq: None,
                }));
                Outcome::Count(n)
            }
            Op::Close => {
                if !self.closed && !self.status.is_terminal() {
                    self.closed = true;
                    self.finish_if_done();
                }
                Outcome::Done
            }
            Op::Claim { node, limit } => {
                let mut got = Vec::new();
                if !self.status.is_terminal() {
                    for (seq, item) in self.items.iter_mut().enumerate() {
                        if got.len() == usize::from(*limit) {
                            break;
                        }
                        if item.state == ItemState::Pending && item.lease.is_none() {
                            item.lease = Some(*node);
                            got.push(seq as i64);
                        }
                    }
                }
                if !got.is_empty() && self.status == JobStatus::Submitted {
                    self.status = JobStatus::InProgress;
                }
                Outcome::Seqs(got)
            }
            Op::Release { node } => {
                let mut n = 0;
                for item in &mut self.items {
                    if item.state == ItemState::Pending && item.lease == Some(*node) {
                        item.lease = None;
                        n += 1;
                    }
                }
                Outcome::Count(n)
            }
            Op::Record(completions) => {
                let mut n = 0;
                for (seq, ok) in completions {
                    let Some(item) = self.items.get_mut(usize::from(*seq)) else {
                        continue;
                    };
                    if item.state != ItemState::Pending {
                        continue;
                    }
                    item.state = if *ok { ItemState::Done } else { ItemState::Failed };
                    item.done_seq = Some(self.finished);
                    self.finished += 1;
                    n += 1;
                }
                if n > 0 && self.status == JobStatus::Submitted {
                    self.status = JobStatus::InProgress;
                }
                self.finish_if_done();
                Outcome::Count(n)
            }
            Op::Cancel => {
                if !self.status.is_terminal() {
                    for item in &mut self.items {
                        if item.state == ItemState::Pending {
                            item.state = ItemState::Canceled;
                            item.done_seq = Some(self.finished);
                            self.finished += 1;
                        }
                    }
                    self.status = JobStatus::Canceled;
                    self.closed = true;
                }
                Outcome::Done
            }
        }
    }
}

/// Runs `op` on the store, for the job `job_id` of `model` (nodes are named after the model, so
/// that cases sharing a store never share a node).
async fn run(store: &Arc<dyn Store>, model: &str, job_id: &str, op: &Op) -> Result<Outcome, StoreError> {
    let outcome = match op {
        Op::Add(keys) => {
            let inputs = keys
                .iter()
                .map(|k| (format!("k{k}"), InputValue::Text(format!("input {k}"))))
                .collect();
            match store.add_inputs(job_id, inputs).await {
                Ok(n) => Outcome::Count(n),
                Err(e) => refused(&e),
            }
        }
        Op::Close => {
            store.close_job(job_id).await?;
            Outcome::Done
        }
        Op::Claim { node, limit } => {
            let rows = store
                .claim(Claim {
                    node: format!("{model}/node{node}"),
                    model: model.to_owned(),
                    limit: u32::from(*limit),
                    lease_ms: 600_000,
                })
                .await?;
            Outcome::Seqs(rows.iter().map(|r| r.seq).collect())
        }
        Op::Release { node } => Outcome::Count(store.release_leases(&format!("{model}/node{node}")).await?),
        Op::Record(completions) => {
            let completions = completions
                .iter()
                .map(|&(seq, ok)| {
                    if ok {
                        Completion::done(job_id, i64::from(seq), json!({ "seq": seq }), 1.0, 1.0)
                    } else {
                        Completion::failed(job_id, i64::from(seq), "e", "failed", 1.0, 1.0)
                    }
                })
                .collect();
            Outcome::Count(store.record(completions).await?)
        }
        Op::Cancel => {
            store.cancel_job(job_id).await?;
            Outcome::Done
        }
    };
    Ok(outcome)
}

/// One case: a fresh job of a model of its own, the operations, a comparison after each.
async fn check(store: &Arc<dyn Store>, case: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let fail = |e: StoreError| TestCaseError::fail(e.to_string());
    let model_name = format!("model-{case}-{}", uuid_like());
    let created = store
        .create_job(NewJob {
            model: model_name.clone(),
            open: true,
            ..NewJob::default()
        })
        .await
        .map_err(fail)?;
    let mut model = Model::new();
    for (step, op) in ops.iter().enumerate() {
        let expected = model.apply(op);
        let got = run(store, &model_name, &created.id, op).await.map_err(fail)?;
        prop_assert_eq!(&got, &expected, "step {}: {:?}", step, op);

        let job = store
            .get_job(&created.id)
            .await
            .map_err(fail)?
            .ok_or_else(|| TestCaseError::fail("job vanished"))?;
        let count = |state: ItemState| model.items.iter().filter(|i| i.state == state).count() as u64;
        prop_assert_eq!(job.status, model.status, "status after step {}: {:?}", step, op);
        prop_assert_eq!(job.closed, model.closed, "closed after step {}", step);
        prop_assert_eq!(
            (job.total, job.pending, job.completed, job.failed, job.canceled),
            (
                model.items.len() as u64,
                model.pending() as u64,
                count(ItemState::Done),
                count(ItemState::Failed),
                count(ItemState::Canceled)
            ),
            "counters after step {}: {:?}",
            step,
            op
        );
        let pending: Vec<i64> = store
            .pending_items(&created.id, None, 1_000)
            .await
            .map_err(fail)?
            .iter()
            .map(|r| r.seq)
            .collect();
        let model_pending: Vec<i64> = (0..model.items.len() as i64)
            .filter(|&s| model.items[s as usize].state == ItemState::Pending)
            .collect();
        prop_assert_eq!(pending, model_pending, "pending items after step {}", step);
        let results: Vec<(String, ItemState, Option<i64>)> = store
            .results(&created.id, None, 1_000)
            .await
            .map_err(fail)?
            .into_iter()
            .map(|r| (r.key, r.state, r.done_seq))
            .collect();
        let mut model_results: Vec<(String, ItemState, Option<i64>)> = model
            .items
            .iter()
            .filter(|i| i.done_seq.is_some())
            .map(|i| (i.key.clone(), i.state, i.done_seq))
            .collect();
        model_results.sort_by_key(|r| r.2);
        prop_assert_eq!(results, model_results, "results after step {}", step);
    }
    Ok(())
}

/// A short unique suffix, so that cases on one database never share a model.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `cases` random sequences on one store of the backend that `backend` makes.
async fn backend_for(postgres: bool) -> Result<Backend, Box<dyn std::error::Error>> {
    if postgres {
        Backend::postgres().await
    } else {
        Backend::sqlite().await
    }
}

fn property(postgres: bool, cases: u32) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let backend = runtime.block_on(backend_for(postgres))?;
    let store = runtime.block_on(backend.open())?;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&prop::collection::vec(op(), 1..30), |ops| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(check(&store, n, &ops))
    });
    drop(store);
    drop(backend);
    result.map_err(|e| format!("{e}").into())
}

#[test]
fn random_operations_match_the_model_on_sqlite() -> Result<(), Box<dyn std::error::Error>> {
    property(false, 128)
}

#[test]
fn random_operations_match_the_model_on_postgres() -> Result<(), Box<dyn std::error::Error>> {
    property(true, 96)
}
