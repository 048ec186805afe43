//! Hashes, identifiers, addresses and the canonical binary encoding shared by every Blyan crate.
//!
//! Nothing here performs I/O; every type is plain data with a canonical byte form.

#![warn(missing_docs)]

mod address;
pub mod codec;
mod expert;
mod hash;

pub use address::{Address, AddressParseError};
pub use expert::{ExpertId, ExpertIdParseError};
pub use hash::{Hash, HashParseError, Hasher};
