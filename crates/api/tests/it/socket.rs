//! Real-socket tests: server-sent events, client disconnects, 64 concurrent streams and
//! graceful shutdown.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use blyan_node::{Node, NodeConfig};
use serde_json::{Value, json};

use crate::{Net, net_with};

/// A node served on a loopback port from a runtime on its own thread.
struct Server {
    net: Net,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(config: NodeConfig) -> Server {
        let net = net_with(config);
        let node = net.node.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx
                    .send(listener.local_addr()?)
                    .map_err(|_| std::io::Error::other("test gone"))?;
                blyan_api::serve(node, listener, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server address");
        // `serve` probes once at start (one token through the engine); wait for it so that it
        // cannot overlap what a test measures.
        let deadline = Instant::now() + Duration::from_secs(60);
        while net.node.health().updates == 0 {
            assert!(Instant::now() < deadline, "the first probe never finished");
            thread::sleep(Duration::from_millis(10));
        }
        Server {
            net,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn node(&self) -> &Arc<Node> {
        &self.net.node
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signals shutdown and waits for `serve` to return.
    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread"),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Posts `body` and returns the response's line reader.
fn open_stream(server: &Server, path: &str, body: &Value) -> BufReader<ureq::BodyReader<'static>> {
    let response = agent()
        .post(server.url(path))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("request");
    assert_eq!(response.status(), 200);
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    BufReader::new(response.into_body().into_reader())
}

/// Reads every `data:` payload of a stream until `[DONE]` (included).
fn read_events(reader: BufReader<ureq::BodyReader<'static>>) -> Vec<String> {
    let mut out = Vec::new();
    for line in reader.lines() {
        let line = line.expect("line");
        if let Some(data) = line.strip_prefix("data: ") {
            out.push(data.to_owned());
            if data == "[DONE]" {
                break;
            }
        } else {
            assert!(line.is_empty(), "unexpected SSE line {line:?}");
        }
    }
    out
}

#[test]
fn chat_streams_openai_chunks_that_add_up_to_the_plain_answer() {
    let server = Server::start(NodeConfig::default());
    let request = json!({
        "model": "blyan",
        "messages": [{"role": "user", "content": "tell me"}],
        "max_tokens": 20,
        "seed": 11,
        "temperature": 1.0,
    });
    let plain: Value = agent()
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(request.to_string())
        .expect("plain")
        .into_body()
        .read_json()
        .expect("json");

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = read_events(open_stream(&server, "/v1/chat/completions", &streamed));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].clone();
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id, "one id for the whole stream");
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        plain["choices"][0]["finish_reason"]
    );
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    // No probe during the test: it would generate a token of its own.
    let server = Server::start(NodeConfig {
        probe_interval_s: 3600,
        ..NodeConfig::default()
    });
    let request = json!({
        "prompt": "a long story",
        "max_tokens": 1000,
        "temperature": 1.0,
        "seed": 3,
        "stream": true,
    });
    let mut reader = open_stream(&server, "/v1/completions", &request);
    let mut line = String::new();
    let mut data_lines = 0;
    while data_lines < 3 {
        line.clear();
        reader.read_line(&mut line).expect("line");
        if line.starts_with("data: ") {
            data_lines += 1;
        }
    }
    assert_eq!(server.node().active_generations(), 1);
    drop(reader);

    let deadline = Instant::now() + Duration::from_secs(10);
    while server.node().active_generations() > 0 {
        assert!(
            Instant::now() < deadline,
            "generation still running after the client left"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The engine notices the cancellation at its next step, so the step in flight when the
    // client left may still finish; after it the cache sees no more lookups. A generation
    // that kept going would never let the count settle before the deadline.
    let mut hits = server.node().cache_stats().hits;
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = server.node().cache_stats().hits;
        if now == hits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine kept decoding after the client left"
        );
        hits = now;
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server.node().cache_stats().hits, hits);
    // Nothing was charged: the hold was voided whole.
    let op = server.node().operator();
    let balance = server.node().ledger().balance(op).expect("balance");
    assert_eq!(balance.pending.nano(), 0);
    assert_eq!(balance.available.nano(), 1_000_000_000_000_000);
}

/// The name of [`sixty_four_concurrent_streams_all_complete`] in this binary.
const SIXTY_FOUR: &str = "socket::sixty_four_concurrent_streams_all_complete";

#[test]
fn sixty_four_concurrent_streams_all_complete() {
    // The resident set is the whole process's: with the suite's other tests running beside
    // this one it measures them too. So the test runs again, alone, in a process of its own,
    // and that run's verdict is this one's.
    if std::env::var_os("BLYAN_TEST_ALONE").is_none() {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([SIXTY_FOUR, "--exact", "--nocapture", "--test-threads=1"])
            .env("BLYAN_TEST_ALONE", "1")
            .output()
            .expect("the test alone");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "alone, it failed:\n{text}"
        );
        for line in text.lines().filter(|l| l.contains("RSS grew")) {
            eprintln!("{line}");
        }
        return;
    }
    let server = Server::start(NodeConfig {
        max_batch: 32,
        ..NodeConfig::default()
    });
    let rss_before = rss_bytes();
    let url = server.url("/v1/chat/completions");
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let url = url.clone();
            thread::spawn(move || -> Result<usize, String> {
                let body = json!({
                    "messages": [{"role": "user", "content": format!("client {i}")}],
                    "max_tokens": 12,
                    "seed": i,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                });
                let response = agent()
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body.to_string())
                    .map_err(|e| e.to_string())?;
                if response.status() != 200 {
                    return Err(format!("status {}", response.status()));
                }
                let events = read_events(BufReader::new(response.into_body().into_reader()));
                if events.last().map(String::as_str) != Some("[DONE]") {
                    return Err("no [DONE]".into());
                }
                let usage: Value =
                    serde_json::from_str(&events[events.len() - 2]).map_err(|e| e.to_string())?;
                usage["usage"]["completion_tokens"]
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| format!("no usage in {usage}"))
            })
        })
        .collect();
    let results: Vec<Result<usize, String>> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "{} errors: {errors:?}", errors.len());
    assert!(results.iter().all(|r| matches!(r, Ok(n) if *n <= 12)));
    assert_eq!(server.node().active_generations(), 0);
    // KV caches are released with their sequences: 64 short streams leave memory bounded.
    let grown = rss_bytes().saturating_sub(rss_before);
    eprintln!("64 streams: RSS grew by {} MiB", grown >> 20);
    assert!(grown < 256 << 20, "RSS grew by {} MiB", grown >> 20);
}

#[test]
fn shutdown_ends_streams_cleanly_and_saves_the_checker_state() {
    let mut server = Server::start(NodeConfig {
        shutdown_grace_s: 0,
        ..NodeConfig::default()
    });
    let request = json!({"prompt": "x", "max_tokens": 1000, "temperature": 1.0, "stream": true});
    let mut reader = open_stream(&server, "/v1/completions", &request);
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        reader.read_line(&mut first).expect("line");
    }
    let state = server.net.dir.path().join("node").join("checker.json");
    server.shutdown().expect("serve returns cleanly");
    let events = read_events(reader);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).expect("finish chunk");
    assert_eq!(
        finish["choices"][0]["finish_reason"], "cancelled",
        "{finish}"
    );
    assert!(state.exists(), "checker state not saved at shutdown");
    // A stream cancelled by the shutdown is not charged, and its postings are anchored.
    let op = server.node().operator();
    let balance = server.node().ledger().balance(op).expect("balance");
    assert_eq!(balance.pending.nano(), 0);
    assert_eq!(balance.available.nano(), 1_000_000_000_000_000);
    let report = server.node().audit_ledger().expect("audit");
    assert!(report.ok && report.unanchored == 0, "{report:?}");
    assert!(server.node().is_shutting_down());
    assert!(
        agent().get(server.url("/health/live")).call().is_err(),
        "still accepting connections after shutdown"
    );
}

/// This process's resident set, from /proc (0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A connection that starts a request and stalls before its headers end is closed after
/// `header_read_timeout_s`, while other clients are served; the peer address still reaches
/// the handlers (a loopback caller is the operator on an operator-only route).
#[test]
fn a_connection_that_stalls_in_its_headers_is_closed() {
    use std::io::{Read, Write};
    let server = Server::start(NodeConfig {
        header_read_timeout_s: 1,
        ..NodeConfig::default()
    });
    let mut slow = std::net::TcpStream::connect(server.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .expect("partial headers");
    let started = Instant::now();
    // Served meanwhile, as the operator: the peer address is the loopback one.
    let audit = agent()
        .get(server.url("/ledger/audit"))
        .call()
        .expect("audit");
    assert_eq!(audit.status(), 200);
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        read.is_ok() || waited < Duration::from_secs(15),
        "the stalled connection stayed open: {read:?}"
    );
    assert!(
        waited < Duration::from_secs(15) && waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    // Whatever was sent back (hyper may answer 408), it is not a served request.
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
}
