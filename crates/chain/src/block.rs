//! Block headers, their canonical encoding and hash, and the chains they live on.

use std::fmt;
use std::str::FromStr;

use blyan_primitives::{
    Address, ExpertId, Hash, Signature, SignatureError, SigningKey, address_of, codec,
};
use blyan_tensor::TensorDesc;
use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::BlockError;

/// Version of the header layout this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Largest encoded header in bytes.
pub const HEADER_LEN_MAX: usize = 64 * 1024;

/// Largest payload in bytes (an expert of a Mixtral-8x7B layer in f16 is about 352 MB).
pub const PAYLOAD_LEN_MAX: u64 = 512 * 1024 * 1024;

/// Most entries in `depends_on`.
pub const DEPENDS_ON_MAX: usize = 16;

/// Longest block name in bytes.
pub const NAME_LEN_MAX: usize = 256;

/// The chains of a network. Discriminants are part of the header encoding.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Serialize,
    Deserialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum ChainId {
    /// A: model spec, tokenizer, routing rules.
    Meta = 0,
    /// B: one block per expert version, router and dense tensor group.
    Param = 1,
    /// D: datasets.
    Dataset = 2,
    /// P: Proof-of-Learning verdicts and reward events.
    Proof = 3,
    /// L: the BLY ledger's postings, anchored in batches.
    Ledger = 4,
}

impl ChainId {
    /// Every chain, in the order they are listed and verified.
    pub const ALL: [ChainId; 5] = [
        ChainId::Meta,
        ChainId::Param,
        ChainId::Dataset,
        ChainId::Proof,
        ChainId::Ledger,
    ];

    /// Lowercase name used on the command line and in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChainId::Meta => "meta",
            ChainId::Param => "param",
            ChainId::Dataset => "dataset",
            ChainId::Proof => "proof",
            ChainId::Ledger => "ledger",
        }
    }

    /// The one-letter name of the design documents.
    pub const fn letter(self) -> char {
        match self {
            ChainId::Meta => 'A',
            ChainId::Param => 'B',
            ChainId::Dataset => 'D',
            ChainId::Proof => 'P',
            ChainId::Ledger => 'L',
        }
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChainId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "meta" | "a" => Ok(ChainId::Meta),
            "param" | "params" | "b" => Ok(ChainId::Param),
            "dataset" | "d" => Ok(ChainId::Dataset),
            "proof" | "p" => Ok(ChainId::Proof),
            "ledger" | "l" => Ok(ChainId::Ledger),
            _ => Err(format!(
                "unknown chain {s:?} (meta, param, dataset, proof or ledger)"
            )),
        }
    }
}

/// What a block holds. Discriminants are part of the header encoding and never reused.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Serialize,
    Deserialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum BlockKind {
    /// Meta chain: the model spec and tokenizer ([`crate::spec::MetaPayload`]).
    Spec = 0,
    /// Param chain: one version of one expert's tensors.
    Expert = 1,
    /// Param chain: one layer's router (gate) weights.
    Router = 2,
    /// Param chain: a dense tensor group (embeddings, attention, norms, LM head).
    Dense = 3,
    /// First block of the dataset or proof chain ([`crate::genesis::ChainGenesis`]).
    ChainGenesis = 4,
    /// Ledger chain: a batch of ledger postings under a Merkle root ([`crate::LedgerBatch`]).
    LedgerBatch = 5,
    /// Proof chain: the hidden evaluation pool's commitment ([`crate::PoolCommit`]).
    PoolCommit = 6,
    /// Proof chain: a Proof-of-Learning verdict with its evidence ([`crate::Verdict`]).
    Verdict = 7,
    /// Param chain: an expert's default version moves to an older one ([`crate::Migration`]).
    Migration = 8,
    /// Proof chain: the items a verdict used, opened ([`crate::Reveal`]).
    Reveal = 9,
    /// Meta chain: a network key admitted to or removed from a role, signed by the network's
    /// operator ([`crate::Admission`]).
    Admission = 10,
}

impl BlockKind {
    /// Whether blocks of this kind may appear on `chain`.
    pub fn allowed_on(self, chain: ChainId) -> bool {
        match self {
            BlockKind::Spec | BlockKind::Admission => chain == ChainId::Meta,
            BlockKind::Expert | BlockKind::Router | BlockKind::Dense => chain == ChainId::Param,
            BlockKind::ChainGenesis => matches!(chain, ChainId::Dataset | ChainId::Proof),
            BlockKind::LedgerBatch => chain == ChainId::Ledger,
            BlockKind::PoolCommit | BlockKind::Verdict | BlockKind::Reveal => {
                chain == ChainId::Proof
            }
            BlockKind::Migration => chain == ChainId::Param,
        }
    }

    /// Whether the payload is a safetensors file of weights.
    pub fn has_tensors(self) -> bool {
        matches!(
            self,
            BlockKind::Expert | BlockKind::Router | BlockKind::Dense
        )
    }

    /// Snake-case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Spec => "spec",
            BlockKind::Expert => "expert",
            BlockKind::Router => "router",
            BlockKind::Dense => "dense",
            BlockKind::ChainGenesis => "chain_genesis",
            BlockKind::LedgerBatch => "ledger_batch",
            BlockKind::PoolCommit => "pool_commit",
            BlockKind::Verdict => "verdict",
            BlockKind::Migration => "migration",
            BlockKind::Reveal => "reveal",
            BlockKind::Admission => "admission",
        }
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a header says about its payload beyond its hash: names, expert, tensor layout.
#[derive(
    Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize, BorshSerialize, BorshDeserialize,
)]
pub struct BlockMeta {
    /// The block's name: the tensor group prefix for parameter blocks
    /// (`model.layers.0.block_sparse_moe.experts.3`), a fixed word otherwise.
    pub name: String,
    /// The expert this block is a version of, for [`BlockKind::Expert`].
    pub expert: Option<ExpertId>,
    /// The payload's tensors, sorted by name, for parameter blocks.
    pub tensors: Vec<TensorDesc>,
}

/// A block header. Its canonical Borsh bytes are what the block hash covers.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, BorshSerialize, BorshDeserialize)]
pub struct BlockHeader {
    /// Layout version, [`FORMAT_VERSION`].
    pub version: u16,
    /// The chain this block extends.
    pub chain: ChainId,
    /// Position on its chain; the first block has height 0.
    pub height: u64,
    /// Hash of the block at `height - 1` on the same chain, or zero at height 0.
    pub prev: Hash,
    /// Blocks on any chain this one builds on (spec, parent version, proof), each stored first.
    pub depends_on: Vec<Hash>,
    /// What the payload holds.
    pub kind: BlockKind,
    /// Names, expert and tensor layout.
    pub meta: BlockMeta,
    /// SHA-256 of the payload bytes.
    pub payload_hash: Hash,
    /// Length of the payload in bytes.
    pub payload_len: u64,
    /// Who made the block.
    pub author: Address,
    /// Milliseconds since the Unix epoch, as the author's clock said.
    pub timestamp_ms: u64,
}

impl BlockHeader {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes canonical bytes, refusing more than [`HEADER_LEN_MAX`] of them.
    pub fn decode(bytes: &[u8]) -> Result<BlockHeader, BlockError> {
        if bytes.len() > HEADER_LEN_MAX {
            return Err(BlockError::HeaderTooLarge {
                len: bytes.len(),
                max: HEADER_LEN_MAX,
            });
        }
        let header: BlockHeader =
            codec::decode(bytes, HEADER_LEN_MAX).map_err(|e| BlockError::MalformedHeader {
                reason: e.to_string(),
            })?;
        Ok(header)
    }

    /// The block hash: SHA-256 of the canonical bytes.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.encode())
    }
}

/// A block as it arrives from outside: nothing about it has been checked.
///
/// The signature is not part of the header bytes, so it is not covered by the block hash: it
/// is the author's EIP-191 `personal_sign` of the hash's 32 bytes, and the author named in
/// the header must be the address it recovers ([`CheckedBlock`](crate::CheckedBlock) checks).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The author's signature of the block hash; a block without one is refused.
    pub signature: Option<Signature>,
}

impl Block {
    /// A block whose header states `payload`'s hash and length, authored and signed by
    /// `signer`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        chain: ChainId,
        height: u64,
        prev: Hash,
        depends_on: Vec<Hash>,
        kind: BlockKind,
        meta: BlockMeta,
        payload: Vec<u8>,
        signer: &SigningKey,
        timestamp_ms: u64,
    ) -> Block {
        let header = BlockHeader {
            version: FORMAT_VERSION,
            chain,
            height,
            prev,
            depends_on,
            kind,
            meta,
            payload_hash: Hash::of(&payload),
            payload_len: payload.len() as u64,
            author: address_of(signer),
            timestamp_ms,
        };
        let mut block = Block {
            header,
            payload,
            signature: None,
        };
        block.sign(signer);
        block
    }

    /// A block from its parts as they travel: canonical header bytes, the 65 signature
    /// bytes and the payload. Only the encoding is checked here; the rest is
    /// [`CheckedBlock`](crate::CheckedBlock)'s.
    pub fn from_parts(
        header: &[u8],
        signature: &[u8],
        payload: Vec<u8>,
    ) -> Result<Block, BlockError> {
        let header = BlockHeader::decode(header)?;
        let signature = Signature::from_slice(signature).map_err(BlockError::BadSignature)?;
        Ok(Block {
            header,
            payload,
            signature: Some(signature),
        })
    }

    /// Makes `signer` the author and signs the header as it is now. Anything changed in
    /// the header afterwards voids the signature.
    pub fn sign(&mut self, signer: &SigningKey) {
        self.header.author = address_of(signer);
        self.signature = Some(sign_hash(signer, &self.header.hash()));
    }

    /// The block hash.
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }
}

/// The signature of block hash `hash` by `signer`: EIP-191 `personal_sign` of its 32 bytes.
pub fn sign_hash(signer: &SigningKey, hash: &Hash) -> Signature {
    Signature::sign(signer, &hash.0)
}

/// Checks that `signature` is `author`'s signature of block hash `hash`.
pub fn check_signature(
    hash: &Hash,
    author: &Address,
    signature: Option<&Signature>,
) -> Result<(), BlockError> {
    let signature = signature.ok_or(BlockError::MissingSignature)?;
    match signature.verify(&hash.0, author) {
        Ok(()) => Ok(()),
        Err(SignatureError::WrongSigner {
            expected,
            recovered,
        }) => Err(BlockError::WrongSigner {
            author: expected,
            signer: recovered,
        }),
        Err(e) => Err(BlockError::BadSignature(e)),
    }
}
