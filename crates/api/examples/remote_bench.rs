//! What serving experts across machines costs, on loopback: four nodes of one network in this
//! process, each with its own API on a loopback port.
//!
//! 1. Per remote call: `POST /experts/{id}/compute` round trips beside the same computation
//!    in the host's process (the expert's rows and the answer's signature), for rows of one
//!    token and of eight.
//! 2. Throughput: 1, 8 and 64 concurrent greedy completions through a node that computes only
//!    layer 0 (layers 1–3 on three hosts, two replicas each) beside the same on one node
//!    computing everything, in turns for `BLYAN_BENCH_ROUNDS` rounds (default 5): medians,
//!    and the share of the single node's tokens/s per round.
//! 3. A host dying: one-token completions one after another while one of the hosts stops
//!    (its server shut down: connections refused from then on); the slowest of the ten
//!    after the stop beside the median before.
//!
//! ```sh
//! cargo run --release -p blyan-api --example remote_bench
//! BLYAN_BENCH_LANES=4 cargo run --release -p blyan-api --example remote_bench
//! ```
//!
//! `BLYAN_BENCH_LANES` sets the engine lanes of the node that computes only layer 0 (the
//! single node keeps one lane per core). `BLYAN_BENCH_PROFILE=spread:30` (or `single:30`)
//! skips the measurements and runs only 64-stream generations on that node for 30 seconds,
//! for a profiler attached to the process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blyan_chain::{Store, genesis};
use blyan_node::{ConfigLayer, Node, NodeConfig};
use blyan_primitives::{ExpertId, SigningKey};
use serde_json::{Value, json};

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The middle value of `v` (the upper one of the two middle values of an even count), which
/// it leaves sorted.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

struct Running {
    node: Arc<Node>,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn start(rt: &tokio::runtime::Runtime, dir: &Path, layer: ConfigLayer) -> anyhow::Result<Running> {
    let mut config = NodeConfig::default();
    config.apply(&ConfigLayer {
        rate_limit_ip_per_min: Some(1_000_000),
        rate_limit_ip_burst: Some(1_000_000),
        rate_limit_sync_per_min: Some(1_000_000),
        rate_limit_sync_burst: Some(1_000_000),
        max_active: Some(1024),
        ..layer
    })?;
    let node = Arc::new(Node::open(dir, config, blyan_node::unix_ms())?);
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(blyan_api::serve(node.clone(), listener, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        node,
        addr,
        stop: Some(stop),
    })
}

/// Q8_0 rows in the wire form: `rows` rows of `d`, deterministic values.
fn rows_bytes(rows: usize, d: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(rows as u32).to_le_bytes());
    out.extend_from_slice(&(d as u32).to_le_bytes());
    for b in 0..rows * d / 32 {
        out.extend_from_slice(&0.02f32.to_le_bytes());
        out.extend((0..32).map(|i| ((b * 31 + i * 7) % 255) as u8));
    }
    out
}

fn complete(
    agent: &ureq::Agent,
    addr: std::net::SocketAddr,
    prompt: &str,
    tokens: u32,
) -> anyhow::Result<u64> {
    let mut r = agent
        .post(format!("http://{addr}/v1/completions"))
        .send_json(
            json!({"prompt": prompt, "max_tokens": tokens, "temperature": 0.0, "ignore_eos": true}),
        )?;
    let v: Value = r.body_mut().read_json()?;
    v["usage"]["completion_tokens"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no usage: {v}"))
}

fn throughput(addr: std::net::SocketAddr, streams: usize, tokens: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|i| {
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
                complete(&agent, addr, &format!("In the beginning {i}"), tokens)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let base = tempfile::tempdir()?;
    let key = SigningKey::from_slice(&[1; 32])?;
    {
        let store = Store::open(base.path().join("chain"))?;
        genesis::init(&store, genesis::random_genesis(7, &key)?)?;
    }
    blyan_ledger::Keystore::new(base.path().join(blyan_ledger::KEYSTORE_DIR), "")
        .with_scrypt_log_n(10)
        .set_node_key(&key)?;
    let dirs: Vec<tempfile::TempDir> = (0..5)
        .map(|_| {
            let d = tempfile::tempdir()?;
            copy_dir(base.path(), d.path())?;
            Ok(d)
        })
        .collect::<anyhow::Result<_>>()?;
    let single = start(&rt, dirs[0].path(), ConfigLayer::default())?;
    let mut hosts = vec![
        start(
            &rt,
            dirs[1].path(),
            ConfigLayer {
                experts: Some("1.*,2.*".into()),
                ..ConfigLayer::default()
            },
        )?,
        start(
            &rt,
            dirs[2].path(),
            ConfigLayer {
                experts: Some("2.*,3.*".into()),
                ..ConfigLayer::default()
            },
        )?,
        start(
            &rt,
            dirs[3].path(),
            ConfigLayer {
                experts: Some("1.*,3.*".into()),
                ..ConfigLayer::default()
            },
        )?,
    ];
    let split = start(
        &rt,
        dirs[4].path(),
        ConfigLayer {
            experts: Some("0.*".into()),
            expert_hosts: Some(hosts.iter().map(|h| h.addr.to_string()).collect()),
            // The spread node's engine lanes (default: one per core).
            lanes: std::env::var("BLYAN_BENCH_LANES")
                .ok()
                .and_then(|v| v.parse().ok()),
            ..ConfigLayer::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while split
        .node
        .hosted_report()
        .hosts
        .iter()
        .filter(|h| !h.blocks.is_empty())
        .count()
        < 3
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the hosts never answered a heartbeat"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = single.node.info().d_model;
    println!(
        "model: {} layers × {} experts, d = {d}",
        single.node.info().layers,
        single.node.info().experts
    );

    // 1. Per remote call.
    let host = &hosts[0];
    let expert = ExpertId::new(1, 0);
    let block = host
        .node
        .hosted_report()
        .experts
        .iter()
        .find(|e| e.id == expert)
        .map(|e| e.block)
        .ok_or_else(|| anyhow::anyhow!("the host does not host 1.0"))?;
    // What checking one answer's signature costs the caller: the Ed25519 network key that
    // signs answers, beside recovering an account (secp256k1) signature of the same digest.
    {
        let digest = blyan_primitives::Hash::of(b"an answer digest");
        let net = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let (public, ed) = (
            net.verifying_key(),
            ed25519_dalek::Signer::sign(&net, digest.as_bytes()),
        );
        let account = blyan_primitives::address_of(&key);
        let k1 = blyan_primitives::Signature::sign(&key, digest.as_bytes());
        let n = 2_000;
        let t = Instant::now();
        for _ in 0..n {
            public.verify_strict(digest.as_bytes(), &ed)?;
        }
        let ed_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            k1.verify(digest.as_bytes(), &account)?;
        }
        let k1_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "answer signature check: Ed25519 (network key) {ed_us:.1} µs; secp256k1 recovery (account key) {k1_us:.1} µs"
        );
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    for rows in [1usize, 8] {
        let input = rows_bytes(rows, d);
        let (mut remote, mut local) = (Vec::new(), Vec::new());
        for i in 0..2_000 {
            let t = Instant::now();
            host.node
                .compute_for_peer(expert, block, "bench", &input, None)?;
            local.push(t.elapsed());
            let t = Instant::now();
            let mut r = agent
                .post(format!(
                    "http://{}/experts/{expert}/compute?block={block}&request=r{i}",
                    host.addr
                ))
                .header("content-type", "application/octet-stream")
                .send(&input[..])?;
            let _ = r.body_mut().read_to_vec()?;
            remote.push(t.elapsed());
        }
        let (lp50, lp99) = percentiles(local);
        let (rp50, rp99) = percentiles(remote);
        println!(
            "expert call, {rows} row(s): in the host's process p50 {lp50:.3} ms p99 {lp99:.3} ms; over loopback HTTP p50 {rp50:.3} ms p99 {rp99:.3} ms; overhead p50 {:.3} ms",
            rp50 - lp50
        );
    }

    // For a profiler: only 64-stream generations on one of the two nodes, for the given
    // seconds, printing each round's tokens/s (`BLYAN_BENCH_PROFILE=single:30` or
    // `spread:30`; attach `perf` to this process meanwhile).
    if let Ok(spec) = std::env::var("BLYAN_BENCH_PROFILE") {
        let (which, secs) = spec.split_once(':').unwrap_or((spec.as_str(), "30"));
        let addr = match which {
            "single" => single.addr,
            "spread" => split.addr,
            other => anyhow::bail!("BLYAN_BENCH_PROFILE={other}: single:SECS or spread:SECS"),
        };
        let until = Instant::now() + Duration::from_secs(secs.parse()?);
        println!(
            "profiling: 64-stream generations on the {which} node, pid {}",
            std::process::id()
        );
        let counts = || {
            let r = split.node.hosted_report();
            (r.remote_calls, r.requests)
        };
        while Instant::now() < until {
            let (calls, requests) = counts();
            let started = Instant::now();
            let rate = throughput(addr, 64, 64)?;
            let tokens = rate * started.elapsed().as_secs_f64();
            let (c, r) = counts();
            println!(
                "{which}: {rate:.0} tokens/s; per token {:.2} remote calls in {:.3} requests",
                (c - calls) as f64 / tokens,
                (r - requests) as f64 / tokens
            );
        }
        return Ok(());
    }

    // 2. Throughput: rounds of the single node and the spread one in turns, so that both
    // see the machine as it is that moment; medians, and the spread of the per-round shares.
    let rounds: usize = std::env::var("BLYAN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    for streams in [1usize, 8, 64] {
        let tokens = 64;
        let (mut local, mut spread, mut shares) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let l = throughput(single.addr, streams, tokens)?;
            let s = throughput(split.addr, streams, tokens)?;
            local.push(l);
            spread.push(s);
            shares.push(100.0 * s / l);
        }
        let (l, s, share) = (median(&mut local), median(&mut spread), median(&mut shares));
        println!(
            "{streams:>2} streams × {tokens} tokens, median of {rounds} rounds: one node {l:.0} tokens/s; layer 0 here, layers 1–3 on three hosts {s:.0} tokens/s; share per round median {share:.0}% (min {:.0}%, max {:.0}%)",
            shares[0],
            shares[rounds - 1]
        );
    }
    let r = split.node.hosted_report();
    println!(
        "remote calls {}, hedged to a second host {}, computed locally for want of a host {}, spot-checked {}",
        r.remote_calls, r.hedged, r.fallbacks, r.checked
    );

    // 3. A host stops: one-token completions one after another (a prompt's prefill and
    // one token each; a streamed text comes in uneven chunks on this random model, so its
    // chunks do not time tokens); the host stops before the 100th.
    let mut times = Vec::new();
    for i in 0..200 {
        if i == 100
            && let Some(stop) = hosts[0].stop.take()
        {
            let _ = stop.send(());
        }
        let t = Instant::now();
        complete(&agent, split.addr, "In the beginning", 1)?;
        times.push(t.elapsed());
    }
    let (median, _) = percentiles(times[..100].to_vec());
    let worst = times[100..110].iter().max().copied().unwrap_or_default();
    let (after, _) = percentiles(times[110..].to_vec());
    println!(
        "one-token completions: median {median:.2} ms before the host stopped; the slowest of the next 10 {:.2} ms (extra {:.2} ms); median after {after:.2} ms",
        worst.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3 - median
    );
    let r = split.node.hosted_report();
    println!(
        "after the stop: remote calls {}, computed locally {}",
        r.remote_calls, r.fallbacks
    );
    hosts.clear();
    Ok(())
}
