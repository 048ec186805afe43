//! The sync protocol's read path over HTTP: `POST /net/v1/rpc` with one Borsh message
//! answers it as the node's sync engine answers a peer. Anyone may ask (a node that is not
//! admitted to the p2p network joins and follows through it); it is rate-limited per client
//! network.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use blyan_net::{ChainStore, answer, wire::Msg};
use blyan_node::Node;

use crate::ApiError;

/// Largest request body: requests are a few dozen bytes; a status is at most a few hundred.
pub(crate) const RPC_BODY_MAX: usize = 4096;

pub(crate) async fn rpc(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let msg = match Msg::decode(&body) {
        Ok(m) => m,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "malformed_message", e.to_string())
                .into_response();
        }
    };
    let store = ChainStore::new(node.store().clone(), node.network());
    // Store reads (up to a 1 MiB chunk) off the async threads.
    let reply = tokio::task::spawn_blocking(move || answer(&store, &msg)).await;
    match reply {
        Ok(Some(reply)) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            reply.encode(),
        )
            .into_response(),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("answering a sync request: {e}"),
        )
        .into_response(),
    }
}

/// `GET /net/peers`: the peers this node follows, as its sync engine last reported them (key,
/// API address, heads, round trip, blocks received and served, bans and the last ban's
/// reason), and the summary the `network` health component is made of.
pub(crate) async fn peers(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let (view, peers) = node.network_report();
    Json(serde_json::json!({ "summary": view, "peers": peers }))
}

/// `GET /net/id`: this node's network key, the account address it is bound to, the binding
/// signature (anyone can check it) and its p2p address, if it listens on one: what another
/// node needs to follow it (`--peer KEY@HOST:PORT`) or an operator to admit it.
pub(crate) async fn id(State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    node.net_identity().map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_identity",
            "this node has no network identity yet",
        )
    })
}

/// `GET /net/registry`: every admitted network key and its roles, from the meta chain.
pub(crate) async fn registry(
    State(node): State<Arc<Node>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let registry = crate::blocking(move || node.registry()).await?;
    let members: Vec<_> = registry.members.into_values().collect();
    Ok(Json(serde_json::json!({ "members": members })))
}

/// Body of `POST /net/admit`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdmitRequest {
    /// The network key, 64 hex digits.
    key: String,
    /// `host` or `validator`.
    role: String,
    /// False removes the role [default: true].
    #[serde(default = "yes")]
    admitted: bool,
}

fn yes() -> bool {
    true
}

/// `POST /net/admit` (operator only): appends an admission block giving (or, with
/// `"admitted": false`, taking) a role to a network key; peers receive it like any block.
pub(crate) async fn admit(
    State(node): State<Arc<Node>>,
    crate::ApiJson(req): crate::ApiJson<AdmitRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = blyan_net::parse_key(&req.key).map_err(|e| ApiError::invalid("key", e))?;
    let role: blyan_chain::Role = req
        .role
        .parse()
        .map_err(|e: String| ApiError::invalid("role", e))?;
    let bytes = blyan_net::key_bytes(&key);
    let admitted = req.admitted;
    let block =
        crate::blocking(move || node.admit(bytes, role, admitted, blyan_node::unix_ms())).await?;
    Ok(Json(serde_json::json!({
        "block": block,
        "key": hex::encode(bytes),
        "role": role,
        "admitted": admitted,
    })))
}
