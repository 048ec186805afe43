//! Test vectors of the canonical header encoding, as documented in docs/FORMAT.md.
//! If one of these changes, the block format changed: bump FORMAT_VERSION and the docs.

use blyan_chain::{
    Block, BlockHeader, BlockKind, BlockMeta, ChainId, FORMAT_VERSION, check_signature, sign_hash,
};
use blyan_primitives::{Address, ExpertId, Hash, Signature, SigningKey, address_of};
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

/// The secret key of the signed vector (the web3.js documentation's example account,
/// address `0x2c7536E3605D9C16a7a3D7b1898e529396a65c23`).
const SIGNED_VECTOR_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
/// The vector header with that address as author: its hash, and the signature an Ethereum
/// wallet gives for `personal_sign` of the hash's 32 bytes (computed with Python's
/// eth-account, `Account.sign_message(encode_defunct(primitive=hash), key)`).
const SIGNED_VECTOR_HASH: &str = "8cc8c348c2e983994bd84238c000da5bf1358081e224ff29836e0c09c30e026a";
const SIGNED_VECTOR_SIGNATURE: &str = concat!(
    "0x2a0bf95d124179514534f55ae1c0f010c9b966dc7c4db3014109ece9a54f812e",
    "6d4c12fe1f9db71a28883000917f63a7f47ad2a9a3168178eae94796badf0e82",
    "1b"
);

#[test]
fn signed_header_vector() {
    let key = SigningKey::from_slice(&from_hex(SIGNED_VECTOR_KEY)).unwrap();
    let address: Address = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
        .parse()
        .unwrap();
    assert_eq!(address_of(&key), address);
    let h = BlockHeader {
        author: address,
        ..vector_header()
    };
    assert_eq!(h.hash().to_string(), SIGNED_VECTOR_HASH);
    let signature: Signature = SIGNED_VECTOR_SIGNATURE.parse().unwrap();
    assert_eq!(sign_hash(&key, &h.hash()), signature);
    check_signature(&h.hash(), &address, Some(&signature)).unwrap();
    // What Block::new and Block::sign write.
    let mut block = Block {
        header: vector_header(),
        payload: Vec::new(),
        signature: None,
    };
    block.sign(&key);
    assert_eq!(block.header, h);
    assert_eq!(block.signature, Some(signature));
}
