//! Block store benchmarks for docs/BENCHMARKS.md.
//!
//! Run: `cargo run --release -p blyan-chain --example store_bench -- [FILL]`
//! (FILL, default 100000, is the number of existing blocks for the second append measurement).
//! Measures: single-block append rate; append cost at 1k vs FILL existing blocks; raw SHA-256
//! throughput vs `verify --full` throughput on the genesis store; store size overhead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use blyan_chain::genesis::{self, GENESIS_SEED, RandomWeights, genesis_blocks};
use blyan_chain::spec::{MetaPayload, ModelSpec, byte_level_tokenizer_json, expert_group_name};
use blyan_chain::{
    Block, BlockKind, BlockMeta, ChainId, Store, VerifyMode, check_signature, sign_hash,
};
use blyan_primitives::{ExpertId, Hash, SigningKey};
use blyan_tensor::{DType, TensorDesc, encode_tensors, f32_to_bytes};

/// The key every benchmark block is signed with.
static KEY: std::sync::LazyLock<SigningKey> =
    std::sync::LazyLock::new(|| SigningKey::from_slice(&[3; 32]).expect("a valid scalar"));

fn main() {
    let fill: u64 = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("FILL is a number"));
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();

    // 1 and 2: appends on a tiny network (expert payloads of 1.6 KB).
    let dir = tmp.path().join("small");
    let store = Store::open(&dir).unwrap();
    let tokenizer = byte_level_tokenizer_json();
    let meta = MetaPayload {
        spec: ModelSpec::tiny(Hash::of(&tokenizer)),
        tokenizer,
    };
    let blocks = genesis_blocks(&meta, &mut RandomWeights { seed: 1 }, &KEY).unwrap();
    let spec = blocks[0].hash();
    genesis::init(&store, blocks).unwrap();
    let mut n = 0u64;
    grow(&store, spec, &mut n, 1000 - store.len().unwrap(), true);
    let (rate_1k, p50_1k, p99_1k) = measure(&store, spec, &mut n, 500);
    println!(
        "append at {:>7} blocks: {rate_1k:8.0} blocks/s, p50 {p50_1k:6.3} ms, p99 {p99_1k:6.3} ms",
        1000
    );
    let t = Instant::now();
    grow(
        &store,
        spec,
        &mut n,
        fill.saturating_sub(store.len().unwrap()),
        true,
    );
    eprintln!(
        "filled to {} blocks in {:.1} s",
        store.len().unwrap(),
        t.elapsed().as_secs_f64()
    );
    let (rate_big, p50_big, p99_big) = measure(&store, spec, &mut n, 500);
    println!(
        "append at {:>7} blocks: {rate_big:8.0} blocks/s, p50 {p50_big:6.3} ms, p99 {p99_big:6.3} ms",
        store.len().unwrap() - 500
    );
    let (index, payloads) = (
        dir_size(&dir.join("index.redb")),
        dir_size(&dir.join("payloads")),
    );
    let unique_payload = unique_payload_bytes(&store);
    println!(
        "small-block store: {} blocks, index {:.1} MB ({} B/block), payload files {:.1} MB for {:.1} MB of unique payload",
        store.len().unwrap(),
        index as f64 / 1e6,
        index / store.len().unwrap(),
        payloads as f64 / 1e6,
        unique_payload as f64 / 1e6
    );
    // 4a: the signature checks' share of verifying a store of small blocks, and the quick
    // start-up check (no signatures, no payload hashes) beside it.
    let blocks = store.len().unwrap();
    let links = fastest(3, || {
        let t = Instant::now();
        store.verify(VerifyMode::Links, |_| {}).unwrap().unwrap();
        t.elapsed().as_secs_f64()
    });
    let (full, full_sigs) = fastest_full(&store, 3);
    assert_eq!(
        store
            .verify(VerifyMode::Full, |_| {})
            .unwrap()
            .unwrap()
            .signatures_checked,
        blocks
    );
    let (sign_us, check_us) = signature_costs();
    println!(
        "signatures: sign {sign_us:.1} µs, check (recover + compare) {check_us:.1} µs per block"
    );
    println!(
        "verify --full of {blocks} small blocks: {full:.2} s, of which signature checks \
         {full_sigs:.2} s = {:.0}% ({:.0} µs each); the start-up check (links) {links:.2} s",
        100.0 * full_sigs / full,
        full_sigs * 1e6 / blocks as f64
    );
    drop(store);

    // 3: raw SHA-256 vs verify --full on the genesis store.
    let dir = tmp.path().join("genesis");
    let store = Store::open(&dir).unwrap();
    genesis::init(&store, genesis::random_genesis(GENESIS_SEED, &KEY).unwrap()).unwrap();
    let buf = vec![0x5au8; 256 << 20];
    let raw = best_of(5, || {
        let t = Instant::now();
        std::hint::black_box(Hash::of(&buf));
        buf.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
    });
    let verify = best_of(5, || {
        let t = Instant::now();
        let report = store.verify(VerifyMode::Full, |_| {}).unwrap().unwrap();
        report.payload_bytes_hashed as f64 / 1e6 / t.elapsed().as_secs_f64()
    });
    let (full_s, sig_s) = fastest_full(&store, 5);
    println!(
        "verify --full on genesis: {:.1} ms, of which {} signature checks {:.1} ms = {:.1}%",
        full_s * 1e3,
        store.len().unwrap(),
        sig_s * 1e3,
        100.0 * sig_s / full_s
    );
    println!("raw SHA-256 (one thread, 256 MiB in memory): {raw:.0} MB/s");
    println!(
        "verify --full on genesis (50 blocks, 61.4 MB): {verify:.0} MB/s = {:.0}% of raw",
        100.0 * verify / raw
    );
    let payload: u64 = store
        .blocks(None)
        .unwrap()
        .iter()
        .map(|b| b.payload_len)
        .sum();
    let total = dir_size(&dir);
    println!(
        "genesis store: {:.2} MB on disk for {:.2} MB of payload: overhead {:.2}%",
        total as f64 / 1e6,
        payload as f64 / 1e6,
        100.0 * (total as f64 - payload as f64) / payload as f64
    );
}

/// Microseconds to sign one block hash and to check one block signature (medians of 9 rounds
/// of 200).
fn signature_costs() -> (f64, f64) {
    let hashes: Vec<Hash> = (0..200u32).map(|i| Hash::of(&i.to_le_bytes())).collect();
    let author = blyan_primitives::address_of(&KEY);
    let mut signs = Vec::new();
    let mut checks = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let sigs: Vec<_> = hashes.iter().map(|h| sign_hash(&KEY, h)).collect();
        signs.push(t.elapsed().as_secs_f64() * 1e6 / hashes.len() as f64);
        let t = Instant::now();
        for (h, s) in hashes.iter().zip(&sigs) {
            check_signature(h, &author, Some(s)).unwrap();
        }
        checks.push(t.elapsed().as_secs_f64() * 1e6 / hashes.len() as f64);
    }
    signs.sort_by(f64::total_cmp);
    checks.sort_by(f64::total_cmp);
    (signs[4], checks[4])
}

/// Appends `count` expert versions; with `same_payload` the tensors repeat, so only the
/// index grows (payload files are content-addressed), which makes filling fast.
fn grow(store: &Store, spec: Hash, n: &mut u64, count: u64, same_payload: bool) {
    let mut batch = Vec::new();
    let (mut height, mut prev) = store.head(ChainId::Param).unwrap().unwrap();
    let mut heads = [
        store.expert_head(ExpertId::new(0, 0)).unwrap().unwrap(),
        store.expert_head(ExpertId::new(0, 1)).unwrap().unwrap(),
    ];
    for _ in 0..count {
        *n += 1;
        let e = (*n % 2) as usize;
        let value = if same_payload {
            e as f32
        } else {
            *n as f32 * 1e-6
        };
        let block = expert_block(
            spec,
            ExpertId::new(0, e as u16),
            height + 1,
            prev,
            heads[e],
            value,
        );
        height += 1;
        prev = block.hash();
        heads[e] = prev;
        batch.push(block);
        if batch.len() == 1000 {
            store.append_batch(std::mem::take(&mut batch)).unwrap();
        }
    }
    if !batch.is_empty() {
        store.append_batch(batch).unwrap();
    }
}

/// Appends `count` blocks with fresh payloads one at a time; returns (blocks/s, p50 ms, p99 ms).
fn measure(store: &Store, spec: Hash, n: &mut u64, count: usize) -> (f64, f64, f64) {
    let mut lat = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let (height, prev) = store.head(ChainId::Param).unwrap().unwrap();
        *n += 1;
        let id = ExpertId::new(0, (*n % 2) as u16);
        let parent = store.expert_head(id).unwrap().unwrap();
        let block = expert_block(spec, id, height + 1, prev, parent, *n as f32 * 1e-6);
        let t = Instant::now();
        store.append(block).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    (rate, lat[count / 2], lat[count * 99 / 100])
}

fn expert_block(
    spec: Hash,
    id: ExpertId,
    height: u64,
    prev: Hash,
    parent: Hash,
    value: f32,
) -> Block {
    let name = expert_group_name(id);
    let shapes = [("w1", [16u64, 8]), ("w2", [8, 16]), ("w3", [16, 8])];
    let data: Vec<(TensorDesc, Vec<u8>)> = shapes
        .iter()
        .map(|(w, s)| {
            let desc = TensorDesc {
                name: format!("{name}.{w}.weight"),
                dtype: DType::F32,
                shape: s.to_vec(),
            };
            (desc, f32_to_bytes(&vec![value; (s[0] * s[1]) as usize]))
        })
        .collect();
    let refs: Vec<(TensorDesc, &[u8])> = data
        .iter()
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    let payload = encode_tensors(&refs).unwrap();
    drop(refs);
    Block::new(
        ChainId::Param,
        height,
        prev,
        vec![spec, parent],
        BlockKind::Expert,
        BlockMeta {
            name,
            expert: Some(id),
            tensors: data.into_iter().map(|(d, _)| d).collect(),
        },
        payload,
        &KEY,
        genesis::GENESIS_TIMESTAMP_MS + height,
    )
}

fn unique_payload_bytes(store: &Store) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for b in store.blocks(None).unwrap() {
        let h = store.header(&b.hash).unwrap().unwrap();
        if seen.insert(h.payload_hash) {
            total += h.payload_len;
        }
    }
    total
}

fn best_of(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(0.0, f64::max)
}

fn fastest(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

/// The fastest of `n` full verifications: its seconds, and the seconds its signature checks
/// took.
fn fastest_full(store: &Store, n: usize) -> (f64, f64) {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let report = store.verify(VerifyMode::Full, |_| {}).unwrap().unwrap();
            (t.elapsed().as_secs_f64(), report.signature_seconds)
        })
        .fold((f64::INFINITY, 0.0), |best, run| {
            if run.0 < best.0 { run } else { best }
        })
}

fn dir_size(p: &Path) -> u64 {
    let meta = std::fs::metadata(p).unwrap();
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| dir_size(&e.unwrap().path()))
        .sum()
}
