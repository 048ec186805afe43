//! Test vectors of the canonical header encoding, as documented in docs/FORMAT.md.
//! If one of these changes, the block format changed: bump FORMAT_VERSION and the docs.

use blyan_chain::{BlockHeader, BlockKind, BlockMeta, ChainId, FORMAT_VERSION};
use blyan_primitives::{Address, ExpertId, Hash};
use blyan_tensor::{DType, TensorDesc};

pub(crate) fn vector_header() -> BlockHeader {
    BlockHeader {
        version: FORMAT_VERSION,
        chain: ChainId::Param,
        height: 5,
        prev: Hash([0x11; 32]),
        depends_on: vec![Hash([0x22; 32])],
        kind: BlockKind::Expert,
        meta: BlockMeta {
            name: "e".into(),
            expert: Some(ExpertId::new(1, 2)),
            tensors: vec![TensorDesc {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
            }],
        },
        payload_hash: Hash([0x33; 32]),
        payload_len: 24,
        author: Address([0x44; 20]),
        timestamp_ms: 1_795_000_000_000,
    }
}

pub(crate) const VECTOR_HEX: &str = concat!(
    "0100",                                                             // version u16
    "01",                                                               // chain: param
    "0500000000000000",                                                 // height u64
    "1111111111111111111111111111111111111111111111111111111111111111", // prev
    "01000000",                                                         // depends_on: 1 entry
    "2222222222222222222222222222222222222222222222222222222222222222",
    "01", // kind: expert
    "01000000",
    "65", // meta.name = "e"
    "01",
    "0100",
    "0200",     // meta.expert = Some(1.2)
    "01000000", // meta.tensors: 1 entry
    "01000000",
    "77", // name = "w"
    "00", // dtype F32
    "02000000",
    "0200000000000000",
    "0300000000000000", // shape [2, 3]
    "3333333333333333333333333333333333333333333333333333333333333333", // payload_hash
    "1800000000000000", // payload_len = 24
    "4444444444444444444444444444444444444444", // author
    "005e56eea1010000", // timestamp_ms = 1795000000000 = 0x1a1ee565e00
);

#[test]
fn header_vector() {
    let h = vector_header();
    assert_eq!(hex(&h.encode()), VECTOR_HEX);
    assert_eq!(BlockHeader::decode(&from_hex(VECTOR_HEX)).unwrap(), h);
    assert_eq!(h.hash().to_string(), VECTOR_HASH);
}

pub(crate) const VECTOR_HASH: &str =
    "00970a2ccdc41d580b7665fd1f116505c5b5cd40687e728ca1479cda227530ac";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
