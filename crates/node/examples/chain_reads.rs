//! What the node's chain reads cost on a long chain, for docs/BENCHMARKS.md.
//!
//! Run: `cargo run --release -p blyan-node --example chain_reads -- [BLOCKS]`
//! (BLOCKS, default 1000000: the store is filled to this many blocks with ledger-chain blocks
//! sharing one payload file; `BENCH_DIR` says where, default the working directory).
//! Measures, as medians of 21 calls each: one `/chain/blocks?limit=50` page at the start,
//! middle and end of the listing (all chains and the ledger chain alone), one block-store
//! probe, one whole Agent Checker round, one `/metrics` render; and, for comparison, one
//! full scan of every header (what each of those calls did before the running totals).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use blyan_chain::{Block, BlockKind, BlockMeta, ChainId, LedgerBatch, Store, genesis};
use blyan_node::{Node, NodeConfig};

const NOW_MS: u64 = 1_800_000_000_000;

fn main() {
    let target: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("BLOCKS is a number"));
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    {
        let store = Store::open(tmp.path().join("chain")).unwrap();
        genesis::init(
            &store,
            genesis::random_genesis(
                7,
                &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
            )
            .unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        fill(&store, target);
        eprintln!(
            "filled to {} blocks in {:.1} s",
            store.len().unwrap(),
            t.elapsed().as_secs_f64()
        );
    }
    let config = NodeConfig {
        anchor_interval_s: 0,
        ..NodeConfig::default()
    };
    let node = Node::open(tmp.path(), config, NOW_MS).unwrap();
    let len = node.store().len().unwrap();
    let ledger = node.store().chain_totals().unwrap()[&ChainId::Ledger].blocks;
    println!("store: {len} blocks ({ledger} on the ledger chain)");

    for (label, chain, total) in [
        ("all chains", None, len),
        ("ledger", Some(ChainId::Ledger), ledger),
    ] {
        for offset in [0, total / 2, total.saturating_sub(50)] {
            let ms = median_ms(|| {
                let page = node.blocks(chain, offset as usize, 50).unwrap();
                assert_eq!(page.blocks.len(), 50.min((total - offset) as usize));
            });
            println!("/chain/blocks {label} offset {offset:>7} limit 50: {ms:.3} ms");
        }
    }
    let mut round = 0;
    let ms = median_ms(|| {
        round += 7919;
        let r = node.probe_store(round);
        assert_eq!(r.readiness, 1.0, "{}", r.detail);
    });
    println!("block-store probe: {ms:.3} ms");
    let ms = median_ms(|| {
        node.probe(NOW_MS).unwrap();
    });
    println!("whole Agent Checker round (all six probes): {ms:.3} ms");
    let ms = median_ms(|| {
        let text = node.render_metrics().unwrap();
        assert!(text.contains("blyan_chain_blocks{chain=\"ledger\"}"));
    });
    println!("/metrics render: {ms:.3} ms");
    let t = Instant::now();
    let all = node.store().blocks(None).unwrap();
    println!(
        "full header scan (the old cost of each call above): {:.1} ms for {} blocks",
        t.elapsed().as_secs_f64() * 1e3,
        all.len()
    );
}

/// Appends ledger-chain blocks until the store holds `target` blocks. They share one
/// payload (payload files are content-addressed), so only the index grows.
fn fill(store: &Store, target: u64) {
    let spec = store.at_height(ChainId::Meta, 0).unwrap().unwrap();
    let payload = LedgerBatch::new(0, vec![vec![0x42; 96]]).encode();
    let (mut height, mut prev) = store
        .head(ChainId::Ledger)
        .unwrap()
        .map_or((0, blyan_primitives::Hash::ZERO), |(h, p)| (h + 1, p));
    let mut left = target.saturating_sub(store.len().unwrap());
    while left > 0 {
        let n = left.min(10_000);
        let batch: Vec<Block> = (0..n)
            .map(|_| {
                let block = Block::new(
                    ChainId::Ledger,
                    height,
                    prev,
                    vec![spec],
                    BlockKind::LedgerBatch,
                    BlockMeta {
                        name: "ledger_batch".into(),
                        ..BlockMeta::default()
                    },
                    payload.clone(),
                    &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
                    NOW_MS - 1_000_000_000 + height,
                );
                height += 1;
                prev = block.hash();
                block
            })
            .collect();
        store.append_batch(batch).unwrap();
        left -= n;
    }
}

/// Median wall time of 21 calls, in ms.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[10]
}
