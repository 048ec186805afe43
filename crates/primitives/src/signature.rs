//! Signatures of accounts: secp256k1 ECDSA over EIP-191 `personal_sign` digests, written in
//! Ethereum's 65-byte `r ‖ s ‖ v` form, so that what an Ethereum wallet signs Blyan can check
//! and what Blyan signs any Ethereum tool can recover.
//!
//! The digest of a message `m` is `keccak256("\x19Ethereum Signed Message:\n" ‖ len(m) ‖ m)`,
//! `len(m)` in decimal ASCII. A block or a submission is signed by signing the 32 bytes of its
//! hash as the message (what `personal_sign` does with a `0x`-prefixed 32-byte hex string and
//! ethers' `signMessage(getBytes(hash))` does). Only the canonical form is accepted: `s` in the
//! lower half of the curve order (the other half would give a second valid signature of the
//! same digest) and `v` 27 or 28.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use k256::ecdsa::{RecoveryId, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Keccak256};

use crate::Address;

/// Bytes of a signature: `r` (32), `s` (32), `v` (1).
pub const SIGNATURE_LEN: usize = 65;

/// A recoverable secp256k1 signature, `r ‖ s ‖ v` with `v` 27 or 28.
#[derive(Clone, Copy, PartialEq, Eq, Hash, BorshSerialize, BorshDeserialize)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

/// Why a signature was refused. Each case has a stable code ([`SignatureError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 65 bytes (or, as text, not `0x` and 130 hex characters).
    #[error("a signature is 65 bytes (r, s, v); got {0}")]
    Length(usize),
    /// Not hex.
    #[error("a signature is written as 0x and 130 hex characters")]
    NotHex,
    /// `v` is not 27 or 28.
    #[error("signature recovery byte v is {0}, not 27 or 28")]
    RecoveryByte(u8),
    /// `s` is in the upper half of the curve order: the malleable twin of a valid signature.
    #[error("signature s is in the upper half of the curve order (malleable form)")]
    HighS,
    /// `r` or `s` is zero or not below the curve order, or no public key recovers from it.
    #[error("signature does not verify")]
    Invalid,
    /// It verifies, but for another address than the one named.
    #[error("signed by {recovered}, not by {expected}")]
    WrongSigner {
        /// The address the message says signed it.
        expected: Address,
        /// The address that did.
        recovered: Address,
    },
}

impl SignatureError {
    /// A stable identifier for clients and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Length(_) | SignatureError::NotHex => "malformed_signature",
            SignatureError::RecoveryByte(_) => "bad_recovery_byte",
            SignatureError::HighS => "high_s_signature",
            SignatureError::Invalid => "invalid_signature",
            SignatureError::WrongSigner { .. } => "wrong_signer",
        }
    }
}

/// The EIP-191 (version `0x45`, `personal_sign`) digest of `message`.
pub fn personal_digest(message: &[u8]) -> [u8; 32] {
    let mut h = Keccak256::new();
    h.update(b"\x19Ethereum Signed Message:\n");
    h.update(message.len().to_string().as_bytes());
    h.update(message);
    h.finalize().into()
}

/// The address of a secret key: Keccak-256 of its uncompressed public key, last 20 bytes.
pub fn address_of(key: &SigningKey) -> Address {
    let point = key.verifying_key().to_encoded_point(false);
    let mut xy = [0u8; 64];
    // An uncompressed SEC1 point is the tag 0x04 then x and y.
    xy.copy_from_slice(&point.as_bytes()[1..]);
    Address::from_public_key(&xy)
}

impl Signature {
    /// Signs `message` as `personal_sign` does (deterministic nonce, RFC 6979; low `s`).
    pub fn sign(key: &SigningKey, message: &[u8]) -> Signature {
        let digest = personal_digest(message);
        let (sig, recovery) = match key.sign_prehash_recoverable(&digest) {
            Ok(signed) => signed,
            // A 32-byte prehash is always accepted; the nonce search cannot fail for it.
            Err(e) => unreachable!("signing a 32-byte digest failed: {e}"),
        };
        // k256 returns low-s signatures, but say so rather than rely on it.
        let (sig, recovery) = match sig.normalize_s() {
            Some(low) => (
                low,
                RecoveryId::new(!recovery.is_y_odd(), recovery.is_x_reduced()),
            ),
            None => (sig, recovery),
        };
        let mut out = [0u8; SIGNATURE_LEN];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = 27 + recovery.to_byte();
        Signature(out)
    }

    /// The 65 bytes as a signature, refused unless exactly 65.
    pub fn from_slice(bytes: &[u8]) -> Result<Signature, SignatureError> {
        let array: [u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| SignatureError::Length(bytes.len()))?;
        Ok(Signature(array))
    }

    /// The address whose key signed `message`, checked to be canonical.
    pub fn recover(&self, message: &[u8]) -> Result<Address, SignatureError> {
        let v = self.0[64];
        let recovery = match v {
            27 | 28 => RecoveryId::from_byte(v - 27).ok_or(SignatureError::RecoveryByte(v))?,
            _ => return Err(SignatureError::RecoveryByte(v)),
        };
        let sig = EcdsaSignature::from_slice(&self.0[..64]).map_err(|_| SignatureError::Invalid)?;
        if sig.normalize_s().is_some() {
            return Err(SignatureError::HighS);
        }
        let key = VerifyingKey::recover_from_prehash(&personal_digest(message), &sig, recovery)
            .map_err(|_| SignatureError::Invalid)?;
        let point = key.to_encoded_point(false);
        let mut xy = [0u8; 64];
        xy.copy_from_slice(&point.as_bytes()[1..]);
        Ok(Address::from_public_key(&xy))
    }

    /// Checks that `expected` signed `message`.
    pub fn verify(&self, message: &[u8], expected: &Address) -> Result<(), SignatureError> {
        let recovered = self.recover(message)?;
        if recovered == *expected {
            Ok(())
        } else {
            Err(SignatureError::WrongSigner {
                expected: *expected,
                recovered,
            })
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    /// `0x` then 130 hex characters (either case).
    fn from_str(s: &str) -> Result<Signature, SignatureError> {
        let digits = s.strip_prefix("0x").unwrap_or(s);
        if digits.len() != 2 * SIGNATURE_LEN {
            return Err(SignatureError::Length(digits.len() / 2));
        }
        let bytes = hex::decode(digits).map_err(|_| SignatureError::NotHex)?;
        Signature::from_slice(&bytes)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Signature, D::Error> {
        let s = <String as Deserialize>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex_secret: &str) -> SigningKey {
        SigningKey::from_slice(&hex::decode(hex_secret).unwrap()).unwrap()
    }

    /// The secp256k1 group order n.
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48, 0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36,
        0x41, 0x41,
    ];

    /// `n − s`, big-endian.
    fn negate(s: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(ORDER[i]) - i16::from(s[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            out[i] = d as u8;
        }
        out
    }

    /// web3.js's documented `accounts.sign("Some data", key)` example: the EIP-191 digest,
    /// the 65-byte signature and the key's address, as any Ethereum tool computes them.
    #[test]
    fn ethereum_personal_sign_vector() {
        let k = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        assert_eq!(
            address_of(&k).to_checksum(),
            "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
        );
        assert_eq!(
            hex::encode(personal_digest(b"Some data")),
            "1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655"
        );
        let sig = Signature::sign(&k, b"Some data");
        assert_eq!(
            sig.to_string(),
            "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd\
             6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c"
        );
    }

    #[test]
    fn a_signature_recovers_its_signer() {
        let k = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        let sig = Signature::sign(&k, b"Some data");
        assert_eq!(sig.recover(b"Some data").unwrap(), address_of(&k));
        sig.verify(b"Some data", &address_of(&k)).unwrap();
        // The same key and message give the same bytes (RFC 6979).
        assert_eq!(Signature::sign(&k, b"Some data"), sig);
        assert!(matches!(sig.0[64], 27 | 28));
    }

    #[test]
    fn a_signature_from_another_key_is_the_wrong_signer() {
        let a = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        let b = key("0000000000000000000000000000000000000000000000000000000000000001");
        let sig = Signature::sign(&b, b"block");
        let err = sig.verify(b"block", &address_of(&a)).unwrap_err();
        assert_eq!(err.code(), "wrong_signer");
    }

    #[test]
    fn a_signature_of_another_message_names_another_signer() {
        let k = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        let sig = Signature::sign(&k, b"block 1");
        // Replayed on another message it recovers some other address (or none).
        match sig.verify(b"block 2", &address_of(&k)) {
            Err(SignatureError::WrongSigner { .. } | SignatureError::Invalid) => {}
            other => panic!("replay accepted: {other:?}"),
        }
    }

    #[test]
    fn the_high_s_twin_of_a_valid_signature_is_refused() {
        let k = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        let sig = Signature::sign(&k, b"block");
        // (r, n − s) with the other parity verifies mathematically; it must be refused.
        let mut twin = sig.0;
        twin[32..64].copy_from_slice(&negate(&sig.0[32..64]));
        twin[64] = if sig.0[64] == 27 { 28 } else { 27 };
        let err = Signature(twin).recover(b"block").unwrap_err();
        assert_eq!(err, SignatureError::HighS);
        assert_eq!(err.code(), "high_s_signature");
    }

    #[test]
    fn malformed_signatures_are_refused_with_their_codes() {
        let k = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        let sig = Signature::sign(&k, b"block");
        assert_eq!(
            Signature::from_slice(&sig.0[..64]).unwrap_err(),
            SignatureError::Length(64)
        );
        let text = sig.to_string();
        assert_eq!(text.parse::<Signature>().unwrap(), sig);
        assert_eq!(
            text[..text.len() - 2]
                .parse::<Signature>()
                .unwrap_err()
                .code(),
            "malformed_signature"
        );
        assert_eq!(
            format!("0x{}", "zz".repeat(65))
                .parse::<Signature>()
                .unwrap_err(),
            SignatureError::NotHex
        );
        for v in [0u8, 1, 29, 255] {
            let mut bad = sig.0;
            bad[64] = v;
            assert_eq!(
                Signature(bad).recover(b"block").unwrap_err(),
                SignatureError::RecoveryByte(v)
            );
        }
        let mut zero = sig.0;
        zero[..32].fill(0);
        assert_eq!(
            Signature(zero).recover(b"block").unwrap_err(),
            SignatureError::Invalid
        );
        let mut over = sig.0;
        over[32..64].copy_from_slice(&ORDER);
        assert_eq!(
            Signature(over).recover(b"block").unwrap_err(),
            SignatureError::Invalid
        );
    }

    #[test]
    fn serde_writes_the_hex_form() {
        let k = key("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318");
        let sig = Signature::sign(&k, b"x");
        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(json, format!("\"{sig}\""));
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
    }
}
