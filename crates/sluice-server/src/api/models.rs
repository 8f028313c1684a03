//! Models and health endpoints.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::registry::Entry;
use crate::AppState;

/// A model as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    /// Name.
    pub name: String,
    /// Served version.
    pub version: Option<String>,
    /// Loaded and serving.
    pub ready: bool,
    /// Why it failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Description from model.toml.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Largest batch per call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    /// Longest wait for a batch, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_delay_ms: Option<u64>,
    /// Parallel instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<usize>,
    /// Inputs, outputs and processing (detail view).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub signature: Option<serde_json::Value>,
    /// Processing chain (detail view).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub processing: Option<serde_json::Value>,
    /// Live counters (detail view).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub stats: Option<serde_json::Value>,
    /// The last `sluice bench` of this model (detail view): `{model, backend,
    /// measured_at, rows: [{batch_size, items_per_s, speedup, ...}]}`, where
    /// `speedup` is items/s over batch size 1's.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub bench: Option<serde_json::Value>,
    /// The last `sluice tune` of this model (detail view): `{model, backend,
    /// measured_at, budgets, rows: [{max_batch_size, instances,
    /// intra_op_threads, items_per_s, p50_ms, p99_ms, peak_rss_mib, ...}],
    /// chosen: {max_batch_size, instances, intra_op_threads, items_per_s,
    /// reason, ...}, shipped: {..., items_per_s}, ratio}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tune: Option<serde_json::Value>,
}

/// Where `sluice bench` keeps a model's last results, in the model's folder.
pub const BENCH_FILE: &str = ".bench.json";

/// Where `sluice tune` keeps a model's last results, in the model's folder.
pub const TUNE_FILE: &str = ".tune.json";

/// The last bench results of the model in `dir`, if any were saved and parse.
pub fn load_bench(dir: &std::path::Path) -> Option<serde_json::Value> {
    load_kept(dir, BENCH_FILE)
}

/// The last tune results of the model in `dir`, if any were saved and parse.
pub fn load_tune(dir: &std::path::Path) -> Option<serde_json::Value> {
    load_kept(dir, TUNE_FILE)
}

/// A JSON file a command kept in a model folder, if it is there and parses.
fn load_kept(dir: &std::path::Path, file: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), file, error = %e, "ignoring unreadable kept results");
            None
        }
    }
}

fn view(name: &str, entry: &Entry, detail: bool) -> ModelView {
    match entry {
        Entry::Ready(m) => {
            let s = m.spec();
            ModelView {
                name: name.to_string(),
                version: Some(s.version.clone()),
                ready: true,
                error: None,
                description: Some(s.description.clone()).filter(|d| !d.is_empty()),
                backend: Some(m.describe()),
                max_batch_size: Some(s.max_batch_size),
                max_batch_delay_ms: Some(s.max_batch_delay_ms),
                instances: Some(s.instances),
                signature: detail.then(|| serde_json::to_value(m.signature()).unwrap_or_default()),
                processing: detail.then(|| serde_json::to_value(&s.processing).unwrap_or_default()),
                stats: detail.then(|| {
                    let st = m.stats();
                    let mut v = serde_json::to_value(&st).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("mean_batch_size".into(), st.mean_batch_size().into());
                        o.insert("padding_ratio".into(), st.padding_ratio().into());
                    }
                    v
                }),
                bench: if detail { load_bench(&s.dir) } else { None },
                tune: if detail { load_tune(&s.dir) } else { None },
            }
        }
        // An api node: known from its spec, run by the worker nodes.
        Entry::Declared(s) => ModelView {
            name: name.to_string(),
            version: Some(s.version.clone()),
            ready: false,
            error: None,
            description: Some(s.description.clone()).filter(|d| !d.is_empty()),
            backend: None,
            max_batch_size: Some(s.max_batch_size),
            max_batch_delay_ms: Some(s.max_batch_delay_ms),
            instances: None,
            signature: None,
            processing: detail.then(|| serde_json::to_value(&s.processing).unwrap_or_default()),
            stats: None,
            bench: None,
            tune: None,
        },
        Entry::Failed { spec, error } => ModelView {
            name: name.to_string(),
            version: spec.as_ref().map(|s| s.version.clone()),
            ready: false,
            error: Some(error.clone()),
            description: None,
            backend: None,
            max_batch_size: spec.as_ref().map(|s| s.max_batch_size),
            max_batch_delay_ms: None,
            instances: None,
            signature: None,
            processing: None,
            stats: None,
            bench: None,
            tune: None,
        },
    }
}

/// Served models.
#[utoipa::path(get, path = "/v1/models", operation_id = "list_models", responses((status = 200, body = Vec<ModelView>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<ModelView>> {
    Json(
        state
            .registry
            .entries()
            .iter()
            .map(|(n, e)| view(n, e, false))
            .collect(),
    )
}

/// One model: settings, inputs and outputs, live counters.
///
/// Also the last `sluice bench` and `sluice tune` results kept in the
/// model's folder (`bench`, `tune`), when there are any.
#[utoipa::path(get, path = "/v1/models/{name}", operation_id = "get_model", params(("name" = String, Path, description = "Model name")),
    responses((status = 200, body = ModelView), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ModelView>, ApiError> {
    let entry = state
        .registry
        .entries()
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("model '{name}' not found")))?;
    Ok(Json(view(&name, entry, true)))
}

/// Liveness / readiness body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// "ok" or "unavailable".
    pub status: &'static str,
    /// Models serving.
    pub ready_models: Vec<String>,
    /// Models this node accepts jobs for without running them (an api node:
    /// the workers run them).
    pub declared_models: Vec<String>,
    /// Models that failed to load.
    pub failed_models: Vec<String>,
    /// The job store: whether it reads and writes.
    pub store: StoreStatus,
}

/// The job store as `/healthz` and `/readyz` report it. Only the class of a
/// failure is shown; its detail is in the server's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStatus {
    /// `false` while the store's last write failed (a full disk, an I/O error):
    /// `/readyz` then answers 503. It turns `true` again with the next write
    /// that commits; the server probes every few seconds while it is `false`.
    pub writable: bool,
    /// `false` when the store could not answer a read just now (`/readyz` only).
    pub readable: bool,
    /// Class of the last failed write since the start: `disk_full`,
    /// `io_error`, `read_only`, `busy`, `corrupt`, `cannot_open`, `pool_timeout`,
    /// `unreachable` (PostgreSQL: the connection was lost or refused) or `database`.
    pub last_write_error: Option<String>,
    /// When it failed, unix ms.
    pub last_write_error_at: Option<i64>,
    /// When a write last committed, unix ms.
    pub last_write_ok_at: Option<i64>,
}

fn health(state: &AppState) -> Health {
    let mut ready = Vec::new();
    let mut failed = Vec::new();
    let mut declared = Vec::new();
    for (n, e) in state.registry.entries() {
        match e {
            Entry::Ready(_) => ready.push(n.clone()),
            Entry::Declared(_) => declared.push(n.clone()),
            Entry::Failed { .. } => failed.push(n.clone()),
        }
    }
    let store = state.store.health();
    Health {
        status: if ready.is_empty() && declared.is_empty() {
            "unavailable"
        } else {
            "ok"
        },
        ready_models: ready,
        declared_models: declared,
        failed_models: failed,
        store: StoreStatus {
            writable: store.writable,
            readable: true,
            last_write_error_at: store.last_write_error.as_ref().map(|f| f.at),
            last_write_error: store.last_write_error.map(|f| f.class),
            last_write_ok_at: store.last_write_ok_at,
        },
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", responses((status = 200, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let mut h = health(&state);
    h.status = "ok";
    Json(h)
}

/// Ready to serve: at least one model loaded and the job store reading and
/// writing. 503 when no model is ready, when a read fails, or while the
/// store's last write failed (`store.writable` is `false`, with the class and
/// time of the failure); 200 again once a write commits.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", responses((status = 200, body = Health),
    (status = 503, description = "Not ready: no model loaded, or the job store cannot read or write", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let mut h = health(&state);
    if !h.store.writable {
        h.status = "unavailable";
    }
    if state
        .store
        .list_jobs(sluice_store::JobFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .is_err()
    {
        h.status = "unavailable";
        h.store.readable = false;
    }
    let code = if h.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h))
}
