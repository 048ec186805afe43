//! The baseline for `blyan join`: a raw TCP copy over loopback of the same bytes (every
//! file of a block store's `payloads` directory), five runs, best and median.
//!
//! `cargo run --release -p blyan-net --example tcp_copy -- DATA_DIR/chain/payloads`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: tcp_copy PAYLOADS_DIR");
    let mut files = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(dir)];
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
    let mut bytes = Vec::new();
    for f in files {
        bytes.extend(std::fs::read(f)?);
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                total += n;
            }
        });
        let t = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.write_all(&bytes)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let got = receiver.join().expect("receiver")?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(got, bytes.len());
        runs.push(secs);
    }
    runs.sort_by(f64::total_cmp);
    let mb = bytes.len() as f64 / 1e6;
    println!(
        "raw TCP copy of {mb:.1} MB over loopback: best {:.3} s ({:.0} MB/s), median {:.3} s ({:.0} MB/s)",
        runs[0],
        mb / runs[0],
        runs[2],
        mb / runs[2]
    );
    Ok(())
}
