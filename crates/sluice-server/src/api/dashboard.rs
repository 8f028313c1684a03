//! The web dashboard at `/` and the JSON summary it polls (`/v1/stats`).
//!
//! The page is one self-contained HTML file (CSS and vanilla JS inline, no
//! CDN, no build step) compiled into the binary with `include_str!`, so the
//! dashboard works offline wherever the server runs. It polls `/v1/stats`
//! and `/v1/jobs` every second; `/v1/stats` exists so the page gets every
//! model's counters, queues and last bench in one cheap JSON request instead
//! of parsing the Prometheus text.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::registry::Entry;
use crate::AppState;

/// The dashboard page.
const PAGE: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard.
pub async fn index() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

/// One model in the summary.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelStats {
    /// Name.
    pub name: String,
    /// Loaded and serving.
    pub ready: bool,
    /// Why it failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Largest batch per call.
    pub max_batch_size: usize,
    /// The max batch size in force now: lower than `max_batch_size` after
    /// out-of-memory back-offs.
    pub effective_batch_size: u64,
    /// Times the effective max batch size was lowered after an out-of-memory failure.
    pub batch_size_backoffs: u64,
    /// Parallel instances.
    pub instances: usize,
    /// Instances inside a runtime call now.
    pub busy_instances: u64,
    /// Items finished with a result.
    pub items_ok: u64,
    /// Items finished with an error.
    pub items_failed: u64,
    /// Items canceled before they ran (not failures).
    pub items_canceled: u64,
    /// Batches dispatched.
    pub batches: u64,
    /// Items in those batches.
    pub batched_items: u64,
    /// `batch_sizes[n]` = batches of `n` items.
    pub batch_sizes: Vec<u64>,
    /// Real elements along the padded dimension (tokens).
    pub tokens: u64,
    /// Padding elements added.
    pub padding: u64,
    /// Items waiting now (pre-processing queue + model queue + batcher).
    pub queue_depth: usize,
    /// Seconds spent in runtime calls.
    pub run_seconds: f64,
    /// The last `sluice bench` results, if saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub bench: Option<serde_json::Value>,
    /// The last `sluice tune` results, if saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tune: Option<serde_json::Value>,
}

/// `GET /v1/stats` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    /// Server time, unix ms (rates are computed between two summaries).
    pub now_ms: i64,
    /// Resident set size of the server, bytes.
    pub rss_bytes: Option<u64>,
    /// Every model.
    pub models: Vec<ModelStats>,
}

/// Live counters of every model in one request (what the dashboard polls).
#[utoipa::path(get, path = "/v1/stats", operation_id = "stats", responses((status = 200, body = Summary)))]
pub async fn stats(State(state): State<AppState>) -> Json<Summary> {
    let models = state
        .registry
        .entries()
        .iter()
        .map(|(name, entry)| match entry {
            Entry::Ready(m) => {
                let s = m.stats();
                let spec = m.spec();
                ModelStats {
                    name: name.clone(),
                    ready: true,
                    error: None,
                    max_batch_size: spec.max_batch_size,
                    effective_batch_size: s.effective_batch_size,
                    batch_size_backoffs: s.batch_size_backoffs,
                    instances: spec.instances,
                    busy_instances: s.busy_instances,
                    items_ok: s.items_ok,
                    items_failed: s.items_failed,
                    items_canceled: s.items_canceled,
                    batches: s.batches,
                    batched_items: s.batched_items,
                    batch_sizes: s.batch_sizes,
                    tokens: s.tokens,
                    padding: s.padding,
                    queue_depth: m.queue_depth().total(),
                    run_seconds: s.run_seconds,
                    bench: super::models::load_bench(&spec.dir),
                    tune: super::models::load_tune(&spec.dir),
                }
            }
            Entry::Declared(_) | Entry::Failed { .. } => ModelStats {
                name: name.clone(),
                ready: false,
                error: match entry {
                    Entry::Failed { error, .. } => Some(error.clone()),
                    _ => None,
                },
                max_batch_size: state.registry.spec(name).map_or(0, |s| s.max_batch_size),
                effective_batch_size: 0,
                batch_size_backoffs: 0,
                instances: 0,
                busy_instances: 0,
                items_ok: 0,
                items_failed: 0,
                items_canceled: 0,
                batches: 0,
                batched_items: 0,
                batch_sizes: Vec::new(),
                tokens: 0,
                padding: 0,
                queue_depth: 0,
                run_seconds: 0.0,
                bench: None,
                tune: None,
            },
        })
        .collect();
    Json(Summary {
        now_ms: sluice_store::now_ms(),
        rss_bytes: crate::metrics::resident_memory_bytes(),
        models,
    })
}
