//! One node of an installation: who it is, what it does, and the heartbeat
//! that keeps its leases alive.
//!
//! Several `sluice serve` processes share one store (PostgreSQL). Each has a
//! unique id (`--node-id`) and a [`Role`]: an **api** node accepts jobs and
//! answers for them but runs no model; a **worker** loads models and claims
//! their work; **all** (the default, and the only role a single SQLite node
//! needs) does both. Every node writes a heartbeat into the store's node
//! table (what `GET /v1/nodes` lists) and, in the same beat, renews the
//! leases on the items it holds, every third of the lease. A node that dies
//! stops renewing: its leases expire and other nodes claim the items again.
//! A node that stops gracefully releases them at once (the scheduler's
//! shutdown) and removes its row; one that starts again under the same id
//! releases what its previous life held, so nothing waits for the expiry.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{NodeInfo, Store};
use tokio::task::JoinHandle;

use crate::ShutdownSignal;

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Accepts jobs and runs them: a single node, or one of several equal ones.
    #[default]
    All,
    /// Accepts jobs and answers for them; runs no model.
    Api,
    /// Runs the models it loads on the work of every job; takes no new job
    /// itself (its HTTP API still answers, e.g. health and metrics).
    Worker,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::All, Role::Api, Role::Worker];

    /// The name used on the command line and in the node table.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Api => "api",
            Role::Worker => "worker",
        }
    }

    /// Whether the node loads models and claims their work.
    pub fn runs_models(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }

    /// Whether the node accepts new jobs.
    pub fn accepts_jobs(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `all`, `api` or `worker`.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: use all, api or worker")]
pub struct UnknownRole(String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// This node's identity and lease length.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Unique among the nodes of one store.
    pub id: String,
    /// What the node does.
    pub role: Role,
    /// How long a claimed item stays leased without a renewal.
    pub lease: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: default_node_id(),
            role: Role::All,
            lease: DEFAULT_LEASE,
        }
    }
}

impl NodeConfig {
    /// How often the heartbeat runs: a third of the lease, so that two beats
    /// can fail before a lease expires.
    pub fn beat_interval(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }

    /// How old a heartbeat may be for its node to count as live: three
    /// leases (a node that missed that many beats is gone).
    pub fn live_within(&self) -> Duration {
        self.lease.saturating_mul(3)
    }
}

/// The lease length when none is configured.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The node id when none is given: the host name (what a Kubernetes pod is
/// called; characters a node id may not hold become `-`), else `node-` and
/// eight random hex digits.
pub fn default_node_id() -> String {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if host.is_empty() {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("node-{}", &random[..8])
    } else {
        host
    }
}

/// Checks a node id given by a user: 1 to 128 characters, letters, digits,
/// `-`, `_`, `.` and `:`.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("a node id has 1 to 128 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "a node id may hold letters, digits, '-', '_', '.' and ':', not {c:?}"
        ));
    }
    Ok(())
}

/// Starts the heartbeat of `info`'s node: every [`NodeConfig::beat_interval`]
/// until `stop`, it writes the node's row and renews its leases (workers).
/// Failures are logged with their class and retried at the next beat; the
/// store's health (what `/readyz` reports) follows them.
pub fn spawn_heartbeat(store: Arc<dyn Store>, info: NodeInfo, cfg: NodeConfig, stop: ShutdownSignal) -> JoinHandle<()> {
    tokio::spawn(async move {
        let lease_ms = u64::try_from(cfg.lease.as_millis()).unwrap_or(u64::MAX);
        let mut failures = 0u32;
        loop {
            let beat = async {
                store.heartbeat(&info).await?;
                if cfg.role.runs_models() {
                    store.renew_leases(&info.id, lease_ms).await?;
                }
                Ok::<(), sluice_store::StoreError>(())
            };
            match beat.await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(node = %info.id, after = failures, "heartbeat reaches the store again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    if failures <= 3 || failures.is_multiple_of(20) {
                        tracing::warn!(
                            node = %info.id, error = %e, class = e.failure_class().unwrap_or("request"),
                            attempt = failures, "heartbeat failed; leases expire unless the next one succeeds"
                        );
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(cfg.beat_interval()) => {}
                () = stop.wait() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
        assert_eq!(" Worker ".parse::<Role>().ok(), Some(Role::Worker));
        let err = "boss".parse::<Role>().expect_err("unknown role");
        assert!(err.to_string().contains("all, api or worker"), "{err}");
        assert!(Role::Api.accepts_jobs() && !Role::Api.runs_models());
        assert!(Role::Worker.runs_models() && !Role::Worker.accepts_jobs());
        assert!(Role::All.runs_models() && Role::All.accepts_jobs());
    }

    #[test]
    fn node_ids_are_checked() {
        assert!(validate_node_id("worker-1.gpu:a_b").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id(&"x".repeat(129)).is_err());
        let err = validate_node_id("a b").expect_err("space");
        assert!(err.contains("' '"), "{err}");
        let id = default_node_id();
        assert!(validate_node_id(&id).is_ok(), "{id:?}");
    }

    #[test]
    fn beats_come_three_times_a_lease() {
        let cfg = NodeConfig {
            id: "n".into(),
            role: Role::Worker,
            lease: Duration::from_secs(15),
        };
        assert_eq!(cfg.beat_interval(), Duration::from_secs(5));
        assert_eq!(cfg.live_within(), Duration::from_secs(45));
    }
}
