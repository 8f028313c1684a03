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
use sluice_store::Store;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;

pub use error::ApiError;
pub use sluice_jobs::{Jobs, JobsError, Limits, Registry, Scheduler, SchedulerConfig, ShutdownSignal};

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Model repository.
    pub models: PathBuf,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Listen address (HTTP: jobs API, KServe v2 REST, dashboard, metrics).
    pub listen: SocketAddr,
    /// Listen address of the KServe v2 gRPC service; `None`: no gRPC.
    pub grpc_listen: Option<SocketAddr>,
    /// Folders from which `source` jobs may read files.
    pub source_roots: Vec<PathBuf>,
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
}

impl AppState {
    /// The jobs service over this state's store, models and scheduler.
    pub fn jobs(&self) -> Jobs {
        Jobs::new(
            self.store.clone(),
            self.registry.clone(),
            self.scheduler.clone(),
            self.source_roots.clone(),
            self.limits.clone(),
            self.shutdown.clone(),
        )
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
    #[error("cannot open the store in {path}: {message}")]
    Store {
        /// The data dir.
        path: PathBuf,
        /// Cause.
        message: String,
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
    let store = sluice_store::SqliteStore::open(&cfg.data_dir)
        .await
        .map_err(|e| ServeError::Store {
            path: cfg.data_dir.clone(),
            message: e.to_string(),
        })?;
    let store: Arc<dyn Store> = Arc::new(store);
    let registry = Arc::new(Registry::load(&cfg.models).await.map_err(|source| ServeError::Models {
        path: cfg.models.clone(),
        source,
    })?);
    sluice_jobs::recover_unclosed(store.as_ref()).await;
    let scheduler = Scheduler::start(store.clone(), &registry, cfg.scheduler.clone());
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
    let state = AppState {
        registry: registry.clone(),
        store,
        scheduler: scheduler.clone(),
        source_roots: Arc::new(roots),
        limits: cfg.limits.clone(),
        shutdown: stop.clone(),
    };
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
    tracing::info!(%addr, models = registry.entries().len(), "sluice serving");
    eprintln!("sluice listening on http://{addr}");
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
    tracing::info!("shutting down: finishing running batches");
    let at = signaled.get().copied().unwrap_or_else(tokio::time::Instant::now);
    let left = (at + grace).saturating_duration_since(tokio::time::Instant::now());
    scheduler.shutdown(&registry, left).await;
    Ok(())
}
