//! Sluice's HTTP server: the bulk jobs API over the engine and the store.
//!
//! [`app`] builds the router from an [`AppState`] so tests can drive it
//! without a socket; [`serve`] loads models, opens the store, starts the
//! scheduler and serves until a shutdown signal, then drains gracefully.

pub mod api;
pub mod error;
pub mod metrics;
pub mod v2;

// The jobs runtime lives in `sluice-jobs`; these paths stay for callers.
pub use sluice_jobs::{ingest, registry, scheduler};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use sluice_store::{NodeInfo, Store, StoreConfig};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;

pub use error::ApiError;
pub use sluice_jobs::{
    Jobs, JobsError, Limits, NodeConfig, OutputConfig, Registry, Role, Scheduler, SchedulerConfig, ShutdownSignal,
};

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Model repository.
    pub models: PathBuf,
    /// Where the store lives (`--store`; SQLite in the data dir by default).
    pub store: StoreConfig,
    /// This node: its id, role and lease length.
    pub node: NodeConfig,
    /// Listen address (HTTP: jobs API, KServe v2 REST, dashboard, metrics).
    pub listen: SocketAddr,
    /// Listen address of the KServe v2 gRPC service; `None`: no gRPC.
    pub grpc_listen: Option<SocketAddr>,
    /// Folders from which `source` jobs may read files.
    pub source_roots: Vec<PathBuf>,
    /// Object-store prefixes (`s3://bucket/prefix`, `gs://..`, `az://..`)
    /// under which `source` jobs may read objects.
    pub object_source_roots: Vec<String>,
    /// Where job outputs may be written (folders, object-store prefixes) and
    /// how they are cut into parts; local roots are made canonical at start.
    pub outputs: OutputConfig,
    /// Request limits.
    pub limits: Limits,
    /// How long shutdown waits for running batches.
    pub shutdown_grace: Duration,
    /// Scheduler tuning.
    pub scheduler: SchedulerConfig,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Served models.
    pub registry: Arc<Registry>,
    /// The job store.
    pub store: Arc<dyn Store>,
    /// Feeds the engine from the store.
    pub scheduler: Arc<Scheduler>,
    /// Canonical folders `source` jobs may read.
    pub source_roots: Arc<Vec<PathBuf>>,
    /// Request limits.
    pub limits: Limits,
    /// Set when the server starts shutting down: long-lived responses (a
    /// results stream that follows a job) end, and source ingestion stops.
    pub shutdown: ShutdownSignal,
    /// This node.
    pub node: NodeConfig,
    jobs: Jobs,
}

impl AppState {
    /// The state of a node with these parts; the jobs service is built once,
    /// here.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        scheduler: Arc<Scheduler>,
        source_roots: Arc<Vec<PathBuf>>,
        limits: Limits,
        shutdown: ShutdownSignal,
        node: NodeConfig,
    ) -> AppState {
        let jobs = Jobs::new(
            store.clone(),
            registry.clone(),
            scheduler.clone(),
            source_roots.clone(),
            limits.clone(),
            shutdown.clone(),
        )
        .with_node(&node);
        AppState {
            registry,
            store,
            scheduler,
            source_roots,
            limits,
            shutdown,
            node,
            jobs,
        }
    }

    /// The jobs service over this state's store, models and scheduler.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }
}

/// The router with every route and layer.
pub fn app(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    api::routes()
        .with_state(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string();
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                })
                // One INFO line per answered request, inside the span that carries its id.
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(LatencyUnit::Micros),
                ),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The models folder could not be read.
    #[error("cannot read models folder {path}: {source}")]
    Models {
        /// The folder.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the store {store}: {source}")]
    Store {
        /// Where it is (any password shown as `***`).
        store: String,
        /// Cause.
        source: sluice_store::StoreError,
    },
    /// The socket could not be bound or served.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// How often the server tries a write while the store's last write failed, so
/// that `/readyz` turns ready again soon after space is freed.
pub const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Starts the task that, every `every` until `stop`, makes a probe write when
/// the store's last write failed (see [`Store::probe_write`]); a success makes
/// the store writable again in its health, and `/readyz` ready.
pub fn spawn_store_probe(store: Arc<dyn Store>, every: Duration, stop: ShutdownSignal) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.wait() => return,
            }
            if !store.health().writable {
                match store.probe_write().await {
                    Ok(()) => tracing::info!("probe write succeeded: the job store is writable again"),
                    Err(e) => tracing::debug!(error = %e, "probe write failed: the job store still cannot write"),
                }
            }
        }
    })
}

/// Loads everything, serves until `shutdown` resolves, then drains.
pub async fn serve(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = cfg.store.open().await.map_err(|source| ServeError::Store {
        store: cfg.store.to_string(),
        source,
    })?;
    let node = cfg.node.clone();
    let registry = if node.role.runs_models() {
        Registry::load(&cfg.models).await
    } else {
        Registry::declare(&cfg.models)
    };
    let registry = Arc::new(registry.map_err(|source| ServeError::Models {
        path: cfg.models.clone(),
        source,
    })?);
    if cfg.store.is_shared() {
        // Another api node may be creating a job right now: only a single node
        // knows that an unclosed inline job was interrupted. (Source jobs are
        // resumed on every store, under their ingest claims: see below.)
        tracing::info!("shared store: inline jobs left unclosed by a crash are not settled at start");
    } else {
        sluice_jobs::recover_unclosed(store.as_ref()).await;
    }
    if node.role.runs_models() {
        // What this node held before a crash under the same id is claimable at once.
        match store.release_leases(&node.id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(node = %node.id, released = n, "released the leases of this node's previous run"),
            Err(e) => tracing::warn!(node = %node.id, error = %e, "cannot release old leases; they expire"),
        }
    }
    let scheduler_cfg = SchedulerConfig {
        node_id: node.id.clone(),
        lease: node.lease,
        ..cfg.scheduler.clone()
    };
    let scheduler = Scheduler::start_with(store.clone(), &registry, scheduler_cfg, node.role.runs_models());
    let roots = cfg
        .source_roots
        .iter()
        .filter_map(|r| match r.canonicalize() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(root = %r.display(), error = %e, "source root ignored");
                None
            }
        })
        .collect();
    let stop = ShutdownSignal::default();
    spawn_store_probe(store.clone(), STORE_PROBE_INTERVAL, stop.clone());
    let mut state = AppState::new(
        registry.clone(),
        store.clone(),
        scheduler.clone(),
        Arc::new(roots),
        cfg.limits.clone(),
        stop.clone(),
        node.clone(),
    );
    let mut outputs = cfg.outputs.clone();
    outputs.roots = outputs
        .roots
        .iter()
        .filter_map(|r| match std::fs::create_dir_all(r).and_then(|()| r.canonicalize()) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(root = %r.display(), error = %e, "output root ignored");
                None
            }
        })
        .collect();
    state.jobs = state
        .jobs
        .clone()
        .with_object_roots(cfg.object_source_roots.clone())
        .with_outputs(outputs);
    if node.role.accepts_jobs() {
        // Outputs this node was writing when it died go on from their checkpoints; then the
        // keeper renews its export claims and takes over those of nodes that died.
        let resumed = state.jobs().resume_exports(true).await;
        if resumed > 0 {
            tracing::info!(jobs = resumed, "resuming the outputs of jobs a restart interrupted");
        }
        state.jobs().spawn_export_keeper();
        // Source jobs this node was reading when it died go on where their inputs stop, before
        // any request comes; then the keeper renews this node's ingest claims and takes over
        // the source jobs of api nodes that died (their claims expired).
        let resumed = state.jobs().resume_ingests(true).await;
        if resumed > 0 {
            tracing::info!(jobs = resumed, "resuming the sources of jobs a restart interrupted");
        }
        state.jobs().spawn_ingest_keeper();
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(cfg.listen);
    // One shutdown signal, seen by both servers, the scheduler and every
    // long-lived response. When it comes, feeding stops at once; `grace`
    // bounds the whole shutdown from that moment, whatever clients do.
    let signaled = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    {
        let stop = stop.clone();
        let signaled = signaled.clone();
        let scheduler = scheduler.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = signaled.set(tokio::time::Instant::now());
            tracing::info!("shutting down: feeding stopped, open streams end, running batches finish");
            scheduler.stop_feeding();
            stop.trigger();
        });
    }
    let grace = cfg.shutdown_grace;
    let deadline = {
        let stop = stop.clone();
        let signaled = signaled.clone();
        move || {
            let stop = stop.clone();
            let signaled = signaled.clone();
            async move {
                stop.wait().await;
                let at = signaled.get().copied().unwrap_or_else(tokio::time::Instant::now);
                tokio::time::sleep_until(at + grace).await;
            }
        }
    };
    let stopped = |stop: ShutdownSignal| async move { stop.wait().await };
    let grpc = match cfg.grpc_listen {
        Some(grpc_addr) => {
            let grpc_listener =
                tokio::net::TcpListener::bind(grpc_addr)
                    .await
                    .map_err(|source| ServeError::Listen {
                        addr: grpc_addr,
                        source,
                    })?;
            let bound = grpc_listener.local_addr().unwrap_or(grpc_addr);
            eprintln!("sluice gRPC (KServe v2) listening on {bound}");
            let service = v2::grpc::InferenceService::new(registry.clone()).into_server(cfg.limits.max_body_bytes);
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let signal = stopped(stop.clone());
            Some(tokio::spawn(async move {
                let served = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, signal)
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the gRPC server failed");
                }
            }))
        }
        None => None,
    };
    let info = NodeInfo {
        id: node.id.clone(),
        role: node.role.to_string(),
        models: if node.role.runs_models() {
            registry.ready().map(|m| m.spec().name.clone()).collect()
        } else {
            Vec::new()
        },
        address: Some(addr.to_string()),
        started_at: sluice_store::now_ms(),
    };
    let heartbeat = sluice_jobs::node::spawn_heartbeat(store.clone(), info, node.clone(), stop.clone());
    tracing::info!(%addr, node = %node.id, role = %node.role, store = %cfg.store, models = registry.entries().len(), "sluice serving");
    eprintln!("sluice listening on http://{addr}");
    let jobs = state.jobs().clone();
    let http = axum::serve(listener, app(state)).with_graceful_shutdown(stopped(stop.clone()));
    tokio::select! {
        served = http => served.map_err(|source| ServeError::Listen { addr, source })?,
        () = deadline() => tracing::warn!("shutdown grace period over; closing the HTTP connections still open"),
    }
    if let Some(grpc) = grpc {
        tokio::select! {
            _ = grpc => {}
            () = deadline() => tracing::warn!("shutdown grace period over; closing the gRPC calls still open"),
        }
    }
    // The shutdown stopped the source readers: another api node takes their jobs at once.
    jobs.release_ingests().await;
    // The output writers commit what they hold, then another api node goes on with them.
    jobs.release_exports(grace.min(Duration::from_secs(10))).await;
    tracing::info!("shutting down: finishing running batches");
    let at = signaled.get().copied().unwrap_or_else(tokio::time::Instant::now);
    let left = (at + grace).saturating_duration_since(tokio::time::Instant::now());
    scheduler.shutdown(&registry, left).await;
    let _ = heartbeat.await;
    if let Err(e) = store.remove_node(&node.id).await {
        tracing::warn!(node = %node.id, error = %e, "cannot remove this node from the node table; it ages out");
    }
    Ok(())
}
