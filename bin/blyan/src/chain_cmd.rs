//! `blyan chain …`: list, show and verify blocks.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use blyan_chain::genesis::ChainGenesis;
use blyan_chain::spec::MetaPayload;
use blyan_chain::{BlockKind, ChainId, Store, VerifyFailure, VerifyMode};
use blyan_primitives::Hash;
use blyan_tensor::TensorSet;
use clap::Subcommand;

/// Subcommands of `blyan chain`.
#[derive(Debug, Subcommand)]
pub(crate) enum ChainCommand {
    /// List blocks, chain by chain in height order.
    Log {
        /// Only this chain: meta, param, dataset or proof.
        #[arg(long)]
        chain: Option<ChainId>,
        /// Print a JSON list of {hash, chain, height, kind, name, payload_len}.
        #[arg(long)]
        json: bool,
    },
    /// Show one block's header and a summary of its payload.
    Show {
        /// Block hash (64 hex characters).
        hash: Hash,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every header hash and link; exit non-zero naming the first bad block.
    Verify {
        /// Also re-hash every payload.
        #[arg(long)]
        full: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(store: &Store, cmd: ChainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChainCommand::Log { chain, json } => log(store, chain, json)?,
        ChainCommand::Show { hash, json } => show(store, hash, json)?,
        ChainCommand::Verify { full, json } => return verify(store, full, json),
    }
    Ok(ExitCode::SUCCESS)
}

fn log(store: &Store, chain: Option<ChainId>, json: bool) -> anyhow::Result<()> {
    let blocks = store.blocks(chain)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &blocks)?;
        writeln!(out)?;
        return Ok(());
    }
    for b in blocks {
        writeln!(
            out,
            "{}  {:<7} {:>6}  {:<13} {:>10}  {}",
            b.hash.short(16),
            b.chain,
            b.height,
            b.kind,
            b.payload_len,
            b.name
        )?;
    }
    Ok(())
}

fn show(store: &Store, hash: Hash, json: bool) -> anyhow::Result<()> {
    let header = store
        .header(&hash)?
        .with_context(|| format!("no block {hash} in the store"))?;
    let payload = store.payload_verified(&hash)?;
    let content = match header.kind {
        BlockKind::Spec => {
            let meta = MetaPayload::decode(&payload)?;
            serde_json::json!({ "spec": meta.spec, "tokenizer_bytes": meta.tokenizer.len() })
        }
        BlockKind::ChainGenesis => serde_json::to_value(ChainGenesis::decode(&payload)?)?,
        BlockKind::LedgerBatch => {
            let batch = blyan_chain::LedgerBatch::decode(&payload)?;
            let postings = batch
                .postings
                .iter()
                .map(|p| blyan_ledger::PostingRecord::decode(p).map(|r| r.to_json()))
                .collect::<Result<Vec<_>, _>>()?;
            serde_json::json!({ "first_seq": batch.first_seq, "root": batch.root, "postings": postings })
        }
        BlockKind::PoolCommit => serde_json::to_value(blyan_chain::PoolCommit::decode(&payload)?)?,
        BlockKind::Verdict => serde_json::to_value(blyan_chain::Verdict::decode(&payload)?)?,
        BlockKind::Migration => serde_json::to_value(blyan_chain::Migration::decode(&payload)?)?,
        BlockKind::Admission => serde_json::to_value(blyan_chain::Admission::decode(&payload)?)?,
        BlockKind::Reveal => {
            let r = blyan_chain::Reveal::decode(&payload)?;
            let opened = |items: &[blyan_chain::RevealedItem]| -> Vec<serde_json::Value> {
                items
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "index": i.index, "salt": i.salt,
                            "tokens": blyan_pol::decode_item(&i.bytes), "proof": i.proof,
                        })
                    })
                    .collect()
            };
            serde_json::json!({
                "verdict": r.verdict, "hidden": opened(&r.hidden),
                "validation": opened(&r.validation),
            })
        }
        BlockKind::Expert | BlockKind::Router | BlockKind::Dense => {
            let set = TensorSet::parse(&payload)?;
            let tensors: Vec<_> = set
                .tensors()
                .iter()
                .map(|t| {
                    let v = t.to_f32();
                    let n = v.len().max(1) as f64;
                    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
                    let rms = (v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n).sqrt();
                    serde_json::json!({
                        "name": t.name, "dtype": t.dtype, "shape": t.shape, "mean": mean, "rms": rms
                    })
                })
                .collect();
            serde_json::json!({ "tensors": tensors })
        }
    };
    let signature = store.signature(&hash)?;
    let out = serde_json::json!({
        "hash": hash, "header": header, "signature": signature, "payload": content
    });
    if json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn verify(store: &Store, full: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mode = if full {
        VerifyMode::Full
    } else {
        VerifyMode::Links
    };
    let bar = (full && !json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} verifying: {bytes} hashed ({bytes_per_sec})",
            )
            .expect("static template"),
        );
        bar
    });
    let start = Instant::now();
    let result = store.verify(mode, |bytes| {
        if let Some(bar) = &bar {
            bar.set_position(bytes);
        }
    })?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(report) => {
            let mb_per_s = report.payload_bytes_hashed as f64 / 1e6 / secs.max(1e-9);
            if json {
                let out = serde_json::json!({
                    "ok": true, "full": full, "blocks": report.blocks,
                    "chains": report.chains.iter().map(|(c, n)| (c.as_str(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                    "payload_bytes_hashed": report.payload_bytes_hashed,
                    "signatures_checked": report.signatures_checked,
                    "signature_seconds": report.signature_seconds,
                    "seconds": secs, "mb_per_s": mb_per_s,
                });
                println!("{out}");
            } else {
                let chains: Vec<String> = report
                    .chains
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                println!("ok: {} blocks ({})", report.blocks, chains.join(", "));
                if full {
                    println!("{} author signatures checked", report.signatures_checked);
                }
                if full {
                    println!(
                        "re-hashed {:.1} MB of payload in {secs:.2} s ({mb_per_s:.0} MB/s); \
                         the signature checks took {:.3} s of it",
                        report.payload_bytes_hashed as f64 / 1e6,
                        report.signature_seconds
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            if json {
                println!("{}", serde_json::json!({ "ok": false, "failure": failure }));
            } else {
                print_failure(&failure);
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(crate) fn print_failure(f: &VerifyFailure) {
    let place = match (f.chain, f.height) {
        (Some(c), Some(h)) => format!(" ({c} height {h})"),
        _ => String::new(),
    };
    eprintln!("verify failed at block {}{place}: {}", f.block, f.cause);
}
