//! Reading model parts from parameter blocks: hash-verified, memory-mapped, checked against
//! the spec's tensor layout.

use std::thread;

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

/// Payloads from this size up are hashed on a second thread while they are decoded.
const HASH_ASIDE_MIN: usize = 256 * 1024;

/// Runs `f` on the tensors of `group` from block `block` (name-sorted), borrowed from the
/// mapped payload, and returns its result only if the payload matches the header's hash.
///
/// A cold expert's load is about half hashing and half decoding (reading the floats,
/// quantizing, tiling), so a large payload is hashed on a scoped second thread while this
/// one decodes it; what was decoded from a payload that fails the check is dropped, and
/// the error is the hash mismatch.
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
    let missing = || ModelError::BlockMissing {
        part: part.to_owned(),
        block,
    };
    let chain_error = |e| match e {
        ChainError::NotFound(_) => missing(),
        ChainError::Corrupt { detail, .. } => corrupt(detail),
        other => ModelError::Chain(other),
    };
    let header = store
        .header(&block)
        .map_err(chain_error)?
        .ok_or_else(missing)?;
    let payload = store.payload(&block).map_err(chain_error)?;
    let decode = || {
        let set = TensorSet::parse(&payload).map_err(|e| corrupt(e.to_string()))?;
        if set.descs() != group.tensors {
            return Err(corrupt(format!(
                "its tensors do not match the spec's {} layout",
                group.name
            )));
        }
        f(set.tensors())
    };
    let check = || Store::check_payload(&block, &header, &payload);
    let (checked, decoded) = if payload.len() >= HASH_ASIDE_MIN {
        thread::scope(|s| match thread::Builder::new().spawn_scoped(s, check) {
            Ok(hashing) => {
                let decoded = decode();
                let checked = hashing
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (checked, decoded)
            }
            // No thread to be had: hash here.
            Err(_) => (check(), decode()),
        })
    } else {
        (check(), decode())
    };
    checked.map_err(chain_error)?;
    decoded
}
