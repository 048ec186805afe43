//! Three `blyan` processes on loopback: node 2 joins from node 1 and follows it; node 3 joins
//! from both while node 2 is killed with SIGKILL mid-sync; a verdict made on node 1 then
//! reaches node 3 and the restarted node 2.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

use common::{RunningNode, init_random};

fn blyan(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blyan"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `KEY@HOST:PORT` of a running node: its network key and its API address.
fn bootstrap(dir: &Path, node: &RunningNode) -> String {
    let id = ok_json(&blyan(dir, &["net", "id", "--json"]));
    let addr = node.url.strip_prefix("http://").unwrap();
    format!("{}@{addr}", id["key"].as_str().unwrap())
}

/// Polls `path` on `node` until it answers 200, for at most `limit`.
fn eventually_found(node: &RunningNode, path: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let found = ureq::get(format!("{}{path}", node.url))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if found {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn three_nodes_join_through_a_sigkill_and_follow_a_verdict() {
    let (d1, d2, d3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    init_random(d1.path());
    let n1 = RunningNode::start(d1.path(), &["up"], &[]);
    let network = n1.get("/node")["node"]["network"]
        .as_str()
        .unwrap()
        .to_owned();
    let b1 = bootstrap(d1.path(), &n1);

    // A data directory of another network is refused before anything is fetched.
    let other = tempfile::tempdir().unwrap();
    init_random(other.path());
    let wrong = blyan(
        other.path(),
        &["join", "--network", &network, "--bootstrap", &b1],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("[wrong_network]"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // Node 2 joins from node 1, then follows it.
    let j2 = ok_json(&blyan(
        d2.path(),
        &["join", "--network", &network, "--bootstrap", &b1, "--json"],
    ));
    // Everything node 1 holds now (its first ledger anchor may have come after the start).
    let total = n1.get("/chain/blocks")["total"].as_u64().unwrap();
    assert_eq!(j2["blocks"], total, "{j2}");
    let n2 = RunningNode::start(d2.path(), &["up", "--peer", &b1], &[]);
    let b2 = bootstrap(d2.path(), &n2);
    let k2 = &b2[..8];

    // Node 3 joins from both; node 2 is killed with SIGKILL once it has served some blocks.
    let mut join = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .arg("--data-dir")
        .arg(d3.path())
        .args([
            "join",
            "--network",
            &network,
            "--bootstrap",
            &b1,
            "--bootstrap",
            &b2,
            "--chunk-kib",
            "4",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut n2 = Some(n2);
    let mut killed_at = None;
    for line in BufReader::new(join.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let Some(rest) = line.strip_prefix("syncing: ") else {
            continue;
        };
        let stored: u64 = rest.split(' ').next().unwrap().parse().unwrap();
        let from_2: u64 = rest
            .split(' ')
            .find_map(|w| w.strip_prefix(&format!("{k2}=")))
            .map_or(0, |n| n.parse().unwrap());
        if n2.is_some() && from_2 > 0 && stored < total {
            let mut node = n2.take().unwrap();
            node.child.kill().unwrap();
            node.child.wait().unwrap();
            killed_at = Some(stored);
        }
    }
    let out = join.wait_with_output().unwrap();
    let report = ok_json(&out);
    assert!(
        killed_at.is_some(),
        "node 2 was never killed mid-sync: {report}"
    );
    assert_eq!(report["blocks"], total, "{report}");
    let served: Vec<u64> = report["snapshot"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["blocks_from"].as_u64().unwrap())
        .collect();
    assert!(
        served.iter().all(|n| *n > 0),
        "both sources served: {report}"
    );
    assert_eq!(served.iter().sum::<u64>(), total);
    let verify = blyan(d3.path(), &["chain", "verify", "--full"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // A candidate trained on node 3's copy of the chain, judged by node 1: the verdict reaches
    // node 3 and node 2, restarted after its SIGKILL, by following node 1.
    let data = d3.path().join("data.txt");
    let text: String = (0..40)
        .map(|i| format!("And the {i}th day the waters rose over the land of the east.\n"))
        .collect();
    std::fs::write(&data, text).unwrap();
    let cand = d3.path().join("cand.safetensors");
    ok_json(&blyan(
        d3.path(),
        &[
            "train",
            "expert",
            "--expert",
            "1.3",
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "32",
            "--out",
            cand.to_str().unwrap(),
            "--json",
        ],
    ));
    let n3 = RunningNode::start(d3.path(), &["up", "--peer", &b1], &[]);
    let n2 = RunningNode::start(d2.path(), &["up", "--peer", &b1], &[]);
    let submitted = blyan(
        d3.path(),
        &[
            "submit",
            "--node",
            &n1.url,
            "--candidate",
            cand.to_str().unwrap(),
            "--json",
        ],
    );
    let verdict: Value = serde_json::from_slice(&submitted.stdout).unwrap_or_else(|e| {
        panic!(
            "submit printed no JSON ({e}): {}",
            String::from_utf8_lossy(&submitted.stderr)
        )
    });
    let proof = verdict["proof"]
        .as_str()
        .unwrap_or_else(|| panic!("no verdict: {verdict}"))
        .to_owned();
    for (name, node) in [("node 3", &n3), ("node 2", &n2)] {
        assert!(
            eventually_found(
                node,
                &format!("/chain/blocks/{proof}"),
                Duration::from_secs(60)
            ),
            "the verdict never reached {name}"
        );
    }
    // Each follower reports its peer and holds node 1's heads.
    for node in [&n2, &n3] {
        // The Agent Checker probes on its own timer: wait for a round after the first report.
        let start = Instant::now();
        let net = loop {
            let health = node.get("/health");
            let net = health["components"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "network")
                .cloned()
                .unwrap_or(Value::Null);
            let present = net["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("1 of 1 peers present"));
            if present || start.elapsed() > Duration::from_secs(90) {
                break net;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(
            net["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("1 of 1 peers present"),
            "{net}"
        );
        // The peer table: node 1, by key and API address, which served the verdict at least
        // (the engine reports once a second: wait for a report after the import).
        let (k1, a1) = b1.split_once('@').unwrap();
        let start = Instant::now();
        let peers = loop {
            let peers = node.get("/net/peers");
            let served = peers["peers"][0]["blocks_from"].as_u64().unwrap_or(0);
            if served >= 1 || start.elapsed() > Duration::from_secs(10) {
                break peers;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let p1 = &peers["peers"][0];
        assert_eq!(p1["key"], k1, "{peers}");
        assert_eq!(p1["api"], a1, "{peers}");
        assert!(p1["blocks_from"].as_u64().unwrap() >= 1, "{peers}");
        assert_eq!(peers["summary"]["expected"], 1, "{peers}");
        let metrics = ureq::get(format!("{}/metrics", node.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        assert!(
            metrics.contains("blyan_net_peers{state=\"present\"} 1"),
            "{metrics}"
        );
    }
    // `blyan net peers` reads the same table.
    let cli = ok_json(&blyan(
        d3.path(),
        &["net", "peers", "--url", &n3.url, "--json"],
    ));
    assert_eq!(cli["peers"][0]["key"], b1.split_once('@').unwrap().0);
    // Followers write no block of their own: submissions to them are refused.
    let refused = blyan(
        d3.path(),
        &[
            "submit",
            "--node",
            &n3.url,
            "--candidate",
            cand.to_str().unwrap(),
            "--json",
        ],
    );
    let refusal: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(refusal["reason"], "not_admitted", "{refusal}");
}

/// A free loopback port (bound and released; the node binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The rows of `node`'s peer table over transport `transport`.
fn peer_rows(node: &RunningNode, transport: &str) -> Vec<Value> {
    node.get("/net/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["transport"] == transport)
        .cloned()
        .collect()
}

fn admit_via(dir: &Path, url: &str, key: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "net", "admit", key, "--role", "host", "--url", url, "--json",
    ];
    args.extend_from_slice(extra);
    blyan(dir, &args)
}

#[test]
fn admitted_nodes_push_blocks_to_each_other_over_p2p() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init_random(d1.path());
    let p1 = format!("127.0.0.1:{}", free_port());
    let n1 = RunningNode::start(d1.path(), &["up", "--p2p-listen", &p1], &[]);
    let network = n1.get("/node")["node"]["network"]
        .as_str()
        .unwrap()
        .to_owned();
    // Node 1 is the operator: it admitted its own key as a validator, and says where it
    // listens.
    let id1 = n1.get("/net/id");
    assert_eq!(id1["p2p_listen"], p1.as_str(), "{id1}");
    let k1 = id1["key"].as_str().unwrap().to_owned();
    let registry = n1.get("/net/registry");
    assert_eq!(registry["members"][0]["key"], k1.as_str(), "{registry}");
    assert_eq!(
        registry["members"][0]["roles"][0], "validator",
        "{registry}"
    );
    let b1 = format!("{k1}@{}", n1.url.strip_prefix("http://").unwrap());

    // Node 2 joins (anyone may), is refused as an admitter, and is admitted by node 1.
    ok_json(&blyan(
        d2.path(),
        &["join", "--network", &network, "--bootstrap", &b1, "--json"],
    ));
    let p2 = format!("127.0.0.1:{}", free_port());
    let id2 = ok_json(&blyan(
        d2.path(),
        &["net", "id", "--json", "--p2p-listen", &p2],
    ));
    assert_eq!(id2["p2p_listen"], p2.as_str(), "{id2}");
    let k2 = id2["key"].as_str().unwrap().to_owned();
    let offline = blyan(d2.path(), &["net", "admit", &k2, "--role", "host"]);
    assert!(!offline.status.success());
    assert!(
        String::from_utf8_lossy(&offline.stderr).contains("[not_admitted]"),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    let bad_key = admit_via(d2.path(), &n1.url, "abcd", &[]);
    assert!(!bad_key.status.success());
    let admitted = ok_json(&admit_via(d2.path(), &n1.url, &k2, &[]));
    assert_eq!(admitted["key"], k2.as_str(), "{admitted}");
    let admission = admitted["block"].as_str().unwrap().to_owned();

    // Node 2 follows node 1 and joins the p2p network once it holds its admission.
    let n2 = RunningNode::start(d2.path(), &["up", "--peer", &b1, "--p2p-listen", &p2], &[]);
    assert!(eventually_found(
        &n2,
        &format!("/chain/blocks/{admission}"),
        Duration::from_secs(30)
    ));
    // A follower's API refuses admissions: only the operator writes blocks.
    let refused = admit_via(d1.path(), &n2.url, &k2, &["--remove"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not_admitted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let start = Instant::now();
    let connected = loop {
        let rows = peer_rows(&n2, "p2p");
        let up = rows
            .iter()
            .any(|p| p["key"] == k1.as_str() && p["silent_for_ms"].as_u64().is_some());
        if up || start.elapsed() > Duration::from_secs(60) {
            break up;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        connected,
        "node 2 never heard node 1 over p2p: {}",
        n2.get("/net/peers")
    );

    // Blocks node 1 writes now reach node 2 pushed over p2p (HTTP polls only every 2 s).
    for i in 0..5u8 {
        let account = blyan_primitives::SigningKey::from_slice(&[9; 32]).unwrap();
        let other = blyan_net::Identity::new(&[i + 1; 32], &account)
            .public_key()
            .to_string();
        let a = ok_json(&admit_via(d1.path(), &n1.url, &other, &[]));
        let block = a["block"].as_str().unwrap();
        assert!(eventually_found(
            &n2,
            &format!("/chain/blocks/{block}"),
            Duration::from_secs(30)
        ));
    }
    // The engines report once a second: wait for the report after those imports.
    let start = Instant::now();
    loop {
        let from_p2p: u64 = peer_rows(&n2, "p2p")
            .iter()
            .map(|p| p["blocks_from"].as_u64().unwrap_or(0))
            .sum();
        if from_p2p >= 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no block came over p2p: node 2 {}\nnode 1 {}",
            n2.get("/net/peers"),
            n1.get("/net/peers")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The peer table names node 1's account, proven by its key's binding.
    let http = peer_rows(&n2, "http");
    assert_eq!(http[0]["address"], id1["address"], "{http:?}");
    // The registry as node 2 sees it: node 1, node 2 and the five keys.
    let start = Instant::now();
    loop {
        let members = n2.get("/net/registry")["members"].as_array().unwrap().len();
        if members == 7 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{members} members"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A removal is a block like any other; `net registry` reads it from node 1.
    ok_json(&admit_via(d2.path(), &n1.url, &k2, &["--remove"]));
    let reg = ok_json(&blyan(
        d1.path(),
        &["net", "registry", "--url", &n1.url, "--json"],
    ));
    assert!(
        reg["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["key"] != k2.as_str()),
        "{reg}"
    );
}
