//! `GET /v1/nodes`: the live nodes sharing this node's store.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{ApiError, AppState};

/// One live node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// Its id (`--node-id`).
    pub id: String,
    /// `all`, `api` or `worker`.
    pub role: String,
    /// The models it runs (none for an api node).
    pub models: Vec<String>,
    /// Where it listens for HTTP.
    pub address: Option<String>,
    /// When it started, unix ms.
    pub started_at: i64,
    /// Its last heartbeat, unix ms (the store's clock).
    pub heartbeat_at: i64,
    /// Items it holds leased now (claimed, not finished).
    pub leases: u64,
    /// Whether this is the node that answered.
    pub this_node: bool,
}

/// `GET /v1/nodes` body.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Nodes whose last heartbeat is at most three leases old, by id.
    pub nodes: Vec<NodeView>,
}

/// The live nodes of the installation, as their heartbeats in the store say.
#[utoipa::path(get, path = "/v1/nodes", operation_id = "list_nodes", responses(
    (status = 200, body = NodeList),
    (status = 503, description = "The job store cannot be read", body = crate::error::ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let max_age = u64::try_from(state.node.live_within().as_millis()).unwrap_or(u64::MAX);
    let nodes = state
        .store
        .nodes(max_age)
        .await?
        .into_iter()
        .map(|n| NodeView {
            this_node: n.info.id == state.node.id,
            id: n.info.id,
            role: n.info.role,
            models: n.info.models,
            address: n.info.address,
            started_at: n.info.started_at,
            heartbeat_at: n.heartbeat_at,
            leases: n.leases,
        })
        .collect();
    Ok(Json(NodeList { nodes }))
}
