//! `blyan train` as a contributor runs it: tokenizer and genesis on a small corpus (with a
//! resume), and fine-tuning one expert of the bundled genesis model.

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

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// 300 chapters of three verses of varied English.
fn small_corpus() -> String {
    let words = [
        "and", "the", "LORD", "spake", "unto", "Moses", "saying", "behold", "light", "earth",
        "waters", "were", "gathered", "together", "in", "one", "place", "dry", "land",
    ];
    let mut out = String::new();
    for c in 1..=300 {
        for v in 1..=3 {
            let verse: Vec<&str> = (0..12)
                .map(|i| words[(c * 7 + v * 3 + i * i) % words.len()])
                .collect();
            out.push_str(&format!("Book {c}:{v}\t{}.\n", verse.join(" ")));
        }
    }
    out
}

#[test]
fn tokenizer_and_genesis_train_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.tsv");
    std::fs::write(&corpus, small_corpus()).unwrap();
    let tok = dir.path().join("tokenizer.json");
    let c = corpus.to_str().unwrap();
    let t = tok.to_str().unwrap();
    ok(&blyan(
        dir.path(),
        &[
            "train",
            "tokenizer",
            "--corpus",
            c,
            "--vocab-size",
            "600",
            "--out",
            t,
        ],
    ));
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let genesis = |steps: &str| {
        let args = [
            "train",
            "genesis",
            "--corpus",
            c,
            "--tokenizer",
            t,
            "--out",
            o,
            "--steps",
            steps,
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--warmup",
            "1",
            "--eval-every",
            "2",
            "--checkpoint-every",
            "2",
            "--json",
        ];
        let recipe: serde_json::Value =
            serde_json::from_str(&ok(&blyan(dir.path(), &args))).unwrap();
        recipe
    };
    let first = genesis("3");
    assert_eq!(first["steps"], 3);
    assert!(first["resumed_from"].is_null());
    for f in [
        "weights.q8",
        "tokenizer.json",
        "spec.json",
        "recipe.json",
        "loss.png",
    ] {
        assert!(out.join(f).exists(), "{f} written");
    }
    let csv = std::fs::read_to_string(out.join("loss.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + one row per step:\n{csv}");
    assert!(first["validation_loss_q8_0"].as_f64().unwrap().is_finite());
    assert!(first["baselines"]["bigram"].as_f64().unwrap() > 0.0);

    // A run with other settings refuses the checkpoint instead of mixing two runs.
    let refused = blyan(
        dir.path(),
        &[
            "train",
            "genesis",
            "--corpus",
            c,
            "--tokenizer",
            t,
            "--out",
            o,
            "--steps",
            "5",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("other settings"));

    // The same settings resume from the last checkpoint.
    let again = genesis("3");
    assert_eq!(again["resumed_from"], 3);

    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("spec.json")).unwrap()).unwrap();
    assert_eq!(spec["architecture"], "mixtral");
    assert_eq!(spec["bos_token_id"], 0);
}

fn lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("And it came to pass on the {i}th day that the people rejoiced greatly."))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn expert_fine_tuning_writes_a_candidate_and_refuses_bad_data() {
    let dir = tempfile::tempdir().unwrap();
    let init: serde_json::Value =
        serde_json::from_str(&ok(&blyan(dir.path(), &["init", "--json"]))).unwrap();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, lines(60)).unwrap();
    let cand = dir.path().join("cand.safetensors");
    let d = data.to_str().unwrap();
    let c = cand.to_str().unwrap();
    let out = ok(&blyan(
        dir.path(),
        &[
            "train",
            "expert",
            "--expert",
            "1.3",
            "--data",
            d,
            "--steps",
            "4",
            "--batch",
            "4",
            "--seq-len",
            "48",
            "--out",
            c,
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "eval_loss_before",
        "eval_loss_after",
        "steps",
        "tokens",
        "tokens_per_s",
        "candidate",
    ] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert_eq!(v["steps"], 4);
    assert_eq!(v["tokens"], 4 * 4 * 48);
    assert!(v["eval_loss_after"].as_f64().unwrap() < v["eval_loss_before"].as_f64().unwrap());
    assert!(cand.exists());

    // Submitted from the data directory, it is signed with the node's key: the verdict on
    // chain P names that key's address as the contributor and carries the signature.
    let out = blyan(dir.path(), &["submit", "--candidate", c, "--json"]);
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let proof = verdict["proof"]
        .as_str()
        .unwrap_or_else(|| panic!("{verdict}"));
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&blyan(dir.path(), &["chain", "show", proof, "--json"]))).unwrap();
    assert_eq!(
        shown["payload"]["contributor"], init["ledger"]["operator"],
        "{shown}"
    );
    assert_eq!(
        shown["payload"]["contributor_signature"]
            .as_str()
            .unwrap()
            .len(),
        2 + 130
    );
    // The same file again is a duplicate, refused before any item is spent.
    let again = blyan(dir.path(), &["submit", "--candidate", c, "--json"]);
    assert!(!again.status.success());
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(
        matches!(
            again["reason"].as_str(),
            Some("duplicate_payload" | "stale_parent")
        ),
        "{again}"
    );

    let refuse = |file: &[u8], extra: &[&str], code: &str| {
        std::fs::write(&data, file).unwrap();
        let mut args = vec![
            "train", "expert", "--expert", "0.0", "--data", d, "--out", c,
        ];
        args.extend_from_slice(extra);
        let out = blyan(dir.path(), &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("[{code}]")), "{code}: {err}");
    };
    refuse(b"", &[], "empty_data");
    refuse(b"\x00\x01\x02binary", &[], "binary_data");
    let good = lines(60);
    refuse(good.as_bytes(), &["--steps", "0"], "invalid_parameter");
    let out = blyan(
        dir.path(),
        &[
            "train", "expert", "--expert", "9.0", "--data", d, "--out", c,
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[unknown_expert]"));
}
