//! `blyan up`, `blyan node` and `blyan chat` as a user runs them: a node on a loopback port,
//! a terminal chat against it, the config layers, SIGTERM, and the web UI in Chromium.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

mod common;

use common::{RunningNode, init_random};

#[test]
fn up_serves_a_terminal_chat_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    init_random(dir.path());
    let node = RunningNode::start(dir.path(), &["up"], &[]);
    assert_eq!(node.get("/v1/models")["data"][0]["id"], "blyan");

    let mut chat = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .args([
            "chat",
            "--url",
            &node.url,
            "--seed",
            "1",
            "--max-tokens",
            "8",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    chat.stdin
        .take()
        .unwrap()
        .write_all(b"hello\n/reset\nagain\n")
        .unwrap();
    let out = chat.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(conversation forgotten)"), "{stdout}");
    // Two replies were streamed and both finished (blyan chat fails on a cut stream).
    let metrics = ureq::get(format!("{}/metrics", node.url))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "blyan_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/chat/completions\",status=\"200\"} 2"
        ),
        "{metrics}"
    );

    let (success, printed) = node.terminate();
    assert!(success, "the node did not exit cleanly");
    assert!(printed.contains("stopped cleanly"), "{printed}");
    assert!(dir.path().join("node").join("checker.json").exists());
}

#[test]
fn config_file_environment_and_flags_layer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    init_random(dir.path());
    std::fs::write(dir.path().join("blyan.toml"), "precision = \"f32\"\n").unwrap();
    let node = RunningNode::start(dir.path(), &["node"], &[]);
    assert_eq!(node.get("/node")["node"]["precision"], "f32");
    drop(node);

    let node = RunningNode::start(dir.path(), &["node"], &[("BLYAN_PRECISION", "int8")]);
    assert_eq!(node.get("/node")["node"]["precision"], "int8");
    drop(node);

    let node = RunningNode::start(
        dir.path(),
        &["node", "--precision", "f32"],
        &[("BLYAN_PRECISION", "int8")],
    );
    assert_eq!(node.get("/node")["node"]["precision"], "f32");
    drop(node);

    std::fs::write(dir.path().join("blyan.toml"), "precison = \"f32\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["node", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("blyan.toml") && stderr.contains("precison"),
        "{stderr}"
    );
}

#[test]
fn chat_without_a_node_says_so() {
    let mut chat = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .args(["chat", "--url", "http://127.0.0.1:9"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    chat.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = chat.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is `blyan node` running?"), "{stderr}");
}

/// The web UI in Debian's headless Chromium through playwright-core (`e2e/web_ui.mjs`).
/// Needs `node`, `/usr/bin/chromium` and `e2e/node_modules`; `scripts/test-deps.sh`
/// installs them, and the README's test command runs it first.
#[test]
fn web_ui_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("e2e/web_ui.mjs");
    assert!(
        root.join("e2e/node_modules/playwright-core").exists(),
        "playwright-core is not installed; run scripts/test-deps.sh"
    );
    // The bundled trained genesis, so that the screenshots show what a user sees.
    let dir = tempfile::tempdir().unwrap();
    let node = RunningNode::start(dir.path(), &["up"], &[]);
    let shots = root.join("target/e2e");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .arg(&node.url)
        .arg(&shots)
        .output()
        .expect("running node (Node.js); run scripts/test-deps.sh");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shots.join("web-ui-chat.png").exists());
}

/// A stand-in for Stripe's API on a loopback port, for `wallet_in_chromium`: `POST
/// /v1/checkout/sessions` answers with a session whose URL is a page of this server, which
/// `GET` serves. Keeps each request's first line, Authorization header and body. Runs until
/// `stop` is set or two minutes pass.
struct MockStripe {
    base: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MockStripe {
    fn start() -> MockStripe {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, stopped, page_base) = (seen.clone(), stop.clone(), base.clone());
        let thread = thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !stopped.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let (head, body) = loop {
                    let Ok(n) = conn.read(&mut chunk) else {
                        break (String::new(), String::new());
                    };
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
                    break (head, body);
                };
                let first = head.lines().next().unwrap_or("").to_owned();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("authorization: ")
                            .or_else(|| l.strip_prefix("Authorization: "))
                    })
                    .unwrap_or("")
                    .to_owned();
                let (kind, reply) = if first.starts_with("POST /v1/checkout/sessions") {
                    (
                        "application/json",
                        serde_json::json!({"id": "cs_e2e_1", "object": "checkout.session",
                                           "url": format!("{page_base}/pay/cs_e2e_1")})
                        .to_string(),
                    )
                } else {
                    (
                        "text/html",
                        "<!doctype html><title>Checkout</title><p>Stripe Checkout stand-in"
                            .to_owned(),
                    )
                };
                kept.lock().unwrap().push((first, auth, body));
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        MockStripe {
            base,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MockStripe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The wallet in the web UI, in Chromium (`e2e/wallet.mjs`): without a wallet the page works
/// as before; with an injected EIP-1193 provider (ethers, a fixed test key) it logs in with
/// Sign-In with Ethereum, buys BLY through Checkout against a local stand-in for Stripe, is
/// credited by a signed webhook, chats on the wallet, sends BLY, makes and revokes an API
/// key and logs out.
#[test]
fn wallet_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("e2e/node_modules/ethers").exists(),
        "ethers is not installed; run scripts/test-deps.sh"
    );
    let stripe = MockStripe::start();
    let secret = "whsec_e2e_not_a_real_secret";
    let dir = tempfile::tempdir().unwrap();
    init_random(dir.path());
    let node = RunningNode::start(
        dir.path(),
        &["node"],
        &[
            ("BLYAN_STRIPE_API_KEY", "sk_test_e2e"),
            ("BLYAN_STRIPE_WEBHOOK_SECRET", secret),
            ("BLYAN_STRIPE_API_BASE", &stripe.base),
        ],
    );
    let shots = root.join("target/e2e");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root.join("e2e/wallet.mjs"))
        .arg(&node.url)
        .arg(&shots)
        .arg(format!("{}/pay/", stripe.base))
        .env("BLYAN_TEST_WEBHOOK_SECRET", secret)
        .output()
        .expect("running node (Node.js); run scripts/test-deps.sh");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = stripe.seen.lock().unwrap().clone();
    let (_, auth, form) = seen
        .iter()
        .find(|(first, _, _)| first.starts_with("POST /v1/checkout/sessions"))
        .expect("the node asked Stripe for a Checkout Session");
    assert_eq!(auth, "Bearer sk_test_e2e");
    assert!(form.contains("metadata%5Btier%5D=starter"), "{form}");
    assert!(form.contains("metadata%5Baddress%5D=0x"), "{form}");
    // The secrets never reach the node's log.
    let log = std::fs::read_to_string(RunningNode::stderr_log(dir.path())).unwrap_or_default();
    assert!(
        !log.contains(secret) && !log.contains("sk_test_e2e"),
        "{log}"
    );
}

/// `blyan ledger balance operator --json` on a data directory no node holds.
fn operator_pending(dir: &Path) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .arg("--data-dir")
        .arg(dir)
        .args(["ledger", "balance", "operator", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let balance: Value = serde_json::from_slice(&out.stdout).unwrap();
    balance["pending"].as_u64().unwrap()
}

#[test]
fn holds_of_a_killed_node_are_released_when_it_starts_again() {
    const STREAMS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    init_random(dir.path());
    let mut node = RunningNode::start(dir.path(), &["node"], &[]);
    // Billed streams that run for many steps; each reader reports its first chunk, then
    // reads until the connection dies with the node.
    let (started, first_chunks) = mpsc::channel();
    let readers: Vec<_> = (0..STREAMS)
        .map(|i| {
            let url = format!("{}/v1/completions", node.url);
            let started = started.clone();
            thread::spawn(move || {
                let body = serde_json::json!({
                    "prompt": "In the beginning", "max_tokens": 900, "ignore_eos": true,
                    "stream": true, "seed": i, "temperature": 0.0,
                });
                let Ok(response) = ureq::post(&url).send_json(&body) else {
                    return;
                };
                let mut lines = BufReader::new(response.into_body().into_reader()).lines();
                let mut told = false;
                while let Some(Ok(line)) = lines.next() {
                    if !told && line.starts_with("data:") {
                        told = true;
                        let _ = started.send(());
                    }
                }
            })
        })
        .collect();
    for _ in 0..STREAMS {
        first_chunks
            .recv_timeout(Duration::from_secs(120))
            .expect("every stream started");
    }
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    // The kill left the streams' holds open ...
    assert!(
        operator_pending(dir.path()) > 0,
        "the streams ended before the kill; nothing was held to test"
    );
    // ... and the next start releases them, long before their TTL.
    let node = RunningNode::start(dir.path(), &["node"], &[]);
    let operator = node.get("/ledger/accounts/operator");
    assert_eq!(operator["pending"], 0, "{operator}");
    drop(node);
    assert_eq!(operator_pending(dir.path()), 0);
}

#[test]
fn json_logs_carry_each_requests_id() {
    let dir = tempfile::tempdir().unwrap();
    init_random(dir.path());
    let node = RunningNode::start(
        dir.path(),
        &["--log-format", "json", "node"],
        &[("RUST_LOG", "info,blyan_api=debug")],
    );
    let response = ureq::get(format!("{}/v1/models", node.url))
        .header("x-request-id", "test-req-17")
        .call()
        .unwrap();
    assert_eq!(
        response.headers().get("x-request-id").unwrap(),
        "test-req-17"
    );
    // Without one, the node makes one up and says which.
    let response = ureq::get(format!("{}/health/live", node.url))
        .call()
        .unwrap();
    let made = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(made.len(), 16, "{made}");
    let (success, _) = node.terminate();
    assert!(success);
    let text = std::fs::read_to_string(RunningNode::stderr_log(dir.path())).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let answered = |id: &str| {
        lines.iter().any(|l| {
            l["span"]["id"] == id
                && l["fields"]["message"] == "answered"
                && l["fields"]["status"] == 200
        })
    };
    assert!(answered("test-req-17"), "{text}");
    assert!(answered(&made), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "serving" && l["level"] == "INFO"),
        "{text}"
    );
}
