//! Errors: [`BlockError`] when a block is invalid, [`ChainError`] when the store fails.

use blyan_primitives::{Address, Hash, SignatureError};
use blyan_tensor::TensorError;

use crate::{BlockKind, ChainId};

/// Why a block is invalid. Each variant has a stable [`code`](BlockError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The encoded header is longer than allowed.
    #[error("header is {len} bytes, at most {max} allowed")]
    HeaderTooLarge {
        /// Bytes given.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The header bytes do not decode.
    #[error("malformed header: {reason}")]
    MalformedHeader {
        /// What the decoder said.
        reason: String,
    },
    /// A header layout version this node does not know.
    #[error("header version {version} is not supported")]
    UnsupportedVersion {
        /// Version given.
        version: u16,
    },
    /// The payload is longer than allowed.
    #[error("payload is {len} bytes, at most {max} allowed")]
    PayloadTooLarge {
        /// Bytes given (or claimed by the header).
        len: u64,
        /// Bytes allowed.
        max: u64,
    },
    /// The payload length differs from the header's `payload_len`.
    #[error("payload is {actual} bytes, header says {expected}")]
    PayloadLenMismatch {
        /// Header's claim.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The payload's SHA-256 differs from the header's `payload_hash`.
    #[error("payload hash is {actual}, header says {expected}")]
    PayloadHashMismatch {
        /// Header's claim.
        expected: Hash,
        /// Hash of the bytes present.
        actual: Hash,
    },
    /// More entries in `depends_on` than allowed.
    #[error("{count} parents in depends_on, at most {max} allowed")]
    TooManyParents {
        /// Parents given.
        count: usize,
        /// Parents allowed.
        max: usize,
    },
    /// The same hash twice in `depends_on`.
    #[error("parent {parent} is listed twice in depends_on")]
    DuplicateParent {
        /// Repeated parent.
        parent: Hash,
    },
    /// A parent in `depends_on` or `prev` is not in the store.
    #[error("parent {parent} is not in the store")]
    UnknownParent {
        /// Missing parent.
        parent: Hash,
    },
    /// The dependencies loop back on themselves.
    #[error("block {block} is part of a dependency cycle")]
    Cycle {
        /// A block on the cycle.
        block: Hash,
    },
    /// `height` is not the next height of the chain.
    #[error("height {actual} on chain {chain}, expected {expected}")]
    WrongHeight {
        /// Chain extended.
        chain: ChainId,
        /// Next height of that chain.
        expected: u64,
        /// Height given.
        actual: u64,
    },
    /// `prev` is not the current head of the chain.
    #[error("prev {actual} on chain {chain}, expected head {expected}")]
    WrongPrev {
        /// Chain extended.
        chain: ChainId,
        /// Current head (zero for an empty chain).
        expected: Hash,
        /// `prev` given.
        actual: Hash,
    },
    /// A kind that does not belong on the chain.
    #[error("a {kind} block cannot be on chain {chain}")]
    WrongChain {
        /// Kind given.
        kind: BlockKind,
        /// Chain given.
        chain: ChainId,
    },
    /// The timestamp is earlier than the previous block's.
    #[error("timestamp {actual} ms is before the previous block's {prev} ms")]
    TimestampBeforePrev {
        /// Previous block's timestamp.
        prev: u64,
        /// Timestamp given.
        actual: u64,
    },
    /// A parameter or chain-genesis block that does not depend on a spec block.
    #[error("block does not depend on a spec block of the meta chain")]
    MissingSpec,
    /// A parameter block depends on more than one spec block.
    #[error("block depends on more than one spec block")]
    AmbiguousSpec,
    /// A block only the network's operator may sign (an admission) by someone else.
    #[error("only the network's operator {operator} may sign this block, not {author}")]
    NotOperator {
        /// The block's author.
        author: Address,
        /// The author of the spec block it depends on.
        operator: Address,
    },
    /// A new version of a tensor group that does not depend on an existing version.
    #[error("{name} already has versions; a new one must depend on one of them")]
    MissingParentVersion {
        /// Tensor group.
        name: String,
    },
    /// A block name that is empty, too long, or not a tensor group of the spec.
    #[error("{name:?} is not a tensor group of the model spec")]
    UnknownGroup {
        /// Name given.
        name: String,
    },
    /// Metadata, shapes or dtypes that disagree with the model spec.
    #[error("{name}: {detail}")]
    SpecMismatch {
        /// Tensor group or tensor.
        name: String,
        /// What differs.
        detail: String,
    },
    /// The spec payload is unreadable or inconsistent.
    #[error("invalid model spec: {detail}")]
    InvalidSpec {
        /// What is wrong.
        detail: String,
    },
    /// The header's tensor list differs from the payload's.
    #[error("header lists tensors {header}, payload holds {payload}")]
    TensorListMismatch {
        /// Header's descriptors, rendered.
        header: String,
        /// Payload's descriptors, rendered.
        payload: String,
    },
    /// A NaN or infinity among the weights.
    #[error("tensor {tensor}: element {index} is NaN or infinite")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Flat index of the first bad element.
        index: usize,
    },
    /// The payload is not a valid tensor file.
    #[error("bad tensor payload: {0}")]
    Tensor(TensorError),
    /// The payload of a non-tensor block does not decode.
    #[error("malformed payload: {reason}")]
    MalformedPayload {
        /// What the decoder said.
        reason: String,
    },
    /// The block carries no signature.
    #[error("block is not signed")]
    MissingSignature,
    /// The signature is malformed, malleable (high `s`) or does not verify.
    #[error("bad block signature: {0}")]
    BadSignature(SignatureError),
    /// A valid signature, but by another key than the author's.
    #[error("block names author {author} but was signed by {signer}")]
    WrongSigner {
        /// The author the header names.
        author: Address,
        /// The address the signature recovers.
        signer: Address,
    },
    /// The block is already stored.
    #[error("block {block} is already in the store")]
    Duplicate {
        /// Its hash.
        block: Hash,
    },
}

impl BlockError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            BlockError::HeaderTooLarge { .. } => "header_too_large",
            BlockError::MalformedHeader { .. } => "malformed_header",
            BlockError::UnsupportedVersion { .. } => "unsupported_version",
            BlockError::PayloadTooLarge { .. } => "payload_too_large",
            BlockError::PayloadLenMismatch { .. } => "payload_len_mismatch",
            BlockError::PayloadHashMismatch { .. } => "payload_hash_mismatch",
            BlockError::TooManyParents { .. } => "too_many_parents",
            BlockError::DuplicateParent { .. } => "duplicate_parent",
            BlockError::UnknownParent { .. } => "unknown_parent",
            BlockError::Cycle { .. } => "cycle",
            BlockError::WrongHeight { .. } => "wrong_height",
            BlockError::WrongPrev { .. } => "wrong_prev",
            BlockError::WrongChain { .. } => "wrong_chain",
            BlockError::TimestampBeforePrev { .. } => "timestamp_before_prev",
            BlockError::MissingSpec => "missing_spec",
            BlockError::AmbiguousSpec => "ambiguous_spec",
            BlockError::NotOperator { .. } => "not_operator",
            BlockError::MissingParentVersion { .. } => "missing_parent_version",
            BlockError::UnknownGroup { .. } => "unknown_group",
            BlockError::SpecMismatch { .. } => "spec_mismatch",
            BlockError::InvalidSpec { .. } => "invalid_spec",
            BlockError::TensorListMismatch { .. } => "tensor_list_mismatch",
            BlockError::NonFinite { .. } => "non_finite",
            BlockError::Tensor(_) => "bad_tensor_payload",
            BlockError::MalformedPayload { .. } => "malformed_payload",
            BlockError::MissingSignature => "missing_signature",
            BlockError::BadSignature(e) => e.code(),
            BlockError::WrongSigner { .. } => "wrong_signer",
            BlockError::Duplicate { .. } => "duplicate",
        }
    }
}

impl From<TensorError> for BlockError {
    fn from(e: TensorError) -> Self {
        match e {
            TensorError::NonFinite { name, index } => BlockError::NonFinite {
                tensor: name,
                index,
            },
            other => BlockError::Tensor(other),
        }
    }
}

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The block was refused; nothing was stored.
    #[error("invalid block {block}: {error}")]
    Invalid {
        /// Hash of the refused block.
        block: Hash,
        /// Why.
        #[source]
        error: BlockError,
    },
    /// Stored data contradicts itself (the store was damaged outside this program).
    #[error("store is corrupt at {block}: {detail}")]
    Corrupt {
        /// The block whose data is bad.
        block: Hash,
        /// What is wrong.
        detail: String,
    },
    /// No block with this hash.
    #[error("no block {0} in the store")]
    NotFound(Hash),
    /// The store is already initialised with a different genesis.
    #[error("{0}")]
    AlreadyInitialized(String),
    /// The index database failed.
    #[error("index database: {0}")]
    Index(#[from] redb::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ChainError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChainError {
        let context = context.into();
        move |source| ChainError::Io { context, source }
    }

    /// The block error inside, if the block was refused.
    pub fn block_error(&self) -> Option<&BlockError> {
        match self {
            ChainError::Invalid { error, .. } => Some(error),
            _ => None,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ChainError {
            fn from(e: $t) -> Self {
                ChainError::Index(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
