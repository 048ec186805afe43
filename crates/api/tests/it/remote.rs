//! Experts served across machines, in one process over real loopback HTTP: a node that
//! computes only layers 0 and 1 sends its other experts' rows to a host that computes them,
//! and its greedy text equals a single node's, bit for bit; when the host is gone, the node
//! computes those experts itself and the text is still the same.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use blyan_node::{ConfigLayer, Node, NodeConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::network_dir;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// `n` copies of one fresh network's data directory (chain and keys; no ledger yet).
fn copies(n: usize) -> Vec<tempfile::TempDir> {
    let base = network_dir();
    (0..n)
        .map(|_| {
            let d = tempfile::tempdir().expect("tempdir");
            copy_dir(base.path(), d.path());
            d
        })
        .collect()
}

/// Waits until `node` has heard what one of its hosts computes.
async fn heard_from_a_host(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node
        .hosted_report()
        .hosts
        .iter()
        .all(|h| h.blocks.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "the node never heard from the host"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open(dir: &Path, layer: ConfigLayer) -> Arc<Node> {
    let mut config = NodeConfig {
        max_batch: 8,
        ..NodeConfig::default()
    };
    config.apply(&layer).expect("config");
    Arc::new(Node::open(dir, config, blyan_node::unix_ms()).expect("node"))
}

/// A node computing only layer 0, asking `peers` (API addresses) for the rest and
/// spot-checking `check_ppm` parts per million of their answers.
fn layer0(dir: &Path, peers: &[std::net::SocketAddr], check_ppm: u32) -> Arc<Node> {
    open(
        dir,
        ConfigLayer {
            experts: Some("0.*".into()),
            peers: Some(peers.iter().map(|a| format!("k@{a}")).collect()),
            expert_check_ppm: Some(check_ppm),
            ..ConfigLayer::default()
        },
    )
}

async fn complete(node: &Arc<Node>, prompt: &str) -> String {
    complete_reply(node, prompt, false).await["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned()
}

async fn complete_reply(node: &Arc<Node>, prompt: &str, local_only: bool) -> Value {
    let (status, reply) = ask_completion(node, prompt, local_only).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply
}

async fn ask_completion(node: &Arc<Node>, prompt: &str, local_only: bool) -> (StatusCode, Value) {
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0.0,
                      "ignore_eos": true, "blyan_local_only": local_only});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = blyan_api::router(node.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

const PROMPTS: [&str; 4] = [
    "In the beginning",
    "And God said",
    "The LORD is my shepherd",
    "Blessed are",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn experts_computed_by_a_host_give_the_single_node_text_even_when_it_dies() {
    let dirs = copies(3);

    // The host computes every expert; it serves the API on a loopback port.
    let host = open(dirs[0].path(), ConfigLayer::default());
    let (host_addr, stop) = serve(&host).await;

    // The node computes layers 0 and 1 and asks its peer for the rest.
    let node = open(
        dirs[1].path(),
        ConfigLayer {
            experts: Some("0.*,1.*".into()),
            peers: Some(vec![format!("anykey@{host_addr}")]),
            ..ConfigLayer::default()
        },
    );
    let single = open(dirs[2].path(), ConfigLayer::default());

    heard_from_a_host(&node).await;
    let report = node.hosted_report();
    assert_eq!(report.hosted, "0.*,1.*");
    assert!(report.experts.iter().all(|e| e.id.layer < 2), "{report:?}");
    assert_eq!(report.hosts[0].account, host.hosted_account());

    // Greedy texts, one at a time and four at once (batched): the same as one node's.
    let mut expected = Vec::new();
    for p in PROMPTS {
        expected.push(complete(&single, p).await);
    }
    let alone = complete_reply(&node, PROMPTS[0], false).await;
    assert_eq!(alone["choices"][0]["text"], expected[0].as_str());
    // The reply says where its hidden states went: the host, for layers 2 and 3.
    let host_key = host_addr.to_string();
    assert_eq!(
        alone["blyan"]["remote_hosts"][&host_key],
        json!([2, 3]),
        "{alone}"
    );
    assert!(alone["blyan"]["remote_rows"].as_u64().unwrap_or(0) > 0);
    let here = complete_reply(&single, PROMPTS[0], false).await;
    assert_eq!(
        here["blyan"],
        json!({"remote_rows": 0, "remote_hosts": {}, "missing_experts": {}})
    );
    // A request that demands local-only computation sends nothing, even from a node that
    // has a host; its text is the same.
    let calls = host.hosted_report().computed_for_peers;
    let private = complete_reply(&node, PROMPTS[0], true).await;
    assert_eq!(
        private["blyan"],
        json!({"remote_rows": 0, "remote_hosts": {}, "missing_experts": {}}),
        "{private}"
    );
    assert_eq!(private["choices"][0]["text"], expected[0].as_str());
    assert_eq!(host.hosted_report().computed_for_peers, calls);
    let together = futures_util::future::join_all(PROMPTS.iter().map(|p| complete(&node, p))).await;
    assert_eq!(together, expected);
    let report = node.hosted_report();
    assert!(report.remote_calls > 0, "{report:?}");
    assert_eq!(report.fallbacks, 0, "{report:?}");
    assert!(host.hosted_report().computed_for_peers >= report.remote_calls);

    // The host stops: the node computes those experts from their blocks; same text.
    stop_serving(stop, host_addr).await;
    drop(host);
    let after = complete(&node, PROMPTS[1]).await;
    assert_eq!(after, expected[1]);
    assert!(node.hosted_report().fallbacks > 0);
}

/// Stops the server at `addr` and waits until its port refuses connections.
async fn stop_serving(stop: tokio::sync::oneshot::Sender<()>, addr: std::net::SocketAddr) {
    let _ = stop.send(());
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the host never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves `node`'s API on a loopback port until the returned sender is used or dropped.
async fn serve(node: &Arc<Node>) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(blyan_api::serve(node.clone(), listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_that_lies_is_caught_banned_and_kept_as_evidence() {
    let dirs = copies(3);
    let liar = open(dirs[0].path(), ConfigLayer::default());
    liar.inject_lying_expert_answers();
    let (liar_addr, _stop_liar) = serve(&liar).await;
    // Every answer is checked here, so the first lie is caught.
    let node = layer0(dirs[1].path(), &[liar_addr], 1_000_000);
    let single = open(dirs[2].path(), ConfigLayer::default());
    heard_from_a_host(&node).await;
    // The lie never reaches the text: the checked call is computed here.
    assert_eq!(
        complete(&node, PROMPTS[2]).await,
        complete(&single, PROMPTS[2]).await
    );
    let report = node.hosted_report();
    let host = &report.hosts[0];
    assert!(
        host.banned
            .as_deref()
            .is_some_and(|r| r.contains("wrong output")),
        "{report:?}"
    );
    // The evidence: the liar's signed statement of its answer, and the right output's hash.
    let evidence_dir = dirs[1].path().join("node").join("evidence");
    let files: Vec<_> = std::fs::read_dir(&evidence_dir)
        .expect("evidence kept")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(!files.is_empty());
    let evidence: Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("read")).expect("json");
    let statement: blyan_node::hosting::AnswerStatement =
        serde_json::from_value(evidence["answer"].clone()).expect("a signed statement");
    assert_eq!(statement.signer, liar.hosted_account());
    assert_eq!(statement.expert.to_string(), evidence["expert"]);
    // Signed by the liar's network key (one signature over its batch), which its account
    // bound to itself; altered in any field, the statement no longer holds.
    assert!(statement.verify(), "{statement:?}");
    let mut altered = statement.clone();
    altered.output_hash = blyan_primitives::Hash::of(b"another output");
    assert!(!altered.verify());
    let mut altered = statement.clone();
    altered.index = (statement.index + 1) % statement.answers.len().max(2);
    assert!(!altered.verify());
    // The evidence is whole: its rows are the ones the liar signed for, and computing the
    // expert on them gives the expected output, not the liar's.
    let input = hex::decode(evidence["input"].as_str().expect("input")).expect("hex");
    assert_eq!(blyan_primitives::Hash::of(&input), statement.input_hash);
    let (right, _) = single
        .compute_for_peer(statement.expert, statement.block, "recheck", &input, None)
        .expect("the single node computes it");
    let right_hash = blyan_primitives::Hash::of(&right).to_string();
    assert_eq!(evidence["expected_output_hash"], right_hash);
    assert_ne!(statement.output_hash.to_string(), right_hash);
    // Banned: no more calls go to it; the node computes those experts itself.
    let fallbacks = report.fallbacks;
    assert_eq!(
        complete(&node, PROMPTS[3]).await,
        complete(&single, PROMPTS[3]).await
    );
    assert!(node.hosted_report().fallbacks > fallbacks);
}

/// Gives the node of data directory `dir` a key of its own (a host is not the operator).
fn own_key(dir: &Path, seed: u8) -> blyan_primitives::Address {
    let keystore = dir.join(blyan_ledger::KEYSTORE_DIR);
    std::fs::remove_file(keystore.join("node")).expect("forget the copied node key");
    blyan_ledger::Keystore::new(keystore, "")
        .set_node_key(&blyan_primitives::SigningKey::from_slice(&[seed; 32]).expect("key"))
        .expect("node key")
}

/// Overwrites the first bytes of the payloads of experts `experts` of `layer` in `dir`'s
/// chain.
fn corrupt(dir: &Path, layer: u16, experts: std::ops::Range<u16>) -> usize {
    let store = blyan_chain::Store::open(dir.join("chain")).expect("store");
    let mut corrupted = 0;
    for e in experts {
        let id = blyan_primitives::ExpertId::new(layer, e);
        let Some(head) = store.expert_head(id).expect("head") else {
            break;
        };
        let header = store.header(&head).expect("header").expect("present");
        let path = store.payload_path(&header.payload_hash);
        let mut bytes = std::fs::read(&path).expect("payload");
        for b in bytes.iter_mut().take(64) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).expect("write");
        corrupted += 1;
    }
    corrupted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_are_paid_for_what_they_computed_and_a_lost_expert_is_said_out_loud() {
    let dirs = copies(2);
    let host_account = own_key(dirs[0].path(), 0x42);
    let host = open(dirs[0].path(), ConfigLayer::default());
    assert_eq!(host.hosted_account(), host_account);
    let (host_addr, stop) = serve(&host).await;
    // The node's own copies of experts 3.0 to 3.3 are unreadable: only the host can compute
    // them. No spot checks, which would read them here.
    assert_eq!(corrupt(dirs[1].path(), 3, 0..4), 4);
    let node = layer0(dirs[1].path(), &[host_addr], 0);
    heard_from_a_host(&node).await;
    // The host has no account in the node's ledger before it is first paid.
    let history = |node: &Node| -> Vec<blyan_ledger::PostingRecord> {
        node.history(host_account, None, 100).unwrap_or_default()
    };
    assert!(node.balance(host_account).is_err());

    // A chat computed partly by the host: the host's account is paid its share of the fee,
    // as host_share postings, in the serving node's ledger.
    let reply = complete_reply(&node, PROMPTS[0], false).await;
    assert!(
        reply["blyan"]["remote_rows"].as_u64().unwrap_or(0) > 0,
        "{reply}"
    );
    assert_eq!(reply["blyan"]["missing_experts"], json!({}), "{reply}");
    let paid = history(&node);
    assert!(!paid.is_empty());
    assert!(
        paid.iter()
            .all(|p| p.kind == blyan_ledger::PostingKind::HostShare
                && p.credit == host_account
                && !p.amount.is_zero()),
        "{paid:?}"
    );
    let earned = node.balance(host_account).expect("balance").available;

    // The host stops. The other experts are computed here from their blocks, but 3.0 to 3.3
    // are unreadable here: they are left out of their tokens' mixtures (the router's weights
    // renormalised over the rest) and the reply says which, and for how many tokens.
    // Nothing is paid to the host.
    stop_serving(stop, host_addr).await;
    drop(host);
    let degraded = complete_reply(&node, PROMPTS[2], false).await;
    assert_eq!(degraded["blyan"]["remote_rows"], 0, "{degraded}");
    let missing = degraded["blyan"]["missing_experts"]
        .as_object()
        .expect("an object");
    assert!(!missing.is_empty(), "{degraded}");
    let tokens = degraded["usage"]["total_tokens"].as_u64().expect("usage");
    for (expert, count) in missing {
        assert!(
            ["3.0", "3.1", "3.2", "3.3"].contains(&expert.as_str()),
            "{degraded}"
        );
        let count = count.as_u64().expect("a count");
        assert!(count > 0 && count <= tokens, "{degraded}");
    }
    assert_eq!(history(&node).len(), paid.len());
    assert_eq!(
        node.balance(host_account).expect("balance").available,
        earned
    );
    // The same prompt local-only needs the same unreadable experts, with no peer left to
    // fetch them from: it fails rather than go on without them or send its hidden states
    // away, and pays no one.
    let (status, refused) = ask_completion(&node, PROMPTS[2], true).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{refused}");
    assert_eq!(refused["error"]["code"], "block_corrupt");
    assert_eq!(history(&node).len(), paid.len());
    let metrics = node.render_metrics().expect("metrics");
    for (expert, count) in missing {
        let line = format!("blyan_expert_missing_tokens_total{{expert=\"{expert}\"}} {count}");
        assert!(metrics.contains(&line), "{line} not in the metrics");
    }
}

/// The network key of the node in data directory `dir` (made now if it has none yet).
fn net_key(dir: &Path) -> [u8; 32] {
    let seed = blyan_ledger::Keystore::new(dir.join(blyan_ledger::KEYSTORE_DIR), "")
        .network_secret_or_new()
        .expect("network key");
    ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes()
}

/// Appends to `dir`'s chain the operator's admissions of `keys` with their roles.
fn admit(dir: &Path, keys: &[([u8; 32], blyan_chain::Role)]) {
    let store = blyan_chain::Store::open(dir.join("chain")).expect("store");
    for (i, (key, role)) in keys.iter().enumerate() {
        let block = blyan_node::admission_block(
            &store,
            &crate::test_key(),
            *key,
            *role,
            true,
            1_700_000_000_000 + i as u64,
        )
        .expect("admission");
        store.append(block).expect("append");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_network_that_admits_members_only_admitted_hosts_answer_and_only_members_ask() {
    // A host admitted to host, a member admitted as a validator only, a rogue host and a
    // stranger, neither admitted.
    let dirs = copies(4);
    let [host_dir, member_dir, rogue_dir, stranger_dir] =
        [0, 1, 2, 3].map(|i| dirs[i].path().to_path_buf());
    let (host_key, member_key) = (net_key(&host_dir), net_key(&member_dir));
    for dir in [&host_dir, &member_dir, &rogue_dir, &stranger_dir] {
        admit(
            dir,
            &[
                (host_key, blyan_chain::Role::Host),
                (member_key, blyan_chain::Role::Validator),
            ],
        );
    }
    let host = open(&host_dir, ConfigLayer::default());
    let (host_addr, _stop_host) = serve(&host).await;
    let rogue = open(&rogue_dir, ConfigLayer::default());
    let (rogue_addr, _stop_rogue) = serve(&rogue).await;
    let member = layer0(&member_dir, &[host_addr, rogue_addr], 0);
    // The member hears both hosts, and only the admitted one may be called.
    let deadline = Instant::now() + Duration::from_secs(30);
    while member
        .hosted_report()
        .hosts
        .iter()
        .filter(|h| !h.blocks.is_empty())
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the member never heard both hosts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admitted: Vec<(String, bool)> = member
        .hosted_report()
        .hosts
        .iter()
        .map(|h| (h.api.clone(), h.admitted))
        .collect();
    assert!(
        admitted.contains(&(host_addr.to_string(), true))
            && admitted.contains(&(rogue_addr.to_string(), false)),
        "{admitted:?}"
    );
    let reply = complete_reply(&member, PROMPTS[0], false).await;
    let hosts: Vec<&String> = reply["blyan"]["remote_hosts"]
        .as_object()
        .expect("hosts")
        .keys()
        .collect();
    assert_eq!(hosts, [&host_addr.to_string()], "{reply}");
    assert!(reply["blyan"]["remote_rows"].as_u64().unwrap_or(0) > 0);
    assert_eq!(rogue.hosted_report().computed_for_peers, 0);

    // The stranger's calls are refused by the host (it is no member): it computes those
    // experts itself, and its text is the member's.
    let stranger = open(
        &stranger_dir,
        ConfigLayer {
            experts: Some("0.*".into()),
            peers: Some(vec![format!("k@{host_addr}")]),
            ..ConfigLayer::default()
        },
    );
    heard_from_a_host(&stranger).await;
    let computed = host.hosted_report().computed_for_peers;
    let alone = complete_reply(&stranger, PROMPTS[0], false).await;
    assert_eq!(alone["choices"][0]["text"], reply["choices"][0]["text"]);
    assert_eq!(alone["blyan"]["remote_rows"], 0, "{alone}");
    assert_eq!(host.hosted_report().computed_for_peers, computed);
    assert!(stranger.hosted_report().fallbacks > 0);

    // A call without the caller's proof, with a forged one, or from a key that is no member
    // is refused with a stable code.
    let expert = host.hosted_report().experts[8].clone();
    let url = format!(
        "http://{host_addr}/experts/{}/compute?block={}&request=r1",
        expert.id, expert.block
    );
    let rows = one_row(host.info().d_model);
    let now = blyan_node::unix_ms().to_string();
    for headers in [
        vec![],
        vec![
            ("x-blyan-caller", hex::encode(member_key)),
            ("x-blyan-caller-time", now.clone()),
            ("x-blyan-caller-signature", "ab".repeat(64)),
        ],
        vec![
            ("x-blyan-caller", hex::encode(net_key(&stranger_dir))),
            ("x-blyan-caller-time", now.clone()),
            ("x-blyan-caller-signature", "ab".repeat(64)),
        ],
        vec![
            ("x-blyan-caller", hex::encode(member_key)),
            (
                "x-blyan-caller-time",
                (blyan_node::unix_ms() - 600_000).to_string(),
            ),
            ("x-blyan-caller-signature", "ab".repeat(64)),
        ],
        vec![
            ("x-blyan-caller", "not hex".to_owned()),
            ("x-blyan-caller-time", now.clone()),
            ("x-blyan-caller-signature", "ab".repeat(64)),
        ],
    ] {
        let (status, answer) = fetch(&url, Some(rows.clone()), &headers).await;
        let answer: Value = serde_json::from_slice(&answer).expect("json");
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], "caller_not_admitted", "{answer}");
    }
    assert_eq!(host.hosted_report().computed_for_peers, computed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_expert_block_is_fetched_from_a_peer_and_the_text_is_unchanged() {
    let dirs = copies(3);
    // A peer that computes only layer 0 for others, but holds the whole chain.
    let archive = open(
        dirs[0].path(),
        ConfigLayer {
            experts: Some("0.*".into()),
            ..ConfigLayer::default()
        },
    );
    let (archive_addr, _stop) = serve(&archive).await;
    let single = open(dirs[2].path(), ConfigLayer::default());
    // The node's copies of layer 3's experts are corrupt, and no host computes layers 1-3.
    assert_eq!(corrupt(dirs[1].path(), 3, 0..8), 8);
    let node = layer0(dirs[1].path(), &[archive_addr], 0);
    heard_from_a_host(&node).await;
    // A local-only request repairs the blocks too (fetching a block sends nothing of it).
    for (prompt, local_only) in [(PROMPTS[2], true), (PROMPTS[3], false)] {
        let before = node.hosted_report().repaired;
        let reply = complete_reply(&node, prompt, local_only).await;
        assert_eq!(reply["blyan"]["missing_experts"], json!({}), "{reply}");
        assert_eq!(reply["blyan"]["remote_rows"], 0, "{reply}");
        assert_eq!(reply["blyan"]["remote_hosts"], json!({}), "{reply}");
        assert_eq!(
            reply["choices"][0]["text"],
            complete(&single, prompt).await.as_str()
        );
        if local_only {
            assert!(node.hosted_report().repaired > before);
        }
    }
    let repaired = node.hosted_report().repaired;
    // Exactly the blocks it repaired are sound in the node's store now: those of the
    // corrupt experts the prompt's tokens were routed to.
    drop(node);
    let store = blyan_chain::Store::open(dirs[1].path().join("chain")).expect("store");
    let sound = (0..8)
        .filter(|&e| {
            let head = store
                .expert_head(blyan_primitives::ExpertId::new(3, e))
                .expect("head")
                .expect("expert");
            store.payload_verified(&head).is_ok()
        })
        .count();
    assert_eq!(sound as u64, repaired);
    // The payload route gives checked bytes, and 404 for a block the node does not hold.
    let some = archive.hosted_report().experts[0].block;
    let good = fetch(
        &format!("http://{archive_addr}/chain/blocks/{some}/payload"),
        None,
        &[],
    )
    .await;
    assert_eq!(good.0, 200);
    assert_eq!(blyan_primitives::Hash::of(&good.1), {
        let store = archive.store();
        store
            .header(&some)
            .expect("header")
            .expect("held")
            .payload_hash
    });
    let unknown = blyan_primitives::Hash::of(b"no such block");
    let missing = fetch(
        &format!("http://{archive_addr}/chain/blocks/{unknown}/payload"),
        None,
        &[],
    )
    .await;
    assert_eq!(missing.0, 404);
}

/// One row of `d` values in the wire form of `ExpertRows`.
fn one_row(d: usize) -> Vec<u8> {
    let mut rows = Vec::new();
    rows.extend_from_slice(&1u32.to_le_bytes());
    rows.extend_from_slice(&(d as u32).to_le_bytes());
    for _ in 0..d / 32 {
        rows.extend_from_slice(&0.01f32.to_le_bytes());
        rows.extend_from_slice(&[1u8; 32]);
    }
    rows
}

/// Calls of experts `a` and `b` on the same `rows`.
fn both<'a>(
    a: &blyan_node::hosting::HostedExpert,
    b: &blyan_node::hosting::HostedExpert,
    rows: &'a [u8],
) -> [blyan_node::hosting::BatchItem<'a>; 2] {
    [a, b].map(|e| blyan_node::hosting::BatchItem {
        expert: e.id,
        block: e.block,
        rows,
    })
}

/// Checks `host`'s `answer` to batch `request` of `items` (`rows` rows each): per call its
/// length and outputs, what a single call gives; then one signature by `key` over every
/// call's answer digest. Returns the digests and the signature.
fn signed_answers(
    host: &Node,
    key: &ed25519_dalek::VerifyingKey,
    request: &str,
    items: &[blyan_node::hosting::BatchItem<'_>],
    answer: &[u8],
    rows: usize,
) -> (Vec<blyan_primitives::Hash>, ed25519_dalek::Signature) {
    let d = host.info().d_model;
    let mut at = 0;
    let mut digests = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let len = u32::from_le_bytes(answer[at..at + 4].try_into().expect("4")) as usize;
        assert_eq!(len, rows * d * 4);
        let output = &answer[at + 4..at + 4 + len];
        let (single, _) = host
            .compute_for_peer(item.expert, item.block, "one", item.rows, None)
            .expect("one call");
        assert_eq!(output, &single[..]);
        digests.push(blyan_node::hosting::answer_digest(
            &format!("{request}-{i}"),
            &item.block,
            &blyan_primitives::Hash::of(item.rows),
            &blyan_primitives::Hash::of(output),
        ));
        at += 4 + len;
    }
    let signature: [u8; 64] = answer[at..].try_into().expect("64 bytes of signature last");
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    key.verify_strict(
        blyan_node::hosting::batch_answer_digest(request, &digests).as_bytes(),
        &signature,
    )
    .expect("one signature over the batch");
    (digests, signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_calls_is_answered_under_one_signature_and_a_malformed_one_not_at_all() {
    let dirs = copies(1);
    let host = open(dirs[0].path(), ConfigLayer::default());
    let (addr, _stop) = serve(&host).await;
    let report = host.hosted_report();
    let d = host.info().d_model;
    let (a, b) = (report.experts[8].clone(), report.experts[17].clone());
    let rows = one_row(d);
    let items = both(&a, &b, &rows);
    let body = blyan_node::hosting::encode_batch(&items);
    let url = |request: &str| format!("http://{addr}/experts/compute?request={request}");
    let (status, answer) = fetch(&url("b1"), Some(body.clone()), &[]).await;
    assert_eq!(status, 200);
    // Per call its length and d outputs, what a single call gives; then one signature of
    // the host's over every call's answer digest (request ids `b1-0`, `b1-1`).
    let key = ed25519_dalek::VerifyingKey::from_bytes(
        &hex::decode(report.net_key.as_deref().expect("a network key"))
            .expect("hex")
            .try_into()
            .expect("32 bytes"),
    )
    .expect("key");
    let (mut digests, signature) = signed_answers(&host, &key, "b1", &items, &answer, 1);
    // It covers each call: the same signature does not hold for another batch of answers.
    digests.swap(0, 1);
    let swapped = blyan_node::hosting::batch_answer_digest("b1", &digests);
    assert!(key.verify_strict(swapped.as_bytes(), &signature).is_err());
    let other = blyan_node::hosting::batch_answer_digest("b9", &digests);
    assert!(key.verify_strict(other.as_bytes(), &signature).is_err());

    // That batch was computed on the request's task; one too large for it goes to the
    // blocking pool and is answered the same way: 64 rows for each of two experts.
    assert!(host.batch_is_small(&body));
    let wide_rows = 64usize;
    let mut many_rows = Vec::new();
    many_rows.extend_from_slice(&(wide_rows as u32).to_le_bytes());
    many_rows.extend_from_slice(&(d as u32).to_le_bytes());
    for _ in 0..wide_rows {
        many_rows.extend_from_slice(&rows[8..]);
    }
    let big_items = both(&a, &b, &many_rows);
    let big = blyan_node::hosting::encode_batch(&big_items);
    assert!(!host.batch_is_small(&big));
    // Nor is a malformed body or one of few rows but many bytes: both go to the blocking
    // pool, where they are refused.
    assert!(!host.batch_is_small(&big[..big.len() - 1]));
    let mut padded = rows.clone();
    padded.resize(blyan_node::hosting::SMALL_BATCH_BYTES, 0);
    let padded = blyan_node::hosting::encode_batch(&[blyan_node::hosting::BatchItem {
        expert: a.id,
        block: a.block,
        rows: &padded,
    }]);
    assert!(!host.batch_is_small(&padded));
    let (status, _) = fetch(&url("b4"), Some(padded), &[]).await;
    assert_eq!(status, 400);
    let (status, answer) = fetch(&url("b3"), Some(big), &[]).await;
    assert_eq!(status, 200);
    signed_answers(&host, &key, "b3", &big_items, &answer, wide_rows);

    // Malformed batches are refused before any work.
    let computed = host.hosted_report().computed_for_peers;
    let mut trailing = body.clone();
    trailing.push(0);
    let mut zero = body.clone();
    zero[..4].copy_from_slice(&0u32.to_le_bytes());
    let mut many = body.clone();
    many[..4].copy_from_slice(&65u32.to_le_bytes());
    let mut long_item = body.clone();
    long_item[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut narrow = one_row(d);
    narrow[4..8].copy_from_slice(&((d / 2) as u32).to_le_bytes());
    narrow.truncate(8 + d / 64 * 36);
    let narrow = blyan_node::hosting::encode_batch(&[blyan_node::hosting::BatchItem {
        expert: a.id,
        block: a.block,
        rows: &narrow,
    }]);
    for (what, bad) in [
        ("empty", Vec::new()),
        ("no calls", zero),
        ("too many calls", many),
        ("cut short", body[..body.len() - 1].to_vec()),
        ("bytes after the last call", trailing),
        ("a call longer than the body", long_item),
        ("rows of another width", narrow),
    ] {
        let (status, answer) = fetch(&url("b2"), Some(bad), &[]).await;
        assert_eq!(status, 400, "{what}: {}", String::from_utf8_lossy(&answer));
        let error: Value = serde_json::from_slice(&answer).expect("json");
        assert_eq!(error["error"]["code"], "invalid_parameter", "{what}");
    }
    let (status, _) = fetch(&url(&"r".repeat(61)), Some(body.clone()), &[]).await;
    assert_eq!(status, 400, "a request id too long for its calls' ids");
    assert_eq!(host.hosted_report().computed_for_peers, computed);
}

/// On a blocking thread, POSTs `body` (binary) to `url` with `headers`, or GETs `url`
/// without one: the status and the answer's bytes.
async fn fetch(url: &str, body: Option<Vec<u8>>, headers: &[(&str, String)]) -> (u16, Vec<u8>) {
    let url = url.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = match body {
            Some(body) => {
                let mut request = agent
                    .post(&url)
                    .header("content-type", "application/octet-stream");
                for (k, v) in &headers {
                    request = request.header(k, v);
                }
                request.send(&body[..]).expect("send")
            }
            None => agent.get(&url).call().expect("get"),
        };
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_vec().expect("body"))
    })
    .await
    .expect("join")
}
