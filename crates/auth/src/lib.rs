//! Wallet login for a Blyan node: Sign-In with Ethereum (EIP-4361).
//!
//! A client asks the node for a nonce ([`Nonces::issue`]), has the wallet sign an EIP-4361
//! message naming this node's domain and URI, the configured chain and that nonce (EIP-191
//! `personal_sign`), and sends the text and the signature back. [`verify`] checks the message
//! against the node's [`Policy`] and its time fields, recovers the signer from the exact text
//! that was signed, requires it to be the address the message names, and only then spends the
//! nonce, which can never be spent again. Every refusal is an [`AuthError`] with a stable code.
//!
//! A login becomes a [`Session`]: a JWT (EdDSA, signed by the node's Ed25519 key, the
//! wallet's address as subject) that expires, can be refreshed and can be revoked.
//!
//! The message format is parsed by the `siwe` crate; the signature is recovered by Blyan's own
//! account signatures ([`blyan_primitives::Signature`], k256), which refuse the malleable
//! high-`s` form.

mod login;
mod nonce;
mod session;

pub use login::{AuthError, Login, MESSAGE_LEN_MAX, Policy, verify};
pub use nonce::{NONCE_LEN, Nonces};
pub use session::{Claims, Session, SessionError, Sessions, looks_like_session_token};
