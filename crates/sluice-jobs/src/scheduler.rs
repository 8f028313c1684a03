//! Feeding the engine from the store, and results back into it.
//!
//! Per model, one **feeder** task streams pending items of that model's active
//! jobs from the store into the model, a page at a time, and one **writer**
//! task records completions in batches. The feeder keeps a bounded window of
//! items in flight per model (the batch window when the model groups by
//! length, plus a few batches), so the engine's queues stay short: a job
//! submitted behind a ten-million-item job gets its items in after at most
//! that window, not after the backlog.
//!
//! Fairness: jobs on the same model share it by weighted round robin; a job
//! of priority `p` sends `1 + p` items per turn (priority clamped to 0..=9).
//!
//! Durability: nothing is marked "running" in the store. The feeder keeps a
//! cursor per job in memory; after a crash it starts again from the first
//! item without a result. Results are recorded only for items still pending,
//! so an item that ran twice across a crash still has exactly one result.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use sluice_core::{Input, ItemErrorKind, ItemId};
use sluice_engine::{CancelFlag, Completion, Model, Reply, SubmitOptions};
use sluice_store::{Completion as Recorded, InputValue, ItemRow, ItemState, Job, Store};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Batches per model instance kept in flight from bulk jobs.
    pub in_flight_batches: usize,
    /// Items read from the store per page.
    pub page_size: u32,
    /// Most completions recorded in one transaction.
    pub record_batch: usize,
    /// Longest a completion waits before it is recorded.
    pub record_delay: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            in_flight_batches: 3,
            page_size: 256,
            record_batch: 500,
            record_delay: Duration::from_millis(50),
        }
    }
}

/// Feeds every ready model from the store.
pub struct Scheduler {
    store: Arc<dyn Store>,
    wake: HashMap<String, Arc<Notify>>,
    cancels: Mutex<HashMap<String, CancelFlag>>,
    stopping: Arc<AtomicBool>,
    feeders: Mutex<Vec<JoinHandle<()>>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts a feeder and a writer per ready model, and the timeout reaper.
    pub fn start(store: Arc<dyn Store>, registry: &Registry, cfg: SchedulerConfig) -> Arc<Scheduler> {
        let wake: HashMap<String, Arc<Notify>> = registry
            .ready()
            .map(|m| (m.spec().name.clone(), Arc::new(Notify::new())))
            .collect();
        let sched = Arc::new(Scheduler {
            store: store.clone(),
            wake,
            cancels: Mutex::new(HashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            feeders: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
        });
        let mut feeders = Vec::new();
        let mut writers = Vec::new();
        for model in registry.ready() {
            let name = model.spec().name.clone();
            let spec = model.spec();
            // Length grouping needs the whole batch window to choose from; on
            // top of it, a few batches per instance keep every instance busy.
            let choice = if spec.group_by_length {
                spec.batch_window.unwrap_or(16 * spec.max_batch_size)
            } else {
                0
            };
            let window = choice + cfg.in_flight_batches.max(1) * spec.max_batch_size * spec.instances;
            let permits = Arc::new(Semaphore::new(window));
            let (tx, rx) = mpsc::channel::<Completion>(window.max(64) * 2);
            writers.push(tokio::spawn(writer(store.clone(), rx, permits.clone(), cfg.clone())));
            let wake = sched.wake.get(&name).cloned().unwrap_or_default();
            feeders.push(tokio::spawn(feeder(
                sched.clone(),
                model.clone(),
                tx,
                permits,
                wake,
                cfg.clone(),
            )));
        }
        if let Ok(mut f) = sched.feeders.lock() {
            f.extend(feeders);
            f.push(tokio::spawn(reaper(sched.clone())));
        }
        if let Ok(mut w) = sched.writers.lock() {
            w.extend(writers);
        }
        sched
    }

    /// Tells the feeder of `model` that a job has new inputs.
    pub fn notify(&self, model: &str) {
        if let Some(n) = self.wake.get(model) {
            n.notify_one();
        }
    }

    fn flag(&self, job: &str) -> CancelFlag {
        let mut map = self.cancels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(job.to_string()).or_default().clone()
    }

    fn forget(&self, job: &str) {
        let mut map = self.cancels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(job);
    }

    /// Drops the not-yet-run items of a job from the engine (after the store
    /// marked it canceled or timed out).
    pub fn cancel(&self, job: &Job) {
        self.flag(&job.id).cancel();
        self.notify(&job.model);
    }

    /// Stops feeding the models at once (the first step of a shutdown):
    /// nothing more is read from the store; items already in the engine run
    /// and are recorded.
    pub fn stop_feeding(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for n in self.wake.values() {
            n.notify_one();
        }
        if let Ok(feeders) = self.feeders.lock() {
            for f in feeders.iter() {
                f.abort();
            }
        }
    }

    /// Whether [`Scheduler::stop_feeding`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops feeding, lets running batches finish and records their results,
    /// for at most `grace`. Items not yet run stay pending in the store and
    /// run after a restart.
    pub async fn shutdown(&self, registry: &Registry, grace: Duration) {
        self.stop_feeding();
        let feeders: Vec<_> = self
            .feeders
            .lock()
            .map(|mut f| f.drain(..).collect())
            .unwrap_or_default();
        for f in feeders {
            let _ = f.await;
        }
        for m in registry.ready() {
            m.close();
        }
        let drain = async {
            for m in registry.ready() {
                m.join().await;
            }
            let writers: Vec<_> = self
                .writers
                .lock()
                .map(|mut w| w.drain(..).collect())
                .unwrap_or_default();
            for w in writers {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!("shutdown grace period over; unfinished items stay pending and run after restart");
        }
    }
}

struct Cursor {
    job: Job,
    /// The job's id as items carry it (shared by all of them).
    tag: Arc<str>,
    after: Option<i64>,
    buf: VecDeque<ItemRow>,
    exhausted: bool,
    started: bool,
    cancel: CancelFlag,
}

fn weight(job: &Job) -> usize {
    1 + usize::try_from(job.priority.clamp(0, 9)).unwrap_or(0)
}

/// The engine input for a stored value, or the message of an input that
/// could not be read (it fails without running).
fn to_input(v: InputValue) -> Result<Input, String> {
    match v {
        InputValue::Text(t) => Ok(Input::Text(t)),
        InputValue::Bytes(b) => Ok(Input::Bytes(b)),
        InputValue::Json(j) => Ok(Input::Json(j)),
        InputValue::Invalid(message) => Err(message),
    }
}

async fn feeder(
    sched: Arc<Scheduler>,
    model: Model,
    tx: mpsc::Sender<Completion>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    cfg: SchedulerConfig,
) {
    let name = model.spec().name.clone();
    let store = sched.store.clone();
    let mut jobs: Vec<Cursor> = Vec::new();
    let mut turn = 0usize;
    let mut last_refresh: Option<Instant> = None;
    let mut refresh = true;
    loop {
        if sched.stopping.load(Ordering::SeqCst) {
            break;
        }
        // A job got new inputs (or was created) while we were busy feeding.
        if wake.notified().now_or_never().is_some() {
            refresh = true;
        }
        if refresh || last_refresh.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            match store.active_jobs().await {
                Ok(active) => {
                    let active: Vec<Job> = active.into_iter().filter(|j| j.model == name).collect();
                    jobs.retain(|c| {
                        let keep = active.iter().any(|j| j.id == c.job.id);
                        if !keep {
                            sched.forget(&c.job.id);
                        }
                        keep
                    });
                    for j in active {
                        if let Some(c) = jobs.iter_mut().find(|c| c.job.id == j.id) {
                            c.exhausted = false;
                            c.job = j;
                        } else {
                            let cancel = sched.flag(&j.id);
                            jobs.push(Cursor {
                                tag: Arc::from(j.id.as_str()),
                                job: j,
                                after: None,
                                buf: VecDeque::new(),
                                exhausted: false,
                                started: false,
                                cancel,
                            });
                        }
                    }
                    // Higher priority first within a round; stable for equal ones.
                    jobs.sort_by_key(|c| std::cmp::Reverse(c.job.priority));
                }
                Err(e) => tracing::error!(model = %name, error = %e, "cannot list active jobs"),
            }
            last_refresh = Some(Instant::now());
            refresh = false;
        }
        // One round-robin turn: the next job with work sends up to its weight.
        let mut sent_any = false;
        for _ in 0..jobs.len() {
            turn = (turn + 1) % jobs.len().max(1);
            let Some(c) = jobs.get_mut(turn) else { break };
            if c.cancel.is_canceled() {
                continue;
            }
            if c.buf.is_empty() && !c.exhausted {
                match store.pending_items(&c.job.id, c.after, cfg.page_size).await {
                    Ok(rows) => {
                        if rows.is_empty() {
                            c.exhausted = true;
                        }
                        c.buf.extend(rows);
                    }
                    Err(e) => {
                        tracing::error!(job = %c.job.id, error = %e, "cannot read pending items");
                        c.exhausted = true;
                    }
                }
            }
            if c.buf.is_empty() {
                continue;
            }
            if !c.started {
                c.started = true;
                if let Err(e) = store.mark_started(&c.job.id).await {
                    tracing::warn!(job = %c.job.id, error = %e, "cannot mark job started");
                }
            }
            for _ in 0..weight(&c.job) {
                let Some(row) = c.buf.pop_front() else { break };
                c.after = Some(row.seq);
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                permit.forget();
                let opts = SubmitOptions {
                    cancel: Some(c.cancel.clone()),
                };
                let id = ItemId::Job {
                    job: c.tag.clone(),
                    seq: row.seq,
                };
                match to_input(row.input) {
                    Ok(input) => {
                        if model
                            .submit_with(id, input, Reply::Stream(tx.clone()), opts)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(message) => {
                        let failed = Completion {
                            id,
                            result: Err(sluice_core::ItemError::invalid(message)),
                            queue_time: Duration::ZERO,
                            run_time: Duration::ZERO,
                            batch_size: 0,
                        };
                        if tx.send(failed).await.is_err() {
                            return;
                        }
                    }
                }
                sent_any = true;
            }
            break;
        }
        if !sent_any {
            // Nothing to send: sleep until new inputs or a periodic refresh.
            tokio::select! {
                () = wake.notified() => refresh = true,
                () = tokio::time::sleep(Duration::from_millis(500)) => refresh = true,
            }
        }
    }
}

fn to_recorded(c: &Completion) -> Option<Recorded> {
    let ItemId::Job { job, seq } = &c.id else {
        return None;
    };
    let (job_id, seq) = (job.as_ref(), *seq);
    let per_item_model = if c.batch_size > 0 {
        c.run_time.as_secs_f64() * 1e3 / c.batch_size as f64
    } else {
        0.0
    };
    Some(match &c.result {
        Ok(out) => Recorded {
            job_id: job_id.to_string(),
            seq,
            state: ItemState::Done,
            // Through text so float32 values keep their short form (0.0345, not 0.034500002861).
            output: serde_json::to_string(out)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok()),
            error_code: None,
            error_message: None,
            queue_ms: c.queue_time.as_secs_f64() * 1e3,
            model_ms: per_item_model,
        },
        Err(e) => Recorded {
            job_id: job_id.to_string(),
            seq,
            state: ItemState::Failed,
            output: None,
            error_code: Some(e.kind.code().to_string()),
            error_message: Some(e.message.clone()),
            queue_ms: c.queue_time.as_secs_f64() * 1e3,
            model_ms: per_item_model,
        },
    })
}

/// Receives the model's completions and frees their window slots at once,
/// then hands them to the writer. Slots must not wait for the store: while a
/// write is in flight the model keeps completing items, and if their slots
/// were freed only when the writer got back to its queue, the feeder would
/// stall and the model's bulk lane run dry (real-time traffic then takes the
/// batches bulk was promised by `bulk_min_share`). The hand-off queue is
/// bounded (`4 × record_batch`), so a store that stays slower than the model
/// still holds the feeder back.
async fn releaser(mut rx: mpsc::Receiver<Completion>, permits: Arc<Semaphore>, out: mpsc::Sender<Completion>) {
    while let Some(c) = rx.recv().await {
        // Frees the slot only once the completion is queued for the writer.
        if out.send(c).await.is_err() {
            break;
        }
        permits.add_permits(1);
    }
}

async fn writer(
    store: Arc<dyn Store>,
    completions: mpsc::Receiver<Completion>,
    permits: Arc<Semaphore>,
    cfg: SchedulerConfig,
) {
    let (tx, mut rx) = mpsc::channel::<Completion>(cfg.record_batch.max(1) * 4);
    tokio::spawn(releaser(completions, permits, tx));
    let mut batch: Vec<Recorded> = Vec::with_capacity(cfg.record_batch);
    loop {
        let first = rx.recv().await;
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + cfg.record_delay;
        let push = |c: Completion, batch: &mut Vec<Recorded>| {
            // A canceled item was already settled by the cancel itself.
            if c.result.as_ref().is_err_and(|e| e.kind == ItemErrorKind::Canceled) {
                return;
            }
            match to_recorded(&c) {
                Some(r) => batch.push(r),
                None => tracing::error!(id = %c.id, "completion with an unexpected id"),
            }
        };
        push(first, &mut batch);
        while batch.len() < cfg.record_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => push(c, &mut batch),
                Ok(None) | Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let items = std::mem::take(&mut batch);
        let mut attempt = 0u32;
        loop {
            match store.record(items.clone()).await {
                Ok(_) => break,
                // A database that cannot write (a full disk, an I/O error) may
                // recover: keep the batch and retry until it does. Meanwhile the
                // feeder waits for permits (they come back as completions are
                // taken from the channel), so at most a window of items is in
                // flight and the model's instances never block on this channel.
                Err(e) if e.failure_class().is_some_and(|c| c != "corrupt") => {
                    attempt += 1;
                    if attempt <= 5 || attempt.is_multiple_of(30) {
                        tracing::warn!(error = %e, attempt, items = items.len(), "recording results failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(20)))).await;
                }
                Err(e) => {
                    // The items stay pending and run again after a restart.
                    tracing::error!(error = %e, items = items.len(), "cannot record results");
                    break;
                }
            }
        }
    }
}

async fn reaper(sched: Arc<Scheduler>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if sched.stopping.load(Ordering::SeqCst) {
            break;
        }
        let now = sluice_store::now_ms();
        match sched.store.expired_jobs(now).await {
            Ok(ids) => {
                for id in ids {
                    match sched.store.timeout_job(&id).await {
                        Ok(job) => {
                            tracing::info!(job = %id, "job timed out");
                            sched.cancel(&job);
                        }
                        Err(e) => tracing::error!(job = %id, error = %e, "cannot time out job"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot look for expired jobs"),
        }
    }
}
