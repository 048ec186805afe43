//! Experts served across four `blyan` processes on loopback: a node that computes only layer
//! 0 streams eight greedy completions whose other experts run on three hosts; one host is
//! killed with SIGKILL while they stream. Every stream completes without an error and every
//! text equals the one a single node computes alone.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod common;

use common::{RunningNode, init_random};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

const TOKENS: u32 = 160;

fn body(prompt: &str, stream: bool) -> Value {
    json!({"prompt": prompt, "max_tokens": TOKENS, "temperature": 0.0,
           "ignore_eos": true, "stream": stream})
}

/// A streamed completion's text, or the error it ended with. Tells `started` at its first
/// chunk.
fn stream(url: &str, prompt: &str, started: &mpsc::Sender<()>) -> Result<String, String> {
    let response = ureq::post(format!("{url}/v1/completions"))
        .send_json(body(prompt, true))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let mut told = false;
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            return Ok(text);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if chunk.get("error").is_some() {
            return Err(chunk.to_string());
        }
        if !told {
            told = true;
            let _ = started.send(());
        }
        text += chunk["choices"][0]["text"].as_str().unwrap_or("");
    }
    Err("the stream ended without [DONE]".into())
}

#[test]
fn four_processes_give_the_single_node_text_through_a_host_killed_mid_stream() {
    let base = tempfile::tempdir().unwrap();
    init_random(base.path());
    let dirs: Vec<_> = (0..4)
        .map(|_| {
            let d = tempfile::tempdir().unwrap();
            copy_dir(base.path(), d.path());
            d
        })
        .collect();
    // Layer 0 is the node's; every other expert has two hosts.
    let whole = RunningNode::start(dirs[0].path(), &["node"], &[]);
    let h12 = RunningNode::start(dirs[1].path(), &["node", "--experts", "1.*,2.*"], &[]);
    let h23 = RunningNode::start(dirs[2].path(), &["node", "--experts", "2.*,3.*"], &[]);
    let hosts: Vec<&str> = [&whole, &h12, &h23]
        .iter()
        .map(|n| n.url.strip_prefix("http://").unwrap())
        .collect();
    let mut hosts_flag = Vec::new();
    for h in &hosts {
        hosts_flag.extend(["--expert-host", h]);
    }
    let mut args = vec!["node", "--experts", "0.*"];
    args.extend(hosts_flag);
    let node = RunningNode::start(dirs[3].path(), &args, &[]);

    // `blyan net experts` shows who hosts what, once the heartbeats came in.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_blyan"))
            .args(["net", "experts", "--json", "--url", &node.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let known = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| !h["blocks"].as_array().unwrap().is_empty())
            .count();
        if known == 3 {
            break report;
        }
        assert!(Instant::now() < deadline, "hosts never heard: {report}");
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["hosted"], "0.*");
    let text = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .args(["net", "experts", "--url", &node.url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("computes 0.*"));

    // What one node computes alone.
    let prompts: Vec<String> = (0..8).map(|i| format!("In the beginning {i}")).collect();
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| {
            let mut r = ureq::post(format!("{}/v1/completions", whole.url))
                .send_json(body(p, false))
                .unwrap();
            let v: Value = r.body_mut().read_json().unwrap();
            v["choices"][0]["text"].as_str().unwrap().to_owned()
        })
        .collect();

    // Eight streams through the node; a host dies once they all run.
    let (started, first_chunks) = mpsc::channel();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (url, p, started) = (node.url.clone(), p.clone(), started.clone());
            thread::spawn(move || (stream(&url, &p, &started), Instant::now()))
        })
        .collect();
    for _ in 0..prompts.len() {
        first_chunks
            .recv_timeout(Duration::from_secs(120))
            .expect("every stream started");
    }
    let mut h12 = h12;
    h12.child.kill().unwrap();
    h12.child.wait().unwrap();
    let killed = Instant::now();
    let texts: Vec<String> = streams
        .into_iter()
        .map(|s| {
            let (text, ended) = s.join().unwrap();
            assert!(ended > killed, "a stream ended before the host was killed");
            text.expect("the stream completes without an error")
        })
        .collect();
    assert_eq!(texts, expected);

    let after: Value = ureq::get(format!("{}/experts/hosted", node.url))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert!(after["remote_calls"].as_u64().unwrap() > 0, "{after}");
}
