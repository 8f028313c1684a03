//! Fault injection: a backend wrapper whose runtime fails, panics or hangs
//! when an item carries a cue value, or runs out of memory above a number of
//! items or padded tokens. Tests use it to prove that one bad item fails
//! alone, that a misbehaving runtime never takes the process down, and that a
//! batch too big for memory is split instead of failed. Behind the
//! `test-util` feature.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Backend, BatchError, ItemError, ModelSignature, NamedTensors, Runtime};

/// First element that makes the whole batch fail.
pub const FAIL_CUE: f64 = -1111.0;
/// First element that makes the runtime panic.
pub const PANIC_CUE: f64 = -2222.0;
/// First element that makes the runtime sleep for the configured time first.
pub const SLEEP_CUE: f64 = -3333.0;

/// Wraps a backend; its instances misbehave on cue.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    sleep: Duration,
    calls: Arc<AtomicUsize>,
    memory: Arc<Memory>,
}

/// The memory a [`FaultyBackend`] pretends to have, changeable while it
/// runs, and the largest batches that fitted. A batch of more than `items`
/// items, or of more than `tokens` padded tokens (items × the largest item's
/// element count), fails with ONNX Runtime's allocation-failure message.
#[derive(Debug)]
pub struct Memory {
    items: AtomicUsize,
    tokens: AtomicUsize,
    largest_items: AtomicUsize,
    largest_tokens: AtomicUsize,
    failures: AtomicUsize,
}

impl Memory {
    /// Batches of more than `n` items run out of memory.
    pub fn limit_items(&self, n: usize) {
        self.items.store(n, Ordering::Relaxed);
    }

    /// Batches of more than `n` padded tokens run out of memory.
    pub fn limit_tokens(&self, n: usize) {
        self.tokens.store(n, Ordering::Relaxed);
    }

    /// Any batch fits again.
    pub fn lift(&self) {
        self.limit_items(usize::MAX);
        self.limit_tokens(usize::MAX);
    }

    /// Most items in a batch that ran.
    pub fn largest_items(&self) -> usize {
        self.largest_items.load(Ordering::Relaxed)
    }

    /// Most padded tokens in a batch that ran.
    pub fn largest_tokens(&self) -> usize {
        self.largest_tokens.load(Ordering::Relaxed)
    }

    /// Runtime calls that ran out of memory.
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::Relaxed)
    }

    /// Checks a batch against the limits; records it when it fits.
    fn admit(&self, batch: &[&NamedTensors]) -> Result<(), BatchError> {
        let longest = batch
            .iter()
            .map(|item| item.values().map(|t| t.data.len()).max().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let tokens = longest.saturating_mul(batch.len());
        if batch.len() > self.items.load(Ordering::Relaxed) || tokens > self.tokens.load(Ordering::Relaxed) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            // What ONNX Runtime's CPU allocator reports; the engine must recognise it.
            return Err(BatchError::new(format!(
                "Non-zero status code returned while running MatMul node. Name:'fc1' Status Message: \
                 Failed to allocate memory for requested buffer of size {}",
                tokens.saturating_mul(4096)
            )));
        }
        self.largest_items.fetch_max(batch.len(), Ordering::Relaxed);
        self.largest_tokens.fetch_max(tokens, Ordering::Relaxed);
        Ok(())
    }
}

impl FaultyBackend {
    /// Wraps `inner`; items cued with [`SLEEP_CUE`] sleep `sleep`.
    pub fn new(inner: Arc<dyn Backend>, sleep: Duration) -> FaultyBackend {
        FaultyBackend {
            inner,
            sleep,
            calls: Arc::new(AtomicUsize::new(0)),
            memory: Arc::new(Memory {
                items: AtomicUsize::new(usize::MAX),
                tokens: AtomicUsize::new(usize::MAX),
                largest_items: AtomicUsize::new(0),
                largest_tokens: AtomicUsize::new(0),
                failures: AtomicUsize::new(0),
            }),
        }
    }

    /// The memory its instances pretend to have (unlimited at first).
    pub fn memory(&self) -> Arc<Memory> {
        self.memory.clone()
    }

    /// Runtime calls made so far by all instances (bisection included).
    pub fn calls(&self) -> Arc<AtomicUsize> {
        self.calls.clone()
    }
}

impl Backend for FaultyBackend {
    fn signature(&self) -> &ModelSignature {
        self.inner.signature()
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn create_instance(&self, index: usize) -> Result<Box<dyn Runtime>, BatchError> {
        Ok(Box::new(Faulty {
            inner: self.inner.create_instance(index)?,
            sleep: self.sleep,
            calls: self.calls.clone(),
            memory: self.memory.clone(),
        }))
    }
}

struct Faulty {
    inner: Box<dyn Runtime>,
    sleep: Duration,
    calls: Arc<AtomicUsize>,
    memory: Arc<Memory>,
}

fn cue(item: &NamedTensors) -> Option<f64> {
    item.values()
        .find_map(|t| t.data.get_f64(0))
        .filter(|v| [FAIL_CUE, PANIC_CUE, SLEEP_CUE].contains(v))
}

impl Runtime for Faulty {
    fn run(&mut self, batch: &[&NamedTensors]) -> Result<Vec<Result<NamedTensors, ItemError>>, BatchError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        for item in batch {
            match cue(item) {
                Some(c) if c == FAIL_CUE => {
                    return Err(BatchError::new("injected failure: the batch contains a poisoned item"))
                }
                Some(c) if c == PANIC_CUE => panic!("injected panic"),
                Some(c) if c == SLEEP_CUE => std::thread::sleep(self.sleep),
                _ => {}
            }
        }
        self.memory.admit(batch)?;
        self.inner.run(batch)
    }
}
