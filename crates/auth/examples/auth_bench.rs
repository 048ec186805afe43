//! What a wallet login and a session check cost on this machine, without HTTP: the time of
//! [`verify`] (parse, checks, signature recovery, nonce) and of [`Sessions::issue`] and
//! [`Sessions::check`], 2,000 of each; p50 and p99.
//!
//! `cargo run --release -p blyan-auth --example auth_bench`

use std::time::{Duration, Instant};

use blyan_auth::{Nonces, Policy, Sessions, verify};
use blyan_primitives::{Signature, SigningKey, address_of};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const RUNS: usize = 2000;

fn percentiles(mut d: Vec<Duration>) -> String {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    format!("p50 {:.1} µs, p99 {:.1} µs", at(0.5), at(0.99))
}

fn main() {
    let policy = Policy::new("node.blyan.test:8420", "https://node.blyan.test:8420", 1);
    let nonces = Nonces::new(Duration::from_secs(300), RUNS + 1);
    let sessions = Sessions::new(&[9; 32], Duration::from_secs(900));
    let user = SigningKey::from_slice(&[7; 32]).expect("key");
    let now = OffsetDateTime::now_utc();
    let stamp = now.format(&Rfc3339).expect("rfc3339");
    let logins: Vec<(String, String)> = (0..RUNS)
        .map(|_| {
            let (nonce, _) = nonces.issue(now);
            let text = format!(
                "node.blyan.test:8420 wants you to sign in with your Ethereum account:\n{}\n\n\
                 Sign in to Blyan.\n\nURI: https://node.blyan.test:8420\nVersion: 1\n\
                 Chain ID: 1\nNonce: {nonce}\nIssued At: {stamp}",
                address_of(&user)
            );
            let sig = Signature::sign(&user, text.as_bytes()).to_string();
            (text, sig)
        })
        .collect();
    let mut verify_times = Vec::with_capacity(RUNS);
    let mut issue_times = Vec::with_capacity(RUNS);
    let mut tokens = Vec::with_capacity(RUNS);
    for (text, sig) in &logins {
        let t = Instant::now();
        let login = verify(&policy, &nonces, text, sig, now).expect("login");
        verify_times.push(t.elapsed());
        let t = Instant::now();
        tokens.push(sessions.issue(login.address, now, login.expires_at).token);
        issue_times.push(t.elapsed());
    }
    let mut check_times = Vec::with_capacity(RUNS);
    for token in &tokens {
        let t = Instant::now();
        sessions.check(token, now).expect("valid");
        check_times.push(t.elapsed());
    }
    println!(
        "SIWE verify (parse, checks, recovery, nonce): {}",
        percentiles(verify_times)
    );
    println!("session issue (EdDSA JWT): {}", percentiles(issue_times));
    println!("session check (EdDSA JWT): {}", percentiles(check_times));
}
