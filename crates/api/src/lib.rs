//! The HTTP API of a node: OpenAI-compatible chat and completions with streaming, chain,
//! expert, health and metrics endpoints, and the web UI.
//!
//! [`router`] builds the axum router over a [`Node`]; [`serve`] runs it on a listener with the
//! Agent Checker's probe loop and a graceful shutdown. Handlers translate between HTTP and
//! the node's typed calls; they know nothing of how blocks are stored.

#![warn(missing_docs)]

mod access;
mod billing;
mod error;
mod ledger_routes;
mod limit;
mod net_routes;
mod node_routes;
mod openai;
mod openapi;
mod ui;
mod wallet_routes;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use blyan_node::Node;
use tokio::net::TcpListener;
use tracing::Instrument;

pub use error::ApiError;
pub use openai::{ApiJson, MODEL_ID};

/// The router of every endpoint, over `node`. Its rate-limit buckets live in the router:
/// build it once and clone it (clones share them).
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.config().body_limit_bytes;
    let candidate_limit = node.candidate_len_max();
    let limits = Arc::new(limit::Limits::of(&node));
    let limited = || middleware::from_fn_with_state(limits.clone(), limit::limit);
    let verify_limits = Arc::new(limit::Limits::verify(&node));
    let sync_limits = Arc::new(limit::Limits::sync(&node));
    let operator = || middleware::from_fn_with_state(node.clone(), access::operator_only);
    Router::new()
        .route("/", get(ui::index))
        .route("/assets/{file}", get(ui::asset))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route(
            "/v1/chat/completions",
            post(openai::chat_completions).layer(limited()),
        )
        .route(
            "/v1/completions",
            post(openai::completions).layer(limited()),
        )
        .route("/node", get(node_routes::info))
        .route("/chain/blocks", get(node_routes::blocks))
        .route("/chain/blocks/{hash}", get(node_routes::block))
        .route(
            "/chain/blocks/{hash}/payload",
            get(node_routes::block_payload).layer(middleware::from_fn_with_state(
                Arc::new(limit::Limits::sync(&node)),
                limit::limit,
            )),
        )
        .route("/experts", get(node_routes::experts))
        .route("/experts/hosted", get(node_routes::hosted))
        .route(
            "/experts/compute",
            post(node_routes::compute_batch)
                .layer(DefaultBodyLimit::max(blyan_node::hosting::BATCH_BODY_MAX))
                .layer(middleware::from_fn_with_state(
                    Arc::new(limit::Limits::sync(&node)),
                    limit::limit,
                )),
        )
        .route(
            "/experts/{id}/compute",
            post(node_routes::compute).layer(middleware::from_fn_with_state(
                Arc::new(limit::Limits::sync(&node)),
                limit::limit,
            )),
        )
        .route(
            "/experts/serving",
            put(node_routes::serve_versions).layer(operator()),
        )
        .route("/pol/status", get(node_routes::pol_status))
        .route(
            "/pol/validate",
            post(node_routes::pol_validate).layer(DefaultBodyLimit::max(candidate_limit)),
        )
        .route(
            "/pol/replicate",
            post(node_routes::pol_replicate).layer(operator()),
        )
        .route(
            "/pol/proofs/{hash}/verify",
            get(node_routes::pol_verify)
                .layer(middleware::from_fn_with_state(verify_limits, limit::limit)),
        )
        .route(
            blyan_net::RPC_PATH,
            post(net_routes::rpc)
                .layer(DefaultBodyLimit::max(net_routes::RPC_BODY_MAX))
                .layer(middleware::from_fn_with_state(sync_limits, limit::limit)),
        )
        .route("/net/peers", get(net_routes::peers))
        .route("/net/id", get(net_routes::id))
        .route("/net/registry", get(net_routes::registry))
        .route("/net/admit", post(net_routes::admit).layer(operator()))
        .route("/health", get(node_routes::health))
        .route("/health/live", get(node_routes::live))
        .route("/health/ready", get(node_routes::ready))
        .route("/metrics", get(node_routes::metrics))
        .route("/ledger", get(ledger_routes::supply))
        .route("/ledger/accounts/{who}", get(ledger_routes::balance))
        .route(
            "/ledger/accounts/{who}/history",
            get(ledger_routes::history),
        )
        .route("/ledger/transfers", post(ledger_routes::transfer))
        .route("/ledger/audit", get(ledger_routes::audit).layer(operator()))
        .route("/auth/nonce", get(wallet_routes::nonce).layer(limited()))
        .route("/auth/siwe", post(wallet_routes::siwe).layer(limited()))
        .route("/auth/refresh", post(wallet_routes::refresh))
        .route("/auth/logout", post(wallet_routes::logout))
        .route("/auth/me", get(wallet_routes::me))
        .route(
            "/auth/api-keys",
            get(wallet_routes::api_keys).post(wallet_routes::new_api_key),
        )
        .route("/auth/api-keys/{id}", delete(wallet_routes::revoke_api_key))
        .route("/payments/tiers", get(wallet_routes::tiers))
        .route(
            "/payments/checkout",
            post(wallet_routes::checkout).layer(limited()),
        )
        .route(
            "/payments/stripe/webhook",
            post(wallet_routes::stripe_webhook),
        )
        .route("/openapi.json", get(openapi::document))
        .route_layer(middleware::from_fn_with_state(node.clone(), timeout))
        .route_layer(middleware::from_fn_with_state(node.clone(), track))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(node)
}

/// Ends a request whose response has not started within the node's limit with `408
/// request_timeout` (a submission's evaluation has its own, longer limit). A streamed body
/// is not cut: the limit is on the time to the first byte of the response.
async fn timeout(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let c = node.config();
    let is_pol = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == "/pol/validate");
    let seconds = if is_pol {
        c.pol_request_timeout_s
    } else {
        c.request_timeout_s
    };
    if seconds == 0 {
        return next.run(req).await;
    }
    match tokio::time::timeout(Duration::from_secs(seconds), next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request took longer than {seconds} s"),
        )
        .into_response(),
    }
}

/// The header carrying a request's id: taken from the request when it brings a usable one
/// (a proxy's), otherwise made here; always returned on the response.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id taken from a request.
const REQUEST_ID_LEN_MAX: usize = 64;

/// Records each routed request's duration and status, under a span that carries the
/// request's id (every log line of the request, blocking work included, names it).
async fn track(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= REQUEST_ID_LEN_MAX
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(new_request_id, str::to_owned);
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    node.record_response(&method, &route, status, seconds);
    span.in_scope(|| {
        tracing::debug!(status, duration_ms = seconds * 1e3, "answered");
    });
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// A fresh request id: 16 hex digits, distinct per request of this process.
fn new_request_id() -> String {
    format!("{:016x}", openai::fresh_seed())
}

async fn not_found(State(node): State<Arc<Node>>, req: Request) -> ApiError {
    node.record_response(req.method().as_str(), "unmatched", 404, 0.0);
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

pub use blyan_node::unix_ms;

/// Runs a blocking node call (the model, the block store, the ledger's database) off the
/// async workers and turns its error into the API's.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, blyan_node::NodeError> + Send + 'static,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// Accepts connections on `listener` and serves `app` on each (HTTP/1.1, the peer's address
/// as `ConnectInfo`) until `shutdown` resolves; then stops accepting, asks every connection
/// to close once its request in flight is answered, and waits for them. A connection that
/// has not sent a request's headers within `header_read_timeout` of starting one (or of its
/// previous response) is closed: slow senders cannot hold connections open.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Serves the API on `listener` until `shutdown` resolves, probing the node's components
/// every `probe_interval_s`. At shutdown new requests are refused, streams in flight get
/// `shutdown_grace_s` to finish before they are cancelled (each still ends with its finish
/// chunk and `[DONE]`), and the Agent Checker's state is saved.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    node.set_listening(Some(listener.local_addr()?));
    let probe_node = node.clone();
    let probes = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(Duration::from_secs(probe_node.config().probe_interval_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = probe_node.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || n.probe(unix_ms())).await {
                tracing::warn!(error = %e, "saving the Agent Checker state failed");
            }
        }
    });
    let signal_node = node.clone();
    let signal = async move {
        shutdown.await;
        signal_node.begin_shutdown();
        let grace = Duration::from_secs(signal_node.config().shutdown_grace_s);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            signal_node.cancel_all();
        });
    };
    let anchor_node = node.clone();
    let anchoring = tokio::spawn(async move {
        let every = anchor_node.config().anchor_interval_s;
        if every == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let n = anchor_node.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || n.anchor_ledger()).await {
                tracing::warn!(error = %e, "anchoring ledger postings failed");
            }
        }
    });
    let served = accept_loop(
        listener,
        router(node.clone()),
        Duration::from_secs(node.config().header_read_timeout_s),
        signal,
    )
    .await;
    anchoring.abort();
    // Postings made while draining are anchored before the node stops.
    let n = node.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || n.anchor_ledger()).await {
        tracing::warn!(error = %e, "anchoring ledger postings at shutdown failed");
    }
    probes.abort();
    node.set_listening(None);
    node.cancel_all();
    if let Err(e) = node.save_state() {
        tracing::warn!(error = %e, "saving the Agent Checker state failed");
    }
    served
}
