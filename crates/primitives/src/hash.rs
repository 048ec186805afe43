//! SHA-256 digests: the identity of every block and payload.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

/// HMAC-SHA-256 under `key` of `domain` then `data`: the keyed hash behind everything a
/// secret decides (which documents are hidden, the salt of each pool item). Without the key
/// its outputs are unpredictable; with it anyone can recompute them.
pub fn keyed_hash(key: &[u8], domain: &[u8], data: &[u8]) -> Hash {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(domain);
    mac.update(data);
    Hash(mac.finalize().into_bytes().into())
}

/// A SHA-256 digest. Displayed and parsed as 64 lowercase hex characters.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash, used as `prev` of a chain's first block.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Length of a digest in bytes.
    pub const LEN: usize = 32;

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(sha2::Sha256::digest(bytes).into())
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is [`Hash::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The first `n` hex characters, for compact human output.
    pub fn short(&self, n: usize) -> String {
        let mut s = self.to_string();
        s.truncate(n);
        s
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short(16))
    }
}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HashParseError {
    /// Not exactly 64 characters.
    #[error("a hash is 64 hex characters, got {0}")]
    Length(usize),
    /// A character outside `0-9a-fA-F`.
    #[error("a hash is hex: {0}")]
    Hex(#[from] hex::FromHexError),
}

impl FromStr for Hash {
    type Err = HashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(HashParseError::Length(s.len()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash(out))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as Deserialize<'de>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256, for payloads that arrive or are read in pieces.
#[derive(Debug, Clone, Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    /// A hasher with no input yet.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Hash {
        Hash(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // FIPS 180-2 test vectors.
        assert_eq!(
            Hash::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Hash::of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Hasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), Hash::of(b"abc"));
    }

    #[test]
    fn keyed_hash_is_hmac_sha256() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?" (here
        // split into domain and data, which HMAC concatenates).
        assert_eq!(
            keyed_hash(b"Jefe", b"what do ya want ", b"for nothing?").to_string(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(keyed_hash(b"k1", b"d", b"x"), keyed_hash(b"k2", b"d", b"x"));
    }

    #[test]
    fn parse_rejects_bad_input() {
        assert_eq!("abc".parse::<Hash>(), Err(HashParseError::Length(3)));
        assert!("zz".repeat(32).parse::<Hash>().is_err());
        let h = Hash::of(b"x");
        assert_eq!(h.to_string().parse::<Hash>(), Ok(h));
        assert_eq!(h.to_string().to_uppercase().parse::<Hash>(), Ok(h));
    }

    #[test]
    fn serde_is_hex_string() {
        let h = Hash::of(b"abc");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{h}\""));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
    }
}
