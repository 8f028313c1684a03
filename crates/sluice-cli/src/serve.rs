//! `sluice serve`: the jobs server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Arguments of `sluice serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model repository (a folder of model folders with model.toml).
    #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
    models: PathBuf,
    /// Where jobs, inputs and results are stored (SQLite).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of the KServe v2 gRPC service; default: the HTTP address with
    /// the next port (8081 beside 8080; any free port when --listen has port 0).
    #[arg(long, env = "SLUICE_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Serve only HTTP (no gRPC listener).
    #[arg(long, env = "SLUICE_NO_GRPC")]
    no_grpc: bool,
    /// Folder whose files `source` jobs may read (repeatable); none: sources disabled.
    #[arg(long = "source-root", env = "SLUICE_SOURCE_ROOTS", value_delimiter = ',')]
    source_roots: Vec<PathBuf>,
    /// Largest request body, MiB.
    #[arg(long, env = "SLUICE_MAX_BODY_MB", default_value_t = 64)]
    max_body_mb: usize,
    /// Largest single input, MiB.
    #[arg(long, env = "SLUICE_MAX_INPUT_MB", default_value_t = 16)]
    max_input_mb: usize,
    /// Most inputs in one job.
    #[arg(long, env = "SLUICE_MAX_INPUTS_PER_JOB", default_value_t = 50_000_000)]
    max_inputs_per_job: u64,
    /// Memory that image decodes in flight may take together, MiB: a decode
    /// waits while others hold it, and a picture that alone needs more fails.
    #[arg(long, env = "SLUICE_DECODE_MEMORY_MB", default_value_t = 1024)]
    decode_memory_mb: u64,
    /// Seconds shutdown waits for running batches.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    shutdown_grace_s: u64,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.decode_memory_mb == 0 {
        anyhow::bail!("--decode-memory-mb must be at least 1");
    }
    sluice_processing::decode::DecodeBudget::global().set_limit(args.decode_memory_mb << 20);
    let cfg = sluice_server::ServerConfig {
        models: args.models,
        data_dir: args.data_dir,
        listen: args.listen,
        grpc_listen: (!args.no_grpc).then(|| {
            args.grpc_listen.unwrap_or_else(|| {
                let port = if args.listen.port() == 0 {
                    0
                } else {
                    args.listen.port().saturating_add(1)
                };
                SocketAddr::new(args.listen.ip(), port)
            })
        }),
        source_roots: args.source_roots,
        limits: sluice_server::Limits {
            max_body_bytes: args.max_body_mb << 20,
            max_input_bytes: args.max_input_mb << 20,
            max_inputs_per_job: args.max_inputs_per_job,
        },
        shutdown_grace: Duration::from_secs(args.shutdown_grace_s),
        scheduler: sluice_server::SchedulerConfig::default(),
    };
    sluice_server::serve(cfg, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
