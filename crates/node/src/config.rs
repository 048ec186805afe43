//! Node settings, assembled in layers: defaults < config file < environment < flags.
//!
//! Every layer is a [`ConfigLayer`] of optional values; [`NodeConfig::apply`] lays one over
//! the settings so far. The TOML file and the command line produce layers; this crate never
//! reads the environment or argv itself.

use std::net::SocketAddr;

use blyan_model::Precision;
use serde::{Deserialize, Serialize};

use crate::NodeError;

/// The address the node listens on unless told otherwise.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8420";
/// Largest request body the API accepts by default.
const BODY_LIMIT_BYTES_DEFAULT: usize = 1 << 20;
/// Upper bound on any configured body limit.
const BODY_LIMIT_BYTES_MAX: usize = 64 << 20;
/// Most sequences decoded together by default.
const MAX_BATCH_DEFAULT: usize = 64;
/// Upper bound on the engine batch.
const MAX_BATCH_MAX: usize = 256;
/// Generations in flight (running or queued) beyond which new ones are refused.
const MAX_ACTIVE_DEFAULT: usize = 256;
/// Upper bound on `max_active`.
const MAX_ACTIVE_MAX: usize = 4096;
/// Tokens generated when a request names no `max_tokens`.
const MAX_TOKENS_DEFAULT: u32 = 128;
/// Largest TOML config file read.
pub(crate) const CONFIG_FILE_LEN_MAX: usize = 64 << 10;

/// The passphrase of the node's keystore: a secret setting, never printed, never serialized,
/// zeroized when dropped.
pub type KeyPassphrase = SecretText;

/// A secret setting: never printed, never serialized, zeroized when dropped.
#[derive(Clone, Default, PartialEq)]
pub struct SecretText(zeroize::Zeroizing<String>);

impl SecretText {
    /// Wraps `text`.
    pub fn new(text: String) -> SecretText {
        SecretText(zeroize::Zeroizing::new(text))
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether none was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "SecretText(empty)"
        } else {
            "SecretText(…)"
        })
    }
}

/// The node's settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeConfig {
    /// Address of the HTTP API and web UI.
    pub listen: SocketAddr,
    /// Precision of the served weights.
    pub precision: Precision,
    /// Byte budget of the expert cache, in MiB.
    pub expert_cache_mib: usize,
    /// Most sequences the engine decodes together; more wait in its queue.
    pub max_batch: usize,
    /// Engine lanes, each decoding its share of the batch on a thread of its own; `0`: one
    /// per core. (More lanes than cores let one lane compute while another waits for expert
    /// hosts, but on a 2-core machine that shares its cores with the hosts they cost more
    /// than they gave: docs/BENCHMARKS.md.)
    pub lanes: usize,
    /// Most generations in flight (decoding or queued); more are refused with `overloaded`.
    pub max_active: usize,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// Tokens generated when a request does not say.
    pub max_tokens_default: u32,
    /// Seconds between Agent Checker probes.
    pub probe_interval_s: u64,
    /// Seconds in-flight generations may run on after a shutdown signal before they are
    /// cancelled.
    pub shutdown_grace_s: u64,
    /// PostgreSQL URL of the ledger (`postgres://…`); the SQLite file in the data directory
    /// when absent. Never serialized: it may hold a password.
    #[serde(skip)]
    pub ledger_url: Option<String>,
    /// The passphrase that opens the keystore (`BLYAN_KEY_PASSPHRASE`, a file or the prompt;
    /// empty when none is given). Never serialized.
    #[serde(skip)]
    pub key_passphrase: KeyPassphrase,
    /// The account billed for requests from loopback addresses that bring no API key (a name
    /// such as `operator`, or an address). Empty: every request needs a key.
    pub loopback_account: String,
    /// Seconds between anchoring rounds of new ledger postings on the chain (0: never; anchor
    /// with `blyan ledger anchor`).
    pub anchor_interval_s: u64,
    /// Generating requests a minute per API key, sustained (0: no limit).
    pub rate_limit_key_per_min: u32,
    /// Generating requests one API key may make at once before the minute rate applies.
    pub rate_limit_key_burst: u32,
    /// Generating requests a minute per client network (an IPv4 address or an IPv6 /64),
    /// sustained; loopback is exempt (0: no limit).
    pub rate_limit_ip_per_min: u32,
    /// Generating requests one client network may make at once.
    pub rate_limit_ip_burst: u32,
    /// Seconds a request may take until its response starts (a streamed body may flow on
    /// after); over it `408 request_timeout`. A submission's evaluation gets
    /// `pol_request_timeout_s` instead (0: no limit).
    pub request_timeout_s: u64,
    /// Seconds a `POST /pol/validate` may take (its evaluation runs to the end either way, and
    /// its verdict is on chain P and `/pol/status`).
    pub pol_request_timeout_s: u64,
    /// Seconds a connection may take to send a request's headers (from its first byte, or
    /// from the end of the previous response on a kept-alive connection); over it the
    /// connection is closed, so slow senders cannot hold connections open.
    pub header_read_timeout_s: u64,
    /// Verdict recomputations (`GET /pol/proofs/{h}/verify`, seconds of CPU each) a minute per
    /// caller: per API key, and per client network (loopback exempt) (0: no limit).
    pub rate_limit_verify_per_min: u32,
    /// Verdict recomputations one caller may ask for at once.
    pub rate_limit_verify_burst: u32,
    /// Sync requests (`POST /net/v1/rpc`: a status, a page of hashes, a header or a chunk of
    /// up to 1 MiB) a minute per client network, loopback exempt (0: no limit).
    pub rate_limit_sync_per_min: u32,
    /// Sync requests one client network may make at once.
    pub rate_limit_sync_burst: u32,
    /// Peers this node follows, each `KEY@HOST:PORT` (a peer's network key and its API
    /// address): their blocks are pulled, checked and stored as they appear. Empty: the
    /// node runs alone.
    pub peers: Vec<String>,
    /// Where the authenticated p2p network listens (admitted nodes push blocks to each other
    /// over it); none: the node only pulls from its peers' HTTP read path.
    pub p2p_listen: Option<SocketAddr>,
    /// Where other nodes reach the p2p listener [default: `p2p_listen`].
    pub p2p_dialable: Option<SocketAddr>,
    /// Proof of Learning (the `pol_*` keys).
    pub pol: crate::pol::PolSettings,
    /// Wallet login and card top-ups (`public_url`, `siwe_*`, `session_ttl_s`, `stripe_*`,
    /// `price_tiers`).
    pub wallet: crate::wallet::WalletSettings,
    /// The experts this node computes itself (`0.*,1.0-1.3`); the others are asked of the
    /// peers that host them. None: every expert, here.
    pub experts: Option<crate::hosting::ExpertSet>,
    /// Share of remote expert answers recomputed here to check them, parts per million
    /// [default: 20000, 2%]; a wrong one bans its host and is kept as evidence.
    pub expert_check_ppm: u32,
    /// API addresses (`HOST:PORT`) of nodes asked to compute the experts this one does not,
    /// besides its peers.
    pub expert_hosts: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            listen: LISTEN_DEFAULT
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8420))),
            precision: Precision::Int8,
            expert_cache_mib: 256,
            max_batch: MAX_BATCH_DEFAULT,
            lanes: 0,
            max_active: MAX_ACTIVE_DEFAULT,
            body_limit_bytes: BODY_LIMIT_BYTES_DEFAULT,
            max_tokens_default: MAX_TOKENS_DEFAULT,
            probe_interval_s: 10,
            shutdown_grace_s: 10,
            ledger_url: None,
            key_passphrase: KeyPassphrase::default(),
            loopback_account: blyan_ledger::OPERATOR.to_owned(),
            anchor_interval_s: 60,
            rate_limit_key_per_min: 600,
            rate_limit_key_burst: 60,
            rate_limit_ip_per_min: 600,
            rate_limit_ip_burst: 60,
            request_timeout_s: 60,
            pol_request_timeout_s: 900,
            header_read_timeout_s: 30,
            rate_limit_verify_per_min: 6,
            rate_limit_verify_burst: 2,
            rate_limit_sync_per_min: 6000,
            rate_limit_sync_burst: 600,
            peers: Vec::new(),
            p2p_listen: None,
            p2p_dialable: None,
            pol: crate::pol::PolSettings::default(),
            wallet: crate::wallet::WalletSettings::default(),
            experts: None,
            expert_check_ppm: crate::hosting::CHECK_PPM_DEFAULT,
            expert_hosts: Vec::new(),
        }
    }
}

/// One layer of settings: every value optional. The TOML config file has exactly these keys.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// See [`NodeConfig::listen`].
    pub listen: Option<SocketAddr>,
    /// `f32` or `int8`.
    pub precision: Option<String>,
    /// See [`NodeConfig::expert_cache_mib`].
    pub expert_cache_mib: Option<usize>,
    /// See [`NodeConfig::max_batch`].
    pub max_batch: Option<usize>,
    /// See [`NodeConfig::lanes`].
    pub lanes: Option<usize>,
    /// See [`NodeConfig::max_active`].
    pub max_active: Option<usize>,
    /// See [`NodeConfig::body_limit_bytes`].
    pub body_limit_bytes: Option<usize>,
    /// See [`NodeConfig::max_tokens_default`].
    pub max_tokens_default: Option<u32>,
    /// See [`NodeConfig::probe_interval_s`].
    pub probe_interval_s: Option<u64>,
    /// See [`NodeConfig::shutdown_grace_s`].
    pub shutdown_grace_s: Option<u64>,
    /// See [`NodeConfig::ledger_url`].
    pub ledger_url: Option<String>,
    /// See [`NodeConfig::loopback_account`].
    pub loopback_account: Option<String>,
    /// See [`NodeConfig::anchor_interval_s`].
    pub anchor_interval_s: Option<u64>,
    /// See [`NodeConfig::rate_limit_key_per_min`].
    pub rate_limit_key_per_min: Option<u32>,
    /// See [`NodeConfig::rate_limit_key_burst`].
    pub rate_limit_key_burst: Option<u32>,
    /// See [`NodeConfig::rate_limit_ip_per_min`].
    pub rate_limit_ip_per_min: Option<u32>,
    /// See [`NodeConfig::rate_limit_ip_burst`].
    pub rate_limit_ip_burst: Option<u32>,
    /// See [`NodeConfig::request_timeout_s`].
    pub request_timeout_s: Option<u64>,
    /// See [`NodeConfig::pol_request_timeout_s`].
    pub pol_request_timeout_s: Option<u64>,
    /// See [`NodeConfig::header_read_timeout_s`].
    pub header_read_timeout_s: Option<u64>,
    /// See [`NodeConfig::rate_limit_verify_per_min`].
    pub rate_limit_verify_per_min: Option<u32>,
    /// See [`NodeConfig::rate_limit_verify_burst`].
    pub rate_limit_verify_burst: Option<u32>,
    /// See [`NodeConfig::rate_limit_sync_per_min`].
    pub rate_limit_sync_per_min: Option<u32>,
    /// See [`NodeConfig::rate_limit_sync_burst`].
    pub rate_limit_sync_burst: Option<u32>,
    /// See [`NodeConfig::peers`].
    pub peers: Option<Vec<String>>,
    /// See [`NodeConfig::p2p_listen`].
    pub p2p_listen: Option<SocketAddr>,
    /// See [`NodeConfig::p2p_dialable`].
    pub p2p_dialable: Option<SocketAddr>,
    /// `pol`, `hybrid` or `pow`.
    pub pol_mode: Option<String>,
    /// Significance level, percent: 1 or 5.
    pub pol_alpha_percent: Option<u8>,
    /// Minimum mean gain per position of the items routed to the expert, micro-nats.
    pub pol_min_effect_micro: Option<i64>,
    /// The contamination check's margin, micro-nats per position.
    pub pol_leak_margin_micro: Option<i64>,
    /// Largest mixture regression tolerated, basis points.
    pub pol_mixture_tolerance_bps: Option<u32>,
    /// Items per stage of a sequential evaluation.
    pub pol_stage_items: Option<usize>,
    /// Most stages one evaluation takes (1 to 4).
    pub pol_stages: Option<u8>,
    /// Largest relative change of an expert, millionths of the parent's norm.
    pub pol_delta_norm_max_ppm: Option<u64>,
    /// Leading zero bits of the hybrid-mode stamp.
    pub pol_pow_bits: Option<u32>,
    /// Evaluator threads (0: one per core).
    pub pol_threads: Option<usize>,
    /// Items per rewarded validation batch.
    pub pol_batch_items: Option<usize>,
    /// Replicate pending acceptances after each verdict.
    pub pol_auto_replicate: Option<bool>,
    /// The fee an account pays per evaluated submission, decimal BLY (`"0"`: none).
    pub pol_submission_fee: Option<String>,
    /// See [`crate::wallet::WalletSettings::public_url`].
    pub public_url: Option<String>,
    /// See [`crate::wallet::WalletSettings::siwe_chain_id`].
    pub siwe_chain_id: Option<u64>,
    /// See [`crate::wallet::WalletSettings::session_ttl_s`].
    pub session_ttl_s: Option<u64>,
    /// Stripe's secret API key (`BLYAN_STRIPE_API_KEY`).
    pub stripe_api_key: Option<String>,
    /// The signing secret of Stripe's webhook endpoint (`BLYAN_STRIPE_WEBHOOK_SECRET`).
    pub stripe_webhook_secret: Option<String>,
    /// See [`crate::wallet::WalletSettings::stripe_api_base`].
    pub stripe_api_base: Option<String>,
    /// See [`crate::wallet::WalletSettings::stripe_tolerance_s`].
    pub stripe_tolerance_s: Option<u64>,
    /// See [`crate::wallet::WalletSettings::price_tiers`].
    pub price_tiers: Option<Vec<crate::wallet::PriceTier>>,
    /// See [`NodeConfig::experts`].
    pub experts: Option<String>,
    /// See [`NodeConfig::expert_check_ppm`].
    pub expert_check_ppm: Option<u32>,
    /// See [`NodeConfig::expert_hosts`].
    pub expert_hosts: Option<Vec<String>>,
}

impl ConfigLayer {
    /// Parses a TOML config file. Unknown keys are errors, so a typo is not silently ignored.
    pub fn from_toml(text: &str) -> Result<ConfigLayer, NodeError> {
        if text.len() > CONFIG_FILE_LEN_MAX {
            return Err(NodeError::Config(format!(
                "config file is {} bytes; at most {CONFIG_FILE_LEN_MAX} are read",
                text.len()
            )));
        }
        toml::from_str(text).map_err(|e| NodeError::Config(e.message().to_owned()))
    }
}

impl NodeConfig {
    /// Lays `layer` over these settings and checks the result.
    pub fn apply(&mut self, layer: &ConfigLayer) -> Result<(), NodeError> {
        if let Some(v) = layer.listen {
            self.listen = v;
        }
        if let Some(v) = &layer.precision {
            self.precision = v.parse().map_err(NodeError::Config)?;
        }
        if let Some(v) = layer.expert_cache_mib {
            self.expert_cache_mib = v;
        }
        if let Some(v) = layer.max_batch {
            self.max_batch = v;
        }
        if let Some(v) = layer.lanes {
            self.lanes = v;
        }
        if let Some(v) = layer.max_active {
            self.max_active = v;
        }
        if let Some(v) = layer.body_limit_bytes {
            self.body_limit_bytes = v;
        }
        if let Some(v) = layer.max_tokens_default {
            self.max_tokens_default = v;
        }
        if let Some(v) = layer.probe_interval_s {
            self.probe_interval_s = v;
        }
        if let Some(v) = layer.shutdown_grace_s {
            self.shutdown_grace_s = v;
        }
        if let Some(v) = &layer.ledger_url {
            self.ledger_url = Some(v.clone());
        }
        if let Some(v) = &layer.loopback_account {
            self.loopback_account = v.clone();
        }
        if let Some(v) = layer.anchor_interval_s {
            self.anchor_interval_s = v;
        }
        if let Some(v) = layer.rate_limit_key_per_min {
            self.rate_limit_key_per_min = v;
        }
        if let Some(v) = layer.rate_limit_key_burst {
            self.rate_limit_key_burst = v;
        }
        if let Some(v) = layer.rate_limit_ip_per_min {
            self.rate_limit_ip_per_min = v;
        }
        if let Some(v) = layer.rate_limit_ip_burst {
            self.rate_limit_ip_burst = v;
        }
        if let Some(v) = layer.request_timeout_s {
            self.request_timeout_s = v;
        }
        if let Some(v) = layer.header_read_timeout_s {
            self.header_read_timeout_s = v;
        }
        if let Some(v) = layer.pol_request_timeout_s {
            self.pol_request_timeout_s = v;
        }
        if let Some(v) = layer.rate_limit_verify_per_min {
            self.rate_limit_verify_per_min = v;
        }
        if let Some(v) = layer.rate_limit_verify_burst {
            self.rate_limit_verify_burst = v;
        }
        if let Some(v) = layer.rate_limit_sync_per_min {
            self.rate_limit_sync_per_min = v;
        }
        if let Some(v) = layer.rate_limit_sync_burst {
            self.rate_limit_sync_burst = v;
        }
        if let Some(v) = &layer.peers {
            self.peers = v.clone();
        }
        if let Some(v) = layer.p2p_listen {
            self.p2p_listen = Some(v);
        }
        if let Some(v) = layer.p2p_dialable {
            self.p2p_dialable = Some(v);
        }
        if let Some(v) = &layer.pol_mode {
            self.pol.mode = v.parse().map_err(NodeError::Config)?;
        }
        let p = &mut self.pol;
        if let Some(v) = layer.pol_alpha_percent {
            p.alpha_percent = v;
        }
        if let Some(v) = layer.pol_min_effect_micro {
            p.min_effect_micro = v;
        }
        if let Some(v) = layer.pol_leak_margin_micro {
            p.leak_margin_micro = v;
        }
        if let Some(v) = layer.pol_mixture_tolerance_bps {
            p.mixture_tolerance_bps = v;
        }
        if let Some(v) = layer.pol_stage_items {
            p.stage_items = v;
        }
        if let Some(v) = layer.pol_stages {
            p.stages = v;
        }
        if let Some(v) = layer.pol_delta_norm_max_ppm {
            p.delta_norm_max_ppm = v;
        }
        if let Some(v) = layer.pol_pow_bits {
            p.pow_bits = v;
        }
        if let Some(v) = layer.pol_threads {
            p.threads = v;
        }
        if let Some(v) = layer.pol_batch_items {
            p.batch_items = v;
        }
        if let Some(v) = layer.pol_auto_replicate {
            p.auto_replicate = v;
        }
        if let Some(v) = &layer.pol_submission_fee {
            p.submission_fee = v
                .parse()
                .map_err(|e| NodeError::Config(format!("pol_submission_fee {v:?}: {e}")))?;
        }
        self.wallet.apply(layer);
        if let Some(v) = &layer.experts {
            self.experts = match v.trim() {
                "*" | "" => None,
                v => Some(v.parse()?),
            };
        }
        if let Some(v) = layer.expert_check_ppm {
            if v > 1_000_000 {
                return Err(NodeError::Config(format!(
                    "expert_check_ppm = {v} is outside 0..=1000000"
                )));
            }
            self.expert_check_ppm = v;
        }
        if let Some(v) = &layer.expert_hosts {
            self.expert_hosts = v.clone();
        }
        self.check()
    }

    /// Refuses settings a node cannot run with.
    pub fn check(&self) -> Result<(), NodeError> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(NodeError::Config(format!(
                    "{name} = {v} is outside {lo}..={hi}"
                )))
            }
        };
        range("expert_cache_mib", self.expert_cache_mib as u64, 1, 1 << 20)?;
        range("max_batch", self.max_batch as u64, 1, MAX_BATCH_MAX as u64)?;
        range("lanes", self.lanes as u64, 0, 256)?;
        range(
            "max_active",
            self.max_active as u64,
            1,
            MAX_ACTIVE_MAX as u64,
        )?;
        range(
            "body_limit_bytes",
            self.body_limit_bytes as u64,
            1024,
            BODY_LIMIT_BYTES_MAX as u64,
        )?;
        range(
            "max_tokens_default",
            u64::from(self.max_tokens_default),
            1,
            1 << 20,
        )?;
        range("probe_interval_s", self.probe_interval_s, 1, 3600)?;
        range("shutdown_grace_s", self.shutdown_grace_s, 0, 3600)?;
        range("header_read_timeout_s", self.header_read_timeout_s, 1, 3600)?;
        range("anchor_interval_s", self.anchor_interval_s, 0, 86_400)?;
        for (name, v) in [
            ("rate_limit_key_per_min", self.rate_limit_key_per_min),
            ("rate_limit_ip_per_min", self.rate_limit_ip_per_min),
        ] {
            range(name, u64::from(v), 0, 1_000_000)?;
        }
        for (name, v) in [
            ("rate_limit_key_burst", self.rate_limit_key_burst),
            ("rate_limit_ip_burst", self.rate_limit_ip_burst),
        ] {
            range(name, u64::from(v), 1, 1_000_000)?;
        }
        if !matches!(self.pol.alpha_percent, 1 | 5) {
            return Err(NodeError::Config(format!(
                "pol_alpha_percent = {} must be 1 or 5",
                self.pol.alpha_percent
            )));
        }
        range(
            "pol_min_effect_micro",
            self.pol.min_effect_micro.max(-1) as u64,
            0,
            1_000_000_000,
        )?;
        range(
            "pol_leak_margin_micro",
            self.pol.leak_margin_micro.max(-1) as u64,
            0,
            1_000_000_000,
        )?;
        range(
            "pol_mixture_tolerance_bps",
            u64::from(self.pol.mixture_tolerance_bps),
            0,
            10_000,
        )?;
        // A verdict records at most 65,536 items: four stages of 16,384.
        range("pol_stage_items", self.pol.stage_items as u64, 2, 16_384)?;
        range("pol_stages", u64::from(self.pol.stages), 1, 4)?;
        range(
            "pol_delta_norm_max_ppm",
            self.pol.delta_norm_max_ppm,
            1,
            100_000_000,
        )?;
        range("pol_pow_bits", u64::from(self.pol.pow_bits), 0, 40)?;
        range("pol_threads", self.pol.threads as u64, 0, 256)?;
        range("pol_batch_items", self.pol.batch_items as u64, 1, 65_536)?;
        if self.loopback_account.len() > 64 {
            return Err(NodeError::Config(
                "loopback_account is an account name or address".into(),
            ));
        }
        self.wallet.check()?;
        if let Some(url) = &self.ledger_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite://"))
        {
            return Err(NodeError::Config(
                "ledger_url must start with postgres:// or sqlite://".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let mut config = NodeConfig::default();
        let file = ConfigLayer::from_toml(
            "listen = \"127.0.0.1:9000\"\nprecision = \"f32\"\nmax_batch = 8\n",
        )
        .expect("file");
        config.apply(&file).expect("file applies");
        let env = ConfigLayer {
            max_batch: Some(4),
            ..ConfigLayer::default()
        };
        config.apply(&env).expect("env applies");
        let flags = ConfigLayer {
            listen: Some("127.0.0.1:9001".parse().expect("addr")),
            ..ConfigLayer::default()
        };
        config.apply(&flags).expect("flags apply");
        assert_eq!(config.listen.port(), 9001);
        assert_eq!(config.precision, Precision::F32);
        assert_eq!(config.max_batch, 4);
        assert_eq!(config.expert_cache_mib, 256);
    }

    #[test]
    fn bad_files_and_values_are_refused() {
        assert!(ConfigLayer::from_toml("listn = \"127.0.0.1:1\"").is_err());
        assert!(ConfigLayer::from_toml("max_batch = \"many\"").is_err());
        assert!(ConfigLayer::from_toml("listen = \"nowhere\"").is_err());
        assert!(ConfigLayer::from_toml(&"#".repeat(CONFIG_FILE_LEN_MAX + 1)).is_err());
        let mut config = NodeConfig::default();
        let zero = ConfigLayer {
            max_batch: Some(0),
            ..ConfigLayer::default()
        };
        assert!(config.apply(&zero).is_err());
        let bad = ConfigLayer {
            precision: Some("f16".into()),
            ..ConfigLayer::default()
        };
        assert!(config.apply(&bad).is_err());
        let lanes = ConfigLayer::from_toml("lanes = 4").expect("lanes");
        assert_eq!(lanes.lanes, Some(4));
        let mut config = NodeConfig::default();
        config.apply(&lanes).expect("4 lanes");
        assert_eq!(config.lanes, 4);
        let too_many = ConfigLayer {
            lanes: Some(257),
            ..ConfigLayer::default()
        };
        assert!(config.apply(&too_many).is_err());
    }
}
