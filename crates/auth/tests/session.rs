//! Session tokens: a good token checks; an expired, changed, foreign or revoked one is
//! refused with its code; a refresh replaces a token and revokes the old one.

use std::time::Duration;

use blyan_auth::{SessionError, Sessions};
use blyan_primitives::Address;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_796_600_000).expect("time")
}

fn wallet() -> Address {
    "0x4a62316623ad457F02cDC5D997deD67a383EC569"
        .parse()
        .expect("address")
}

fn code(r: Result<blyan_auth::Claims, SessionError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn a_token_names_its_wallet_until_it_expires() {
    let sessions = Sessions::new(&[3; 32], Duration::from_secs(900));
    let s = sessions.issue(wallet(), now(), None);
    assert_eq!(s.address, wallet());
    assert_eq!(s.expires_at, now() + Duration::from_secs(900));
    let claims = sessions.check(&s.token, now()).expect("valid");
    assert_eq!(claims.sub, wallet().to_string());
    assert_eq!(claims.iss, sessions.issuer());
    let just_before = now() + Duration::from_secs(899);
    assert_eq!(code(sessions.check(&s.token, just_before)), "ok");
    let at_expiry = now() + Duration::from_secs(900);
    assert_eq!(code(sessions.check(&s.token, at_expiry)), "expired_token");
    // A login message that expires sooner caps the session.
    let capped = sessions.issue(wallet(), now(), Some(now() + Duration::from_secs(60)));
    assert_eq!(capped.expires_at, now() + Duration::from_secs(60));
    let later = now() + Duration::from_secs(61);
    assert_eq!(code(sessions.check(&capped.token, later)), "expired_token");
}

#[test]
fn changed_foreign_and_malformed_tokens_are_refused() {
    let sessions = Sessions::new(&[3; 32], Duration::from_secs(900));
    let token = sessions.issue(wallet(), now(), None).token;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    // Each part changed by one character.
    for part in 0..3 {
        let mut changed: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        let p = &mut changed[part];
        let last = p.pop().expect("non-empty");
        p.push(if last == 'A' { 'B' } else { 'A' });
        let got = code(sessions.check(&changed.join("."), now()));
        assert_eq!(got, "invalid_token", "part {part} changed");
    }
    // Another node's token for the same wallet.
    let other = Sessions::new(&[4; 32], Duration::from_secs(900));
    let foreign = other.issue(wallet(), now(), None).token;
    assert_eq!(code(sessions.check(&foreign, now())), "invalid_token");
    // An unsigned token claiming the same thing.
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    assert_eq!(code(sessions.check(&unsigned, now())), "invalid_token");
    for junk in ["", "x", "a.b.c", &"A".repeat(10_000)] {
        assert_eq!(
            code(sessions.check(junk, now())),
            "invalid_token",
            "{junk:.20}"
        );
    }
}

#[test]
fn logout_revokes_and_refresh_replaces() {
    let sessions = Sessions::new(&[3; 32], Duration::from_secs(900));
    let first = sessions.issue(wallet(), now(), None).token;
    let second = sessions.issue(wallet(), now(), None).token;
    sessions.revoke(&first, now()).expect("logout");
    assert_eq!(code(sessions.check(&first, now())), "revoked_token");
    assert_eq!(
        sessions.revoke(&first, now()).map_err(|e| e.code()),
        Err("revoked_token")
    );
    // Other sessions of the same wallet are untouched.
    assert_eq!(code(sessions.check(&second, now())), "ok");
    let later = now() + Duration::from_secs(600);
    let (renewed, old) = sessions.refresh(&second, later).expect("refresh");
    assert_eq!(
        sessions.check(&renewed.token, later).map(|c| c.sub),
        Ok(old.sub)
    );
    assert_eq!(renewed.expires_at, later + Duration::from_secs(900));
    assert_eq!(code(sessions.check(&second, later)), "revoked_token");
    assert_eq!(code(sessions.check(&renewed.token, later)), "ok");
    // A refresh after expiry is refused: sign in again.
    let gone = later + Duration::from_secs(900);
    assert_eq!(
        sessions
            .refresh(&renewed.token, gone)
            .map(|_| ())
            .map_err(|e| e.code()),
        Err("expired_token")
    );
    // A revocation restored from storage (a restart: a fresh `Sessions` with the same key)
    // refuses the token again; one whose token already expired is not kept.
    let restarted = Sessions::new(&[3; 32], Duration::from_secs(900));
    assert_eq!(code(restarted.check(&renewed.token, later)), "ok");
    let claims = restarted.check(&renewed.token, later).expect("claims");
    restarted.mark_revoked(claims.jti, claims.exp, later);
    assert_eq!(
        code(restarted.check(&renewed.token, later)),
        "revoked_token"
    );
}
