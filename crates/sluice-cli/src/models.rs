//! `sluice models list | inspect`: what a model expects and returns.

use std::path::PathBuf;

use clap::Subcommand;
use sluice_core::runtime::fmt_dims;
use sluice_core::spec::{ImagePostprocess, ProcessingSpec};
use sluice_core::{Gives, ModelSignature, ModelSpec, Takes};

/// `sluice models ...`
#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List the models of a repository.
    List {
        /// Model repository (a folder of model folders).
        #[arg(long, env = "SLUICE_MODELS", default_value = "models")]
        models: PathBuf,
    },
    /// Show a model's inputs, outputs and settings (loads the model).
    Inspect {
        /// Model folder or name under ./models.
        model: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Loads every `*/model.toml` under `dir`, sorted by name; a broken spec is
/// reported with its error instead of hiding the others.
pub fn scan(dir: &std::path::Path) -> anyhow::Result<Vec<Result<ModelSpec, String>>> {
    let dirs = sluice_core::spec::model_dirs(dir)
        .map_err(|e| anyhow::anyhow!("cannot read model repository {}: {e}", dir.display()))?;
    let out: Vec<_> = dirs
        .iter()
        .map(|p| ModelSpec::load(p).map_err(|e| e.to_string()))
        .collect();
    Ok(out)
}

/// One line: what an item is and what its result is. The kind of input and
/// output comes from [`ProcessingSpec::describe`]; the spec supplies details
/// (tokenizer, resize, labels) where it has them.
fn processing_summary(spec: &ModelSpec) -> String {
    let d = spec.processing.describe();
    let takes = match (d.takes, &spec.processing) {
        (Takes::Text, ProcessingSpec::Text(t)) => format!(
            "text: tokenizer {}, max {} tokens, {:?} pooling{}",
            t.tokenizer.display(),
            t.max_length,
            t.pooling,
            if t.normalize { ", L2-normalised" } else { "" }
        ),
        (Takes::Image { size, .. }, ProcessingSpec::Image(i)) => format!(
            "image: JPEG/PNG -> {}x{} {:?} {:?} {:?}",
            size[0], size[1], i.resize, i.layout, i.channels
        ),
        (Takes::Tensors, _) => "tensor: raw named tensors (JSON arrays or base64)".into(),
        (Takes::Files, _) => "bytes: named files (bytes, text or a JSON object of inputs)".into(),
        (takes, _) => takes.name().into(),
    };
    let image_post = match &spec.processing {
        ProcessingSpec::Image(i) => Some(&i.postprocess),
        _ => None,
    };
    let gives = match (d.gives, image_post) {
        (Gives::Embedding, _) => "embedding".into(),
        (Gives::Detections { .. }, Some(ImagePostprocess::Nanodet { labels, .. })) => {
            format!("NanoDet detections (labels {})", labels.display())
        }
        (Gives::Classes, Some(ImagePostprocess::Classification { top_k, .. })) => format!("top-{top_k} classes"),
        (Gives::Tensors, _) => "raw tensors".into(),
        (Gives::Files, _) => "named files".into(),
        (gives, _) => gives.name().into(),
    };
    format!("{takes} -> {gives}")
}

fn print_signature(sig: &ModelSignature) {
    println!("  inputs:");
    for t in &sig.inputs {
        println!(
            "    {:<24} {:<8} {}",
            t.name,
            t.dtype.map_or("?".into(), |d| d.to_string()),
            fmt_dims(&t.shape)
        );
    }
    println!("  outputs:");
    for t in &sig.outputs {
        println!(
            "    {:<24} {:<8} {}",
            t.name,
            t.dtype.map_or("?".into(), |d| d.to_string()),
            fmt_dims(&t.shape)
        );
    }
}

pub async fn models(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List { models } => {
            let specs = scan(&models)?;
            if specs.is_empty() {
                println!(
                    "no models under {} (each model is a folder with a model.toml)",
                    models.display()
                );
            }
            println!(
                "{:<16} {:<8} {:<6} {:<10} {:<8} PROCESSING",
                "NAME", "VERSION", "BATCH", "DEVICE", "RUNTIME"
            );
            for s in specs {
                match s {
                    Ok(s) => println!(
                        "{:<16} {:<8} {:<6} {:<10} {:<8} {}",
                        s.name,
                        s.version,
                        s.max_batch_size,
                        s.device,
                        format!("{:?}", s.runtime).to_lowercase(),
                        processing_summary(&s)
                    ),
                    Err(e) => println!("ERROR {e}"),
                }
            }
            Ok(())
        }
        ModelsCommand::Inspect { model, json } => {
            let spec = crate::load_spec(&model)?;
            let spec2 = spec.clone();
            let backend = tokio::task::spawn_blocking(move || sluice_engine::load_backend(&spec2)).await??;
            let sig = backend.signature().clone();
            if json {
                let v = serde_json::json!({
                    "name": spec.name,
                    "version": spec.version,
                    "runtime": spec.runtime,
                    "backend": backend.describe(),
                    "max_batch_size": spec.max_batch_size,
                    "max_batch_delay_ms": spec.max_batch_delay_ms,
                    "instances": spec.instances,
                    "device": spec.device,
                    "processing": spec.processing,
                    "signature": sig,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{} (version {})", spec.name, spec.version);
            if !spec.description.is_empty() {
                println!("  {}", spec.description);
            }
            println!("  folder:      {}", spec.dir.display());
            println!("  backend:     {}", backend.describe());
            println!(
                "  batching:    max {} items, wait at most {} ms, {} instance(s), length grouping {}",
                spec.max_batch_size,
                spec.max_batch_delay_ms,
                spec.instances,
                if spec.group_by_length { "on" } else { "off" }
            );
            println!("  processing:  {}", processing_summary(&spec));
            print_signature(&sig);
            Ok(())
        }
    }
}
