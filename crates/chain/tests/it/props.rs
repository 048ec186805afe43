//! Property tests: canonical encoding, decoder robustness, DAG ordering.

use blyan_chain::dag::topo_order;
use blyan_chain::{BlockHeader, BlockKind, BlockMeta, ChainId, FORMAT_VERSION};
use blyan_primitives::{Address, ExpertId, Hash};
use blyan_tensor::{DType, TensorDesc};
use proptest::prelude::*;

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn header() -> impl Strategy<Value = BlockHeader> {
    let chain = prop_oneof![
        Just(ChainId::Meta),
        Just(ChainId::Param),
        Just(ChainId::Dataset),
        Just(ChainId::Proof)
    ];
    let kind = prop_oneof![
        Just(BlockKind::Spec),
        Just(BlockKind::Expert),
        Just(BlockKind::Router),
        Just(BlockKind::Dense),
        Just(BlockKind::ChainGenesis)
    ];
    let dtype = prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)];
    let desc = (
        "[a-z.0-9]{1,40}",
        dtype,
        prop::collection::vec(any::<u64>(), 0..4),
    )
        .prop_map(|(name, dtype, shape)| TensorDesc { name, dtype, shape });
    let meta = (
        "\\PC{0,30}",
        prop::option::of((any::<u16>(), any::<u16>())),
        prop::collection::vec(desc, 0..4),
    )
        .prop_map(|(name, e, tensors)| BlockMeta {
            name,
            expert: e.map(|(l, x)| ExpertId::new(l, x)),
            tensors,
        });
    (
        (
            any::<u16>(),
            chain,
            any::<u64>(),
            hash(),
            prop::collection::vec(hash(), 0..5),
        ),
        (
            kind,
            meta,
            hash(),
            any::<u64>(),
            any::<[u8; 20]>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (version, chain, height, prev, depends_on),
                (kind, meta, payload_hash, payload_len, author, ts),
            )| {
                BlockHeader {
                    version,
                    chain,
                    height,
                    prev,
                    depends_on,
                    kind,
                    meta,
                    payload_hash,
                    payload_len,
                    author: Address(author),
                    timestamp_ms: ts,
                }
            },
        )
}

proptest! {
    #[test]
    fn header_encoding_round_trips(h in header()) {
        let bytes = h.encode();
        let back = BlockHeader::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &h);
        prop_assert_eq!(back.hash(), h.hash());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_is_canonical(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(h) = BlockHeader::decode(&bytes) {
            // Whatever decodes re-encodes to exactly the same bytes: one value, one encoding.
            prop_assert_eq!(h.encode(), bytes);
        }
    }

    #[test]
    fn mutated_headers_never_panic(h in header(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = h.encode();
        for (i, x) in flips {
            let n = bytes.len();
            bytes[i % n] ^= x;
        }
        if let Ok(back) = BlockHeader::decode(&bytes) {
            prop_assert_eq!(back.encode(), bytes);
        }
    }

    #[test]
    fn random_dags_keep_topological_order(
        parents in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..4), 1..60),
        seed in any::<u64>(),
    ) {
        // Node i may depend on any node before it, so the graph is acyclic by construction.
        let mut nodes: Vec<(usize, Vec<usize>)> = parents
            .iter()
            .enumerate()
            .map(|(i, ps)| (i, if i == 0 { vec![] } else { ps.iter().map(|p| p.index(i)).collect() }))
            .collect();
        // Shuffle deterministically from the seed.
        let mut state = seed | 1;
        for i in (1..nodes.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            nodes.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let order = topo_order(&nodes).unwrap();
        prop_assert_eq!(order.len(), nodes.len());
        let mut position = vec![0; nodes.len()];
        for (pos, &i) in order.iter().enumerate() {
            position[nodes[i].0] = pos;
        }
        for (id, ps) in &nodes {
            for p in ps {
                prop_assert!(position[*p] < position[*id], "{p} after {id}");
            }
        }
    }
}

#[test]
fn version_is_in_the_first_two_bytes() {
    let h = BlockHeader {
        version: FORMAT_VERSION,
        chain: ChainId::Param,
        height: 0,
        prev: Hash::ZERO,
        depends_on: vec![],
        kind: BlockKind::Dense,
        meta: BlockMeta::default(),
        payload_hash: Hash::ZERO,
        payload_len: 0,
        author: Address::ZERO,
        timestamp_ms: 0,
    };
    assert_eq!(&h.encode()[..3], &[1, 0, 1]);
}
