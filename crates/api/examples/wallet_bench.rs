//! What wallet login and card top-ups cost a node, through its HTTP API on loopback: the login
//! round trip (`GET /auth/nonce` + `POST /auth/siwe`, the wallet's signing not counted), the
//! check of a bearer credential per request (a session token against an API key, in the
//! node), and the Stripe webhook (its signature check alone, and whole deliveries).
//!
//! ```sh
//! cargo run --release -p blyan-api --example wallet_bench
//! ```
//!
//! The node runs in this process over a fresh random network in a temporary directory, with
//! an SQLite ledger; the client is a keep-alive HTTP/1.1 connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blyan_chain::{Store, genesis};
use blyan_node::{ConfigLayer, Node, NodeConfig};
use blyan_primitives::{Signature, SigningKey, address_of};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;

const LOGINS: usize = 500;
const CHECKS: usize = 5_000;
const WEBHOOKS: usize = 500;
const SECRET: &str = "whsec_bench_secret";

fn percentiles(mut d: Vec<Duration>) -> String {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    format!("p50 {:>7.1} µs, p99 {:>7.1} µs", at(0.5), at(0.99))
}

fn signed(body: &str, t: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let operator = SigningKey::from_slice(&[1; 32])?;
    {
        let store = Store::open(dir.path().join("chain"))?;
        genesis::init(&store, genesis::random_genesis(7, &operator)?)?;
    }
    blyan_ledger::Keystore::new(dir.path().join(blyan_ledger::KEYSTORE_DIR), "")
        .with_scrypt_log_n(10)
        .set_node_key(&operator)?;
    let mut config = NodeConfig::default();
    config.apply(&ConfigLayer {
        stripe_webhook_secret: Some(SECRET.into()),
        rate_limit_ip_per_min: Some(1_000_000),
        rate_limit_ip_burst: Some(1_000_000),
        ..ConfigLayer::default()
    })?;
    let node = Arc::new(Node::open(dir.path(), config, blyan_node::unix_ms())?);
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let served = node.clone();
    runtime.spawn(async move {
        let _ = blyan_api::serve(served, listener, std::future::pending()).await;
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, token: Option<&str>| -> anyhow::Result<Value> {
        let mut r = agent.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.header("authorization", &format!("Bearer {t}"));
        }
        Ok(r.call()?.body_mut().read_json()?)
    };

    // Wait for the listener, and unlock the session key (a scrypt run, once per process)
    // with a first login that is not timed.
    let wallet = SigningKey::from_slice(&[0x42; 32])?;
    let login = |timed: &mut Vec<Duration>| -> anyhow::Result<String> {
        let t0 = Instant::now();
        let n = get("/auth/nonce", None)?;
        let asked = t0.elapsed();
        let message = format!(
            "{} wants you to sign in with your Ethereum account:\n{}\n\nSign in to Blyan.\n\n\
             URI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
            n["domain"].as_str().unwrap_or(""),
            address_of(&wallet),
            n["uri"].as_str().unwrap_or(""),
            n["chain_id"],
            n["nonce"].as_str().unwrap_or(""),
            time::OffsetDateTime::now_utc().format(&Rfc3339)?,
        );
        let signature = Signature::sign(&wallet, message.as_bytes()).to_string();
        let t1 = Instant::now();
        let mut response = agent
            .post(format!("{base}/auth/siwe"))
            .send_json(json!({"message": message, "signature": signature}))?;
        let reply: Value = response.body_mut().read_json()?;
        timed.push(asked + t1.elapsed());
        reply["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("login refused: {reply}"))
    };
    let mut warmup = Vec::new();
    let mut token = None;
    for _ in 0..50 {
        match login(&mut warmup) {
            Ok(t) => {
                token = Some(t);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let token = token.ok_or_else(|| anyhow::anyhow!("the node never answered a login"))?;
    let mut logins = Vec::with_capacity(LOGINS);
    for _ in 0..LOGINS {
        login(&mut logins)?;
    }
    println!(
        "login round trip (GET /auth/nonce + POST /auth/siwe), {LOGINS}: {}",
        percentiles(logins)
    );

    // The credential check of every billed request: `payer` with a session token, with an
    // API key (a hashed lookup in the ledger's database), in the node.
    let (_, api_key) = node.ledger().new_user(
        &blyan_ledger::Keystore::new(dir.path().join("users"), "").with_scrypt_log_n(10),
        blyan_node::unix_ms(),
    )?;
    for (name, credential) in [("session token", &token), ("API key", &api_key)] {
        let mut times = Vec::with_capacity(CHECKS);
        for _ in 0..CHECKS {
            let t = Instant::now();
            node.payer(Some(credential), false)?;
            times.push(t.elapsed());
        }
        println!(
            "credential check per request, {name}, {CHECKS}: {}",
            percentiles(times)
        );
    }
    let mut me = Vec::with_capacity(LOGINS);
    for _ in 0..LOGINS {
        let t = Instant::now();
        get("/auth/me", Some(&token))?;
        me.push(t.elapsed());
    }
    println!(
        "GET /auth/me (token check + balance read) over HTTP, {LOGINS}: {}",
        percentiles(me)
    );

    // The webhook: its signature check alone, on a typical 1.2 KB event ...
    let now = i64::try_from(blyan_node::unix_ms() / 1000)?;
    let filler = "x".repeat(900);
    let sample = json!({"id": "evt_sample", "type": "customer.created",
                        "data": {"object": {"description": filler}}})
    .to_string();
    let header = signed(&sample, now);
    let mut verify = Vec::with_capacity(CHECKS);
    for _ in 0..CHECKS {
        let t = Instant::now();
        blyan_node::verify_stripe_signature(
            SECRET.as_bytes(),
            &header,
            sample.as_bytes(),
            now,
            300,
        )?;
        verify.push(t.elapsed());
    }
    println!(
        "webhook signature check ({} B body), {CHECKS}: {}",
        sample.len(),
        percentiles(verify)
    );
    // ... and whole deliveries over HTTP: paid sessions credited (a ledger transfer each),
    // then the same deliveries replayed (recognised, nothing posted).
    let address = address_of(&wallet).to_string();
    let bodies: Vec<String> = (0..WEBHOOKS)
        .map(|i| {
            json!({"id": format!("evt_{i}"), "type": "checkout.session.completed",
                   "data": {"object": {"id": format!("cs_{i}"), "payment_intent": format!("pi_{i}"),
                   "payment_status": "paid", "amount_total": 500, "currency": "usd",
                   "metadata": {"address": address, "tier": "starter"}}}})
            .to_string()
        })
        .collect();
    for round in ["credited", "already_credited"] {
        let mut times = Vec::with_capacity(WEBHOOKS);
        for body in &bodies {
            let header = signed(body, now);
            let t = Instant::now();
            let mut response = agent
                .post(format!("{base}/payments/stripe/webhook"))
                .header("stripe-signature", &header)
                .header("content-type", "application/json")
                .send(body.as_bytes())?;
            let reply: Value = response.body_mut().read_json()?;
            times.push(t.elapsed());
            anyhow::ensure!(reply["outcome"] == round, "unexpected reply {reply}");
        }
        println!(
            "webhook delivery over HTTP, {round}, {WEBHOOKS}: {}",
            percentiles(times)
        );
    }
    Ok(())
}
