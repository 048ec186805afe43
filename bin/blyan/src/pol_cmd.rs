//! Proof of Learning on the command line: the hidden pool, submissions, verification,
//! replication, rollbacks and corpus export.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use blyan_chain::Store;
use blyan_node::{Node, pol};
use blyan_primitives::{Address, ExpertId, Hash};
use blyan_train::corpus::{Corpus, Split, Splitter};

use crate::node_cmd::{NodeArgs, node_config};

/// `blyan pol …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PolCommand {
    /// Make the pool secret (kept encrypted in the keystore), build the hidden pool from the
    /// corpus's keyed hidden split and the validation items from its keyed validation split,
    /// and commit their roots and the secret's hash on chain P (`blyan init` does this).
    Pool {
        /// The corpus file [default: the King James corpus bundled in the binary].
        #[arg(long, value_name = "FILE")]
        corpus: Option<PathBuf>,
    },
    /// Mode, thresholds, pool remaining and recent verdicts.
    Status,
    /// Recompute verdicts from the chain, the pool and the candidates; exits 1 on any
    /// disagreement.
    Verify {
        /// The verdict block; every verdict when absent.
        proof: Option<Hash>,
        /// Take the items from each verdict's reveal on chain P, as a node without the hidden
        /// pool does, instead of from this node's pool file.
        #[arg(long)]
        from_chain: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replicate an accepted verdict on a fresh sample (vests or withdraws the second half
    /// of its reward).
    Replicate {
        /// The accepted verdict block.
        proof: Hash,
    },
}

/// `blyan submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The candidate file (`blyan train expert --out`).
    #[arg(long, value_name = "FILE")]
    candidate: PathBuf,
    /// The key that signs the submission and is paid if it is accepted: an address with a
    /// key in this data directory's keystore [default: the node's key].
    #[arg(long, value_name = "ADDR")]
    key: Option<Address>,
    /// Proof-of-work nonce for hybrid mode [default: found here when the node is in hybrid
    /// mode].
    #[arg(long)]
    pow_nonce: Option<u64>,
    /// Submit to a running node at this URL (e.g. http://127.0.0.1:8420) instead of opening
    /// the data directory.
    #[arg(long, value_name = "URL")]
    node: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `blyan corpus …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CorpusCommand {
    /// Write one public split as text, one document per line. The splits are keyed by this
    /// data directory's pool secret (so this needs its keystore's passphrase); the hidden
    /// split is never exported.
    Export {
        /// `train` or `validation`.
        #[arg(long)]
        split: Split,
        /// The corpus file [default: the King James corpus bundled in the binary].
        #[arg(long, value_name = "FILE")]
        corpus: Option<PathBuf>,
        /// Where to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `blyan expert …`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum ExpertCommand {
    /// Make an older version an expert's head again; records a migration block.
    Rollback {
        /// The expert, `LAYER.EXPERT`.
        expert: ExpertId,
        /// The version to serve.
        #[arg(long, value_name = "HASH")]
        to: Hash,
        /// Why, recorded in the block.
        #[arg(long, default_value = "operator rollback")]
        reason: String,
    },
}

fn open_node(data_dir: &Path, ledger_url: Option<&str>) -> anyhow::Result<Node> {
    let config = node_config(data_dir, ledger_url, &NodeArgs::default())?;
    Node::open(data_dir, config, blyan_node::unix_ms()).with_context(|| {
        format!(
            "opening the node in {} (if it is running, use its HTTP API or --node)",
            data_dir.display()
        )
    })
}

/// Makes (or reuses) the pool secret, builds the keyed hidden and validation pools of
/// `corpus` and commits them on chain P.
pub(crate) fn build_pool(
    store: &Store,
    data_dir: &Path,
    corpus: &Corpus,
) -> anyhow::Result<(Hash, blyan_chain::PoolCommit)> {
    let secret = crate::keystore(data_dir)?
        .pool_secret_or_new()
        .context("the pool secret")?;
    let (pool, validation, source) = pol::pools_of(store, corpus, &secret)?;
    Ok(pol::commit_pool(
        store,
        data_dir,
        (&pool, &validation),
        &source,
        &secret,
        &crate::node_key(data_dir)?,
        blyan_node::unix_ms(),
    )?)
}

pub(crate) fn run(
    data_dir: &Path,
    ledger_url: Option<&str>,
    cmd: PolCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        PolCommand::Pool { corpus } => {
            let store = crate::open_store(data_dir)?;
            let corpus = crate::bundled::corpus(corpus.as_deref())?;
            let (hash, commit) = build_pool(&store, data_dir, &corpus)?;
            println!(
                "committed a hidden pool of {} items ({} tokens each), root {}, in block {hash}",
                commit.items, commit.item_tokens, commit.root
            );
            Ok(ExitCode::SUCCESS)
        }
        PolCommand::Status => {
            let node = open_node(data_dir, ledger_url)?;
            println!("{}", serde_json::to_string_pretty(&node.pol_status())?);
            Ok(ExitCode::SUCCESS)
        }
        PolCommand::Verify {
            proof,
            from_chain,
            json,
        } => {
            let node = open_node(data_dir, ledger_url)?;
            let proofs: Vec<Hash> = match proof {
                Some(p) => vec![p],
                None => node.pol_verdicts().into_iter().map(|(h, _)| h).collect(),
            };
            let mut all_agree = true;
            for p in proofs {
                let check = node.pol_verify(p, from_chain)?;
                all_agree &= check.agrees;
                if json {
                    println!("{}", serde_json::to_string(&check)?);
                } else if check.agrees {
                    println!(
                        "{p}  agrees ({}, n = {})",
                        check.reason.as_deref().unwrap_or("accepted_pow"),
                        check.n.unwrap_or(0)
                    );
                } else {
                    println!("{p}  DISAGREES");
                    for problem in &check.problems {
                        println!("    {problem}");
                    }
                }
            }
            Ok(if all_agree {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolCommand::Replicate { proof } => {
            let node = open_node(data_dir, ledger_url)?;
            let report = node.pol_replicate(proof, blyan_node::unix_ms())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.accepted {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The JSON of a refusal before evaluation, in the verdict's shape.
fn refusal_json(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "accepted": false,
        "reason": code,
        "message": message,
        "gain": null,
        "lcb": null,
        "n": 0,
        "proof": null,
        "reward": 0,
    })
}

pub(crate) fn submit(
    data_dir: &Path,
    ledger_url: Option<&str>,
    args: SubmitArgs,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.candidate)
        .with_context(|| format!("reading {}", args.candidate.display()))?;
    let key = match args.key {
        Some(address) => crate::keystore(data_dir)?
            .load(&address)
            .with_context(|| format!("loading the key of {address}"))?,
        None => crate::node_key(data_dir)?,
    };
    let out = match &args.node {
        Some(url) => submit_http(url, &bytes, &key, &args)?,
        None => {
            let node = open_node(data_dir, ledger_url)?;
            let settings = node.config().pol;
            let contributor = blyan_primitives::address_of(&key);
            let pow_nonce = match (args.pow_nonce, settings.mode) {
                (Some(n), _) => Some(n),
                (None, blyan_chain::PolMode::Pol) => None,
                (None, _) => Some(pol::solve_pow(&bytes, &contributor, settings.pow_bits)?),
            };
            let sub = pol::Submission {
                signature: pol::sign_submission(&key, &node.info().network, &bytes)?,
                candidate: bytes,
                contributor: Some(contributor),
                pow_nonce,
                payer: None,
            };
            match node.pol_submit(sub, blyan_node::unix_ms()) {
                Ok(r) => serde_json::to_value(r)?,
                Err(e @ blyan_node::NodeError::Pol { .. }) => {
                    refusal_json(e.code(), &e.to_string())
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let accepted = out["accepted"] == serde_json::Value::Bool(true);
    if args.json {
        println!("{out}");
    } else if accepted {
        let bly =
            |v: &serde_json::Value| blyan_primitives::Amount::from_nano(v.as_u64().unwrap_or(0));
        println!(
            "accepted: gain {} nats per position (lower bound {}), mixture {} bps, n = {}",
            out["gain"], out["lcb"], out["gain_bps"], out["n"]
        );
        println!(
            "paid {} BLY now, {} BLY held until replication; proof {}; new head {}",
            bly(&out["reward"]),
            bly(&out["vesting"]),
            out["proof"].as_str().unwrap_or(""),
            out["block"].as_str().unwrap_or("")
        );
    } else {
        println!(
            "rejected ({}): {}",
            out["reason"].as_str().unwrap_or(""),
            out.get("message").and_then(|m| m.as_str()).map_or_else(
                || format!(
                    "gain {} nats per position, lower bound {}, n = {}; proof {}",
                    out["gain"], out["lcb"], out["n"], out["proof"]
                ),
                str::to_owned
            )
        );
    }
    Ok(if accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn submit_http(
    url: &str,
    bytes: &[u8],
    key: &blyan_primitives::SigningKey,
    args: &SubmitArgs,
) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| -> anyhow::Result<serde_json::Value> {
        let target = format!("{}{path}", url.trim_end_matches('/'));
        agent
            .get(&target)
            .call()
            .with_context(|| format!("asking {target}"))?
            .body_mut()
            .read_json()
            .with_context(|| format!("reading the reply of {target}"))
    };
    // The signature names the network, which the node says.
    let info = get("/node")?;
    let network: Hash = info["node"]["network"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{url}/node names no network: {info}"))?;
    let signature = pol::sign_submission(key, &network, bytes)?;
    // Pow and hybrid modes ask for work: found here when not given.
    let pow_nonce = match args.pow_nonce {
        Some(n) => Some(n),
        None => {
            let status = get("/pol/status")?;
            let settings = &status["settings"];
            match settings["mode"].as_str() {
                Some("pow" | "hybrid") => {
                    let bits = settings["pow_bits"].as_u64().unwrap_or(0) as u32;
                    let who = blyan_primitives::address_of(key);
                    Some(pol::solve_pow(bytes, &who, bits)?)
                }
                _ => None,
            }
        }
    };
    let mut target = format!(
        "{}/pol/validate?signature={signature}&contributor={}",
        url.trim_end_matches('/'),
        blyan_primitives::address_of(key)
    );
    if let Some(n) = pow_nonce {
        target.push_str(&format!("&pow_nonce={n}"));
    }
    let mut response = agent
        .post(&target)
        .header("content-type", "application/octet-stream")
        .send(bytes)
        .with_context(|| format!("posting to {target}"))?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the reply of {target}"))?;
    if status == 200 {
        Ok(body)
    } else {
        let code = body["error"]["code"].as_str().unwrap_or("http_error");
        let message = body["error"]["message"].as_str().unwrap_or("");
        Ok(refusal_json(code, &format!("HTTP {status}: {message}")))
    }
}

pub(crate) fn corpus(data_dir: &Path, cmd: CorpusCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CorpusCommand::Export { split, corpus, out } => {
            if split == Split::Hidden {
                anyhow::bail!(
                    "[hidden_split] the hidden split is the Proof-of-Learning pool and is never exported"
                );
            }
            let secret = crate::keystore(data_dir)?.pool_secret()?.ok_or_else(|| {
                anyhow::anyhow!(
                    "[no_pool_secret] {} has no pool secret: the splits are keyed by it \
                     (run `blyan init`, or export from the node that made the pool)",
                    data_dir.display()
                )
            })?;
            // The secret must be the one chain P committed to, or the export would hold
            // hidden documents.
            if let Ok(store) = crate::open_store(data_dir)
                && let Some((_, commit)) = blyan_pol::record::PolRecord::read(&store)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .commit
                && commit.secret_hash != blyan_chain::PoolCommit::secret_hash_of(&secret)
            {
                anyhow::bail!(
                    "[pool_secret_mismatch] the keystore's pool secret is not the one chain P \
                     committed to"
                );
            }
            let splitter = Splitter::Keyed(&secret);
            let corpus = crate::bundled::corpus(corpus.as_deref())?;
            let mut text = String::new();
            let mut docs = 0usize;
            for d in corpus.documents(split, splitter) {
                text.push_str(&d.line());
                text.push('\n');
                docs += 1;
            }
            let tmp = out.with_extension("tmp");
            std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote the {split} split: {docs} documents, {} bytes, to {}",
                text.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn expert(
    data_dir: &Path,
    ledger_url: Option<&str>,
    cmd: ExpertCommand,
) -> anyhow::Result<ExitCode> {
    match cmd {
        ExpertCommand::Rollback { expert, to, reason } => {
            let node = open_node(data_dir, ledger_url)?;
            let hash = node.rollback_expert(expert, to, &reason, blyan_node::unix_ms())?;
            println!("expert {expert} serves {to} again; migration block {hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
