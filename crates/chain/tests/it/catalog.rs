//! The bad-input catalog: each way a block can be wrong gives its own error, and nothing
//! already stored changes.

use blyan_chain::dag::{CycleError, topo_order};
use blyan_chain::{
    Block, BlockError, BlockHeader, ChainId, DEPENDS_ON_MAX, HEADER_LEN_MAX, PAYLOAD_LEN_MAX,
    VerifyMode,
};
use blyan_primitives::{ExpertId, Hash};
use blyan_tensor::{DType, TensorDesc, f32_to_bytes};

use crate::fixture::{Net, expert_tensors, expert_version, reseal, tiny_net};

const E: ExpertId = ExpertId::new(0, 1);

/// Appends `block`, expects refusal with `code`, and checks the store did not change.
fn refused(net: &Net, block: Block, code: &str) -> BlockError {
    let before = net.store.blocks(None).unwrap();
    let head = net.store.expert_head(E).unwrap();
    let err = net.store.append(block).expect_err("block must be refused");
    let error = err
        .block_error()
        .unwrap_or_else(|| panic!("not a block error: {err}"))
        .clone();
    assert_eq!(error.code(), code, "{error}");
    assert_eq!(net.store.blocks(None).unwrap(), before, "the store changed");
    assert_eq!(net.store.expert_head(E).unwrap(), head);
    assert!(net.store.verify(VerifyMode::Full, |_| {}).unwrap().is_ok());
    error
}

fn good(net: &Net) -> Block {
    expert_version(net, E, expert_tensors(E, 0.5))
}

#[test]
fn a_good_block_is_accepted() {
    let net = tiny_net();
    let block = good(&net);
    let hash = net.store.append(block).unwrap();
    assert_eq!(net.store.expert_head(E).unwrap(), Some(hash));
    assert_eq!(net.store.expert_versions(E).unwrap().len(), 2);
}

#[test]
fn unknown_parent() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.depends_on.push(Hash::of(b"nobody"));
    refused(&net, b, "unknown_parent");
}

#[test]
fn unknown_prev() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.prev = Hash::of(b"nobody");
    refused(&net, b, "unknown_parent");
}

#[test]
fn cycle() {
    // Content addressing makes a cycle among real blocks unconstructible (a block would need
    // its own hash before it exists); the ordering of a batch still refuses cyclic input.
    let cyclic = vec![("a", vec!["c"]), ("b", vec!["a"]), ("c", vec!["b"])];
    assert!(matches!(topo_order(&cyclic), Err(CycleError { .. })));
    let error = BlockError::Cycle { block: Hash::ZERO };
    assert_eq!(error.code(), "cycle");
}

#[test]
fn wrong_height() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.height += 1;
    refused(&net, b, "wrong_height");
}

#[test]
fn wrong_prev() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.prev = net.store.at_height(ChainId::Param, 0).unwrap().unwrap();
    refused(&net, b, "wrong_prev");
}

#[test]
fn payload_hash_mismatch() {
    let net = tiny_net();
    let mut b = good(&net);
    let last = b.payload.len() - 1;
    b.payload[last] ^= 1;
    refused(&net, b, "payload_hash_mismatch");
}

#[test]
fn payload_len_mismatch() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.payload_len -= 1;
    refused(&net, b, "payload_len_mismatch");
}

#[test]
fn oversize_header() {
    let net = tiny_net();
    let mut b = good(&net);
    let filler = TensorDesc {
        name: "x".repeat(250),
        dtype: DType::F32,
        shape: vec![1],
    };
    b.header.meta.tensors = vec![filler; HEADER_LEN_MAX / 250 + 1];
    refused(&net, b, "header_too_large");
}

#[test]
fn malformed_or_oversized_header_bytes() {
    let net = tiny_net();
    let bytes = good(&net).header.encode();
    assert_eq!(
        BlockHeader::decode(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .code(),
        "malformed_header"
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        BlockHeader::decode(&trailing).unwrap_err().code(),
        "malformed_header"
    );
    let huge = vec![0u8; HEADER_LEN_MAX + 1];
    assert_eq!(
        BlockHeader::decode(&huge).unwrap_err().code(),
        "header_too_large"
    );
}

#[test]
fn unsupported_version() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.version = 2;
    refused(&net, b, "unsupported_version");
}

#[test]
fn oversize_payload() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.payload_len = PAYLOAD_LEN_MAX + 1;
    refused(&net, b, "payload_too_large");
}

#[test]
fn too_many_parents() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header
        .depends_on
        .extend((0..DEPENDS_ON_MAX as u8).map(|i| Hash([i; 32])));
    refused(&net, b, "too_many_parents");
}

#[test]
fn duplicate_parent() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.depends_on.push(net.spec_hash);
    refused(&net, b, "duplicate_parent");
}

#[test]
fn shape_disagrees_with_spec() {
    let net = tiny_net();
    let mut tensors = expert_tensors(E, 0.5);
    tensors[0].0.shape = vec![8, 16];
    let b = expert_version(&net, E, tensors);
    let err = refused(&net, b, "spec_mismatch");
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn dtype_disagrees_with_spec() {
    let net = tiny_net();
    let mut tensors = expert_tensors(E, 0.5);
    tensors[1].0.dtype = DType::F16;
    let half = tensors[1].1.len() / 2;
    tensors[1].1.truncate(half);
    let b = expert_version(&net, E, tensors);
    let err = refused(&net, b, "spec_mismatch");
    assert!(err.to_string().contains("dtype"), "{err}");
}

#[test]
fn nan_in_weights() {
    let net = tiny_net();
    let mut tensors = expert_tensors(E, 0.5);
    tensors[2].1[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = refused(&net, expert_version(&net, E, tensors), "non_finite");
    assert_eq!(
        err,
        BlockError::NonFinite {
            tensor: "model.layers.0.block_sparse_moe.experts.1.w3.weight".into(),
            index: 2
        }
    );
}

#[test]
fn infinity_in_weights() {
    let net = tiny_net();
    let mut tensors = expert_tensors(E, 0.5);
    tensors[0].1 = f32_to_bytes(&[f32::INFINITY; 128]);
    refused(&net, expert_version(&net, E, tensors), "non_finite");
}

#[test]
fn duplicate_block() {
    let net = tiny_net();
    let b = good(&net);
    net.store.append(b.clone()).unwrap();
    refused(&net, b, "duplicate");
}

#[test]
fn kind_on_the_wrong_chain() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.chain = ChainId::Meta;
    refused(&net, b, "wrong_chain");
}

#[test]
fn parameter_block_without_spec() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.depends_on.retain(|h| *h != net.spec_hash);
    refused(&net, b, "missing_spec");
}

#[test]
fn new_version_without_parent_version() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.depends_on.truncate(1);
    refused(&net, b, "missing_parent_version");
}

#[test]
fn group_not_in_spec() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.meta.name = "model.layers.9.block_sparse_moe.experts.0".into();
    refused(&net, b, "unknown_group");
}

#[test]
fn header_tensors_disagree_with_payload() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.meta.tensors.pop();
    refused(&net, b, "tensor_list_mismatch");
}

#[test]
fn payload_not_safetensors() {
    let net = tiny_net();
    let mut b = good(&net);
    b.payload = b"not a tensor file".to_vec();
    reseal(&mut b);
    refused(&net, b, "bad_tensor_payload");
}

#[test]
fn timestamp_before_prev() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.timestamp_ms = 0;
    refused(&net, b, "timestamp_before_prev");
}

#[test]
fn a_bad_block_in_a_batch_stores_nothing() {
    let net = tiny_net();
    let first = good(&net);
    let mut second = first.clone();
    second.header.height += 1;
    second.header.prev = first.hash();
    second.header.depends_on = vec![net.spec_hash, first.hash()];
    // Valid on its own; refused only against the state the first block creates.
    second.header.timestamp_ms = 0;
    let before = net.store.blocks(None).unwrap();
    let err = net.store.append_batch(vec![first, second]).unwrap_err();
    assert_eq!(err.block_error().unwrap().code(), "timestamp_before_prev");
    assert_eq!(net.store.blocks(None).unwrap(), before);
    assert!(net.store.verify(VerifyMode::Full, |_| {}).unwrap().is_ok());
}
