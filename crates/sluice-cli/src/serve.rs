//! `sluice serve`: the jobs server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sluice_server::Role;

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: sluice_jobs::node::UnknownRole| e.to_string())
}

/// Arguments of `sluice serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model repository (a folder of model folders with model.toml).
    #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
    models: PathBuf,
    /// Where jobs, inputs and results are stored when --store is not given
    /// (SQLite, `sluice.db` in this folder: a single node).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
    data_dir: PathBuf,
    /// The job store shared by several nodes: postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// (or sqlite://DIR). Default: SQLite in --data-dir.
    #[arg(long, env = "SLUICE_STORE", hide_env_values = true)]
    store: Option<String>,
    /// This node's unique name among the nodes of one store (default: the host name).
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: Option<String>,
    /// What this node does: `api` accepts jobs and answers for them, `worker`
    /// runs its models on every job's work, `all` does both.
    #[arg(long, env = "SLUICE_ROLE", default_value = "all", value_parser = parse_role)]
    role: Role,
    /// Seconds a claimed item stays leased to this node without a renewal
    /// (heartbeats renew it every third of that); a node that dies loses its
    /// items to the others after it.
    #[arg(long, env = "SLUICE_LEASE_S", default_value_t = 15)]
    lease_s: u64,
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
    /// Folder, or object-store prefix (s3://bucket/prefix, gs://.., az://..),
    /// that `source` jobs may read (repeatable); none: sources disabled.
    #[arg(long = "source-root", env = "SLUICE_SOURCE_ROOTS", value_delimiter = ',')]
    source_roots: Vec<String>,
    /// Folder, or object-store prefix, under which jobs may write their
    /// results (`"output": {"uri", "format"}`; repeatable); none: job
    /// outputs disabled.
    #[arg(long = "output-root", env = "SLUICE_OUTPUT_ROOTS", value_delimiter = ',')]
    output_roots: Vec<String>,
    /// Size at which a part of a job output is committed and the next one
    /// begins, MiB (fractions allowed).
    #[arg(long, env = "SLUICE_OUTPUT_PART_MB", default_value_t = 64.0)]
    output_part_mb: f64,
    /// Seconds after which results waiting in an open part of a job output
    /// are committed even if the part is not full.
    #[arg(long, env = "SLUICE_OUTPUT_FLUSH_S", default_value_t = 60)]
    output_flush_s: u64,
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
    if !(1..=3600).contains(&args.lease_s) {
        anyhow::bail!("--lease-s must be between 1 and 3600 seconds");
    }
    if !(args.output_part_mb.is_finite() && args.output_part_mb > 0.0) {
        anyhow::bail!("--output-part-mb must be a positive number of MiB");
    }
    if args.output_flush_s == 0 {
        anyhow::bail!("--output-flush-s must be at least 1");
    }
    let (object_outputs, local_outputs): (Vec<String>, Vec<String>) = args
        .output_roots
        .iter()
        .cloned()
        .partition(|r| sluice_io::is_object_uri(r));
    let outputs = sluice_server::OutputConfig {
        roots: local_outputs.into_iter().map(PathBuf::from).collect(),
        object_roots: object_outputs,
        max_part_bytes: (args.output_part_mb * 1048576.0).ceil() as u64,
        flush_every: Duration::from_secs(args.output_flush_s),
    };
    let node_id = args.node_id.unwrap_or_else(sluice_jobs::node::default_node_id);
    sluice_jobs::node::validate_node_id(&node_id).map_err(|e| anyhow::anyhow!("--node-id {node_id:?}: {e}"))?;
    let store = sluice_store::StoreConfig::from_url(args.store.as_deref(), &args.data_dir)
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let cfg = sluice_server::ServerConfig {
        models: args.models,
        store,
        node: sluice_server::NodeConfig {
            id: node_id,
            role: args.role,
            lease: Duration::from_secs(args.lease_s),
        },
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
        source_roots: args
            .source_roots
            .iter()
            .filter(|r| !sluice_io::is_object_uri(r))
            .map(PathBuf::from)
            .collect(),
        object_source_roots: args
            .source_roots
            .iter()
            .filter(|r| sluice_io::is_object_uri(r))
            .cloned()
            .collect(),
        outputs,
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
