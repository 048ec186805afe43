//! Checking a Sign-In with Ethereum message and its signature.

use std::time::Duration;

use blyan_primitives::{Address, Signature, SignatureError};
use time::OffsetDateTime;

use crate::Nonces;

/// Longest message accepted, in bytes (a typical one is about 400).
pub const MESSAGE_LEN_MAX: usize = 4096;

/// What a login message must say to be accepted by this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The domain the wallet showed the user: this node's public `host[:port]`.
    pub domain: String,
    /// This node's origin (`scheme://host[:port]`); the message's URI must be it or a path
    /// under it.
    pub uri: String,
    /// The chain the wallet must name (EIP-155 id).
    pub chain_id: u64,
    /// How old an `Issued At` may be.
    pub max_age: Duration,
    /// How far ahead of this node's clock `Issued At` and `Not Before` may be.
    pub max_skew: Duration,
}

impl Policy {
    /// A policy for a node at `domain` and `uri` on chain `chain_id`, accepting messages
    /// issued up to 10 minutes ago and clocks up to a minute ahead.
    pub fn new(domain: impl Into<String>, uri: impl Into<String>, chain_id: u64) -> Policy {
        Policy {
            domain: domain.into(),
            uri: uri.into(),
            chain_id,
            max_age: Duration::from_secs(600),
            max_skew: Duration::from_secs(60),
        }
    }
}

/// A successful login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// The wallet that signed in.
    pub address: Address,
    /// The message's `Expiration Time`, if it has one: a session must not outlive it.
    pub expires_at: Option<OffsetDateTime>,
}

/// Why a login was refused; each case has a stable [`AuthError::code`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The text is not an EIP-4361 message (or is longer than [`MESSAGE_LEN_MAX`]).
    #[error("not a Sign-In with Ethereum message: {0}")]
    InvalidMessage(String),
    /// The signature is malformed, malleable (high `s`) or recovers no key.
    #[error("{0}")]
    Signature(SignatureError),
    /// The signature is valid but not by the address the message names.
    #[error("the message names {named} but was signed by {signer}")]
    WrongSigner {
        /// The message's address.
        named: Address,
        /// The address that signed it.
        signer: Address,
    },
    /// The message is for another domain.
    #[error("the message is for domain {got}, this node is {expected}")]
    WrongDomain {
        /// This node's domain.
        expected: String,
        /// The message's.
        got: String,
    },
    /// The message's URI is not this node's.
    #[error("the message's URI {got} is not under {expected}")]
    WrongUri {
        /// This node's origin.
        expected: String,
        /// The message's URI.
        got: String,
    },
    /// The message names another chain.
    #[error("the message is for chain {got}, this node accepts chain {expected}")]
    WrongChain {
        /// The configured chain id.
        expected: u64,
        /// The message's.
        got: u64,
    },
    /// `Expiration Time` has passed, or `Issued At` is older than the policy allows.
    #[error("the message expired")]
    ExpiredMessage,
    /// `Not Before` is still ahead, or `Issued At` is further ahead than clock skew explains.
    #[error("the message is not valid yet")]
    NotYetValid,
    /// This node never issued the nonce (or no longer remembers it).
    #[error("unknown nonce: ask GET /auth/nonce for one")]
    UnknownNonce,
    /// The nonce was spent by an earlier login.
    #[error("the nonce was already used")]
    UsedNonce,
    /// The nonce's time ran out.
    #[error("the nonce expired: ask GET /auth/nonce for a new one")]
    ExpiredNonce,
}

impl AuthError {
    /// A stable identifier for clients and logs.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidMessage(_) => "invalid_message",
            AuthError::Signature(e) => e.code(),
            AuthError::WrongSigner { .. } => "wrong_signer",
            AuthError::WrongDomain { .. } => "wrong_domain",
            AuthError::WrongUri { .. } => "wrong_uri",
            AuthError::WrongChain { .. } => "wrong_chain",
            AuthError::ExpiredMessage => "expired_message",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::UnknownNonce => "unknown_nonce",
            AuthError::UsedNonce => "used_nonce",
            AuthError::ExpiredNonce => "expired_nonce",
        }
    }
}

/// Checks `message` (EIP-4361 text, exactly as signed) and `signature` (`0x` and 130 hex
/// characters) against `policy` at `now`, and spends the message's nonce from `nonces`.
///
/// The checks run from the cheapest to the nonce, which is spent last: a message that fails
/// anything else leaves its nonce usable, and only a correctly signed login for this node can
/// spend one.
pub fn verify(
    policy: &Policy,
    nonces: &Nonces,
    message: &str,
    signature: &str,
    now: OffsetDateTime,
) -> Result<Login, AuthError> {
    if message.len() > MESSAGE_LEN_MAX {
        return Err(AuthError::InvalidMessage(format!(
            "{} bytes, at most {MESSAGE_LEN_MAX}",
            message.len()
        )));
    }
    let parsed: siwe::Message = message
        .parse()
        .map_err(|e: siwe::ParseError| AuthError::InvalidMessage(e.to_string()))?;
    let signature = parse_signature(signature)?;
    let domain = parsed.domain.as_str();
    if !domain.eq_ignore_ascii_case(&policy.domain) {
        return Err(AuthError::WrongDomain {
            expected: policy.domain.clone(),
            got: domain.to_owned(),
        });
    }
    let uri = parsed.uri.as_str();
    let origin = policy.uri.trim_end_matches('/');
    let under = uri
        .strip_prefix(origin)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if !under {
        return Err(AuthError::WrongUri {
            expected: policy.uri.clone(),
            got: uri.to_owned(),
        });
    }
    if parsed.chain_id != policy.chain_id {
        return Err(AuthError::WrongChain {
            expected: policy.chain_id,
            got: parsed.chain_id,
        });
    }
    let issued = *parsed.issued_at.as_ref();
    if issued > now + policy.max_skew {
        return Err(AuthError::NotYetValid);
    }
    if issued + policy.max_age < now {
        return Err(AuthError::ExpiredMessage);
    }
    let expires_at = parsed.expiration_time.as_ref().map(|t| *t.as_ref());
    if expires_at.is_some_and(|t| t <= now) {
        return Err(AuthError::ExpiredMessage);
    }
    if parsed
        .not_before
        .as_ref()
        .is_some_and(|t| *t.as_ref() > now + policy.max_skew)
    {
        return Err(AuthError::NotYetValid);
    }
    // The signer is recovered from the exact text the wallet signed, not a re-rendering.
    let signer = signature
        .recover(message.as_bytes())
        .map_err(AuthError::Signature)?;
    let named = Address(parsed.address);
    if signer != named {
        return Err(AuthError::WrongSigner { named, signer });
    }
    nonces.spend(&parsed.nonce, now)?;
    Ok(Login {
        address: named,
        expires_at,
    })
}

/// `0x` and 130 hex characters as a signature.
fn parse_signature(text: &str) -> Result<Signature, AuthError> {
    let not_hex = AuthError::Signature(SignatureError::NotHex);
    let hex_part = text.strip_prefix("0x").ok_or(not_hex.clone())?;
    let bytes = hex::decode(hex_part).map_err(|_| not_hex)?;
    Signature::from_slice(&bytes).map_err(AuthError::Signature)
}
