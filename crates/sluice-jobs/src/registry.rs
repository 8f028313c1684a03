//! The served models: every `*/model.toml` under the models folder, loaded at
//! start. A model that fails to load is kept with its error so the API can
//! say why, instead of the server refusing to start for one bad folder.
//!
//! An api node ([`Registry::declare`]) reads the specs only: it validates
//! jobs against them and leaves running them to the worker nodes.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_core::ModelSpec;
use sluice_engine::Model;

/// A model entry: ready, or why not.
pub enum Entry {
    /// Loaded and serving.
    Ready(Model),
    /// Known from its spec, not loaded: an api node accepts jobs for it and
    /// the worker nodes run them.
    Declared(Box<ModelSpec>),
    /// Failed to load.
    Failed {
        /// The spec, if it parsed.
        spec: Option<Box<ModelSpec>>,
        /// Why it failed.
        error: String,
    },
}

/// All models of the repository.
#[derive(Default)]
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

impl Registry {
    /// Loads every model folder under `dir`. Needs a Tokio runtime.
    pub async fn load(dir: &Path) -> std::io::Result<Registry> {
        let folders = sluice_core::spec::model_dirs(dir)?;
        let mut entries = BTreeMap::new();
        for folder in folders {
            let fallback = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec = match ModelSpec::load(&folder) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(model = %fallback, error = %e, "model spec is invalid");
                    entries.insert(
                        fallback,
                        Entry::Failed {
                            spec: None,
                            error: e.to_string(),
                        },
                    );
                    continue;
                }
            };
            let name = spec.name.clone();
            let spec2 = spec.clone();
            let loaded = tokio::task::spawn_blocking(move || sluice_engine::load_backend(&spec2)).await;
            let entry = match loaded {
                Ok(Ok(backend)) => match Model::start(spec.clone(), backend) {
                    Ok(m) => Entry::Ready(m),
                    Err(e) => Entry::Failed {
                        spec: Some(Box::new(spec)),
                        error: e.to_string(),
                    },
                },
                Ok(Err(e)) => Entry::Failed {
                    spec: Some(Box::new(spec)),
                    error: e.to_string(),
                },
                Err(e) => Entry::Failed {
                    spec: Some(Box::new(spec)),
                    error: format!("loading panicked: {e}"),
                },
            };
            if let Entry::Failed { error, .. } = &entry {
                tracing::error!(model = %name, %error, "model failed to load");
            }
            entries.insert(name, entry);
        }
        Ok(Registry { entries })
    }

    /// Reads the spec of every model folder under `dir` without loading any
    /// model (an api node). An invalid spec is kept as failed, with its error.
    pub fn declare(dir: &Path) -> std::io::Result<Registry> {
        let mut entries = BTreeMap::new();
        for folder in sluice_core::spec::model_dirs(dir)? {
            match ModelSpec::load(&folder) {
                Ok(spec) => {
                    entries.insert(spec.name.clone(), Entry::Declared(Box::new(spec)));
                }
                Err(e) => {
                    let name = folder
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    tracing::error!(model = %name, error = %e, "model spec is invalid");
                    entries.insert(
                        name,
                        Entry::Failed {
                            spec: None,
                            error: e.to_string(),
                        },
                    );
                }
            }
        }
        Ok(Registry { entries })
    }

    /// A registry of already started models (tests).
    pub fn from_models(models: Vec<Model>) -> Registry {
        Registry {
            entries: models
                .into_iter()
                .map(|m| (m.spec().name.clone(), Entry::Ready(m)))
                .collect(),
        }
    }

    /// The ready model called `name`.
    pub fn get(&self, name: &str) -> Option<&Model> {
        match self.entries.get(name) {
            Some(Entry::Ready(m)) => Some(m),
            _ => None,
        }
    }

    /// Every entry by name.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Ready models.
    pub fn ready(&self) -> impl Iterator<Item = &Model> {
        self.entries.values().filter_map(|e| match e {
            Entry::Ready(m) => Some(m),
            Entry::Declared(_) | Entry::Failed { .. } => None,
        })
    }

    /// The spec of `name`, loaded or only declared.
    pub fn spec(&self, name: &str) -> Option<&ModelSpec> {
        match self.entries.get(name) {
            Some(Entry::Ready(m)) => Some(m.spec()),
            Some(Entry::Declared(spec)) => Some(spec),
            _ => None,
        }
    }

    /// Whether `name` can take jobs here: loaded, or declared on an api node.
    pub fn accepts_jobs(&self, name: &str) -> bool {
        self.spec(name).is_some()
    }

    /// Why `name` cannot run here, for a client: it failed to load, or this
    /// is an api node that only declares it. `None` if it is ready or unknown.
    pub fn unavailable(&self, name: &str) -> Option<String> {
        match self.entries.get(name) {
            Some(Entry::Failed { error, .. }) => Some(format!("model '{name}' failed to load: {error}")),
            Some(Entry::Declared(_)) => Some(format!(
                "model '{name}' does not run on this node (an api node): send real-time requests to a worker node"
            )),
            _ => None,
        }
    }

    /// Why `name` is not ready, if it failed.
    pub fn failure(&self, name: &str) -> Option<&str> {
        match self.entries.get(name) {
            Some(Entry::Failed { error, .. }) => Some(error),
            _ => None,
        }
    }
}
