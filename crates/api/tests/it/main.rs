//! Integration tests of the HTTP API: router tests through `oneshot`, and real-socket tests
//! for streaming, disconnects, load and shutdown.

mod billing;
mod limits;
mod pol;
mod router;
mod socket;

use std::sync::Arc;

use blyan_chain::{Block, ChainId, Store, genesis};
use blyan_node::{Node, NodeConfig};
use blyan_primitives::{Address, ExpertId, Hash};
use tempfile::TempDir;

/// A node over a fresh untrained genesis network in a temporary directory.
pub(crate) struct Net {
    pub(crate) dir: TempDir,
    pub(crate) node: Arc<Node>,
}

pub(crate) fn net_with(config: NodeConfig) -> Net {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path().join("chain")).expect("store");
        genesis::init(&store, genesis::random_genesis(7).expect("genesis")).expect("init");
    }
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

/// Appends a new version of expert `id` (a copy of its head's payload) and returns its hash.
pub(crate) fn new_version(store: &Store, id: ExpertId) -> Hash {
    new_version_by(store, id, Address::ZERO)
}

/// Like [`new_version`], authored by `author`.
pub(crate) fn new_version_by(store: &Store, id: ExpertId, author: Address) -> Hash {
    let parent = store.expert_head(id).expect("head").expect("expert");
    let parent_header = store.header(&parent).expect("header").expect("present");
    let payload = store.payload(&parent).expect("payload").to_vec();
    let (height, prev) = store.head(ChainId::Param).expect("head").expect("param");
    let (spec, _) = store.meta().expect("meta").expect("spec");
    let block = Block::new(
        ChainId::Param,
        height + 1,
        prev,
        vec![spec, parent],
        parent_header.kind,
        parent_header.meta.clone(),
        payload,
        author,
        parent_header.timestamp_ms + 1,
    );
    store.append(block).expect("append")
}
