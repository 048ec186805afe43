//! Experts served across machines: which experts this node computes itself (`experts`, for
//! example `0.*,1.0-1.3`), what it tells other nodes it hosts (`GET /experts/hosted`), the
//! table of what its peers host (asked every [`HEARTBEAT`], forgotten after [`HOST_TTL`]),
//! and the calls that send a layer's rows for the experts it does not compute to a host of
//! that exact block, in parallel, each answer signed by the host.
//!
//! A call no host answers in time, or answers wrongly signed or malformed, is computed here
//! from the expert's block (every node keeps the whole chain): a host that dies costs a
//! request time, never the answer. A block this node cannot read (missing or corrupt) is
//! fetched by hash from a peer (`GET /chain/blocks/{hash}/payload`), checked against its
//! header and stored in place of the bad copy; only when no peer has a good copy does the
//! model go on without the expert, and say so.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use blyan_model::{ExpertHosts, RemoteAnswer, RemoteCall, RemoteOutcome};
use blyan_primitives::{Address, ExpertId, Hash, Signature};
use ed25519_dalek::{Signer as _, SigningKey as AnswerSigningKey, VerifyingKey};
use serde::Serialize;

use crate::NodeError;

pub mod calls;
mod client;

pub use calls::{
    AnswerStatement, Dispatch, Exchange, HostInfo, HostTable, Outgoing, Target, Unheard,
};

/// How often the peers are asked what they host.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an answer of a peer is trusted without a newer one.
pub const HOST_TTL: Duration = Duration::from_secs(10);
/// How long one remote expert call may take before the next host, or this node, computes it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long fetching an expert block's payload from one peer may take.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// When a call is hedged before its host has a latency history.
const HEDGE_DEFAULT: Duration = Duration::from_millis(50);
/// Round trips kept per host for its p95.
const RECENT_CALLS: usize = 32;
/// Spot-checked share of remote calls by default, parts per million (2%).
pub const CHECK_PPM_DEFAULT: u32 = 20_000;

/// Most rows one call carries (a step's tokens routed to one expert).
pub const CALL_ROWS_MAX: usize = 4096;

/// Which experts a node computes: `*` (all), or a comma-separated list of `L.*` (all of
/// layer `L`), `L.E` and `L.E1-E2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpertSet {
    text: String,
    #[serde(skip)]
    items: Vec<(u16, Option<(u16, u16)>)>,
}

impl std::str::FromStr for ExpertSet {
    type Err = NodeError;

    fn from_str(text: &str) -> Result<ExpertSet, NodeError> {
        let bad = |item: &str| {
            NodeError::Config(format!(
                "experts: {item:?} is not `*`, `L.*`, `L.E` or `L.E1-E2`"
            ))
        };
        let mut items = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item == "*" {
                items.clear();
                return Ok(ExpertSet {
                    text: "*".into(),
                    items,
                });
            }
            let (layer, experts) = item.split_once('.').ok_or_else(|| bad(item))?;
            let layer: u16 = layer.parse().map_err(|_| bad(item))?;
            let range = match experts {
                "*" => None,
                e => {
                    let (a, b) = e.split_once('-').unwrap_or((e, e));
                    let (a, b): (u16, u16) = (
                        a.parse().map_err(|_| bad(item))?,
                        b.parse().map_err(|_| bad(item))?,
                    );
                    if a > b {
                        return Err(bad(item));
                    }
                    Some((a, b))
                }
            };
            items.push((layer, range));
        }
        Ok(ExpertSet {
            text: text.to_owned(),
            items,
        })
    }
}

impl ExpertSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: ExpertId) -> bool {
        self.items.is_empty()
            || self.items.iter().any(|&(l, range)| {
                l == id.layer && range.is_none_or(|(a, b)| (a..=b).contains(&id.expert))
            })
    }

    /// The text it was read from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The digest a host signs for one answer: SHA-256 of the domain tag, the request id, the
/// expert block, and the hashes of the input and output bytes.
pub fn answer_digest(request: &str, block: &Hash, input: &Hash, output: &Hash) -> Hash {
    let mut bytes = b"blyan-expert-answer-v1".to_vec();
    bytes.extend_from_slice(&(request.len() as u32).to_le_bytes());
    bytes.extend_from_slice(request.as_bytes());
    bytes.extend_from_slice(block.as_bytes());
    bytes.extend_from_slice(input.as_bytes());
    bytes.extend_from_slice(output.as_bytes());
    Hash::of(&bytes)
}

/// The digest a host signs for a batch's answer (`POST /experts/compute`): SHA-256 of the
/// domain tag, the batch's request id, the count of calls and each call's [`answer_digest`]
/// (call `i` as request `{request}-i`), in order. One signature covers every call.
pub fn batch_answer_digest(request: &str, answers: &[Hash]) -> Hash {
    let mut bytes = Vec::with_capacity(64 + request.len() + 32 * answers.len());
    bytes.extend_from_slice(b"blyan-expert-answers-v1");
    bytes.extend_from_slice(&(request.len() as u32).to_le_bytes());
    bytes.extend_from_slice(request.as_bytes());
    bytes.extend_from_slice(&(answers.len() as u32).to_le_bytes());
    for a in answers {
        bytes.extend_from_slice(a.as_bytes());
    }
    Hash::of(&bytes)
}

/// The digest a host signs for its announcement of what it computes: SHA-256 of the domain
/// tag, its account and network key, its expert blocks (in order, each once), its queue, and
/// when it made the announcement and for how long it holds (ms).
pub fn announcement_digest(
    account: &Address,
    net_key: &[u8; 32],
    blocks: &BTreeSet<Hash>,
    queue: u64,
    at_ms: u64,
    ttl_ms: u64,
) -> Hash {
    let mut bytes = b"blyan-expert-announce-v1".to_vec();
    bytes.extend_from_slice(&account.0);
    bytes.extend_from_slice(net_key);
    bytes.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        bytes.extend_from_slice(b.as_bytes());
    }
    bytes.extend_from_slice(&queue.to_le_bytes());
    bytes.extend_from_slice(&at_ms.to_le_bytes());
    bytes.extend_from_slice(&ttl_ms.to_le_bytes());
    Hash::of(&bytes)
}

/// What a peer's `GET /experts/hosted` announces, if it is signed by `key` and still holds
/// at `now_ms`: its expert blocks and queue, and until when (ms) it holds.
fn checked_announcement(
    answer: &serde_json::Value,
    account: &Address,
    key: &VerifyingKey,
    now_ms: u64,
) -> Option<(BTreeSet<Hash>, u64, u64)> {
    let blocks: BTreeSet<Hash> = answer["experts"]
        .as_array()?
        .iter()
        .map(|e| e["block"].as_str()?.parse().ok())
        .collect::<Option<_>>()?;
    let queue = answer["queue"].as_u64()?;
    let (at_ms, ttl_ms) = (answer["at_ms"].as_u64()?, answer["ttl_ms"].as_u64()?);
    let signature = parse_answer_signature(answer["announcement_signature"].as_str()?)?;
    let digest = announcement_digest(account, key.as_bytes(), &blocks, queue, at_ms, ttl_ms);
    key.verify_strict(digest.as_bytes(), &signature).ok()?;
    // Stale (or replayed) announcements, and ones from a clock far ahead, count for nothing.
    let until = at_ms.checked_add(ttl_ms.min(HOST_TTL.as_millis() as u64))?;
    if now_ms > until || at_ms > now_ms.saturating_add(CALL_CLOCK_SKEW_MS) {
        return None;
    }
    Some((blocks, queue, until))
}

/// The remote-expert side of a node.
#[derive(Debug)]
pub struct Hosting {
    hosted: ExpertSet,
    peers: Vec<String>,
    /// Spot-checked share of answers, parts per million.
    check_ppm: u32,
    /// Where evidence of wrong answers is written.
    evidence_dir: std::path::PathBuf,
    table: Mutex<HostTable>,
    /// When this was made: the start of the host table's and the exchanges' time.
    epoch: Instant,
    agent: ureq::Agent,
    next_request: std::sync::atomic::AtomicU64,
    /// Calls answered by hosts, and calls computed here because none did.
    pub(crate) remote_calls: std::sync::atomic::AtomicU64,
    pub(crate) fallbacks: std::sync::atomic::AtomicU64,
    /// Answers spot-checked.
    pub(crate) checked: std::sync::atomic::AtomicU64,
    /// Calls sent to a second host because the first was slow or failed.
    pub(crate) hedged: std::sync::atomic::AtomicU64,
    /// The chain, for the admission registry.
    store: Arc<blyan_chain::Store>,
    registry: crate::registry::RegistryCache,
    /// This node's network key, which signs its calls.
    signer: Arc<NetSigner>,
    /// Held while a block is fetched and repaired: one at a time.
    repairing: Mutex<()>,
    /// The runtimes and connections that make the calls, each lent to one asking thread
    /// at a time (as many as threads have asked at once: one per engine lane).
    locals: Mutex<Vec<client::Local>>,
    /// Expert blocks repaired with a copy from a peer.
    pub(crate) repaired: std::sync::atomic::AtomicU64,
}

impl Hosting {
    /// A node computing `hosted` itself and asking `peers` (API addresses) for the rest,
    /// spot-checking `check_ppm` parts per million of the answers and keeping evidence of
    /// wrong ones in `evidence_dir`, using only hosts `store`'s registry admits and signing
    /// its calls with `signer`.
    pub(crate) fn new(
        hosted: ExpertSet,
        peers: Vec<String>,
        check_ppm: u32,
        evidence_dir: std::path::PathBuf,
        store: Arc<blyan_chain::Store>,
        signer: Arc<NetSigner>,
    ) -> Arc<Hosting> {
        Arc::new(Hosting {
            hosted,
            peers,
            check_ppm,
            evidence_dir,
            table: Mutex::new(HostTable::default()),
            epoch: Instant::now(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(CALL_TIMEOUT))
                .build()
                .into(),
            next_request: std::sync::atomic::AtomicU64::new(0),
            remote_calls: std::sync::atomic::AtomicU64::new(0),
            fallbacks: std::sync::atomic::AtomicU64::new(0),
            checked: std::sync::atomic::AtomicU64::new(0),
            hedged: std::sync::atomic::AtomicU64::new(0),
            store,
            registry: crate::registry::RegistryCache::default(),
            signer,
            repairing: Mutex::new(()),
            locals: Mutex::new(Vec::new()),
            repaired: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether the host with network key `key` may be used: on a network whose registry
    /// gives no one the host role, any host may; otherwise only those it gives it to.
    fn admitted_host(&self, key: &[u8; 32]) -> bool {
        match self.registry.get(&self.store) {
            Ok(r) => {
                let hosts_admitted = r
                    .members
                    .values()
                    .any(|m| m.roles.contains(&blyan_chain::Role::Host));
                !hosts_admitted || r.has(key, blyan_chain::Role::Host)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the admission registry failed");
                false
            }
        }
    }

    /// The experts this node computes.
    pub fn hosted(&self) -> &ExpertSet {
        &self.hosted
    }

    /// Asks every peer what it hosts now.
    pub fn heartbeat(&self) {
        for api in &self.peers {
            let started = Instant::now();
            let answer: Option<serde_json::Value> = self
                .agent
                .get(format!("http://{api}/experts/hosted"))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|mut r| r.body_mut().read_json().ok());
            let Some(answer) = answer else { continue };
            let rtt = started.elapsed().as_secs_f64() * 1e3;
            let heard =
                self.lock_table()
                    .heard(api, &answer, rtt, self.now(), crate::unix_ms(), |key| {
                        self.admitted_host(key)
                    });
            if let Err(why) = heard {
                tracing::warn!(host = %api, ?why, "expert host announcement not taken");
            }
        }
    }

    /// Asks the peers every [`HEARTBEAT`] on a thread of its own, until `hosting` is dropped.
    pub fn start_heartbeat(hosting: &Arc<Hosting>) {
        let weak: Weak<Hosting> = Arc::downgrade(hosting);
        std::thread::Builder::new()
            .name("expert-heartbeat".into())
            .spawn(move || {
                // The key that signs this node's calls, unlocked before the first one.
                if let Some(h) = weak.upgrade()
                    && let Err(e) = h.signer.get()
                {
                    tracing::warn!(error = %e, "the network key is locked: no expert calls");
                }
                while let Some(h) = weak.upgrade() {
                    h.heartbeat();
                    drop(h);
                    std::thread::sleep(HEARTBEAT);
                }
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::warn!(error = %e, "no expert heartbeat thread"));
    }

    /// The hosts known now, with how recently each answered.
    pub fn hosts(&self) -> Vec<HostInfo> {
        self.lock_table().hosts(self.now())
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, HostTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time of the host table and the exchanges: since this was made.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Calls `calls` to host `to` in one request (`POST /experts/compute`) on this thread's
    /// connections, as an exchange asked: per call, its outputs if the whole answer is
    /// complete and signed by the host ([`Outgoing::read`]).
    async fn call_batch(
        &self,
        local: &client::Local,
        to: &Target,
        calls: &[&RemoteCall],
    ) -> Vec<Option<RemoteAnswer>> {
        let api = to.api.as_str();
        let started = Instant::now();
        let request = format!(
            "{:x}",
            self.next_request
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut out = Outgoing::new(request, calls.iter().copied());
        let answer = match self.signer.get() {
            Ok(me) => {
                let at_ms = crate::unix_ms();
                let proof = me
                    .key
                    .sign(batch_digest(&out.request, &Hash::of(&out.body), at_ms).as_bytes());
                let headers = [
                    ("content-type", "application/octet-stream".to_owned()),
                    ("x-blyan-caller", hex::encode(me.public)),
                    ("x-blyan-caller-time", at_ms.to_string()),
                    ("x-blyan-caller-signature", hex::encode(proof.to_bytes())),
                ];
                let path = format!("/experts/compute?request={}", out.request);
                let limit = usize::try_from(out.answer_limit()).unwrap_or(usize::MAX);
                let body = std::mem::take(&mut out.body);
                local
                    .post(api, &path, &headers, body, limit, CALL_TIMEOUT)
                    .await
            }
            Err(_) => None,
        };
        let (answers, whole) = out.read(to, calls.iter().copied(), answer.as_deref(), || {
            rand::Rng::random_range(&mut rand::rng(), 0..1_000_000u32) < self.check_ppm
        });
        self.lock_table().record(
            api,
            whole,
            started.elapsed().as_secs_f64() * 1e3,
            self.now(),
        );
        answers
    }
}

/// The network key a host's `GET /experts/hosted` answer names and the binding that ties it
/// to `account`, if the binding holds.
fn bound_key(answer: &serde_json::Value, account: &Address) -> Option<(VerifyingKey, Signature)> {
    let bytes: [u8; 32] = hex::decode(answer["net_key"].as_str()?)
        .ok()?
        .try_into()
        .ok()?;
    let binding: Signature = answer["binding"].as_str()?.parse().ok()?;
    if !blyan_chain::admission::check_key_binding(&bytes, account, &binding) {
        return None;
    }
    Some((VerifyingKey::from_bytes(&bytes).ok()?, binding))
}

/// An answer's `x-blyan-signature`: 64 bytes of Ed25519 signature, hex.
fn parse_answer_signature(text: &str) -> Option<ed25519_dalek::Signature> {
    let bytes: [u8; 64] = hex::decode(text).ok()?.try_into().ok()?;
    Some(ed25519_dalek::Signature::from_bytes(&bytes))
}

impl Hosting {
    /// A layer's calls, as an [`Exchange`] directs, made on this thread with a
    /// [`client::Local`] lent for the layer: its requests, the answers and the exchange's
    /// deadlines are all waited on here. An attempt still out when the exchange is done (another host
    /// answered its calls first) is dropped, and its host's latency noted as at least the
    /// time it had taken ([`HostTable::outrun`]).
    fn ask_all(&self, calls: &Arc<[RemoteCall]>) -> Vec<RemoteOutcome> {
        // A thread inside an async runtime cannot wait on one of its own: such a caller's
        // layer is asked from a thread started for it.
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|s| {
                s.spawn(|| self.ask_all(calls))
                    .join()
                    .unwrap_or_else(|_| vec![RemoteOutcome::default(); calls.len()])
            });
        }
        let lent = self.locals.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let local = match lent.map_or_else(client::Local::new, Ok) {
            Ok(local) => local,
            Err(e) => {
                tracing::warn!(error = %e, "no runtime for expert calls: computing them here");
                return vec![RemoteOutcome::default(); calls.len()];
            }
        };
        let outcomes = local.block_on(self.exchange(&local, calls));
        self.locals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(local);
        outcomes
    }

    async fn exchange(
        &self,
        local: &client::Local,
        calls: &Arc<[RemoteCall]>,
    ) -> Vec<RemoteOutcome> {
        use futures_util::{FutureExt as _, StreamExt as _};
        let (mut exchange, first) = {
            let table = self.lock_table();
            Exchange::start(calls, &table, self.now(), &mut rand::rng())
        };
        // Attempts out, by attempt: their host and when they went.
        let mut out: std::collections::BTreeMap<u64, (String, Instant)> =
            std::collections::BTreeMap::new();
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        let send =
            |sends: Vec<Dispatch>,
             inflight: &mut futures_util::stream::FuturesUnordered<_>,
             out: &mut std::collections::BTreeMap<u64, (String, Instant)>| {
                for Dispatch {
                    attempt,
                    to,
                    calls: batch,
                } in sends
                {
                    out.insert(attempt, (to.api.clone(), Instant::now()));
                    inflight.push(async move {
                        let these: Vec<&RemoteCall> = batch.iter().map(|&i| &calls[i]).collect();
                        // An attempt always answers, a failed one with `None`.
                        let answers =
                            std::panic::AssertUnwindSafe(self.call_batch(local, &to, &these))
                                .catch_unwind()
                                .await
                                .unwrap_or_else(|_| vec![None; these.len()]);
                        (attempt, batch.into_iter().zip(answers).collect::<Vec<_>>())
                    });
                }
            };
        send(first, &mut inflight, &mut out);
        while !exchange.done() {
            let Some(deadline) = exchange.deadline() else {
                break;
            };
            let wait = deadline.saturating_sub(self.now());
            let sends = tokio::select! {
                Some((attempt, answers)) = inflight.next() => {
                    out.remove(&attempt);
                    exchange.answered_all(attempt, answers, self.now())
                }
                () = tokio::time::sleep(wait) => exchange.tick(self.now()),
            };
            send(sends, &mut inflight, &mut out);
        }
        drop(inflight);
        if !out.is_empty() {
            let mut table = self.lock_table();
            for (api, sent) in out.values() {
                table.outrun(api, sent.elapsed().as_secs_f64() * 1e3);
            }
        }
        self.hedged
            .fetch_add(exchange.hedged(), std::sync::atomic::Ordering::Relaxed);
        exchange.finish()
    }
}

impl ExpertHosts for Hosting {
    fn computes_locally(&self, expert: ExpertId) -> bool {
        self.hosted.contains(expert)
    }

    fn compute(&self, calls: &Arc<[RemoteCall]>) -> Vec<RemoteOutcome> {
        use std::sync::atomic::Ordering::Relaxed;
        let outcomes = self.ask_all(calls);
        for outcome in &outcomes {
            match &outcome.answer {
                Some(a) => {
                    self.remote_calls.fetch_add(1, Relaxed);
                    if a.check {
                        self.checked.fetch_add(1, Relaxed);
                    }
                }
                None => {
                    self.fallbacks.fetch_add(1, Relaxed);
                }
            }
        }
        outcomes
    }

    fn fetch_block(&self, block: &Hash) -> bool {
        let _one = self.repairing.lock().unwrap_or_else(|p| p.into_inner());
        // Another call may have repaired it while this one waited.
        if self.store.payload_verified(block).is_ok() {
            return true;
        }
        let Ok(Some(header)) = self.store.header(block) else {
            return false;
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REPAIR_TIMEOUT))
            .build()
            .into();
        for api in &self.peers {
            let bytes = agent
                .get(format!("http://{api}/chain/blocks/{block}/payload"))
                .call()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|mut r| {
                    r.body_mut()
                        .with_config()
                        .limit(header.payload_len)
                        .read_to_vec()
                        .ok()
                });
            let Some(bytes) = bytes else { continue };
            match self.store.repair_payload(block, &bytes) {
                Ok(()) => {
                    tracing::warn!(%block, peer = %api, "repaired an unreadable expert block with a peer's copy");
                    self.repaired
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(%block, peer = %api, error = %e, "a peer's copy of an expert block is not that block");
                }
            }
        }
        false
    }

    fn mismatch(&self, call: &RemoteCall, answer: &RemoteAnswer, local: &[f32]) {
        let mut own = Vec::with_capacity(local.len() * 4);
        for v in local {
            own.extend_from_slice(&v.to_le_bytes());
        }
        let now = crate::unix_ms();
        let answered: serde_json::Value =
            serde_json::from_str(&answer.evidence).unwrap_or(serde_json::Value::Null);
        // The rows themselves, so that anyone holding the expert's block can recompute it.
        let input = call.rows.to_bytes();
        let evidence = serde_json::json!({
            "answer": answered,
            "expected_output_hash": Hash::of(&own),
            "expert": call.expert,
            "input": hex::encode(&input),
            "at_ms": now,
        });
        let file = self.evidence_dir.join(format!(
            "{now}-{}.json",
            Hash::of(answer.evidence.as_bytes()).short(12)
        ));
        let written = std::fs::create_dir_all(&self.evidence_dir)
            .and_then(|()| std::fs::write(&file, evidence.to_string()));
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %file.display(), "keeping evidence of a wrong expert answer failed");
        }
        self.lock_table().ban(
            &answer.host,
            format!(
                "wrong output for expert {} (evidence {})",
                call.expert,
                file.display()
            ),
        );
    }
}

/// One expert this node computes for others.
#[derive(Clone, Debug, Serialize)]
pub struct HostedExpert {
    /// The expert.
    pub id: ExpertId,
    /// The exact version it computes.
    pub block: Hash,
}

/// What `GET /experts/hosted` answers: what this node computes for others, and the hosts it
/// knows.
#[derive(Clone, Debug, Serialize)]
pub struct HostedReport {
    /// The account its answers are attributed to.
    pub account: Address,
    /// The network key (Ed25519, hex) that signs its answers; absent when it could not be
    /// unlocked.
    pub net_key: Option<String>,
    /// The account's EIP-191 signature binding `net_key` to it.
    pub binding: Option<String>,
    /// When this announcement was made (unix ms), and for how long it holds.
    pub at_ms: u64,
    /// See `at_ms`.
    pub ttl_ms: u64,
    /// The network key's Ed25519 signature (hex) of [`announcement_digest`] over `account`,
    /// `net_key`, the blocks of `experts`, `queue`, `at_ms` and `ttl_ms`.
    pub announcement_signature: Option<String>,
    /// `experts` as configured (`*`: all).
    pub hosted: String,
    /// The expert versions it computes.
    pub experts: Vec<HostedExpert>,
    /// Generations in flight.
    pub queue: u64,
    /// Calls it computed for other nodes since it started.
    pub computed_for_peers: u64,
    /// Of its own experts computed elsewhere: calls hosts answered, and calls it computed
    /// itself because none did.
    pub remote_calls: u64,
    /// See `remote_calls`.
    pub fallbacks: u64,
    /// Answers spot-checked by computing them here too.
    pub checked: u64,
    /// Calls also sent to a second host, the first being slower than its recent p95 or
    /// failing.
    pub hedged: u64,
    /// Requests sent to hosts (`POST /experts/compute`, each a batch of calls to one host).
    pub requests: u64,
    /// Expert blocks this node could not read and repaired with a peer's copy.
    pub repaired: u64,
    /// What its peers host.
    pub hosts: Vec<HostInfo>,
}

/// This node's network key (Ed25519, the key `GET /net/id` names; verifying one of its
/// signatures costs a fifth of recovering an account's) and its account's signature binding
/// that key, which makes what it signs attributable to the account. It signs the node's
/// expert answers and, as a caller, its expert calls.
pub(crate) struct AnswerKey {
    key: AnswerSigningKey,
    public: [u8; 32],
    binding: Signature,
}

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerKey")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// The network key, unlocked on first use (its file is encrypted like the node key's).
pub(crate) struct NetSigner {
    keystore: blyan_ledger::Keystore,
    account: blyan_primitives::SigningKey,
    key: std::sync::OnceLock<AnswerKey>,
    opening: Mutex<()>,
}

impl std::fmt::Debug for NetSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSigner")
            .field("key", &self.key.get())
            .finish_non_exhaustive()
    }
}

impl NetSigner {
    /// The network key of `keystore`, bound to `account`.
    pub(crate) fn new(
        keystore: blyan_ledger::Keystore,
        account: blyan_primitives::SigningKey,
    ) -> NetSigner {
        NetSigner {
            keystore,
            account,
            key: std::sync::OnceLock::new(),
            opening: Mutex::new(()),
        }
    }

    /// The key, unlocking it on the first call.
    pub(crate) fn get(&self) -> Result<&AnswerKey, NodeError> {
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        let _one = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        let seed = self.keystore.network_secret_or_new()?;
        let key = AnswerSigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        let binding = Signature::sign(
            &self.account,
            &blyan_chain::admission::key_binding_message(&public),
        );
        Ok(self.key.get_or_init(|| AnswerKey {
            key,
            public,
            binding,
        }))
    }
}

/// The digest a caller signs for one expert call: SHA-256 of the domain tag, the request
/// id, the expert, its block, the hash of the input bytes and the caller's clock (unix ms).
pub fn call_digest(
    request: &str,
    expert: ExpertId,
    block: &Hash,
    input: &Hash,
    at_ms: u64,
) -> Hash {
    let mut bytes = b"blyan-expert-call-v1".to_vec();
    bytes.extend_from_slice(&(request.len() as u32).to_le_bytes());
    bytes.extend_from_slice(request.as_bytes());
    bytes.extend_from_slice(&expert.layer.to_le_bytes());
    bytes.extend_from_slice(&expert.expert.to_le_bytes());
    bytes.extend_from_slice(block.as_bytes());
    bytes.extend_from_slice(input.as_bytes());
    bytes.extend_from_slice(&at_ms.to_le_bytes());
    Hash::of(&bytes)
}

/// How far a call's clock may be from the host's.
pub const CALL_CLOCK_SKEW_MS: u64 = 60_000;

/// What a caller of `POST /experts/{id}/compute` says of itself: its network key, its
/// clock, and its signature of [`call_digest`].
#[derive(Clone, Debug)]
pub struct CallerProof {
    /// `x-blyan-caller`: the network key, hex.
    pub key: String,
    /// `x-blyan-caller-time`: unix ms.
    pub at_ms: String,
    /// `x-blyan-caller-signature`: Ed25519, hex.
    pub signature: String,
}

impl crate::Node {
    pub(crate) fn answer_key(&self) -> Result<&AnswerKey, NodeError> {
        self.net_signer.get()
    }

    /// Whether a batch of expert calls (a `POST /experts/compute` body) is small enough to
    /// compute without leaving the request's async task: its rows' multiply-adds (three
    /// matrices of width × intermediate size per row) at most [`SMALL_BATCH_MACS`], and the
    /// network key that signs the answer unlocked already (the first answer unlocks it:
    /// scrypt, about a second), and the body at most [`SMALL_BATCH_BYTES`] (a member's
    /// proof hashes the whole body before anything else is looked at). A body that does not
    /// decode is not small: it is refused on the blocking pool.
    pub fn batch_is_small(&self, body: &[u8]) -> bool {
        if self.net_signer.key.get().is_none() || body.len() > SMALL_BATCH_BYTES {
            return false;
        }
        let Ok(items) = decode_batch(body) else {
            return false;
        };
        let serving = self.serving();
        let config = serving.engine.model().config();
        let per_row = 3 * config.hidden_size as u64 * config.intermediate_size as u64;
        let rows: u64 = items
            .iter()
            .map(|i| {
                i.rows.get(..4).map_or(0, |b| {
                    u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                })
            })
            .sum();
        rows.saturating_mul(per_row) <= SMALL_BATCH_MACS
    }

    /// Whether a caller may have an expert computed: on a network whose registry names no
    /// one, anyone may (rate limits still apply); otherwise only a member, proven by its
    /// network key's fresh signature of the call.
    fn check_caller(
        &self,
        proof: Option<&CallerProof>,
        digest_of: impl FnOnce(u64) -> Hash,
        now_ms: u64,
    ) -> Result<(), NodeError> {
        let registry = self.registry_cache.get(&self.store)?;
        if registry.members.is_empty() {
            return Ok(());
        }
        let refuse = |reason: &str| {
            Err(NodeError::CallerNotAdmitted {
                reason: format!("this network admits its members: {reason}"),
            })
        };
        let Some(proof) = proof else {
            return refuse(
                "the call names no caller (x-blyan-caller, x-blyan-caller-time, x-blyan-caller-signature)",
            );
        };
        let Some(key) = hex::decode(&proof.key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return refuse("x-blyan-caller is not a 32-byte key in hex");
        };
        if !registry.members.contains_key(&key) {
            return refuse(&format!("caller key {} is not admitted", proof.key));
        }
        let Ok(at_ms) = proof.at_ms.parse::<u64>() else {
            return refuse("x-blyan-caller-time is not unix milliseconds");
        };
        if at_ms.abs_diff(now_ms) > CALL_CLOCK_SKEW_MS {
            return refuse("x-blyan-caller-time is more than a minute from this node's clock");
        }
        let verified = parse_answer_signature(&proof.signature).is_some_and(|signature| {
            VerifyingKey::from_bytes(&key)
                .and_then(|k| k.verify_strict(digest_of(at_ms).as_bytes(), &signature))
                .is_ok()
        });
        if !verified {
            return refuse("x-blyan-caller-signature does not verify");
        }
        Ok(())
    }

    /// The account this node's expert answers are attributed to (its node key's).
    pub fn hosted_account(&self) -> Address {
        blyan_primitives::address_of(&self.signer)
    }

    /// What this node computes for others, and what it knows of its peers.
    pub fn hosted_report(&self) -> HostedReport {
        self.hosted_report_at(crate::unix_ms())
    }

    /// [`crate::Node::hosted_report`], announced as made at `now_ms` (unix ms; a simulation
    /// gives its own clock's).
    pub fn hosted_report_at(&self, now_ms: u64) -> HostedReport {
        let key = self
            .answer_key()
            .inspect_err(|e| tracing::warn!(error = %e, "the expert answer key is unavailable"))
            .ok();
        let serving = self.serving();
        let blocks = serving.engine.model().expert_blocks();
        let set = self.hosting.as_ref().map(|h| h.hosted().clone());
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let account = blyan_primitives::address_of(&self.signer);
        let experts: Vec<HostedExpert> = blocks
            .into_iter()
            .filter(|(id, _)| set.as_ref().is_none_or(|s| s.contains(*id)))
            .map(|(id, block)| HostedExpert { id, block })
            .collect();
        let queue = self.active_generations() as u64;
        let (at_ms, ttl_ms) = (now_ms, HOST_TTL.as_millis() as u64);
        let announcement_signature = key.map(|k| {
            let blocks: BTreeSet<Hash> = experts.iter().map(|e| e.block).collect();
            let digest = announcement_digest(&account, &k.public, &blocks, queue, at_ms, ttl_ms);
            hex::encode(k.key.sign(digest.as_bytes()).to_bytes())
        });
        HostedReport {
            account,
            net_key: key.map(|k| hex::encode(k.public)),
            binding: key.map(|k| k.binding.to_string()),
            at_ms,
            ttl_ms,
            announcement_signature,
            hosted: set.as_ref().map_or("*", ExpertSet::as_str).to_owned(),
            experts,
            queue,
            computed_for_peers: load(&self.computed_for_peers),
            remote_calls: self.hosting.as_ref().map_or(0, |h| load(&h.remote_calls)),
            fallbacks: self.hosting.as_ref().map_or(0, |h| load(&h.fallbacks)),
            checked: self.hosting.as_ref().map_or(0, |h| load(&h.checked)),
            hedged: self.hosting.as_ref().map_or(0, |h| load(&h.hedged)),
            requests: self.hosting.as_ref().map_or(0, |h| load(&h.next_request)),
            repaired: self.hosting.as_ref().map_or(0, |h| load(&h.repaired)),
            hosts: self.hosting.as_ref().map_or_else(Vec::new, |h| h.hosts()),
        }
    }

    /// Computes expert `id` at exactly `block` for another node on the rows in `input` (the
    /// wire form of [`blyan_model::ExpertRows`]); returns the output rows (f32 LE) and this
    /// node's signature of [`answer_digest`]. Refuses an expert it does not host, and on a
    /// network that admits its members, a `caller` that does not prove it is one.
    pub fn compute_for_peer(
        &self,
        id: ExpertId,
        block: Hash,
        request: &str,
        input: &[u8],
        caller: Option<&CallerProof>,
    ) -> Result<(Vec<u8>, ed25519_dalek::Signature), NodeError> {
        check_request_id(request, 64)?;
        let input_hash = Hash::of(input);
        self.check_caller(
            caller,
            |at_ms| call_digest(request, id, &block, &input_hash, at_ms),
            crate::unix_ms(),
        )?;
        self.compute_one(id, block, request, input, &input_hash)
    }

    /// Computes a batch of expert calls for another node (the body of
    /// `POST /experts/compute`, [`decode_batch`]): call `i` is answered as request
    /// `{request}-{i}`, all of them or none. The answer is, per call, its output's length
    /// (u32 LE) and the output rows (f32 LE); then this node's one signature of
    /// [`batch_answer_digest`] over every call's [`answer_digest`].
    pub fn compute_batch_for_peer(
        &self,
        request: &str,
        body: &[u8],
        caller: Option<&CallerProof>,
    ) -> Result<Vec<u8>, NodeError> {
        check_request_id(request, 60)?;
        // The body is hashed only where a caller must prove it is a member.
        self.check_caller(
            caller,
            |at_ms| batch_digest(request, &Hash::of(body), at_ms),
            crate::unix_ms(),
        )?;
        let items = decode_batch(body)?;
        let key = self.answer_key()?;
        let mut answer = Vec::new();
        let mut digests = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = answer.len();
            answer.extend_from_slice(&[0; 4]);
            self.compute_into(item.expert, item.block, item.rows, &mut answer)?;
            let len = (answer.len() - at - 4) as u32;
            answer[at..at + 4].copy_from_slice(&len.to_le_bytes());
            digests.push(answer_digest(
                &format!("{request}-{i}"),
                &item.block,
                &Hash::of(item.rows),
                &Hash::of(&answer[at + 4..]),
            ));
        }
        let signature = key
            .key
            .sign(batch_answer_digest(request, &digests).as_bytes());
        answer.extend_from_slice(&signature.to_bytes());
        Ok(answer)
    }

    fn compute_one(
        &self,
        id: ExpertId,
        block: Hash,
        request: &str,
        input: &[u8],
        input_hash: &Hash,
    ) -> Result<(Vec<u8>, ed25519_dalek::Signature), NodeError> {
        let key = self.answer_key()?;
        let mut output = Vec::new();
        self.compute_into(id, block, input, &mut output)?;
        let digest = answer_digest(request, &block, input_hash, &Hash::of(&output));
        Ok((output, key.key.sign(digest.as_bytes())))
    }

    /// Computes expert `id` at `block` on `input` (the wire form of rows) for another node
    /// and appends the output rows (f32 LE) to `out`.
    fn compute_into(
        &self,
        id: ExpertId,
        block: Hash,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), NodeError> {
        if let Some(h) = &self.hosting
            && !h.hosted().contains(id)
        {
            return Err(NodeError::NotFound {
                what: format!(
                    "expert {id} on this node (it hosts {})",
                    h.hosted().as_str()
                ),
            });
        }
        let model = self.serving().engine.model().clone();
        let rows =
            blyan_model::ExpertRows::from_bytes(input, model.config().hidden_size, CALL_ROWS_MAX)?;
        let mut y = model.compute_expert(id, block, &rows)?;
        if self.lying.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(v) = y.first_mut()
        {
            *v += 0.25;
        }
        out.reserve(y.len() * 4);
        for v in &y {
            out.extend_from_slice(&v.to_le_bytes());
        }
        self.computed_for_peers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// A request id: 1 to `max` letters, digits, `-` or `_`.
fn check_request_id(request: &str, max: usize) -> Result<(), NodeError> {
    if request.is_empty()
        || request.len() > max
        || !request
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(NodeError::InvalidParameter {
            name: "request",
            reason: format!("a request id is 1 to {max} letters, digits, `-` or `_`"),
        });
    }
    Ok(())
}

/// Most calls in one batch.
pub const BATCH_CALLS_MAX: usize = 64;
/// Most multiply-adds of a batch computed on its request's own task
/// ([`crate::Node::batch_is_small`]): about 85 rows of the test model (d = 256, intermediate
/// 512), some 0.3 ms at the 3.4 µs per row that `remote_bench` measures for them on this
/// project's 2-core VM; not one row of a 4096-wide model.
pub const SMALL_BATCH_MACS: u64 = 1 << 25;
/// Most body bytes of a batch computed on its request's own task: 256 KiB, some 900 rows of
/// the test model, so that the multiply-adds bound it first.
pub const SMALL_BATCH_BYTES: usize = 256 << 10;
/// Most bytes of one batch's body.
pub const BATCH_BODY_MAX: usize = 16 << 20;

/// The digest a caller signs for a batch of expert calls: SHA-256 of the domain tag, the
/// request id, the hash of the whole body and the caller's clock (unix ms).
pub fn batch_digest(request: &str, body: &Hash, at_ms: u64) -> Hash {
    let mut bytes = b"blyan-expert-batch-v1".to_vec();
    bytes.extend_from_slice(&(request.len() as u32).to_le_bytes());
    bytes.extend_from_slice(request.as_bytes());
    bytes.extend_from_slice(body.as_bytes());
    bytes.extend_from_slice(&at_ms.to_le_bytes());
    Hash::of(&bytes)
}

/// One call of a batch, as its body carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchItem<'a> {
    /// The expert.
    pub expert: ExpertId,
    /// Its exact version.
    pub block: Hash,
    /// Its rows, in the wire form of [`blyan_model::ExpertRows`].
    pub rows: &'a [u8],
}

/// The body of a batch: the count (u32 LE), then per call its layer and expert (u16 LE
/// each), its block (32 bytes), the length of its rows (u32 LE) and the rows.
pub fn encode_batch(items: &[BatchItem<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + items.iter().map(|i| 40 + i.rows.len()).sum::<usize>());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        put_call_head(&mut out, item.expert, &item.block, item.rows.len());
        out.extend_from_slice(item.rows);
    }
    out
}

/// The head of one call in a batch body: its layer and expert, its block, and the length
/// of its rows.
fn put_call_head(out: &mut Vec<u8>, expert: ExpertId, block: &Hash, len: usize) {
    out.extend_from_slice(&expert.layer.to_le_bytes());
    out.extend_from_slice(&expert.expert.to_le_bytes());
    out.extend_from_slice(block.as_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Reads a batch body ([`encode_batch`]): 1 to [`BATCH_CALLS_MAX`] calls, every length
/// within the body and nothing after the last call; the rows themselves are checked when
/// each call is computed.
pub fn decode_batch(body: &[u8]) -> Result<Vec<BatchItem<'_>>, NodeError> {
    let bad = |reason: String| NodeError::InvalidParameter {
        name: "batch",
        reason,
    };
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], NodeError> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| {
                bad(format!(
                    "the body ends at byte {} inside a call",
                    body.len()
                ))
            })?;
        let piece = &body[at..end];
        at = end;
        Ok(piece)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_at(take(4)?);
    if count == 0 || count > BATCH_CALLS_MAX {
        return Err(bad(format!(
            "{count} calls; 1 to {BATCH_CALLS_MAX} are taken"
        )));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let head = take(40)?;
        let expert = ExpertId::new(
            u16::from_le_bytes([head[0], head[1]]),
            u16::from_le_bytes([head[2], head[3]]),
        );
        let mut block = [0u8; 32];
        block.copy_from_slice(&head[4..36]);
        let len = u32_at(&head[36..40]);
        let rows = take(len)?;
        items.push(BatchItem {
            expert,
            block: Hash(block),
            rows,
        });
    }
    if at != body.len() {
        return Err(bad(format!(
            "{} bytes after the last call",
            body.len() - at
        )));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other_account() -> Address {
        blyan_primitives::address_of(
            &blyan_primitives::SigningKey::from_slice(&[5; 32]).expect("key"),
        )
    }

    fn announce(key: &[u8; 32], binding: &Signature) -> serde_json::Value {
        serde_json::json!({"net_key": hex::encode(key), "binding": binding.to_string()})
    }

    #[test]
    fn a_hosts_answer_key_counts_only_when_its_account_bound_it() {
        let account_key = blyan_primitives::SigningKey::from_slice(&[3; 32]).expect("key");
        let account = blyan_primitives::address_of(&account_key);
        let other_key = blyan_primitives::SigningKey::from_slice(&[4; 32]).expect("key");
        let net = AnswerSigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .to_bytes();
        let bind = |by: &blyan_primitives::SigningKey, key: &[u8; 32]| {
            Signature::sign(by, &blyan_chain::admission::key_binding_message(key))
        };
        let (key, _) = bound_key(&announce(&net, &bind(&account_key, &net)), &account)
            .expect("bound by its account");
        assert_eq!(key.to_bytes(), net);
        // Bound by someone else, or binding another key: not used.
        assert!(bound_key(&announce(&net, &bind(&other_key, &net)), &account).is_none());
        let elsewhere = [7; 32];
        assert!(bound_key(&announce(&net, &bind(&account_key, &elsewhere)), &account).is_none());
        // Malformed or missing.
        let good = bind(&account_key, &net);
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"net_key": "zz", "binding": good.to_string()}),
            serde_json::json!({"net_key": hex::encode([1u8; 31]), "binding": good.to_string()}),
            serde_json::json!({"net_key": hex::encode(net), "binding": "0x00"}),
        ] {
            assert!(bound_key(&bad, &account).is_none(), "{bad}");
        }
        // An announcement counts only signed by the host's key, unaltered and fresh.
        let signing = AnswerSigningKey::from_bytes(&[9; 32]);
        let key = signing.verifying_key();
        let blocks: BTreeSet<Hash> = [Hash::of(b"a"), Hash::of(b"b")].into_iter().collect();
        let now = 1_800_000_000_000u64;
        let announce = |blocks: &BTreeSet<Hash>, queue: u64, at_ms: u64, by: &AnswerSigningKey| {
            let digest = announcement_digest(&account, &net, blocks, queue, at_ms, 10_000);
            serde_json::json!({
                "experts": blocks.iter().map(|b| serde_json::json!({"id": "1.0", "block": b})).collect::<Vec<_>>(),
                "queue": queue,
                "at_ms": at_ms,
                "ttl_ms": 10_000,
                "announcement_signature": hex::encode(by.sign(digest.as_bytes()).to_bytes()),
            })
        };
        let good = announce(&blocks, 3, now - 1_000, &signing);
        let (got, queue, until) = checked_announcement(&good, &account, &key, now).expect("holds");
        assert_eq!((got, queue, until), (blocks.clone(), 3, now + 9_000));
        let mut altered = good.clone();
        altered["queue"] = serde_json::json!(0);
        assert!(checked_announcement(&altered, &account, &key, now).is_none());
        let mut fewer = good.clone();
        fewer["experts"].as_array_mut().expect("array").pop();
        assert!(checked_announcement(&fewer, &account, &key, now).is_none());
        let other = AnswerSigningKey::from_bytes(&[8; 32]);
        assert!(
            checked_announcement(&announce(&blocks, 3, now, &other), &account, &key, now).is_none()
        );
        assert!(checked_announcement(&good, &other_account(), &key, now).is_none());
        // Stale, or from a clock far ahead.
        assert!(checked_announcement(&good, &account, &key, now + 9_001).is_none());
        let ahead = announce(&blocks, 3, now + CALL_CLOCK_SKEW_MS + 1, &signing);
        assert!(checked_announcement(&ahead, &account, &key, now).is_none());
        // An answer signature is 64 bytes of hex, nothing else.
        assert!(parse_answer_signature(&"ab".repeat(64)).is_some());
        assert!(parse_answer_signature(&"ab".repeat(63)).is_none());
        assert!(parse_answer_signature("not hex").is_none());
    }
}
