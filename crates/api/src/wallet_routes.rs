//! Wallet login and card top-ups over HTTP.
//!
//! `GET /auth/nonce` hands out a single-use nonce with what the login message must name;
//! `POST /auth/siwe` takes the signed EIP-4361 message and answers with a session token,
//! which then works as `Authorization: Bearer` wherever an API key does and bills the
//! wallet. `/auth/refresh`, `/auth/logout`, `/auth/me` and `/auth/api-keys` need that token
//! (an API key is not a login). `POST /payments/checkout` opens a Stripe Checkout for the
//! caller's account; Stripe calls `POST /payments/stripe/webhook` once it is paid.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
};
use blyan_node::{Node, NodeError, unix_ms};
use blyan_primitives::Address;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::billing::{Billed, bearer};
use crate::{ApiError, blocking};

/// The caller's session token: a bearer credential that is one; anything else is refused
/// with `401 session_required`.
pub(crate) fn session_token(headers: &HeaderMap) -> Result<String, ApiError> {
    match bearer(headers)? {
        Some(t) if blyan_auth::looks_like_session_token(&t) => Ok(t),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "session_required",
            "this needs a wallet login: `Authorization: Bearer <token from POST /auth/siwe>`",
        )),
    }
}

/// The wallet whose session token the request carries.
async fn wallet_of(node: &Arc<Node>, headers: &HeaderMap) -> Result<(String, Address), ApiError> {
    let token = session_token(headers)?;
    let n = node.clone();
    let t = token.clone();
    let wallet = blocking(move || n.session_wallet(&t, unix_ms())).await?;
    Ok((token, wallet))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NonceQuery {
    address: Option<String>,
}

/// `GET /auth/nonce[?address=0x…]`.
pub(crate) async fn nonce(
    State(node): State<Arc<Node>>,
    query: Result<Query<NonceQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let wallet = q
        .address
        .map(|a| {
            a.to_ascii_lowercase()
                .parse::<Address>()
                .map_err(|e| ApiError::invalid("address", e.to_string()))
        })
        .transpose()?;
    Ok(Json(json!(node.login_nonce(unix_ms(), wallet))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiweRequest {
    message: String,
    signature: String,
}

/// `POST /auth/siwe`.
pub(crate) async fn siwe(
    State(node): State<Arc<Node>>,
    billed: Billed<SiweRequest>,
) -> Result<Json<Value>, ApiError> {
    let SiweRequest { message, signature } = billed.value;
    let session = blocking(move || node.login(&message, &signature, unix_ms())).await?;
    Ok(Json(json!(session)))
}

/// `POST /auth/refresh`.
pub(crate) async fn refresh(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = session_token(&headers)?;
    let session = blocking(move || node.refresh_session(&token, unix_ms())).await?;
    Ok(Json(json!(session)))
}

/// `POST /auth/logout`.
pub(crate) async fn logout(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let token = session_token(&headers)?;
    blocking(move || node.logout(&token, unix_ms())).await?;
    Ok(Json(json!({"revoked": true})))
}

/// `GET /auth/me`: the wallet and its balance.
pub(crate) async fn me(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, wallet) = wallet_of(&node, &headers).await?;
    let balance = blocking(move || node.balance(wallet)).await?;
    Ok(Json(json!({"address": wallet, "balance": balance})))
}

/// `GET /auth/api-keys`.
pub(crate) async fn api_keys(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, wallet) = wallet_of(&node, &headers).await?;
    let keys = blocking(move || node.wallet_api_keys(wallet)).await?;
    Ok(Json(json!({"address": wallet, "keys": keys})))
}

/// `POST /auth/api-keys`: a new key, shown once.
pub(crate) async fn new_api_key(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, wallet) = wallet_of(&node, &headers).await?;
    let (key, info) = blocking(move || node.new_wallet_api_key(wallet, unix_ms())).await?;
    Ok(Json(json!({
        "key": key,
        "id": info.id,
        "created_ms": info.created_ms,
        "address": wallet,
    })))
}

/// `DELETE /auth/api-keys/{id}`.
pub(crate) async fn revoke_api_key(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, wallet) = wallet_of(&node, &headers).await?;
    let key_id = id.clone();
    blocking(move || node.revoke_wallet_api_key(wallet, &key_id))
        .await
        .map_err(|e| {
            // The caller is logged in: an id that is none of its keys is a missing
            // resource, not a failed authentication.
            if e.code() == "unknown_api_key" {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_api_key",
                    format!("this account has no API key {id:?}"),
                )
            } else {
                e
            }
        })?;
    Ok(Json(json!({"revoked": id})))
}

/// `GET /payments/tiers`: what a card buys here, and whether checkout is on.
pub(crate) async fn tiers(State(node): State<Arc<Node>>) -> Json<Value> {
    let w = &node.config().wallet;
    Json(json!({
        "checkout": !w.stripe_api_key.is_empty(),
        "tiers": node.price_tiers(),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckoutRequest {
    #[serde(default)]
    tier: Option<String>,
}

/// `POST /payments/checkout`: a Stripe Checkout Session crediting the caller's account.
pub(crate) async fn checkout(
    State(node): State<Arc<Node>>,
    billed: Billed<CheckoutRequest>,
) -> Result<Json<Value>, ApiError> {
    let Billed { value, caller, .. } = billed;
    let checkout = blocking(move || {
        // The account that would pay for a request credits: a keyless local caller's is
        // the loopback account, as everywhere.
        let wallet = node.payer(caller.api_key.as_deref(), caller.loopback)?;
        node.checkout(wallet, value.tier.as_deref())
    })
    .await?;
    Ok(Json(json!(checkout)))
}

/// `POST /payments/stripe/webhook`: the raw body is what Stripe signed.
pub(crate) async fn stripe_webhook(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let signature = match headers.get("stripe-signature") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::from(NodeError::Payment {
                        code: "bad_webhook_signature",
                        status: 400,
                        message: "the Stripe-Signature header is not text".into(),
                    })
                })?
                .to_owned(),
        ),
    };
    let reply =
        blocking(move || node.stripe_webhook(signature.as_deref(), &body, unix_ms())).await?;
    Ok(Json(json!(reply)))
}
