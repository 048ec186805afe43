//! Load benchmark of a node: startup time of `blyan up` on an existing data directory, then
//! streamed chat requests at several concurrency levels (requests/s, time to first token
//! p50/p99) and the node's resident memory at idle and under load.
//!
//! Run (after `cargo build --release -p blyan`):
//!
//! ```sh
//! cargo run --release -p blyan-api --example load -- target/release/blyan /tmp/blyan-bench
//! ```
//!
//! Arguments: the `blyan` binary, a data directory (initialised with the bundled genesis if
//! empty), then optionally the concurrency levels (default `1,8,64`), requests per client
//! (default 4) and max tokens per request (default 64).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [blyan, data_dir, rest @ ..] = args.as_slice() else {
        bail!("usage: load BLYAN_BINARY DATA_DIR [LEVELS] [REQUESTS_PER_CLIENT] [MAX_TOKENS]");
    };
    let levels: Vec<usize> = rest
        .first()
        .map_or("1,8,64", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("levels")?;
    let per_client: usize = rest.get(1).map_or(Ok(4), |s| s.parse())?;
    let max_tokens: u32 = rest.get(2).map_or(Ok(64), |s| s.parse())?;

    // First start initialises the data directory if needed; it is not timed.
    drop(start(blyan, data_dir)?);
    let mut startups = Vec::new();
    for _ in 0..3 {
        let node = start(blyan, data_dir)?;
        startups.push(node.ready_after);
    }
    println!(
        "startup of `blyan up` on an existing data directory (to first answered request): {}",
        startups
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let node = start(blyan, data_dir)?;
    // One warm-up request so the expert cache is filled, as on a node in service.
    run_level(&node.url, 1, 1, max_tokens)?;
    thread::sleep(Duration::from_millis(500));
    println!(
        "RSS idle (after one warm-up request): {:.1} MiB",
        mib(rss(node.child.id()))
    );
    println!(
        "| streams | requests | tokens | wall s | requests/s | tokens/s | TTFT p50 ms | TTFT p99 ms | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &streams in &levels {
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done, pid) = (peak.clone(), done.clone(), node.child.id());
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let r = run_level(&node.url, streams, per_client, max_tokens)?;
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        println!(
            "| {streams} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.1} |",
            r.requests,
            r.tokens,
            r.wall.as_secs_f64(),
            r.requests as f64 / r.wall.as_secs_f64(),
            r.tokens as f64 / r.wall.as_secs_f64(),
            percentile(&r.ttft_ms, 0.50),
            percentile(&r.ttft_ms, 0.99),
            mib(peak.load(Ordering::Relaxed)),
        );
    }
    Ok(())
}

struct Running {
    child: Child,
    url: String,
    ready_after: Duration,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `blyan up` and returns once it answers `/v1/models`.
fn start(blyan: &str, data_dir: &str) -> anyhow::Result<Running> {
    let started = Instant::now();
    let mut child = Command::new(blyan)
        .args(["--data-dir", data_dir, "up", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {blyan}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().context("the node exited before listening")??;
        if let Some(u) = line.strip_prefix("web UI") {
            break u.trim().trim_end_matches('/').to_owned();
        }
    };
    thread::spawn(move || lines.for_each(drop));
    let agent = agent();
    loop {
        if agent.get(format!("{url}/v1/models")).call().is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let ready_after = started.elapsed();
    if !Path::new(data_dir).join("chain").exists() {
        bail!("no chain in {data_dir}");
    }
    Ok(Running {
        child,
        url,
        ready_after,
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

struct Level {
    requests: usize,
    tokens: u64,
    wall: Duration,
    ttft_ms: Vec<f64>,
}

/// `streams` clients, each sending `per_client` streamed chat requests back to back.
fn run_level(
    url: &str,
    streams: usize,
    per_client: usize,
    max_tokens: u32,
) -> anyhow::Result<Level> {
    let started = Instant::now();
    let clients: Vec<_> = (0..streams)
        .map(|c| {
            let url = format!("{url}/v1/chat/completions");
            thread::spawn(move || -> anyhow::Result<Vec<(f64, u64)>> {
                let agent = agent();
                let mut out = Vec::new();
                for r in 0..per_client {
                    let body = json!({
                        "messages": [{"role": "user", "content": "And God said"}],
                        "max_tokens": max_tokens,
                        "seed": (c * 1000 + r) as u64,
                        "stream": true,
                        "stream_options": {"include_usage": true},
                    });
                    let sent = Instant::now();
                    let response = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body.to_string())?;
                    if response.status() != 200 {
                        bail!("status {}", response.status());
                    }
                    let mut ttft = None;
                    let mut tokens = None;
                    for line in BufReader::new(response.into_body().into_reader()).lines() {
                        let line = line?;
                        let Some(data) = line.strip_prefix("data: ") else {
                            continue;
                        };
                        if data == "[DONE]" {
                            break;
                        }
                        let chunk: Value = serde_json::from_str(data)?;
                        let content = chunk["choices"][0]["delta"]["content"].as_str();
                        if ttft.is_none() && content.is_some_and(|t| !t.is_empty()) {
                            ttft = Some(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                            tokens = Some(n);
                        }
                    }
                    out.push((
                        ttft.context("no text streamed")?,
                        tokens.context("no usage chunk")?,
                    ));
                }
                Ok(out)
            })
        })
        .collect();
    let mut ttft_ms = Vec::new();
    let mut tokens = 0;
    for c in clients {
        for (t, n) in c.join().map_err(|_| anyhow::anyhow!("client panicked"))?? {
            ttft_ms.push(t);
            tokens += n;
        }
    }
    Ok(Level {
        requests: ttft_ms.len(),
        tokens,
        wall: started.elapsed(),
        ttft_ms,
    })
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

/// Resident memory of process `pid`, from /proc.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
