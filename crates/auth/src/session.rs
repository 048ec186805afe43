//! Session tokens: JWTs (EdDSA) signed by the node's key, with the wallet's address as
//! subject, short-lived, refreshable and revocable.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use blyan_primitives::Address;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use time::OffsetDateTime;

/// The claims of a session token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The node that issued it (its key, hex).
    pub iss: String,
    /// The wallet, EIP-55.
    pub sub: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// The token's id, for revocation.
    pub jti: String,
}

/// A token handed to a wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The JWT.
    pub token: String,
    /// Whose it is.
    pub address: Address,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// Why a token was refused; each case has a stable [`SessionError::code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Not a token of this node: malformed, another algorithm or issuer, or a signature that
    /// does not verify (a changed token).
    #[error("not a valid session token of this node")]
    Invalid,
    /// Its time is over.
    #[error("the session token expired: sign in again")]
    Expired,
    /// It was revoked (logged out, or replaced by a refresh).
    #[error("the session token was revoked")]
    Revoked,
}

impl SessionError {
    /// A stable identifier for clients and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Invalid => "invalid_token",
            SessionError::Expired => "expired_token",
            SessionError::Revoked => "revoked_token",
        }
    }
}

/// Issues and checks the session tokens of one node.
pub struct Sessions {
    issuer: String,
    ttl: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Revoked token ids and when each token would have expired anyway (then forgotten).
    revoked: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Whether a bearer credential has the shape of a session token (three base64url parts,
/// the first a JSON header) rather than an API key: which of the two checks it.
pub fn looks_like_session_token(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3 && token.starts_with("eyJ") && token.len() <= 4096
}

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the DER header before the
/// 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl Sessions {
    /// Sessions signed with the Ed25519 key of `seed`, lasting `ttl` each. The issuer is the
    /// key's public half (hex), so that anyone holding it can check a token.
    pub fn new(seed: &[u8; 32], ttl: Duration) -> Sessions {
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = signing.verifying_key().to_bytes();
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        der.extend_from_slice(seed);
        Sessions {
            issuer: hex::encode(public),
            ttl,
            encoding: EncodingKey::from_ed_der(&der),
            decoding: DecodingKey::from_ed_der(&public),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer every token names: the signing key's public half, hex.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token for `address` from `now`, lasting the session length but never past `cap`
    /// (the login message's own expiration, if it had one).
    pub fn issue(
        &self,
        address: Address,
        now: OffsetDateTime,
        cap: Option<OffsetDateTime>,
    ) -> Session {
        let mut expires_at = now + self.ttl;
        if let Some(cap) = cap {
            expires_at = expires_at.min(cap);
        }
        let mut id = [0u8; 16];
        rand::rng().fill(&mut id);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: address.to_string(),
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            jti: hex::encode(id),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding)
            .expect("signing claims with a valid Ed25519 key cannot fail");
        Session {
            token,
            address,
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(expires_at),
        }
    }

    /// The claims of `token` if this node issued it, it has not expired at `now` and it was
    /// not revoked.
    pub fn check(&self, token: &str, now: OffsetDateTime) -> Result<Claims, SessionError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is judged below against `now`, not the system clock.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| SessionError::Invalid)?
            .claims;
        if claims.sub.parse::<Address>().is_err() {
            return Err(SessionError::Invalid);
        }
        if claims.exp <= now.unix_timestamp() {
            return Err(SessionError::Expired);
        }
        if self
            .revoked
            .lock()
            .expect("revocation lock")
            .contains_key(&claims.jti)
        {
            return Err(SessionError::Revoked);
        }
        Ok(claims)
    }

    /// Revokes `token` (a logout) and returns its claims, for the caller to keep the
    /// revocation where it outlives this process; a token that does not check is refused as
    /// it would be by [`Sessions::check`].
    pub fn revoke(&self, token: &str, now: OffsetDateTime) -> Result<Claims, SessionError> {
        let claims = self.check(token, now)?;
        self.mark_revoked(claims.jti.clone(), claims.exp, now);
        Ok(claims)
    }

    /// Refuses the token `jti` from now until `exp` (Unix seconds, when it expires anyway):
    /// how a node restores the revocations it stored before a restart.
    pub fn mark_revoked(&self, jti: String, exp: i64, now: OffsetDateTime) {
        let mut revoked = self.revoked.lock().expect("revocation lock");
        // Expired tokens are refused anyway: their ids need not be kept.
        let t = now.unix_timestamp();
        revoked.retain(|_, e| *e > t);
        if exp > t {
            revoked.insert(jti, exp);
        }
    }

    /// A new token for the holder of `token`, which is revoked (its claims are returned with
    /// the new session): a session lasts as long as it keeps being refreshed in time.
    pub fn refresh(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<(Session, Claims), SessionError> {
        let claims = self.check(token, now)?;
        let address: Address = claims.sub.parse().map_err(|_| SessionError::Invalid)?;
        self.mark_revoked(claims.jti.clone(), claims.exp, now);
        Ok((self.issue(address, now, None), claims))
    }
}
