//! A tiny network for tests: 1 layer of 2 experts, d = 8.

use blyan_chain::genesis::{RandomWeights, genesis_blocks, init};
use blyan_chain::spec::{MetaPayload, ModelSpec, byte_level_tokenizer_json, expert_group_name};
use blyan_chain::{Block, BlockKind, BlockMeta, ChainId, Store};
use blyan_primitives::{ExpertId, Hash, SigningKey};
use blyan_tensor::{DType, TensorDesc, encode_tensors, f32_to_bytes};

pub(crate) fn tiny_spec() -> MetaPayload {
    let tokenizer = byte_level_tokenizer_json();
    let spec = ModelSpec::tiny(Hash::of(&tokenizer));
    MetaPayload { spec, tokenizer }
}

/// The key that signs the tiny network's genesis.
pub(crate) fn operator_key() -> SigningKey {
    SigningKey::from_slice(&[1; 32]).expect("key")
}

/// The key that signs the test's new versions.
pub(crate) fn author_key() -> SigningKey {
    SigningKey::from_slice(&[7; 32]).unwrap()
}

pub(crate) struct Net {
    pub(crate) store: Store,
    pub(crate) spec_hash: Hash,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn tiny_net() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec_hash = init_tiny(&store);
    Net {
        store,
        spec_hash,
        _dir: dir,
    }
}

pub(crate) fn init_tiny(store: &Store) -> Hash {
    let blocks = genesis_blocks(
        &tiny_spec(),
        &mut RandomWeights { seed: 1 },
        &operator_key(),
    )
    .unwrap();
    let spec_hash = blocks[0].hash();
    init(store, blocks).unwrap();
    spec_hash
}

/// The expert's tensors as the tiny spec wants them, every element `value`.
pub(crate) fn expert_tensors(id: ExpertId, value: f32) -> Vec<(TensorDesc, Vec<u8>)> {
    let name = expert_group_name(id);
    let t = |w: &str, shape: [u64; 2]| {
        let n = (shape[0] * shape[1]) as usize;
        let desc = TensorDesc {
            name: format!("{name}.{w}.weight"),
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        (desc, f32_to_bytes(&vec![value; n]))
    };
    vec![t("w1", [16, 8]), t("w2", [8, 16]), t("w3", [16, 8])]
}

/// A new version of expert `id` on top of the current param head, building on its head.
pub(crate) fn expert_version(
    net: &Net,
    id: ExpertId,
    tensors: Vec<(TensorDesc, Vec<u8>)>,
) -> Block {
    let (height, prev) = net.store.head(ChainId::Param).unwrap().unwrap();
    let parent = net.store.expert_head(id).unwrap().unwrap();
    let prev_ts = net.store.header(&prev).unwrap().unwrap().timestamp_ms;
    let refs: Vec<(TensorDesc, &[u8])> = tensors
        .iter()
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    let payload = encode_tensors(&refs).unwrap();
    Block::new(
        ChainId::Param,
        height + 1,
        prev,
        vec![net.spec_hash, parent],
        BlockKind::Expert,
        BlockMeta {
            name: expert_group_name(id),
            expert: Some(id),
            tensors: tensors.into_iter().map(|(d, _)| d).collect(),
        },
        payload,
        &author_key(),
        prev_ts + 1000,
    )
}

/// Recomputes `payload_hash` and `payload_len` after a test edited the payload on purpose,
/// and signs the result.
pub(crate) fn reseal(block: &mut Block) {
    block.header.payload_hash = Hash::of(&block.payload);
    block.header.payload_len = block.payload.len() as u64;
    block.sign(&author_key());
}
