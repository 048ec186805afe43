//! The payload of a ledger-chain block: a run of consecutive ledger postings and their
//! Merkle root. The chain checks the structure; the ledger crate gives the postings meaning.

use blyan_primitives::{Hash, codec, merkle};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::Serialize;

use crate::BlockError;

/// Most postings in one batch.
pub const LEDGER_BATCH_POSTINGS_MAX: usize = 65_536;

/// Longest encoded posting in bytes.
pub const LEDGER_POSTING_LEN_MAX: usize = 1024;

/// Postings `first_seq .. first_seq + postings.len()` of the ledger, each in its canonical
/// encoding, committed to by `root`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct LedgerBatch {
    /// Sequence number of the first posting.
    pub first_seq: u64,
    /// The postings' canonical bytes, in sequence order.
    pub postings: Vec<Vec<u8>>,
    /// `merkle_root(postings)`.
    pub root: Hash,
}

impl LedgerBatch {
    /// A batch of `postings` starting at `first_seq`, with its root computed.
    pub fn new(first_seq: u64, postings: Vec<Vec<u8>>) -> LedgerBatch {
        let root = merkle::merkle_root(&postings);
        LedgerBatch {
            first_seq,
            postings,
            root,
        }
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a batch and checks its structure: at least one posting, none too long, no
    /// more than [`LEDGER_BATCH_POSTINGS_MAX`], sequence numbers that fit, and the root.
    pub fn decode(bytes: &[u8]) -> Result<LedgerBatch, BlockError> {
        let malformed = |reason: String| BlockError::MalformedPayload { reason };
        let len_max = 64 + LEDGER_BATCH_POSTINGS_MAX * (4 + LEDGER_POSTING_LEN_MAX);
        let batch: LedgerBatch =
            codec::decode(bytes, len_max).map_err(|e| malformed(e.to_string()))?;
        if batch.postings.is_empty() || batch.postings.len() > LEDGER_BATCH_POSTINGS_MAX {
            return Err(malformed(format!(
                "a ledger batch holds 1 to {LEDGER_BATCH_POSTINGS_MAX} postings, this one {}",
                batch.postings.len()
            )));
        }
        if let Some(p) = batch
            .postings
            .iter()
            .position(|p| p.len() > LEDGER_POSTING_LEN_MAX)
        {
            return Err(malformed(format!(
                "posting {} is longer than {LEDGER_POSTING_LEN_MAX} bytes",
                batch.first_seq.saturating_add(p as u64)
            )));
        }
        if batch
            .first_seq
            .checked_add(batch.postings.len() as u64)
            .is_none()
        {
            return Err(malformed("posting sequence numbers overflow".into()));
        }
        let root = merkle::merkle_root(&batch.postings);
        if root != batch.root {
            return Err(malformed(format!(
                "ledger batch root is {}, its postings give {root}",
                batch.root
            )));
        }
        Ok(batch)
    }

    /// Sequence number after the last posting.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.postings.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let batch = LedgerBatch::new(7, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(LedgerBatch::decode(&batch.encode()), Ok(batch.clone()));
        let mut bad = batch.clone();
        bad.postings[1] = b"c".to_vec();
        assert!(LedgerBatch::decode(&bad.encode()).is_err());
        assert!(LedgerBatch::decode(&LedgerBatch::new(0, vec![]).encode()).is_err());
        let mut overflow = batch;
        overflow.first_seq = u64::MAX;
        assert!(LedgerBatch::decode(&overflow.encode()).is_err());
    }
}
