//! Who is calling and who pays: the `Authorization: Bearer` API key, whether the peer is on
//! a loopback address, and the `Idempotency-Key`, read together with the raw JSON body (the
//! key is bound to the body's bytes).

use std::net::SocketAddr;

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, FromRequest, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::ApiError;

/// The request header carrying an idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Who sent a request.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The bearer API key, if any.
    pub api_key: Option<String>,
    /// Whether the request is local ([`crate::access::is_local`]): from a loopback address
    /// with a loopback `Host` and `Origin`. Requests that did not come through a socket
    /// (in-process calls) count as local.
    pub loopback: bool,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
}

impl Caller {
    pub(crate) fn of(parts: &Parts) -> Result<Caller, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let loopback = crate::access::is_local(peer, &parts.headers);
        Ok(Caller {
            api_key: bearer(&parts.headers)?,
            loopback,
            idempotency_key: idempotency_key(&parts.headers)?,
        })
    }
}

/// The bearer token of `Authorization`, if any; a header that is not `Bearer <token>` is
/// refused.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_authorization",
            "the Authorization header must be `Bearer <api key>`",
        )
    };
    let text = value.to_str().map_err(|_| bad())?;
    let (scheme, key) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Err(bad());
    }
    Ok(Some(key.trim().to_owned()))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
            ApiError::invalid(
                "Idempotency-Key",
                "an idempotency key is 1 to 255 printable ASCII characters",
            )
        }),
    }
}

/// A JSON body with its raw bytes and its caller.
#[derive(Debug)]
pub(crate) struct Billed<T> {
    pub value: T,
    pub body: Bytes,
    pub caller: Caller,
}

impl<S, T> FromRequest<S> for Billed<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let caller = Caller::of(&parts)?;
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than this node accepts",
                    )
                } else {
                    ApiError::new(r.status(), "invalid_body", r.body_text())
                }
            })?;
        let Json(value) = Json::<T>::from_bytes(&body)?;
        Ok(Billed {
            value,
            body,
            caller,
        })
    }
}
