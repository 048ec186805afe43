//! The ledger over HTTP: supply, balances, history, transfers and the audit.
//!
//! Amounts in answers are integer nano-BLY (1 BLY = 10⁹); amounts in requests are decimal BLY
//! strings (`"1.5"`), never JSON numbers, so no client rounds them. Reads are open; a
//! transfer pays from the caller's account (its API key, or the loopback account for a
//! keyless local caller); the audit, which replays the whole ledger, is for local callers.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use blyan_ledger::{HISTORY_LIMIT_MAX, parse_amount};
use blyan_node::{Node, NodeError};
use blyan_primitives::Address;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::billing::Billed;
use crate::{ApiError, blocking};

/// Postings per history page when the query does not say.
const HISTORY_LIMIT_DEFAULT: usize = 50;

fn resolve(node: &Node, who: &str) -> Result<Address, NodeError> {
    node.ledger().resolve(who).map_err(NodeError::Ledger)
}

/// `GET /ledger`: the supply and the ledger's size.
pub(crate) async fn supply(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let n = node.clone();
    let supply = blocking(move || n.supply()).await?;
    let e = *node.ledger().economics();
    Ok(Json(json!({
        "backend": node.ledger().store().backend(),
        "supply": supply,
        "fee_per_1k_tokens": e.fee_per_1k_tokens,
        "royalty_bps": e.royalty_bps,
        "operator_bps": e.operator_bps,
        "burn_bps": e.burn_bps,
        "host_bps": e.host_bps,
        "operator": node.operator(),
    })))
}

/// `GET /ledger/accounts/{who}`: `{"address","available","pending"}` in nano-BLY.
pub(crate) async fn balance(
    State(node): State<Arc<Node>>,
    Path(who): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let balance = blocking(move || {
        let address = resolve(&node, &who)?;
        node.balance(address)
    })
    .await?;
    Ok(Json(json!(balance)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /ledger/accounts/{who}/history?before=&limit=`: postings, newest first.
pub(crate) async fn history(
    State(node): State<Arc<Node>>,
    Path(who): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return Err(ApiError::invalid(
            "limit",
            format!("limit is 1 to {HISTORY_LIMIT_MAX}"),
        ));
    }
    let (address, postings, owed) = blocking(move || {
        let address = resolve(&node, &who)?;
        let postings = node.history(address, q.before, limit)?;
        let owed = node
            .ledger()
            .owed_entries(Some(address))
            .map_err(NodeError::Ledger)?;
        Ok((address, postings, owed))
    })
    .await?;
    let next = if postings.len() == limit {
        postings.last().map(|p| p.seq)
    } else {
        None
    };
    Ok(Json(json!({
        "address": address,
        "postings": postings.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        "next_before": next,
        "owed": owed,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferRequest {
    to: String,
    /// Decimal BLY.
    amount: String,
    #[serde(default)]
    reference: String,
}

/// `POST /ledger/transfers`: pays `amount` BLY from the caller's account to `to`.
pub(crate) async fn transfer(
    State(node): State<Arc<Node>>,
    billed: Billed<TransferRequest>,
) -> Result<Json<Value>, ApiError> {
    let Billed { value, caller, .. } = billed;
    let amount = parse_amount(&value.amount).map_err(|e| ApiError::from(NodeError::Ledger(e)))?;
    let receipt = blocking(move || {
        let from = node.payer(caller.api_key.as_deref(), caller.loopback)?;
        let to = resolve(&node, &value.to)?;
        node.transfer(
            from,
            to,
            amount,
            &value.reference,
            caller.idempotency_key.as_deref(),
        )
    })
    .await?;
    Ok(Json(json!(receipt)))
}

/// `GET /ledger/audit`: the audit report (operator only: it replays every posting).
pub(crate) async fn audit(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let report = blocking(move || node.audit_ledger()).await?;
    Ok(Json(json!(report)))
}
