//! The sync engine in commonware's deterministic runtime over its simulated network: many
//! nodes with real block stores, links with latency, jitter and loss, a partition that heals,
//! nodes that crash and restart, and Byzantine peers.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blyan_chain::genesis::{GENESIS_TIMESTAMP_MS, RandomWeights, genesis_blocks};
use blyan_chain::spec::{MetaPayload, ModelSpec, byte_level_tokenizer_json};
use blyan_chain::{Block, BlockKind, BlockMeta, ChainId, LedgerBatch, Store};
use blyan_net::wire::{Head, Msg};
use blyan_net::{BlockStore, ChainStore, Config, Engine, Handle, P2p, PeerKey};
use blyan_primitives::{Hash, SigningKey};
use commonware_cryptography::{Signer as _, ed25519};
use commonware_p2p::simulated::{self, Link, Oracle};
use commonware_p2p::{Receiver as _, Recipients, Sender as _};
use commonware_runtime::{
    Clock, Handle as TaskHandle, Quota, Runner, Spawner, Supervisor, deterministic,
};
use commonware_utils::{NZU32, NZUsize, probability};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

fn operator() -> SigningKey {
    SigningKey::from_slice(&[0x11; 32]).unwrap()
}

fn genesis(op: &SigningKey) -> Vec<Block> {
    let tokenizer = byte_level_tokenizer_json();
    let meta = MetaPayload {
        spec: ModelSpec::tiny(Hash::of(&tokenizer)),
        tokenizer,
    };
    genesis_blocks(&meta, &mut RandomWeights { seed: 7 }, op).unwrap()
}

fn ledger_block(store: &Store, spec: Hash, signer: &SigningKey, seq: u64, ts: u64) -> Block {
    let (height, prev) = match store.head(ChainId::Ledger).unwrap() {
        Some((h, p)) => (h + 1, p),
        None => (0, Hash::ZERO),
    };
    let batch = LedgerBatch::new(seq, vec![format!("posting {seq}").into_bytes()]);
    Block::new(
        ChainId::Ledger,
        height,
        prev,
        vec![spec],
        BlockKind::LedgerBatch,
        BlockMeta {
            name: "ledger".into(),
            ..BlockMeta::default()
        },
        batch.encode(),
        signer,
        ts,
    )
}

/// The shape of one simulated run.
#[derive(Clone, Debug)]
struct Plan {
    seed: u64,
    nodes: usize,
    byzantine: usize,
    neighbours: usize,
    /// Seconds between the operator's blocks, and how many it writes.
    block_every: u64,
    blocks: u64,
    /// Partition from..to (seconds): even and odd nodes cannot reach each other.
    partition: (u64, u64),
    /// Crash at..restart at (seconds), for `crashed` honest nodes.
    crash: (u64, u64),
    crashed: usize,
    /// Seconds the run may take to converge after the last block.
    settle: u64,
}

impl Plan {
    fn ci(seed: u64) -> Plan {
        Plan {
            seed,
            nodes: 100,
            byzantine: 5,
            neighbours: 6,
            block_every: 5,
            blocks: 24,
            partition: (30, 70),
            crash: (50, 90),
            crashed: 10,
            settle: 120,
        }
    }
}

#[derive(Debug)]
struct Outcome {
    auditor: String,
    /// Heads of every honest node at the end.
    heads: Vec<Vec<Head>>,
    operator_heads: Vec<Head>,
    /// Per honest node: how many Byzantine keys it had banned.
    bans_of_byzantine: usize,
    /// Honest peers banned by honest nodes (there must be none).
    bans_of_honest: Vec<String>,
    /// Forged blocks found in any honest store.
    forged_stored: usize,
    converged_at_s: Option<u64>,
    /// Snapshots of nodes that did not converge, for a failure message.
    stuck: Vec<String>,
    msgs: u64,
    bytes: u64,
}

const CHANNEL: u64 = 0;

fn quota() -> Quota {
    Quota::per_second(NZU32!(10_000))
}

struct Node {
    store: Arc<ChainStore>,
    handle: Option<(Handle, TaskHandle<()>)>,
    _dir: tempfile::TempDir,
}

fn engine_config() -> Config {
    Config {
        // Small chunks so that the tiny genesis still travels in many pieces.
        chunk_len: 4096,
        ..Config::default()
    }
}

async fn start_node(
    context: &deterministic::Context,
    oracle: &Oracle<PeerKey, deterministic::Context>,
    key: &PeerKey,
    store: Arc<ChainStore>,
    neighbours: Vec<PeerKey>,
) -> (Handle, TaskHandle<()>) {
    let channel = oracle
        .control(key.clone())
        .register(CHANNEL, quota())
        .await
        .unwrap();
    let (engine, handle) = Engine::new(
        context.child("node").with_attribute("key", key),
        engine_config(),
        P2p::new(channel),
        store,
        neighbours,
    );
    (handle, engine.start())
}

fn link() -> Link {
    Link {
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(15),
        success_rate: probability!(0.95),
    }
}

/// A Byzantine peer: announces blocks it signed itself (not the operator), answers any header
/// request with a header of another block, chunk requests with garbage, and sends
/// undecodable bytes.
async fn byzantine(
    context: deterministic::Context,
    oracle: Oracle<PeerKey, deterministic::Context>,
    key: PeerKey,
    neighbours: Vec<PeerKey>,
    forged: Vec<Block>,
    genesis: Hash,
) {
    let (mut sender, mut receiver) = oracle
        .control(key.clone())
        .register(CHANNEL, quota())
        .await
        .unwrap();
    let by_hash: BTreeMap<Hash, &Block> = forged.iter().map(|b| (b.hash(), b)).collect();
    let mut round = 0u64;
    loop {
        commonware_macros::select! {
            msg = receiver.recv() => {
                let Ok((from, bytes)) = msg else { return };
                let reply = match Msg::decode(bytes.as_ref()) {
                    Ok(Msg::GetHeader { id, hash }) => {
                        // Its own forged block when asked for it; another's header otherwise.
                        let b = by_hash.get(&hash).copied().unwrap_or(&forged[0]);
                        Some(Msg::Header {
                            id,
                            header: b.header.encode(),
                            signature: b.signature.unwrap().0.to_vec(),
                        })
                    }
                    Ok(Msg::GetChunk { id, len, .. }) => Some(Msg::Chunk {
                        id,
                        bytes: vec![0xAB; len.min(64) as usize],
                    }),
                    Ok(Msg::GetHashes { id, .. }) => Some(Msg::Hashes {
                        id,
                        hashes: forged.iter().map(Block::hash).collect(),
                    }),
                    _ => None,
                };
                if let Some(r) = reply {
                    sender.send(Recipients::One(from), r.encode(), false);
                }
            },
            _ = context.sleep(Duration::from_millis(700)) => {
                round += 1;
                for n in &neighbours {
                    let msg = match round % 3 {
                        0 => Msg::Announce { hash: forged[(round as usize / 3) % forged.len()].hash() },
                        1 => Msg::Status {
                            genesis,
                            heads: vec![Head { chain: ChainId::Ledger as u8, height: 1_000, hash: forged[0].hash() }],
                        },
                        _ => {
                            sender.send(Recipients::One(n.clone()), vec![0xFF, 0x00, 0x13], false);
                            continue;
                        }
                    };
                    sender.send(Recipients::One(n.clone()), msg.encode(), false);
                }
            },
        }
    }
}

fn simulate(plan: &Plan) -> Outcome {
    let cfg = deterministic::Config::new()
        .with_seed(plan.seed)
        .with_timeout(Some(Duration::from_secs(3600)));
    let runner = deterministic::Runner::new(cfg);
    let plan = plan.clone();
    runner.start(|context| async move {
        let op = operator();
        let genesis_blocks = genesis(&op);
        let spec = genesis_blocks[0].hash();
        let keys: Vec<ed25519::PrivateKey> = (0..plan.nodes as u64)
            .map(ed25519::PrivateKey::from_seed)
            .collect();
        let pks: Vec<PeerKey> = keys.iter().map(|k| k.public_key()).collect();
        let honest = plan.nodes - plan.byzantine;

        let (network, oracle) = simulated::Network::new_with_peers(
            context.child("network"),
            simulated::Config {
                max_size: blyan_net::wire::MSG_LEN_MAX as u32,
                max_peers_per_set: NZUsize!(plan.nodes),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
            pks.clone(),
        )
        .await;
        network.start();

        // Topology: each node links to a few random others, both ways.
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
        let mut adj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); plan.nodes];
        for i in 0..plan.nodes {
            // A ring keeps the graph connected; the random edges make it small-world.
            let j = (i + 1) % plan.nodes;
            adj[i].insert(j);
            adj[j].insert(i);
            let mut others: Vec<usize> = (0..plan.nodes).filter(|j| *j != i).collect();
            others.shuffle(&mut rng);
            for &j in others.iter().take(plan.neighbours.saturating_sub(2) / 2) {
                adj[i].insert(j);
                adj[j].insert(i);
            }
        }
        let partitioned = |a: usize, b: usize| a % 2 != b % 2;
        for (i, ns) in adj.iter().enumerate() {
            for &j in ns {
                oracle
                    .add_link(pks[i].clone(), pks[j].clone(), link())
                    .await
                    .unwrap();
            }
        }

        // Stores: the operator's node has the genesis; every other node starts empty.
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..honest {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            if i == 0 {
                store.append_batch(genesis_blocks.clone()).unwrap();
            }
            nodes.push(Node {
                store: Arc::new(ChainStore::new(store, spec)),
                handle: None,
                _dir: dir,
            });
        }
        for i in 0..honest {
            let neighbours: Vec<PeerKey> = adj[i].iter().map(|&j| pks[j].clone()).collect();
            let h = start_node(
                &context,
                &oracle,
                &pks[i],
                nodes[i].store.clone(),
                neighbours,
            )
            .await;
            nodes[i].handle = Some(h);
        }
        // Byzantine nodes: their forged blocks are well formed and signed, by the wrong key.
        for b in honest..plan.nodes {
            let forger = SigningKey::from_slice(&[(b as u8).wrapping_add(0x40); 32]).unwrap();
            let scratch = tempfile::tempdir().unwrap();
            let s = Store::open(scratch.path()).unwrap();
            s.append_batch(genesis(&forger)).unwrap();
            let forged: Vec<Block> = (0..3)
                .map(|k| {
                    let blk = ledger_block(&s, spec, &forger, k, GENESIS_TIMESTAMP_MS + k);
                    // Each builds on the operator's spec, so only its author gives it away.
                    let mut blk = blk;
                    blk.header.height = k;
                    blk.header.prev = Hash::ZERO;
                    blk.sign(&forger);
                    blk
                })
                .collect();
            let neighbours: Vec<PeerKey> = adj[b].iter().map(|&j| pks[j].clone()).collect();
            context.child("byzantine").spawn({
                let oracle = oracle.clone();
                let key = pks[b].clone();
                move |ctx| byzantine(ctx, oracle, key, neighbours, forged, spec)
            });
        }

        // The timeline, one second at a time.
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0xC4A5);
        let mut victims: Vec<usize> = (1..honest).collect();
        victims.shuffle(&mut rng);
        victims.truncate(plan.crashed);
        let last_block_s = plan.block_every * plan.blocks;
        let mut written = 0u64;
        let mut converged_at_s = None;
        let start = context.current();
        let mut t = 0u64;
        loop {
            context.sleep(Duration::from_secs(1)).await;
            t += 1;
            if t.is_multiple_of(plan.block_every) && written < plan.blocks {
                let store = nodes[0].store.store().clone();
                let ts = GENESIS_TIMESTAMP_MS
                    + context.current().duration_since(start).unwrap().as_millis() as u64;
                let block = ledger_block(&store, spec, &op, written, ts);
                let hash = store.append(block).unwrap();
                nodes[0].handle.as_ref().unwrap().0.announce(hash);
                written += 1;
            }
            if t == plan.partition.0 || t == plan.partition.1 {
                for (i, ns) in adj.iter().enumerate() {
                    for &j in ns.iter().filter(|&&j| partitioned(i, j)) {
                        if t == plan.partition.0 {
                            oracle
                                .remove_link(pks[i].clone(), pks[j].clone())
                                .await
                                .unwrap();
                        } else {
                            oracle
                                .add_link(pks[i].clone(), pks[j].clone(), link())
                                .await
                                .unwrap();
                        }
                    }
                }
            }
            if t == plan.crash.0 {
                for &v in &victims {
                    if let Some((_, task)) = nodes[v].handle.take() {
                        task.abort();
                    }
                }
            }
            if t == plan.crash.1 {
                for &v in &victims {
                    let neighbours: Vec<PeerKey> = adj[v].iter().map(|&j| pks[j].clone()).collect();
                    let h = start_node(
                        &context,
                        &oracle,
                        &pks[v],
                        nodes[v].store.clone(),
                        neighbours,
                    )
                    .await;
                    nodes[v].handle = Some(h);
                }
            }
            if t >= last_block_s && t > plan.crash.1 && t > plan.partition.1 {
                let want = nodes[0].store.heads().unwrap();
                if nodes.iter().all(|n| n.store.heads().unwrap() == want) {
                    converged_at_s = Some(t);
                    break;
                }
                if t >= last_block_s + plan.settle {
                    break;
                }
            }
        }

        let mut bans_of_byzantine = 0;
        let mut bans_of_honest = Vec::new();
        let (mut msgs, mut bytes) = (0, 0);
        let mut stuck = Vec::new();
        let byz: BTreeSet<String> = pks[honest..].iter().map(|k| k.to_string()).collect();
        let want = nodes[0].store.heads().unwrap();
        for (i, n) in nodes.iter().enumerate() {
            let snap = n.handle.as_ref().unwrap().0.snapshot().await.unwrap();
            if snap.heads != want {
                let peers: Vec<String> = snap
                    .peers
                    .iter()
                    .map(|p| {
                        let byz = if byz.contains(&p.key) { "byz " } else { "" };
                        let heads: Vec<(u8, u64)> =
                            p.heads.iter().map(|h| (h.chain, h.height)).collect();
                        format!(
                            "{byz}{}: bans {} banned {:?} silent {:?} heads {heads:?} why {:?}",
                            &p.key[..6],
                            p.bans,
                            p.banned_for_ms,
                            p.silent_for_ms,
                            p.last_ban
                        )
                    })
                    .collect();
                let mine: Vec<(u8, u64)> = snap.heads.iter().map(|h| (h.chain, h.height)).collect();
                stuck.push(format!(
                    "node {i} (crashed: {}): heads {mine:?} wanted {}, stats {:?}\n    {}",
                    victims.contains(&i),
                    snap.wanted,
                    snap.stats,
                    peers.join("\n    ")
                ));
            }
            msgs += snap.stats.msgs_out;
            bytes += snap.stats.bytes_out;
            bans_of_byzantine += snap
                .peers
                .iter()
                .filter(|p| byz.contains(&p.key) && p.bans > 0)
                .count();
            bans_of_honest.extend(
                snap.peers
                    .iter()
                    .filter(|p| !byz.contains(&p.key) && p.bans > 0)
                    .map(|p| format!("node {i} banned {}: {:?}", &p.key[..8], p.last_ban)),
            );
        }
        let forged_stored = nodes
            .iter()
            .map(|n| {
                n.store
                    .store()
                    .blocks(Some(ChainId::Ledger))
                    .unwrap()
                    .iter()
                    .filter(|b| {
                        let h = n.store.store().header(&b.hash).unwrap().unwrap();
                        h.author != blyan_primitives::address_of(&op)
                    })
                    .count()
            })
            .sum();
        Outcome {
            auditor: context.auditor().state(),
            heads: nodes.iter().map(|n| n.store.heads().unwrap()).collect(),
            operator_heads: nodes[0].store.heads().unwrap(),
            bans_of_byzantine,
            bans_of_honest,
            forged_stored,
            converged_at_s,
            stuck,
            msgs,
            bytes,
        }
    })
}

/// How many nodes hold how many blocks per chain, for a failure message.
fn summary(o: &Outcome) -> String {
    let mut counts: BTreeMap<Vec<(u8, u64)>, usize> = BTreeMap::new();
    for h in &o.heads {
        *counts
            .entry(h.iter().map(|h| (h.chain, h.height)).collect())
            .or_default() += 1;
    }
    format!(
        "stuck: {:#?}\noperator {:?}; nodes by (chain, height): {counts:?}",
        o.stuck,
        o.operator_heads
            .iter()
            .map(|h| (h.chain, h.height))
            .collect::<Vec<_>>()
    )
}

#[test]
fn a_hundred_nodes_converge_through_loss_a_partition_crashes_and_byzantine_peers() {
    let plan = Plan::ci(42);
    let wall = Instant::now();
    let a = simulate(&plan);
    eprintln!(
        "100 nodes: converged at {:?} s simulated, {:.1} s wall; {} messages, {} bytes sent; {} bans of Byzantine peers",
        a.converged_at_s,
        wall.elapsed().as_secs_f64(),
        a.msgs,
        a.bytes,
        a.bans_of_byzantine
    );
    assert!(a.converged_at_s.is_some(), "{}", summary(&a));
    // The operator wrote its genesis plus every ledger block, and everyone holds exactly that.
    let ledger = a
        .operator_heads
        .iter()
        .find(|h| h.chain == ChainId::Ledger as u8)
        .unwrap();
    assert_eq!(ledger.height, plan.blocks - 1);
    assert!(a.heads.iter().all(|h| *h == a.operator_heads));
    assert_eq!(a.forged_stored, 0);
    assert!(a.bans_of_honest.is_empty(), "{:?}", a.bans_of_honest);
    assert!(
        a.bans_of_byzantine >= plan.byzantine,
        "{} bans",
        a.bans_of_byzantine
    );
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let plan = Plan {
        nodes: 24,
        byzantine: 2,
        crashed: 2,
        blocks: 8,
        partition: (10, 25),
        crash: (15, 30),
        settle: 60,
        ..Plan::ci(7)
    };
    let a = simulate(&plan);
    let b = simulate(&plan);
    assert!(a.converged_at_s.is_some(), "{}", summary(&a));
    assert!(a.bans_of_honest.is_empty(), "{:?}", a.bans_of_honest);
    assert_eq!(a.auditor, b.auditor);
    assert_eq!(a.heads, b.heads);
    assert_eq!((a.msgs, a.bytes), (b.msgs, b.bytes));
    let c = simulate(&Plan { seed: 8, ..plan });
    assert_ne!(
        a.auditor, c.auditor,
        "a different seed gives a different trace"
    );
}

/// Resident memory of this process in bytes (Linux), to size simulated nodes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The figures of docs/SCALING.md: for each network size in `SIM_NODES` (default 10,30,100),
/// `SIM_MINUTES` simulated minutes (default 10) of one block every 5 s with loss, a partition,
/// crashes and Byzantine peers; per node: messages and bytes sent, CPU (the single-threaded
/// executor's wall time) and memory.
#[test]
#[ignore = "calibration: run with --ignored --nocapture and record the figures"]
fn scaling() {
    let sizes: Vec<usize> = std::env::var("SIM_NODES")
        .unwrap_or_else(|_| "10,30,100".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let minutes: u64 = std::env::var("SIM_MINUTES")
        .ok()
        .map_or(10, |m| m.parse().unwrap());
    for n in sizes {
        let seconds = minutes * 60;
        let plan = Plan {
            seed: 1,
            nodes: n,
            byzantine: (n / 20).max(1),
            neighbours: 6,
            block_every: 5,
            blocks: (seconds - 60) / 5,
            partition: (seconds / 5, seconds * 2 / 5),
            crash: (seconds * 3 / 10, seconds / 2),
            crashed: (n / 10).max(1),
            settle: 60,
        };
        let before = rss_bytes();
        let wall = Instant::now();
        let o = simulate(&plan);
        let wall = wall.elapsed().as_secs_f64();
        let rss = rss_bytes().saturating_sub(before);
        assert!(o.converged_at_s.is_some(), "{}", summary(&o));
        assert!(o.bans_of_honest.is_empty(), "{:?}", o.bans_of_honest);
        let honest = (n - plan.byzantine) as f64;
        println!(
            "nodes {n}: {minutes} simulated min in {wall:.1} s wall ({:.3} s CPU per node per simulated min); \
             per honest node {:.0} messages and {:.1} KB sent ({:.1} msgs/s); converged at {} s; \
             memory +{:.1} MiB ({:.0} KiB per node)",
            wall / honest / minutes as f64,
            o.msgs as f64 / honest,
            o.bytes as f64 / honest / 1e3,
            o.msgs as f64 / honest / seconds as f64,
            o.converged_at_s.unwrap(),
            rss as f64 / f64::from(1u32 << 20),
            rss as f64 / honest / 1024.0,
        );
    }
}
