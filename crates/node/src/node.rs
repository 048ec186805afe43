//! The node: the block store, the served model with its batching engine, and the books kept
//! about them (routing counts, metrics, health).
//!
//! Generations go through [`Node::submit`], which refuses what cannot fit (context window,
//! in-flight limit, shutdown) before queueing, and returns a [`Generation`] whose events are
//! counted into the metrics as they pass. Changing which expert versions are served loads a
//! second model beside the first and swaps them; requests already decoding finish on the old
//! one.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use blyan_chain::{BlockHeader, BlockSummary, ChainId, Store};
use blyan_ledger::{Capture, IdempotencyKey, IdempotentReply, Ledger};
use blyan_model::{
    CancelToken, Engine, EngineConfig, Event, GenerateRequest, LoadOptions, Model, ModelConfig,
    ModelError, Precision, Receiver, SamplingParams, Summary,
};
use blyan_primitives::{Address, ExpertId, Hash, Signature, SigningKey};
use blyan_tokenizer::Tokenizer;
use serde::Serialize;

use crate::billing::Bill;
use crate::{AgentChecker, ComponentReport, Health, Metrics, NodeConfig, NodeError};

/// Most blocks one page of the chain listing returns.
pub const PAGE_LIMIT_MAX: usize = 500;
/// Responses remembered for the API's error-rate probe.
const RECENT_RESPONSES_MAX: usize = 200;
/// How long the model probe waits for its token.
const MODEL_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Free disk below which the disk probe starts to fall.
const DISK_FREE_COMFORT_BYTES: u64 = 1 << 30;

/// The model being served and the engine decoding for it.
#[derive(Debug)]
pub(crate) struct Serving {
    pub(crate) engine: Engine,
    pins: BTreeMap<ExpertId, Hash>,
    /// Who is paid royalties for each served expert version ([`contributor_of`]).
    payees: Arc<BTreeMap<ExpertId, Address>>,
    /// Bumped at every swap, so cache counters can restart from zero.
    epoch: u64,
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) data_dir: PathBuf,
    pub(crate) store: Arc<Store>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) network: Hash,
    pub(crate) spec_block: Hash,
    pub(crate) model_config: ModelConfig,
    serving: RwLock<Arc<Serving>>,
    /// Serialises version switches (each loads a model).
    pub(crate) switching: Mutex<()>,
    pub(crate) metrics: Metrics,
    pub(crate) cache_epoch_seen: AtomicU64,
    pub(crate) checker: AgentChecker,
    pub(crate) active: Mutex<BTreeMap<u64, CancelToken>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) expert_tokens: Mutex<BTreeMap<ExpertId, u64>>,
    pub(crate) recent_status: Mutex<VecDeque<u16>>,
    pub(crate) listening: Mutex<Option<SocketAddr>>,
    /// What the sync engine last reported, when the node follows peers.
    network_view: Mutex<Option<NetworkView>>,
    /// The sync engine's last per-peer report (`GET /net/peers`), as it gave it.
    network_peers: Mutex<serde_json::Value>,
    /// This node's network identity as `GET /net/id` shows it (the launcher sets it).
    net_identity: Mutex<Option<serde_json::Value>>,
    /// Called with the hash of every block stored (the gossip engine announces them).
    block_listeners: Mutex<Listeners>,
    /// Serialises appends to the meta chain (admissions).
    pub(crate) meta_writer: Mutex<()>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) probe_round: AtomicU64,
    pub(crate) started_ms: u64,
    pub(crate) ledger: Ledger,
    /// Experts computed elsewhere, when this node computes only some (`experts`).
    pub(crate) hosting: Option<Arc<crate::hosting::Hosting>>,
    /// Expert calls computed for other nodes.
    pub(crate) computed_for_peers: AtomicU64,
    /// Whether this node answers expert calls with wrong (signed) outputs: a fault for tests.
    pub(crate) lying: AtomicBool,
    /// The network key, unlocked on first use: it signs expert answers and calls.
    pub(crate) net_signer: Arc<crate::hosting::NetSigner>,
    /// The admission registry as of the meta chain's head.
    pub(crate) registry_cache: crate::registry::RegistryCache,
    /// Wallet login: the login policy, nonces and session tokens.
    pub(crate) wallet: crate::wallet::WalletAuth,
    pub(crate) operator: Address,
    /// The node's key: it signs every block this node makes.
    pub(crate) signer: SigningKey,
    /// Whether `signer` is the network's operator, who alone writes blocks until admission
    /// through the chain exists.
    pub(crate) writer: bool,
    /// The account billed for keyless loopback requests, if any.
    pub(crate) loopback_payer: Option<Address>,
    /// Serialises anchoring rounds.
    pub(crate) anchoring: Mutex<()>,
    /// Proof of Learning: chain P's record, the hidden pool, recent verdicts. Held through
    /// each evaluation, which serialises them.
    pub(crate) pol: Mutex<crate::pol::PolState>,
    /// What `/pol/status` shows, republished whenever the lock on `pol` is released.
    pub(crate) pol_view: RwLock<Arc<crate::pol::PolStatus>>,
}

/// What to generate, as the API receives it.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// Prompt text.
    pub prompt: String,
    /// Most tokens to generate; the node's default (capped by the room left in the context
    /// window) when absent.
    pub max_tokens: Option<u32>,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// The account that pays.
    pub payer: Address,
    /// The request's idempotency key, stored with the reply when the request is captured.
    pub idempotency: Option<IdempotencyKey>,
    /// Keep the request's hidden states on this node: no expert of it is computed elsewhere.
    pub local_only: bool,
}

/// The peer network as the launcher's sync engine last reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkView {
    /// Peers configured.
    pub expected: u32,
    /// Peers that answered lately, serve this network and are not banned.
    pub present: u32,
    /// Blocks the present peers hold beyond this node's heads, summed over the chains.
    pub lag_blocks: u64,
    /// Peers banned since start.
    pub bans: u64,
    /// Blocks stored from peers since start.
    pub imported: u64,
}

/// The node's identity and what it serves.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// Hash of the genesis spec block: the network's name.
    pub network: Hash,
    /// The spec block the model was built from.
    pub spec_block: Hash,
    /// Served precision.
    pub precision: Precision,
    /// Decoder layers.
    pub layers: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Model width.
    pub d_model: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context window in tokens.
    pub context_len: usize,
    /// Expert versions served instead of the heads.
    pub pins: BTreeMap<ExpertId, Hash>,
    /// When the node started, ms since the Unix epoch.
    pub started_ms: u64,
    /// The blyan version.
    pub version: &'static str,
}

/// One expert as `/experts` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ExpertInfo {
    /// Which expert.
    pub id: ExpertId,
    /// Its head version.
    pub head: Hash,
    /// The version being served (the head unless pinned).
    pub served: Hash,
    /// Every version, oldest first.
    pub versions: Vec<Hash>,
    /// Tokens routed to it since the node started (prompt and generated).
    pub tokens_routed: u64,
    /// Whether its served version is decoded in the cache now.
    pub cached: bool,
}

/// A page of the chain listing.
#[derive(Clone, Debug, Serialize)]
pub struct BlockPage {
    /// Blocks matching the filter.
    pub total: usize,
    /// Index of the first block returned.
    pub offset: usize,
    /// Most blocks asked for.
    pub limit: usize,
    /// The blocks, in chain then height order.
    pub blocks: Vec<BlockSummary>,
}

impl Node {
    /// Opens the network in `data_dir` and starts serving its model. `now_ms` is the wall
    /// clock at start (ms since the Unix epoch).
    pub fn open(data_dir: &Path, config: NodeConfig, now_ms: u64) -> Result<Node, NodeError> {
        config.check()?;
        let chain_dir = data_dir.join("chain");
        if !chain_dir.exists() {
            return Err(NodeError::NoNetwork(data_dir.display().to_string()));
        }
        let store = Arc::new(Store::open(&chain_dir)?);
        let (spec_block, meta) = store
            .meta()?
            .ok_or_else(|| NodeError::NoNetwork(data_dir.display().to_string()))?;
        let network = store.at_height(ChainId::Meta, 0)?.unwrap_or(spec_block);
        let tokenizer = Arc::new(Tokenizer::from_json(&meta.tokenizer).map_err(ModelError::from)?);
        let model_config = ModelConfig::from_spec(&meta.spec);
        let keystore = blyan_ledger::Keystore::new(
            data_dir.join(blyan_ledger::KEYSTORE_DIR),
            config.key_passphrase.expose(),
        );
        let signer = keystore.node_key()?;
        let net_signer = Arc::new(crate::hosting::NetSigner::new(
            keystore.clone(),
            signer.clone(),
        ));
        let hosting = config.experts.clone().map(|set| {
            let peers = config
                .peers
                .iter()
                .map(|p| p.rsplit_once('@').map_or(p.as_str(), |(_, a)| a).to_owned())
                .chain(config.expert_hosts.iter().cloned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let h = crate::hosting::Hosting::new(
                set,
                peers,
                config.expert_check_ppm,
                data_dir.join("node").join("evidence"),
                store.clone(),
                net_signer.clone(),
            );
            crate::hosting::Hosting::start_heartbeat(&h);
            h
        });
        let serving = start_serving(
            &store,
            &tokenizer,
            &config,
            BTreeMap::new(),
            0,
            hosting.clone(),
        )?;
        let checker = AgentChecker::open(Some(data_dir.join("node").join("checker.json")));
        // The network's operator (the spec block's author) writes its blocks; a node that
        // joined from peers follows them.
        let writer = store.header(&network)?.map(|h| h.author)
            == Some(blyan_primitives::address_of(&signer));
        let setup = blyan_ledger::setup(data_dir, config.ledger_url.as_deref(), &keystore, now_ms)?;
        let loopback_payer = match config.loopback_account.as_str() {
            "" => None,
            who => Some(
                setup
                    .ledger
                    .resolve(who)
                    .map_err(|e| NodeError::Config(format!("loopback_account {who:?}: {e}")))?,
            ),
        };
        // Holds left by a process that was killed can never be captured: release them now
        // rather than after their TTL.
        let (abandoned, released) = setup.ledger.release_abandoned(now_ms)?;
        if abandoned > 0 {
            tracing::info!(
                holds = abandoned,
                released_nano = released.nano(),
                "released holds left by the previous run"
            );
        }
        let wallet = crate::wallet::WalletAuth::new(&config, keystore);
        let pol = crate::pol::load_state(&store, data_dir)?;
        let pol_view = RwLock::new(Arc::new(crate::pol::status_of(config.pol, &pol, None)));
        Ok(Node {
            pol: Mutex::new(pol),
            pol_view,
            ledger: setup.ledger,
            hosting,
            computed_for_peers: AtomicU64::new(0),
            lying: AtomicBool::new(false),
            net_signer,
            registry_cache: crate::registry::RegistryCache::default(),
            wallet,
            operator: setup.operator,
            signer,
            writer,
            loopback_payer,
            anchoring: Mutex::new(()),
            data_dir: data_dir.to_owned(),
            store,
            tokenizer,
            network,
            spec_block,
            model_config,
            serving: RwLock::new(Arc::new(serving)),
            switching: Mutex::new(()),
            metrics: Metrics::new()?,
            cache_epoch_seen: AtomicU64::new(0),
            checker,
            active: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            expert_tokens: Mutex::new(BTreeMap::new()),
            recent_status: Mutex::new(VecDeque::new()),
            listening: Mutex::new(None),
            network_view: Mutex::new(None),
            network_peers: Mutex::new(serde_json::Value::Array(Vec::new())),
            net_identity: Mutex::new(None),
            block_listeners: Mutex::new(Listeners(Vec::new())),
            meta_writer: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            probe_round: AtomicU64::new(0),
            started_ms: now_ms,
            config,
        })
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The network's name: the hash of its genesis spec block.
    pub fn network(&self) -> Hash {
        self.network
    }

    /// Whether this node writes blocks on its network (it is the network's operator) rather
    /// than following blocks from peers.
    pub fn is_writer(&self) -> bool {
        self.writer
    }

    /// Refuses `what` with `not_admitted` on a node that follows its network.
    pub(crate) fn require_writer(&self, what: &'static str) -> Result<(), NodeError> {
        if self.writer {
            return Ok(());
        }
        Err(NodeError::NotAdmitted {
            network: self.network.to_string(),
            key: blyan_primitives::address_of(&self.signer).to_string(),
            what,
        })
    }

    /// The block store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The model's context window, in tokens.
    pub fn context_len(&self) -> usize {
        self.model_config.context_len
    }

    /// Identity and model summary.
    pub fn info(&self) -> NodeInfo {
        let c = &self.model_config;
        NodeInfo {
            network: self.network,
            spec_block: self.spec_block,
            precision: self.config.precision,
            layers: c.layers,
            experts: c.experts,
            top_k: c.top_k,
            d_model: c.hidden_size,
            vocab_size: c.vocab_size,
            context_len: c.context_len,
            pins: self.serving().pins.clone(),
            started_ms: self.started_ms,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// The expert versions served instead of the heads.
    pub(crate) fn pins(&self) -> BTreeMap<ExpertId, Hash> {
        self.serving().pins.clone()
    }

    pub(crate) fn serving(&self) -> Arc<Serving> {
        self.serving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks and queues a generation.
    pub fn submit(self: &Arc<Self>, request: CompletionRequest) -> Result<Generation, NodeError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(NodeError::ShuttingDown);
        }
        // Encoded once here: the count decides the default and the limit of max_tokens, and
        // the ids go to the engine as they are.
        let ids = self
            .tokenizer
            .encode(&request.prompt)
            .map_err(ModelError::from)?;
        let prompt_tokens = ids.len() + 1;
        let context_len = self.context_len();
        let room = context_len.saturating_sub(prompt_tokens);
        let max_tokens = match request.max_tokens {
            Some(0) => {
                return Err(NodeError::InvalidParameter {
                    name: "max_tokens",
                    reason: "must be at least 1".into(),
                });
            }
            Some(n) if n as usize > room => {
                return Err(NodeError::ContextLengthExceeded {
                    context_len,
                    prompt_tokens,
                    max_tokens: n,
                });
            }
            Some(n) => n,
            None if room == 0 => {
                return Err(NodeError::ContextLengthExceeded {
                    context_len,
                    prompt_tokens,
                    max_tokens: 1,
                });
            }
            None => self
                .config
                .max_tokens_default
                .min(u32::try_from(room).unwrap_or(u32::MAX)),
        };
        let generate = GenerateRequest {
            prompt: request.prompt,
            max_tokens,
            sampling: request.sampling,
            stop: request.stop,
        };
        // Everything that can refuse the request is checked before the hold, so a refusal
        // never holds the payer's funds even for a moment.
        generate
            .check(self.model_config.vocab_size)
            .map_err(NodeError::Model)?;
        let active = self.active_generations();
        if active >= self.config.max_active {
            return Err(NodeError::Overloaded {
                active,
                limit: self.config.max_active,
            });
        }
        let serving = self.serving();
        // The hold covers the most this request can use; a refusal (402 for want of funds)
        // happens before anything is queued. Once made, the Bill voids it on every path that
        // does not capture.
        let bill = self.hold(
            request.payer,
            (prompt_tokens as u64).saturating_add(u64::from(max_tokens)),
            request.idempotency,
            serving.payees.clone(),
        )?;
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.len() >= self.config.max_active {
            return Err(NodeError::Overloaded {
                active: active.len(),
                limit: self.config.max_active,
            });
        }
        let receiver = serving
            .engine
            .submit_encoded_with(&generate, ids, request.local_only)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        active.insert(id, receiver.cancel_token());
        drop(active);
        self.metrics.generation_started();
        Ok(Generation {
            node: self.clone(),
            id,
            receiver,
            prompt_tokens,
            max_tokens,
            done: false,
            bill: Some(bill),
        })
    }

    /// Makes one of the served engine's lane threads panic (tests of lane supervision).
    #[cfg(feature = "fault-injection")]
    pub fn inject_lane_panic(&self) {
        self.serving().engine.inject_lane_panic();
    }

    /// Makes this node answer other nodes' expert calls with perturbed outputs, signed as
    /// if they were right (tests of spot checks and bans).
    #[cfg(feature = "fault-injection")]
    pub fn inject_lying_expert_answers(&self) {
        self.lying.store(true, Ordering::SeqCst);
    }

    /// Lane threads of the served engine that ended in a panic.
    pub fn lane_panics(&self) -> u64 {
        self.serving().engine.lane_panics()
    }

    /// Generations decoding or queued now.
    pub fn active_generations(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Refuses new generations from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether [`Node::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Cancels every generation in flight; each ends with finish reason `cancelled`.
    pub fn cancel_all(&self) {
        for token in self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            token.cancel();
        }
    }

    /// Records where the API listens (for the API probe).
    pub fn set_listening(&self, addr: Option<SocketAddr>) {
        *self.listening.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Records one HTTP response, for the metrics and the API's error-rate probe.
    pub fn record_response(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.metrics.observe_request(method, route, status, seconds);
        let mut recent = self.recent_status.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_RESPONSES_MAX {
            recent.pop_front();
        }
        recent.push_back(status);
    }

    /// Every expert: versions, the one served, tokens routed and cache state.
    pub fn experts(&self) -> Result<Vec<ExpertInfo>, NodeError> {
        let serving = self.serving();
        let model = serving.engine.model();
        let served = model.expert_blocks();
        let routed = self
            .expert_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Vec::with_capacity(served.len());
        for (id, block) in served {
            let head = self.store.expert_head(id)?.unwrap_or(block);
            out.push(ExpertInfo {
                id,
                head,
                served: block,
                versions: self.store.expert_versions(id)?,
                tokens_routed: routed.get(&id).copied().unwrap_or(0),
                cached: model.expert_cached(id),
            });
        }
        Ok(out)
    }

    /// Expert cache counters of the served model.
    pub fn cache_stats(&self) -> blyan_model::CacheStats {
        self.serving().engine.model().cache_stats()
    }

    /// Serves `pins` (expert → version) instead of the heads; an empty map serves every
    /// head. Loads the new model before swapping, so a bad pin changes nothing; requests
    /// already decoding finish on the old model. Blocks while they do.
    pub fn serve_versions(&self, pins: BTreeMap<ExpertId, Hash>) -> Result<(), NodeError> {
        let _guard = self.switching.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.serving().epoch + 1;
        let next = start_serving(
            &self.store,
            &self.tokenizer,
            &self.config,
            pins,
            epoch,
            self.hosting.clone(),
        )?;
        let old = std::mem::replace(
            &mut *self.serving.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(next),
        );
        // The old engine finishes the requests it holds, then stops (Engine's Drop joins it).
        drop(old);
        Ok(())
    }

    /// One page of the chain listing, optionally of one chain.
    pub fn blocks(
        &self,
        chain: Option<ChainId>,
        offset: usize,
        limit: usize,
    ) -> Result<BlockPage, NodeError> {
        if limit == 0 || limit > PAGE_LIMIT_MAX {
            return Err(NodeError::InvalidParameter {
                name: "limit",
                reason: format!("must be in 1..={PAGE_LIMIT_MAX}"),
            });
        }
        let (total, blocks) = self.store.blocks_page(chain, offset as u64, limit)?;
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        Ok(BlockPage {
            total,
            offset,
            limit,
            blocks,
        })
    }

    /// A block's header and its author's signature of the block hash.
    pub fn block(&self, hash: &Hash) -> Result<(BlockHeader, Option<Signature>), NodeError> {
        let header = self
            .store
            .header(hash)?
            .ok_or_else(|| NodeError::NotFound {
                what: format!("block {hash}"),
            })?;
        Ok((header, self.store.signature(hash)?))
    }

    /// The payload of block `hash`, checked against its header's hash: a copy this node
    /// holds wrongly is never given out.
    pub fn block_payload(&self, hash: &Hash) -> Result<Vec<u8>, NodeError> {
        if self.store.header(hash)?.is_none() {
            return Err(NodeError::NotFound {
                what: format!("block {hash}"),
            });
        }
        Ok(self.store.payload_verified(hash)?.to_vec())
    }

    /// The latest health, without probing.
    pub fn health(&self) -> Health {
        self.checker.health()
    }

    /// Probes every component, updates the Agent Checker and returns the new health.
    /// `now_ms` is the wall clock (ms since the Unix epoch).
    pub fn probe(&self, now_ms: u64) -> Result<Health, NodeError> {
        let round = self.probe_round.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.expire_holds() {
            tracing::warn!(error = %e, "expiring ledger holds failed");
        }
        // A new epoch's emission budget pays rewards owed from earlier ones.
        if let Err(e) = self.ledger.pay_owed(now_ms) {
            tracing::warn!(error = %e, "paying owed rewards failed");
        }
        let reports = vec![
            self.probe_store(round),
            self.probe_model(),
            self.probe_expert_cache(),
            self.probe_api(),
            self.probe_disk(),
            self.probe_ledger(),
            self.probe_network(),
        ];
        let health = self.checker.update(&reports, now_ms)?;
        self.metrics.observe_health(&health);
        Ok(health)
    }

    /// Saves the Agent Checker's state (at shutdown).
    pub fn save_state(&self) -> Result<(), NodeError> {
        self.checker.save()
    }

    /// The metrics, refreshed from the cache and the store, in Prometheus text format.
    pub fn render_metrics(&self) -> Result<String, NodeError> {
        let serving = self.serving();
        let reset = self.cache_epoch_seen.swap(serving.epoch, Ordering::Relaxed) != serving.epoch;
        self.metrics
            .observe_cache(serving.engine.model().cache_stats(), reset);
        self.metrics.observe_lanes(
            serving.epoch,
            serving.engine.lane_restarts(),
            serving.engine.lanes_alive(),
        );
        for (chain, t) in self.store.chain_totals()? {
            if t.blocks > 0 {
                self.metrics
                    .observe_chain(chain.as_str(), t.blocks, t.payload_bytes);
            }
        }
        let supply = self.ledger.supply()?;
        let (anchored, _) = blyan_ledger::anchored_end(&self.store)?;
        self.metrics
            .observe_ledger(&supply, supply.postings.saturating_sub(anchored));
        self.metrics.render()
    }

    /// The block store: readable, and one block's payload (a different one each round)
    /// re-hashed against its header. Part of every [`Node::probe`] round.
    pub fn probe_store(&self, round: u64) -> ComponentReport {
        let report = |readiness: f64, detail: String| ComponentReport {
            name: "block_store",
            readiness,
            detail,
            weight: 3.0,
            critical: true,
        };
        // One block a round, in listing order: the running totals give the count and the
        // height index the block, so a round costs the same on a chain of any length.
        let sample = self.store.chain_totals().and_then(|totals| {
            let len: u64 = totals.values().map(|t| t.blocks).sum();
            if len == 0 {
                return Ok((0, None));
            }
            let (_, page) = self.store.blocks_page(None, round % len, 1)?;
            Ok((len, page.into_iter().next()))
        });
        let (len, sample) = match sample {
            Ok((len, Some(sample))) => (len, sample),
            Ok((_, None)) => return report(0.0, "no blocks".into()),
            Err(e) => return report(0.0, format!("index unreadable: {e}")),
        };
        match self.store.payload_verified(&sample.hash) {
            Ok(_) => report(
                1.0,
                format!(
                    "{len} blocks; payload of {} ({}) re-hashed and intact",
                    sample.name,
                    sample.hash.short(12)
                ),
            ),
            Err(e) => report(0.0, format!("{len} blocks; {e}")),
        }
    }

    /// The model: one real token generated through the engine.
    fn probe_model(&self) -> ComponentReport {
        let report = |readiness: f64, detail: String| ComponentReport {
            name: "model",
            readiness,
            detail,
            weight: 3.0,
            critical: true,
        };
        let serving = self.serving();
        // A lane whose thread died is started again here even if no request came since.
        let healed = serving.engine.heal();
        let lanes = serving.engine.lanes();
        self.metrics.observe_lanes(
            serving.epoch,
            serving.engine.lane_restarts(),
            serving.engine.lanes_alive(),
        );
        let lane_note = match serving.engine.lane_restarts() {
            0 => String::new(),
            n => format!("; {n} dead lane threads restarted since the engine started"),
        };
        let request = GenerateRequest {
            prompt: "In the beginning".into(),
            max_tokens: 1,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
        };
        let started = Instant::now();
        let receiver = match serving.engine.submit(&request) {
            Ok(r) => r,
            Err(e) => return report(0.0, format!("engine refused the probe: {e}")),
        };
        loop {
            match receiver.recv_timeout(MODEL_PROBE_TIMEOUT) {
                Ok(Some(Event::Step(_))) => {}
                Ok(Some(Event::Done(s))) if s.completion_tokens == 1 => {
                    // A lane found dead in this round costs a little readiness for the round:
                    // requests it held were lost.
                    let readiness = if healed > 0 { 0.9 } else { 1.0 };
                    return report(
                        readiness,
                        format!(
                            "{} model generated a probe token in {:.1} ms ({lanes} lanes, {} Q8_0 kernel){lane_note}",
                            self.config.precision,
                            started.elapsed().as_secs_f64() * 1e3,
                            blyan_model::q8_kernel(),
                        ),
                    );
                }
                Ok(Some(Event::Done(s))) => {
                    return report(
                        0.5,
                        format!(
                            "probe ended after {} tokens ({:?})",
                            s.completion_tokens, s.finish_reason
                        ),
                    );
                }
                Ok(Some(Event::Failed(e))) => return report(0.0, format!("probe failed: {e}")),
                Ok(None) => return report(0.0, "engine stopped during the probe".into()),
                Err(_) => {
                    receiver.cancel();
                    return report(
                        0.5,
                        format!(
                            "no probe token within {} s (engine saturated)",
                            MODEL_PROBE_TIMEOUT.as_secs()
                        ),
                    );
                }
            }
        }
    }

    /// The expert cache: every served expert's block is present (length checked), and the
    /// hit rate so far.
    fn probe_expert_cache(&self) -> ComponentReport {
        let serving = self.serving();
        let model = serving.engine.model();
        let blocks = model.expert_blocks();
        let mut present = 0usize;
        let mut missing = Vec::new();
        for (id, block) in &blocks {
            match self.store.payload(block) {
                Ok(_) => present += 1,
                Err(_) => missing.push(id.to_string()),
            }
        }
        let stats = model.cache_stats();
        let lookups = stats.hits + stats.misses;
        let hit_rate = if lookups > 0 {
            format!("{:.1}%", 100.0 * stats.hits as f64 / lookups as f64)
        } else {
            "n/a".into()
        };
        let mut detail = format!(
            "{present}/{} expert blocks present; hit rate {hit_rate}; {:.1} of {} MiB",
            blocks.len(),
            stats.bytes as f64 / f64::from(1u32 << 20),
            self.config.expert_cache_mib
        );
        if !missing.is_empty() {
            detail.push_str(&format!("; unreadable: {}", missing.join(", ")));
        }
        ComponentReport {
            name: "expert_cache",
            readiness: if blocks.is_empty() {
                0.0
            } else {
                present as f64 / blocks.len() as f64
            },
            detail,
            weight: 1.0,
            critical: false,
        }
    }

    /// Records what the sync engine reports (the launcher calls it about once a second):
    /// the summary, and `peers`, one JSON object per peer.
    pub fn set_network_view(&self, view: NetworkView, peers: serde_json::Value) {
        self.metrics.observe_network(&view);
        *self.network_view.lock().unwrap_or_else(|p| p.into_inner()) = Some(view);
        *self.network_peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Sets what `GET /net/id` answers: the network key, the account address it is bound to,
    /// the binding signature and the p2p address, if any.
    pub fn set_net_identity(&self, id: serde_json::Value) {
        *self.net_identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    /// This node's network identity, once the launcher set it.
    pub fn net_identity(&self) -> Option<serde_json::Value> {
        self.net_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Calls `f` with the hash of every block stored from now on, local or from a peer.
    pub fn on_block(&self, f: impl Fn(Hash) + Send + Sync + 'static) {
        self.block_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .push(Arc::new(f));
    }

    pub(crate) fn notify_block(&self, hash: Hash) {
        let listeners = self
            .block_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        for f in listeners {
            f(hash);
        }
    }

    /// The peer network as last reported: the summary (none on a node that follows no peer)
    /// and one object per peer.
    pub fn network_report(&self) -> (Option<NetworkView>, serde_json::Value) {
        let view = *self.network_view.lock().unwrap_or_else(|p| p.into_inner());
        let peers = self
            .network_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (view, peers)
    }

    /// The peer network: the share of configured peers that answer, lowered while this node
    /// is behind them. A node with no peers configured is a network of one.
    fn probe_network(&self) -> ComponentReport {
        let view = *self.network_view.lock().unwrap_or_else(|p| p.into_inner());
        let (readiness, detail) = match view {
            None | Some(NetworkView { expected: 0, .. }) => {
                (1.0, "standalone: no peers configured".to_owned())
            }
            Some(v) => {
                let share = f64::from(v.present) / f64::from(v.expected);
                let readiness = if v.lag_blocks > 0 {
                    share * 0.75
                } else {
                    share
                };
                (
                    readiness,
                    format!(
                        "{} of {} peers present; {} blocks behind; {} blocks synced, {} bans",
                        v.present, v.expected, v.lag_blocks, v.imported, v.bans
                    ),
                )
            }
        };
        ComponentReport {
            name: "network",
            readiness,
            detail,
            weight: 1.0,
            critical: false,
        }
    }

    /// The API: listening, and the share of recent responses that were not server errors.
    fn probe_api(&self) -> ComponentReport {
        let listening = *self.listening.lock().unwrap_or_else(|p| p.into_inner());
        let recent = self.recent_status.lock().unwrap_or_else(|p| p.into_inner());
        // Internal failures only: 501 (not built yet) and 503 (not ready, shutting down) are
        // deliberate answers, not faults.
        let errors = recent.iter().filter(|s| **s == 500).count();
        let (readiness, detail) = match listening {
            None => (0.0, "not listening".to_owned()),
            Some(addr) if recent.is_empty() => (1.0, format!("listening on {addr}")),
            Some(addr) => (
                1.0 - errors as f64 / recent.len() as f64,
                format!(
                    "listening on {addr}; {errors} server errors in the last {} responses",
                    recent.len()
                ),
            ),
        };
        ComponentReport {
            name: "api",
            readiness,
            detail,
            weight: 2.0,
            critical: false,
        }
    }

    /// Free space where the data directory lives.
    fn probe_disk(&self) -> ComponentReport {
        let (readiness, detail) = match fs4::available_space(&self.data_dir) {
            Ok(free) => (
                (free as f64 / DISK_FREE_COMFORT_BYTES as f64).min(1.0),
                format!("{:.1} GiB free", free as f64 / f64::from(1u32 << 30)),
            ),
            Err(e) => (0.0, format!("cannot read free space: {e}")),
        };
        ComponentReport {
            name: "disk",
            readiness,
            detail,
            weight: 1.0,
            critical: false,
        }
    }

    fn finish(&self, id: u64, summary: Option<&Summary>) {
        if let Some(summary) = summary {
            self.metrics.observe_generation(summary);
            let mut routed = self.expert_tokens.lock().unwrap_or_else(|p| p.into_inner());
            for (expert, n) in &summary.experts_used {
                *routed.entry(*expert).or_default() += n;
            }
        }
        if self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .is_some()
        {
            self.metrics.generation_ended();
        }
    }
}

fn start_serving(
    store: &Arc<Store>,
    tokenizer: &Arc<Tokenizer>,
    config: &NodeConfig,
    pins: BTreeMap<ExpertId, Hash>,
    epoch: u64,
    hosting: Option<Arc<crate::hosting::Hosting>>,
) -> Result<Serving, NodeError> {
    let model = Model::load(
        store.clone(),
        LoadOptions {
            precision: config.precision,
            expert_cache_bytes: config.expert_cache_mib << 20,
            expert_versions: pins.clone(),
            hosts: hosting.map(|h| h as Arc<dyn blyan_model::ExpertHosts>),
        },
    )?;
    let mut payees = BTreeMap::new();
    for (id, block) in model.expert_blocks() {
        payees.insert(id, contributor_of(store, &block)?);
    }
    let engine = Engine::start(
        Arc::new(model),
        tokenizer.clone(),
        EngineConfig {
            max_batch: config.max_batch,
            // By default a lane per core, each pass on its lane's thread (measured fastest
            // on one node).
            lanes: config.lanes,
            ..EngineConfig::default()
        },
    );
    Ok(Serving {
        engine,
        pins,
        payees: Arc::new(payees),
        epoch,
    })
}

/// Who is paid royalties for expert version `block`: the contributor named in the accepting
/// verdict it depends on (whose submission signature the verdict records), or nobody (the
/// zero address, whose share goes to the royalty pool) for versions that no verdict accepted:
/// the genesis weights and imported checkpoints. The block's own author is the node that
/// placed it, which is not who made it.
pub(crate) fn contributor_of(store: &Store, block: &Hash) -> Result<Address, NodeError> {
    let header = store
        .header(block)?
        .ok_or(blyan_chain::ChainError::NotFound(*block))?;
    for parent in &header.depends_on {
        let Some(p) = store.header(parent)? else {
            continue;
        };
        if p.chain == ChainId::Proof && p.kind == blyan_chain::BlockKind::Verdict {
            let payload = store.payload_verified(parent)?;
            let verdict = blyan_chain::Verdict::decode(&payload).map_err(|e| {
                blyan_chain::ChainError::Corrupt {
                    block: *parent,
                    detail: e.to_string(),
                }
            })?;
            if verdict.accepted && verdict.candidate == header.payload_hash {
                return Ok(verdict.contributor);
            }
        }
    }
    Ok(Address::ZERO)
}

/// A queued or running generation. Dropping it before its end cancels it.
#[derive(Debug)]
pub struct Generation {
    node: Arc<Node>,
    id: u64,
    receiver: Receiver,
    prompt_tokens: usize,
    max_tokens: u32,
    done: bool,
    bill: Option<Bill>,
}

impl Generation {
    /// Prompt tokens, BOS included.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The number of tokens asked for (after defaults).
    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Charges the payer for the tokens `summary` reports and pays royalties by routing,
    /// storing `reply` under the request's idempotency key in the same transaction.
    /// Call once, after [`Event::Done`]; a generation dropped without it is voided.
    pub fn capture(
        &mut self,
        summary: &Summary,
        reply: Option<IdempotentReply>,
    ) -> Result<Capture, NodeError> {
        let bill = self.bill.take().ok_or_else(|| {
            NodeError::Internal("this generation was already captured or voided".into())
        })?;
        self.node.capture(bill, summary, reply)
    }

    /// A token that cancels this generation from elsewhere.
    pub fn cancel_token(&self) -> CancelToken {
        self.receiver.cancel_token()
    }

    /// The next event, blocking; `None` after the last.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self.receiver.recv();
        match &event {
            Some(Event::Done(summary)) => {
                self.done = true;
                self.node.finish(self.id, Some(summary));
            }
            Some(Event::Failed(_)) | None => {
                self.done = true;
                self.node.metrics.generation_failed();
                self.node.finish(self.id, None);
            }
            Some(Event::Step(_)) => {}
        }
        event
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.done {
            // The engine notices at its next step and drops the sequence.
            self.receiver.cancel();
        }
        // Not captured: the request failed or was cancelled, so nothing is charged. The bill
        // voids its hold as it drops, before the generation stops counting as active, so
        // that "nothing in flight" also means "nothing held".
        drop(self.bill.take());
        if !self.done {
            self.node.finish(self.id, None);
        }
    }
}

/// The hooks [`Node::on_block`] registered.
struct Listeners(Vec<Arc<dyn Fn(Hash) + Send + Sync>>);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} block listeners", self.0.len())
    }
}
