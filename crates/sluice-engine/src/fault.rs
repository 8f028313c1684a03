//! Fault injection: a backend wrapper whose runtime fails, panics or hangs
//! when an item carries a cue value. Tests use it to prove that one bad item
//! fails alone and that a misbehaving runtime never takes the process down.

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
}

impl FaultyBackend {
    /// Wraps `inner`; items cued with [`SLEEP_CUE`] sleep `sleep`.
    pub fn new(inner: Arc<dyn Backend>, sleep: Duration) -> FaultyBackend {
        FaultyBackend {
            inner,
            sleep,
            calls: Arc::new(AtomicUsize::new(0)),
        }
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
        }))
    }
}

struct Faulty {
    inner: Box<dyn Runtime>,
    sleep: Duration,
    calls: Arc<AtomicUsize>,
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
        self.inner.run(batch)
    }
}
