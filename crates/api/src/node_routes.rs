//! Endpoints about the node itself: its chain, experts, Proof of Learning, health and
//! metrics.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::request::Parts,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use blyan_chain::ChainId;
use blyan_node::pol::Submission;
use blyan_node::{Node, Stage};
use blyan_primitives::{Address, ExpertId, Hash, Signature, SignatureError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::billing::Caller;
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
    let (header, signature) = blocking(move || node.block(&hash)).await?;
    Ok(Json(
        json!({"hash": hash, "header": header, "signature": signature}),
    ))
}

/// `GET /chain/blocks/{hash}/payload`: the block's payload bytes, checked before they leave.
pub(crate) async fn block_payload(
    State(node): State<Arc<Node>>,
    Path(hash): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let hash: Hash = hash
        .parse()
        .map_err(|e| ApiError::invalid("hash", format!("{hash:?} is not a block hash: {e}")))?;
    let bytes = blocking(move || node.block_payload(&hash)).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
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

/// `GET /pol/status`: mode, thresholds, pool remaining, recent verdicts, the evaluation in
/// progress and the owed book. It reads a snapshot (never waits for an evaluation) and one
/// ledger query, on the blocking pool.
pub(crate) async fn pol_status(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let status = blocking(move || Ok(node.pol_status())).await?;
    Ok(Json(json!(status)))
}

/// Query of `POST /pol/validate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ValidateQuery {
    /// The contributor's signature of the submission digest (network, candidate, parent).
    signature: Option<String>,
    /// The contributor the caller expects to be paid: refused unless it is the signer.
    contributor: Option<String>,
    /// Proof-of-work nonce (hybrid mode).
    pow_nonce: Option<u64>,
}

/// `POST /pol/validate?signature=SIG[&contributor=ADDR][&pow_nonce=N]`: the body is a
/// candidate file (`application/octet-stream`, as `blyan train expert` writes it); `SIG` is
/// the contributor's EIP-191 signature of the submission digest, and whoever signed it is
/// paid. Answers the verdict, or a refusal with a stable code when the candidate is rejected
/// before evaluation.
pub(crate) async fn pol_validate(
    State(node): State<Arc<Node>>,
    parts: Parts,
    query: Result<Query<ValidateQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    // An evaluation spends hidden-pool items: callers from elsewhere need an account.
    // and pay the submission fee (refunded on acceptance).
    let caller = Caller::of(&parts)?;
    let payer = if caller.loopback {
        None
    } else {
        let Some(key) = caller.api_key else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "submissions from other machines need `Authorization: Bearer <api key>`",
            ));
        };
        let n = node.clone();
        Some(blocking(move || n.payer(Some(&key), false)).await?)
    };
    let Query(q) = query?;
    let signature: Signature = q
        .signature
        .as_deref()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_signature",
                "a submission carries the contributor's signature (?signature=0x…) of its \
                 digest: SHA-256 of \"blyan-submission-v1\", the network, the candidate's id and \
                 its parent",
            )
        })?
        .parse()
        .map_err(|e: SignatureError| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                e.code(),
                format!("signature: {e}"),
            )
        })?;
    let contributor: Option<Address> = q
        .contributor
        .as_deref()
        .map(|c| {
            c.parse()
                .map_err(|e| ApiError::invalid("contributor", format!("{c:?}: {e}")))
        })
        .transpose()?;
    if body.is_empty() {
        return Err(ApiError::invalid(
            "body",
            "the body must be a candidate file",
        ));
    }
    let submission = Submission {
        candidate: body.to_vec(),
        signature,
        contributor,
        pow_nonce: q.pow_nonce,
        payer,
    };
    let report = blocking(move || node.pol_submit(submission, crate::unix_ms())).await?;
    Ok(Json(json!(report)))
}

/// Body of `POST /pol/replicate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicateRequest {
    /// The accepted verdict to replicate.
    proof: String,
}

/// `POST /pol/replicate`: replicate an accepted verdict on a fresh sample (operator only:
/// it spends hidden-pool items).
pub(crate) async fn pol_replicate(
    State(node): State<Arc<Node>>,
    ApiJson(req): ApiJson<ReplicateRequest>,
) -> Result<Json<Value>, ApiError> {
    let proof: Hash = req
        .proof
        .parse()
        .map_err(|e| ApiError::invalid("proof", format!("{:?}: {e}", req.proof)))?;
    let report = blocking(move || node.pol_replicate(proof, crate::unix_ms())).await?;
    Ok(Json(json!(report)))
}

/// `GET /pol/proofs/{hash}/verify`: recompute a verdict from the chain alone (its reveal
/// opens the items it used), as anyone without the hidden pool would.
pub(crate) async fn pol_verify(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(hash) = path?;
    let proof: Hash = hash
        .parse()
        .map_err(|e| ApiError::invalid("hash", format!("{hash:?}: {e}")))?;
    let check = blocking(move || node.pol_verify(proof, true)).await?;
    Ok(Json(json!(check)))
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

/// `GET /experts/hosted`: what this node computes for other nodes, the key that signs its
/// answers, and the hosts it knows. (The first call unlocks the network key: blocking.)
pub(crate) async fn hosted(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let report = blocking(move || Ok(node.hosted_report())).await?;
    Ok(Json(json!(report)))
}

/// Who calls, on a network that admits its members: all three headers, or none.
fn caller_proof(headers: &axum::http::HeaderMap) -> Option<blyan_node::hosting::CallerProof> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match (
        header("x-blyan-caller"),
        header("x-blyan-caller-time"),
        header("x-blyan-caller-signature"),
    ) {
        (Some(key), Some(at_ms), Some(signature)) => Some(blyan_node::hosting::CallerProof {
            key,
            at_ms,
            signature,
        }),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchQuery {
    request: String,
}

/// `POST /experts/compute?request=`: several expert calls for another node in one request
/// (the body of `blyan_node::hosting::encode_batch`); per call its output's length and the
/// output rows (f32 LE), then one Ed25519 signature of the batch's answer digest
/// (`blyan_node::hosting::batch_answer_digest`). All or none; signed by the caller like a
/// single call.
pub(crate) async fn compute_batch(
    State(node): State<Arc<Node>>,
    query: Result<Query<BatchQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Query(q) = query?;
    let signer = node.hosted_account().to_string();
    let caller = caller_proof(&headers);
    // A small batch (a layer's rows of a few streams for a tiny model) is computed on this
    // task: handing it to a blocking thread and back costs two thread switches, more than
    // its arithmetic. A larger one, or one that would first unlock the network key, goes
    // to the blocking pool.
    let answer = if node.batch_is_small(&body) {
        node.compute_batch_for_peer(&q.request, &body, caller.as_ref())?
    } else {
        blocking(move || node.compute_batch_for_peer(&q.request, &body, caller.as_ref())).await?
    };
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (
                axum::http::HeaderName::from_static("x-blyan-signer"),
                signer,
            ),
        ],
        answer,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComputeQuery {
    block: String,
    request: String,
}

/// `POST /experts/{id}/compute?block=&request=`: one expert's rows computed for another node
/// (body and answer in the binary forms of `blyan_model::ExpertRows` and f32 LE rows),
/// signed (`x-blyan-signature`: the Ed25519 signature, hex, of the answer digest by the
/// network key bound to the account `x-blyan-signer`). On a network that admits its
/// members, only for a member that signs the call (`x-blyan-caller`, `x-blyan-caller-time`,
/// `x-blyan-caller-signature`).
pub(crate) async fn compute(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    query: Result<Query<ComputeQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Query(q) = query?;
    let id: ExpertId = id
        .parse()
        .map_err(|e| ApiError::invalid("id", format!("{e}")))?;
    let block: Hash = q
        .block
        .parse()
        .map_err(|_| ApiError::invalid("block", "a block hash is 64 hex digits"))?;
    let signer = node.hosted_account().to_string();
    let caller = caller_proof(&headers);
    let (output, signature) =
        blocking(move || node.compute_for_peer(id, block, &q.request, &body, caller.as_ref()))
            .await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (
                axum::http::HeaderName::from_static("x-blyan-signature"),
                hex::encode(signature.to_bytes()),
            ),
            (
                axum::http::HeaderName::from_static("x-blyan-signer"),
                signer,
            ),
        ],
        output,
    )
        .into_response())
}
