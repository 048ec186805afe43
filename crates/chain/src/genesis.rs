//! The genesis of a network: the spec block, one parameter block per tensor group, and the
//! first blocks of the dataset and proof chains.

use blyan_primitives::{Hash, SigningKey, codec};
use blyan_tensor::{TensorDesc, encode_tensors, f32_to_bytes};
use borsh::{BorshDeserialize, BorshSerialize};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::spec::{MetaPayload, ModelSpec, TensorGroup, byte_level_tokenizer_json};
use crate::{Block, BlockError, BlockKind, BlockMeta, ChainError, ChainId, Store};

/// Timestamp of every genesis block (2026-11-18T20:13:20Z), fixed so that the same spec and
/// weights give the same genesis hashes on every machine.
pub const GENESIS_TIMESTAMP_MS: u64 = 1_795_000_000_000;

/// Default seed of the random genesis weights.
pub const GENESIS_SEED: u64 = 0x426c_7961_6e00_0001;

/// Standard deviation of the random initial weights.
const INIT_STD: f32 = 0.02;

/// Payload of the first block of the dataset and proof chains.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct ChainGenesis {
    /// The chain this block starts.
    pub chain: ChainId,
    /// What the chain will hold, in a sentence.
    pub description: String,
}

impl ChainGenesis {
    /// Decodes a chain-genesis payload (at most 4 KiB).
    pub fn decode(bytes: &[u8]) -> Result<ChainGenesis, BlockError> {
        codec::decode(bytes, 4096).map_err(|e| BlockError::MalformedPayload {
            reason: e.to_string(),
        })
    }
}

/// Source of genesis weights: the tensors of one group, sorted by name.
pub trait WeightSource {
    /// Fills `group`'s tensors.
    fn tensors(&mut self, group: &TensorGroup) -> Vec<(TensorDesc, Vec<u8>)>;
}

/// Seeded random weights with the real shapes: norms at one, everything else drawn from
/// N(0, 0.02²). Each tensor's stream depends only on the seed and the tensor's name.
#[derive(Debug, Clone, Copy)]
pub struct RandomWeights {
    /// Seed.
    pub seed: u64,
}

impl WeightSource for RandomWeights {
    fn tensors(&mut self, group: &TensorGroup) -> Vec<(TensorDesc, Vec<u8>)> {
        group
            .tensors
            .iter()
            .map(|desc| {
                let n = desc.numel().expect("spec layouts are checked for overflow") as usize;
                let values = if desc.name.ends_with("norm.weight") {
                    vec![1.0f32; n]
                } else {
                    let key = Hash::of(format!("{}:{}", self.seed, desc.name).as_bytes());
                    let mut rng = rand_chacha::ChaCha8Rng::from_seed(key.0);
                    normal_samples(&mut rng, n, INIT_STD)
                };
                (desc.clone(), f32_to_bytes(&values))
            })
            .collect()
    }
}

/// Weights from a bundle (`blyan_tensor::encode_bundle`), e.g. the trained genesis model.
/// Built only after every tensor of the spec was found with its shape, so filling a group
/// cannot fail.
#[derive(Debug, Clone)]
pub struct BundleWeights {
    tensors: std::collections::BTreeMap<String, Vec<f32>>,
}

impl BundleWeights {
    /// Decodes `bundle` and checks it holds exactly the tensors of `spec`'s layout.
    pub fn new(bundle: &[u8], spec: &ModelSpec) -> Result<BundleWeights, BlockError> {
        let bad = |detail: String| BlockError::InvalidSpec { detail };
        let mut tensors = std::collections::BTreeMap::new();
        for (name, shape, values) in
            blyan_tensor::decode_bundle(bundle).map_err(|e| bad(e.to_string()))?
        {
            tensors.insert(name, (shape, values));
        }
        let mut out = std::collections::BTreeMap::new();
        for group in spec.groups_in_order() {
            for desc in &group.tensors {
                let (shape, values) = tensors
                    .remove(&desc.name)
                    .ok_or_else(|| bad(format!("the weights lack {}", desc.name)))?;
                let want: Vec<usize> = desc.shape.iter().map(|&d| d as usize).collect();
                if shape != want {
                    return Err(bad(format!(
                        "{} has shape {shape:?}, the spec says {want:?}",
                        desc.name
                    )));
                }
                out.insert(desc.name.clone(), values);
            }
        }
        if let Some(name) = tensors.keys().next() {
            return Err(bad(format!(
                "the weights hold {name}, which the spec lacks"
            )));
        }
        Ok(BundleWeights { tensors: out })
    }
}

impl WeightSource for BundleWeights {
    fn tensors(&mut self, group: &TensorGroup) -> Vec<(TensorDesc, Vec<u8>)> {
        group
            .tensors
            .iter()
            .map(|desc| {
                let values = self
                    .tensors
                    .get(&desc.name)
                    .expect("BundleWeights::new checked every tensor of the spec");
                (desc.clone(), f32_to_bytes(values))
            })
            .collect()
    }
}

/// `n` samples of N(0, std²) by the Box–Muller transform.
fn normal_samples(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1: f32 = 1.0 - rng.random::<f32>();
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        out.push(r * c);
        out.push(r * s);
    }
    out.truncate(n);
    out
}

/// Builds every genesis block for `meta`, with weights from `weights`, each authored and
/// signed by `operator`: the network's name (the spec block's hash) commits to who made it.
pub fn genesis_blocks(
    meta: &MetaPayload,
    weights: &mut impl WeightSource,
    operator: &SigningKey,
) -> Result<Vec<Block>, BlockError> {
    let ts = GENESIS_TIMESTAMP_MS;
    let spec_block = Block::new(
        ChainId::Meta,
        0,
        Hash::ZERO,
        vec![],
        BlockKind::Spec,
        BlockMeta {
            name: "spec".into(),
            ..BlockMeta::default()
        },
        meta.encode()?,
        operator,
        ts,
    );
    let spec_hash = spec_block.hash();
    let mut blocks = vec![spec_block];
    let mut prev = Hash::ZERO;
    for (height, group) in meta.spec.groups_in_order().iter().enumerate() {
        let tensors = weights.tensors(group);
        let refs: Vec<(TensorDesc, &[u8])> = tensors
            .iter()
            .map(|(d, b)| (d.clone(), b.as_slice()))
            .collect();
        let payload = encode_tensors(&refs)?;
        let block = Block::new(
            ChainId::Param,
            height as u64,
            prev,
            vec![spec_hash],
            group.kind,
            BlockMeta {
                name: group.name.clone(),
                expert: group.expert,
                tensors: tensors.into_iter().map(|(d, _)| d).collect(),
            },
            payload,
            operator,
            ts,
        );
        prev = block.hash();
        blocks.push(block);
    }
    for (chain, description) in [
        (
            ChainId::Dataset,
            "Datasets contributed to the network and their quality-gate verdicts.",
        ),
        (
            ChainId::Proof,
            "Proof-of-Learning verdicts and reward events.",
        ),
    ] {
        let payload = codec::encode(&ChainGenesis {
            chain,
            description: description.into(),
        });
        blocks.push(Block::new(
            chain,
            0,
            Hash::ZERO,
            vec![spec_hash],
            BlockKind::ChainGenesis,
            BlockMeta {
                name: "genesis".into(),
                ..BlockMeta::default()
            },
            payload,
            operator,
            ts,
        ));
    }
    Ok(blocks)
}

/// An untrained network: the genesis architecture, the byte-level tokenizer (no merges) and
/// seeded random weights, signed by `operator`. For tests and benchmarks; `blyan init` ships
/// the trained model.
pub fn random_genesis(seed: u64, operator: &SigningKey) -> Result<Vec<Block>, BlockError> {
    let tokenizer = byte_level_tokenizer_json();
    let meta = MetaPayload {
        spec: ModelSpec::genesis(Hash::of(&tokenizer)),
        tokenizer,
    };
    genesis_blocks(&meta, &mut RandomWeights { seed }, operator)
}

/// A network from a trained model: its spec as JSON (`ModelSpec`'s serde form), its
/// `tokenizer.json` and its weights as a bundle. The spec must name the tokenizer's hash
/// and the bundle must hold exactly the spec's tensors. Signed by `operator`.
pub fn bundled_genesis(
    spec_json: &[u8],
    tokenizer: &[u8],
    weights: &[u8],
    operator: &SigningKey,
) -> Result<Vec<Block>, BlockError> {
    let spec: ModelSpec =
        serde_json::from_slice(spec_json).map_err(|e| BlockError::InvalidSpec {
            detail: format!("spec JSON: {e}"),
        })?;
    let meta = MetaPayload {
        spec,
        tokenizer: tokenizer.to_vec(),
    };
    meta.check()?;
    let mut source = BundleWeights::new(weights, &meta.spec)?;
    genesis_blocks(&meta, &mut source, operator)
}

/// What `init` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InitOutcome {
    /// The genesis blocks were written.
    Created {
        /// Hash of the spec block, which names the network.
        network: Hash,
    },
    /// The store already held this genesis; nothing was written.
    AlreadyPresent {
        /// Hash of the spec block.
        network: Hash,
    },
}

/// Writes `blocks` as the genesis of an empty store, atomically. A store that already holds
/// every one of these blocks is left alone; any other non-empty store is refused.
pub fn init(store: &Store, blocks: Vec<Block>) -> Result<InitOutcome, ChainError> {
    let network = blocks.first().map(Block::hash).unwrap_or_default();
    if !store.is_empty()? {
        for b in &blocks {
            let hash = b.hash();
            if store.header(&hash)?.is_none() {
                let existing = store.at_height(ChainId::Meta, 0)?.unwrap_or_default();
                return Err(ChainError::AlreadyInitialized(format!(
                    "the store already holds network {existing}, which lacks genesis block {hash} \
                     ({}); refusing to mix two networks",
                    b.header.meta.name
                )));
            }
        }
        return Ok(InitOutcome::AlreadyPresent { network });
    }
    store.append_batch(blocks)?;
    Ok(InitOutcome::Created { network })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_samples_have_the_right_moments() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let xs = normal_samples(&mut rng, 100_001, 0.02);
        assert_eq!(xs.len(), 100_001);
        let mean = xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len() as f64;
        let var = xs
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / xs.len() as f64;
        assert!(mean.abs() < 0.0005, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.0005, "std {}", var.sqrt());
    }
}
