//! A served model: its pipeline of queues, threads and the batcher task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::spec::{ModelSpec, RuntimeKind};
use sluice_core::{Backend, Input, ItemError, ItemErrorKind, ItemId, ModelSignature};
use sluice_processing::{Prepared, Processor};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::batcher;
use crate::instance;
use crate::item::{canceled_error, fail_item, is_canceled, CancelFlag, Completion, DoneGuard, Queued, Reply, Request};
use crate::stats::{Stats, StatsSnapshot};

/// Why a model could not be started or an item not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model's backend failed to load.
    #[error("model '{model}': {message}")]
    Load {
        /// Model name.
        model: String,
        /// Cause.
        message: String,
    },
    /// The model is shutting down and takes no more items.
    #[error("model '{0}' is closed")]
    Closed(String),
    /// The real-time queue is full; the caller should retry later (429).
    #[error("model '{model}' is overloaded: {waiting} real-time items already wait (limit {capacity}); retry later")]
    Overloaded {
        /// Model name.
        model: String,
        /// Real-time items accepted and not yet answered.
        waiting: usize,
        /// The model's `realtime_queue_capacity`.
        capacity: usize,
    },
}

/// Items waiting in each stage of a model's pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// In the pre-processing queue.
    pub preprocess: usize,
    /// Pre-processed, in the model queue.
    pub model: usize,
    /// Held by the batcher, waiting for their batch.
    pub batcher: usize,
}

impl QueueDepth {
    /// Items waiting in all stages.
    pub fn total(&self) -> usize {
        self.preprocess + self.model + self.batcher
    }
}

/// Per-submission options.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// When set to true, the item is dropped (completed as `canceled`) at
    /// the next stage it reaches instead of running.
    pub cancel: Option<CancelFlag>,
}

/// Options of a real-time request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealtimeOptions {
    /// Items not started by then are not run; they fail with a `timeout` error.
    pub deadline: Option<Instant>,
}

/// One served model. Cheap to clone; all clones share the pipeline.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ModelSpec,
    backend: Arc<dyn Backend>,
    processor: Arc<dyn Processor>,
    stats: Arc<Stats>,
    pre_tx: async_channel::Sender<Request>,
    queue_tx: async_channel::Sender<Queued>,
    rt_tx: async_channel::Sender<Queued>,
    /// One permit per real-time item accepted and not yet answered.
    rt_slots: Arc<Semaphore>,
    done: watch::Receiver<bool>,
}

impl Model {
    /// Loads the backend a spec names and starts the model's pipeline.
    /// Blocking (loads the model); call it from a blocking context.
    pub fn load(spec: ModelSpec) -> Result<Model, EngineError> {
        let backend = load_backend(&spec)?;
        Model::start(spec, backend)
    }

    /// Starts the pipeline around an already-loaded backend (also used by
    /// tests to inject faults).
    pub fn start(mut spec: ModelSpec, backend: Arc<dyn Backend>) -> Result<Model, EngineError> {
        // A model that declares its own batch size (an OMI worker) never gets more.
        if let Some(n) = backend.max_batch_size().filter(|&n| n > 0 && n < spec.max_batch_size) {
            tracing::info!(model = %spec.name, config = spec.max_batch_size, model_limit = n, "max batch size lowered to the model's own");
            spec.max_batch_size = n;
        }
        let load_err = |message: String| EngineError::Load {
            model: spec.name.clone(),
            message,
        };
        let processor = sluice_processing::build(&spec, backend.signature()).map_err(|e| load_err(e.to_string()))?;
        let stats = Arc::new(Stats::new(spec.max_batch_size));
        let (pre_tx, pre_rx) = async_channel::bounded::<Request>(spec.queue_capacity);
        let (queue_tx, queue_rx) = async_channel::bounded::<Queued>(spec.queue_capacity);
        // Never full: every item in it holds one of `rt_slots`, which has the same size.
        let (rt_tx, rt_rx) = async_channel::bounded::<Queued>(spec.realtime_queue_capacity);
        let rt_slots = Arc::new(Semaphore::new(spec.realtime_queue_capacity));
        let (batch_tx, batch_rx) = async_channel::bounded(spec.instances);
        let (done_tx, done) = watch::channel(false);

        // Instances first: a model that cannot load fails here, before any item is taken.
        let mut runtimes = Vec::with_capacity(spec.instances);
        for i in 0..spec.instances {
            runtimes.push(backend.create_instance(i).map_err(|e| load_err(e.message))?);
        }
        let done_guard = Arc::new(DoneGuard(done_tx));
        let limiter = Arc::new(crate::limit::Limiter::new(
            &spec.name,
            spec.max_batch_size,
            spec.max_batch_bytes,
        ));
        for (i, runtime) in runtimes.into_iter().enumerate() {
            let ctx = instance::Context {
                model: spec.name.clone(),
                index: i,
                processor: processor.clone(),
                stats: stats.clone(),
                limiter: limiter.clone(),
                _done: done_guard.clone(),
            };
            let rx = batch_rx.clone();
            std::thread::Builder::new()
                .name(format!("sluice-{}-{i}", spec.name))
                .spawn(move || instance::run(runtime, rx, ctx))
                .map_err(|e| load_err(format!("cannot start instance thread: {e}")))?;
        }
        drop(done_guard);

        let closer = Arc::new(CloseOnDrop(queue_tx.clone()));
        for i in 0..spec.preprocess_threads {
            let rx = pre_rx.clone();
            let tx = queue_tx.clone();
            let processor = processor.clone();
            let stats = stats.clone();
            let closer = closer.clone();
            std::thread::Builder::new()
                .name(format!("sluice-{}-pre{i}", spec.name))
                .spawn(move || preprocess_loop(&rx, &tx, processor.as_ref(), &stats, closer))
                .map_err(|e| load_err(format!("cannot start processing thread: {e}")))?;
        }
        drop(closer);

        let cfg = batcher::config(&spec);
        let inbound = batcher::Inbound {
            bulk: queue_rx,
            realtime: rt_rx,
        };
        // The batcher gets a thread of its own (a single-threaded async
        // runtime): when an instance frees up, the next batch is formed at
        // once instead of waiting behind request handling on the executor.
        let batcher_rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| load_err(format!("cannot start the batcher runtime: {e}")))?;
        let batcher_stats = stats.clone();
        let instances = spec.instances;
        std::thread::Builder::new()
            .name(format!("sluice-{}-batcher", spec.name))
            .spawn(move || batcher_rt.block_on(batcher::run(inbound, batch_tx, cfg, instances, batcher_stats, limiter)))
            .map_err(|e| load_err(format!("cannot start the batcher thread: {e}")))?;
        tracing::info!(model = %spec.name, backend = %backend.describe(), max_batch_size = spec.max_batch_size, instances = spec.instances, "model started");
        Ok(Model {
            inner: Arc::new(Inner {
                spec,
                backend,
                processor,
                stats,
                pre_tx,
                queue_tx,
                rt_tx,
                rt_slots,
                done,
            }),
        })
    }

    /// The model's configuration.
    pub fn spec(&self) -> &ModelSpec {
        &self.inner.spec
    }

    /// Inputs and outputs of the graph.
    pub fn signature(&self) -> &ModelSignature {
        self.inner.backend.signature()
    }

    /// The backend's description (`"onnx cpu (default threads)"`).
    pub fn describe(&self) -> String {
        self.inner.backend.describe()
    }

    /// The processing chain (for callers that pre-process themselves).
    pub fn processor(&self) -> &Arc<dyn Processor> {
        &self.inner.processor
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Items waiting now, per stage.
    pub fn queue_depth(&self) -> QueueDepth {
        QueueDepth {
            preprocess: self.inner.pre_tx.len(),
            model: self.inner.queue_tx.len() + self.inner.rt_tx.len(),
            batcher: usize::try_from(self.inner.stats.snapshot_window()).unwrap_or(usize::MAX),
        }
    }

    /// Queues a raw item; waits while the pre-processing queue is full.
    pub async fn submit(&self, id: impl Into<ItemId>, input: Input, reply: Reply) -> Result<(), EngineError> {
        self.submit_with(id, input, reply, SubmitOptions::default()).await
    }

    /// Queues a raw item with options (cancellation).
    pub async fn submit_with(
        &self,
        id: impl Into<ItemId>,
        input: Input,
        reply: Reply,
        opts: SubmitOptions,
    ) -> Result<(), EngineError> {
        let req = Request {
            id: id.into(),
            input,
            reply,
            submitted: Instant::now(),
            cancel: opts.cancel,
        };
        self.inner
            .pre_tx
            .send(req)
            .await
            .map_err(|_| EngineError::Closed(self.inner.spec.name.clone()))
    }

    /// Queues an already pre-processed item straight to the batcher.
    pub async fn submit_prepared(
        &self,
        id: impl Into<ItemId>,
        prepared: Prepared,
        reply: Reply,
    ) -> Result<(), EngineError> {
        self.submit_prepared_with(id, prepared, reply, SubmitOptions::default())
            .await
    }

    /// Queues an already pre-processed item with options (cancellation).
    pub async fn submit_prepared_with(
        &self,
        id: impl Into<ItemId>,
        prepared: Prepared,
        reply: Reply,
        opts: SubmitOptions,
    ) -> Result<(), EngineError> {
        if self.inner.pre_tx.is_closed() {
            return Err(EngineError::Closed(self.inner.spec.name.clone()));
        }
        let now = Instant::now();
        let q = Queued {
            id: id.into(),
            prepared,
            reply,
            submitted: now,
            enqueued: now,
            cancel: opts.cancel,
            deadline: None,
            _slot: None,
        };
        self.inner
            .queue_tx
            .send(q)
            .await
            .map_err(|_| EngineError::Closed(self.inner.spec.name.clone()))
    }

    /// Runs one item and waits for its result.
    pub async fn infer(&self, id: impl Into<ItemId>, input: Input) -> Completion {
        let id: ItemId = id.into();
        let (tx, rx) = oneshot::channel();
        let fail = |id: ItemId, message: String| Completion {
            id,
            result: Err(ItemError::new(ItemErrorKind::Unavailable, message)),
            queue_time: Duration::ZERO,
            run_time: Duration::ZERO,
            batch_size: 0,
        };
        if let Err(e) = self.submit(id.clone(), input, Reply::Once(tx)).await {
            return fail(id, e.to_string());
        }
        rx.await
            .unwrap_or_else(|_| fail(id, "the model stopped before answering".into()))
    }

    /// Runs the rows of one real-time request ahead of bulk work and
    /// returns one completion per row, in order.
    ///
    /// The whole request is refused with [`EngineError::Overloaded`] when the
    /// real-time queue cannot take all its rows, so clients see 429 rather
    /// than waiting without bound. Rows are pre-processed on the blocking
    /// pool (not behind queued bulk items). Dropping the returned future
    /// abandons the rows: those that have not started are not run.
    pub async fn infer_realtime(
        &self,
        inputs: Vec<Input>,
        opts: RealtimeOptions,
    ) -> Result<Vec<Completion>, EngineError> {
        let inner = &self.inner;
        let n = inputs.len();
        let Ok(count) = u32::try_from(n) else {
            return Err(self.overloaded());
        };
        let permits = match inner.rt_slots.clone().try_acquire_many_owned(count) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                inner.stats.record_realtime(0, n);
                return Err(self.overloaded());
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(EngineError::Closed(inner.spec.name.clone())),
        };
        if inner.rt_tx.is_closed() {
            return Err(EngineError::Closed(inner.spec.name.clone()));
        }
        inner.stats.record_realtime(n, 0);
        let submitted = Instant::now();
        let processor = inner.processor.clone();
        let prepare_all = move || -> Vec<Result<Prepared, ItemError>> {
            inputs
                .into_iter()
                .map(|input| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| processor.preprocess(input)))
                        .unwrap_or_else(|p| {
                            Err(ItemError::new(
                                ItemErrorKind::Internal,
                                format!("pre-processing panicked: {}", instance::panic_message(&p)),
                            ))
                        })
                })
                .collect()
        };
        // Decoding and tokenizing go to the blocking pool; shape checks run here.
        let prepared = if inner.processor.is_cheap() {
            prepare_all()
        } else {
            tokio::task::spawn_blocking(prepare_all)
                .await
                .map_err(|e| EngineError::Load {
                    model: inner.spec.name.clone(),
                    message: format!("pre-processing task failed: {e}"),
                })?
        };
        let mut permits = Some(permits);
        let mut waiting = Vec::with_capacity(n);
        for (i, outcome) in prepared.into_iter().enumerate() {
            let id = ItemId::Key(i.to_string());
            let (tx, rx) = oneshot::channel();
            match outcome {
                Ok(prepared) => {
                    let slot = permits.as_mut().and_then(|p| p.split(1));
                    let q = Queued {
                        id,
                        prepared,
                        reply: Reply::Once(tx),
                        submitted,
                        enqueued: Instant::now(),
                        cancel: None,
                        deadline: opts.deadline,
                        _slot: slot,
                    };
                    if let Err(async_channel::SendError(q)) = inner.rt_tx.send(q).await {
                        let e = ItemError::new(ItemErrorKind::Unavailable, "the model closed before the item ran");
                        fail_item(q.id, q.reply, submitted, e, &inner.stats);
                    }
                }
                Err(e) => fail_item(id, Reply::Once(tx), submitted, e, &inner.stats),
            }
            waiting.push(rx);
        }
        drop(permits);
        let mut out = Vec::with_capacity(n);
        let failed = |i: usize, kind: ItemErrorKind, message: &str| Completion {
            id: ItemId::Key(i.to_string()),
            result: Err(ItemError::new(kind, message)),
            queue_time: submitted.elapsed(),
            run_time: Duration::ZERO,
            batch_size: 0,
        };
        // The deadline is kept here too, on the waiting side: whatever the
        // batch holding an item does (a hung worker, a long run), the caller
        // is answered at its deadline. The item itself is dropped unrun by the
        // batcher or the instance when it comes to it, or its late answer is
        // discarded.
        let deadline = opts.deadline.map(tokio::time::Instant::from_std);
        for (i, rx) in waiting.into_iter().enumerate() {
            let answer = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        out.push(failed(
                            i,
                            ItemErrorKind::Timeout,
                            "deadline exceeded before the item was answered",
                        ));
                        continue;
                    }
                },
                None => rx.await,
            };
            out.push(
                answer.unwrap_or_else(|_| failed(i, ItemErrorKind::Unavailable, "the model stopped before answering")),
            );
        }
        Ok(out)
    }

    fn overloaded(&self) -> EngineError {
        let capacity = self.inner.spec.realtime_queue_capacity;
        EngineError::Overloaded {
            model: self.inner.spec.name.clone(),
            waiting: capacity.saturating_sub(self.inner.rt_slots.available_permits()),
            capacity,
        }
    }

    /// Real-time items accepted and not yet answered.
    pub fn realtime_waiting(&self) -> usize {
        self.inner
            .spec
            .realtime_queue_capacity
            .saturating_sub(self.inner.rt_slots.available_permits())
    }

    /// Takes no more items; those already submitted still complete.
    pub fn close(&self) {
        self.inner.pre_tx.close();
        self.inner.rt_tx.close();
    }

    /// Waits until every submitted item has completed after [`Model::close`].
    pub async fn join(&self) {
        let mut done = self.inner.done.clone();
        // Err means the sender is gone, which also means every instance ended.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Loads the backend of the runtime a spec names. Blocking.
pub fn load_backend(spec: &ModelSpec) -> Result<Arc<dyn Backend>, EngineError> {
    let load_err = |message: String| EngineError::Load {
        model: spec.name.clone(),
        message,
    };
    Ok(match spec.runtime {
        RuntimeKind::Onnx => Arc::new(sluice_onnx::OnnxBackend::load(spec).map_err(|e| load_err(e.to_string()))?),
        RuntimeKind::Noop => Arc::new(crate::noop::NoopBackend::new()),
        RuntimeKind::Omi => Arc::new(sluice_omi::OmiBackend::load(spec).map_err(|e| load_err(e.to_string()))?),
    })
}

/// Closes the model queue when the last processing thread ends.
struct CloseOnDrop(async_channel::Sender<Queued>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn preprocess_loop(
    rx: &async_channel::Receiver<Request>,
    tx: &async_channel::Sender<Queued>,
    processor: &dyn Processor,
    stats: &Stats,
    _closer: Arc<CloseOnDrop>,
) {
    while let Ok(req) = rx.recv_blocking() {
        let Request {
            id,
            input,
            reply,
            submitted,
            cancel,
        } = req;
        if is_canceled(cancel.as_ref()) {
            fail_item(id, reply, submitted, canceled_error(), stats);
            continue;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| processor.preprocess(input)))
            .unwrap_or_else(|p| {
                Err(ItemError::new(
                    ItemErrorKind::Internal,
                    format!("pre-processing panicked: {}", instance::panic_message(&p)),
                ))
            });
        match outcome {
            Ok(prepared) => {
                let q = Queued {
                    id,
                    prepared,
                    reply,
                    submitted,
                    enqueued: Instant::now(),
                    cancel,
                    deadline: None,
                    _slot: None,
                };
                if let Err(async_channel::SendError(q)) = tx.send_blocking(q) {
                    let msg = "the model queue closed before the item ran".to_string();
                    fail_item(
                        q.id,
                        q.reply,
                        q.submitted,
                        ItemError::new(ItemErrorKind::Unavailable, msg),
                        stats,
                    );
                }
            }
            Err(e) => fail_item(id, reply, submitted, e, stats),
        }
    }
}
