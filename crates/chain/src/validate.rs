//! Validation as type states: [`Block`] → [`CheckedBlock`] (checked on its own) →
//! [`ValidBlock`] (checked against the store). Only a `ValidBlock` can be stored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use blyan_primitives::Hash;
use blyan_tensor::{TensorDesc, TensorSet};

use crate::admission::Admission;
use crate::block::NAME_LEN_MAX;
use crate::genesis::ChainGenesis;
use crate::ledger::LedgerBatch;
use crate::proof::{Migration, PoolCommit, Reveal, Verdict};
use crate::spec::{MetaPayload, TensorGroup};
use crate::{
    Block, BlockError, BlockHeader, BlockKind, ChainError, ChainId, DEPENDS_ON_MAX, FORMAT_VERSION,
    HEADER_LEN_MAX, PAYLOAD_LEN_MAX, check_signature,
};

/// A block that passed every check that needs nothing but the block itself: sizes, the
/// author's signature, hashes, parent list, kind and chain, and its payload's structure and
/// values.
#[derive(Debug, Clone)]
pub struct CheckedBlock {
    block: Block,
    hash: Hash,
}

impl CheckedBlock {
    /// Checks `block` on its own.
    pub fn check(block: Block) -> Result<CheckedBlock, BlockError> {
        CheckedBlock::check_hashed(block).map_err(|(_, error)| error)
    }

    /// Like [`check`](CheckedBlock::check), but a refusal also carries the block hash, which
    /// is computed once for both outcomes.
    pub(crate) fn check_hashed(block: Block) -> Result<CheckedBlock, (Hash, BlockError)> {
        let encoded = block.header.encode();
        let hash = Hash::of(&encoded);
        match check_fields(&block, &hash, encoded.len()) {
            Ok(()) => Ok(CheckedBlock { block, hash }),
            Err(error) => Err((hash, error)),
        }
    }

    /// The block hash.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }
}

/// The stateless rules, in the order their errors are reported.
/// The signature is checked before the payload is hashed: a block nobody signed costs one
/// signature recovery, not a pass over up to 512 MiB.
fn check_fields(block: &Block, hash: &Hash, header_len: usize) -> Result<(), BlockError> {
    let h = &block.header;
    if h.version != FORMAT_VERSION {
        return Err(BlockError::UnsupportedVersion { version: h.version });
    }
    if header_len > HEADER_LEN_MAX {
        return Err(BlockError::HeaderTooLarge {
            len: header_len,
            max: HEADER_LEN_MAX,
        });
    }
    check_signature(hash, &h.author, block.signature.as_ref())?;
    let actual_len = block.payload.len() as u64;
    if h.payload_len > PAYLOAD_LEN_MAX || actual_len > PAYLOAD_LEN_MAX {
        let len = h.payload_len.max(actual_len);
        return Err(BlockError::PayloadTooLarge {
            len,
            max: PAYLOAD_LEN_MAX,
        });
    }
    if actual_len != h.payload_len {
        return Err(BlockError::PayloadLenMismatch {
            expected: h.payload_len,
            actual: actual_len,
        });
    }
    let actual = Hash::of(&block.payload);
    if actual != h.payload_hash {
        return Err(BlockError::PayloadHashMismatch {
            expected: h.payload_hash,
            actual,
        });
    }
    if h.depends_on.len() > DEPENDS_ON_MAX {
        return Err(BlockError::TooManyParents {
            count: h.depends_on.len(),
            max: DEPENDS_ON_MAX,
        });
    }
    let mut seen = HashSet::with_capacity(h.depends_on.len());
    if let Some(&parent) = h.depends_on.iter().find(|p| !seen.insert(**p)) {
        return Err(BlockError::DuplicateParent { parent });
    }
    if !h.kind.allowed_on(h.chain) {
        return Err(BlockError::WrongChain {
            kind: h.kind,
            chain: h.chain,
        });
    }
    if h.meta.name.is_empty() || h.meta.name.len() > NAME_LEN_MAX {
        return Err(BlockError::UnknownGroup {
            name: h.meta.name.clone(),
        });
    }
    check_payload(h, &block.payload)
}

fn check_payload(h: &BlockHeader, payload: &[u8]) -> Result<(), BlockError> {
    if h.kind.has_tensors() {
        let set = TensorSet::parse(payload)?;
        let descs = set.descs();
        if descs != h.meta.tensors {
            return Err(BlockError::TensorListMismatch {
                header: render(&h.meta.tensors),
                payload: render(&descs),
            });
        }
        set.check_finite()?;
        return Ok(());
    }
    if !h.meta.tensors.is_empty() || h.meta.expert.is_some() {
        return Err(BlockError::TensorListMismatch {
            header: render(&h.meta.tensors),
            payload: "no tensors".into(),
        });
    }
    match h.kind {
        BlockKind::Spec => MetaPayload::decode(payload).map(drop),
        BlockKind::ChainGenesis => ChainGenesis::decode(payload).map(drop),
        BlockKind::LedgerBatch => LedgerBatch::decode(payload).map(drop),
        BlockKind::PoolCommit => PoolCommit::decode(payload).map(drop),
        BlockKind::Verdict => Verdict::decode(payload).map(drop),
        BlockKind::Reveal => Reveal::decode(payload).map(drop),
        BlockKind::Migration => Migration::decode(payload).map(drop),
        BlockKind::Admission => Admission::decode(payload).map(drop),
        BlockKind::Expert | BlockKind::Router | BlockKind::Dense => Ok(()),
    }
}

fn render(descs: &[TensorDesc]) -> String {
    let items: Vec<String> = descs
        .iter()
        .map(|d| format!("{}:{}{:?}", d.name, d.dtype, d.shape))
        .collect();
    format!("[{}]", items.join(", "))
}

/// A block that is valid against the store it was checked with, at the moment of checking.
/// The store produces it inside its write transaction, so nothing can change in between.
#[derive(Debug)]
pub struct ValidBlock {
    pub(crate) block: Block,
    pub(crate) hash: Hash,
}

impl ValidBlock {
    /// The block hash.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }
}

/// The index state validation reads. Implemented over the store's write transaction.
pub(crate) trait ChainView {
    fn header(&self, hash: &Hash) -> Result<Option<BlockHeader>, ChainError>;
    fn head(&self, chain: ChainId) -> Result<Option<(u64, Hash)>, ChainError>;
    fn has_versions(&self, group: &str) -> Result<bool, ChainError>;
    fn group_head(&self, group: &str) -> Result<Option<Hash>, ChainError>;
    fn layout(&self, spec_block: &Hash) -> Result<Arc<BTreeMap<String, TensorGroup>>, ChainError>;
}

/// Checks `checked` against `view`: not stored yet, extends its chain's head, every parent
/// present, shapes as the spec says, and a new version builds on an existing one.
pub(crate) fn validate(
    checked: CheckedBlock,
    view: &impl ChainView,
) -> Result<ValidBlock, ChainError> {
    let hash = checked.hash;
    let invalid = |error| ChainError::Invalid { block: hash, error };
    let h = &checked.block.header;
    if view.header(&hash)?.is_some() {
        return Err(invalid(BlockError::Duplicate { block: hash }));
    }
    if h.prev == hash || h.depends_on.contains(&hash) {
        return Err(invalid(BlockError::Cycle { block: hash }));
    }
    let mut parents = Vec::with_capacity(h.depends_on.len());
    for p in &h.depends_on {
        match view.header(p)? {
            Some(header) => parents.push(header),
            None => return Err(invalid(BlockError::UnknownParent { parent: *p })),
        }
    }
    let (expected_height, expected_prev) = match view.head(h.chain)? {
        Some((height, head)) => (height + 1, head),
        None => (0, Hash::ZERO),
    };
    if h.height != expected_height {
        return Err(invalid(BlockError::WrongHeight {
            chain: h.chain,
            expected: expected_height,
            actual: h.height,
        }));
    }
    if h.prev != expected_prev {
        if !h.prev.is_zero() && view.header(&h.prev)?.is_none() {
            return Err(invalid(BlockError::UnknownParent { parent: h.prev }));
        }
        return Err(invalid(BlockError::WrongPrev {
            chain: h.chain,
            expected: expected_prev,
            actual: h.prev,
        }));
    }
    if !h.prev.is_zero() {
        let prev = view.header(&h.prev)?.ok_or(ChainError::NotFound(h.prev))?;
        if h.timestamp_ms < prev.timestamp_ms {
            return Err(invalid(BlockError::TimestampBeforePrev {
                prev: prev.timestamp_ms,
                actual: h.timestamp_ms,
            }));
        }
    }
    let specs: Vec<Hash> = h
        .depends_on
        .iter()
        .zip(&parents)
        .filter(|(_, p)| p.kind == BlockKind::Spec)
        .map(|(hash, _)| *hash)
        .collect();
    if matches!(
        h.kind,
        BlockKind::ChainGenesis | BlockKind::LedgerBatch | BlockKind::Admission
    ) || h.kind.has_tensors()
    {
        match specs.len() {
            0 => return Err(invalid(BlockError::MissingSpec)),
            1 => {}
            _ => return Err(invalid(BlockError::AmbiguousSpec)),
        }
    }
    if h.kind.has_tensors() {
        let layout = view.layout(&specs[0])?;
        check_against_spec(h, &layout).map_err(invalid)?;
        if view.has_versions(&h.meta.name)?
            && !parents
                .iter()
                .any(|p| p.chain == ChainId::Param && p.meta.name == h.meta.name)
        {
            return Err(invalid(BlockError::MissingParentVersion {
                name: h.meta.name.clone(),
            }));
        }
    }
    if h.kind == BlockKind::Admission {
        let spec = parents
            .iter()
            .find(|p| p.kind == BlockKind::Spec)
            .ok_or(ChainError::NotFound(specs[0]))?;
        if spec.author != h.author {
            return Err(invalid(BlockError::NotOperator {
                author: h.author,
                operator: spec.author,
            }));
        }
    }
    if h.kind == BlockKind::Migration {
        check_migration(h, &checked.block.payload, &parents, view).map_err(invalid)?;
    }
    Ok(ValidBlock {
        block: checked.block,
        hash,
    })
}

/// A migration moves an existing group's head from the version it serves now to another
/// version of the same group, which it names among its parents.
fn check_migration(
    h: &BlockHeader,
    payload: &[u8],
    parents: &[BlockHeader],
    view: &impl ChainView,
) -> Result<(), BlockError> {
    let m = Migration::decode(payload)?;
    let bad = |reason: String| BlockError::MalformedPayload { reason };
    if m.group != h.meta.name {
        return Err(bad(format!(
            "the migration names group {}, its header {}",
            m.group, h.meta.name
        )));
    }
    let head = view
        .group_head(&m.group)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| BlockError::UnknownGroup {
            name: m.group.clone(),
        })?;
    if head != m.from {
        return Err(bad(format!(
            "the migration starts from {}, but {} serves {head}",
            m.from, m.group
        )));
    }
    let target = h
        .depends_on
        .iter()
        .zip(parents)
        .find(|(hash, _)| **hash == m.to)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            bad(format!(
                "the migration target {} is not among its parents",
                m.to
            ))
        })?;
    if !target.kind.has_tensors() || target.chain != ChainId::Param || target.meta.name != m.group {
        return Err(bad(format!("{} is not a version of {}", m.to, m.group)));
    }
    Ok(())
}

fn check_against_spec(
    h: &BlockHeader,
    layout: &BTreeMap<String, TensorGroup>,
) -> Result<(), BlockError> {
    let name = &h.meta.name;
    let group = layout
        .get(name)
        .ok_or_else(|| BlockError::UnknownGroup { name: name.clone() })?;
    let mismatch = |detail: String| BlockError::SpecMismatch {
        name: name.clone(),
        detail,
    };
    if group.kind != h.kind {
        return Err(mismatch(format!(
            "kind is {}, spec says {}",
            h.kind, group.kind
        )));
    }
    if group.expert != h.meta.expert {
        return Err(mismatch(format!(
            "expert is {:?}, spec says {:?}",
            h.meta.expert, group.expert
        )));
    }
    if group.tensors.len() != h.meta.tensors.len() {
        return Err(mismatch(format!(
            "{} tensors, spec says {}",
            h.meta.tensors.len(),
            group.tensors.len()
        )));
    }
    for (want, got) in group.tensors.iter().zip(&h.meta.tensors) {
        if want.name != got.name {
            return Err(mismatch(format!(
                "tensor {} is not in the spec (expected {})",
                got.name, want.name
            )));
        }
        if want.shape != got.shape {
            return Err(BlockError::SpecMismatch {
                name: got.name.clone(),
                detail: format!("shape {:?}, spec says {:?}", got.shape, want.shape),
            });
        }
        if want.dtype != got.dtype {
            return Err(BlockError::SpecMismatch {
                name: got.name.clone(),
                detail: format!("dtype {}, spec says {}", got.dtype, want.dtype),
            });
        }
    }
    Ok(())
}
