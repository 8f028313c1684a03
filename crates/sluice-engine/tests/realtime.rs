//! The real-time lane: priority over bulk items, bulk's reserved share,
//! deadlines, client disconnects and the bounded real-time queue.
//!
//! The model is the no-op echo runtime behind a recorder that logs, batch by
//! batch, the first element of every item it runs (items are tagged by that
//! value) and can hold a batch for a while on cue, so the tests can see what
//! ran, in which batch, and what did not run at all.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, BatchError, Input, ItemError, ItemErrorKind, ModelSignature, ModelSpec, NamedTensors, Runtime, Tensor,
    TensorData,
};
use sluice_engine::noop::NoopBackend;
use sluice_engine::{Completion, EngineError, Model, RealtimeOptions, Reply};
use tokio::sync::mpsc;

/// Items whose tag is at least this hold their batch for [`HOLD`].
const SLOW: f32 = 1_000_000.0;
const HOLD: Duration = Duration::from_millis(400);

type Log = Arc<Mutex<Vec<Vec<f32>>>>;

/// Records every batch it runs, then echoes.
struct Recorder {
    inner: NoopBackend,
    log: Log,
}

impl Backend for Recorder {
    fn signature(&self) -> &ModelSignature {
        self.inner.signature()
    }

    fn describe(&self) -> String {
        "recorder".into()
    }

    fn create_instance(&self, index: usize) -> Result<Box<dyn Runtime>, BatchError> {
        Ok(Box::new(RecorderRuntime {
            inner: self.inner.create_instance(index)?,
            log: self.log.clone(),
        }))
    }
}

struct RecorderRuntime {
    inner: Box<dyn Runtime>,
    log: Log,
}

fn tag(item: &NamedTensors) -> f32 {
    match item.get("input").map(|t| &t.data) {
        Some(TensorData::F32(v)) => v.first().copied().unwrap_or(f32::NAN),
        _ => f32::NAN,
    }
}

impl Runtime for RecorderRuntime {
    fn run(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        let tags: Vec<f32> = batch.iter().map(|i| tag(i)).collect();
        self.log.lock().expect("log").push(tags.clone());
        if tags.iter().any(|&t| t >= SLOW) {
            std::thread::sleep(HOLD);
        }
        self.inner.run(batch)
    }
}

fn spec(max_batch_size: usize, rt_capacity: usize, share: f64) -> ModelSpec {
    let mut spec = ModelSpec::parse(&format!(
        r#"
runtime = "noop"
max_batch_size = {max_batch_size}
max_batch_delay_ms = 5
group_by_length = false
preprocess_threads = 1
realtime_queue_capacity = {rt_capacity}
bulk_min_share = {share}
[processing]
type = "tensor"
"#
    ))
    .expect("spec");
    spec.name = "recorder".into();
    spec
}

async fn start(spec: ModelSpec) -> (Model, Log) {
    let log: Log = Arc::default();
    let backend = Arc::new(Recorder {
        inner: NoopBackend::new(),
        log: log.clone(),
    });
    (common::start_model(spec, backend).await, log)
}

fn item(tag: f32) -> Input {
    let mut t = NamedTensors::new();
    t.insert(
        "input".into(),
        Tensor::new(vec![2], TensorData::F32(vec![tag, 0.0])).expect("tensor"),
    );
    Input::Tensors(t)
}

fn ran(log: &Log) -> Vec<Vec<f32>> {
    log.lock().expect("log").clone()
}

/// Occupies the single instance for [`HOLD`] with one slow bulk item.
async fn hold_instance(model: &Model, log: &Log) -> mpsc::Receiver<Completion> {
    let (tx, rx) = mpsc::channel(16);
    model
        .submit("slow", item(SLOW), Reply::Stream(tx))
        .await
        .expect("submit");
    let t0 = Instant::now();
    while ran(log).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the slow item never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rx
}

#[tokio::test]
async fn realtime_items_overtake_queued_bulk_items() {
    let (model, log) = start(spec(4, 64, 0.25)).await;
    let mut bulk_done = hold_instance(&model, &log).await;
    // 40 bulk items queue behind the slow batch, then one real-time request arrives.
    let (tx, mut bulk_rx) = mpsc::channel(64);
    for i in 0..40 {
        model
            .submit(format!("b{i}"), item(i as f32), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rt = model
        .infer_realtime(vec![item(-7.0)], RealtimeOptions::default())
        .await
        .expect("accepted");
    assert!(rt[0].result.is_ok(), "{:?}", rt[0].result);
    let mut n = 0;
    while bulk_rx.recv().await.is_some() {
        n += 1;
    }
    assert_eq!(n, 40);
    assert!(bulk_done.recv().await.is_some());
    let batches = ran(&log);
    // Batch 0 is the slow one; the real-time item is in the very next batch,
    // ahead of 40 bulk items that were queued before it.
    assert!(batches[1].contains(&-7.0), "batches: {batches:?}");
    // ... and bulk still got its reserved slot (25% of 4 = 1) in that batch.
    assert!(batches[1].iter().any(|&t| t >= 0.0), "batches: {batches:?}");
}

#[tokio::test]
async fn bulk_keeps_its_share_under_a_realtime_flood() {
    let (model, log) = start(spec(4, 256, 0.25)).await;
    let mut slow = hold_instance(&model, &log).await;
    let (tx, mut bulk_rx) = mpsc::channel(64);
    for i in 0..8 {
        model
            .submit(format!("b{i}"), item(i as f32), Reply::Stream(tx.clone()))
            .await
            .expect("submit");
    }
    drop(tx);
    // 60 real-time items from concurrent requests while the instance is held.
    let mut flood = Vec::new();
    for i in 0..60 {
        let m = model.clone();
        flood.push(tokio::spawn(async move {
            m.infer_realtime(vec![item(-1.0 - i as f32)], RealtimeOptions::default())
                .await
        }));
    }
    for f in flood {
        let out = f.await.expect("task").expect("accepted");
        assert!(out[0].result.is_ok());
    }
    while bulk_rx.recv().await.is_some() {}
    assert!(slow.recv().await.is_some());
    let batches = ran(&log);
    // While bulk items waited, every batch carried at least one of them.
    let mut bulk_left = 8;
    for b in &batches[1..] {
        if bulk_left == 0 {
            break;
        }
        let bulk_in = b.iter().filter(|&&t| t >= 0.0).count();
        assert!(
            bulk_in >= 1,
            "a batch without bulk items while bulk waited: {batches:?}"
        );
        bulk_left -= bulk_in;
    }
    // The first 8 bulk items all ran before the last real-time ones did.
    let last_bulk = batches
        .iter()
        .rposition(|b| b.iter().any(|&t| (0.0..SLOW).contains(&t)));
    assert!(last_bulk.is_some_and(|i| i < batches.len() - 1), "batches: {batches:?}");
}

#[tokio::test]
async fn an_expired_deadline_fails_the_item_without_running_it() {
    let (model, log) = start(spec(4, 64, 0.25)).await;
    let mut slow = hold_instance(&model, &log).await;
    let deadline = Some(Instant::now() + Duration::from_millis(50));
    let out = model
        .infer_realtime(vec![item(-42.0)], RealtimeOptions { deadline })
        .await
        .expect("accepted");
    common::assert_failed(&out[0], ItemErrorKind::Timeout, "deadline exceeded");
    assert!(slow.recv().await.is_some());
    // A later item with a generous deadline runs normally.
    let deadline = Some(Instant::now() + Duration::from_secs(5));
    let ok = model
        .infer_realtime(vec![item(-43.0)], RealtimeOptions { deadline })
        .await
        .expect("accepted");
    assert!(ok[0].result.is_ok());
    let all: Vec<f32> = ran(&log).concat();
    assert!(!all.contains(&-42.0), "the expired item ran: {all:?}");
    assert!(all.contains(&-43.0));
    assert_eq!(model.stats().expired, 1);
}

#[tokio::test]
async fn an_item_whose_client_went_away_is_not_run() {
    let (model, log) = start(spec(4, 64, 0.25)).await;
    let mut slow = hold_instance(&model, &log).await;
    let m = model.clone();
    let request = tokio::spawn(async move { m.infer_realtime(vec![item(-99.0)], RealtimeOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(model.realtime_waiting(), 1);
    // The client disconnects: its request future is dropped.
    request.abort();
    assert!(request.await.is_err_and(|e| e.is_cancelled()));
    assert!(slow.recv().await.is_some());
    let after = model
        .infer_realtime(vec![item(-100.0)], RealtimeOptions::default())
        .await
        .expect("accepted");
    assert!(after[0].result.is_ok());
    let all: Vec<f32> = ran(&log).concat();
    assert!(!all.contains(&-99.0), "the abandoned item ran: {all:?}");
    assert_eq!(model.stats().abandoned, 1);
    assert_eq!(model.realtime_waiting(), 0, "the abandoned item's slot was freed");
}

#[tokio::test]
async fn a_full_realtime_queue_refuses_requests_whole_and_recovers() {
    let (model, log) = start(spec(4, 3, 0.25)).await;
    let mut slow = hold_instance(&model, &log).await;
    // Two single-row requests wait behind the slow batch.
    let mut waiting = Vec::new();
    for i in 0..2 {
        let m = model.clone();
        waiting.push(tokio::spawn(async move {
            m.infer_realtime(vec![item(-(i as f32) - 1.0)], RealtimeOptions::default())
                .await
        }));
    }
    let t0 = Instant::now();
    while model.realtime_waiting() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A two-row request does not fit in the one slot left: refused whole.
    let err = model
        .infer_realtime(vec![item(-10.0), item(-11.0)], RealtimeOptions::default())
        .await
        .expect_err("overloaded");
    assert!(matches!(err, EngineError::Overloaded { capacity: 3, .. }), "{err}");
    assert!(err.to_string().contains("retry later"), "{err}");
    // A one-row request still fits.
    let m = model.clone();
    let fits = tokio::spawn(async move { m.infer_realtime(vec![item(-12.0)], RealtimeOptions::default()).await });
    while model.realtime_waiting() < 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let err = model
        .infer_realtime(vec![item(-13.0)], RealtimeOptions::default())
        .await
        .expect_err("full");
    assert!(matches!(err, EngineError::Overloaded { .. }));
    for w in waiting {
        assert!(w.await.expect("task").expect("accepted")[0].result.is_ok());
    }
    assert!(fits.await.expect("task").expect("accepted")[0].result.is_ok());
    assert!(slow.recv().await.is_some());
    // Drained: requests are accepted again, and refused rows never ran.
    let again = model
        .infer_realtime(vec![item(-14.0)], RealtimeOptions::default())
        .await
        .expect("accepted after draining");
    assert!(again[0].result.is_ok());
    let all: Vec<f32> = ran(&log).concat();
    for refused in [-10.0, -11.0, -13.0] {
        assert!(!all.contains(&refused), "refused row {refused} ran");
    }
    assert_eq!(model.stats().realtime_rejected, 3);
}

#[tokio::test]
async fn rows_come_back_in_order_with_per_row_errors() {
    let (model, _log) = start(spec(8, 64, 0.25)).await;
    let bad = Input::Json(serde_json::json!({"input": "not a tensor"}));
    let out = model
        .infer_realtime(vec![item(1.0), bad, item(3.0)], RealtimeOptions::default())
        .await
        .expect("accepted");
    assert_eq!(out.len(), 3);
    assert_eq!(common::f32s(&common::tensors(&out[0])["output"])[0], 1.0);
    assert_eq!(common::error(&out[1]).kind, ItemErrorKind::InvalidInput);
    assert_eq!(common::f32s(&common::tensors(&out[2])["output"])[0], 3.0);
}
