//! The `blyan` command as a user runs it: init, log, show, verify, and verify finding damage.

// Tests fail loudly: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn blyan(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blyan"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn init_log_show_verify() {
    let dir = tempfile::tempdir().unwrap();
    let init = json(&blyan(dir.path(), &["init", "--json"]));
    assert_eq!(init["created"], true);
    assert_eq!(init["blocks"], 50);

    let log = json(&blyan(dir.path(), &["chain", "log", "--json"]));
    let blocks = log.as_array().unwrap();
    assert_eq!(blocks.len(), 50);
    for b in blocks {
        for key in ["hash", "chain", "height", "kind", "name", "payload_len"] {
            assert!(b.get(key).is_some(), "{key} missing in {b}");
        }
    }
    assert_eq!(blocks[0]["kind"], "spec");
    assert_eq!(blocks[0]["hash"], init["network"]);
    let experts = blocks.iter().filter(|b| b["kind"] == "expert").count();
    assert_eq!(experts, 32);
    let routers = blocks.iter().filter(|b| b["kind"] == "router").count();
    assert_eq!(routers, 4);

    let param = json(&blyan(
        dir.path(),
        &["chain", "log", "--chain", "param", "--json"],
    ));
    assert_eq!(param.as_array().unwrap().len(), 47);

    let expert = blocks
        .iter()
        .find(|b| b["name"] == "model.layers.3.block_sparse_moe.experts.7")
        .unwrap();
    let show = json(&blyan(
        dir.path(),
        &["chain", "show", expert["hash"].as_str().unwrap(), "--json"],
    ));
    assert_eq!(show["header"]["meta"]["expert"], "3.7");
    assert_eq!(
        show["payload"]["tensors"][0]["shape"],
        serde_json::json!([512, 256])
    );
    let spec = json(&blyan(
        dir.path(),
        &[
            "chain",
            "show",
            blocks[0]["hash"].as_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(spec["payload"]["spec"]["num_local_experts"], 8);
    assert_eq!(spec["payload"]["spec"]["num_experts_per_tok"], 2);

    let verify = json(&blyan(dir.path(), &["chain", "verify", "--full", "--json"]));
    assert_eq!(verify["ok"], true);
    assert_eq!(verify["blocks"], 50);

    // Running init again changes nothing.
    let again = json(&blyan(dir.path(), &["init", "--json"]));
    assert_eq!(again["created"], false);
    assert_eq!(again["network"], init["network"]);
}

#[test]
fn verify_full_names_the_first_bad_block() {
    let dir = tempfile::tempdir().unwrap();
    json(&blyan(dir.path(), &["init", "--json"]));
    let log = json(&blyan(
        dir.path(),
        &["chain", "log", "--chain", "param", "--json"],
    ));
    let victim = log[10]["hash"].as_str().unwrap().to_owned();
    let show = json(&blyan(dir.path(), &["chain", "show", &victim, "--json"]));
    let payload_hash = show["header"]["payload_hash"].as_str().unwrap();
    let path = dir
        .path()
        .join("chain/payloads")
        .join(&payload_hash[..2])
        .join(payload_hash);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();

    assert!(
        blyan(dir.path(), &["chain", "verify"]).status.success(),
        "links mode does not re-hash"
    );
    let out = blyan(dir.path(), &["chain", "verify", "--full"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&victim), "{stderr}");
    assert!(stderr.contains("param height 10"), "{stderr}");
    assert!(stderr.contains("payload hashes to"), "{stderr}");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = blyan(dir.path(), &["chain", "show", "nothex"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex characters"));
    let out = blyan(dir.path(), &["chain", "log", "--chain", "ledger"]);
    assert_eq!(out.status.code(), Some(2));
    let missing = "0".repeat(64);
    let out = blyan(dir.path(), &["chain", "show", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no block"));
}
