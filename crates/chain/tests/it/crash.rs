//! Crash safety: a writer process is killed at random instants while appending; after each
//! kill the store opens, full verification passes, and every block the writer reported as
//! written is present.
//!
//! The writer is this test binary itself, re-run with an environment variable that selects
//! the ignored `crash_writer` entry point.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use blyan_chain::{Store, VerifyMode};
use blyan_primitives::{ExpertId, Hash};
use rand::{Rng, SeedableRng};

use crate::fixture::{Net, expert_tensors, expert_version, init_tiny};

const DIR_VAR: &str = "BLYAN_CRASH_WRITER_DIR";
const ITERATIONS: usize = 120;

#[test]
#[ignore = "entry point of the writer process that crash_recovery_slow kills"]
fn crash_writer() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let store = Store::open(&dir).unwrap();
    let spec_hash = match store.meta().unwrap() {
        Some((h, _)) => h,
        None => init_tiny(&store),
    };
    println!("ok {spec_hash}");
    let net = Net {
        store,
        spec_hash,
        _dir: tempfile::tempdir().unwrap(),
    };
    for i in 0u32.. {
        let id = ExpertId::new(0, (i % 2) as u16);
        let block = expert_version(&net, id, expert_tensors(id, i as f32 * 0.001));
        let hash = net.store.append(block).unwrap();
        // Acknowledged only after append returned, i.e. after the index commit.
        println!("ok {hash}");
    }
}

#[test]
fn crash_recovery_slow() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xC4A5);
    let mut acknowledged: Vec<Hash> = Vec::new();
    for iteration in 0..ITERATIONS {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.random_range(2_000..60_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(hex) = line.strip_prefix("ok ") {
                acknowledged.push(hex.trim().parse().unwrap());
            }
        }
        let store =
            Store::open(dir.path()).unwrap_or_else(|e| panic!("iteration {iteration}: open: {e}"));
        if let Err(failure) = store.verify(VerifyMode::Full, |_| {}).unwrap() {
            panic!("iteration {iteration}: verify failed: {failure:?}");
        }
        for h in &acknowledged {
            assert!(
                store.header(h).unwrap().is_some(),
                "iteration {iteration}: acknowledged {h} lost"
            );
        }
    }
    // The kills landed while blocks were being written, not only before the first one.
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.len().unwrap() > 11 + ITERATIONS as u64,
        "only {} blocks",
        store.len().unwrap()
    );
}
