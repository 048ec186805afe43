//! Every route in `/openapi.json`, called as each kind of caller: what its `x-blyan-role`
//! says is what the node enforces. Operator routes refuse everyone but the node's own machine
//! and the operator account's key (`403 operator_only`), including a loopback request whose
//! `Host` or `Origin` is foreign (DNS rebinding); account routes refuse anonymous callers from
//! elsewhere (`401`); wallet routes refuse everyone without a wallet's session token (`401
//! session_required`), an API key included; the rest refuse no one for who they are.

use std::net::SocketAddr;

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{billing::user, net};

/// One kind of caller.
struct Caller {
    name: &'static str,
    peer: &'static str,
    host: &'static str,
    origin: Option<&'static str>,
    key: Option<String>,
}

/// A body that passes each route's own checks far enough for the role to be what decides.
fn body_for(method: &str, path: &str) -> (Option<&'static str>, Vec<u8>, String) {
    let sig = blyan_primitives::Signature::sign(
        &blyan_primitives::SigningKey::from_slice(&[0xaa; 32]).expect("key"),
        b"x",
    );
    let json_body = |v: Value| (Some("application/json"), v.to_string().into_bytes());
    let (ct, body) = match (method, path) {
        ("post", "/v1/chat/completions") => {
            json_body(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}))
        }
        ("post", "/v1/completions") => json_body(json!({"prompt": "hi", "max_tokens": 1})),
        ("post", "/ledger/transfers") => json_body(json!({"to": "operator", "amount": "0.001"})),
        ("post", "/payments/checkout") => json_body(json!({})),
        ("put", "/experts/serving") => json_body(json!({"pins": {}})),
        ("post", "/pol/replicate") => {
            json_body(json!({"proof": blyan_primitives::Hash::ZERO.to_string()}))
        }
        ("post", "/pol/validate") => {
            return (
                Some("application/octet-stream"),
                b"not a candidate".to_vec(),
                format!("/pol/validate?signature={sig}"),
            );
        }
        _ => (None, Vec::new()),
    };
    (ct, body, path.to_owned())
}

async fn call(app: &Router, method: &str, uri: &str, caller: &Caller) -> (StatusCode, Value) {
    let (ct, body, uri) = body_for(method, uri);
    let uri = uri
        .replace("{hash}", &blyan_primitives::Hash::ZERO.to_string())
        .replace("{who}", "operator")
        .replace("{id}", "no-such-model");
    let mut req = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(&uri)
        .header(header::HOST, caller.host);
    if let Some(ct) = ct {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    if let Some(o) = caller.origin {
        req = req.header(header::ORIGIN, o);
    }
    if let Some(k) = &caller.key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let mut req = req.body(Body::from(body)).expect("request");
    req.extensions_mut().insert(ConnectInfo(
        caller.peer.parse::<SocketAddr>().expect("addr"),
    ));
    let response = app.clone().oneshot(req).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_enforces_its_role_for_every_caller() {
    let net = net();
    let (_, account_key) = user(&net, "100");
    let operator = net.node.operator();
    let operator_key = net
        .node
        .ledger()
        .issue_api_key(operator, blyan_node::unix_ms())
        .expect("operator key");
    let app = blyan_api::router(net.node.clone());
    let remote = "192.0.2.7:40000";
    let wallet_key = blyan_primitives::SigningKey::from_slice(&[0x42; 32]).expect("key");
    let mut callers = [
        Caller {
            name: "anonymous, remote",
            peer: remote,
            host: "node.example:8420",
            origin: None,
            key: None,
        },
        Caller {
            name: "account, remote",
            peer: remote,
            host: "node.example:8420",
            origin: None,
            key: Some(account_key),
        },
        Caller {
            name: "loopback under a rebound name",
            peer: "127.0.0.1:40000",
            host: "evil.example:8420",
            origin: None,
            key: None,
        },
        Caller {
            name: "loopback, foreign origin",
            peer: "127.0.0.1:40000",
            host: "127.0.0.1:8420",
            origin: Some("https://evil.example"),
            key: None,
        },
        Caller {
            name: "operator, local",
            peer: "127.0.0.1:40000",
            host: "127.0.0.1:8420",
            origin: Some("http://127.0.0.1:8420"),
            key: None,
        },
        Caller {
            name: "operator key, remote",
            peer: remote,
            host: "node.example:8420",
            origin: None,
            key: Some(operator_key),
        },
        Caller {
            name: "wallet, remote",
            peer: remote,
            host: "node.example:8420",
            origin: None,
            key: Some(crate::wallet::login(&net.node, &wallet_key).await),
        },
    ];
    let (status, doc) = call(&app, "get", "/openapi.json", &callers[4]).await;
    assert_eq!(status, StatusCode::OK);
    let mut seen = std::collections::BTreeMap::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let role = op["x-blyan-role"]
                .as_str()
                .expect("every operation names its role");
            *seen.entry(role.to_owned()).or_insert(0) += 1;
            for caller in &mut callers {
                let (status, body) = call(&app, method, path, caller).await;
                let local = caller.name.starts_with("operator");
                let wallet = caller.name.starts_with("wallet");
                let has_account = caller.key.is_some() || local;
                if wallet && matches!(path.as_str(), "/auth/logout" | "/auth/refresh") {
                    // That call ended the session: log in again for the next route.
                    caller.key = Some(crate::wallet::login(&net.node, &wallet_key).await);
                }
                let what = format!("{method} {path} as {}: {status} {body}", caller.name);
                match role {
                    "operator" if !local => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                        assert_eq!(body["error"]["code"], "operator_only", "{what}");
                    }
                    "account" if !has_account => {
                        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                    }
                    "wallet" if !wallet => {
                        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                        assert_eq!(body["error"]["code"], "session_required", "{what}");
                    }
                    "operator" | "account" | "wallet" | "anyone" => {
                        assert!(
                            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                            "{what}"
                        );
                    }
                    other => panic!("unknown role {other} for {method} {path}"),
                }
            }
        }
    }
    assert_eq!(seen.get("operator"), Some(&4), "{seen:?}");
    assert_eq!(seen.get("account"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("wallet"), Some(&6), "{seen:?}");
    assert!(seen.get("anyone").is_some_and(|n| *n > 10), "{seen:?}");
}
