//! The exact model a verdict was judged on, read back from the chain.
//!
//! Every parameter-chain block either adds a version of a tensor group (which becomes its
//! head) or migrates a group's head to an older version. Replaying the chain up to a given
//! block therefore fixes the version of every group at that moment; a verdict records that
//! block, so `pol verify` evaluates exactly the model the validator did.

use std::collections::BTreeMap;

use blyan_chain::spec::ModelSpec;
use blyan_chain::{BlockKind, ChainError, ChainId, Migration, Store};
use blyan_primitives::Hash;
use blyan_tensor::TensorSet;

use crate::eval::{EvalError, ExpertWeights, Model};

/// Why a model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store failed or a block is missing.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The store holds no model.
    #[error("the store holds no model (run `blyan init`)")]
    NoModel,
    /// A block's payload is not what its header says.
    #[error("block {block}: {detail}")]
    Corrupt {
        /// The block.
        block: Hash,
        /// What is wrong.
        detail: String,
    },
    /// The tensors do not make the model the spec describes.
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// The version of every tensor group at one parameter-chain block.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The spec.
    pub spec: ModelSpec,
    /// The parameter-chain block it was taken at.
    pub param_head: Hash,
    /// Head block of each tensor group, by group name.
    pub heads: BTreeMap<String, Hash>,
}

impl Snapshot {
    /// The groups' versions as of parameter-chain block `at` (the current head if `None`).
    pub fn at(store: &Store, at: Option<Hash>) -> Result<Snapshot, SnapshotError> {
        let (_, meta) = store.meta()?.ok_or(SnapshotError::NoModel)?;
        let (top, head_hash) = store.head(ChainId::Param)?.ok_or(SnapshotError::NoModel)?;
        let (last, param_head) = match at {
            None => (top, head_hash),
            Some(h) => {
                let header = store.header(&h)?.ok_or(ChainError::NotFound(h))?;
                if header.chain != ChainId::Param {
                    return Err(SnapshotError::Corrupt {
                        block: h,
                        detail: "not a parameter-chain block".into(),
                    });
                }
                (header.height, h)
            }
        };
        let mut heads = BTreeMap::new();
        for height in 0..=last {
            let hash = store
                .at_height(ChainId::Param, height)?
                .ok_or(SnapshotError::NoModel)?;
            let header = store.header(&hash)?.ok_or(ChainError::NotFound(hash))?;
            if header.kind.has_tensors() {
                heads.insert(header.meta.name.clone(), hash);
            } else if header.kind == BlockKind::Migration {
                let payload = store.payload_verified(&hash)?;
                let m = Migration::decode(&payload).map_err(|e| SnapshotError::Corrupt {
                    block: hash,
                    detail: e.to_string(),
                })?;
                heads.insert(m.group, m.to);
            }
        }
        Ok(Snapshot {
            spec: meta.spec,
            param_head,
            heads,
        })
    }

    /// The model of this snapshot, every block hash-verified as it is read.
    pub fn model(&self, store: &Store) -> Result<Model, SnapshotError> {
        let mut tensors = BTreeMap::new();
        for group in self.spec.groups_in_order() {
            let head = *self.heads.get(&group.name).ok_or(SnapshotError::NoModel)?;
            for (name, values) in block_tensors(store, &head)? {
                tensors.insert(name, values);
            }
        }
        Ok(Model::new(&self.spec, tensors)?)
    }
}

/// Every tensor of block `hash` as f32, by name, hash-verified.
pub fn block_tensors(store: &Store, hash: &Hash) -> Result<Vec<(String, Vec<f32>)>, SnapshotError> {
    let payload = store.payload_verified(hash)?;
    tensors_of_payload(&payload).map_err(|detail| SnapshotError::Corrupt {
        block: *hash,
        detail,
    })
}

/// The tensors of a parameter payload as f32, by name.
pub fn tensors_of_payload(payload: &[u8]) -> Result<Vec<(String, Vec<f32>)>, String> {
    let set = TensorSet::parse(payload).map_err(|e| e.to_string())?;
    Ok(set
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.to_f32()))
        .collect())
}

/// An expert's weights from its tensors by full name (`….w1.weight`, `w2`, `w3`).
pub fn expert_weights(tensors: &[(String, Vec<f32>)]) -> Result<ExpertWeights, String> {
    let find = |w: &str| {
        let suffix = format!(".{w}.weight");
        tensors
            .iter()
            .find(|(n, _)| n.ends_with(&suffix))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("no {w} tensor"))
    };
    Ok(ExpertWeights {
        w1: find("w1")?,
        w2: find("w2")?,
        w3: find("w3")?,
    })
}
