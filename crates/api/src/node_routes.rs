//! Endpoints about the node itself: its chain, experts, Proof of Learning, health and
//! metrics.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use blyan_chain::ChainId;
use blyan_node::{Node, Stage};
use blyan_primitives::{ExpertId, Hash};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ApiJson, blocking};

/// Blocks per page when the query does not say.
const PAGE_LIMIT_DEFAULT: usize = 50;

/// `GET /node`.
pub(crate) async fn info(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({
        "node": node.info(),
        "active_generations": node.active_generations(),
        "shutting_down": node.is_shutting_down(),
    }))
}

#[derive(Debug, Deserialize)]
pub(crate) struct BlocksQuery {
    chain: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /chain/blocks?chain=&offset=&limit=`.
pub(crate) async fn blocks(
    State(node): State<Arc<Node>>,
    query: Result<Query<BlocksQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let chain = match q.chain.as_deref() {
        None | Some("") | Some("all") => None,
        Some(c) => Some(c.parse::<ChainId>().map_err(|_| {
            ApiError::invalid(
                "chain",
                format!("unknown chain {c:?}; expected meta, param, dataset, proof or ledger"),
            )
        })?),
    };
    let page = blocking(move || {
        node.blocks(
            chain,
            q.offset.unwrap_or(0),
            q.limit.unwrap_or(PAGE_LIMIT_DEFAULT),
        )
    })
    .await?;
    Ok(Json(json!(page)))
}

/// `GET /chain/blocks/{hash}`.
pub(crate) async fn block(
    State(node): State<Arc<Node>>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hash: Hash = hash
        .parse()
        .map_err(|e| ApiError::invalid("hash", format!("{hash:?} is not a block hash: {e}")))?;
    let header = blocking(move || node.block(&hash)).await?;
    Ok(Json(json!({"hash": hash, "header": header})))
}

/// `GET /experts`.
pub(crate) async fn experts(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let stats_node = node.clone();
    let experts = blocking(move || node.experts()).await?;
    let stats = stats_node.cache_stats();
    let lookups = stats.hits + stats.misses;
    Ok(Json(json!({
        "experts": experts,
        "cache": {
            "hits": stats.hits,
            "misses": stats.misses,
            "evictions": stats.evictions,
            "bytes": stats.bytes,
            "entries": stats.entries,
            "budget_bytes": stats_node.config().expert_cache_mib << 20,
            "hit_rate": if lookups > 0 { Some(stats.hits as f64 / lookups as f64) } else { None },
        },
        "pins": stats_node.info().pins,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServingRequest {
    /// Expert (`L.E`) → version block hash; empty serves every head.
    pins: BTreeMap<String, String>,
}

/// `PUT /experts/serving`: choose which expert versions are served.
pub(crate) async fn serve_versions(
    State(node): State<Arc<Node>>,
    ApiJson(req): ApiJson<ServingRequest>,
) -> Result<Json<Value>, ApiError> {
    let mut pins = BTreeMap::new();
    for (expert, hash) in req.pins {
        let id: ExpertId = expert
            .parse()
            .map_err(|e| ApiError::invalid("pins", format!("{expert:?}: {e}")))?;
        let hash: Hash = hash
            .parse()
            .map_err(|e| ApiError::invalid("pins", format!("{hash:?}: {e}")))?;
        pins.insert(id, hash);
    }
    let info_node = node.clone();
    blocking(move || node.serve_versions(pins)).await?;
    Ok(Json(json!({"pins": info_node.info().pins})))
}

/// `GET /pol/status`.
pub(crate) async fn pol_status() -> Json<Value> {
    Json(json!({
        "available": false,
        "mode": null,
        "reason": "Proof of Learning is not part of this build yet; candidates cannot be submitted",
        "candidates": 0,
    }))
}

/// `POST /pol/validate`.
pub(crate) async fn pol_validate() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "pol_unavailable",
        "Proof of Learning is not part of this build yet",
    )
}

/// `GET /health`: the latest Agent Checker verdict.
pub(crate) async fn health(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!(node.health()))
}

/// `GET /health/live`: the process answers.
pub(crate) async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// `GET /health/ready`: 200 when the node is at least at stage Development and not shutting
/// down, else 503.
pub(crate) async fn ready(State(node): State<Arc<Node>>) -> Response {
    let health = node.health();
    let ready = health.stage >= Stage::Development && !node.is_shutting_down();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "stage": health.stage, "readiness": health.readiness})),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = blocking(move || node.render_metrics()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
