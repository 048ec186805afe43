//! Ledger throughput and billing overhead, on SQLite and (with a reachable server) PostgreSQL.
//!
//! ```text
//! cargo run --release -p blyan-ledger --example ledger_bench -- [--pg URL] [--n 2000]
//! ```
//!
//! Measures, per backend: transfers per second one per transaction and in batches of 100 per
//! transaction; and the billing work one chat request costs the node (the hold before
//! generation plus the capture after, with three contributors to pay), p50/p99 over `n`
//! requests, with and without an idempotency key.

use std::sync::Arc;
use std::time::Instant;

use blyan_ledger::{
    AccountKind, Durability, IdempotencyKey, IdempotentReply, Ledger, PgStore, SqliteStore, Store,
    SystemAccount, Tokenomics,
};
use blyan_primitives::{Address, Amount};

fn addr(n: u8) -> Address {
    Address([n; 20])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(name: &str, store: Arc<dyn Store>, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let econ = Tokenomics::default().check()?;
    let l = Ledger::new(store, econ);
    let now = 1_800_000_000_000;
    l.init(now)?;
    l.create_operator(addr(0xee), now)?;
    let (a, b) = (addr(0x11), addr(0x22));
    for x in [a, b] {
        l.create_account(x, AccountKind::User, now)?;
        l.transfer(
            SystemAccount::Treasury.address(),
            x,
            Amount::from_bly(1_000_000).ok_or("fits")?,
            "",
            None,
            now,
        )?;
    }
    let one = Amount::from_nano(1_000);

    let started = Instant::now();
    for i in 0..n {
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        l.transfer(from, to, one, "", None, now)?;
    }
    let single = n as f64 / started.elapsed().as_secs_f64();

    let batch: Vec<_> = (0..100)
        .map(|i| if i % 2 == 0 { (a, b, one) } else { (b, a, one) })
        .collect();
    let rounds = (n / 100).max(1);
    let started = Instant::now();
    for _ in 0..rounds {
        l.transfer_batch(&batch, "", now)?;
    }
    let batched = (rounds * 100) as f64 / started.elapsed().as_secs_f64();

    let routing = blyan_ledger::Served::locally(
        [(addr(0xc1), 300), (addr(0xc2), 200), (Address::ZERO, 100)]
            .into_iter()
            .collect(),
    );
    let op = addr(0xee);
    let mut plain = Vec::with_capacity(n);
    let mut keyed = Vec::with_capacity(n);
    let body = "x".repeat(2000);
    for i in 0..n {
        // A typical request: 40 prompt tokens, up to 128 generated, 100 used.
        let t = Instant::now();
        let h = l.hold(a, 168, now)?;
        l.capture(&h.id, 140, &routing, op, None, now)?;
        plain.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let key = IdempotencyKey::new(a, &format!("k{i}"), format!("{{\"i\":{i}}}").as_bytes())?;
        l.idempotency_begin(&key, now)?;
        let h = l.hold(a, 168, now)?;
        let reply = IdempotentReply {
            status: 200,
            body: body.clone(),
        };
        l.capture(&h.id, 140, &routing, op, Some((&key, &reply)), now)?;
        keyed.push(t.elapsed().as_secs_f64() * 1e3);
    }
    plain.sort_by(f64::total_cmp);
    keyed.sort_by(f64::total_cmp);
    let report = l.audit(None)?;
    println!(
        "{name:<9} transfers/s single {single:>8.0}  batched(100) {batched:>8.0}  \
         billing ms p50 {:.3} p99 {:.3}  with idempotency key p50 {:.3} p99 {:.3}  \
         ({} postings, audit {})",
        percentile(&plain, 0.5),
        percentile(&plain, 0.99),
        percentile(&keyed, 0.5),
        percentile(&keyed, 0.99),
        report.postings,
        if report.ok { "ok" } else { "FAILED" },
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut pg = None;
    let mut n = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pg" => pg = args.next(),
            "--n" => n = args.next().ok_or("--n takes a count")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(&dir.path().join("ledger.sqlite"), Durability::Normal)?;
    run("sqlite", Arc::new(sqlite), n)?;
    let full = SqliteStore::open(&dir.path().join("full.sqlite"), Durability::Full)?;
    run("sqlite-fs", Arc::new(full), n)?;
    if let Some(url) = pg {
        let schema = format!("bench_{}", std::process::id());
        let store = PgStore::open_in_schema(&url, Some(&schema))?;
        let result = run("postgres", Arc::new(store), n);
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))?;
        result?;
    }
    Ok(())
}
