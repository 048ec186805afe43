//! Rate limits on the generating routes: a key's burst and then `429 rate_limited` with
//! `retry-after` under 64 concurrent callers; client networks limited, loopback not; 0 turns
//! a limit off; a request whose body stalls ends with 408.

use std::net::SocketAddr;

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use blyan_node::NodeConfig;
use serde_json::json;
use tower::ServiceExt;

use crate::{billing::user, net_with};

/// Status and `retry-after` of one chat request of one token through `app`.
async fn chat(app: &Router, key: Option<&str>, peer: Option<&str>) -> (StatusCode, Option<u64>) {
    let mut req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let mut req = req.body(Body::from(body.to_string())).expect("request");
    if let Some(p) = peer {
        req.extensions_mut()
            .insert(ConnectInfo(p.parse::<SocketAddr>().expect("addr")));
    }
    let response = app.clone().oneshot(req).await.expect("infallible");
    let retry = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().expect("ascii").parse().expect("whole seconds"));
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    }
    (status, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_gets_its_burst_then_429_with_retry_after_under_64_callers() {
    let net = net_with(NodeConfig {
        rate_limit_key_per_min: 1,
        rate_limit_key_burst: 5,
        ..NodeConfig::default()
    });
    let (_, key) = user(&net, "100");
    let (_, other) = user(&net, "100");
    let app = blyan_api::router(net.node.clone());
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(async move { chat(&app, Some(&key), None).await })
        })
        .collect();
    let mut served = 0;
    for call in calls {
        match call.await.expect("task") {
            (StatusCode::OK, None) => served += 1,
            (StatusCode::TOO_MANY_REQUESTS, Some(retry)) => {
                // One token a minute: the next comes within a minute.
                assert!((1..=60).contains(&retry), "retry-after {retry}");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(served, 5, "exactly the burst is served");
    // Another key has a bucket of its own, from the same (loopback) caller.
    assert_eq!(chat(&app, Some(&other), None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn client_networks_are_limited_and_loopback_is_not() {
    let net = net_with(NodeConfig {
        rate_limit_ip_per_min: 1,
        rate_limit_ip_burst: 3,
        ..NodeConfig::default()
    });
    let (_, key) = user(&net, "100");
    let app = blyan_api::router(net.node.clone());
    let mut answers = Vec::new();
    for port in 0..5u16 {
        // The same address from different ports is the same caller.
        let peer = format!("192.0.2.7:{}", 40_000 + port);
        answers.push(chat(&app, Some(&key), Some(&peer)).await.0);
    }
    assert_eq!(
        answers,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Keyless and unknown-key floods count too: the limiter runs before authentication.
    assert_eq!(
        chat(&app, None, Some("192.0.2.7:1")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another address, and an IPv6 /64, have their own buckets.
    assert_eq!(
        chat(&app, Some(&key), Some("192.0.2.8:1")).await.0,
        StatusCode::OK
    );
    for (i, peer) in [
        "[2001:db8::1]:1",
        "[2001:db8::2]:1",
        "[2001:db8::3]:1",
        "[2001:db8::4]:1",
    ]
    .iter()
    .enumerate()
    {
        let expected = if i < 3 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(
            chat(&app, Some(&key), Some(peer)).await.0,
            expected,
            "{peer}"
        );
    }
    // Loopback callers have no network limit.
    for _ in 0..8 {
        assert_eq!(
            chat(&app, None, Some("127.0.0.1:9")).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn a_zero_rate_turns_the_limit_off() {
    let net = net_with(NodeConfig {
        rate_limit_key_per_min: 0,
        rate_limit_key_burst: 1,
        rate_limit_ip_per_min: 0,
        rate_limit_ip_burst: 1,
        ..NodeConfig::default()
    });
    let (_, key) = user(&net, "100");
    let app = blyan_api::router(net.node.clone());
    for _ in 0..8 {
        assert_eq!(
            chat(&app, Some(&key), Some("192.0.2.9:1")).await.0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn verdict_recomputations_are_limited_per_caller() {
    let net = net_with(NodeConfig {
        rate_limit_verify_per_min: 1,
        rate_limit_verify_burst: 2,
        ..NodeConfig::default()
    });
    let app = blyan_api::router(net.node.clone());
    let verify = |peer: &'static str| {
        let app = app.clone();
        async move {
            let uri = format!("/pol/proofs/{}/verify", blyan_primitives::Hash::ZERO);
            let mut req = Request::get(uri).body(Body::empty()).expect("request");
            req.extensions_mut()
                .insert(ConnectInfo(peer.parse::<SocketAddr>().expect("addr")));
            app.oneshot(req).await.expect("infallible").status()
        }
    };
    // No such verdict: 404 until the caller's burst is spent, then 429.
    assert_eq!(verify("192.0.2.9:1000").await, StatusCode::NOT_FOUND);
    assert_eq!(verify("192.0.2.9:1001").await, StatusCode::NOT_FOUND);
    assert_eq!(
        verify("192.0.2.9:1002").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another network has its own bucket; the chat routes' buckets are untouched.
    assert_eq!(verify("198.51.100.1:1000").await, StatusCode::NOT_FOUND);
    assert_eq!(
        chat(&app, None, Some("192.0.2.9:1003")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Loopback is not limited by network.
    for _ in 0..4 {
        assert_eq!(verify("127.0.0.1:1000").await, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_request_whose_body_stalls_ends_with_408() {
    let net = net_with(NodeConfig {
        request_timeout_s: 1,
        ..NodeConfig::default()
    });
    let app = blyan_api::router(net.node.clone());
    // Headers, then a body that never comes.
    let stalled = futures_util::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
    let req = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .expect("request");
    let started = std::time::Instant::now();
    let response = app.oneshot(req).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(v["error"]["code"], "request_timeout");
}
