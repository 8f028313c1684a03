//! `sluice`: the command-line entry point.
//!
//! Subcommands: `run` (a streaming bulk run of one model over a file or a
//! folder), `bench` (throughput per batch size, and against raw ONNX
//! Runtime), `tune` (the best batch size, instances and threads within
//! budgets, optionally written to model.toml), `models` (list and inspect a model repository), `serve` (the
//! jobs server), `jobs` (its client) and `loadtest` (concurrent real-time
//! clients against a server).

mod bench;
mod frames;
mod inputs;
mod jobs;
mod loadtest;
mod models;
mod run;
mod serve;
mod tune;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sluice_core::ModelSpec;

/// Sluice: batch inference for bulk data.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model over a file of texts/tensors or a folder of images; stream results to JSONL.
    Run(run::RunArgs),
    /// Measure throughput per batch size (and against raw ONNX Runtime).
    Bench(bench::BenchArgs),
    /// Decode videos into frames as a run would, without a model (decode-only frames/s; PNG files).
    Frames(frames::FramesArgs),
    /// Find the batch size, instances and threads with the most items/s within latency and memory budgets.
    Tune(tune::TuneArgs),
    /// List or inspect models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Serve the jobs API over HTTP.
    Serve(serve::ServeArgs),
    /// Load a running server with concurrent real-time clients (KServe v2), optionally beside a bulk job.
    Loadtest(loadtest::LoadtestArgs),
    /// Submit and follow jobs on a running server.
    Jobs {
        #[command(flatten)]
        server: jobs::ServerArg,
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
}

/// Settings that override a model's `model.toml`.
#[derive(Args, Clone, Debug, Default)]
pub struct Overrides {
    /// Largest batch per model call.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long)]
    pub max_delay_ms: Option<u64>,
    /// Most padded tokens (items × longest item) per batch, for text models.
    #[arg(long)]
    pub max_batch_tokens: Option<usize>,
    /// Parallel model instances.
    #[arg(long)]
    pub instances: Option<usize>,
    /// ONNX Runtime intra-op threads per instance (0: ONNX Runtime's default).
    #[arg(long, env = "SLUICE_THREADS")]
    pub threads: Option<usize>,
    /// Device: cpu or cuda:N.
    #[arg(long, env = "SLUICE_DEVICE")]
    pub device: Option<String>,
}

impl Overrides {
    /// Applies the overrides to a spec.
    pub fn apply(&self, spec: &mut ModelSpec) -> anyhow::Result<()> {
        if let Some(b) = self.batch_size {
            spec.max_batch_size = b;
        }
        if let Some(d) = self.max_delay_ms {
            spec.max_batch_delay_ms = d;
        }
        if let Some(t) = self.max_batch_tokens {
            spec.max_batch_tokens = Some(t);
        }
        if let Some(i) = self.instances {
            spec.instances = i;
        }
        if let Some(t) = self.threads {
            spec.intra_op_threads = t;
        }
        if let Some(d) = &self.device {
            spec.device.clone_from(d);
        }
        // The overridden spec goes through model.toml's own validation, so a
        // flag cannot produce a configuration a file could not.
        spec.validate()
            .map_err(|e| anyhow::anyhow!("invalid settings after the command-line overrides: {e}"))
    }
}

/// Loads `model.toml` from a model folder, or `models/<name>` when given a bare name.
pub fn load_spec(model: &str) -> anyhow::Result<ModelSpec> {
    let direct = PathBuf::from(model);
    let path = if direct.exists() {
        direct
    } else {
        let repo = PathBuf::from("models").join(model);
        if repo.exists() {
            repo
        } else {
            anyhow::bail!("model {model} not found: give a folder holding model.toml (e.g. models/minilm-l6)");
        }
    };
    ModelSpec::load(&path).map_err(anyhow::Error::from)
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Bench(args) => bench::bench(args).await,
            Command::Frames(args) => frames::frames(args).await,
            Command::Tune(args) => tune::tune(args).await,
            Command::Models(cmd) => models::models(cmd).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Loadtest(args) => loadtest::loadtest(args).await,
            Command::Jobs { server, command } => jobs::jobs(server, command).await,
        }
    })
}
