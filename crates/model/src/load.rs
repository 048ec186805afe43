//! Reading model parts from parameter blocks: hash-verified, memory-mapped, checked against
//! the spec's tensor layout.

use blyan_chain::{ChainError, Store, spec::TensorGroup};
use blyan_primitives::Hash;
use blyan_tensor::{TensorRef, TensorSet};
use candle_core::{Device, Tensor};

use crate::ModelError;

/// The tensors of `group` from block `block`, in the group's (name-sorted) order, as f32.
///
/// `part` names the model part in errors (`expert 2.5`, `model.layers.0.self_attn`).
pub(crate) fn read_group(
    store: &Store,
    block: Hash,
    group: &TensorGroup,
    part: &str,
) -> Result<Vec<Tensor>, ModelError> {
    with_group(store, block, group, part, |tensors| {
        tensors
            .iter()
            .map(|t| {
                Ok(Tensor::from_vec(
                    t.to_f32(),
                    t.shape.as_slice(),
                    &Device::Cpu,
                )?)
            })
            .collect()
    })
}

/// Runs `f` on the tensors of `group` from block `block` (name-sorted), borrowed from the
/// verified, mapped payload.
pub(crate) fn with_group<R>(
    store: &Store,
    block: Hash,
    group: &TensorGroup,
    part: &str,
    f: impl FnOnce(&[TensorRef<'_>]) -> Result<R, ModelError>,
) -> Result<R, ModelError> {
    let corrupt = |reason: String| ModelError::BlockCorrupt {
        part: part.to_owned(),
        block,
        reason,
    };
    let payload = store.payload_verified(&block).map_err(|e| match e {
        ChainError::NotFound(_) => ModelError::BlockMissing {
            part: part.to_owned(),
            block,
        },
        ChainError::Corrupt { detail, .. } => corrupt(detail),
        other => ModelError::Chain(other),
    })?;
    let set = TensorSet::parse(&payload).map_err(|e| corrupt(e.to_string()))?;
    if set.descs() != group.tensors {
        return Err(corrupt(format!(
            "its tensors do not match the spec's {} layout",
            group.name
        )));
    }
    f(set.tensors())
}
