//! Blyan's peer network.
//!
//! Nodes find each other by network key, announce blocks by hash and pull them from whoever
//! holds them; every block from a peer is checked like a local one before it is stored, and a
//! peer that serves an invalid block is banned for a time that doubles with each offence.
//!
//! commonware (pinned to one exact version) provides the authenticated transport, the
//! runtimes and the simulated network; it appears only inside this crate. The rest of Blyan
//! sees [`BlockStore`] (what the engine needs from a node's blocks), [`Handle`] (what a node
//! tells the engine) and [`Snapshot`] (what it reports).

#![warn(missing_docs)]

mod engine;
mod identity;
mod launch;
mod store;
mod transport;
pub mod wire;

pub use engine::{Config, Engine, Handle, PeerInfo, PeerKey, Snapshot, Stats, answer};
pub use identity::{Bootstrap, Identity, check_binding, key_bytes, key_of_bytes, parse_key};
pub use launch::{FollowReport, JoinError, JoinReport, P2pSettings, SyncStatus, follow, join};
pub use store::{BlockStore, ChainStore, ImportError, SignedHeader};
pub use transport::{Http, Incoming, P2p, RPC_PATH, Transport};
pub use wire::Head;
