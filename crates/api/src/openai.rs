//! The OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions` and
//! `/v1/completions`, plain and streaming (server-sent events ending with `data: [DONE]`).
//!
//! Blyan's model is a base language model, so a chat is rendered as text: each message's
//! content on its own line, then a newline, and the reply continues from there.
//! Generation runs on the node's batching engine; a blocking task forwards its events to the
//! response, and when the client goes away the forwarder's send fails, the generation is
//! dropped and the engine cancels it at its next step.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::{
    Json,
    extract::{FromRequest, Path, Request, State},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, Sse},
    },
};
use blyan_ledger::{Begin, IdempotencyKey, IdempotentReply};
use blyan_model::{CancelToken, Event, FinishReason, SamplingParams, Summary};
use blyan_node::{CompletionRequest, Generation, Node};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::ApiError;
use crate::billing::{Billed, Caller};
use crate::blocking;

/// The id under which the node's model is listed.
pub const MODEL_ID: &str = "blyan";
/// Most messages in one chat request.
const MESSAGES_MAX: usize = 256;
/// Chunks buffered between the generation and a slow client.
const STREAM_BUFFER: usize = 64;

/// A JSON body whose rejections are [`ApiError`]s in OpenAI's shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Message content: a string, or a list of parts of which only text parts are accepted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Option<Content>,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Blyan extension.
    top_k: Option<u32>,
    /// Blyan extension.
    repetition_penalty: Option<f32>,
    /// Extension (vLLM's name): never end on the end-of-sequence token.
    ignore_eos: Option<bool>,
    /// Blyan extension: compute every expert of this request on this node, so that its
    /// hidden states never leave it.
    #[serde(default)]
    blyan_local_only: bool,
    seed: Option<u64>,
    stop: Option<Stop>,
    n: Option<u32>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
pub(crate) struct TextRequest {
    prompt: Prompt,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// Chat or text completion: the response objects differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// `GET /v1/models`.
pub(crate) async fn models(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&node)]}))
}

/// `GET /v1/models/{id}`.
pub(crate) async fn model(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_model(Some(&id))?;
    Ok(Json(model_object(&node)))
}

fn model_object(node: &Node) -> Value {
    let info = node.info();
    json!({
        "id": MODEL_ID,
        "object": "model",
        "created": info.started_ms / 1000,
        "owned_by": "blyan",
        "network": info.network,
        "precision": info.precision,
        "context_length": info.context_len,
        "experts": {"layers": info.layers, "per_layer": info.experts, "top_k": info.top_k},
    })
}

fn check_model(model: Option<&str>) -> Result<(), ApiError> {
    match model {
        None | Some(MODEL_ID) => Ok(()),
        Some(other) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the model {other:?} does not exist; this node serves {MODEL_ID:?}"),
        )),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(node): State<Arc<Node>>,
    billed: Billed<ChatRequest>,
) -> Result<Response, ApiError> {
    let Billed {
        value: req,
        body,
        caller,
    } = billed;
    let prompt = chat_prompt(&req.messages)?;
    complete(node, Kind::Chat, prompt, req.common, caller, body).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(node): State<Arc<Node>>,
    billed: Billed<TextRequest>,
) -> Result<Response, ApiError> {
    let Billed {
        value: req,
        body,
        caller,
    } = billed;
    let prompt = match req.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut ps) if ps.len() == 1 => ps.remove(0),
        Prompt::Many(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "exactly one prompt per request is supported",
            ));
        }
    };
    complete(node, Kind::Text, prompt, req.common, caller, body).await
}

/// Renders the conversation as the text the model continues.
fn chat_prompt(messages: &[ChatMessage]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "at least one message is required",
        ));
    }
    if messages.len() > MESSAGES_MAX {
        return Err(ApiError::invalid(
            "messages",
            format!("at most {MESSAGES_MAX} messages per request"),
        ));
    }
    let mut prompt = String::new();
    for m in messages {
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "unsupported role {:?}; expected system, developer, user or assistant",
                    m.role
                ),
            ));
        }
        match &m.content {
            None => {}
            Some(Content::Text(t)) => prompt.push_str(t),
            Some(Content::Parts(parts)) => {
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => prompt.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!(
                                    "content part of type {:?} is not supported; only text",
                                    p.kind
                                ),
                            ));
                        }
                    }
                }
            }
        }
        prompt.push('\n');
    }
    Ok(prompt)
}

/// A seed for requests that bring none (and the source of request ids): distinct per
/// request, from the clock and a counter.
pub(crate) fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // SplitMix64 finaliser: spreads nearby clock readings over the whole range.
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn request_id(kind: Kind) -> String {
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    format!("{prefix}-{:016x}", fresh_seed())
}

fn finish_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

async fn complete(
    node: Arc<Node>,
    kind: Kind,
    prompt: String,
    common: Common,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_model(common.model.as_deref())?;
    if let Some(n) = common.n
        && n != 1
    {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let defaults = SamplingParams::default();
    let sampling = SamplingParams {
        temperature: common.temperature.unwrap_or(defaults.temperature),
        top_p: common.top_p.unwrap_or(defaults.top_p),
        top_k: common.top_k.unwrap_or(defaults.top_k),
        repetition_penalty: common
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        seed: common.seed.unwrap_or_else(fresh_seed),
        ignore_eos: common.ignore_eos.unwrap_or(defaults.ignore_eos),
    };
    let stop = match common.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let payer = {
        let node = node.clone();
        let api_key = caller.api_key.clone();
        blocking(move || node.payer(api_key.as_deref(), caller.loopback)).await?
    };
    let idempotency = match &caller.idempotency_key {
        None => None,
        Some(k) => Some(
            IdempotencyKey::new(payer, k, &body)
                .map_err(|e| ApiError::from(blyan_node::NodeError::Ledger(e)))?,
        ),
    };
    if let Some(key) = &idempotency
        && let Some(reply) = claim(&node, key).await?
    {
        return Ok(replay(reply, common.stream));
    }
    let request = CompletionRequest {
        prompt,
        max_tokens: common.max_completion_tokens.or(common.max_tokens),
        sampling,
        stop,
        payer,
        idempotency: idempotency.clone(),
        local_only: common.blyan_local_only,
    };
    let submit_node = node.clone();
    let submitted = blocking(move || submit_node.submit(request)).await;
    let generation = match submitted {
        Ok(g) => g,
        Err(e) => {
            if let Some(key) = idempotency {
                let node = node.clone();
                let _ = tokio::task::spawn_blocking(move || node.idempotency_abort(&key)).await;
            }
            return Err(e);
        }
    };
    let meta = ResponseMeta {
        id: request_id(kind),
        created: crate::unix_ms() / 1000,
        kind,
    };
    let record = idempotency.is_some();
    if common.stream {
        let include_usage = common.stream_options.is_some_and(|o| o.include_usage);
        Ok(stream_response(generation, meta, include_usage, record))
    } else {
        whole_response(generation, meta, record).await
    }
}

/// How long a retry waits for the first attempt under the same idempotency key to finish.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(600);

/// Claims `key`: `None` to go ahead, or the stored reply of a finished attempt. While the
/// same request runs elsewhere, waits for it.
async fn claim(
    node: &Arc<Node>,
    key: &IdempotencyKey,
) -> Result<Option<IdempotentReply>, ApiError> {
    let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
    loop {
        let n = node.clone();
        let k = key.clone();
        match blocking(move || n.idempotency_begin(&k)).await? {
            Begin::Fresh => return Ok(None),
            Begin::Done(reply) => return Ok(Some(reply)),
            Begin::InFlight if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Begin::InFlight => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency_in_flight",
                    "a request under this idempotency key is still running",
                ));
            }
        }
    }
}

/// The stored reply of an earlier attempt, sent again as it was.
fn replay(reply: IdempotentReply, stream: bool) -> Response {
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    (
        status,
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::HeaderName::from_static("idempotent-replayed"),
                "true",
            ),
        ],
        reply.body,
    )
        .into_response()
}

#[derive(Clone, Debug)]
struct ResponseMeta {
    id: String,
    created: u64,
    kind: Kind,
}

impl ResponseMeta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// A streamed chunk with one choice carrying `text` (and the role, on the first).
    fn chunk(&self, text: &str, first: bool, finish: Option<&str>, usage: bool) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = match (first, finish) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, Some(_)) if text.is_empty() => json!({}),
                    _ => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": MODEL_ID,
            "choices": [choice],
        });
        if usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn usage_chunk(&self, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": MODEL_ID,
            "choices": [],
            "usage": usage,
        })
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Cancels a generation when the request handler is dropped (its client went away) before
/// it finished.
struct CancelOnDrop(Option<CancelToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

async fn whole_response(
    mut generation: Generation,
    meta: ResponseMeta,
    record: bool,
) -> Result<Response, ApiError> {
    let mut guard = CancelOnDrop(Some(generation.cancel_token()));
    let prompt_tokens = generation.prompt_tokens();
    let span = tracing::Span::current();
    let outcome = tokio::task::spawn_blocking(move || {
        let _span = span.entered();
        let mut text = String::new();
        let summary = loop {
            match generation.next_event() {
                Some(Event::Step(step)) => text.push_str(&step.text),
                Some(Event::Done(summary)) => break summary,
                Some(Event::Failed(e)) => return Err(Failure::Model(e)),
                None => {
                    return Err(Failure::Model(Arc::new(
                        blyan_model::ModelError::EngineStopped,
                    )));
                }
            }
        };
        let body = whole_body(&meta, prompt_tokens, &text, &summary).to_string();
        // Charged before the answer leaves: the reply is stored with the capture, so a retry
        // under the same idempotency key gets these bytes and is not charged again.
        if summary.finish_reason == FinishReason::Cancelled {
            // Cancelled (the client left, or the node is shutting down): not charged; the
            // dropped generation voids its hold and frees its idempotency key.
            return Ok((body, 0));
        }
        let reply = record.then(|| IdempotentReply {
            status: 200,
            body: body.clone(),
        });
        let capture = generation
            .capture(&summary, reply)
            .map_err(Failure::Billing)?;
        Ok((body, capture.fee.nano()))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("generation task failed: {e}"),
        )
    })?;
    guard.0 = None;
    let (body, fee) = outcome.map_err(Failure::into_api)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::HeaderName::from_static("x-blyan-fee-nano"),
                fee.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// Why a generation produced no answer.
enum Failure {
    Model(Arc<blyan_model::ModelError>),
    Billing(blyan_node::NodeError),
}

impl Failure {
    fn into_api(self) -> ApiError {
        match self {
            Failure::Model(e) => {
                tracing::error!(code = e.code(), error = %e, "generation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.code(),
                    "generation failed; see the node's log",
                )
            }
            Failure::Billing(e) => ApiError::from(e),
        }
    }
}

fn whole_body(meta: &ResponseMeta, prompt_tokens: usize, text: &str, summary: &Summary) -> Value {
    let finish = finish_str(summary.finish_reason);
    let choice = match meta.kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish,
        }),
        Kind::Text => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
    };
    json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": MODEL_ID,
        "choices": [choice],
        "usage": usage(prompt_tokens, summary.completion_tokens),
        "blyan": blyan_extension(summary),
    })
}

/// Blyan's extension of a completion: where its hidden states went, and whether its answer
/// is degraded. `remote_rows`: the token-expert computations whose outputs other nodes gave;
/// `remote_hosts`: every node that was sent any of its hidden states, with the layers they
/// were of (empty: computed here only); `missing_experts`: per expert no node could compute,
/// how many of the request's tokens went without it, their router weights renormalised over
/// the experts that were computed (empty: the model's exact answer).
fn blyan_extension(summary: &Summary) -> Value {
    json!({
        "remote_rows": summary.remote_rows,
        "remote_hosts": summary.remote_layers,
        "missing_experts": summary.missing_experts,
    })
}

/// The sending end of a stream; with an idempotency key it also keeps the events sent, as
/// SSE text, to store as the reply when the request is captured.
struct Sink {
    tx: mpsc::Sender<String>,
    sent: Option<String>,
}

impl Sink {
    fn send(&mut self, data: String) -> bool {
        if let Some(sent) = &mut self.sent {
            sent.push_str("data: ");
            sent.push_str(&data);
            sent.push_str("\n\n");
        }
        self.tx.blocking_send(data).is_ok()
    }
}

fn stream_response(
    mut generation: Generation,
    meta: ResponseMeta,
    include_usage: bool,
    record: bool,
) -> Response {
    let (tx, rx) = mpsc::channel::<String>(STREAM_BUFFER);
    let prompt_tokens = generation.prompt_tokens();
    // The stream outlives the handler; it keeps the request's span for its log lines.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.entered();
        let mut sink = Sink {
            tx,
            sent: record.then(String::new),
        };
        if !sink.send(meta.chunk("", true, None, include_usage).to_string()) {
            return;
        }
        while let Some(event) = generation.next_event() {
            let delivered = match event {
                Event::Step(step) if step.text.is_empty() => true,
                Event::Step(step) => sink.send(
                    meta.chunk(&step.text, false, None, include_usage)
                        .to_string(),
                ),
                Event::Done(summary) => {
                    let finish = finish_str(summary.finish_reason);
                    let mut last = meta.chunk("", false, Some(finish), include_usage);
                    last["blyan"] = blyan_extension(&summary);
                    let ok = sink.send(last.to_string())
                        && (!include_usage
                            || sink.send(
                                meta.usage_chunk(usage(prompt_tokens, summary.completion_tokens))
                                    .to_string(),
                            ));
                    if !ok {
                        // The client left before the end: nothing is charged.
                        return;
                    }
                    if summary.finish_reason == FinishReason::Cancelled {
                        // Cancelled at shutdown: not charged. Dropping the generation voids
                        // its hold, before `[DONE]` tells the client the request is over.
                        drop(generation);
                        let _ = sink.tx.blocking_send("[DONE]".into());
                        return;
                    }
                    let reply = sink.sent.take().map(|mut body| {
                        body.push_str("data: [DONE]\n\n");
                        IdempotentReply { status: 200, body }
                    });
                    // `[DONE]` goes out only once the request is charged.
                    if let Err(e) = generation.capture(&summary, reply) {
                        let _ = sink.tx.blocking_send(ApiError::from(e).body().to_string());
                    }
                    let _ = sink.tx.blocking_send("[DONE]".into());
                    return;
                }
                Event::Failed(e) => {
                    tracing::error!(code = e.code(), error = %e, "generation failed");
                    let err = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e.code(),
                        "generation failed; see the node's log",
                    );
                    let _ = sink.tx.blocking_send(err.body().to_string()).is_ok()
                        && sink.tx.blocking_send("[DONE]".into()).is_ok();
                    return;
                }
            };
            if !delivered {
                // The client is gone: dropping the generation cancels it and voids its hold.
                return;
            }
        }
    });
    let events = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok::<_, Infallible>(SseEvent::default().data(data)), rx))
    });
    Sse::new(events).into_response()
}
