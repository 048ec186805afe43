//! The bad-input catalog: each way a block can be wrong gives its own error, and nothing
//! already stored changes.

use blyan_chain::dag::{CycleError, topo_order};
use blyan_chain::{
    Block, BlockError, BlockHeader, ChainId, DEPENDS_ON_MAX, HEADER_LEN_MAX, PAYLOAD_LEN_MAX,
    VerifyMode, sign_hash,
};
use blyan_primitives::{ExpertId, Hash, Signature, SigningKey, address_of};
use blyan_tensor::{DType, TensorDesc, f32_to_bytes};
use k256::U256;
use k256::elliptic_curve::Curve;
use k256::elliptic_curve::bigint::Encoding;

use crate::fixture::{Net, author_key, expert_tensors, expert_version, reseal, tiny_net};

const E: ExpertId = ExpertId::new(0, 1);
/// The order of the secp256k1 group.
const ORDER: U256 = k256::Secp256k1::ORDER;

/// Signs `block` as it is now (so the rule under test, not the signature, refuses it),
/// appends it, expects refusal with `code`, and checks the store did not change.
fn refused(net: &Net, mut block: Block, code: &str) -> BlockError {
    block.sign(&author_key());
    refused_as_signed(net, block, code)
}

/// Appends `block` with the signature it carries, expects refusal with `code`, and checks
/// the store did not change.
fn refused_as_signed(net: &Net, block: Block, code: &str) -> BlockError {
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
fn a_block_without_a_signature_is_refused() {
    let net = tiny_net();
    let mut b = good(&net);
    b.signature = None;
    refused_as_signed(&net, b, "missing_signature");
}

#[test]
fn a_block_signed_by_another_key_than_its_author_is_refused() {
    let net = tiny_net();
    let mut b = good(&net);
    let author = b.header.author;
    let intruder = SigningKey::from_slice(&[9; 32]).unwrap();
    b.signature = Some(sign_hash(&intruder, &b.hash()));
    let err = refused_as_signed(&net, b, "wrong_signer");
    assert_eq!(
        err,
        BlockError::WrongSigner {
            author,
            signer: address_of(&intruder)
        }
    );
}

#[test]
fn a_header_changed_after_signing_is_refused() {
    let net = tiny_net();
    let mut b = good(&net);
    b.header.timestamp_ms += 1;
    refused_as_signed(&net, b, "wrong_signer");
}

#[test]
fn a_signature_replayed_on_another_block_is_refused() {
    let net = tiny_net();
    let first = good(&net);
    // Another block by the same author, carrying the first block's signature.
    let mut other = expert_version(&net, E, expert_tensors(E, 0.25));
    assert_eq!(other.header.author, first.header.author);
    other.signature = first.signature;
    refused_as_signed(&net, other, "wrong_signer");
}

#[test]
fn a_high_s_signature_is_refused() {
    let net = tiny_net();
    let mut b = good(&net);
    // (r, n − s) with the recovery bit flipped verifies for the same key: the malleable twin.
    let mut sig = b.signature.unwrap().0;
    let s = U256::from_be_slice(&sig[32..64]);
    let twin = ORDER.wrapping_sub(&s);
    sig[32..64].copy_from_slice(&twin.to_be_bytes());
    sig[64] = 55 - sig[64];
    b.signature = Some(Signature(sig));
    refused_as_signed(&net, b, "high_s_signature");
}

#[test]
fn a_truncated_signature_is_refused() {
    let net = tiny_net();
    let b = good(&net);
    let sig = b.signature.unwrap().0;
    let err = Block::from_parts(&b.header.encode(), &sig[..64], b.payload.clone()).unwrap_err();
    assert_eq!(err.code(), "malformed_signature");
    // The same parts with all 65 bytes make the block that was signed.
    let whole = Block::from_parts(&b.header.encode(), &sig, b.payload.clone()).unwrap();
    assert_eq!(whole, b);
    net.store.append(whole).unwrap();
}

#[test]
fn a_signature_with_a_bad_recovery_byte_is_refused() {
    let net = tiny_net();
    let mut b = good(&net);
    let mut sig = b.signature.unwrap().0;
    sig[64] = 1;
    b.signature = Some(Signature(sig));
    refused_as_signed(&net, b, "bad_recovery_byte");
}

#[test]
fn a_signature_that_does_not_verify_is_refused() {
    let net = tiny_net();
    let mut b = good(&net);
    let mut sig = b.signature.unwrap().0;
    sig[..32].fill(0);
    b.signature = Some(Signature(sig));
    refused_as_signed(&net, b, "invalid_signature");
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
    second.sign(&author_key());
    let before = net.store.blocks(None).unwrap();
    let err = net.store.append_batch(vec![first, second]).unwrap_err();
    assert_eq!(err.block_error().unwrap().code(), "timestamp_before_prev");
    assert_eq!(net.store.blocks(None).unwrap(), before);
    assert!(net.store.verify(VerifyMode::Full, |_| {}).unwrap().is_ok());
}
