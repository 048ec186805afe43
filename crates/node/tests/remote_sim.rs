//! Experts served across machines in commonware's deterministic runtime, over its simulated
//! network (links with latency, jitter and loss): a caller that computes layer 0 generates
//! eight greedy streams in one batch while three hosts, each a real [`Node`] computing two
//! thirds of the other layers' experts, answer its calls. One host is killed mid-generation;
//! in another run one host lies; in a third the caller computes part of every layer itself.
//! The caller's side is the node's own code ([`HostTable`], [`Exchange`], [`Outgoing`]:
//! choice, batching, hedging, timeouts, failover, signature checks and bans) and the hosts'
//! is the node's own
//! ([`Node::compute_batch_for_peer`], [`Node::hosted_report_at`]); only the framing of
//! messages on the simulated links is this file's. Announcements are pushed by the hosts.
//!
//! The model runs on a thread of its own in lockstep with the runtime: while it computes,
//! the runtime waits for it, and while the runtime carries a layer's calls, the model waits.
//! So one seed gives one run, and the test checks that it does.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

use blyan_chain::{Store, genesis};
use blyan_model::{
    ExpertHosts, LoadOptions, Model, Precision, RemoteAnswer, RemoteCall, RemoteOutcome,
};
use blyan_net::{Incoming, P2p, PeerKey, Transport};
use blyan_node::hosting::{
    CALL_TIMEOUT, Exchange, ExpertSet, HEARTBEAT, HostTable, Outgoing, Target,
};
use blyan_node::{ConfigLayer, Node, NodeConfig};
use blyan_primitives::{ExpertId, Hash, SigningKey};
use commonware_cryptography::{Signer as _, ed25519};
use commonware_p2p::simulated::{self, Link};
use commonware_runtime::{Clock, Quota, Runner, Spawner, Supervisor, deterministic};
use commonware_utils::{NZU32, NZUsize, probability};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

const STREAMS: usize = 8;
/// The simulated network's channels: expert calls, and announcements.
const CALLS: u64 = 0;
const ANNOUNCE: u64 = 1;
const NEW_TOKENS: usize = 12;
/// The simulated time of the caller's own work on a layer (its attention, router and local
/// experts), before the layer's calls go out.
const LAYER_WORK: Duration = Duration::from_millis(5);
const HOSTS: usize = 3;
const LAYERS: u16 = 4;
const EXPERTS: u16 = 8;

fn operator() -> SigningKey {
    SigningKey::from_slice(&[0x11; 32]).unwrap()
}

/// A data directory holding the network's chain; with `node_key`, a node's too.
fn network_dir(node_key: Option<u8>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("chain")).unwrap();
    genesis::init(&store, genesis::random_genesis(7, &operator()).unwrap()).unwrap();
    if let Some(seed) = node_key {
        blyan_ledger::Keystore::new(dir.path().join(blyan_ledger::KEYSTORE_DIR), "")
            .set_node_key(&SigningKey::from_slice(&[seed; 32]).unwrap())
            .unwrap();
    }
    dir
}

/// Host `h` computes expert `e` of layers 1 to 3 unless `e % 3 == h`: each of those experts
/// has two hosts.
fn hosted_by(h: usize) -> String {
    let mut items = Vec::new();
    for l in 1..LAYERS {
        for e in (0..EXPERTS).filter(|e| usize::from(*e) % HOSTS != h) {
            items.push(format!("{l}.{e}"));
        }
    }
    items.join(",")
}

fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    (0..STREAMS)
        .map(|s| {
            format!("stream {s}: experts live on a chain")
                .bytes()
                .map(|b| (u32::from(b) + s as u32) % vocab as u32)
                .collect()
        })
        .collect()
}

/// Greedy tokens of every prompt, all decoded in one batch.
fn generate(model: &Model, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut seqs: Vec<_> = prompts
        .iter()
        .map(|_| model.new_sequence().unwrap())
        .collect();
    let mut next = prompts.to_vec();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..NEW_TOKENS {
        let mut batch: Vec<_> = seqs
            .iter_mut()
            .zip(&next)
            .map(|(s, t)| (s, t.as_slice()))
            .collect();
        let logits = model.forward(&mut batch).unwrap();
        for (i, l) in logits.iter().enumerate() {
            let best = blyan_model::argmax(l);
            out[i].push(best);
            next[i] = vec![best];
        }
    }
    out
}

/// The single machine's text: every expert computed here.
fn reference() -> Vec<Vec<u32>> {
    let dir = network_dir(None);
    let store = Arc::new(Store::open(dir.path().join("chain")).unwrap());
    let model = Model::load(
        store,
        LoadOptions {
            precision: Precision::Int8,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    generate(&model, &prompts(model.config().vocab_size))
}

/// What the model thread asks the runtime.
enum Ask {
    /// A layer's remote calls, and where their outcomes go.
    Compute(Vec<RemoteCall>, mpsc::Sender<Vec<RemoteOutcome>>),
    /// The generation is over.
    Done(Vec<Vec<u32>>),
}

/// The caller's [`ExpertHosts`]: the experts of `local` here, the rest through the runtime.
#[derive(Debug)]
struct SimHosts {
    local: ExpertSet,
    ask: Mutex<mpsc::Sender<Ask>>,
    table: Arc<Mutex<HostTable>>,
    /// The signed statements of the answers spot checks found wrong.
    evidence: Arc<Mutex<Vec<(String, String)>>>,
}

impl ExpertHosts for SimHosts {
    fn computes_locally(&self, expert: ExpertId) -> bool {
        self.local.contains(expert)
    }

    fn compute(&self, calls: &Arc<[RemoteCall]>) -> Vec<RemoteOutcome> {
        let (tx, rx) = mpsc::channel();
        self.ask
            .lock()
            .unwrap()
            .send(Ask::Compute(calls.to_vec(), tx))
            .unwrap();
        rx.recv().unwrap()
    }

    fn mismatch(&self, call: &RemoteCall, answer: &RemoteAnswer, _local: &[f32]) {
        self.evidence
            .lock()
            .unwrap()
            .push((answer.host.clone(), answer.evidence.clone()));
        self.table.lock().unwrap().ban(
            &answer.host,
            format!("wrong output for expert {}", call.expert),
        );
    }

    fn fetch_block(&self, _block: &Hash) -> bool {
        false
    }
}

/// The calls channel's messages: a request of calls, and its answer. (Announcements, the
/// JSON of `GET /experts/hosted`, go on a channel of their own.)
enum Wire {
    Call {
        request: String,
        body: Vec<u8>,
    },
    Answer {
        request: String,
        answer: Option<Vec<u8>>,
    },
}

impl Wire {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |tag: u8, request: &str, bytes: &[u8]| {
            out.push(tag);
            out.push(request.len() as u8);
            out.extend_from_slice(request.as_bytes());
            out.extend_from_slice(bytes);
        };
        match self {
            Wire::Call { request, body } => put(0, request, body),
            Wire::Answer {
                request,
                answer: Some(a),
            } => put(1, request, a),
            Wire::Answer {
                request,
                answer: None,
            } => put(2, request, &[]),
        }
        out
    }

    fn decode(bytes: &[u8]) -> Wire {
        let (tag, len) = (bytes[0], usize::from(bytes[1]));
        let request = String::from_utf8(bytes[2..2 + len].to_vec()).unwrap();
        let rest = bytes[2 + len..].to_vec();
        match tag {
            0 => Wire::Call {
                request,
                body: rest,
            },
            1 => Wire::Answer {
                request,
                answer: Some(rest),
            },
            _ => Wire::Answer {
                request,
                answer: None,
            },
        }
    }
}

fn unix_ms(ctx: &deterministic::Context) -> u64 {
    ctx.current()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A host: answers calls with its node, and announces what it computes every heartbeat.
async fn host(
    ctx: deterministic::Context,
    mut net: impl Transport,
    mut announce: impl Transport,
    node: Arc<Node>,
    caller: PeerKey,
) {
    let mut announce_at = ctx.current();
    loop {
        commonware_macros::select! {
            msg = net.recv() => {
                let Some(Incoming::Message(from, bytes)) = msg else { return };
                if let Wire::Call { request, body } = Wire::decode(&bytes) {
                    let answer = node.compute_batch_for_peer(&request, &body, None).ok();
                    net.send(&from, Wire::Answer { request, answer }.encode());
                }
            },
            _ = ctx.sleep_until(announce_at) => {
                let report = node.hosted_report_at(unix_ms(&ctx));
                announce.send(&caller, serde_json::to_vec(&report).unwrap());
                announce_at += HEARTBEAT;
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Plan {
    seed: u64,
    /// Latency, jitter and the share of messages delivered, %.
    link: (Duration, Duration, u64),
    /// The experts the caller computes itself (an `experts` setting).
    local: String,
    check_ppm: u32,
    /// Host 0 is killed after this many layers' calls.
    kill_after: Option<usize>,
    /// Host 2 lies from this many layers' calls on.
    lie_after: Option<usize>,
}

#[derive(Debug)]
struct Outcome {
    tokens: Vec<Vec<u32>>,
    /// Every request, answer, hedge and give-up, in order, with its simulated time.
    trace: Vec<String>,
    /// Calls answered, per host, before and after the kill.
    answered: BTreeMap<String, (u64, u64)>,
    hedged: u64,
    /// Calls no host answered (the caller computed them).
    unanswered: u64,
    /// Requests sent to each host after it was banned.
    after_ban: u64,
    banned: BTreeMap<String, String>,
    evidence: Vec<(String, String)>,
    net_keys: BTreeMap<String, String>,
    sim_ms: u64,
}

/// The caller's listener of announcements: each is taken into `table` as a node's
/// heartbeat takes one.
async fn listen(
    ctx: deterministic::Context,
    mut announce: impl Transport,
    table: Arc<Mutex<HostTable>>,
    names: BTreeMap<PeerKey, String>,
    epoch: SystemTime,
) {
    while let Some(Incoming::Message(from, json)) = announce.recv().await {
        let now = ctx.current().duration_since(epoch).unwrap();
        let announcement: serde_json::Value = serde_json::from_slice(&json).unwrap();
        table
            .lock()
            .unwrap()
            .heard(
                &names[&from],
                &announcement,
                0.0,
                now,
                unix_ms(&ctx),
                |_| true,
            )
            .unwrap();
    }
}

/// The caller's state in the runtime.
struct Caller {
    table: Arc<Mutex<HostTable>>,
    rng: ChaCha8Rng,
    epoch: SystemTime,
    check_ppm: u32,
    keys: BTreeMap<String, PeerKey>,
    next_request: u64,
    trace: Vec<String>,
    exchanges: usize,
    killed: bool,
    answered: BTreeMap<String, (u64, u64)>,
    hedged: u64,
    unanswered: u64,
    after_ban: u64,
}

/// A request in flight.
struct Flight {
    attempt: u64,
    to: Target,
    calls: Vec<usize>,
    out: Outgoing,
    sent: Duration,
}

impl Caller {
    fn now(&self, ctx: &deterministic::Context) -> Duration {
        ctx.current().duration_since(self.epoch).unwrap()
    }

    /// One layer's calls, carried as the node's [`Exchange`] directs.
    async fn exchange(
        &mut self,
        ctx: &deterministic::Context,
        net: &mut impl Transport,
        calls: Vec<RemoteCall>,
    ) -> Vec<RemoteOutcome> {
        let now = self.now(ctx);
        let (mut ex, first) = {
            let table = self.table.lock().unwrap();
            Exchange::start(&calls, &table, now, &mut self.rng)
        };
        let mut flights: BTreeMap<String, Flight> = BTreeMap::new();
        let mut sends = first;
        loop {
            let now = self.now(ctx);
            for d in sends.drain(..) {
                let request = format!("r{}", self.next_request);
                self.next_request += 1;
                let out = Outgoing::new(request.clone(), d.calls.iter().map(|&i| &calls[i]));
                let banned = self
                    .table
                    .lock()
                    .unwrap()
                    .hosts(now)
                    .into_iter()
                    .any(|h| h.api == d.to.api && h.banned.is_some());
                self.after_ban += u64::from(banned);
                self.trace.push(format!(
                    "{} {request} a{} -> {} {:?}",
                    now.as_millis(),
                    d.attempt,
                    d.to.api,
                    d.calls
                ));
                net.send(
                    &self.keys[&d.to.api],
                    Wire::Call {
                        request: request.clone(),
                        body: out.body.clone(),
                    }
                    .encode(),
                );
                flights.insert(
                    request,
                    Flight {
                        attempt: d.attempt,
                        to: d.to,
                        calls: d.calls,
                        out,
                        sent: now,
                    },
                );
            }
            if ex.done() {
                break;
            }
            let deadline = self.epoch + ex.deadline().unwrap();
            commonware_macros::select! {
                msg = net.recv() => {
                    let Some(Incoming::Message(_, bytes)) = msg else { continue };
                    let now = self.now(ctx);
                    match Wire::decode(&bytes) {
                        Wire::Answer { request, answer } => {
                            let Some(f) = flights.remove(&request) else { continue };
                            let (check_ppm, rng) = (self.check_ppm, &mut self.rng);
                            let (answers, whole) = f.out.read(
                                &f.to,
                                f.calls.iter().map(|&i| &calls[i]),
                                answer.as_deref(),
                                || rng.random_range(0..1_000_000u32) < check_ppm,
                            );
                            let ms = (now - f.sent).as_secs_f64() * 1e3;
                            self.table.lock().unwrap().record(&f.to.api, whole, ms, now);
                            self.trace.push(format!("{} {request} answered whole={whole}", now.as_millis()));
                            sends.extend(ex.answered_all(f.attempt, f.calls.into_iter().zip(answers), now));
                        }
                        Wire::Call { .. } => {}
                    }
                },
                _ = ctx.sleep_until(deadline) => {
                    let now = self.now(ctx);
                    // Requests past the call timeout have failed, as an HTTP call's would.
                    let late: Vec<String> = flights
                        .iter()
                        .filter(|(_, f)| f.sent + CALL_TIMEOUT <= now)
                        .map(|(r, _)| r.clone())
                        .collect();
                    for r in late {
                        let f = flights.remove(&r).unwrap();
                        let ms = (now - f.sent).as_secs_f64() * 1e3;
                        self.table.lock().unwrap().record(&f.to.api, false, ms, now);
                        self.trace.push(format!("{} {r} gave up", now.as_millis()));
                    }
                    sends.extend(ex.tick(now));
                },
            }
        }
        self.hedged += ex.hedged();
        let outcomes = ex.finish();
        for o in &outcomes {
            match &o.answer {
                Some(a) => {
                    let e = self.answered.entry(a.host.clone()).or_default();
                    if self.killed {
                        e.1 += 1;
                    } else {
                        e.0 += 1;
                    }
                }
                None => self.unanswered += 1,
            }
        }
        outcomes
    }
}

fn simulate(plan: &Plan) -> Outcome {
    // The hosts' nodes and the caller's chain, on disk, before the runtime starts.
    let host_dirs: Vec<tempfile::TempDir> = (0..HOSTS)
        .map(|h| network_dir(Some(0x21 + h as u8)))
        .collect();
    let nodes: Vec<Arc<Node>> = host_dirs
        .iter()
        .enumerate()
        .map(|(h, dir)| {
            let mut config = NodeConfig::default();
            config
                .apply(&ConfigLayer {
                    experts: Some(hosted_by(h)),
                    ..ConfigLayer::default()
                })
                .unwrap();
            Arc::new(Node::open(dir.path(), config, 1_700_000_000_000).unwrap())
        })
        .collect();
    let caller_dir = network_dir(None);
    let store = Arc::new(Store::open(caller_dir.path().join("chain")).unwrap());

    let cfg = deterministic::Config::new()
        .with_seed(plan.seed)
        .with_timeout(Some(Duration::from_secs(3600)));
    let plan = plan.clone();
    deterministic::Runner::new(cfg).start(|context| async move {
        let keys: Vec<PeerKey> = (0..=HOSTS as u64)
            .map(|i| ed25519::PrivateKey::from_seed(i).public_key())
            .collect();
        let (network, oracle) = simulated::Network::new_with_peers(
            context.child("network"),
            simulated::Config {
                max_size: 1 << 20,
                max_peers_per_set: NZUsize!(HOSTS + 1),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
            keys.clone(),
        )
        .await;
        network.start();
        let (latency, jitter, success) = plan.link;
        for h in 1..=HOSTS {
            for (a, b) in [(0, h), (h, 0)] {
                oracle
                    .add_link(
                        keys[a].clone(),
                        keys[b].clone(),
                        Link {
                            latency,
                            jitter,
                            success_rate: probability!(success, 100),
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        let quota = Quota::per_second(NZU32!(100_000));
        let mut tasks = Vec::new();
        for (h, node) in nodes.iter().enumerate() {
            let control = oracle.control(keys[h + 1].clone());
            let calls = P2p::new(control.register(CALLS, quota).await.unwrap());
            let announce = P2p::new(control.register(ANNOUNCE, quota).await.unwrap());
            let (node, caller) = (node.clone(), keys[0].clone());
            tasks.push(
                context
                    .child("host")
                    .spawn(move |ctx| host(ctx, calls, announce, node, caller)),
            );
        }
        let control = oracle.control(keys[0].clone());
        let mut net = P2p::new(control.register(CALLS, quota).await.unwrap());
        let announce = P2p::new(control.register(ANNOUNCE, quota).await.unwrap());

        let names: BTreeMap<PeerKey, String> = (1..=HOSTS)
            .map(|h| (keys[h].clone(), format!("host{}", h - 1)))
            .collect();
        let mut caller = Caller {
            table: Arc::new(Mutex::new(HostTable::default())),
            rng: ChaCha8Rng::seed_from_u64(plan.seed),
            epoch: context.current(),
            check_ppm: plan.check_ppm,
            keys: names.iter().map(|(k, n)| (n.clone(), k.clone())).collect(),
            next_request: 0,
            trace: Vec::new(),
            exchanges: 0,
            killed: false,
            answered: BTreeMap::new(),
            hedged: 0,
            unanswered: 0,
            after_ban: 0,
        };
        context.child("listener").spawn({
            let (table, epoch) = (caller.table.clone(), caller.epoch);
            move |ctx| listen(ctx, announce, table, names, epoch)
        });
        // Every host's first announcement.
        while caller
            .table
            .lock()
            .unwrap()
            .hosts(caller.now(&context))
            .len()
            < HOSTS
        {
            context.sleep(Duration::from_millis(10)).await;
        }

        // The model, on its own thread, in lockstep with this task.
        let (ask_tx, ask_rx) = mpsc::channel();
        let evidence = Arc::new(Mutex::new(Vec::new()));
        let hosts = Arc::new(SimHosts {
            local: plan.local.parse().unwrap(),
            ask: Mutex::new(ask_tx.clone()),
            table: caller.table.clone(),
            evidence: evidence.clone(),
        });
        let model = std::thread::spawn(move || {
            let model = Model::load(
                store,
                LoadOptions {
                    precision: Precision::Int8,
                    hosts: Some(hosts),
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            let tokens = generate(&model, &prompts(model.config().vocab_size));
            ask_tx.send(Ask::Done(tokens)).unwrap();
        });
        let tokens = loop {
            // Blocks the runtime while the model computes: no simulated time passes.
            match ask_rx.recv().unwrap() {
                Ask::Compute(calls, reply) => {
                    context.sleep(LAYER_WORK).await;
                    if plan.kill_after == Some(caller.exchanges) {
                        tasks[0].abort();
                        caller.killed = true;
                        let t = caller.now(&context).as_millis();
                        caller.trace.push(format!("{t} host0 killed"));
                    }
                    if plan.lie_after == Some(caller.exchanges) {
                        nodes[2].inject_lying_expert_answers();
                    }
                    caller.exchanges += 1;
                    let outcomes = caller.exchange(&context, &mut net, calls).await;
                    reply.send(outcomes).unwrap();
                }
                Ask::Done(tokens) => break tokens,
            }
        };
        model.join().unwrap();
        let now = caller.now(&context);
        let table = caller.table.lock().unwrap().hosts(now);
        Outcome {
            tokens,
            trace: caller.trace,
            answered: caller.answered,
            hedged: caller.hedged,
            unanswered: caller.unanswered,
            after_ban: caller.after_ban,
            banned: table
                .iter()
                .filter_map(|h| Some((h.api.clone(), h.banned.clone()?)))
                .collect(),
            evidence: evidence.lock().unwrap().clone(),
            net_keys: table
                .iter()
                .map(|h| (h.api.clone(), hex::encode(h.key.as_bytes())))
                .collect(),
            sim_ms: now.as_millis() as u64,
        }
    })
}

fn lossy(seed: u64) -> Plan {
    Plan {
        seed,
        link: (Duration::from_millis(5), Duration::from_millis(3), 97),
        local: "0.*".into(),
        check_ppm: 20_000,
        kill_after: Some(LAYERS as usize * 3),
        lie_after: None,
    }
}

#[test]
fn a_host_killed_mid_generation_on_lossy_links_changes_no_token_and_one_seed_gives_one_run() {
    let want = reference();
    let a = simulate(&lossy(1));
    assert_eq!(
        a.tokens, want,
        "the spread generation differs from the single node's"
    );
    // The hosts computed experts, before and after the kill, and the dead host nothing after.
    let before: u64 = a.answered.values().map(|v| v.0).sum();
    let after: u64 = a.answered.values().map(|v| v.1).sum();
    assert!(
        before > 0 && after > 0,
        "answered: {:?}\n{}",
        a.answered,
        a.trace.join("\n")
    );
    assert_eq!(
        a.answered.get("host0").map_or(0, |v| v.1),
        0,
        "{:?}",
        a.answered
    );
    // Lost messages and the dead host were covered by hedges.
    assert!(a.hedged > 0, "nothing was hedged");
    assert!(
        a.banned.is_empty(),
        "an honest host was banned: {:?}",
        a.banned
    );
    assert!(a.trace.iter().any(|t| t.ends_with("host0 killed")));

    // The same seed, the same run; another seed, another run (and the same text).
    let again = simulate(&lossy(1));
    assert_eq!(
        (
            &again.tokens,
            &again.trace,
            &again.answered,
            again.hedged,
            again.unanswered
        ),
        (&a.tokens, &a.trace, &a.answered, a.hedged, a.unanswered),
        "one seed gave two runs"
    );
    let other = simulate(&lossy(2));
    assert_eq!(other.tokens, want);
    assert_ne!(other.trace, a.trace, "the seed does not drive the run");
    report("killed, seed 1", &a);
    report("killed, seed 2", &other);
}

/// One line of what a run did, for docs/BENCHMARKS.md.
fn report(name: &str, o: &Outcome) {
    eprintln!(
        "{name}: {} requests, {} calls hedged, {} computed by the caller, answered per host \
         (before, after the kill) {:?}, {} banned, {} ms simulated",
        o.trace.iter().filter(|t| t.contains(" -> ")).count(),
        o.hedged,
        o.unanswered,
        o.answered,
        o.banned.len(),
        o.sim_ms
    );
}

#[test]
fn a_lying_host_is_caught_banned_and_kept_as_evidence_and_the_text_is_unchanged() {
    let want = reference();
    let plan = Plan {
        link: (Duration::from_millis(5), Duration::from_millis(3), 99),
        check_ppm: 1_000_000,
        kill_after: None,
        lie_after: Some(2),
        ..lossy(3)
    };
    let o = simulate(&plan);
    assert_eq!(o.tokens, want);
    assert_eq!(
        o.banned.keys().collect::<Vec<_>>(),
        ["host2"],
        "exactly the liar is banned"
    );
    assert!(!o.evidence.is_empty());
    for (host, statement) in &o.evidence {
        assert_eq!(host, "host2");
        // The liar's own signature over what it answered: one over its whole batch.
        let s: blyan_node::hosting::AnswerStatement = serde_json::from_str(statement).unwrap();
        assert_eq!(s.net_key, o.net_keys["host2"]);
        assert!(s.verify(), "{s:?}");
        let key = ed25519_dalek::VerifyingKey::from_bytes(
            &hex::decode(&s.net_key).unwrap().try_into().unwrap(),
        )
        .unwrap();
        let signature = ed25519_dalek::Signature::from_bytes(
            &hex::decode(&s.signature).unwrap().try_into().unwrap(),
        );
        let digest = blyan_node::hosting::batch_answer_digest(&s.request, &s.answers);
        key.verify_strict(digest.as_bytes(), &signature).unwrap();
        let mut altered = s.clone();
        altered.output_hash = Hash::of(b"another output");
        assert!(!altered.verify());
    }
    // Once banned, it was sent nothing more; the honest hosts went on answering.
    assert_eq!(o.after_ban, 0);
    assert!(o.answered.get("host0").is_some_and(|v| v.0 > 0));
    assert!(o.answered.get("host1").is_some_and(|v| v.0 > 0));
    report("liar, seed 3", &o);
}

#[test]
fn a_caller_that_computes_part_of_every_layer_asks_only_for_the_rest_and_writes_the_same_text() {
    let want = reference();
    // The caller computes what host 0 does (two thirds of layers 1 to 3) and layer 0.
    let plan = Plan {
        local: format!("0.*,{}", hosted_by(0)),
        kill_after: None,
        ..lossy(4)
    };
    let o = simulate(&plan);
    assert_eq!(o.tokens, want);
    // Host 0 computes nothing the caller does not: it is never asked.
    assert!(
        !o.trace.iter().any(|t| t.contains("-> host0")),
        "{:?}",
        o.answered
    );
    assert!(o.answered.get("host1").is_some_and(|v| v.0 > 0));
    assert!(o.answered.get("host2").is_some_and(|v| v.0 > 0));
    report("part of every layer here, seed 4", &o);
}
