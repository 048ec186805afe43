//! The node: configuration, the served model and its engine, the Agent Checker and metrics.
//!
//! A [`Node`] owns the block store, the tokenizer and the model being served (with its
//! batching engine), and keeps the node's books: per-expert routing counts, Prometheus
//! [`Metrics`] and the [`AgentChecker`]'s readiness. The HTTP layer (`blyan-api`) and the CLI
//! drive it; nothing here knows about HTTP.

#![warn(missing_docs)]

mod billing;
mod checker;
mod config;
mod error;
pub mod hosting;
mod metrics;
mod node;
mod payments;
pub mod pol;
mod registry;
mod wallet;

pub use checker::{
    AgentChecker, ComponentHealth, ComponentReport, Health, SAVE_EVERY, Stage, StageChange,
};
pub use config::{ConfigLayer, KeyPassphrase, LISTEN_DEFAULT, NodeConfig, SecretText};
pub use error::NodeError;
pub use metrics::Metrics;
pub use node::{
    BlockPage, CompletionRequest, ExpertInfo, Generation, NetworkView, Node, NodeInfo,
    PAGE_LIMIT_MAX,
};
pub use payments::{Checkout, WebhookReply, verify_stripe_signature};
pub use registry::admission_block;
pub use wallet::{LoginNonce, PriceTier, WalletSession, WalletSettings};

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
