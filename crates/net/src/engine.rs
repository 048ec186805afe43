//! The sync engine: one task per node that answers peers' requests, pulls the blocks it
//! learns of by hash, imports them in dependency order, gossips what it stored and bans peers
//! that serve invalid data.
//!
//! It is generic over the runtime (clock, spawner, randomness) and over the p2p channel
//! (commonware's `Sender`/`Receiver`), so the same code runs on tokio with the authenticated
//! network and in the deterministic runtime with the simulated one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use blyan_chain::{Block, BlockHeader};
use blyan_primitives::{Hash, Signature};
use commonware_cryptography::ed25519;
use commonware_runtime::{Clock, Handle as TaskHandle, Spawner};
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::store::{BlockStore, ImportError};
use crate::transport::{Incoming, Transport};
use crate::wire::{CHUNK_LEN_MAX, HASHES_MAX, Head, Msg};

/// Most messages that already arrived handled in a row before the next tick (timeouts and
/// scheduling, which walks every want).
const DRAIN_MAX: usize = 256;

/// How long a peer that could not be reached is left alone.
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(2);

/// A peer's network identity.
pub type PeerKey = ed25519::PublicKey;

/// The answer of `store` to request `msg`, or `None` when `msg` asks for nothing. The engine
/// answers its peers with it, and the HTTP read path answers anyone with it.
pub fn answer<B: BlockStore + ?Sized>(store: &B, msg: &Msg) -> Option<Msg> {
    Some(match msg {
        Msg::Status { .. } => Msg::Status {
            genesis: store.genesis(),
            heads: store.heads().unwrap_or_default(),
        },
        &Msg::GetHashes {
            id,
            chain,
            from,
            max,
        } => Msg::Hashes {
            id,
            hashes: store
                .hashes(chain, from, max.min(HASHES_MAX))
                .unwrap_or_default(),
        },
        &Msg::GetHeader { id, hash } => match store.header(&hash) {
            Ok(Some((header, signature))) => Msg::Header {
                id,
                header,
                signature,
            },
            _ => Msg::NotFound { id },
        },
        &Msg::GetChunk {
            id,
            hash,
            offset,
            len,
        } => match store.chunk(&hash, offset, len.min(CHUNK_LEN_MAX)) {
            Ok(Some(bytes)) => Msg::Chunk { id, bytes },
            _ => Msg::NotFound { id },
        },
        _ => return None,
    })
}

/// The engine's timings and bounds.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often timeouts are checked and requests scheduled.
    pub tick: Duration,
    /// How often a [`Msg::Status`] goes out.
    pub status_every: Duration,
    /// Peers that get each status.
    pub status_fanout: usize,
    /// Peers that get each announcement.
    pub gossip_fanout: usize,
    /// A request unanswered this long is given up and asked again elsewhere.
    pub request_timeout: Duration,
    /// Requests outstanding at one peer at once.
    pub inflight_per_peer: usize,
    /// Chunk requests outstanding for one block at once.
    pub inflight_per_block: usize,
    /// Payload bytes per chunk request, at most [`CHUNK_LEN_MAX`].
    pub chunk_len: u32,
    /// First ban's length; each later ban of the same peer doubles it.
    pub ban_base: Duration,
    /// Longest ban.
    pub ban_max: Duration,
    /// Most blocks being fetched at once; more are learnt again from later statuses.
    pub wants_max: usize,
    /// Whether new blocks are announced to peers (pushed); pull-only transports such as
    /// HTTP turn it off and rely on statuses.
    pub push: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick: Duration::from_millis(50),
            status_every: Duration::from_secs(1),
            status_fanout: 3,
            gossip_fanout: 8,
            request_timeout: Duration::from_secs(3),
            inflight_per_peer: 16,
            inflight_per_block: 4,
            chunk_len: CHUNK_LEN_MAX,
            ban_base: Duration::from_secs(30),
            ban_max: Duration::from_secs(3600),
            wants_max: 65_536,
            push: true,
        }
    }
}

/// Counters since the engine started.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Messages received.
    pub msgs_in: u64,
    /// Messages sent (one per recipient).
    pub msgs_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent (one copy per recipient).
    pub bytes_out: u64,
    /// Blocks imported from peers.
    pub imported: u64,
    /// Bans handed out.
    pub bans: u64,
    /// Messages that were not the protocol, or from a banned peer.
    pub dropped: u64,
    /// Valid blocks refused because another block holds their place.
    pub conflicts: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Times a peer could not be reached.
    pub unreachable: u64,
}

/// What the engine knows of one peer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerInfo {
    /// The peer's network key, hex.
    pub key: String,
    /// The heads of its last status.
    pub heads: Vec<Head>,
    /// Smoothed request round trip in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Blocks it served that we stored.
    pub blocks_from: u64,
    /// Block headers we served it.
    pub blocks_to: u64,
    /// Times it was banned.
    pub bans: u32,
    /// Milliseconds of ban left, if banned now.
    pub banned_for_ms: Option<u64>,
    /// Whether its status named another network.
    pub foreign: bool,
    /// Milliseconds since its last message, if it ever sent one.
    pub silent_for_ms: Option<u64>,
    /// Why it was last banned.
    pub last_ban: Option<String>,
}

/// A snapshot of the engine for `net peers`, metrics and tests.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Snapshot {
    /// Our heads.
    pub heads: Vec<Head>,
    /// Every known peer.
    pub peers: Vec<PeerInfo>,
    /// Blocks being fetched.
    pub wanted: usize,
    /// Counters.
    pub stats: Stats,
}

enum Command {
    Announce(Hash),
    AddPeers(Vec<PeerKey>),
    Snapshot(oneshot::Sender<Snapshot>),
}

/// The node's side of a running engine.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Announce(h) => write!(f, "Announce({h})"),
            Command::AddPeers(p) => write!(f, "AddPeers({})", p.len()),
            Command::Snapshot(_) => f.write_str("Snapshot"),
        }
    }
}

impl Handle {
    /// Tells peers of a block stored locally.
    pub fn announce(&self, hash: Hash) {
        let _ = self.tx.unbounded_send(Command::Announce(hash));
    }

    /// Adds peers to talk to.
    pub fn add_peers(&self, peers: Vec<PeerKey>) {
        let _ = self.tx.unbounded_send(Command::AddPeers(peers));
    }

    /// The engine's state now, or `None` once it stopped.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.unbounded_send(Command::Snapshot(tx)).ok()?;
        rx.await.ok()
    }
}

#[derive(Default)]
struct Peer {
    heads: BTreeMap<u8, (u64, Hash)>,
    inflight: usize,
    rtt_ms: Option<f64>,
    blocks_from: u64,
    blocks_to: u64,
    bans: u32,
    banned_until: Option<SystemTime>,
    foreign: bool,
    last_heard: Option<SystemTime>,
    down_until: Option<SystemTime>,
    last_ban: Option<String>,
}

enum Slot {
    Missing,
    InFlight,
    Have(Vec<u8>),
}

enum WantState {
    /// Nothing asked yet, or the last ask failed.
    Idle,
    /// The header was asked of a peer.
    Header,
    /// The header checked out; the payload comes from `peer`, chunk by chunk.
    Payload {
        header: BlockHeader,
        signature: Signature,
        peer: PeerKey,
        slots: Vec<Slot>,
    },
}

struct Want {
    /// Chain and height, when a hash page or the header said so.
    place: Option<(u8, u64)>,
    /// Peers that said they hold it.
    sources: BTreeSet<PeerKey>,
    /// Peers that said they do not, or failed to serve it.
    refused: BTreeSet<PeerKey>,
    state: WantState,
    /// Not asked again before this, after a header that could not be judged yet.
    retry_at: Option<SystemTime>,
}

enum Asked {
    Hashes { chain: u8 },
    Header { hash: Hash },
    Chunk { hash: Hash, index: usize },
}

/// A block being imported, and what judging its verdict needs.
struct Importing {
    hash: Hash,
    peer: PeerKey,
    parents: Vec<Hash>,
    place: (u8, u64),
}

/// A finished import: its blocks and their verdicts, in the same order.
type Imported = (Vec<Importing>, Vec<Result<(), ImportError>>);

struct Pending {
    peer: PeerKey,
    asked: Asked,
    sent: SystemTime,
}

/// The sync engine of one node.
pub struct Engine<E, T, B> {
    context: E,
    cfg: Config,
    transport: T,
    store: Arc<B>,
    mailbox: mpsc::UnboundedReceiver<Command>,
    rng: ChaCha8Rng,
    peers: BTreeMap<PeerKey, Peer>,
    wants: BTreeMap<Hash, Want>,
    ready: BTreeMap<Hash, (Block, PeerKey)>,
    /// The blocks of the import running now, if one is.
    importing: Option<HashSet<Hash>>,
    imported_tx: mpsc::UnboundedSender<Imported>,
    imported_rx: mpsc::UnboundedReceiver<Imported>,
    bad: HashSet<Hash>,
    pending: BTreeMap<u64, Pending>,
    syncing: BTreeSet<u8>,
    next_id: u64,
    next_status: SystemTime,
    stats: Stats,
}

impl<E, T, B> std::fmt::Debug for Engine<E, T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("peers", &self.peers.len())
            .field("wants", &self.wants.len())
            .finish_non_exhaustive()
    }
}

impl<E, T, B> Engine<E, T, B>
where
    E: Clock + Spawner + rand_core_cw::Rng,
    T: Transport,
    B: BlockStore,
{
    /// An engine over `store` that talks through `transport` to `peers`.
    pub fn new(
        mut context: E,
        cfg: Config,
        transport: T,
        store: Arc<B>,
        peers: Vec<PeerKey>,
    ) -> (Self, Handle) {
        assert!(cfg.chunk_len > 0 && cfg.chunk_len <= CHUNK_LEN_MAX);
        let (tx, mailbox) = mpsc::unbounded();
        let (imported_tx, imported_rx) = mpsc::unbounded();
        let rng = ChaCha8Rng::seed_from_u64(context.next_u64());
        let now = context.current();
        let engine = Engine {
            context,
            cfg,
            transport,
            store,
            mailbox,
            rng,
            peers: peers.into_iter().map(|p| (p, Peer::default())).collect(),
            wants: BTreeMap::new(),
            ready: BTreeMap::new(),
            importing: None,
            imported_tx,
            imported_rx,
            bad: HashSet::new(),
            pending: BTreeMap::new(),
            syncing: BTreeSet::new(),
            next_id: 1,
            next_status: now,
            stats: Stats::default(),
        };
        (engine, Handle { tx })
    }

    /// Runs the engine on its own task until the p2p channel or every [`Handle`] closes.
    pub fn start(self) -> TaskHandle<()> {
        self.context.child("sync").spawn(move |_| self.run())
    }

    async fn run(mut self) {
        // The first status goes out at once, not after the first tick.
        self.on_tick();
        loop {
            let deadline = self.context.current() + self.cfg.tick;
            let sleep = self.context.sleep_until(deadline);
            commonware_macros::select! {
                msg = self.transport.recv() => {
                    let Some(first) = msg else {
                        return;
                    };
                    self.on_incoming(first);
                    // What else has already arrived is handled before the next tick, which
                    // walks every want: one scheduling pass per burst, not per message.
                    for _ in 1..DRAIN_MAX {
                        match self.transport.recv().now_or_never() {
                            Some(Some(next)) => self.on_incoming(next),
                            Some(None) => return,
                            None => break,
                        }
                    }
                },
                done = self.imported_rx.next() => {
                    if let Some((entries, verdicts)) = done {
                        self.on_imported(entries, verdicts);
                    }
                },
                cmd = self.mailbox.next() => {
                    match cmd {
                        Some(cmd) => self.on_command(cmd),
                        None => return,
                    }
                },
                _ = sleep => {},
            }
            self.on_tick();
        }
    }

    fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Message(peer, bytes) => self.on_message(peer, bytes),
            Incoming::Unreachable(peer) => self.on_unreachable(&peer),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Announce(hash) => self.gossip(hash, None),
            Command::AddPeers(peers) => {
                for p in peers {
                    self.peers.entry(p).or_default();
                }
            }
            Command::Snapshot(tx) => {
                let _ = tx.send(self.snapshot());
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let now = self.context.current();
        Snapshot {
            heads: self.store.heads().unwrap_or_default(),
            peers: self
                .peers
                .iter()
                .map(|(k, p)| PeerInfo {
                    key: k.to_string(),
                    heads: p
                        .heads
                        .iter()
                        .map(|(c, (height, hash))| Head {
                            chain: *c,
                            height: *height,
                            hash: *hash,
                        })
                        .collect(),
                    rtt_ms: p.rtt_ms,
                    blocks_from: p.blocks_from,
                    blocks_to: p.blocks_to,
                    bans: p.bans,
                    banned_for_ms: p
                        .banned_until
                        .and_then(|u| u.duration_since(now).ok())
                        .map(|d| d.as_millis() as u64),
                    foreign: p.foreign,
                    silent_for_ms: p
                        .last_heard
                        .map(|t| now.duration_since(t).unwrap_or_default().as_millis() as u64),
                    last_ban: p.last_ban.clone(),
                })
                .collect(),
            wanted: self.wants.len()
                + self.ready.len()
                + self.importing.as_ref().map_or(0, HashSet::len),
            stats: self.stats.clone(),
        }
    }

    fn is_banned(&self, peer: &PeerKey, now: SystemTime) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.banned_until)
            .is_some_and(|u| u > now)
    }

    fn usable(&self, peer: &PeerKey, now: SystemTime) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            !p.foreign
                && p.banned_until.is_none_or(|u| u <= now)
                && p.down_until.is_none_or(|u| u <= now)
        })
    }

    /// Bans `peer` for a time that doubles with each ban, forgets what it claimed to hold and
    /// drops its outstanding requests.
    fn ban(&mut self, peer: &PeerKey, why: &str) {
        let now = self.context.current();
        let (base, max) = (self.cfg.ban_base, self.cfg.ban_max);
        let p = self.peers.entry(peer.clone()).or_default();
        p.bans = p.bans.saturating_add(1);
        let factor = 1u32 << (p.bans - 1).min(20);
        let length = base.saturating_mul(factor).min(max);
        p.banned_until = Some(now + length);
        p.last_ban = Some(why.to_owned());
        p.heads.clear();
        self.stats.bans += 1;
        tracing::warn!(peer = %peer, why, ban_s = length.as_secs(), "peer banned");
        self.fail_pending(peer);
        if let Some(p) = self.peers.get_mut(peer) {
            p.inflight = 0;
        }
        for want in self.wants.values_mut() {
            want.sources.remove(peer);
            want.refused.insert(peer.clone());
            if matches!(&want.state, WantState::Payload { peer: q, .. } if q == peer) {
                want.state = WantState::Idle;
            }
        }
        self.ready.retain(|_, (_, from)| from != peer);
    }

    /// Gives up every request outstanding at `peer`, as failed by it.
    fn fail_pending(&mut self, peer: &PeerKey) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, q)| &q.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(q) = self.pending.remove(&id) {
                self.release(q, true);
            }
        }
    }

    /// A peer the transport could not reach: its outstanding requests go elsewhere at once,
    /// and it is not asked again for a moment (it is not banned: it did nothing wrong).
    fn on_unreachable(&mut self, peer: &PeerKey) {
        let until = self.context.current() + UNREACHABLE_PAUSE;
        self.stats.unreachable += 1;
        if let Some(p) = self.peers.get_mut(peer) {
            p.down_until = Some(until);
        }
        self.fail_pending(peer);
    }

    fn send(&mut self, to: &PeerKey, msg: &Msg) {
        let bytes = msg.encode();
        let n = bytes.len() as u64;
        if self.transport.send(to, bytes) {
            self.stats.msgs_out += 1;
            self.stats.bytes_out += n;
        }
    }

    fn ask(&mut self, peer: &PeerKey, asked: Asked, msg: impl FnOnce(u64) -> Msg) {
        let id = self.next_id;
        self.next_id += 1;
        let m = msg(id);
        self.send(peer, &m);
        if let Some(p) = self.peers.get_mut(peer) {
            p.inflight += 1;
        }
        let sent = self.context.current();
        self.pending.insert(
            id,
            Pending {
                peer: peer.clone(),
                asked,
                sent,
            },
        );
    }

    /// Puts what request `q` was fetching back up for asking; `failed` marks the peer as
    /// unable to serve it.
    fn release(&mut self, q: Pending, failed: bool) {
        if let Some(p) = self.peers.get_mut(&q.peer) {
            p.inflight = p.inflight.saturating_sub(1);
        }
        match q.asked {
            Asked::Hashes { chain } => {
                self.syncing.remove(&chain);
            }
            Asked::Header { hash } => {
                if let Some(w) = self.wants.get_mut(&hash) {
                    if failed {
                        w.refused.insert(q.peer.clone());
                    }
                    if matches!(w.state, WantState::Header) {
                        w.state = WantState::Idle;
                    }
                }
            }
            Asked::Chunk { hash, index } => {
                if let Some(w) = self.wants.get_mut(&hash) {
                    if failed {
                        // The payload comes from one peer, so that a wrong payload has one
                        // culprit: start over with another.
                        w.refused.insert(q.peer.clone());
                        w.state = WantState::Idle;
                    } else if let WantState::Payload { slots, .. } = &mut w.state
                        && let Some(s @ Slot::InFlight) = slots.get_mut(index)
                    {
                        *s = Slot::Missing;
                    }
                }
            }
        }
    }

    fn on_message(&mut self, peer: PeerKey, bytes: Vec<u8>) {
        self.stats.msgs_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let now = self.context.current();
        if self.is_banned(&peer, now) {
            self.stats.dropped += 1;
            return;
        }
        self.peers.entry(peer.clone()).or_default().last_heard = Some(now);
        let msg = match Msg::decode_owned(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.dropped += 1;
                self.ban(&peer, &e.to_string());
                return;
            }
        };
        if let Some(id) = msg.response_id() {
            let Some(q) = self.pending.remove(&id) else {
                // Late (after its timeout) or never asked: ignored.
                self.stats.dropped += 1;
                return;
            };
            if q.peer != peer {
                // Someone else's id: put it back and ignore the message.
                self.pending.insert(id, q);
                self.stats.dropped += 1;
                return;
            }
            let rtt = now.duration_since(q.sent).unwrap_or_default().as_secs_f64() * 1e3;
            if let Some(p) = self.peers.get_mut(&peer) {
                p.rtt_ms = Some(p.rtt_ms.map_or(rtt, |r| 0.8 * r + 0.2 * rtt));
            }
            self.on_response(peer, q, msg);
            return;
        }
        match msg {
            Msg::Status { genesis, heads } => self.on_status(peer, genesis, heads),
            Msg::Announce { hash } => {
                if self.usable(&peer, now) {
                    self.want(hash, None, Some(&peer));
                }
            }
            Msg::GetHashes { .. } | Msg::GetHeader { .. } | Msg::GetChunk { .. } => {
                let reply = answer(self.store.as_ref(), &msg).expect("a request has an answer");
                if matches!(reply, Msg::Header { .. })
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.blocks_to += 1;
                }
                self.send(&peer, &reply);
            }
            _ => self.stats.dropped += 1,
        }
    }

    fn on_status(&mut self, peer: PeerKey, genesis: Hash, heads: Vec<Head>) {
        let ours = self.store.genesis();
        let p = self.peers.entry(peer.clone()).or_default();
        if genesis != ours {
            p.foreign = true;
            p.heads.clear();
            return;
        }
        p.foreign = false;
        p.heads = heads
            .iter()
            .map(|h| (h.chain, (h.height, h.hash)))
            .collect();
        let local: BTreeMap<u8, u64> = self
            .store
            .heads()
            .unwrap_or_default()
            .into_iter()
            .map(|h| (h.chain, h.height))
            .collect();
        let mut behind_us = false;
        for h in &heads {
            match local.get(&h.chain) {
                Some(&mine) if mine >= h.height => behind_us |= mine > h.height,
                _ => {
                    // Behind: the head itself, and the gap below it page by page. Asking
                    // again on each status repairs a gap whose fetches all failed.
                    self.want(h.hash, Some((h.chain, h.height)), Some(&peer));
                    self.sync_hashes(h.chain, &peer, local.get(&h.chain).copied());
                }
            }
        }
        behind_us |= local.keys().any(|c| !heads.iter().any(|h| h.chain == *c));
        // A pushing peer is told that it is behind; over a pull-only transport every status
        // sent is answered with a status, so replying would never end.
        if behind_us && self.cfg.push {
            let status = self.status();
            self.send(&peer, &status);
        }
    }

    fn status(&self) -> Msg {
        answer(
            self.store.as_ref(),
            &Msg::Status {
                genesis: Hash::ZERO,
                heads: Vec::new(),
            },
        )
        .expect("a status has an answer")
    }

    /// Asks `peer` for a page of `chain`'s hashes above the stored head, unless a page of
    /// that chain is already being asked for.
    fn sync_hashes(&mut self, chain: u8, peer: &PeerKey, local: Option<u64>) {
        if self.syncing.contains(&chain) || self.wants.len() >= self.cfg.wants_max {
            return;
        }
        let from = local.map_or(0, |l| l + 1);
        self.syncing.insert(chain);
        self.ask(peer, Asked::Hashes { chain }, |id| Msg::GetHashes {
            id,
            chain,
            from,
            max: HASHES_MAX,
        });
    }

    fn want(&mut self, hash: Hash, place: Option<(u8, u64)>, source: Option<&PeerKey>) {
        if self.bad.contains(&hash) {
            return;
        }
        if let Some(w) = self.wants.get_mut(&hash) {
            if let Some(s) = source
                && !w.refused.contains(s)
            {
                w.sources.insert(s.clone());
            }
            if w.place.is_none() {
                w.place = place;
            }
            return;
        }
        if self.ready.contains_key(&hash)
            || self.importing.as_ref().is_some_and(|i| i.contains(&hash))
            || self.store.has(&hash).unwrap_or(true)
        {
            return;
        }
        if self.wants.len() >= self.cfg.wants_max {
            return;
        }
        self.wants.insert(
            hash,
            Want {
                place,
                sources: source.into_iter().cloned().collect(),
                refused: BTreeSet::new(),
                state: WantState::Idle,
                retry_at: None,
            },
        );
    }

    fn on_response(&mut self, peer: PeerKey, q: Pending, msg: Msg) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.inflight = p.inflight.saturating_sub(1);
        }
        match (q.asked, msg) {
            (Asked::Hashes { chain }, Msg::Hashes { hashes, .. }) => {
                self.syncing.remove(&chain);
                let local = self
                    .store
                    .heads()
                    .unwrap_or_default()
                    .into_iter()
                    .find(|h| h.chain == chain)
                    .map(|h| h.height);
                let from = local.map_or(0, |l| l + 1);
                let full = hashes.len() == HASHES_MAX as usize;
                for (i, hash) in hashes.into_iter().enumerate() {
                    self.want(hash, Some((chain, from + i as u64)), Some(&peer));
                }
                if full {
                    let top = from + u64::from(HASHES_MAX) - 1;
                    self.sync_hashes(chain, &peer, Some(top));
                }
            }
            (
                Asked::Header { hash },
                Msg::Header {
                    header, signature, ..
                },
            ) => self.on_header(peer, hash, &header, &signature),
            (Asked::Chunk { hash, index }, Msg::Chunk { bytes, .. }) => {
                self.on_chunk(peer, hash, index, bytes)
            }
            (asked, Msg::NotFound { .. }) => {
                let q = Pending {
                    peer,
                    asked,
                    sent: q.sent,
                };
                // `release` decrements again; undo the decrement above first.
                if let Some(p) = self.peers.get_mut(&q.peer) {
                    p.inflight += 1;
                }
                self.release(q, true);
            }
            (asked, _) => {
                // A response of the wrong kind for its id.
                let q = Pending {
                    peer: peer.clone(),
                    asked,
                    sent: q.sent,
                };
                if let Some(p) = self.peers.get_mut(&q.peer) {
                    p.inflight += 1;
                }
                self.release(q, true);
                self.ban(&peer, "response of the wrong kind");
            }
        }
    }

    fn on_header(&mut self, peer: PeerKey, hash: Hash, header: &[u8], signature: &[u8]) {
        let Some(want) = self.wants.get(&hash) else {
            return;
        };
        if !matches!(want.state, WantState::Header) {
            return;
        }
        let checked = self.store.check_header(&hash, header, signature);
        let header = match checked {
            Ok(h) => h,
            Err(e) if e.condemns_block() => {
                self.bad_block(hash, &peer, &e);
                return;
            }
            Err(e) if e.blames_peer() => {
                // Another block's header: the peer lied, the block asked for is still wanted.
                if let Some(w) = self.wants.get_mut(&hash) {
                    w.state = WantState::Idle;
                    w.sources.remove(&peer);
                    w.refused.insert(peer.clone());
                }
                self.ban(&peer, &e.to_string());
                return;
            }
            Err(e) => {
                tracing::debug!(%hash, error = %e, "header not judged");
                let later = self.context.current() + Duration::from_secs(1);
                if let Some(w) = self.wants.get_mut(&hash) {
                    w.state = WantState::Idle;
                    w.retry_at = Some(later);
                }
                return;
            }
        };
        let signature = Signature::from_slice(signature).expect("checked by check_header");
        if header.height == 0 && !header.prev.is_zero()
            || header.height > 0 && header.prev.is_zero()
        {
            let e = ImportError::Invalid("height and previous block disagree".into());
            self.bad_block(hash, &peer, &e);
            return;
        }
        let mut parents = header.depends_on.clone();
        parents.push(header.prev);
        if let Some(p) = parents.iter().find(|p| self.bad.contains(*p)) {
            let e = ImportError::Invalid(format!("builds on invalid block {p}"));
            self.bad_block(hash, &peer, &e);
            return;
        }
        if !header.prev.is_zero() {
            let place = (header.chain as u8, header.height - 1);
            self.want(header.prev, Some(place), Some(&peer));
        }
        for p in &header.depends_on {
            self.want(*p, None, Some(&peer));
        }
        let chunk = u64::from(self.cfg.chunk_len);
        let n = header.payload_len.div_ceil(chunk) as usize;
        let place = (header.chain as u8, header.height);
        if let Some(w) = self.wants.get_mut(&hash) {
            w.place = Some(place);
            w.state = WantState::Payload {
                header,
                signature,
                peer,
                slots: (0..n).map(|_| Slot::Missing).collect(),
            };
        }
        self.complete(hash);
    }

    fn on_chunk(&mut self, peer: PeerKey, hash: Hash, index: usize, bytes: Vec<u8>) {
        let chunk = u64::from(self.cfg.chunk_len);
        let Some(w) = self.wants.get_mut(&hash) else {
            return;
        };
        let WantState::Payload {
            header,
            peer: from,
            slots,
            ..
        } = &mut w.state
        else {
            return;
        };
        if *from != peer {
            return;
        }
        let start = index as u64 * chunk;
        let expected = (header.payload_len - start).min(chunk) as usize;
        if bytes.len() != expected {
            let e = ImportError::Invalid(format!(
                "chunk {index} of {hash} is {} bytes, {expected} expected",
                bytes.len()
            ));
            self.stats.dropped += 1;
            w.state = WantState::Idle;
            w.refused.insert(peer.clone());
            self.ban(&peer, &e.to_string());
            return;
        }
        if let Some(s) = slots.get_mut(index) {
            *s = Slot::Have(bytes);
        }
        self.complete(hash);
    }

    /// Moves block `hash` to the import queue once every chunk of it arrived.
    fn complete(&mut self, hash: Hash) {
        let Some(w) = self.wants.get(&hash) else {
            return;
        };
        let WantState::Payload { slots, .. } = &w.state else {
            return;
        };
        if !slots.iter().all(|s| matches!(s, Slot::Have(_))) {
            return;
        }
        let w = self.wants.remove(&hash).expect("present");
        let WantState::Payload {
            header,
            signature,
            peer,
            slots,
        } = w.state
        else {
            unreachable!("matched above")
        };
        // The first chunk's buffer becomes the payload; the others are appended to it.
        let mut chunks = slots.into_iter().filter_map(|s| match s {
            Slot::Have(b) => Some(b),
            _ => None,
        });
        let mut payload = chunks.next().unwrap_or_default();
        payload.reserve_exact((header.payload_len as usize).saturating_sub(payload.len()));
        for b in chunks {
            payload.extend_from_slice(&b);
        }
        // The payload's hash is checked once, by the store's import (`WrongPayload`: the
        // peer that sent it is banned and the block asked for elsewhere).
        let block = Block {
            header,
            payload,
            signature: Some(signature),
        };
        self.ready.insert(hash, (block, peer));
        self.start_import();
    }

    fn bad_block(&mut self, hash: Hash, peer: &PeerKey, e: &ImportError) {
        tracing::warn!(%hash, error = %e, "invalid block from a peer");
        if self.bad.len() >= 65_536 {
            self.bad.clear();
        }
        self.bad.insert(hash);
        self.wants.remove(&hash);
        self.ban(peer, &e.to_string());
    }

    /// Starts importing, on a task of its own, every ready block whose parents are stored
    /// or in the same batch, unless an import is running: the engine goes on asking and
    /// answering meanwhile, and what completes in the meantime makes the next batch (a
    /// group commit: the longer an import takes, the larger the next).
    fn start_import(&mut self) {
        if self.importing.is_some() || self.ready.is_empty() {
            return;
        }
        // Parents first: each round adds the blocks whose parents are stored or already in
        // the batch.
        let mut batch: Vec<Hash> = Vec::new();
        let mut inside: HashSet<Hash> = HashSet::new();
        loop {
            let before = batch.len();
            for (hash, (block, _)) in &self.ready {
                if inside.contains(hash) {
                    continue;
                }
                let h = &block.header;
                let parents_there = h
                    .depends_on
                    .iter()
                    .chain(std::iter::once(&h.prev).filter(|p| !p.is_zero()))
                    .all(|p| inside.contains(p) || self.store.has(p).unwrap_or(false));
                if parents_there {
                    batch.push(*hash);
                    inside.insert(*hash);
                }
            }
            if batch.len() == before {
                break;
            }
        }
        if batch.is_empty() {
            return;
        }
        let mut blocks = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        for hash in batch {
            let (block, peer) = self.ready.remove(&hash).expect("listed");
            let h = &block.header;
            let mut parents = h.depends_on.clone();
            parents.push(h.prev);
            entries.push(Importing {
                hash,
                peer,
                parents,
                place: (h.chain as u8, h.height),
            });
            blocks.push(block);
        }
        self.importing = Some(inside);
        let (store, done) = (self.store.clone(), self.imported_tx.clone());
        self.context
            .child("import")
            .shared(true)
            .spawn(move |_| async move {
                let verdicts = store.import_all(blocks);
                let _ = done.unbounded_send((entries, verdicts));
            });
    }

    /// Judges the blocks of a finished import by their verdicts and starts the next one.
    fn on_imported(&mut self, entries: Vec<Importing>, verdicts: Vec<Result<(), ImportError>>) {
        self.importing = None;
        let mut failed: HashSet<Hash> = HashSet::new();
        for (entry, verdict) in entries.into_iter().zip(verdicts) {
            let Importing {
                hash,
                peer,
                parents,
                place,
            } = entry;
            if parents.iter().any(|p| failed.contains(p)) {
                // Its parent in this batch was refused: its own verdict says nothing about
                // it. It is fetched again once the parent is stored.
                failed.insert(hash);
                self.want(hash, Some(place), None);
                continue;
            }
            match verdict {
                Ok(()) => {
                    self.stats.imported += 1;
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.blocks_from += 1;
                    }
                    self.gossip(hash, Some(&peer));
                    continue;
                }
                Err(e) if e.condemns_block() => self.bad_block(hash, &peer, &e),
                Err(ImportError::WrongPayload(reason)) => {
                    // The header is the block's; the bytes were the peer's doing.
                    self.ban(
                        &peer,
                        &format!("payload does not match its header: {reason}"),
                    );
                    self.want(hash, Some(place), None);
                }
                Err(ImportError::Conflict(reason)) => {
                    tracing::info!(%hash, reason, "conflicting block kept out");
                    self.stats.conflicts += 1;
                }
                Err(e) => tracing::warn!(%hash, error = %e, "import failed locally"),
            }
            failed.insert(hash);
        }
        self.start_import();
    }

    /// Announces `hash` to a few random peers other than `except`.
    fn gossip(&mut self, hash: Hash, except: Option<&PeerKey>) {
        if !self.cfg.push {
            return;
        }
        let now = self.context.current();
        let mut targets: Vec<PeerKey> = self
            .peers
            .keys()
            .filter(|k| Some(*k) != except && self.usable(k, now))
            .cloned()
            .collect();
        targets.shuffle(&mut self.rng);
        targets.truncate(self.cfg.gossip_fanout);
        for t in targets {
            self.send(&t, &Msg::Announce { hash });
        }
    }

    fn on_tick(&mut self) {
        // Ready blocks whose parents were stored by someone else (a local append).
        self.start_import();
        let now = self.context.current();
        // Timeouts.
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, q)| {
                now.duration_since(q.sent).unwrap_or_default() >= self.cfg.request_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(q) = self.pending.remove(&id) {
                self.stats.timeouts += 1;
                self.release(q, true);
            }
        }
        // Status.
        if now >= self.next_status {
            self.next_status = now + self.cfg.status_every;
            let mut targets: Vec<PeerKey> = self
                .peers
                .keys()
                .filter(|k| !self.is_banned(k, now))
                .cloned()
                .collect();
            targets.shuffle(&mut self.rng);
            targets.truncate(self.cfg.status_fanout);
            let status = self.status();
            for t in targets {
                self.send(&t, &status);
            }
        }
        self.schedule(now);
    }

    /// Asks for what is wanted, from peers with room for more requests.
    fn schedule(&mut self, now: SystemTime) {
        let cap = self.cfg.inflight_per_peer;
        let chunk = u64::from(self.cfg.chunk_len);
        // Nothing can be judged before the spec block, whose author is the network's writer:
        // until it is stored, it is the only block asked for.
        let genesis = self.store.genesis();
        let hashes: Vec<Hash> = if self.store.has(&genesis).unwrap_or(false) {
            // Lowest heights first: a chain is imported in order, so the block that lets the
            // most others be imported is the one to have soonest; blocks of unknown place
            // (announced only) last.
            let mut order: Vec<(Option<(u8, u64)>, Hash)> =
                self.wants.iter().map(|(h, w)| (w.place, *h)).collect();
            order.sort_by_key(|(place, hash)| {
                (place.is_none(), place.map(|(_, height)| height), *hash)
            });
            order.into_iter().map(|(_, h)| h).collect()
        } else {
            if !self.wants.contains_key(&genesis)
                && self.peers.values().any(|p| !p.heads.is_empty())
            {
                self.want(genesis, Some((0, 0)), None);
            }
            self.wants
                .contains_key(&genesis)
                .then_some(genesis)
                .into_iter()
                .collect()
        };
        let mut dead = Vec::new();
        for hash in hashes {
            let w = &self.wants[&hash];
            match &w.state {
                WantState::Idle if w.retry_at.is_some_and(|t| t > now) => {}
                WantState::Idle => {
                    let mut candidates: Vec<PeerKey> = w
                        .sources
                        .iter()
                        .chain(self.holders(w.place).iter())
                        .filter(|p| !w.refused.contains(*p) && self.usable(p, now))
                        .cloned()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    if candidates.is_empty() {
                        if w.place.is_none() {
                            // Only its announcers knew of it, and they all failed.
                            if w.sources.iter().all(|s| w.refused.contains(s)) {
                                dead.push(hash);
                            }
                        } else if let Some(w) = self.wants.get_mut(&hash) {
                            // Its chain's holders all failed once: give them another try.
                            w.refused.clear();
                        }
                        continue;
                    }
                    candidates.shuffle(&mut self.rng);
                    let Some(peer) = candidates
                        .iter()
                        .filter(|p| self.peers[*p].inflight < cap)
                        .min_by_key(|p| self.peers[*p].inflight)
                        .cloned()
                    else {
                        continue;
                    };
                    if let Some(w) = self.wants.get_mut(&hash) {
                        w.state = WantState::Header;
                    }
                    self.ask(&peer, Asked::Header { hash }, |id| Msg::GetHeader {
                        id,
                        hash,
                    });
                }
                WantState::Header => {}
                WantState::Payload { peer, slots, .. } => {
                    let peer = peer.clone();
                    let in_flight = slots.iter().filter(|s| matches!(s, Slot::InFlight)).count();
                    let room =
                        self.cfg.inflight_per_block.saturating_sub(in_flight).min(
                            cap.saturating_sub(self.peers.get(&peer).map_or(cap, |p| p.inflight)),
                        );
                    let missing: Vec<usize> = slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| matches!(s, Slot::Missing))
                        .map(|(i, _)| i)
                        .take(room)
                        .collect();
                    for index in missing {
                        if let Some(Want {
                            state: WantState::Payload { slots, .. },
                            ..
                        }) = self.wants.get_mut(&hash)
                        {
                            slots[index] = Slot::InFlight;
                        }
                        let offset = index as u64 * chunk;
                        let len = self.cfg.chunk_len;
                        self.ask(&peer, Asked::Chunk { hash, index }, |id| Msg::GetChunk {
                            id,
                            hash,
                            offset,
                            len,
                        });
                    }
                }
            }
        }
        for hash in dead {
            self.wants.remove(&hash);
        }
    }

    /// Peers whose last status put the head of `place`'s chain at or above its height.
    fn holders(&self, place: Option<(u8, u64)>) -> Vec<PeerKey> {
        let Some((chain, height)) = place else {
            return Vec::new();
        };
        self.peers
            .iter()
            .filter(|(_, p)| p.heads.get(&chain).is_some_and(|(h, _)| *h >= height))
            .map(|(k, _)| k.clone())
            .collect()
    }
}
