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
    // The 50 genesis blocks and the hidden pool's commitment on chain P.
    assert_eq!(blocks.len(), 51);
    assert_eq!(
        blocks.iter().filter(|b| b["kind"] == "pool_commit").count(),
        1
    );
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
    // Every block is signed by the data directory's node key, which is also the operator's.
    assert_eq!(show["header"]["author"], init["ledger"]["operator"]);
    assert_eq!(show["signature"].as_str().unwrap().len(), 2 + 130);
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
    assert_eq!(verify["blocks"], 51);
    assert_eq!(verify["signatures_checked"], 51);

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
    let out = blyan(dir.path(), &["chain", "log", "--chain", "treasure"]);
    assert_eq!(out.status.code(), Some(2));
    let missing = "0".repeat(64);
    let out = blyan(dir.path(), &["chain", "show", &missing]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no block"));
}

#[test]
fn generate_streams_text_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    json(&blyan(dir.path(), &["init", "--json"]));
    let args = [
        "generate",
        "--prompt",
        "Hello",
        "--max-tokens",
        "12",
        "--seed",
        "5",
        "--json",
    ];
    let a = json(&blyan(dir.path(), &args));
    for key in [
        "text",
        "tokens",
        "prompt_tokens",
        "tokens_per_s",
        "precision",
        "expert_cache",
        "experts_used",
    ] {
        assert!(a.get(key).is_some(), "{key} missing in {a}");
    }
    assert_eq!(a["precision"], "int8");
    let prompt_tokens = a["prompt_tokens"].as_u64().unwrap();
    assert!(
        (2..=6).contains(&prompt_tokens),
        "BOS + at most one token per byte: {prompt_tokens}"
    );
    assert!(a["tokens"].as_u64().unwrap() <= 12);
    assert!(a["expert_cache"]["misses"].as_u64().unwrap() > 0);
    let used: u64 = a["experts_used"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(used > 0);
    // The same seed gives the same text.
    let b = json(&blyan(dir.path(), &args));
    assert_eq!(a["text"], b["text"]);

    // Without --json the text is streamed to stdout.
    let out = blyan(
        dir.path(),
        &[
            "generate",
            "--prompt",
            "Hello",
            "--max-tokens",
            "12",
            "--seed",
            "5",
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(a["text"].as_str().unwrap()));

    let f32_run = json(&blyan(
        dir.path(),
        &[
            "generate",
            "--prompt",
            "Hi",
            "--max-tokens",
            "4",
            "--precision",
            "f32",
            "--json",
        ],
    ));
    assert_eq!(f32_run["precision"], "f32");
}

/// The binary is built for the baseline x86-64 and picks its vector code when it runs: on an
/// emulated CPU without AVX (QEMU's Nehalem model; `scripts/test-deps.sh` installs
/// qemu-user) it starts, takes the portable Q8_0 product, and generates exactly the text that
/// this machine's own CPU generates with its vector kernel. A binary compiled for
/// `x86-64-v3` dies there with SIGILL.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn runs_on_a_cpu_without_avx_and_generates_the_same_text() {
    let dir = tempfile::tempdir().unwrap();
    json(&blyan(dir.path(), &["init", "--json"]));
    let args = [
        "generate",
        "--prompt",
        "In the beginning",
        "--temperature",
        "0",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--json",
    ];
    let native = json(&blyan(dir.path(), &args));
    let emulated = Command::new("qemu-x86_64")
        .args(["-cpu", "Nehalem", env!("CARGO_BIN_EXE_blyan"), "--data-dir"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("qemu-x86_64 runs (scripts/test-deps.sh installs qemu-user)");
    let emulated = json(&emulated);
    assert_eq!(emulated["q8_kernel"], "portable");
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert_ne!(native["q8_kernel"], "portable", "{native}");
    }
    assert_eq!(native["tokens"], 6);
    assert_eq!(emulated["text"], native["text"]);
    assert_eq!(emulated["experts_used"], native["experts_used"]);
}

#[test]
fn generate_refuses_bad_requests_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = blyan(dir.path(), &["generate", "--prompt", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("blyan init"));

    json(&blyan(dir.path(), &["init", "--json"]));
    for (args, needle) in [
        (vec!["--temperature", "NaN"], "temperature"),
        (vec!["--top-p", "0"], "top_p"),
        (vec!["--max-tokens", "0"], "max_tokens"),
        (vec!["--precision", "int4"], "int4"),
        (vec!["--expert-version", "0.1=zz"], "0.1=zz"),
        (
            vec![
                "--expert-version",
                "0.1=0000000000000000000000000000000000000000000000000000000000000000",
            ],
            "not a version of expert 0.1",
        ),
    ] {
        let mut all = vec!["generate", "--prompt", "x"];
        all.extend(args);
        let out = blyan(dir.path(), &all);
        assert!(!out.status.success(), "{all:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{all:?}: {stderr}");
    }
    let long = "y".repeat(2000);
    let out = blyan(dir.path(), &["generate", "--prompt", &long]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("context window"));
}

#[test]
fn export_import_round_trip_and_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let hf = dir.path().join("hf");
    let init = json(&blyan(&a, &["init", "--json"]));
    let out = blyan(&a, &["export", "hf", hf.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported = json(&blyan(
        &b,
        &["import", "hf", hf.to_str().unwrap(), "--json"],
    ));
    assert_eq!(imported["created"], true);
    // Another data directory, so another node key signs the genesis: another network, with
    // the same model (checked below by exporting it again).
    assert_ne!(imported["network"], init["network"]);
    let again = json(&blyan(
        &b,
        &["import", "hf", hf.to_str().unwrap(), "--json"],
    ));
    assert_eq!(again["created"], false);
    assert_eq!(again["unchanged"], 47);
    let hf_again = dir.path().join("hf_again");
    let out = blyan(&b, &["export", "hf", hf_again.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert_eq!(
            std::fs::read(hf.join(file)).unwrap(),
            std::fs::read(hf_again.join(file)).unwrap(),
            "{file}"
        );
    }

    let gguf = dir.path().join("m.gguf");
    let out = blyan(&b, &["export", "gguf", gguf.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&std::fs::read(&gguf).unwrap()[..4], b"GGUF");

    // Exporting over existing files is refused.
    let out = blyan(&a, &["export", "hf", hf.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[test]
fn ledger_commands_on_sqlite_and_postgres() {
    ledger_commands(None);
    // The same commands on PostgreSQL, in a schema of their own.
    let base = std::env::var("BLYAN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("cli_{}", std::process::id());
    let url = format!("{base}?options=-csearch_path%3D{schema}");
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let result = std::panic::catch_unwind(|| ledger_commands(Some(&url)));
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
    result.unwrap();
}

fn ledger_commands(url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = Vec::new();
        if let Some(u) = url {
            all.extend(["--ledger-url", u]);
        }
        all.extend(args);
        blyan(dir.path(), &all)
    };
    let init = json(&run(&["init", "--random-weights", "--json"]));
    let ledger = &init["ledger"];
    assert_eq!(
        ledger["backend"],
        if url.is_some() { "postgres" } else { "sqlite" }
    );
    assert_eq!(ledger["operator_available"], 1_000_000_000_000_000u64);
    let operator = ledger["operator"].as_str().unwrap().to_owned();
    let key_dir = dir.path().join("keystore");
    assert!(
        key_dir
            .join(format!("{}.json", &operator[2..].to_lowercase()))
            .exists()
    );

    let account = json(&run(&["account", "new", "--json"]));
    let address = account["address"].as_str().unwrap().to_owned();
    assert!(account["api_key"].as_str().unwrap().starts_with("bly_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = key_dir.join(format!("{}.json", &address[2..].to_lowercase()));
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let balance = json(&run(&["ledger", "balance", &address, "--json"]));
    assert_eq!(
        balance,
        serde_json::json!({"address": address, "available": 0, "pending": 0, "owed": 0})
    );
    let receipt = json(&run(&[
        "ledger", "transfer", "--from", "operator", "--to", &address, "--amount", "12.5", "--json",
    ]));
    assert_eq!(receipt["amount"], 12_500_000_000u64);
    let balance = json(&run(&[
        "ledger",
        "balance",
        &address.to_lowercase(),
        "--json",
    ]));
    assert_eq!(balance["available"], 12_500_000_000u64);

    // Refusals: stable code on stderr, exit 1, nothing posted.
    for (args, code) in [
        (
            vec!["--to", "operator", "--amount", "100"],
            "[insufficient_funds]",
        ),
        (vec!["--to", "operator", "--amount", "0"], "[zero_amount]"),
        (
            vec!["--to", "operator", "--amount=-3"],
            "[malformed_amount]",
        ),
        (
            vec!["--to", "operator", "--amount", "1e2"],
            "[malformed_amount]",
        ),
        (vec!["--to", &address, "--amount", "1"], "[self_transfer]"),
        (
            vec!["--to", "0xabc", "--amount", "1"],
            "[malformed_address]",
        ),
    ] {
        let mut full = vec!["ledger", "transfer", "--from", &address];
        full.extend(args.iter().copied());
        let out = run(&full);
        assert_eq!(out.status.code(), Some(1), "{full:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(code), "{full:?}: {stderr}");
    }
    // Paying from an account whose key this node does not hold is refused.
    let stranger = format!("0x{}", "ab".repeat(20));
    let out = run(&[
        "ledger", "transfer", "--from", &stranger, "--to", "operator", "--amount", "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let balance = json(&run(&["ledger", "balance", &address, "--json"]));
    assert_eq!(balance["available"], 12_500_000_000u64);

    let history = json(&run(&["ledger", "history", &address, "--json"]));
    assert_eq!(history["postings"].as_array().unwrap().len(), 1);
    let anchored = json(&run(&["ledger", "anchor", "--json"]));
    assert_eq!(anchored.as_array().unwrap().len(), 1);
    let audit = json(&run(&["ledger", "audit", "--json"]));
    assert_eq!(audit["ok"], true, "{audit}");
    assert_eq!(audit["unanchored"], 0);
    let log = json(&run(&["chain", "log", "--chain", "ledger", "--json"]));
    let hash = log[0]["hash"].as_str().unwrap().to_owned();
    let shown = json(&run(&["chain", "show", &hash, "--json"]));
    assert_eq!(
        shown["payload"]["postings"][0]["kind"], "genesis",
        "{shown}"
    );

    // Edit a balance behind the ledger's back: the audit names it and exits 1.
    match url {
        None => {
            let db = rusqlite::Connection::open(dir.path().join("ledger.sqlite")).unwrap();
            db.execute(
                "UPDATE balances SET amount = amount + 1 WHERE address = ?1 AND book = 0",
                [&address[2..].to_lowercase()],
            )
            .unwrap();
        }
        Some(u) => {
            let mut db = postgres::Client::connect(u, postgres::NoTls).unwrap();
            db.execute(
                "UPDATE balances SET amount = amount + 1 WHERE address = $1 AND book = 0",
                &[&address[2..].to_lowercase()],
            )
            .unwrap();
        }
    }
    let out = run(&["ledger", "audit"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit failed"), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
}

#[test]
fn init_and_corpus_export_work_from_any_directory() {
    // An empty working directory, as after `cargo install`: nothing of the repository is
    // reachable by a relative path.
    let cwd = tempfile::tempdir().unwrap();
    let run = |data_dir: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_blyan"))
            .current_dir(cwd.path())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .output()
            .unwrap()
    };
    let bundled = tempfile::tempdir().unwrap();
    let init = json(&run(bundled.path(), &["init", "--json"]));
    let pool = &init["pool"];
    assert!(pool["items"].as_u64().unwrap() > 1000, "{init}");

    // From the repository's corpus file: another pool, because each data directory keys its
    // split with its own secret, so which documents are hidden differs from node to node.
    let repo_corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/corpus/kjv.tsv");
    let from_file = tempfile::tempdir().unwrap();
    let init_file = json(&run(
        from_file.path(),
        &["init", "--json", "--corpus", repo_corpus.to_str().unwrap()],
    ));
    assert_ne!(init_file["pool"]["root"], pool["root"]);
    assert!(init_file["pool"]["items"].as_u64().unwrap() > 1000);

    // The public splits this node exports hold every document but its hidden ones: the
    // documents of the two exports and the hidden count the pool commitment states add up
    // to the corpus's documents.
    let export = |data_dir: &Path, split: &str| -> Vec<String> {
        let out = cwd.path().join(format!("{split}.txt"));
        let done = run(
            data_dir,
            &[
                "corpus",
                "export",
                "--split",
                split,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (train, validation) = (
        export(bundled.path(), "train"),
        export(bundled.path(), "validation"),
    );
    assert!(validation.len() > 10);
    let source = pool["source"].as_str().unwrap().to_owned();
    let hidden: usize = source
        .split(" hidden")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no document count in {source:?}"));
    let corpus = std::fs::read_to_string(&repo_corpus).unwrap();
    let mut keys: Vec<&str> = corpus
        .lines()
        .filter_map(|l| l.split('\t').next()?.rsplit_once(':').map(|(k, _)| k))
        .collect();
    keys.dedup();
    assert_eq!(
        train.len() + validation.len() + hidden,
        keys.len(),
        "{source}"
    );
    assert!(
        hidden * 20 > keys.len(),
        "about a tenth is hidden: {hidden} of {}",
        keys.len()
    );
    // Another node's validation split is another set of documents.
    assert_ne!(export(from_file.path(), "validation"), validation);
    // Without the secret there is no export.
    let bare = tempfile::tempdir().unwrap();
    let refused = run(
        bare.path(),
        &["corpus", "export", "--split", "train", "--out", "x.txt"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no_pool_secret"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A corpus named but missing is an error, never a network silently without a pool.
    let missing = tempfile::tempdir().unwrap();
    let refused = run(missing.path(), &["init", "--corpus", "no/such/file.tsv"]);
    assert!(!refused.status.success());
    assert!(
        !missing.path().join("chain").exists(),
        "init wrote a network"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no/such/file.tsv"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Written by Python's eth-account (`Account.encrypt("0x11…11", "blyan test passphrase")`).
const ETH_ACCOUNT_FILE: &str = r#"{"address":"19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A","crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"04709a8db297d8c62ece8b8e2adb6dee"},"ciphertext":"bb9c46b01f273569df9fa7cbec8221d4e42caf621c7467b0a471560ceff6b36f","kdf":"scrypt","kdfparams":{"dklen":32,"n":262144,"r":8,"p":1,"salt":"6b1a07deb80c838ae4b3af57a1d95110"},"mac":"4a5a8788fd9edcdb8ea7b444f0ad5195322a307022a5564615e00c8644057b74"},"id":"5795fd47-1e3d-4ab8-8c15-10eabd4f4a67","version":3}"#;

#[test]
fn keys_are_encrypted_files_that_move_to_and_from_ethereum_tools() {
    let dir = tempfile::tempdir().unwrap();
    let with = |passphrase: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_blyan"))
            .env("BLYAN_KEY_PASSPHRASE", passphrase)
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let init = json(&with("s3cret", &["init", "--random-weights", "--json"]));
    let operator = init["ledger"]["operator"].as_str().unwrap().to_lowercase();
    // The node's key is a version-3 file encrypted with scrypt, never the secret in clear.
    let file = dir
        .path()
        .join("keystore")
        .join(format!("{}.json", &operator[2..]));
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["version"], 3);
    assert_eq!(stored["crypto"]["kdf"], "scrypt");
    assert_eq!(stored["crypto"]["kdfparams"]["n"], 1 << 18);
    let key = blyan_ledger::keyfile::decrypt(&std::fs::read(&file).unwrap(), b"s3cret").unwrap();
    let secret_hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains(&secret_hex));

    // Anything that signs needs the passphrase: a wrong one is refused by name.
    let out = with("wrong", &["ledger", "anchor"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong_passphrase"), "{stderr}");
    // The right one, from a file.
    let pass_file = dir.path().join("pass.txt");
    std::fs::write(&pass_file, "s3cret\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .env_remove("BLYAN_KEY_PASSPHRASE")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--key-passphrase-file")
        .arg(&pass_file)
        .args(["ledger", "anchor", "--json"])
        .output()
        .unwrap();
    json(&out);

    // A wallet's file comes in under its own passphrase and goes out under the keystore's.
    let wallet = dir.path().join("wallet.json");
    std::fs::write(&wallet, ETH_ACCOUNT_FILE).unwrap();
    let wallet_pass = dir.path().join("wallet-pass.txt");
    std::fs::write(&wallet_pass, "blyan test passphrase\n").unwrap();
    let imported = json(&with(
        "s3cret",
        &[
            "account",
            "import",
            wallet.to_str().unwrap(),
            "--passphrase-file",
            wallet_pass.to_str().unwrap(),
            "--json",
        ],
    ));
    let address = "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a";
    assert_eq!(
        imported["address"].as_str().unwrap().to_lowercase(),
        address
    );
    let out_file = dir.path().join("exported.json");
    let out = with(
        "s3cret",
        &[
            "account",
            "export",
            address,
            "--out",
            out_file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back =
        blyan_ledger::keyfile::decrypt(&std::fs::read(&out_file).unwrap(), b"s3cret").unwrap();
    assert_eq!(back.to_bytes().as_slice(), &[0x11; 32]);
    // The wrong passphrase for the wallet's file is refused, and nothing is imported.
    let again = with(
        "s3cret",
        &["account", "import", wallet.to_str().unwrap(), "--json"],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("wrong passphrase"));
}

#[test]
fn net_id_is_stable_and_bound_to_the_node_account() {
    let dir = tempfile::tempdir().unwrap();
    let a = json(&blyan(dir.path(), &["net", "id", "--json"]));
    let b = json(&blyan(dir.path(), &["net", "id", "--json"]));
    assert_eq!(a, b, "the network key is made once and kept");
    let key = a["key"].as_str().unwrap();
    assert_eq!(key.len(), 64);
    let binding = a["binding"].as_str().unwrap();
    assert!(binding.starts_with("0x") && binding.len() == 2 + 130);
    let sig =
        blyan_primitives::Signature::from_slice(&hex::decode(&binding[2..]).unwrap()).unwrap();
    let address: blyan_primitives::Address = a["address"].as_str().unwrap().parse().unwrap();
    let net_key = blyan_net::parse_key(key).unwrap();
    assert!(blyan_net::check_binding(&net_key, &address, &sig));
    // Another data directory has another key and another account.
    let other = tempfile::tempdir().unwrap();
    let c = json(&blyan(other.path(), &["net", "id", "--json"]));
    assert_ne!(c["key"], a["key"]);
    assert_ne!(c["address"], a["address"]);
}
