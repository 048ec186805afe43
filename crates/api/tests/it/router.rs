//! Router tests: requests through `oneshot`, no socket.

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use blyan_chain::ChainId;
use blyan_node::NodeConfig;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{net, net_with, new_version};

/// Sends one request and returns the status and the body (JSON when it parses, else a string).
async fn call(
    node: &std::sync::Arc<blyan_node::Node>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let response = blyan_api::router(node.clone())
        .oneshot(req.body(body.into()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn post_json(
    node: &std::sync::Arc<blyan_node::Node>,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    call(
        node,
        "POST",
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

async fn get(node: &std::sync::Arc<blyan_node::Node>, path: &str) -> (StatusCode, Value) {
    call(node, "GET", path, None, Body::empty()).await
}

/// One Agent Checker round, off the async workers.
async fn probe(node: &std::sync::Arc<blyan_node::Node>) -> blyan_node::Health {
    let node = node.clone();
    tokio::task::spawn_blocking(move || node.probe(1))
        .await
        .expect("join")
        .expect("probe")
}

/// One Agent Checker round of a node that says it listens (the API probe needs that).
async fn probe_listening(node: &std::sync::Arc<blyan_node::Node>) -> blyan_node::Health {
    node.set_listening(Some("127.0.0.1:1".parse().expect("addr")));
    probe(node).await
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let net = net();
    let (status, body) = get(&net.node, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "blyan");
    assert_eq!(body["data"][0]["context_length"], 1024);
    let (status, _) = get(&net.node, "/v1/models/blyan").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&net.node, "/v1/models/gpt-4").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn chat_completion_is_deterministic_per_seed_and_counts_usage() {
    let net = net();
    let request = json!({
        "model": "blyan",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        "max_tokens": 12,
        "seed": 5,
        "temperature": 0.9,
    });
    let (status, a) = post_json(&net.node, "/v1/chat/completions", request.clone()).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let (_, b) = post_json(&net.node, "/v1/chat/completions", request).await;
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    let usage = &a["usage"];
    let completion = usage["completion_tokens"].as_u64().expect("completion");
    assert!((1..=12).contains(&completion), "{usage}");
    // BOS + "Be brief.\nhello\n" in the byte-level tokenizer.
    assert_eq!(usage["prompt_tokens"], 1 + "Be brief.\nhello\n".len());
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(completion + usage["prompt_tokens"].as_u64().expect("prompt"))
    );
    let finish = a["choices"][0]["finish_reason"].as_str().expect("finish");
    assert!(finish == "stop" || finish == "length", "{finish}");
    assert!(a["id"].as_str().expect("id").starts_with("chatcmpl-"));
}

#[tokio::test]
async fn text_completion_honours_max_tokens() {
    let net = net();
    let (status, body) = post_json(
        &net.node,
        "/v1/completions",
        json!({"model": "blyan", "prompt": "abc", "max_tokens": 3, "temperature": 0, "seed": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["choices"][0]["text"].is_string());
    assert!(body["usage"]["completion_tokens"].as_u64().expect("n") <= 3);
}

#[tokio::test]
async fn ignore_eos_keeps_a_completion_going_to_max_tokens() {
    let net = net();
    let complete = |seed: u64, ignore_eos: bool| {
        post_json(
            &net.node,
            "/v1/completions",
            json!({"prompt": "abc", "max_tokens": 32, "temperature": 2, "seed": seed,
                   "ignore_eos": ignore_eos}),
        )
    };
    // A draw that ends on end-of-sequence before the limit...
    let mut seed = 0;
    loop {
        let (status, body) = complete(seed, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["choices"][0]["finish_reason"] == "stop" {
            assert!(body["usage"]["completion_tokens"].as_u64().expect("n") < 32);
            break;
        }
        seed += 1;
        assert!(seed < 100, "no seed ended early");
    }
    // ...runs to the limit when asked to ignore it.
    let (status, body) = complete(seed, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 32);
    let (status, body) = post_json(
        &net.node,
        "/v1/completions",
        json!({"prompt": "abc", "ignore_eos": "yes"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
}

/// Method, path, content type, body, expected status, expected code.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

#[tokio::test]
async fn bad_input_gets_a_4xx_in_openai_shape() {
    let config = NodeConfig {
        body_limit_bytes: 4096,
        ..NodeConfig::default()
    };
    let net = net_with(config);
    let msg = |extra: Value| {
        let mut v = json!({"messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().expect("object") {
            v[k] = x.clone();
        }
        v.to_string()
    };
    let json_ct = Some("application/json");
    let unknown_block = format!("/chain/blocks/{}", "ab".repeat(32));
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            "{not json".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            "".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            "[1,2]".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            json!({"messages": "hi"}).to_string(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"model": "gpt-4"})),
            404,
            "model_not_found",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"max_tokens": 5000})),
            400,
            "context_length_exceeded",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"max_tokens": 0})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"max_tokens": -1})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"temperature": -0.5})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({})).replace("{", "{\"temperature\":1e999,"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"temperature": 5})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"stop": [""]})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"repetition_penalty": 0})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"top_p": 0})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"n": 2})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"seed": -3})),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            json!({"messages": []}).to_string(),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            json!({"messages": [{"role": "tool", "content": "x"}]}).to_string(),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/chat/completions",
            json_ct,
            msg(json!({"pad": "x".repeat(5000)})),
            413,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/chat/completions",
            Some("text/plain"),
            msg(json!({})),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/chat/completions",
            None,
            msg(json!({})),
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/v1/completions",
            json_ct,
            json!({"prompt": ["a", "b"]}).to_string(),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/completions",
            json_ct,
            json!({"prompt": "a", "max_tokens": 1023}).to_string(),
            400,
            "context_length_exceeded",
        ),
        ("GET", "/v1/nothing", None, String::new(), 404, "not_found"),
        (
            "GET",
            "/chain/blocks?chain=nope",
            None,
            String::new(),
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/chain/blocks?limit=0",
            None,
            String::new(),
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/chain/blocks?limit=many",
            None,
            String::new(),
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/chain/blocks/xyz",
            None,
            String::new(),
            400,
            "invalid_parameter",
        ),
        ("GET", &unknown_block, None, String::new(), 404, "not_found"),
        (
            "PUT",
            "/experts/serving",
            json_ct,
            json!({"pins": {"9.9": "ab".repeat(32)}}).to_string(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/experts/serving",
            json_ct,
            json!({"pins": {"x": "y"}}).to_string(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/experts/serving",
            json_ct,
            json!({"pin": {}}).to_string(),
            422,
            "invalid_request",
        ),
    ];
    for (method, path, ct, body, status, code) in cases {
        let (got, value) = call(&net.node, method, path, ct, body.clone()).await;
        let short: String = body.chars().take(80).collect();
        assert_eq!(got.as_u16(), status, "{method} {path} {short}: {value}");
        let error = &value["error"];
        assert_eq!(error["code"], code, "{method} {path} {short}: {value}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{value}"
        );
        assert!(error["type"].is_string(), "{value}");
    }
    // Nothing was left running or queued by the refusals, and none of them left the payer's
    // funds held (the loopback account pays for these keyless requests).
    assert_eq!(net.node.active_generations(), 0);
    let operator = net
        .node
        .ledger()
        .balance(net.node.operator())
        .expect("balance");
    assert_eq!(operator.pending.nano(), 0, "a refusal left a hold");
}

#[tokio::test]
async fn chain_endpoints_page_and_filter() {
    let net = net();
    let (status, all) = get(&net.node, "/chain/blocks?limit=500").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all["total"], 50);
    let (_, page) = get(&net.node, "/chain/blocks?chain=param&offset=40&limit=5").await;
    assert_eq!(page["total"], 47);
    let blocks = page["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 5);
    assert_eq!(blocks[0]["height"], 40);
    assert!(blocks.iter().all(|b| b["chain"] == "param"));
    let (_, tail) = get(&net.node, "/chain/blocks?chain=param&offset=45&limit=5").await;
    assert_eq!(tail["blocks"].as_array().expect("blocks").len(), 2);

    let hash = blocks[0]["hash"].as_str().expect("hash");
    let (status, block) = get(&net.node, &format!("/chain/blocks/{hash}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(block["hash"], hash);
    assert_eq!(block["header"]["height"], 40);
    assert_eq!(block["header"]["chain"], "param");
}

#[tokio::test]
async fn expert_versions_can_be_chosen_and_reset() {
    let net = net();
    let (status, body) = get(&net.node, "/experts").await;
    assert_eq!(status, StatusCode::OK);
    let experts = body["experts"].as_array().expect("experts");
    assert_eq!(experts.len(), 32);
    assert!(experts.iter().all(|e| e["served"] == e["head"]));

    let id = "0.3".parse().expect("id");
    let genesis = net
        .node
        .store()
        .expert_head(id)
        .expect("head")
        .expect("some");
    let v2 = new_version(net.node.store(), id);
    let expert = |body: &Value| {
        body["experts"]
            .as_array()
            .expect("experts")
            .iter()
            .find(|e| e["id"] == "0.3")
            .cloned()
            .expect("0.3")
    };
    let (_, body) = get(&net.node, "/experts").await;
    let e = expert(&body);
    assert_eq!(e["versions"].as_array().expect("versions").len(), 2);
    assert_eq!(e["head"], v2.to_string());
    // The model loaded at start still serves the version it loaded.
    assert_eq!(e["served"], genesis.to_string());

    // Pin the old version explicitly, then go back to heads.
    let (status, body) = call(
        &net.node,
        "PUT",
        "/experts/serving",
        Some("application/json"),
        json!({"pins": {"0.3": genesis.to_string()}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pins"]["0.3"], genesis.to_string());
    let (status, _) = call(
        &net.node,
        "PUT",
        "/experts/serving",
        Some("application/json"),
        json!({"pins": {}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = get(&net.node, "/experts").await;
    assert_eq!(expert(&body)["served"], v2.to_string());

    // A pin naming another expert's block is refused and changes nothing.
    let other = net
        .node
        .store()
        .expert_head("1.1".parse().expect("id"))
        .expect("head")
        .expect("some");
    let (status, body) = call(
        &net.node,
        "PUT",
        "/experts/serving",
        Some("application/json"),
        json!({"pins": {"0.3": other.to_string()}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, body) = get(&net.node, "/experts").await;
    assert_eq!(expert(&body)["served"], v2.to_string());
    // And the node still generates.
    let (status, _) = post_json(
        &net.node,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_reports_stage_components_and_readiness() {
    let net = net();
    let (_, before) = get(&net.node, "/health").await;
    assert_eq!(before["stage"], "unavailable");
    let (status, _) = get(&net.node, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    probe_listening(&net.node).await;
    let (status, health) = get(&net.node, "/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["stage"], "release", "{health}");
    let names: Vec<&str> = health["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "block_store",
            "model",
            "expert_cache",
            "api",
            "disk",
            "ledger",
            "network"
        ]
    );
    assert!(
        health["reason"]
            .as_str()
            .expect("reason")
            .starts_with("release")
    );
    let (status, _) = get(&net.node, "/health/ready").await;
    assert_eq!(status, StatusCode::OK);
    let (status, live) = get(&net.node, "/health/live").await;
    assert_eq!(
        (status, live["live"].clone()),
        (StatusCode::OK, json!(true))
    );
}

#[tokio::test]
async fn a_block_stored_from_elsewhere_gets_the_same_follow_up() {
    let net = net();
    let id = blyan_primitives::ExpertId::new(1, 3);
    let served = |node: &std::sync::Arc<blyan_node::Node>| {
        node.experts()
            .expect("experts")
            .into_iter()
            .find(|e| e.id == id)
            .expect("expert")
            .served
    };
    // A new version stored behind the node's back (as a peer's block will be) ...
    let hash = new_version(net.node.store(), id);
    assert_ne!(served(&net.node), hash);
    // ... is served once the node runs its one follow-up for stored blocks.
    let header = net
        .node
        .store()
        .header(&hash)
        .expect("read")
        .expect("header");
    let node = net.node.clone();
    tokio::task::spawn_blocking(move || node.on_appended(hash, &header))
        .await
        .expect("join")
        .expect("on_appended");
    assert_eq!(served(&net.node), hash);
    let (status, body) = post_json(
        &net.node,
        "/v1/completions",
        json!({"prompt": "abc", "max_tokens": 2, "seed": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_lane_that_panics_is_restarted_and_counted() {
    let net = net();
    let lanes_before = net.node.lane_panics();
    assert_eq!(lanes_before, 0);
    net.node.inject_lane_panic();
    // Wait for the lane's thread to die (it panics when it next reads its queue).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while net.node.lane_panics() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lane never panicked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Every request after the death succeeds: the dead lane is neither chosen nor left dead.
    for seed in 0..6 {
        let (status, body) = post_json(
            &net.node,
            "/v1/completions",
            json!({"prompt": "abc", "max_tokens": 3, "seed": seed}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "request {seed}: {body}");
    }
    let (_, metrics) = call(&net.node, "GET", "/metrics", None, Body::empty()).await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains("blyan_engine_lane_restarts_total 1"),
        "{metrics}"
    );
    let lanes = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        metrics.contains(&format!("blyan_engine_lanes_alive {lanes}")),
        "{metrics}"
    );
    // The Agent Checker says so.
    probe_listening(&net.node).await;
    let (_, health) = get(&net.node, "/health").await;
    let model = health["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == "model")
        .expect("model")
        .clone();
    assert!(
        model["detail"]
            .as_str()
            .expect("detail")
            .contains("1 dead lane threads restarted"),
        "{model}"
    );
}

#[tokio::test]
async fn a_damaged_block_takes_the_node_out_of_release() {
    let net = net();
    net.node
        .set_listening(Some("127.0.0.1:1".parse().expect("addr")));
    // Damage the payload the store probe re-hashes first (round 0: the first block).
    let first = net.node.store().blocks(None).expect("blocks")[0].clone();
    let header = net
        .node
        .store()
        .header(&first.hash)
        .expect("h")
        .expect("some");
    let path = net.node.store().payload_path(&header.payload_hash);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).expect("write");
    let health = probe(&net.node).await;
    assert_eq!(health.readiness, 0.0, "{health:?}");
    assert!(health.reason.contains("block_store"), "{}", health.reason);
    let (status, _) = get(&net.node, "/health/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.chain, ChainId::Meta);
}

#[tokio::test]
async fn metrics_count_requests_tokens_cache_and_chain() {
    let net = net();
    let (status, body) = post_json(
        &net.node,
        "/v1/completions",
        json!({"prompt": "hello", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let generated = body["usage"]["completion_tokens"].as_u64().expect("n");
    let (status, text) = get(&net.node, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    assert_eq!(value("blyan_tokens_generated_total"), generated as f64);
    assert_eq!(
        value(
            "blyan_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/completions\",status=\"200\"}"
        ),
        1.0
    );
    assert!(value("blyan_expert_cache_misses_total") >= 2.0);
    assert!(value("blyan_expert_cache_hits_total") > 0.0);
    assert!(value("blyan_expert_cache_bytes") > 0.0);
    assert_eq!(value("blyan_chain_blocks{chain=\"param\"}"), 47.0);
    assert_eq!(value("blyan_time_to_first_token_seconds_count"), 1.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(text.contains("process_cpu_seconds_total"));
    assert!(text.contains("blyan_expert_tokens_total{expert="));
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let net = net();
    let (status, doc) = get(&net.node, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let spec = net.node.info().spec_block.to_string();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15, "{}", paths.len());
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path
                .replace("{id}", "blyan")
                .replace("{hash}", &spec)
                .replace("{who}", "operator");
            let (status, body) = call(
                &net.node,
                &method.to_uppercase(),
                &concrete,
                Some("application/json"),
                "{}",
            )
            .await;
            // A routed operation may answer 404 for a resource that does not exist; only the
            // fallback says "no endpoint".
            let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
                || (status == StatusCode::NOT_FOUND
                    && body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no endpoint")));
            assert!(!unrouted, "{method} {path}: {status} {body}");
        }
    }
}

#[tokio::test]
async fn the_web_ui_is_served() {
    let net = net();
    let (status, page) = get(&net.node, "/").await;
    assert_eq!(status, StatusCode::OK);
    let page = page.as_str().expect("html");
    assert!(page.contains("<title>Blyan node</title>"));
    assert!(page.contains("/assets/app.js"));
    let (status, js) = get(&net.node, "/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.as_str().expect("js").contains("/v1/chat/completions"));
    let (status, _) = get(&net.node, "/assets/style.css").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&net.node, "/assets/../Cargo.toml").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn proof_of_learning_status_and_refusals() {
    let net = net();
    let (status, body) = get(&net.node, "/pol/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["settings"]["mode"], "pol");
    assert_eq!(body["settings"]["alpha_percent"], 1);
    assert_eq!(body["verdicts"], 0);
    // This test network has no hidden pool committed.
    assert!(body["pool_problem"].as_str().is_some(), "{body}");
    // Some signature in the right form (the candidate is checked before whose it is).
    let sig = blyan_primitives::Signature::sign(
        &blyan_primitives::SigningKey::from_slice(&[0xaa; 32]).expect("key"),
        b"anything",
    );
    let (status, body) = call(
        &net.node,
        "POST",
        &format!("/pol/validate?signature={sig}"),
        Some("application/octet-stream"),
        "not a safetensors file",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "malformed_candidate");
    for (query, code) in [
        ("", "missing_signature"),
        ("?signature=0x12", "malformed_signature"),
    ] {
        let (status, body) = call(
            &net.node,
            "POST",
            &format!("/pol/validate{query}"),
            Some("application/octet-stream"),
            "x",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let (status, body) = call(
        &net.node,
        "POST",
        &format!("/pol/validate?signature={sig}&contributor=0x12"),
        Some("application/octet-stream"),
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(
        &net.node,
        "POST",
        &format!("/pol/validate?signature={sig}"),
        Some("application/octet-stream"),
        vec![0u8; 8 << 20],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let missing = blyan_primitives::Hash::of(b"no such verdict");
    let (status, body) = get(&net.node, &format!("/pol/proofs/{missing}/verify")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = post_json(
        &net.node,
        "/pol/replicate",
        json!({"proof": missing.to_string()}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// One sync message through `POST /net/v1/rpc`: the status and the decoded answer.
async fn rpc(
    node: &std::sync::Arc<blyan_node::Node>,
    body: Vec<u8>,
) -> (StatusCode, Option<blyan_net::wire::Msg>, Vec<u8>) {
    let req = Request::builder()
        .method("POST")
        .uri("/net/v1/rpc")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(body))
        .expect("request");
    let response = blyan_api::router(node.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
        .await
        .expect("body")
        .to_vec();
    (status, blyan_net::wire::Msg::decode(&bytes).ok(), bytes)
}

#[tokio::test]
async fn the_sync_read_path_answers_like_a_peer_and_refuses_malformed_messages() {
    use blyan_net::wire::Msg;
    let net = net();
    let node = &net.node;
    let status = Msg::Status {
        genesis: blyan_primitives::Hash::ZERO,
        heads: vec![],
    };
    let (code, reply, _) = rpc(node, status.encode()).await;
    assert_eq!(code, StatusCode::OK);
    let Some(Msg::Status { genesis, heads }) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(genesis, node.network());
    let param = heads
        .iter()
        .find(|h| h.chain == ChainId::Param as u8)
        .expect("param head");
    // The page of the param chain from 0 names every block up to that head, in order.
    let ask = Msg::GetHashes {
        id: 7,
        chain: ChainId::Param as u8,
        from: 0,
        max: 10_000,
    };
    let (_, reply, _) = rpc(node, ask.encode()).await;
    let Some(Msg::Hashes { id: 7, hashes }) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(hashes.len() as u64, param.height + 1);
    assert_eq!(hashes.last(), Some(&param.hash));
    // A header hashes to what was asked; a chunk is the payload's bytes.
    let (_, reply, _) = rpc(
        node,
        Msg::GetHeader {
            id: 8,
            hash: hashes[0],
        }
        .encode(),
    )
    .await;
    let Some(Msg::Header { id: 8, header, .. }) = reply else {
        panic!("{reply:?}")
    };
    let header = blyan_chain::BlockHeader::decode(&header).expect("header");
    assert_eq!(header.hash(), hashes[0]);
    let ask = Msg::GetChunk {
        id: 9,
        hash: hashes[0],
        offset: 0,
        len: 100,
    };
    let (_, reply, _) = rpc(node, ask.encode()).await;
    let payload = node.store().payload(&hashes[0]).expect("payload");
    assert_eq!(
        reply,
        Some(Msg::Chunk {
            id: 9,
            bytes: payload[..100].to_vec()
        })
    );
    // Unknown blocks are not found; announcements ask for nothing.
    let unknown = blyan_primitives::Hash([9; 32]);
    let (_, reply, _) = rpc(
        node,
        Msg::GetHeader {
            id: 10,
            hash: unknown,
        }
        .encode(),
    )
    .await;
    assert_eq!(reply, Some(Msg::NotFound { id: 10 }));
    let (code, _, _) = rpc(node, Msg::Announce { hash: unknown }.encode()).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    // Hostile bodies: garbage, trailing bytes, out-of-bounds asks, oversized bodies.
    let mut trailing = Msg::NotFound { id: 1 }.encode();
    trailing.push(0);
    let too_big_ask = Msg::GetChunk {
        id: 1,
        hash: unknown,
        offset: 0,
        len: u32::MAX,
    };
    for body in [vec![0xFF, 1, 2], trailing, too_big_ask.encode()] {
        let (code, _, bytes) = rpc(node, body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let v: Value = serde_json::from_slice(&bytes).expect("json error");
        assert_eq!(v["error"]["code"], "malformed_message");
    }
    let (code, _, _) = rpc(node, vec![0; 64 << 10]).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_node_whose_key_did_not_make_the_network_follows_it_and_writes_no_block() {
    // The network is test_key()'s; this node's keystore makes a key of its own.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = blyan_chain::Store::open(dir.path().join("chain")).expect("store");
        blyan_chain::genesis::init(
            &store,
            blyan_chain::genesis::random_genesis(7, &crate::test_key()).expect("genesis"),
        )
        .expect("init");
    }
    let node = std::sync::Arc::new(
        blyan_node::Node::open(dir.path(), NodeConfig::default(), 1_700_000_000_000).expect("node"),
    );
    assert!(!node.is_writer());
    let blocks_before = node.store().len().expect("len");
    // Postings exist (the ledger's genesis), yet nothing is anchored on the operator's chain L.
    assert!(node.anchor_ledger().expect("anchor").is_empty());
    // Operator actions that write blocks are refused with a stable code.
    let head = node
        .store()
        .expert_head(blyan_primitives::ExpertId::new(0, 0))
        .expect("read")
        .expect("head");
    let e = node
        .rollback_expert(
            blyan_primitives::ExpertId::new(0, 0),
            head,
            "test",
            1_700_000_000_000,
        )
        .expect_err("a follower writes no block");
    assert_eq!(e.code(), "not_admitted");
    let (status, body) =
        post_json(&node, "/pol/replicate", json!({"proof": head.to_string()})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "not_admitted");
    let key = blyan_net::Identity::new(&[5; 32], &crate::test_key()).public_key();
    let (status, body) = post_json(
        &node,
        "/net/admit",
        json!({"key": key.to_string(), "role": "host"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "not_admitted");
    assert_eq!(node.store().len().expect("len"), blocks_before);
    // Serving goes on.
    let (status, _) = get(&node, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_node_that_follows_no_peer_reports_an_empty_peer_table() {
    let net = net();
    let (status, body) = get(&net.node, "/net/peers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"summary": null, "peers": []}));
    // Once the launcher reports, the table is what it gave.
    net.node.set_network_view(
        blyan_node::NetworkView {
            expected: 2,
            present: 1,
            lag_blocks: 3,
            bans: 1,
            imported: 7,
        },
        json!([{"key": "ab", "blocks_from": 7}]),
    );
    let (_, body) = get(&net.node, "/net/peers").await;
    assert_eq!(body["summary"]["lag_blocks"], 3);
    assert_eq!(body["peers"][0]["blocks_from"], 7);
    let health = probe(&net.node).await;
    let network = health
        .components
        .iter()
        .find(|c| c.name == "network")
        .expect("network component");
    assert!((network.readiness - 0.375).abs() < 1e-9, "{network:?}");
    assert!(
        network
            .detail
            .starts_with("1 of 2 peers present; 3 blocks behind")
    );
}

#[tokio::test]
async fn the_operator_admits_keys_and_the_registry_lists_them() {
    let net = net();
    let node = &net.node;
    // Before the launcher sets it, the node has no network identity to show.
    let (status, body) = get(node, "/net/id").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "no_identity");
    node.set_net_identity(json!({"key": "k", "p2p_listen": null}));
    let (status, body) = get(node, "/net/id").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["key"], "k");

    let (_, body) = get(node, "/net/registry").await;
    assert_eq!(body, json!({"members": []}));
    let key = blyan_net::Identity::new(&[5; 32], &crate::test_key())
        .public_key()
        .to_string();
    let meta_before = node.store().head(blyan_chain::ChainId::Meta).expect("head");
    // Hostile bodies change nothing.
    for (bad, code) in [
        (json!({"key": "zz", "role": "host"}), "invalid_parameter"),
        (
            json!({"key": "ab".repeat(31), "role": "host"}),
            "invalid_parameter",
        ),
        (json!({"key": key, "role": "king"}), "invalid_parameter"),
        (
            json!({"key": key, "role": "host", "extra": 1}),
            "invalid_request",
        ),
        (json!({"role": "host"}), "invalid_request"),
        (
            json!({"key": key, "role": "host", "admitted": "yes"}),
            "invalid_request",
        ),
    ] {
        let (status, body) = post_json(node, "/net/admit", bad.clone()).await;
        assert!(status.is_client_error(), "{bad}: {body}");
        assert_eq!(body["error"]["code"], code, "{bad}: {body}");
    }
    assert_eq!(
        node.store().head(blyan_chain::ChainId::Meta).expect("head"),
        meta_before
    );
    let (status, body) = post_json(node, "/net/admit", json!({"key": key, "role": "host"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let block = body["block"].as_str().expect("block").to_owned();
    let (status, _) = get(node, &format!("/chain/blocks/{block}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post_json(node, "/net/admit", json!({"key": key, "role": "validator"})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = get(node, "/net/registry").await;
    assert_eq!(body["members"][0]["key"], key.as_str(), "{body}");
    assert_eq!(body["members"][0]["roles"], json!(["host", "validator"]));
    let (status, _) = post_json(
        node,
        "/net/admit",
        json!({"key": key, "role": "host", "admitted": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = get(node, "/net/registry").await;
    assert_eq!(body["members"][0]["roles"], json!(["validator"]), "{body}");
    // The spec is still what the node serves.
    assert!(node.store().meta().expect("meta").is_some());
}
