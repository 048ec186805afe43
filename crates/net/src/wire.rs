//! The sync protocol's messages: Borsh, decoded strictly and bounded.
//!
//! Blocks travel as "announce the hash, pull the block": a peer learns of a block by its hash
//! (an [`Msg::Announce`], a peer's [`Msg::Status`] heads, or a [`Msg::Hashes`] page), fetches
//! its header, checks the header's hash and signature, and only then fetches its payload in
//! chunks. Every request carries an id chosen by the asker; a response names it, and a
//! response nobody asked for is dropped.

use blyan_primitives::{Hash, codec};
use borsh::{BorshDeserialize, BorshSerialize};

/// Largest payload slice in one [`Msg::Chunk`].
pub const CHUNK_LEN_MAX: u32 = 1 << 20;
/// Most hashes in one [`Msg::Hashes`] page.
pub const HASHES_MAX: u32 = 1024;
/// Most heads in one [`Msg::Status`] (one per chain, with room for chains to come).
pub const HEADS_MAX: usize = 16;
/// Longest encoded message: a full chunk plus its framing.
pub const MSG_LEN_MAX: usize = CHUNK_LEN_MAX as usize + 4096;

/// The last block of one chain, as a peer has it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, BorshSerialize, BorshDeserialize, serde::Serialize)]
pub struct Head {
    /// The chain, as its `ChainId` byte.
    pub chain: u8,
    /// Height of the last block.
    pub height: u64,
    /// Hash of the last block.
    pub hash: Hash,
}

/// One message of the sync protocol.
#[derive(Clone, PartialEq, Eq, Debug, BorshSerialize, BorshDeserialize)]
pub enum Msg {
    /// The sender's network (its spec block hash) and the head of each of its chains; sent
    /// to a few peers on a timer, so that a lost announcement is repaired.
    Status {
        /// The network's name: the hash of its spec block.
        genesis: Hash,
        /// One head per chain the sender holds.
        heads: Vec<Head>,
    },
    /// The sender stored a new block.
    Announce {
        /// Its hash.
        hash: Hash,
    },
    /// Asks for the hashes of `chain` from height `from` on.
    GetHashes {
        /// Request id.
        id: u64,
        /// The chain, as its `ChainId` byte.
        chain: u8,
        /// First height wanted.
        from: u64,
        /// At most this many, and never more than [`HASHES_MAX`].
        max: u32,
    },
    /// The hashes at heights `from..`, in order (fewer than asked at the head).
    Hashes {
        /// The request's id.
        id: u64,
        /// The hashes.
        hashes: Vec<Hash>,
    },
    /// Asks for a block's header and its author's signature.
    GetHeader {
        /// Request id.
        id: u64,
        /// The block.
        hash: Hash,
    },
    /// A block's canonical header bytes and its 65 signature bytes.
    Header {
        /// The request's id.
        id: u64,
        /// Canonical header bytes.
        header: Vec<u8>,
        /// The author's signature of the block hash.
        signature: Vec<u8>,
    },
    /// Asks for `len` payload bytes of a block from `offset`.
    GetChunk {
        /// Request id.
        id: u64,
        /// The block.
        hash: Hash,
        /// First byte.
        offset: u64,
        /// Bytes wanted, at most [`CHUNK_LEN_MAX`].
        len: u32,
    },
    /// Payload bytes, exactly as many as asked unless the payload ends first.
    Chunk {
        /// The request's id.
        id: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The sender does not hold what request `id` asked for.
    NotFound {
        /// The request's id.
        id: u64,
    },
}

impl Msg {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes one message, refusing oversized input, trailing bytes and over-long lists.
    pub fn decode(bytes: &[u8]) -> Result<Msg, WireError> {
        let msg: Msg =
            codec::decode(bytes, MSG_LEN_MAX).map_err(|e| WireError::Malformed(e.to_string()))?;
        let bounded = match &msg {
            Msg::Status { heads, .. } => heads.len() <= HEADS_MAX,
            Msg::Hashes { hashes, .. } => hashes.len() <= HASHES_MAX as usize,
            Msg::GetChunk { len, .. } => *len <= CHUNK_LEN_MAX,
            Msg::Chunk { bytes, .. } => bytes.len() <= CHUNK_LEN_MAX as usize,
            Msg::Header {
                header, signature, ..
            } => header.len() <= blyan_chain::HEADER_LEN_MAX && signature.len() == 65,
            _ => true,
        };
        if !bounded {
            return Err(WireError::OutOfBounds);
        }
        Ok(msg)
    }

    /// The request id of a response, or `None` for anything else.
    pub fn response_id(&self) -> Option<u64> {
        match self {
            Msg::Hashes { id, .. }
            | Msg::Header { id, .. }
            | Msg::Chunk { id, .. }
            | Msg::NotFound { id } => Some(*id),
            _ => None,
        }
    }
}

/// Why bytes from a peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not the canonical encoding of a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A list or length beyond the protocol's bounds.
    #[error("message outside the protocol's bounds")]
    OutOfBounds,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bounds_are_enforced() {
        let msgs = [
            Msg::Status {
                genesis: Hash([1; 32]),
                heads: vec![Head {
                    chain: 1,
                    height: 7,
                    hash: Hash([2; 32]),
                }],
            },
            Msg::Announce {
                hash: Hash([3; 32]),
            },
            Msg::GetChunk {
                id: 9,
                hash: Hash([4; 32]),
                offset: 5,
                len: CHUNK_LEN_MAX,
            },
            Msg::NotFound { id: 1 },
        ];
        for m in msgs {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
        let too_many = Msg::Hashes {
            id: 1,
            hashes: vec![Hash::ZERO; HASHES_MAX as usize + 1],
        };
        assert_eq!(Msg::decode(&too_many.encode()), Err(WireError::OutOfBounds));
        let big_ask = Msg::GetChunk {
            id: 1,
            hash: Hash::ZERO,
            offset: 0,
            len: CHUNK_LEN_MAX + 1,
        };
        assert_eq!(Msg::decode(&big_ask.encode()), Err(WireError::OutOfBounds));
        let short_sig = Msg::Header {
            id: 1,
            header: vec![0; 10],
            signature: vec![0; 64],
        };
        assert_eq!(
            Msg::decode(&short_sig.encode()),
            Err(WireError::OutOfBounds)
        );
        let mut trailing = Msg::NotFound { id: 1 }.encode();
        trailing.push(0);
        assert!(matches!(
            Msg::decode(&trailing),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(Msg::decode(&[200]), Err(WireError::Malformed(_))));
        assert!(matches!(
            Msg::decode(&vec![0; MSG_LEN_MAX + 1]),
            Err(WireError::Malformed(_))
        ));
    }
}
