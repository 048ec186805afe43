//! Account addresses: 20 bytes, Ethereum style, written with the EIP-55 mixed-case checksum.

use std::fmt;
use std::str::FromStr;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha3::{Digest, Keccak256};

/// A 20-byte account address, written `0x` and 40 hex characters in EIP-55 checksum case.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// The zero address: the author of genesis blocks.
    pub const ZERO: Address = Address([0; 20]);

    /// The address of a secp256k1 public key given as its 64-byte uncompressed `x || y`
    /// (without the `0x04` tag): the last 20 bytes of its Keccak-256, as in Ethereum.
    pub fn from_public_key(xy: &[u8; 64]) -> Address {
        let digest = Keccak256::digest(xy);
        let mut out = [0u8; 20];
        out.copy_from_slice(&digest[12..]);
        Address(out)
    }

    /// The 40 lowercase hex characters without `0x`, the form stored in databases.
    pub fn to_hex_lower(&self) -> String {
        hex::encode(self.0)
    }

    /// The EIP-55 checksummed form, `0x` included.
    pub fn to_checksum(&self) -> String {
        let lower = hex::encode(self.0);
        let digest = Keccak256::digest(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (digest[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

/// Why a string is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressParseError {
    /// Not `0x` and 40 hex characters.
    #[error("an address is 0x followed by 40 hex characters, got {0:?}")]
    Malformed(String),
    /// Mixed case that is not the EIP-55 checksum: a typo somewhere.
    #[error("address {0:?} has a bad EIP-55 checksum (mixed case must match the checksum)")]
    BadChecksum(String),
}

impl FromStr for Address {
    type Err = AddressParseError;

    /// Accepts all-lowercase and all-uppercase hex as given, and mixed case only when it is
    /// exactly the EIP-55 checksum of the address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || AddressParseError::Malformed(s.chars().take(64).collect());
        let body = s.strip_prefix("0x").ok_or_else(malformed)?;
        if body.len() != 40 {
            return Err(malformed());
        }
        let mut out = [0u8; 20];
        hex::decode_to_slice(body, &mut out).map_err(|_| malformed())?;
        let address = Address(out);
        let has_lower = body.bytes().any(|b| b.is_ascii_lowercase());
        let has_upper = body.bytes().any(|b| b.is_ascii_uppercase());
        if has_lower && has_upper && address.to_checksum()[2..] != *body {
            return Err(AddressParseError::BadChecksum(s.to_owned()));
        }
        Ok(address)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as Deserialize<'de>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a = Address([0xab; 20]);
        assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        assert!("ab".repeat(20).parse::<Address>().is_err());
        assert!("0x1234".parse::<Address>().is_err());
        assert!(format!("0x{}", "ab".repeat(21)).parse::<Address>().is_err());
    }

    /// Test vectors from the EIP-55 specification.
    #[test]
    fn eip55_vectors() {
        for s in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            let a: Address = s.parse().expect("vector parses");
            assert_eq!(a.to_string(), s);
            assert_eq!(s.to_lowercase().parse::<Address>(), Ok(a));
            assert_eq!(
                format!("0x{}", s[2..].to_uppercase()).parse::<Address>(),
                Ok(a)
            );
        }
    }

    #[test]
    fn wrong_checksum_is_refused() {
        let bad = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert!(matches!(
            bad.parse::<Address>(),
            Err(AddressParseError::BadChecksum(_))
        ));
    }

    /// Ethereum's address of the secp256k1 key whose secret is 1: the generator point.
    #[test]
    fn address_of_generator_key() {
        let xy = hex::decode(
            "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
             483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
        )
        .expect("hex");
        let xy: [u8; 64] = xy.try_into().expect("64 bytes");
        assert_eq!(
            Address::from_public_key(&xy).to_string(),
            "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
        );
    }
}
