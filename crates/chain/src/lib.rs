//! Blocks, the cross-chain DAG rules, validation and the crash-safe block store.
//!
//! A block is a header plus a payload; its hash is the SHA-256 of the header's canonical
//! bytes, and the header commits to the payload through `payload_hash`. Blocks enter the
//! store only as [`ValidBlock`]s: a raw [`Block`] is first checked on its own
//! ([`CheckedBlock`]) and then against the store's state.

#![warn(missing_docs)]

pub mod admission;
mod block;
pub mod dag;
mod error;
pub mod genesis;
mod ledger;
mod proof;
pub mod spec;
mod store;
mod validate;
mod verify;

pub use admission::{Admission, Registry, Role};
pub use block::{
    Block, BlockHeader, BlockKind, BlockMeta, ChainId, DEPENDS_ON_MAX, FORMAT_VERSION,
    HEADER_LEN_MAX, NAME_LEN_MAX, PAYLOAD_LEN_MAX, check_signature, sign_hash,
};
pub use error::{BlockError, ChainError};
pub use ledger::{LEDGER_BATCH_POSTINGS_MAX, LEDGER_POSTING_LEN_MAX, LedgerBatch};
pub use proof::{
    Migration, POOL_ITEMS_MAX, PROOF_TEXT_MAX, PolMode, PoolCommit, REVEAL_ITEM_LEN_MAX,
    REVEAL_LEN_MAX, REVEAL_PROOF_MAX, Reveal, RevealedItem, VERDICT_ITEMS_MAX, VERDICT_STAGES_MAX,
    Verdict, submission_digest,
};
pub use store::{BlockSummary, ChainTotals, Payload, Store};
pub use validate::{CheckedBlock, ValidBlock};
pub use verify::{VerifyFailure, VerifyMode, VerifyReport};
