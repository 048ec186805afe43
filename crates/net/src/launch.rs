//! Running the engine on tokio for the command line: `blyan join` syncs a new data directory
//! from peers over their HTTP read path and returns once it holds everything they hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blyan_chain::{ChainId, Store};
use blyan_primitives::Hash;
use commonware_runtime::{Clock, Runner, Supervisor};

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};

use crate::engine::{Config, Engine, Handle, PeerKey, Snapshot};
use crate::identity::{Bootstrap, Identity};
use crate::store::{BlockStore, ChainStore};
use crate::transport::Http;
use crate::transport::P2p;

/// Why a join did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The store already holds another network.
    #[error("[wrong_network] the data directory holds network {held}, not {named}")]
    StoreOfAnotherNetwork {
        /// The network in the store.
        held: Hash,
        /// The network named.
        named: Hash,
    },
    /// Every peer that answered serves another network.
    #[error("[wrong_network] no peer serves network {named}: {peers}")]
    PeersOfAnotherNetwork {
        /// The network named.
        named: Hash,
        /// The peers, by key.
        peers: String,
    },
    /// The deadline passed first.
    #[error("[join_timeout] not in sync after {seconds} s: {detail}")]
    Timeout {
        /// Seconds waited.
        seconds: u64,
        /// What was still missing.
        detail: String,
    },
    /// The local store failed.
    #[error("[store] {0}")]
    Store(String),
}

/// What a completed join did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JoinReport {
    /// The network joined.
    pub network: Hash,
    /// Blocks stored by this join.
    pub blocks: u64,
    /// Bytes received (protocol messages, payloads included).
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Received megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// The engine's final state: heads, and per peer what it served and whether it was banned.
    pub snapshot: Snapshot,
}

/// A peer counts as present while it answered within this long.
const PRESENT: Duration = Duration::from_secs(5);

/// Whether `p` is present: heard lately and not banned (it may still serve another network).
fn is_present(p: &crate::engine::PeerInfo) -> bool {
    p.banned_for_ms.is_none()
        && p.silent_for_ms
            .is_some_and(|s| s <= PRESENT.as_millis() as u64)
}

/// The peers' keys, the HTTP transport to them and the pull-only engine settings, with a
/// status to every peer each `status_every`.
fn over_http(
    peers: &[Bootstrap],
    status_every: Duration,
) -> (Vec<crate::engine::PeerKey>, Http, Config) {
    let keys = peers.iter().map(|b| b.key.clone()).collect();
    let transport = Http::new(
        peers.iter().map(|b| (b.key.clone(), b.addr.clone())),
        Duration::from_secs(30),
    );
    let cfg = Config {
        push: false,
        status_every,
        status_fanout: peers.len(),
        request_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    (keys, transport, cfg)
}

/// How far behind its peers a node is, and how many of them it hears: what the Agent
/// Checker and `/metrics` report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    /// Peers configured.
    pub expected: u32,
    /// Peers that answered within the last few seconds, serve this network and are not banned.
    pub present: u32,
    /// Blocks the present peers hold beyond this node's heads, summed over the chains.
    pub lag_blocks: u64,
    /// Bans handed out since start.
    pub bans: u64,
    /// Blocks stored from peers since start.
    pub imported: u64,
}

impl SyncStatus {
    /// The status in `snap`, of a node configured with `expected` peers.
    pub fn of(snap: &Snapshot, expected: usize) -> SyncStatus {
        let present: Vec<_> = snap
            .peers
            .iter()
            .filter(|p| !p.foreign && is_present(p))
            .collect();
        let ours = |chain: u8| {
            snap.heads
                .iter()
                .find(|h| h.chain == chain)
                .map(|h| h.height)
        };
        let mut lag = std::collections::BTreeMap::<u8, u64>::new();
        for p in &present {
            for h in &p.heads {
                let behind = match ours(h.chain) {
                    Some(mine) => h.height.saturating_sub(mine),
                    None => h.height + 1,
                };
                let e = lag.entry(h.chain).or_default();
                *e = (*e).max(behind);
            }
        }
        SyncStatus {
            expected: expected as u32,
            present: present.len() as u32,
            lag_blocks: lag.values().sum(),
            bans: snap.stats.bans,
            imported: snap.stats.imported,
        }
    }
}

/// The authenticated p2p network between admitted nodes (commonware's `discovery` network:
/// peers are known by key, addresses are learnt from bootstrappers and gossip).
pub struct P2pSettings {
    /// This node's network identity.
    pub identity: Identity,
    /// The network's name, which keys the handshake namespace.
    pub network: Hash,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where others reach it.
    pub dialable: SocketAddr,
    /// Peers dialed first, by key and p2p address.
    pub bootstrappers: Vec<(PeerKey, SocketAddr)>,
    /// The admitted keys and the version of the registry they were read at (the meta
    /// chain's height); asked about once a second.
    pub members: Box<dyn FnMut() -> (u64, Vec<PeerKey>) + Send>,
}

impl std::fmt::Debug for P2pSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2pSettings")
            .field("identity", &self.identity)
            .field("listen", &self.listen)
            .field("dialable", &self.dialable)
            .finish_non_exhaustive()
    }
}

/// Messages a second one peer may send on the sync channel (a status a second, requests
/// and chunks of a sync in flight, announcements). The channel's inbound mailbox holds a
/// second's worth from every key the network may know, so this and [`P2P_SET_MAX`] size it.
const P2P_RATE_PER_PEER: u32 = 100;

/// Most keys in one admitted set (see docs/SCALING.md for larger networks).
const P2P_SET_MAX: usize = 256;

/// The handshake namespace of network `network`, so that a handshake of one network is never
/// accepted by another.
fn p2p_namespace(network: &Hash) -> Vec<u8> {
    let mut ns = b"blyan-net-v1:".to_vec();
    ns.extend_from_slice(&network.0);
    ns
}

/// What [`follow`] reports once a second: the pull engine over peers' HTTP read path, and
/// the gossip engine over the p2p network when there is one.
#[derive(Clone, Debug)]
pub struct FollowReport {
    /// The HTTP engine's state.
    pub http: Snapshot,
    /// The p2p engine's state.
    pub p2p: Option<Snapshot>,
}

/// Follows `peers` over their read path until `stop` is set: each block they hold that
/// `store` lacks is fetched, checked and imported (through `store`, whose `import` runs the
/// node's follow-up), and `report` hears the engines' state about once a second. With `p2p`,
/// the node also joins the authenticated network of admitted keys, where blocks are pushed
/// (announced as soon as stored) rather than polled; the returned [`Handle`] setter hears
/// the gossip engine's handle so that the node can announce what it writes. Blocks on the
/// calling thread, which it gives a tokio runtime of its own.
pub fn follow<B: BlockStore>(
    store: Arc<B>,
    peers: &[Bootstrap],
    p2p: Option<P2pSettings>,
    stop: Arc<AtomicBool>,
    on_gossip: impl FnOnce(Handle) + Send + 'static,
    mut report: impl FnMut(&FollowReport) + Send + 'static,
) {
    // With the p2p network carrying pushes, HTTP polling is only the fallback.
    let poll = if p2p.is_some() {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(250)
    };
    let (keys, transport, cfg) = over_http(peers, poll);
    let runner = commonware_runtime::tokio::Runner::new(
        commonware_runtime::tokio::Config::new().with_worker_threads(2),
    );
    runner.start(move |context| async move {
        let (engine, handle) =
            Engine::new(context.child("follow"), cfg, transport, store.clone(), keys);
        let task = engine.start();
        let mut gossip = p2p.map(|settings| start_p2p(&context, settings, store));
        if let Some((_, h, _, _, _)) = &gossip {
            on_gossip(h.clone());
        }
        while !stop.load(Ordering::Relaxed) {
            context.sleep(Duration::from_secs(1)).await;
            let Some(http) = handle.snapshot().await else {
                break;
            };
            let mut p2p_snap = None;
            if let Some((oracle, h, members, version, me)) = &mut gossip {
                let (v, keys) = members();
                if v != *version {
                    *version = v;
                    track(oracle, v, &keys);
                    h.add_peers(keys.into_iter().filter(|k| k != me).collect());
                }
                p2p_snap = h.snapshot().await;
            }
            report(&FollowReport {
                http,
                p2p: p2p_snap,
            });
        }
        task.abort();
    });
}

type Members = Box<dyn FnMut() -> (u64, Vec<PeerKey>) + Send>;

/// Starts the discovery network and a pushing engine over it.
fn start_p2p<B: BlockStore>(
    context: &commonware_runtime::tokio::Context,
    settings: P2pSettings,
    store: Arc<B>,
) -> (
    commonware_p2p::authenticated::discovery::Oracle<PeerKey>,
    Handle,
    Members,
    u64,
    PeerKey,
) {
    use commonware_p2p::authenticated::discovery;
    use commonware_stream::{cups, sake};
    let P2pSettings {
        identity,
        network,
        listen,
        dialable,
        bootstrappers,
        mut members,
    } = settings;
    let me = identity.public_key();
    let handshake = cups::Cups::<_, commonware_cryptography::ChaCha20Poly1305>::new(
        sake::Sake {
            signer: identity.private_key().clone(),
            synchrony_bound: Duration::from_secs(5),
            max_handshake_age: Duration::from_secs(10),
            version: sake::Version::V1,
        },
        cups::Version::V1,
    );
    let mut cfg = discovery::Config::recommended(
        handshake,
        &p2p_namespace(&network),
        listen,
        dialable,
        bootstrappers
            .into_iter()
            .map(|(k, a)| (k, commonware_p2p::Ingress::Socket(a)))
            .collect(),
        NonZeroUsize::new(P2P_SET_MAX).expect("nonzero"),
        crate::wire::MSG_LEN_MAX as u32,
        NonZeroUsize::new(1024).expect("nonzero"),
    );
    // Admitted nodes may share a LAN or a machine.
    cfg.allow_private_ips = true;
    let (mut net, mut oracle) = discovery::Network::new(context.child("p2p"), cfg);
    let channel = net.register(
        0,
        commonware_runtime::Quota::per_second(NonZeroU32::new(P2P_RATE_PER_PEER).expect("nonzero")),
    );
    net.start();
    let (version, keys) = members();
    track(&mut oracle, version, &keys);
    let others: Vec<PeerKey> = keys.into_iter().filter(|k| *k != me).collect();
    let (engine, handle) = Engine::new(
        context.child("gossip"),
        Config::default(),
        P2p::new(channel),
        store,
        others,
    );
    engine.start();
    (oracle, handle, members, version, me)
}

/// Tells the network which keys it may talk to: the registry at `version`.
fn track(
    oracle: &mut commonware_p2p::authenticated::discovery::Oracle<PeerKey>,
    version: u64,
    keys: &[PeerKey],
) {
    use commonware_p2p::Manager;
    let unique: std::collections::BTreeSet<PeerKey> = keys.iter().cloned().collect();
    let set: Vec<PeerKey> = unique.into_iter().take(P2P_SET_MAX - 1).collect();
    match commonware_utils::ordered::Set::try_from(set) {
        Ok(set) => {
            let _ = oracle.track(version, set);
        }
        Err(e) => tracing::warn!(error = ?e, "the admitted keys do not form a set"),
    }
}

/// Syncs `store` with `peers` until it holds at least every head that the peers present
/// report and nothing is left to fetch, or `deadline` passes. Blocks are fetched by hash
/// from all peers at once and checked before they are stored (see [`ChainStore`]); a peer
/// that serves an invalid block is banned and the others finish the job.
pub fn join(
    store: Arc<Store>,
    network: Hash,
    peers: &[Bootstrap],
    deadline: Duration,
    chunk_len: u32,
    mut progress: impl FnMut(&Snapshot) + Send + 'static,
) -> Result<JoinReport, JoinError> {
    if let Some(held) = store
        .at_height(ChainId::Meta, 0)
        .map_err(|e| JoinError::Store(e.to_string()))?
        && held != network
    {
        return Err(JoinError::StoreOfAnotherNetwork {
            held,
            named: network,
        });
    }
    let chain = Arc::new(ChainStore::new(store, network));
    let (keys, transport, mut cfg) = over_http(peers, Duration::from_millis(500));
    cfg.chunk_len = chunk_len.clamp(1, crate::wire::CHUNK_LEN_MAX);
    let runner = commonware_runtime::tokio::Runner::new(
        commonware_runtime::tokio::Config::new().with_worker_threads(2),
    );
    runner.start(move |context| async move {
        let started = Instant::now();
        let mut last_progress = started;
        let (engine, handle) = Engine::new(context.child("join"), cfg, transport, chain, keys);
        let task = engine.start();
        let result = loop {
            // A short poll: the join ends within 5 ms of holding everything.
            context.sleep(Duration::from_millis(5)).await;
            let Some(snap) = handle.snapshot().await else {
                break Err(JoinError::Store("the sync engine stopped".into()));
            };
            if last_progress.elapsed() >= Duration::from_millis(200) {
                last_progress = Instant::now();
                progress(&snap);
            }
            let present: Vec<_> = snap.peers.iter().filter(|p| is_present(p)).collect();
            if !present.is_empty() && present.iter().all(|p| p.foreign) {
                break Err(JoinError::PeersOfAnotherNetwork {
                    named: network,
                    peers: present
                        .iter()
                        .map(|p| p.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let ours = |chain: u8| {
                snap.heads
                    .iter()
                    .find(|h| h.chain == chain)
                    .map(|h| h.height)
            };
            let caught_up = present.iter().filter(|p| !p.foreign).all(|p| {
                p.heads
                    .iter()
                    .all(|h| ours(h.chain).is_some_and(|mine| mine >= h.height))
            });
            let reported = present.iter().any(|p| !p.foreign && !p.heads.is_empty());
            if reported && caught_up && snap.wanted == 0 && ours(ChainId::Meta as u8).is_some() {
                let seconds = started.elapsed().as_secs_f64();
                break Ok(JoinReport {
                    network,
                    blocks: snap.stats.imported,
                    bytes: snap.stats.bytes_in,
                    seconds,
                    mb_per_s: snap.stats.bytes_in as f64 / 1e6 / seconds.max(1e-9),
                    snapshot: snap,
                });
            }
            if started.elapsed() >= deadline {
                break Err(JoinError::Timeout {
                    seconds: deadline.as_secs(),
                    detail: format!(
                        "{} blocks stored, {} wanted, {} of {} peers present",
                        snap.stats.imported,
                        snap.wanted,
                        present.len(),
                        snap.peers.len()
                    ),
                });
            }
        };
        task.abort();
        result
    })
}
