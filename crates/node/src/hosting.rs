//! Experts served across machines: which experts this node computes itself (`experts`, for
//! example `0.*,1.0-1.3`), what it tells other nodes it hosts (`GET /experts/hosted`), the
//! table of what its peers host (asked every [`HEARTBEAT`], forgotten after [`HOST_TTL`]),
//! and the calls that send a layer's rows for the experts it does not compute to a host of
//! that exact block, in parallel, each answer signed by the host.
//!
//! A call no host answers in time, or answers wrongly signed or malformed, is computed here
//! from the expert's block (every node keeps the whole chain): a host that dies costs a
//! request time, never the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use blyan_model::{ExpertHosts, RemoteCall};
use blyan_primitives::{Address, ExpertId, Hash, Signature};
use serde::Serialize;

use crate::NodeError;

/// How often the peers are asked what they host.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an answer of a peer is trusted without a newer one.
pub const HOST_TTL: Duration = Duration::from_secs(10);
/// How long one remote expert call may take before the next host, or this node, computes it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
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

/// What a peer said it hosts.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    /// Its API address.
    pub api: String,
    /// The account that signs its answers.
    pub account: Address,
    /// The expert blocks it computes.
    pub blocks: BTreeSet<Hash>,
    /// Generations it had in flight when it last answered.
    pub queue: u64,
    /// Recent round trip of its calls, ms (exponentially weighted; its heartbeat's before any call).
    pub latency_ms: f64,
    /// Calls it answered, and calls that failed (timeout, error, bad signature).
    pub answered: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Milliseconds since its last heartbeat answer.
    pub seen_ms_ago: u64,
    #[serde(skip)]
    seen: Option<Instant>,
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

/// The remote-expert side of a node.
#[derive(Debug)]
pub struct Hosting {
    hosted: ExpertSet,
    peers: Vec<String>,
    table: Mutex<BTreeMap<String, HostInfo>>,
    agent: ureq::Agent,
    next_request: std::sync::atomic::AtomicU64,
    /// Calls answered by hosts, and calls computed here because none did.
    pub(crate) remote_calls: std::sync::atomic::AtomicU64,
    pub(crate) fallbacks: std::sync::atomic::AtomicU64,
}

impl Hosting {
    /// A node computing `hosted` itself and asking `peers` (API addresses) for the rest.
    pub fn new(hosted: ExpertSet, peers: Vec<String>) -> Hosting {
        Hosting {
            hosted,
            peers,
            table: Mutex::new(BTreeMap::new()),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(CALL_TIMEOUT))
                .build()
                .into(),
            next_request: std::sync::atomic::AtomicU64::new(0),
            remote_calls: std::sync::atomic::AtomicU64::new(0),
            fallbacks: std::sync::atomic::AtomicU64::new(0),
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
            let account = answer["account"].as_str().and_then(|a| a.parse().ok());
            let Some(account) = account else { continue };
            let blocks = answer["experts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["block"].as_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let rtt = started.elapsed().as_secs_f64() * 1e3;
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            let entry = table.entry(api.clone()).or_insert_with(|| HostInfo {
                api: api.clone(),
                account,
                blocks: BTreeSet::new(),
                queue: 0,
                latency_ms: rtt,
                answered: 0,
                failed: 0,
                seen_ms_ago: 0,
                seen: None,
            });
            entry.account = account;
            entry.blocks = blocks;
            entry.queue = answer["queue"].as_u64().unwrap_or(0);
            entry.seen = Some(Instant::now());
        }
    }

    /// Asks the peers every [`HEARTBEAT`] on a thread of its own, until `hosting` is dropped.
    pub fn start_heartbeat(hosting: &Arc<Hosting>) {
        let weak: Weak<Hosting> = Arc::downgrade(hosting);
        std::thread::Builder::new()
            .name("expert-heartbeat".into())
            .spawn(move || {
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
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table
            .values()
            .map(|h| HostInfo {
                seen_ms_ago: h.seen.map_or(u64::MAX, |s| s.elapsed().as_millis() as u64),
                ..h.clone()
            })
            .collect()
    }

    /// Live hosts of `block`, best first: lower queue, then lower latency.
    fn hosts_of(&self, block: &Hash) -> Vec<(String, Address)> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<&HostInfo> = table
            .values()
            .filter(|h| h.seen.is_some_and(|s| s.elapsed() < HOST_TTL) && h.blocks.contains(block))
            .collect();
        live.sort_by(|a, b| {
            a.queue
                .cmp(&b.queue)
                .then(a.latency_ms.total_cmp(&b.latency_ms))
        });
        live.iter().map(|h| (h.api.clone(), h.account)).collect()
    }

    fn record(&self, api: &str, ok: bool, ms: f64) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = table.get_mut(api) {
            if ok {
                h.answered += 1;
                h.latency_ms = 0.8 * h.latency_ms + 0.2 * ms;
            } else {
                h.failed += 1;
                // A host that failed is not asked again until its next heartbeat.
                h.seen = None;
            }
        }
    }

    /// One call to one host: the output rows if the answer is complete and signed by the
    /// host's account over this request, block, input and output.
    fn call(&self, api: &str, account: Address, call: &RemoteCall) -> Option<Vec<f32>> {
        let request = format!(
            "{:x}",
            self.next_request
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let input = call.rows.to_bytes();
        let started = Instant::now();
        let url = format!(
            "http://{api}/experts/{}/compute?block={}&request={request}",
            call.expert, call.block
        );
        let answer = self
            .agent
            .post(&url)
            .header("content-type", "application/octet-stream")
            .send(&input[..])
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|mut r| {
                let signature = r
                    .headers()
                    .get("x-blyan-signature")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Signature>().ok())?;
                let body = r
                    .body_mut()
                    .with_config()
                    .limit((CALL_ROWS_MAX * 4 * 8192) as u64)
                    .read_to_vec()
                    .ok()?;
                Some((signature, body))
            });
        let checked = answer.and_then(|(signature, body)| {
            let digest = answer_digest(&request, &call.block, &Hash::of(&input), &Hash::of(&body));
            signature.verify(digest.as_bytes(), &account).ok()?;
            if !body.len().is_multiple_of(4) {
                return None;
            }
            Some(
                body.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect::<Vec<f32>>(),
            )
        });
        self.record(
            api,
            checked.is_some(),
            started.elapsed().as_secs_f64() * 1e3,
        );
        checked
    }
}

impl ExpertHosts for Hosting {
    fn computes_locally(&self, expert: ExpertId) -> bool {
        self.hosted.contains(expert)
    }

    fn compute(&self, calls: &[RemoteCall]) -> Vec<Option<Vec<f32>>> {
        std::thread::scope(|s| {
            let asked: Vec<_> = calls
                .iter()
                .map(|call| {
                    s.spawn(move || {
                        // The best host, then the next: a dead or slow one costs one timeout.
                        self.hosts_of(&call.block)
                            .into_iter()
                            .take(2)
                            .find_map(|(api, account)| self.call(&api, account, call))
                    })
                })
                .collect();
            asked
                .into_iter()
                .map(|h| {
                    let answer = h.join().ok().flatten();
                    let counter = if answer.is_some() {
                        &self.remote_calls
                    } else {
                        &self.fallbacks
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    answer
                })
                .collect()
        })
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
    /// The account that signs its answers.
    pub account: Address,
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
    /// What its peers host.
    pub hosts: Vec<HostInfo>,
}

impl crate::Node {
    /// The account that signs this node's expert answers (its node key's).
    pub fn hosted_account(&self) -> Address {
        blyan_primitives::address_of(&self.signer)
    }

    /// What this node computes for others, and what it knows of its peers.
    pub fn hosted_report(&self) -> HostedReport {
        let serving = self.serving();
        let blocks = serving.engine.model().expert_blocks();
        let set = self.hosting.as_ref().map(|h| h.hosted().clone());
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        HostedReport {
            account: blyan_primitives::address_of(&self.signer),
            hosted: set.as_ref().map_or("*", ExpertSet::as_str).to_owned(),
            experts: blocks
                .into_iter()
                .filter(|(id, _)| set.as_ref().is_none_or(|s| s.contains(*id)))
                .map(|(id, block)| HostedExpert { id, block })
                .collect(),
            queue: self.active_generations() as u64,
            computed_for_peers: load(&self.computed_for_peers),
            remote_calls: self.hosting.as_ref().map_or(0, |h| load(&h.remote_calls)),
            fallbacks: self.hosting.as_ref().map_or(0, |h| load(&h.fallbacks)),
            hosts: self.hosting.as_ref().map_or_else(Vec::new, |h| h.hosts()),
        }
    }

    /// Computes expert `id` at exactly `block` for another node on the rows in `input` (the
    /// wire form of [`blyan_model::ExpertRows`]); returns the output rows (f32 LE) and this
    /// node's signature of [`answer_digest`]. Refuses an expert it does not host.
    pub fn compute_for_peer(
        &self,
        id: ExpertId,
        block: Hash,
        request: &str,
        input: &[u8],
    ) -> Result<(Vec<u8>, Signature), NodeError> {
        if request.is_empty()
            || request.len() > 64
            || !request
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NodeError::InvalidParameter {
                name: "request",
                reason: "a request id is 1 to 64 letters, digits, `-` or `_`".into(),
            });
        }
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
        let y = model.compute_expert(id, block, &rows)?;
        let mut output = Vec::with_capacity(y.len() * 4);
        for v in &y {
            output.extend_from_slice(&v.to_le_bytes());
        }
        let digest = answer_digest(request, &block, &Hash::of(input), &Hash::of(&output));
        self.computed_for_peers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((output, Signature::sign(&self.signer, digest.as_bytes())))
    }
}
