//! The Sign-In with Ethereum catalog: a good login, and each way a login is refused, with
//! its stable code; a refused login never spends its nonce.

use std::time::Duration;

use blyan_auth::{AuthError, MESSAGE_LEN_MAX, Nonces, Policy, verify};
use blyan_primitives::{Signature, SigningKey, address_of};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const DOMAIN: &str = "node.blyan.test:8420";
const URI: &str = "https://node.blyan.test:8420";
const CHAIN: u64 = 1;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_796_600_000).expect("time")
}

fn key(byte: u8) -> SigningKey {
    SigningKey::from_slice(&[byte; 32]).expect("key")
}

fn stamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("rfc3339")
}

/// The parts of a message a test changes.
struct Draft {
    domain: String,
    uri: String,
    chain: u64,
    nonce: String,
    issued: OffsetDateTime,
    expires: Option<OffsetDateTime>,
    not_before: Option<OffsetDateTime>,
}

impl Draft {
    fn new(nonce: &str) -> Draft {
        Draft {
            domain: DOMAIN.into(),
            uri: URI.into(),
            chain: CHAIN,
            nonce: nonce.into(),
            issued: now(),
            expires: Some(now() + Duration::from_secs(600)),
            not_before: None,
        }
    }

    fn text(&self, signer: &SigningKey) -> String {
        let mut m = format!(
            "{} wants you to sign in with your Ethereum account:\n{}\n\nSign in to Blyan.\n\n\
             URI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
            self.domain,
            address_of(signer),
            self.uri,
            self.chain,
            self.nonce,
            stamp(self.issued)
        );
        if let Some(t) = self.expires {
            m += &format!("\nExpiration Time: {}", stamp(t));
        }
        if let Some(t) = self.not_before {
            m += &format!("\nNot Before: {}", stamp(t));
        }
        m
    }
}

/// One way a test changes a draft.
type Change = Box<dyn Fn(&mut Draft)>;

fn sign(key: &SigningKey, text: &str) -> String {
    Signature::sign(key, text.as_bytes()).to_string()
}

fn setup() -> (Policy, Nonces) {
    (
        Policy::new(DOMAIN, URI, CHAIN),
        Nonces::new(Duration::from_secs(300), 1000),
    )
}

fn code(r: Result<blyan_auth::Login, AuthError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn a_signed_message_for_this_node_logs_the_wallet_in_once() {
    let (policy, nonces) = setup();
    let user = key(7);
    let (nonce, _) = nonces.issue(now());
    let text = Draft::new(&nonce).text(&user);
    let sig = sign(&user, &text);
    let login = verify(&policy, &nonces, &text, &sig, now()).expect("login");
    assert_eq!(login.address, address_of(&user));
    assert_eq!(login.expires_at, Some(now() + Duration::from_secs(600)));
    // The same message again: its nonce is spent.
    assert_eq!(
        code(verify(&policy, &nonces, &text, &sig, now())),
        "used_nonce"
    );
}

#[test]
fn each_refusal_has_its_code_and_leaves_the_nonce_unspent() {
    let (policy, nonces) = setup();
    let user = key(7);
    let (nonce, _) = nonces.issue(now());
    let cases: Vec<(&str, Change)> = vec![
        (
            "wrong_domain",
            Box::new(|d| d.domain = "evil.example".into()),
        ),
        (
            "wrong_uri",
            Box::new(|d| d.uri = "https://evil.example/login".into()),
        ),
        // This node's origin as a mere string prefix (another port).
        ("wrong_uri", Box::new(|d| d.uri = format!("{URI}1/login"))),
        // Not a URI at all.
        (
            "invalid_message",
            Box::new(|d| d.uri = format!("{URI}.evil.example")),
        ),
        ("wrong_chain", Box::new(|d| d.chain = 137)),
        (
            "expired_message",
            Box::new(|d| d.expires = Some(now() - Duration::from_secs(1))),
        ),
        (
            "expired_message",
            Box::new(|d| d.issued = now() - Duration::from_secs(3600)),
        ),
        (
            "not_yet_valid",
            Box::new(|d| d.not_before = Some(now() + Duration::from_secs(3600))),
        ),
        (
            "not_yet_valid",
            Box::new(|d| d.issued = now() + Duration::from_secs(3600)),
        ),
        (
            "unknown_nonce",
            Box::new(|d| d.nonce = "neverIssued123".into()),
        ),
    ];
    for (want, change) in cases {
        let mut draft = Draft::new(&nonce);
        change(&mut draft);
        let text = draft.text(&user);
        let got = code(verify(&policy, &nonces, &text, &sign(&user, &text), now()));
        assert_eq!(got, want, "{text}");
    }
    // Signed by another key than the one the message names.
    let text = Draft::new(&nonce).text(&user);
    let got = code(verify(
        &policy,
        &nonces,
        &text,
        &sign(&key(8), &text),
        now(),
    ));
    assert_eq!(got, "wrong_signer");
    // Changed after signing.
    let signed = sign(&user, &text);
    let changed = text.replace("Sign in to Blyan.", "Send all my BLY away.");
    assert_eq!(
        code(verify(&policy, &nonces, &changed, &signed, now())),
        "wrong_signer"
    );
    // Nothing above spent the nonce: the genuine login still goes through.
    assert_eq!(code(verify(&policy, &nonces, &text, &signed, now())), "ok");
}

#[test]
fn malformed_malleable_and_oversized_input_is_refused() {
    let (policy, nonces) = setup();
    let user = key(7);
    let (nonce, _) = nonces.issue(now());
    let text = Draft::new(&nonce).text(&user);
    let sig = sign(&user, &text);
    let check = |text: &str, sig: &str| code(verify(&policy, &nonces, text, sig, now()));
    // Truncated signature, no 0x, not hex, empty.
    assert_eq!(check(&text, &sig[..sig.len() - 2]), "malformed_signature");
    assert_eq!(check(&text, &sig[2..]), "malformed_signature");
    assert_eq!(
        check(&text, &format!("0x{}", "zz".repeat(65))),
        "malformed_signature"
    );
    assert_eq!(check(&text, ""), "malformed_signature");
    // Bad recovery byte.
    let mut bytes = hex::decode(&sig[2..]).expect("hex");
    bytes[64] = 29;
    assert_eq!(
        check(&text, &format!("0x{}", hex::encode(&bytes))),
        "bad_recovery_byte"
    );
    // The malleable twin: s' = n - s with the other recovery id.
    let bytes = hex::decode(&sig[2..]).expect("hex");
    let ecdsa = k256::ecdsa::Signature::from_slice(&bytes[..64]).expect("ecdsa");
    let (r, s) = ecdsa.split_scalars();
    let high = k256::ecdsa::Signature::from_scalars(r, -*s).expect("high s");
    let mut twin = high.to_bytes().to_vec();
    twin.push(if bytes[64] == 27 { 28 } else { 27 });
    assert_eq!(
        check(&text, &format!("0x{}", hex::encode(&twin))),
        "high_s_signature"
    );
    // Truncated, empty, oversized and non-SIWE messages.
    let cut = &text[..text.find("\nNonce:").expect("nonce line")];
    assert_eq!(check(cut, &sign(&user, cut)), "invalid_message");
    assert_eq!(check("", &sig), "invalid_message");
    let long = format!("{text}\n{}", "x".repeat(MESSAGE_LEN_MAX));
    assert_eq!(check(&long, &sign(&user, &long)), "invalid_message");
    assert_eq!(check("hello", &sig), "invalid_message");
    // None of it spent the nonce.
    assert_eq!(check(&text, &sig), "ok");
}

#[test]
fn an_expired_nonce_is_refused_even_with_a_fresh_message() {
    let (policy, nonces) = setup();
    let user = key(7);
    let (nonce, _) = nonces.issue(now());
    let later = now() + Duration::from_secs(301);
    let mut draft = Draft::new(&nonce);
    draft.issued = later;
    draft.expires = None;
    let text = draft.text(&user);
    let got = code(verify(&policy, &nonces, &text, &sign(&user, &text), later));
    assert_eq!(got, "expired_nonce");
}
