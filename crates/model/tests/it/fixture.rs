//! Tiny networks with wide random weights, written to a temporary store through genesis.

use std::{collections::BTreeMap, sync::Arc};

use blyan_chain::{
    Store,
    genesis::{WeightSource, genesis_blocks, init},
    spec::{MetaPayload, ModelSpec, TensorGroup, byte_level_tokenizer_json},
};
use blyan_model::{LoadOptions, Model, Precision};
use blyan_primitives::Hash;
use blyan_tensor::{TensorDesc, f32_to_bytes};
use blyan_tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 2 layers of 4 experts, top-2, d = 64 (4 heads over 2 key/value heads), ffn 96: widths
/// divisible by 32 so that the int8 path runs too.
pub(crate) fn test_spec() -> MetaPayload {
    let tokenizer = byte_level_tokenizer_json();
    let spec = ModelSpec {
        vocab_size: 300,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        num_local_experts: 4,
        num_experts_per_tok: 2,
        max_position_embeddings: 64,
        ..ModelSpec::genesis(Hash::of(&tokenizer))
    };
    MetaPayload { spec, tokenizer }
}

/// Weights wide enough that every part of the network matters: unit-variance embeddings,
/// matrices scaled by 1/√fan-in, norms around one, a decisive router.
pub(crate) struct WideWeights {
    pub(crate) seed: u64,
    pub(crate) written: BTreeMap<String, Vec<f32>>,
}

impl WeightSource for WideWeights {
    fn tensors(&mut self, group: &TensorGroup) -> Vec<(TensorDesc, Vec<u8>)> {
        group
            .tensors
            .iter()
            .map(|desc| {
                let key = Hash::of(format!("{}:{}", self.seed, desc.name).as_bytes());
                let mut rng = ChaCha8Rng::from_seed(key.0);
                let n = desc.numel().unwrap() as usize;
                let fan_in = *desc.shape.last().unwrap() as f32;
                let (center, std) = if desc.name.ends_with("norm.weight") {
                    (1.0, 0.2)
                } else if desc.name.contains("embed") {
                    (0.0, 1.0)
                } else if desc.name.contains("gate") {
                    (0.0, 2.0 / fan_in.sqrt())
                } else {
                    (0.0, 1.0 / fan_in.sqrt())
                };
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        // Sum of four uniforms: bell-shaped, variance 1/3, mean 2.
                        let s: f32 = (0..4).map(|_| rng.random::<f32>()).sum();
                        center + (s - 2.0) * std * 3f32.sqrt()
                    })
                    .collect();
                self.written.insert(desc.name.clone(), values.clone());
                (desc.clone(), f32_to_bytes(&values))
            })
            .collect()
    }
}

pub(crate) struct Net {
    pub(crate) store: Arc<Store>,
    pub(crate) meta: MetaPayload,
    pub(crate) weights: BTreeMap<String, Vec<f32>>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) _dir: tempfile::TempDir,
}

impl Net {
    pub(crate) fn model(&self, precision: Precision) -> Model {
        Model::load(
            self.store.clone(),
            LoadOptions {
                precision,
                ..LoadOptions::default()
            },
        )
        .unwrap()
    }
}

pub(crate) fn net(seed: u64) -> Net {
    net_with(test_spec(), seed)
}

pub(crate) fn net_with(meta: MetaPayload, seed: u64) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut weights = WideWeights {
        seed,
        written: BTreeMap::new(),
    };
    init(
        &store,
        genesis_blocks(
            &meta,
            &mut weights,
            &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
        )
        .unwrap(),
    )
    .unwrap();
    Net {
        store: Arc::new(store),
        tokenizer: Arc::new(Tokenizer::from_json(&meta.tokenizer).unwrap()),
        meta,
        weights: weights.written,
        _dir: dir,
    }
}
