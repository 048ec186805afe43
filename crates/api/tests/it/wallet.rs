//! Wallet login and card top-ups through the API: a Sign-In with Ethereum login whose token
//! bills the wallet wherever an API key would, refresh, logout (kept across a restart), the
//! wallet's own API keys; Stripe Checkout against a local mock of Stripe's API; and the
//! webhook catalog (good, bad signature, old timestamp, replayed event, body changed after
//! signing, unknown type, refund).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use blyan_ledger::SystemAccount;
use blyan_node::{Node, NodeConfig};
use blyan_primitives::{Address, Signature, SigningKey, address_of};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tower::ServiceExt;

use crate::net_with;

const REMOTE: &str = "192.0.2.9:50000";
const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
const API_KEY: &str = "sk_test_blyan_secret_key";

/// One request from a remote peer; the answer's status and JSON body.
async fn send(
    node: &Arc<Node>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "node.example:8420");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    req.extensions_mut()
        .insert(ConnectInfo(REMOTE.parse::<SocketAddr>().expect("addr")));
    let response = blyan_api::router(node.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post_json(
    node: &Arc<Node>,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    send(
        node,
        "POST",
        path,
        &headers,
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn with_token(
    node: &Arc<Node>,
    method: &str,
    path: &str,
    token: &str,
) -> (StatusCode, Value) {
    let auth = format!("Bearer {token}");
    send(
        node,
        method,
        path,
        &[("authorization", auth.as_str())],
        None,
    )
    .await
}

fn wallet_key() -> SigningKey {
    SigningKey::from_slice(&[0x42; 32]).expect("key")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("rfc3339")
}

/// Asks the node for a nonce and signs the login message it describes with `key`.
pub(crate) async fn signed_login(node: &Arc<Node>, key: &SigningKey) -> (String, String) {
    let (status, n) = send(node, "GET", "/auth/nonce", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{n}");
    let message = format!(
        "{} wants you to sign in with your Ethereum account:\n{}\n\nSign in to Blyan.\n\n\
         URI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
        n["domain"].as_str().expect("domain"),
        address_of(key),
        n["uri"].as_str().expect("uri"),
        n["chain_id"],
        n["nonce"].as_str().expect("nonce"),
        now_rfc3339(),
    );
    let signature = Signature::sign(key, message.as_bytes()).to_string();
    (message, signature)
}

/// Logs `key`'s wallet in; returns the session token.
pub(crate) async fn login(node: &Arc<Node>, key: &SigningKey) -> String {
    let (message, signature) = signed_login(node, key).await;
    let (status, body) = post_json(
        node,
        "/auth/siwe",
        None,
        json!({"message": message, "signature": signature}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["address"], address_of(key).to_string());
    body["token"].as_str().expect("token").to_owned()
}

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "In the beginning"}],
           "max_tokens": 4, "seed": 1, "temperature": 0.0})
}

fn available(node: &Node, a: Address) -> u64 {
    node.ledger().balance(a).expect("balance").available.nano()
}

fn fund(node: &Node, a: Address, bly: u64) {
    node.ledger()
        .transfer(
            SystemAccount::Treasury.address(),
            a,
            blyan_primitives::Amount::from_bly(bly).expect("amount"),
            "fund",
            None,
            1,
        )
        .expect("fund");
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_logs_in_pays_for_chat_manages_its_keys_and_logs_out() {
    let net = crate::net();
    let node = net.node.clone();
    let wallet = address_of(&wallet_key());

    // The login opens the wallet's account; the message cannot be used twice.
    let (message, signature) = signed_login(&node, &wallet_key()).await;
    let first = json!({"message": message, "signature": signature});
    let (status, body) = post_json(&node, "/auth/siwe", None, first.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["new_account"], true);
    let token = body["token"].as_str().expect("token").to_owned();
    let (status, body) = post_json(&node, "/auth/siwe", None, first).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "used_nonce")
    );

    // The token bills the wallet from another machine, as an API key would.
    let (status, body) = post_json(&node, "/v1/chat/completions", Some(&token), chat()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"),
        "an empty wallet cannot pay: {body}"
    );
    fund(&node, wallet, 10);
    let operator_before = available(&node, node.operator());
    let (status, body) = post_json(&node, "/v1/chat/completions", Some(&token), chat()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(available(&node, wallet) < 10_000_000_000, "the wallet paid");
    assert!(
        available(&node, node.operator()) >= operator_before,
        "not the loopback account"
    );
    let (status, me) = with_token(&node, "GET", "/auth/me", &token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["address"], wallet.to_string());
    assert_eq!(
        me["balance"]["available"].as_u64(),
        Some(available(&node, wallet))
    );

    // Its own API keys: made, used, listed, revoked.
    let (status, made) = with_token(&node, "POST", "/auth/api-keys", &token).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let key = made["key"].as_str().expect("key").to_owned();
    let id = made["id"].as_str().expect("id").to_owned();
    let (status, body) = post_json(&node, "/v1/chat/completions", Some(&key), chat()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, listed) = with_token(&node, "GET", "/auth/api-keys", &token).await;
    assert_eq!(listed["keys"][0]["id"], id.as_str());
    // An API key is not a login.
    let (status, body) = with_token(&node, "GET", "/auth/api-keys", &key).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "session_required")
    );
    let (status, body) =
        with_token(&node, "DELETE", "/auth/api-keys/0000000000000000", &token).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "unknown_api_key")
    );
    let (status, _) = with_token(&node, "DELETE", &format!("/auth/api-keys/{id}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post_json(&node, "/v1/chat/completions", Some(&key), chat()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unknown_api_key")
    );

    // A changed token is refused.
    let mut forged = token.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let (status, body) = with_token(&node, "GET", "/auth/me", &forged).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );

    // Refresh replaces the token; logout revokes the new one.
    let (status, body) = with_token(&node, "POST", "/auth/refresh", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let renewed = body["token"].as_str().expect("token").to_owned();
    let (status, body) = with_token(&node, "GET", "/auth/me", &token).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "revoked_token")
    );
    let (status, _) = with_token(&node, "POST", "/auth/logout", &renewed).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post_json(&node, "/v1/chat/completions", Some(&renewed), chat()).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "revoked_token")
    );

    // A logout survives a restart: the node opened again on the same data refuses it.
    let dir = net.dir;
    drop(node);
    drop(net.node);
    let reopened = Arc::new(
        Node::open(
            dir.path(),
            NodeConfig {
                max_batch: 8,
                ..NodeConfig::default()
            },
            blyan_node::unix_ms(),
        )
        .expect("reopen"),
    );
    let (status, body) = with_token(&reopened, "GET", "/auth/me", &renewed).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "revoked_token")
    );
    let fresh = login(&reopened, &wallet_key()).await;
    let (status, body) = with_token(&reopened, "GET", "/auth/me", &fresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_for_another_node_or_signer_is_refused_and_spends_no_nonce() {
    let net = crate::net();
    let node = net.node.clone();
    let (message, signature) = signed_login(&node, &wallet_key()).await;
    let cases = [
        (
            message.replacen("127.0.0.1:8420", "evil.example", 1),
            signature.clone(),
            StatusCode::UNAUTHORIZED,
            "wrong_domain",
        ),
        (
            message.replace("Chain ID: 1", "Chain ID: 5"),
            signature.clone(),
            StatusCode::UNAUTHORIZED,
            "wrong_chain",
        ),
        (
            message.clone(),
            Signature::sign(
                &SigningKey::from_slice(&[7; 32]).expect("key"),
                message.as_bytes(),
            )
            .to_string(),
            StatusCode::UNAUTHORIZED,
            "wrong_signer",
        ),
        (
            message.clone(),
            signature[..signature.len() - 2].to_owned(),
            StatusCode::BAD_REQUEST,
            "malformed_signature",
        ),
        (
            message[..message.len() / 2].to_owned(),
            signature.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
    ];
    for (m, s, want_status, want) in cases {
        let (status, body) = post_json(
            &node,
            "/auth/siwe",
            None,
            json!({"message": m, "signature": s}),
        )
        .await;
        assert_eq!((status, code(&body)), (want_status, want), "{body}");
    }
    // None of those spent the nonce: the good message still logs in.
    let (status, body) = post_json(
        &node,
        "/auth/siwe",
        None,
        json!({"message": message, "signature": signature}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A local stand-in for Stripe's API: answers `POST /v1/checkout/sessions` with `status`
/// and `reply`, and keeps each request's Authorization header and form body.
async fn mock_stripe(status: StatusCode, reply: Value) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/checkout/sessions",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let kept = kept.clone();
            let reply = reply.clone();
            async move {
                let auth = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                kept.lock().expect("lock").push((auth, body));
                (status, axum::Json(reply))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn payments_config(api_base: Option<&str>) -> NodeConfig {
    let mut config = NodeConfig {
        max_batch: 8,
        ..NodeConfig::default()
    };
    config
        .apply(&blyan_node::ConfigLayer {
            stripe_webhook_secret: Some(WEBHOOK_SECRET.into()),
            stripe_api_key: api_base.map(|_| API_KEY.into()),
            stripe_api_base: api_base.map(str::to_owned),
            ..blyan_node::ConfigLayer::default()
        })
        .expect("config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_asks_stripe_for_a_session_crediting_the_caller() {
    let (base, seen) = mock_stripe(
        StatusCode::OK,
        json!({"id": "cs_test_1", "url": "https://checkout.stripe.test/c/cs_test_1", "object": "checkout.session"}),
    )
    .await;
    let net = net_with(payments_config(Some(&base)));
    let node = net.node.clone();
    let token = login(&node, &wallet_key()).await;
    let (status, tiers) = send(&node, "GET", "/payments/tiers", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tiers["checkout"], true);
    let (status, body) = post_json(
        &node,
        "/payments/checkout",
        Some(&token),
        json!({"tier": "plus"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["url"], "https://checkout.stripe.test/c/cs_test_1");
    assert_eq!(body["tier"], "plus");
    assert_eq!(body["amount_minor"], 2000);
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    let (auth, form) = &requests[0];
    assert_eq!(auth, &format!("Bearer {API_KEY}"));
    let pairs: std::collections::BTreeMap<String, String> = url_pairs(form).into_iter().collect();
    let wallet = address_of(&wallet_key()).to_string();
    assert_eq!(pairs["metadata[address]"], wallet);
    assert_eq!(pairs["metadata[tier]"], "plus");
    assert_eq!(pairs["line_items[0][price_data][unit_amount]"], "2000");
    assert_eq!(pairs["line_items[0][price_data][currency]"], "usd");
    assert_eq!(pairs["mode"], "payment");

    let (status, body) = post_json(
        &node,
        "/payments/checkout",
        Some(&token),
        json!({"tier": "gold"}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "unknown_tier")
    );
    let (status, _) = post_json(&node, "/payments/checkout", None, json!({})).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "anonymous callers buy for no one"
    );

    // Stripe refusing, or unreachable (nothing listens there): a 502 naming what happened,
    // never the key.
    let (refusing, _) = mock_stripe(
        StatusCode::UNAUTHORIZED,
        json!({"error": {"message": "Invalid API Key provided", "type": "invalid_request_error"}}),
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    for (base, want) in [(refusing, "stripe_refused"), (dead, "stripe_unavailable")] {
        let other = net_with(payments_config(Some(&base)));
        let token = login(&other.node, &wallet_key()).await;
        let (status, body) =
            post_json(&other.node, "/payments/checkout", Some(&token), json!({})).await;
        assert_eq!((status, code(&body)), (StatusCode::BAD_GATEWAY, want));
        assert!(!body.to_string().contains(API_KEY), "{body}");
    }
    // No key configured: checkout is off.
    let off = net_with(payments_config(None));
    let token = login(&off.node, &wallet_key()).await;
    let (status, body) = post_json(&off.node, "/payments/checkout", Some(&token), json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "payments_disabled")
    );
}

fn url_pairs(form: &str) -> Vec<(String, String)> {
    form.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

fn stripe_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn deliver(node: &Arc<Node>, header_value: &str, body: &[u8]) -> (StatusCode, Value) {
    send(
        node,
        "POST",
        "/payments/stripe/webhook",
        &[
            ("content-type", "application/json"),
            ("stripe-signature", header_value),
        ],
        Some(body.to_vec()),
    )
    .await
}

fn completed(
    event: &str,
    payment: &str,
    wallet: &Address,
    tier: Option<&str>,
    paid: u64,
) -> Vec<u8> {
    let mut metadata = json!({"address": wallet.to_string()});
    if let Some(t) = tier {
        metadata["tier"] = json!(t);
    }
    json!({
        "id": event,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": format!("cs_{payment}"),
            "object": "checkout.session",
            "payment_intent": payment,
            "payment_status": "paid",
            "amount_total": paid,
            "currency": "usd",
            "metadata": metadata,
        }},
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_credits_each_paid_session_once_and_refuses_what_stripe_did_not_sign() {
    let net = net_with(payments_config(None));
    let node = net.node.clone();
    let wallet = address_of(&wallet_key());
    let treasury = SystemAccount::Treasury.address();
    let treasury_before = available(&node, treasury);
    let now = i64::try_from(blyan_node::unix_ms() / 1000).expect("now");
    let signed =
        |body: &[u8], t: i64| format!("t={t},v1={}", stripe_signature(WEBHOOK_SECRET, t, body));

    // Good: 5,000 BLY for the starter tier, named in the metadata.
    let body = completed("evt_1", "pi_1", &wallet, Some("starter"), 500);
    let header_value = signed(&body, now);
    let (status, reply) = deliver(&node, &header_value, &body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["outcome"], "credited");
    assert_eq!(available(&node, wallet), 5_000 * 1_000_000_000);
    // Replayed (Stripe's retry, or a captured delivery sent again): nothing more.
    let (status, reply) = deliver(&node, &header_value, &body).await;
    assert_eq!(
        (status, reply["outcome"].as_str()),
        (StatusCode::OK, Some("already_credited"))
    );
    assert_eq!(available(&node, wallet), 5_000 * 1_000_000_000);

    // The tier found from the amount paid when the metadata names none.
    let body = completed("evt_2", "pi_2", &wallet, None, 2000);
    let (status, reply) = deliver(&node, &signed(&body, now), &body).await;
    assert_eq!(
        (status, reply["outcome"].as_str()),
        (StatusCode::OK, Some("credited")),
        "{reply}"
    );
    assert_eq!(available(&node, wallet), 25_000 * 1_000_000_000);

    // Refused, crediting nothing: a wrong secret, an old timestamp, a body changed after
    // signing, no header, a tier whose price is not what was paid.
    let body = completed("evt_3", "pi_3", &wallet, Some("starter"), 500);
    let wrong = format!("t={now},v1={}", stripe_signature("whsec_other", now, &body));
    let old = signed(&body, now - 301);
    let mut changed = body.clone();
    let at = changed.iter().position(|&b| b == b'5').expect("a digit");
    changed[at] = b'9';
    for (h, b, want) in [
        (wrong.as_str(), &body, "bad_webhook_signature"),
        (old.as_str(), &body, "stale_webhook"),
        (header_value.as_str(), &changed, "bad_webhook_signature"),
        ("t=1,v1=zz", &body, "bad_webhook_signature"),
        ("garbage", &body, "bad_webhook_signature"),
    ] {
        let (status, reply) = deliver(&node, h, b).await;
        assert_eq!(
            (status, code(&reply)),
            (StatusCode::BAD_REQUEST, want),
            "{h}: {reply}"
        );
        assert!(!reply.to_string().contains(WEBHOOK_SECRET));
    }
    let (status, reply) = send(
        &node,
        "POST",
        "/payments/stripe/webhook",
        &[("content-type", "application/json")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (status, code(&reply)),
        (StatusCode::BAD_REQUEST, "bad_webhook_signature")
    );
    let mismatch = completed("evt_4", "pi_4", &wallet, Some("pro"), 500);
    let (status, reply) = deliver(&node, &signed(&mismatch, now), &mismatch).await;
    assert_eq!(
        (status, code(&reply)),
        (StatusCode::BAD_REQUEST, "amount_mismatch")
    );
    // A rotated secret: Stripe signs with both; either v1 may match.
    let two = format!(
        "t={now},v1={},v1={}",
        stripe_signature("whsec_old", now, &body),
        stripe_signature(WEBHOOK_SECRET, now, &body)
    );
    let (status, reply) = deliver(&node, &two, &body).await;
    assert_eq!(
        (status, reply["outcome"].as_str()),
        (StatusCode::OK, Some("credited")),
        "{reply}"
    );
    assert_eq!(available(&node, wallet), 30_000 * 1_000_000_000);

    // Unknown types are acknowledged and change nothing.
    let other = json!({"id": "evt_5", "type": "customer.created", "data": {"object": {}}})
        .to_string()
        .into_bytes();
    let (status, reply) = deliver(&node, &signed(&other, now), &other).await;
    assert_eq!(
        (status, reply["outcome"].as_str()),
        (StatusCode::OK, Some("ignored"))
    );

    // A refund takes back what is unspent and flags the rest: the wallet spends 29,000 of
    // its 30,000, then the 20-dollar payment (20,000 BLY) is refunded in full.
    node.ledger()
        .transfer(
            wallet,
            node.operator(),
            blyan_primitives::Amount::from_bly(29_000).expect("amount"),
            "spent",
            None,
            1,
        )
        .expect("spend");
    let refund = json!({
        "id": "evt_6", "type": "charge.refunded",
        "data": {"object": {"id": "ch_2", "object": "charge", "payment_intent": "pi_2",
                            "amount": 2000, "amount_refunded": 2000}},
    })
    .to_string()
    .into_bytes();
    let (status, reply) = deliver(&node, &signed(&refund, now), &refund).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["outcome"], "flagged");
    assert_eq!(reply["amount"].as_u64(), Some(1_000 * 1_000_000_000));
    assert_eq!(reply["flagged"].as_u64(), Some(19_000 * 1_000_000_000));
    assert_eq!(available(&node, wallet), 0);
    let (_, again) = deliver(&node, &signed(&refund, now), &refund).await;
    assert_eq!(again["outcome"], "replayed");
    // The treasury paid 30,000 and got 1,000 back.
    assert_eq!(
        treasury_before - available(&node, treasury),
        29_000 * 1_000_000_000
    );
    let audit = node.audit_ledger().expect("audit");
    assert!(audit.ok, "{:?}", audit.discrepancies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_of_one_event_credit_once() {
    let net = net_with(payments_config(None));
    let node = net.node.clone();
    let wallet = address_of(&wallet_key());
    let now = i64::try_from(blyan_node::unix_ms() / 1000).expect("now");
    let body = completed("evt_race", "pi_race", &wallet, Some("starter"), 500);
    let header_value = format!(
        "t={now},v1={}",
        stripe_signature(WEBHOOK_SECRET, now, &body)
    );
    let deliveries: Vec<_> = (0..8)
        .map(|_| {
            let (node, header_value, body) = (node.clone(), header_value.clone(), body.clone());
            tokio::spawn(async move { deliver(&node, &header_value, &body).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for d in deliveries {
        let (status, reply) = d.await.expect("task");
        // A delivery that lost a race may fail (Stripe retries it); none may credit twice.
        if status == StatusCode::OK {
            outcomes.push(reply["outcome"].as_str().unwrap_or("").to_owned());
        }
    }
    assert_eq!(
        outcomes.iter().filter(|o| *o == "credited").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(available(&node, wallet), 5_000 * 1_000_000_000);
    let (status, reply) = deliver(&node, &header_value, &body).await;
    assert_eq!(
        (status, reply["outcome"].as_str()),
        (StatusCode::OK, Some("already_credited"))
    );
}
