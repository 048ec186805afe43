//! Model weights between the chain, the genesis initialiser and candle tensors.

use std::collections::BTreeMap;

use blyan_chain::Store;
use blyan_chain::genesis::{RandomWeights, WeightSource};
use blyan_chain::spec::{MetaPayload, ModelSpec};
use blyan_primitives::Hash;
use blyan_tensor::{TensorDesc, TensorSet, f32_from_bytes};
use candle_core::{Device, Tensor};

use crate::TrainError;

/// Seeded random initial weights for every tensor of `spec` (norms at one, the rest
/// N(0, 0.02²)), the same values `blyan init --seed` writes.
pub fn random_weights(spec: &ModelSpec, seed: u64) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let mut source = RandomWeights { seed };
    let mut out = BTreeMap::new();
    for group in spec.groups_in_order() {
        for (desc, bytes) in source.tensors(&group) {
            out.insert(desc.name.clone(), to_tensor(&desc, f32_from_bytes(&bytes))?);
        }
    }
    Ok(out)
}

/// The model the chain serves now.
#[derive(Debug)]
pub struct HeadWeights {
    /// The spec and tokenizer.
    pub meta: MetaPayload,
    /// Every head tensor as f32, by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The head block of each tensor group, by group name.
    pub heads: BTreeMap<String, Hash>,
}

/// The model the chain serves now, each block hash-verified as it is read.
pub fn head_weights(store: &Store) -> Result<HeadWeights, TrainError> {
    let (_, meta) = store.meta()?.ok_or(TrainError::NoModel)?;
    let mut tensors = BTreeMap::new();
    let mut heads = BTreeMap::new();
    for group in meta.spec.groups_in_order() {
        let head = store.group_head(&group.name)?.ok_or(TrainError::NoModel)?;
        let payload = store.payload_verified(&head)?;
        let set = TensorSet::parse(&payload).map_err(|e| {
            TrainError::Chain(blyan_chain::ChainError::Corrupt {
                block: head,
                detail: e.to_string(),
            })
        })?;
        for t in set.tensors() {
            tensors.insert(t.name.clone(), to_tensor(&t.desc(), t.to_f32())?);
        }
        heads.insert(group.name.clone(), head);
    }
    Ok(HeadWeights {
        meta,
        tensors,
        heads,
    })
}

/// An f32 tensor with `desc`'s shape.
pub fn to_tensor(desc: &TensorDesc, values: Vec<f32>) -> Result<Tensor, TrainError> {
    let shape: Vec<usize> = desc.shape.iter().map(|&d| d as usize).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// The values of an f32 tensor, flattened.
pub fn values(t: &Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}
