//! Integration tests of the HTTP API: router tests through `oneshot`, and real-socket tests
//! for streaming, disconnects, load and shutdown.

mod billing;
mod limits;
mod pol;
mod remote;
mod roles;
mod router;
mod socket;
mod wallet;

use std::sync::Arc;

use blyan_chain::{
    Block, BlockKind, BlockMeta, ChainId, PolMode, Store, Verdict, genesis, submission_digest,
};
use blyan_node::{Node, NodeConfig};
use blyan_primitives::{ExpertId, Hash, Signature, SigningKey, address_of};
use tempfile::TempDir;

/// A node over a fresh untrained genesis network in a temporary directory.
pub(crate) struct Net {
    pub(crate) dir: TempDir,
    pub(crate) node: Arc<Node>,
}

/// A data directory holding the test network's chain and its operator's key, no ledger yet.
pub(crate) fn network_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path().join("chain")).expect("store");
        genesis::init(
            &store,
            genesis::random_genesis(7, &test_key()).expect("genesis"),
        )
        .expect("init");
    }
    // The node's key is the one that made the network: this node operates it.
    blyan_ledger::Keystore::new(dir.path().join(blyan_ledger::KEYSTORE_DIR), "")
        .set_node_key(&test_key())
        .expect("node key");
    dir
}

pub(crate) fn net_with(config: NodeConfig) -> Net {
    let dir = network_dir();
    let node = Node::open(dir.path(), config, 1_700_000_000_000).expect("node");
    Net {
        dir,
        node: Arc::new(node),
    }
}

pub(crate) fn net() -> Net {
    net_with(NodeConfig {
        max_batch: 8,
        ..NodeConfig::default()
    })
}

/// The key that signs the test network's blocks.
pub(crate) fn test_key() -> SigningKey {
    SigningKey::from_slice(&[1; 32]).expect("key")
}

/// Appends a new version of expert `id` (a copy of its head's payload) and returns its hash.
pub(crate) fn new_version(store: &Store, id: ExpertId) -> Hash {
    new_version_by(store, id, None)
}

/// Like [`new_version`]; with a contributor, the version depends on an accepting verdict
/// that names them (a verdict block written here directly, not by an evaluation).
pub(crate) fn new_version_by(
    store: &Store,
    id: ExpertId,
    contributor: Option<&SigningKey>,
) -> Hash {
    let parent = store.expert_head(id).expect("head").expect("expert");
    let parent_header = store.header(&parent).expect("header").expect("present");
    let payload = store.payload(&parent).expect("payload").to_vec();
    let (spec, _) = store.meta().expect("meta").expect("spec");
    let mut depends_on = vec![spec, parent];
    if let Some(contributor) = contributor {
        let (height, prev) = store.head(ChainId::Proof).expect("head").expect("proof");
        let network = store
            .at_height(ChainId::Meta, 0)
            .expect("meta")
            .expect("network");
        let candidate = Hash::of(&payload);
        let digest = submission_digest(&network, &candidate, &parent);
        let verdict = Verdict {
            expert: id,
            candidate,
            parent,
            param_head: store.head(ChainId::Param).expect("head").expect("param").1,
            contributor: address_of(contributor),
            contributor_signature: Signature::sign(contributor, &digest.0),
            mode: PolMode::Pol,
            pow_nonce: 0,
            replicates: None,
            pool_root: Hash::of(b"pool"),
            seed: Hash::of(b"seed"),
            items: vec![0, 1],
            evaluator_version: 1,
            alpha_percent: 1,
            min_effect_micro: 0,
            mixture_tolerance_bps: 0,
            stage_items: 2,
            stages: 1,
            n: 2,
            sum: 2,
            sum_sq: 2,
            parent_sum: 2,
            mixture_parent: 2,
            mixture_child: 1,
            accepted: true,
            reason: "accepted".into(),
            gain_bps: 1,
            reward: 0,
            vesting: 0,
            validator_reward: 0,
            leak_margin_micro: 0,
            validation_items: vec![],
            validation_n: 0,
            validation_sum: 0,
            validation_sum_sq: 0,
        };
        let prev_ts = store
            .header(&prev)
            .expect("header")
            .expect("present")
            .timestamp_ms;
        let block = Block::new(
            ChainId::Proof,
            height + 1,
            prev,
            vec![parent],
            BlockKind::Verdict,
            BlockMeta {
                name: "verdict".into(),
                ..BlockMeta::default()
            },
            verdict.encode(),
            &test_key(),
            prev_ts + 1,
        );
        depends_on.push(store.append(block).expect("append verdict"));
    }
    let (height, prev) = store.head(ChainId::Param).expect("head").expect("param");
    let block = Block::new(
        ChainId::Param,
        height + 1,
        prev,
        depends_on,
        parent_header.kind,
        parent_header.meta.clone(),
        payload,
        &test_key(),
        parent_header.timestamp_ms + 1,
    );
    store.append(block).expect("append")
}
