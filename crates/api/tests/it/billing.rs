//! Billing through the API: who pays, exact captures, royalties by routing, 402 and 401,
//! idempotent retries (also racing), voids on failure and disconnect, and the ledger routes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use blyan_ledger::{Keystore, SystemAccount};
use blyan_node::{Node, NodeConfig};
use blyan_primitives::{Address, ExpertId};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{net, net_with, new_version_by};

/// Nano-BLY per token at the default fee of 1 BLY per 1,000 tokens.
const NANO_PER_TOKEN: u64 = 1_000_000;

struct Call<'a> {
    method: &'a str,
    path: &'a str,
    body: Option<Value>,
    key: Option<&'a str>,
    idempotency: Option<&'a str>,
    peer: Option<SocketAddr>,
}

impl<'a> Call<'a> {
    fn post(path: &'a str, body: Value) -> Call<'a> {
        Call {
            method: "POST",
            path,
            body: Some(body),
            key: None,
            idempotency: None,
            peer: None,
        }
    }

    fn get(path: &'a str) -> Call<'a> {
        Call {
            method: "GET",
            path,
            body: None,
            key: None,
            idempotency: None,
            peer: None,
        }
    }

    fn key(mut self, k: &'a str) -> Self {
        self.key = Some(k);
        self
    }

    fn idempotency(mut self, k: &'a str) -> Self {
        self.idempotency = Some(k);
        self
    }

    fn from(mut self, peer: &str) -> Self {
        self.peer = Some(peer.parse().expect("addr"));
        self
    }

    /// Status, headers and the raw body.
    async fn send_raw(self, node: &Arc<Node>) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::builder().method(self.method).uri(self.path);
        if self.body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(k) = self.key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if let Some(k) = self.idempotency {
            req = req.header("idempotency-key", k);
        }
        let body = self
            .body
            .map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let mut req = req.body(body).expect("request");
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        let response = blyan_api::router(node.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
            .await
            .expect("body");
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    async fn send(self, node: &Arc<Node>) -> (StatusCode, Value) {
        let (status, _, body) = self.send_raw(node).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

fn chat(max_tokens: u32, seed: u64) -> Value {
    json!({"messages": [{"role": "user", "content": "In the beginning"}],
           "max_tokens": max_tokens, "seed": seed, "temperature": 0.0})
}

fn available(node: &Node, a: Address) -> u64 {
    node.ledger().balance(a).expect("balance").available.nano()
}

fn pending(node: &Node, a: Address) -> u64 {
    node.ledger().balance(a).expect("balance").pending.nano()
}

/// A user account with an API key, funded with `bly` BLY from the treasury.
pub(crate) fn user(net: &crate::Net, bly: &str) -> (Address, String) {
    let ks = Keystore::new(net.dir.path().join("keystore"), "").with_scrypt_log_n(10);
    let (a, key) = net.node.ledger().new_user(&ks, 1).expect("user");
    if bly != "0" {
        let amount = blyan_ledger::parse_amount(bly).expect("amount");
        net.node
            .ledger()
            .transfer(
                SystemAccount::Treasury.address(),
                a,
                amount,
                "fund",
                None,
                1,
            )
            .expect("fund");
    }
    (a, key)
}

#[tokio::test]
async fn loopback_requests_bill_the_operator_exactly() {
    let net = net();
    let op = net.node.operator();
    let before = available(&net.node, op);
    let pool_before = available(&net.node, SystemAccount::RoyaltyPool.address());
    let burn_before = available(&net.node, SystemAccount::Burn.address());
    let (status, headers, body) = Call::post("/v1/chat/completions", chat(12, 1))
        .send_raw(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    let total = body["usage"]["total_tokens"].as_u64().expect("usage");
    let fee = total * NANO_PER_TOKEN;
    assert_eq!(headers["x-blyan-fee-nano"], fee.to_string().as_str());
    // The operator pays the fee and earns back its 30% share; genesis experts have no author,
    // so the 50% royalty goes to the royalty pool; 20% is burned.
    assert_eq!(before - available(&net.node, op), fee - fee * 3 / 10);
    assert_eq!(
        available(&net.node, SystemAccount::RoyaltyPool.address()) - pool_before,
        fee / 2
    );
    assert_eq!(
        available(&net.node, SystemAccount::Burn.address()) - burn_before,
        fee - fee / 2 - fee * 3 / 10
    );
    assert_eq!(pending(&net.node, op), 0);
    assert!(net.node.audit_ledger().expect("audit").ok);
}

#[tokio::test]
async fn api_keys_pay_and_refusals_have_codes() {
    let net = net();
    let (poor, poor_key) = user(&net, "0");
    let (status, body) = Call::post("/v1/chat/completions", chat(8, 1))
        .key(&poor_key)
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_funds");
    assert_eq!(pending(&net.node, poor), 0);

    let (rich, key) = user(&net, "2");
    let (status, body) = Call::post(
        "/v1/completions",
        json!({"prompt": "And God said", "max_tokens": 10, "seed": 3}),
    )
    .key(&key)
    .send(&net.node)
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let total = body["usage"]["total_tokens"].as_u64().expect("usage");
    assert_eq!(
        available(&net.node, rich),
        2_000_000_000 - total * NANO_PER_TOKEN
    );

    let (status, body) = Call::post("/v1/chat/completions", chat(8, 1))
        .key("bly_not_a_key")
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unknown_api_key");
    // From another machine a key is required.
    let (status, body) = Call::post("/v1/chat/completions", chat(8, 1))
        .from("203.0.113.9:5000")
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "missing_api_key");
    let (status, _) = Call::post("/v1/chat/completions", chat(8, 1))
        .from("203.0.113.9:5000")
        .key(&key)
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK);
    // A request refused before generation holds nothing.
    let (status, body) = Call::post("/v1/chat/completions", chat(100_000, 1))
        .key(&key)
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(pending(&net.node, rich), 0);
    assert!(net.node.audit_ledger().expect("audit").ok);
}

#[tokio::test]
async fn placeholder_keys_from_loopback_bill_the_loopback_account() {
    let net = net();
    let op = net.node.operator();
    // What OpenAI clients are given to start against a local server.
    for placeholder in ["EMPTY", "sk-no-key-required", "ollama", "sk-1234"] {
        let before = available(&net.node, op);
        let (status, body) = Call::post("/v1/chat/completions", chat(4, 1))
            .key(placeholder)
            .send(&net.node)
            .await;
        assert_eq!(status, StatusCode::OK, "{placeholder}: {body}");
        assert!(
            available(&net.node, op) < before,
            "{placeholder} was not billed"
        );
    }
    // A well-formed Blyan key that this node does not know is still refused, from anywhere.
    let unknown = format!("bly_{}", "ab".repeat(32));
    let (status, body) = Call::post("/v1/chat/completions", chat(4, 1))
        .key(&unknown)
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unknown_api_key");
    // From another machine a placeholder is no key at all.
    let (status, body) = Call::post("/v1/chat/completions", chat(4, 1))
        .key("EMPTY")
        .from("203.0.113.9:5000")
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unknown_api_key");
    // The same rule on the ledger's transfer route.
    let (to, _) = user(&net, "0");
    let (status, body) = Call::post(
        "/ledger/transfers",
        json!({"to": to.to_string(), "amount": "1"}),
    )
    .key("EMPTY")
    .send(&net.node)
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(available(&net.node, to), 1_000_000_000);
    assert_eq!(pending(&net.node, op), 0);
}

#[tokio::test]
async fn holds_left_by_a_dead_process_are_released_at_start() {
    let crate::Net { dir, node } = net();
    let op = node.operator();
    // Holds as a killed node leaves them: made, never captured or voided.
    node.ledger()
        .hold(op, 2_000, 1_700_000_000_000)
        .expect("hold");
    node.ledger()
        .hold(op, 500, 1_700_000_000_000)
        .expect("hold");
    assert_eq!(pending(&node, op), 2_500 * NANO_PER_TOKEN);
    drop(node);
    let node = Node::open(
        dir.path(),
        NodeConfig {
            max_batch: 8,
            ..NodeConfig::default()
        },
        1_700_000_000_000,
    )
    .expect("reopen");
    assert_eq!(pending(&node, op), 0);
    assert!(node.audit_ledger().expect("audit").ok);
}

#[tokio::test]
async fn keys_are_required_when_no_loopback_account_is_set() {
    let net = net_with(NodeConfig {
        max_batch: 8,
        loopback_account: String::new(),
        ..NodeConfig::default()
    });
    let (status, body) = Call::post("/v1/chat/completions", chat(4, 1))
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "missing_api_key");
}

#[tokio::test]
async fn royalties_follow_the_served_versions_contributors() {
    let net = net();
    let key = blyan_primitives::SigningKey::from_slice(&[0xc7; 32]).expect("key");
    let contributor = blyan_primitives::address_of(&key);
    // Every expert gets a version accepted for the contributor (placed and signed by another
    // key), and those are served.
    let mut pins = serde_json::Map::new();
    for layer in 0..4 {
        for expert in 0..8 {
            let id = ExpertId::new(layer, expert);
            let hash = new_version_by(net.node.store(), id, Some(&key));
            pins.insert(id.to_string(), json!(hash.to_string()));
        }
    }
    let (status, body) = Call {
        method: "PUT",
        ..Call::post("/experts/serving", json!({ "pins": pins }))
    }
    .send(&net.node)
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = Call::post("/v1/chat/completions", chat(16, 9))
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fee = body["usage"]["total_tokens"].as_u64().expect("usage") * NANO_PER_TOKEN;
    assert_eq!(
        available(&net.node, contributor),
        fee / 2,
        "all royalties to the contributor"
    );
}

#[tokio::test]
async fn idempotent_retries_answer_the_same_and_charge_once() {
    let net = net();
    let (payer, key) = user(&net, "5");
    let body = chat(10, 4);
    let (s1, h1, first) = Call::post("/v1/chat/completions", body.clone())
        .key(&key)
        .idempotency("order-1")
        .send_raw(&net.node)
        .await;
    assert_eq!(s1, StatusCode::OK);
    assert!(h1.get("idempotent-replayed").is_none());
    let after_first = available(&net.node, payer);
    let (s2, h2, second) = Call::post("/v1/chat/completions", body.clone())
        .key(&key)
        .idempotency("order-1")
        .send_raw(&net.node)
        .await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(first, second, "the same bytes, id included");
    assert_eq!(available(&net.node, payer), after_first, "charged once");
    let (s3, reused) = Call::post("/v1/chat/completions", chat(11, 4))
        .key(&key)
        .idempotency("order-1")
        .send(&net.node)
        .await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");

    // Racing retries: one generation, one charge, one answer for all.
    let before = available(&net.node, payer);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let node = net.node.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            Call::post("/v1/chat/completions", chat(10, 5))
                .key(&key)
                .idempotency("order-2")
                .send_raw(&node)
                .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let (status, _, body) = t.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    let usage: Value = serde_json::from_str(&answers[0]).expect("json");
    let fee = usage["usage"]["total_tokens"].as_u64().expect("usage") * NANO_PER_TOKEN;
    assert_eq!(before - available(&net.node, payer), fee);

    // A streamed request replays as the same event stream.
    let mut stream = chat(6, 6);
    stream["stream"] = json!(true);
    let (_, _, a) = Call::post("/v1/chat/completions", stream.clone())
        .key(&key)
        .idempotency("order-3")
        .send_raw(&net.node)
        .await;
    let (_, h, b) = Call::post("/v1/chat/completions", stream)
        .key(&key)
        .idempotency("order-3")
        .send_raw(&net.node)
        .await;
    assert_eq!(h[header::CONTENT_TYPE], "text/event-stream");
    assert!(a.ends_with("data: [DONE]\n\n"), "{a}");
    assert_eq!(a, b);
    assert!(net.node.audit_ledger().expect("audit").ok);
}

#[tokio::test]
async fn ledger_routes_read_and_transfer() {
    let net = net();
    let (a, key) = user(&net, "10");
    let (b, _) = user(&net, "0");
    let (status, body) = Call::get(&format!("/ledger/accounts/{a}"))
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"address": a.to_string(), "available": 10_000_000_000u64, "pending": 0, "owed": 0})
    );
    let (status, body) = Call::get("/ledger/accounts/operator").send(&net.node).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["address"], net.node.operator().to_string());
    let transfer = json!({"to": b.to_string(), "amount": "2.5", "reference": "rent"});
    let (status, body) = Call::post("/ledger/transfers", transfer.clone())
        .key(&key)
        .idempotency("t-1")
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["amount"], 2_500_000_000u64);
    let (status, again) = Call::post("/ledger/transfers", transfer)
        .key(&key)
        .idempotency("t-1")
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, body);
    assert_eq!(available(&net.node, b), 2_500_000_000);
    for (req, status, code) in [
        (
            json!({"to": b.to_string(), "amount": "0"}),
            400,
            "zero_amount",
        ),
        (
            json!({"to": b.to_string(), "amount": "-1"}),
            400,
            "malformed_amount",
        ),
        (
            json!({"to": b.to_string(), "amount": "1e3"}),
            400,
            "malformed_amount",
        ),
        (
            json!({"to": b.to_string(), "amount": "0.0000000001"}),
            400,
            "malformed_amount",
        ),
        (
            json!({"to": b.to_string(), "amount": "99999999999999999999"}),
            400,
            "amount_overflow",
        ),
        (
            json!({"to": b.to_string(), "amount": "100"}),
            402,
            "insufficient_funds",
        ),
        (
            json!({"to": a.to_string(), "amount": "1"}),
            400,
            "self_transfer",
        ),
        (
            json!({"to": "0x1234", "amount": "1"}),
            400,
            "malformed_address",
        ),
        (
            json!({"to": "nobody", "amount": "1"}),
            404,
            "unknown_account",
        ),
        (
            json!({"to": "emission", "amount": "1"}),
            403,
            "system_account",
        ),
    ] {
        let (s, body) = Call::post("/ledger/transfers", req.clone())
            .key(&key)
            .send(&net.node)
            .await;
        assert_eq!(s.as_u16(), status, "{req}: {body}");
        assert_eq!(body["error"]["code"], code, "{req}");
    }
    let (status, body) = Call::post(
        "/ledger/transfers",
        json!({"to": b.to_string(), "amount": 1}),
    )
    .key(&key)
    .send(&net.node)
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a JSON number is refused: {body}"
    );
    assert_eq!(
        available(&net.node, a),
        7_500_000_000,
        "no refusal moved anything"
    );
    let (status, body) = Call::get(&format!("/ledger/accounts/{a}/history?limit=1"))
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["postings"][0]["reference"], "rent");
    assert!(body["next_before"].is_u64());
    let (status, body) = Call::get("/ledger").send(&net.node).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["supply"]["cap"], 1_000_000_000_000_000_000u64);
    let (status, body) = Call::get("/ledger/audit").send(&net.node).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ok"], true, "{body}");
    let (status, _) = Call::get("/ledger/audit")
        .from("203.0.113.9:1")
        .send(&net.node)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Anchoring puts every posting on the chain and the audit then checks them there.
    let anchored = net.node.anchor_ledger().expect("anchor");
    assert_eq!(anchored.len(), 1);
    let report = net.node.audit_ledger().expect("audit");
    assert!(
        report.ok && report.unanchored == 0 && report.anchored > 0,
        "{report:?}"
    );
    let metrics = net.node.render_metrics().expect("metrics");
    assert!(
        metrics.contains("blyan_ledger_postings_total{kind=\"transfer\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("blyan_ledger_refusals_total{code=\"insufficient_funds\"} 1"));
    assert!(metrics.contains("blyan_ledger_unanchored_postings 0"));
}

#[tokio::test]
async fn a_fee_pool_left_nonempty_takes_the_ledger_down() {
    let net = net();
    let node = net.node.clone();
    let health = tokio::task::spawn_blocking(move || node.probe(1))
        .await
        .expect("join")
        .expect("probe");
    let ledger = health
        .components
        .iter()
        .find(|c| c.name == "ledger")
        .expect("ledger component");
    assert_eq!(ledger.readiness, 1.0, "{}", ledger.detail);
    // A split gone wrong would leave fees in the pool.
    net.node
        .ledger()
        .store()
        .write(&mut |tx| {
            tx.exec(
                "UPDATE balances SET amount = 5 WHERE address = $1 AND book = 0",
                &[SystemAccount::FeePool.address().to_hex_lower().into()],
            )?;
            Ok(())
        })
        .expect("tamper");
    let node = net.node.clone();
    let health = tokio::task::spawn_blocking(move || node.probe(2))
        .await
        .expect("join")
        .expect("probe");
    let ledger = health
        .components
        .iter()
        .find(|c| c.name == "ledger")
        .expect("ledger component");
    assert_eq!(ledger.readiness, 0.0);
    assert!(
        ledger.detail.contains("fee pool holds 5"),
        "{}",
        ledger.detail
    );
    assert_ne!(health.stage, blyan_node::Stage::Release);
}
