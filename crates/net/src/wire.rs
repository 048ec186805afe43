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

/// The Borsh variant index of [`Msg::Chunk`].
const CHUNK_TAG: u8 = 7;
/// Bytes of a [`Msg::Chunk`] before its payload bytes: tag, id, length.
const CHUNK_HEAD: usize = 1 + 8 + 4;

impl Msg {
    /// The canonical bytes, written into a buffer of the right size at once (a chunk is
    /// copied once, not grown into).
    pub fn encode(&self) -> Vec<u8> {
        let hint = match self {
            Msg::Chunk { bytes, .. } => CHUNK_HEAD + bytes.len(),
            Msg::Header {
                header, signature, ..
            } => 1 + 8 + 4 + header.len() + 4 + signature.len(),
            _ => 64,
        };
        let mut out = Vec::with_capacity(hint);
        borsh::to_writer(&mut out, self).expect("encoding into memory is infallible");
        out
    }

    /// [`Msg::decode`] of a buffer the caller gives up: a chunk keeps the buffer for its
    /// bytes instead of copying them out of it. Same result as [`Msg::decode`] for any input.
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Msg, WireError> {
        if bytes.len() >= CHUNK_HEAD && bytes.len() <= MSG_LEN_MAX && bytes[0] == CHUNK_TAG {
            let id = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(bytes[9..CHUNK_HEAD].try_into().expect("4 bytes"));
            if len as usize == bytes.len() - CHUNK_HEAD {
                if len > CHUNK_LEN_MAX {
                    return Err(WireError::OutOfBounds);
                }
                bytes.drain(..CHUNK_HEAD);
                return Ok(Msg::Chunk { id, bytes });
            }
        }
        Msg::decode(&bytes)
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
    fn an_owned_decode_gives_what_a_borrowed_one_does() {
        let chunk = Msg::Chunk {
            id: 0x0102_0304_0506_0708,
            bytes: (0..5000u32).map(|i| (i * 7) as u8).collect(),
        };
        let encoded = chunk.encode();
        assert_eq!(encoded, codec::encode(&chunk), "encode is canonical Borsh");
        assert_eq!(Msg::decode_owned(encoded.clone()), Ok(chunk.clone()));
        let empty = Msg::Chunk {
            id: 1,
            bytes: Vec::new(),
        };
        assert_eq!(Msg::decode_owned(empty.encode()), Ok(empty));
        // Damaged chunks: a length that disagrees with the bytes, a byte short, one extra.
        let mut cases = vec![encoded[..encoded.len() - 1].to_vec(), {
            let mut e = encoded.clone();
            e.push(0);
            e
        }];
        let mut wrong_len = encoded.clone();
        wrong_len[9] ^= 1;
        cases.push(wrong_len);
        cases.push(vec![CHUNK_TAG]);
        cases.push(vec![CHUNK_TAG; CHUNK_HEAD]);
        // Every other message, and bytes at random.
        cases.push(Msg::NotFound { id: 5 }.encode());
        cases.push(
            Msg::Header {
                id: 2,
                header: vec![1; 40],
                signature: vec![2; 65],
            }
            .encode(),
        );
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..300 {
            let mut b = Vec::with_capacity(n);
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.push(seed as u8);
            }
            if n % 3 == 0 && !b.is_empty() {
                b[0] = CHUNK_TAG;
            }
            cases.push(b);
        }
        for c in cases {
            assert_eq!(
                Msg::decode_owned(c.clone()),
                Msg::decode(&c),
                "{:?}",
                &c[..c.len().min(16)]
            );
        }
    }

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
        let too_big = Msg::Chunk {
            id: 3,
            bytes: vec![7; CHUNK_LEN_MAX as usize + 1],
        };
        assert_eq!(Msg::decode(&too_big.encode()), Err(WireError::OutOfBounds));
        assert_eq!(
            Msg::decode_owned(too_big.encode()),
            Err(WireError::OutOfBounds)
        );
        assert!(matches!(
            Msg::decode(&vec![0; MSG_LEN_MAX + 1]),
            Err(WireError::Malformed(_))
        ));
    }
}
