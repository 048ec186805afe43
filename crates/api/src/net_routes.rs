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
