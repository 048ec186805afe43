//! Who may call what: the node's own machine, an account, or anyone.
//!
//! A request is *local* when it comes from a loopback address and its `Host` and `Origin`
//! (when present) name a loopback host too. The second half stops DNS rebinding: a page on
//! `evil.example` whose name is made to resolve to 127.0.0.1 reaches the port from the
//! operator's own browser, but it says `Host: evil.example`; and a cross-site form or fetch
//! says `Origin: https://evil.example`. Such requests are treated like any remote one.
//!
//! Roles: anonymous (anyone), account (a known API key), operator (a local request, or an
//! API key of the operator's account). Routes that change what the node serves or spend the
//! hidden pool are operator-only ([`operator_only`]); the rest say what they need in their
//! handlers.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use blyan_node::Node;

use crate::{ApiError, blocking};

/// Whether `host` (a `Host` header value or a URL's authority: name or address, with or
/// without a port) names this machine's loopback.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    // `[::1]:8420`, `[::1]`, `127.0.0.1:8420`, `localhost:8420`, `localhost`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, after)) if after.is_empty() || is_port(after) => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn is_port(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether an `Origin` header names a loopback origin (`http://127.0.0.1:8420`); `null` and
/// anything else do not.
fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && !rest.contains('/') && is_loopback_host(rest)
}

/// Whether a request with these headers from `peer` (none: an in-process call) is local.
pub(crate) fn is_local(peer: Option<SocketAddr>, headers: &HeaderMap) -> bool {
    if peer.is_some_and(|p| !p.ip().is_loopback()) {
        return false;
    }
    let named_local = |name: header::HeaderName, check: fn(&str) -> bool| {
        headers
            .get_all(name)
            .iter()
            .all(|v| v.to_str().is_ok_and(check))
    };
    named_local(header::HOST, is_loopback_host) && named_local(header::ORIGIN, is_loopback_origin)
}

/// The peer of a request, if it came through a socket.
pub(crate) fn peer(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Route layer: only the operator passes; anyone else gets `403 operator_only`.
pub(crate) async fn operator_only(
    State(node): State<Arc<Node>>,
    req: Request,
    next: Next,
) -> Response {
    let local = is_local(peer(&req), req.headers());
    if !local {
        let key = match crate::billing::bearer(req.headers()) {
            Ok(k) => k,
            Err(e) => return e.into_response(),
        };
        let operator = node.operator();
        let allowed = match key {
            Some(key) => {
                let n = node.clone();
                blocking(move || n.payer(Some(&key), false))
                    .await
                    .is_ok_and(|a| a == operator)
            }
            None => false,
        };
        if !allowed {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_only",
                "only the node's operator may call this: from the node's own machine (loopback, \
                 with a loopback Host), or with an API key of the operator's account",
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_origins() {
        for h in [
            "localhost",
            "LOCALHOST:8420",
            "127.0.0.1",
            "127.0.0.1:8420",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:8420",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8420",
            "localhost.evil.example",
            "192.0.2.1:8420",
            "[::2]:8420",
            "127.0.0.1:",
            "127.0.0.1:abc",
            "[::1]x",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert!(is_loopback_origin("http://127.0.0.1:8420"));
        assert!(is_loopback_origin("https://localhost"));
        for o in [
            "null",
            "http://evil.example",
            "file://127.0.0.1",
            "http://127.0.0.1:8420/x",
        ] {
            assert!(!is_loopback_origin(o), "{o}");
        }
    }

    #[test]
    fn a_rebound_name_or_a_foreign_origin_is_not_local() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let headers = |pairs: &[(header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(k.clone(), v.parse().unwrap());
            }
            h
        };
        assert!(is_local(
            Some(local),
            &headers(&[(header::HOST, "127.0.0.1:8420")])
        ));
        assert!(is_local(None, &HeaderMap::new()));
        assert!(!is_local(
            Some(remote),
            &headers(&[(header::HOST, "127.0.0.1:8420")])
        ));
        assert!(!is_local(
            Some(local),
            &headers(&[(header::HOST, "evil.example:8420")])
        ));
        assert!(!is_local(
            Some(local),
            &headers(&[
                (header::HOST, "127.0.0.1:8420"),
                (header::ORIGIN, "https://evil.example")
            ])
        ));
        assert!(is_local(
            Some(local),
            &headers(&[
                (header::HOST, "localhost:8420"),
                (header::ORIGIN, "http://localhost:8420")
            ])
        ));
    }
}
