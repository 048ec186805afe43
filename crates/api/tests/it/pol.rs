//! Proof of Learning through the API while an evaluation runs: the evaluation holds the PoL
//! state for seconds, and nothing else on the server may wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use blyan_chain::{Store, genesis};
use blyan_node::pol::{ITEM_TOKENS, PolSettings, Pool, commit_pool};
use blyan_node::{Node, NodeConfig};
use blyan_primitives::ExpertId;
use blyan_train::expert::{ExpertOptions, ExpertTraining};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: u64 = 1_800_000_000_000;

fn text(lines: usize, seed: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "and the {} of the {} said unto the {} that it was {}\n",
                ["king", "people", "prophet", "servant"][(i + seed) % 4],
                ["land", "city", "house", "river"][(i * 3 + seed) % 4],
                ["men", "priests", "elders"][(i * 7) % 3],
                ["good", "so", "done", "well"][(i * 5 + seed) % 4]
            )
        })
        .collect()
}

/// A random-weight network with a committed hidden pool, and a node whose evaluations take
/// every stage (one thread, so that a chat has a core of its own).
fn pol_node() -> (tempfile::TempDir, Arc<Node>) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path().join("chain")).expect("store");
        genesis::init(
            &store,
            genesis::random_genesis(
                3,
                &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
            )
            .expect("genesis"),
        )
        .expect("init");
        let (_, meta) = store.meta().expect("meta").expect("spec");
        let tok = blyan_tokenizer::Tokenizer::from_json(&meta.tokenizer).expect("tokenizer");
        let tokens_of = |text: String| -> Vec<u32> {
            let mut tokens = Vec::new();
            for line in text.lines() {
                tokens.push(meta.spec.bos_token_id);
                tokens.extend(tok.encode(line).expect("encode"));
                tokens.push(meta.spec.eos_token_id);
            }
            tokens
        };
        // The hidden items, salted with a test secret, and validation items of the same
        // kind of text.
        let secret = [5u8; 32];
        let pool = Pool::salted(
            Pool::windows(&tokens_of(text(600, 1)), ITEM_TOKENS),
            &secret,
        );
        let validation = Pool::new(Pool::windows(&tokens_of(text(100, 2)), ITEM_TOKENS));
        commit_pool(
            &store,
            dir.path(),
            (&pool, &validation),
            "test text",
            &secret,
            &blyan_primitives::SigningKey::from_slice(&[2; 32]).expect("key"),
            NOW,
        )
        .expect("pool");
    }
    let config = NodeConfig {
        max_batch: 8,
        pol: PolSettings {
            stage_items: 64,
            stages: 4,
            threads: 1,
            ..PolSettings::default()
        },
        ..NodeConfig::default()
    };
    // The node's key is the one that made the network: this node operates it.
    blyan_ledger::Keystore::new(dir.path().join(blyan_ledger::KEYSTORE_DIR), "")
        .set_node_key(&blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"))
        .expect("node key");
    let node = Node::open(dir.path(), config, NOW).expect("node");
    (dir, Arc::new(node))
}

async fn get_status(node: &Arc<Node>) -> (StatusCode, Value) {
    let req = Request::get("/pol/status")
        .body(Body::empty())
        .expect("req");
    let response = blyan_api::router(node.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_chat_answer_during_an_evaluation() {
    let (_dir, node) = pol_node();
    let expert = ExpertId {
        layer: 1,
        expert: 2,
    };
    let mut opts = ExpertOptions::new(expert);
    opts.steps = 2;
    opts.batch = 4;
    opts.seq_len = 32;
    let mut run =
        ExpertTraining::new(node.store(), text(200, 2).as_bytes(), opts).expect("training");
    while !run.is_done() {
        run.step().expect("step");
    }
    let candidate = run
        .candidate()
        .expect("candidate")
        .encode()
        .expect("encode");

    let key = blyan_primitives::SigningKey::from_slice(&[0xaa; 32]).expect("key");
    let signature =
        blyan_node::pol::sign_submission(&key, &node.info().network, &candidate).expect("sign");
    let validate = {
        let node = node.clone();
        tokio::spawn(async move {
            let req = Request::post(format!("/pol/validate?signature={signature}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(candidate))
                .expect("req");
            blyan_api::router(node)
                .oneshot(req)
                .await
                .expect("infallible")
                .status()
        })
    };
    // Wait until the evaluation has begun (status shows it).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, status) = get_status(&node).await;
        if !status["evaluating"].is_null() {
            break;
        }
        assert!(!validate.is_finished(), "the evaluation ended unseen");
        assert!(Instant::now() < deadline, "no evaluation began: {status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let statuses: Vec<_> = (0..20)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let (code, body) = get_status(&node).await;
                (code, body, t.elapsed())
            })
        })
        .collect();
    let chat = {
        let node = node.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let req = Request::post("/v1/chat/completions")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"messages": [{"role": "user", "content": "In the beginning"}],
                           "max_tokens": 4, "temperature": 0, "stream": true})
                    .to_string(),
                ))
                .expect("req");
            let response = blyan_api::router(node)
                .oneshot(req)
                .await
                .expect("infallible");
            let code = response.status();
            let mut body = response.into_body().into_data_stream();
            let first = body.next().await.map(|c| c.expect("chunk"));
            let first_after = t.elapsed();
            let mut text = first.map(|b| String::from_utf8_lossy(&b).into_owned());
            while let Some(chunk) = body.next().await {
                let chunk = chunk.expect("chunk");
                text.get_or_insert_default()
                    .push_str(&String::from_utf8_lossy(&chunk));
            }
            (code, text.unwrap_or_default(), first_after)
        })
    };
    for s in statuses {
        let (code, body, took) = s.await.expect("status task");
        assert_eq!(code, StatusCode::OK);
        assert!(
            took < Duration::from_secs(1),
            "/pol/status took {took:?} during an evaluation"
        );
        assert!(body["pool_items"].as_u64().expect("pool") > 0, "{body}");
    }
    let (code, text, first_after) = chat.await.expect("chat task");
    assert_eq!(code, StatusCode::OK);
    assert!(
        first_after < Duration::from_secs(1),
        "the streamed chat's first chunk took {first_after:?} during an evaluation"
    );
    assert!(text.contains("data: [DONE]"), "{text}");
    // The calls overlapped the evaluation: it was still running when they had all answered.
    let (_, status) = get_status(&node).await;
    assert!(
        !status["evaluating"].is_null() && !validate.is_finished(),
        "the evaluation ended within {:?}; nothing overlapped it",
        started.elapsed()
    );
    assert_eq!(validate.await.expect("validate task"), StatusCode::OK);
    let (_, status) = get_status(&node).await;
    assert!(status["evaluating"].is_null(), "{status}");
    assert_eq!(status["verdicts"], 1);
}
