//! Hashes, identifiers, addresses, signatures, amounts of BLY, Merkle roots and the canonical binary encoding shared by every Blyan crate.
//!
//! Nothing here performs I/O; every type is plain data with a canonical byte form.

#![warn(missing_docs)]

mod address;
mod amount;
pub mod codec;
mod expert;
mod hash;
pub mod merkle;
mod signature;

pub use address::{Address, AddressParseError};
pub use amount::{Amount, AmountParseError, NANO_PER_BLY};
pub use expert::{ExpertId, ExpertIdParseError};
pub use hash::{Hash, HashParseError, Hasher, keyed_hash};
/// A secp256k1 secret key, as accounts and nodes sign with it (zeroized when dropped).
pub use k256::ecdsa::SigningKey;
pub use signature::{SIGNATURE_LEN, Signature, SignatureError, address_of, personal_digest};
