//! The baselines for `blyan join`: a raw TCP copy over loopback of the same bytes (every file
//! of a block store's `payloads` directory), five runs, best and median; first into memory,
//! then into one file per payload (in the temporary directory, on the same disk as the
//! benchmark's data directories), each written and `fsync`ed before the next, as a store
//! that keeps what it acknowledged must.
//!
//! `cargo run --release -p blyan-net --example tcp_copy -- DATA_DIR/chain/payloads`

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Reads every payload file under `dir`, in a fixed order.
fn payloads(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d)? {
            let path = e?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files.into_iter().map(std::fs::read).collect()
}

/// One copy: each payload goes as its length (8 bytes, little-endian) and its bytes; the
/// receiver keeps them in memory, or writes each to its own file under `to` and syncs it
/// (and the directory at the end). Returns the seconds from connect to the last byte kept.
fn copy(payloads: &[Vec<u8>], to: Option<PathBuf>) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let count = payloads.len();
    let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut total = 0;
        for i in 0..count {
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
            s.read_exact(&mut buf)?;
            total += buf.len();
            if let Some(dir) = &to {
                let mut f = File::create(dir.join(format!("{i:04}")))?;
                f.write_all(&buf)?;
                f.sync_all()?;
            }
        }
        if let Some(dir) = &to {
            File::open(dir)?.sync_all()?;
        }
        Ok(total)
    });
    let t = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    for p in payloads {
        s.write_all(&(p.len() as u64).to_le_bytes())?;
        s.write_all(p)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let got = receiver.join().expect("receiver")?;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, payloads.iter().map(Vec::len).sum::<usize>());
    Ok(secs)
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: tcp_copy PAYLOADS_DIR");
    let payloads = payloads(Path::new(&dir))?;
    let mb = payloads.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    for durable in [false, true] {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let out = durable.then(tempfile::tempdir).transpose()?;
            runs.push(copy(
                &payloads,
                out.as_ref().map(|d| d.path().to_path_buf()),
            )?);
        }
        runs.sort_by(f64::total_cmp);
        println!(
            "raw TCP copy of {mb:.1} MB over loopback{}: best {:.3} s ({:.0} MB/s), median {:.3} s ({:.0} MB/s)",
            if durable {
                ", each payload written to its own file and fsynced"
            } else {
                " into memory"
            },
            runs[0],
            mb / runs[0],
            runs[2],
            mb / runs[2]
        );
    }
    Ok(())
}
