//! Feeding the engine from the store, and results back into it.
//!
//! Per model, one **feeder** task streams pending items of that model's active
//! jobs from the store into the model, a page at a time, and one **writer**
//! task records completions in batches. The feeder keeps a bounded window of
//! items in flight per model (the batch window when the model groups by
//! length, plus a few batches), so the engine's queues stay short: a job
//! submitted behind a ten-million-item job gets its items in after at most
//! that window, not after the backlog. Claimed items wait in a small local
//! buffer (one claim) and enter the engine as window slots free up; the next
//! claim is sent when the buffer empties, so the store's answer arrives while
//! the model still has a full window to run.
//!
//! The feeder **claims** items ([`Store::claim`]): each claim leases a batch
//! of pending items to this node for [`SchedulerConfig::lease`], and the
//! node's heartbeat ([`crate::node`]) renews the leases of everything it
//! still holds. Several nodes on one store (PostgreSQL) so share a model's
//! work: a claimed item is leased to one node, a node that dies loses its
//! leases when they expire, and one that stops gracefully releases them at
//! once.
//!
//! Fairness: the store shares every claim between a model's active jobs by
//! weight (`1 + priority`, priority clamped to 0..=9), across all nodes.
//!
//! Durability: a lease is not an outcome. Results are recorded only for
//! items still pending, whichever node sends them first, so an item that ran
//! twice (after a crash, or an expired lease) still has exactly one result;
//! after a crash an item is claimed again once its lease expires (at once
//! when the node restarts under the same id: it releases its old leases).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{Input, ItemErrorKind, ItemId};
use sluice_engine::{CancelFlag, Completion, Model, Reply, SubmitOptions};
use sluice_store::{Claim, Completion as Recorded, InputValue, ItemRow, ItemState, Job, Store};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::registry::Registry;

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This node's id: the holder of its leases.
    pub node_id: String,
    /// How long a claimed item stays leased to this node without a renewal.
    pub lease: Duration,
    /// Batches per model instance kept in flight from bulk jobs.
    pub in_flight_batches: usize,
    /// Most items claimed from the store at once.
    pub page_size: u32,
    /// Most completions recorded in one transaction.
    pub record_batch: usize,
    /// Longest a completion waits before it is recorded.
    pub record_delay: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            node_id: "local".to_owned(),
            lease: Duration::from_secs(15),
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
    cfg: SchedulerConfig,
    wake: HashMap<String, Arc<Notify>>,
    cancels: Mutex<HashMap<String, CancelFlag>>,
    stopping: Arc<AtomicBool>,
    feeders: Mutex<Vec<JoinHandle<()>>>,
    writers: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts a feeder and a writer per ready model, and the timeout reaper.
    pub fn start(store: Arc<dyn Store>, registry: &Registry, cfg: SchedulerConfig) -> Arc<Scheduler> {
        Scheduler::start_with(store, registry, cfg, true)
    }

    /// [`Scheduler::start`] with a choice: `feed` false starts no feeder (an
    /// api node runs no model) and only the timeout reaper.
    pub fn start_with(store: Arc<dyn Store>, registry: &Registry, cfg: SchedulerConfig, feed: bool) -> Arc<Scheduler> {
        let models: Vec<&Model> = if feed { registry.ready().collect() } else { Vec::new() };
        let wake: HashMap<String, Arc<Notify>> = models
            .iter()
            .map(|m| (m.spec().name.clone(), Arc::new(Notify::new())))
            .collect();
        let sched = Arc::new(Scheduler {
            store: store.clone(),
            cfg: cfg.clone(),
            wake,
            cancels: Mutex::new(HashMap::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            feeders: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
        });
        let mut feeders = Vec::new();
        let mut writers = Vec::new();
        for model in models {
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
                window,
                wake,
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

    /// Sets and forgets the flags of the jobs for which `done` says so.
    fn settle_flags(&self, done: impl Fn(&str) -> bool) {
        let mut map = self.cancels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|job, flag| {
            if done(job) {
                flag.cancel();
                false
            } else {
                true
            }
        });
    }

    /// Drops the not-yet-run items of a job from the engine (after the store
    /// marked it canceled or timed out).
    pub fn cancel(&self, job: &Job) {
        self.flag(&job.id).cancel();
        self.notify(&job.model);
    }

    /// Stops feeding the models at once (the first step of a shutdown):
    /// nothing more is claimed; items already in the engine run and are
    /// recorded.
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

    /// Stops feeding, drops the claimed items that have not started running,
    /// lets running batches finish and records their results, for at most
    /// `grace`; then releases this node's leases, so that another node takes
    /// what is left at once. Items not run stay pending in the store.
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
        // Queued bulk items are skipped (as canceled: they stay pending);
        // running batches finish.
        self.settle_flags(|_| true);
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
        match self.store.release_leases(&self.cfg.node_id).await {
            Ok(n) => tracing::info!(node = %self.cfg.node_id, released = n, "leases released"),
            Err(e) => tracing::warn!(node = %self.cfg.node_id, error = %e, "cannot release leases; they expire"),
        }
    }
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

/// How long an idle feeder waits for a work notice before it claims anyway
/// (leases of a node that died expire without a notice).
fn idle_wait(lease: Duration) -> Duration {
    (lease / 3).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Claims the model's items from the store and submits them, keeping at most
/// `window` in flight.
///
/// Claimed rows wait in a local buffer (at most one claim, half a window) and
/// go to the engine one permit at a time. The next claim is made as soon as
/// the buffer is empty, without waiting for permits, so the store round-trip
/// overlaps the batches in flight and the model's bulk lane never drains
/// while a claim is answered. Buffered rows are leased to this node like the
/// running ones: the heartbeat renews them, a graceful stop releases them.
async fn feeder(
    sched: Arc<Scheduler>,
    model: Model,
    tx: mpsc::Sender<Completion>,
    permits: Arc<Semaphore>,
    window: usize,
    wake: Arc<Notify>,
) {
    let name = model.spec().name.clone();
    let store = sched.store.clone();
    let cfg = sched.cfg.clone();
    let mut notices = store.work_notices();
    // Claim in chunks of half the window, never more than a page.
    let chunk = u32::try_from((window / 2).max(1))
        .unwrap_or(u32::MAX)
        .min(cfg.page_size.max(1));
    let lease_ms = u64::try_from(cfg.lease.as_millis()).unwrap_or(u64::MAX);
    let mut tags: HashMap<String, Arc<str>> = HashMap::new();
    let mut buffer: VecDeque<ItemRow> = VecDeque::new();
    let mut last_check = Instant::now();
    let mut failures = 0u32;
    loop {
        if sched.stopping.load(Ordering::SeqCst) {
            break;
        }
        // Jobs canceled or finished elsewhere (another node, the reaper): the
        // items they still have queued here are dropped, and their tags and
        // flags forgotten.
        if last_check.elapsed() > Duration::from_secs(1) && !tags.is_empty() {
            last_check = Instant::now();
            if let Ok(active) = store.active_jobs().await {
                let live: HashSet<&str> = active.iter().map(|j| j.id.as_str()).collect();
                let gone: Vec<String> = tags.keys().filter(|id| !live.contains(id.as_str())).cloned().collect();
                for id in gone {
                    tags.remove(&id);
                    sched.settle_flags(|job| job == id);
                }
                buffer.retain(|row| live.contains(row.job_id.as_str()));
            }
        }
        let Some(row) = buffer.pop_front() else {
            let claim = Claim {
                node: cfg.node_id.clone(),
                model: name.clone(),
                limit: chunk,
                lease_ms,
            };
            match store.claim(claim).await {
                Ok(rows) if rows.is_empty() => {
                    failures = 0;
                    wait_for_work(&mut notices, &wake, &name, idle_wait(cfg.lease)).await;
                }
                Ok(rows) => {
                    failures = 0;
                    buffer.extend(rows);
                }
                Err(e) => {
                    failures += 1;
                    if failures <= 5 || failures.is_multiple_of(30) {
                        tracing::warn!(model = %name, error = %e, attempt = failures, "cannot claim items; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(30)))).await;
                }
            }
            continue;
        };
        // One permit per item stays taken until its completion is handed to
        // the writer (the writer's releaser gives it back).
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        permit.forget();
        let tag = tags
            .entry(row.job_id.clone())
            .or_insert_with(|| Arc::from(row.job_id.as_str()))
            .clone();
        let cancel = sched.flag(&row.job_id);
        let id = ItemId::Job { job: tag, seq: row.seq };
        match to_input(row.input) {
            Ok(input) => {
                let opts = SubmitOptions { cancel: Some(cancel) };
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
    }
}

/// Sleeps until a work notice for `model`, a local wake-up, or `idle`.
async fn wait_for_work(
    notices: &mut tokio::sync::broadcast::Receiver<String>,
    wake: &Notify,
    model: &str,
    idle: Duration,
) {
    let notice = async {
        loop {
            match notices.recv().await {
                Ok(m) if m == model || m == "*" => return,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    tokio::select! {
        () = notice => {}
        () = wake.notified() => {}
        () = tokio::time::sleep(idle) => {}
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
            // Serialised once, straight to the text that is stored.
            output: serde_json::value::to_raw_value(out).ok(),
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
