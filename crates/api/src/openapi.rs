//! The OpenAPI 3.1 description of the API, served at `/openapi.json`.

use axum::Json;
use serde_json::{Value, json};

/// Every documented operation: method, path, summary, and whether it takes a JSON body.
pub(crate) const OPERATIONS: &[(&str, &str, &str, bool)] = &[
    ("get", "/v1/models", "List the served model.", false),
    ("get", "/v1/models/{id}", "Describe a model.", false),
    (
        "post",
        "/v1/chat/completions",
        "OpenAI-compatible chat completion; `stream: true` answers with server-sent events ending in `data: [DONE]`.",
        true,
    ),
    (
        "post",
        "/v1/completions",
        "OpenAI-compatible text completion, plain or streamed. Both completions carry Blyan's extension `blyan: {remote_rows, remote_hosts, missing_experts}`: the other nodes that were sent the request's hidden states, with the layers (in a stream, on the finish chunk), and the experts no node could compute, with how many tokens went without each (their router weights renormalised; empty unless the answer is degraded); `blyan_local_only: true` in the request keeps the hidden states on this node.",
        true,
    ),
    (
        "get",
        "/node",
        "The node's identity, model summary and load.",
        false,
    ),
    (
        "get",
        "/chain/blocks",
        "Blocks in chain then height order; query `chain` (meta, param, dataset, proof, ledger), `offset`, `limit` (1–500, default 50).",
        false,
    ),
    (
        "get",
        "/chain/blocks/{hash}",
        "One block's header and its author's signature of the block hash (EIP-191 over the hash's 32 bytes).",
        false,
    ),
    (
        "get",
        "/chain/blocks/{hash}/payload",
        "One block's payload bytes (application/octet-stream), checked against its header's hash before they are sent: how a node repairs an expert block it finds missing or corrupt. Rate-limited like the sync calls.",
        false,
    ),
    (
        "get",
        "/experts",
        "Per expert: head, served version, every version, tokens routed, cache state; cache counters.",
        false,
    ),
    (
        "get",
        "/experts/hosted",
        "What this node computes for other nodes (`experts` setting; each expert by its exact block), its queue, calls computed for peers, and the hosts it knows (what each hosts, latency, calls answered and failed, last heartbeat).",
        false,
    ),
    (
        "post",
        "/experts/compute",
        "Several expert calls for another node in one request: `?request=ID`; body: count (u32 LE), then per call layer and expert (u16 LE each), block (32 bytes), rows length (u32 LE) and the rows (Q8_0 wire form); answer: per call its output length (u32 LE) and the f32 LE outputs, then one Ed25519 signature by the host's network key of SHA-256(`blyan-expert-answers-v1` ‖ ID ‖ count ‖ each call's answer digest, request id `ID-i`). All or none; `400 invalid_parameter` for a malformed batch; caller headers as for one call.",
        false,
    ),
    (
        "post",
        "/experts/{id}/compute",
        "Compute expert `id` (`L.E`) at exactly `?block=HASH` for another node: the body is its tokens' inputs (Q8_0 rows: rows and width as u32 LE, then per 32 values an f32 scale and 32 int8), the answer their outputs (f32 LE rows), with `x-blyan-signature`: the Ed25519 signature, by the host's network key, of SHA-256(`blyan-expert-answer-v1` ‖ request id ‖ block ‖ input hash ‖ output hash) and `x-blyan-signer`. `?request=` names the call. On a network that admits its members the caller signs the call (`x-blyan-caller`, `x-blyan-caller-time`, `x-blyan-caller-signature`), else `403 caller_not_admitted`. Rate-limited per client network.",
        false,
    ),
    (
        "put",
        "/experts/serving",
        "Choose the expert versions to serve: `{\"pins\": {\"L.E\": \"HASH\"}}`; `{}` pins serve the heads.",
        true,
    ),
    (
        "get",
        "/pol/status",
        "Proof of Learning: mode, thresholds, pool remaining, recent verdicts.",
        false,
    ),
    (
        "post",
        "/pol/validate",
        "Submit a candidate file (octet-stream body) `?signature=SIG[&contributor=ADDR][&pow_nonce=N]`, SIG the contributor's EIP-191 signature of SHA-256(\"blyan-submission-v1\" ‖ network ‖ candidate id ‖ parent); the signer is paid: the verdict, or a refusal code (`missing_signature`, `bad_signature`, `wrong_signer`, `stale_parent`, `head_copy`, `duplicate_payload`, `delta_too_large`, `non_finite`, …).",
        true,
    ),
    (
        "post",
        "/pol/replicate",
        "Replicate an accepted verdict on a fresh sample: `{\"proof\": HASH}` (operator only: it spends hidden-pool items).",
        true,
    ),
    (
        "get",
        "/pol/proofs/{hash}/verify",
        "Recompute a verdict from the chain, the pool and the candidate.",
        false,
    ),
    (
        "get",
        "/health",
        "Agent Checker: stage, readiness, components and the reason.",
        false,
    ),
    (
        "get",
        "/health/live",
        "200 while the process answers.",
        false,
    ),
    (
        "get",
        "/health/ready",
        "200 at stage Development or better, else 503.",
        false,
    ),
    ("get", "/metrics", "Prometheus text format.", false),
    (
        "get",
        "/ledger",
        "BLY supply (cap, unminted, burned, circulating; nano-BLY), postings, accounts, fee and split.",
        false,
    ),
    (
        "get",
        "/ledger/accounts/{who}",
        "Balances `{address, available, pending}` in nano-BLY of an address or account name.",
        false,
    ),
    (
        "get",
        "/ledger/accounts/{who}/history",
        "Postings of an account, newest first; query `before` (sequence number), `limit` (1–1000, default 50).",
        false,
    ),
    (
        "post",
        "/ledger/transfers",
        "Pay `{to, amount (decimal BLY string), reference?}` from the caller's account (`Authorization: Bearer`); `Idempotency-Key` makes retries post once.",
        true,
    ),
    (
        "get",
        "/ledger/audit",
        "Replay every posting and compare with the balances and the ledger chain (operator only).",
        false,
    ),
    (
        "post",
        "/net/v1/rpc",
        "The sync protocol's read path: one Borsh-encoded request (octet-stream: a status, a page of hashes, a header, a payload chunk) answered with one Borsh message, or 204; `malformed_message` otherwise. Rate-limited per client network.",
        false,
    ),
    (
        "get",
        "/net/peers",
        "The peers this node follows (key, API address, heads, round trip, blocks received and served, bans, last ban reason) and the summary of the `network` health component; empty on a node that follows none.",
        false,
    ),
    (
        "get",
        "/net/id",
        "This node's network key, the account address it is bound to, the binding signature (EIP-191 of `blyan-net-key-v1` and the key) and its p2p address, if any.",
        false,
    ),
    (
        "get",
        "/net/registry",
        "The admission registry: every admitted network key and its roles (`host`, `validator`), from the meta chain.",
        false,
    ),
    (
        "post",
        "/net/admit",
        "Append an admission block giving a network key a role (`{\"key\", \"role\", \"admitted\"}`; `admitted: false` removes it). Operator only, and only on the network's operator node (else `403 not_admitted`).",
        true,
    ),
    (
        "get",
        "/auth/nonce",
        "A single-use nonce for a wallet login, with the domain, URI and chain id the EIP-4361 message must name: `{nonce, expires_at, domain, uri, chain_id}`.",
        false,
    ),
    (
        "post",
        "/auth/siwe",
        "Sign in with Ethereum: `{message, signature}` (the EIP-4361 text and its EIP-191 `personal_sign`, `0x` hex) → `{token, address, expires_at}`. Refusals: `invalid_message`, `malformed_signature`, `high_s_signature`, `invalid_signature`, `wrong_signer`, `wrong_domain`, `wrong_uri`, `wrong_chain`, `expired_message`, `not_yet_valid`, `unknown_nonce`, `used_nonce`, `expired_nonce`. The token works as `Authorization: Bearer` wherever an API key does and bills the wallet's account (opened at its first login).",
        true,
    ),
    (
        "post",
        "/auth/refresh",
        "A new session token for the bearer's; the old one is revoked.",
        false,
    ),
    (
        "post",
        "/auth/logout",
        "Revoke the bearer's session token (kept across restarts).",
        false,
    ),
    (
        "get",
        "/auth/me",
        "The logged-in wallet and its balances (nano-BLY).",
        false,
    ),
    (
        "get",
        "/auth/api-keys",
        "The logged-in wallet's API keys (ids and creation times; keys are stored hashed).",
        false,
    ),
    (
        "post",
        "/auth/api-keys",
        "A new API key for the logged-in wallet's account, shown once: `{key, id, created_ms}` (at most 32 per account).",
        false,
    ),
    (
        "delete",
        "/auth/api-keys/{id}",
        "Revoke one of the logged-in wallet's API keys.",
        false,
    ),
    (
        "get",
        "/payments/tiers",
        "What a card top-up buys here (`{name, amount_minor, currency, bly}` per tier) and whether checkout is on.",
        false,
    ),
    (
        "post",
        "/payments/checkout",
        "A Stripe Checkout Session crediting the caller's account: `{tier?}` → `{id, url, tier, bly, amount_minor, currency}`.",
        true,
    ),
    (
        "post",
        "/payments/stripe/webhook",
        "Stripe's webhook: `Stripe-Signature` must hold a `v1` HMAC-SHA256 of `t.body` within the tolerance. `checkout.session.completed` credits the tier's BLY from the treasury once per event and payment; `charge.refunded` takes back what is unspent and flags the rest; other types are acknowledged.",
        false,
    ),
    ("get", "/openapi.json", "This document.", false),
];

/// Who may call each operation that is not open to anyone (`x-blyan-role` in the document):
/// `account` needs an API key or a wallet's session token from other machines (local
/// requests bill the loopback account), `wallet` a wallet's session token, `operator` only
/// the node's own machine or the operator account's key.
pub(crate) const RESTRICTED: &[(&str, &str, &str)] = &[
    ("post", "/v1/chat/completions", "account"),
    ("post", "/v1/completions", "account"),
    ("post", "/ledger/transfers", "account"),
    ("post", "/pol/validate", "account"),
    ("post", "/payments/checkout", "account"),
    ("post", "/auth/refresh", "wallet"),
    ("post", "/auth/logout", "wallet"),
    ("get", "/auth/me", "wallet"),
    ("get", "/auth/api-keys", "wallet"),
    ("post", "/auth/api-keys", "wallet"),
    ("delete", "/auth/api-keys/{id}", "wallet"),
    ("put", "/experts/serving", "operator"),
    ("post", "/pol/replicate", "operator"),
    ("get", "/ledger/audit", "operator"),
    ("post", "/net/admit", "operator"),
];

/// The role an operation needs: `anyone`, `account`, `wallet` or `operator`.
pub(crate) fn role_of(method: &str, path: &str) -> &'static str {
    RESTRICTED
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map_or("anyone", |(_, _, role)| role)
}

/// `GET /openapi.json`.
pub(crate) async fn document() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, body) in OPERATIONS {
        let mut op = json!({
            "summary": summary,
            "x-blyan-role": role_of(method, path),
            "responses": {
                "200": {"description": "Success."},
                "4XX": {
                    "description": "The request was refused.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        });
        if *body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"type": "object"}}},
            });
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Blyan node API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A node of a network in which a Mixture-of-Experts language model lives on a blockchain.",
        },
        "paths": paths,
        "security": [{"bearer": []}, {}],
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`blyan account new`, or `POST /auth/api-keys`) or a wallet's session token (`POST /auth/siwe`); keyless requests from loopback bill the node's loopback account.",
            }},
            "schemas": {"Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                },
            }},
        }}},
    }))
}
