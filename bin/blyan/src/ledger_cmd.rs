//! `blyan account` and `blyan ledger`: accounts, balances, transfers, history, anchoring and
//! the audit, straight on the ledger's database (SQLite in the data directory, or
//! PostgreSQL with `--ledger-url`). Both databases take concurrent writers, so these commands
//! work while the node runs; anchoring and the chain half of the audit need the block store,
//! which only one process opens at a time.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use blyan_ledger::{Ledger, SystemAccount, parse_amount};
use blyan_primitives::Address;
use clap::Subcommand;

/// `blyan account …`.
#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// Create an account: a secp256k1 key in the node's keystore and an API key bound to it.
    New {
        /// Print `{"address", "api_key"}` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every account with its balances.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add a key from a Web3 Secret Storage (version 3) file, as Ethereum wallets and tools
    /// write them, to the keystore (re-encrypted under its passphrase), and open its account.
    Import {
        /// The key file.
        file: std::path::PathBuf,
        /// A file whose first line is the imported file's passphrase [default: the
        /// keystore's].
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<std::path::PathBuf>,
        /// Print `{"address"}` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write an account's key as a Web3 Secret Storage (version 3) file, encrypted under the
    /// keystore's passphrase, for an Ethereum wallet or another node.
    Export {
        /// The account's address.
        address: String,
        /// Where to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Issue another API key for an account whose key is in this node's keystore.
    ApiKey {
        /// The account's address.
        address: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `blyan ledger …`.
#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// An account's balances in nano-BLY.
    Balance {
        /// Address (0x…) or account name (operator, treasury, burn, …).
        account: String,
        /// Print `{"address", "available", "pending", "owed"}` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pay BLY from an account whose key is in this node's keystore (or the treasury).
    Transfer {
        /// The paying account: an address or a name.
        #[arg(long)]
        from: String,
        /// The paid account: an address or a name.
        #[arg(long)]
        to: String,
        /// Decimal BLY, e.g. 12.5 (at most 9 decimals).
        #[arg(long)]
        amount: String,
        /// A note stored with the posting.
        #[arg(long, default_value = "")]
        reference: String,
        /// Posts once however often the same command is retried with this key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print the receipt as JSON.
        #[arg(long)]
        json: bool,
    },
    /// An account's postings, newest first.
    History {
        /// Address or name.
        account: String,
        /// Most postings shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only postings before this sequence number (for paging).
        #[arg(long)]
        before: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Supply, postings and accounts.
    Supply {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Anchor the postings not yet on the chain as ledger-chain blocks (the node does this
    /// every `anchor_interval_s`; use this while it is stopped).
    Anchor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check that postings balance, no balance is negative, and the SQL store equals the
    /// batches on the chain. Exits non-zero naming the first discrepancy.
    Audit {
        /// Skip the chain comparison (when the node holds the block store; or ask the node:
        /// `curl http://127.0.0.1:8420/ledger/audit`).
        #[arg(long)]
        sql_only: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn now_ms() -> u64 {
    blyan_node::unix_ms()
}

/// The ledger of `data_dir`, created if needed.
fn open(data_dir: &Path, url: Option<&str>) -> anyhow::Result<blyan_ledger::Setup> {
    blyan_ledger::setup(data_dir, url, &crate::keystore(data_dir)?, now_ms())
        .context("opening the ledger")
}

fn resolve(ledger: &Ledger, who: &str) -> anyhow::Result<Address> {
    Ok(ledger.resolve(who)?)
}

fn nano_to_bly(nano: u64) -> String {
    format!("{} BLY", blyan_primitives::Amount::from_nano(nano))
}

pub(crate) fn account(
    data_dir: &Path,
    url: Option<&str>,
    cmd: AccountCommand,
) -> anyhow::Result<()> {
    let setup = open(data_dir, url)?;
    let ledger = setup.ledger;
    match cmd {
        AccountCommand::New { json } => {
            let ks = crate::keystore(data_dir)?;
            let (address, api_key) = ledger.new_user(&ks, now_ms())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "address": address, "api_key": api_key })
                );
            } else {
                println!("address  {address}");
                println!("api key  {api_key}");
                println!("key file {}", ks.path(&address).display());
                println!("The API key is shown once; the node keeps only its hash.");
            }
        }
        AccountCommand::Import {
            file,
            passphrase_file,
            json,
        } => {
            let ks = crate::keystore(data_dir)?;
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let passphrase = match &passphrase_file {
                Some(p) => crate::read_passphrase_file(p)?,
                None => zeroize::Zeroizing::new(crate::key_passphrase()?.expose().to_owned()),
            };
            let key = blyan_ledger::keyfile::decrypt(&text, passphrase.as_bytes())
                .with_context(|| format!("opening {}", file.display()))?;
            let address = ks.store(&key)?;
            if ledger.resolve(&address.to_string()).is_err() {
                ledger.create_account(address, blyan_ledger::AccountKind::User, now_ms())?;
            }
            if json {
                println!("{}", serde_json::json!({ "address": address }));
            } else {
                println!("imported {address} into {}", ks.path(&address).display());
            }
        }
        AccountCommand::Export { address, out } => {
            let address = resolve(&ledger, &address)?;
            let ks = crate::keystore(data_dir)?;
            // Opening it proves the passphrase and the file before anything is written.
            ks.load(&address)
                .with_context(|| format!("{address} has no key in this node's keystore"))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let bytes = std::fs::read(ks.path(&address))?;
            std::io::Write::write_all(&mut f, &bytes)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote the key of {address} to {}", out.display());
        }
        AccountCommand::List { json } => {
            let mut rows = Vec::new();
            for a in ledger.accounts()? {
                let b = ledger.balance(a.address)?;
                rows.push(serde_json::json!({
                    "address": a.address, "name": a.name, "kind": a.kind,
                    "available": b.available, "pending": b.pending,
                }));
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in rows {
                    println!(
                        "{}  {:<14} {:<9} {:>28} available {:>20} pending",
                        r["address"].as_str().unwrap_or(""),
                        r["name"].as_str().unwrap_or("-"),
                        r["kind"].as_str().unwrap_or(""),
                        nano_to_bly(r["available"].as_u64().unwrap_or(0)),
                        nano_to_bly(r["pending"].as_u64().unwrap_or(0)),
                    );
                }
            }
        }
        AccountCommand::ApiKey { address, json } => {
            let address = resolve(&ledger, &address)?;
            crate::keystore(data_dir)?
                .load(&address)
                .with_context(|| format!("{address} has no key in this node's keystore"))?;
            let api_key = ledger.issue_api_key(address, now_ms())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "address": address, "api_key": api_key })
                );
            } else {
                println!("api key  {api_key}");
            }
        }
    }
    Ok(())
}

pub(crate) fn ledger(
    data_dir: &Path,
    url: Option<&str>,
    cmd: LedgerCommand,
) -> anyhow::Result<ExitCode> {
    let setup = open(data_dir, url)?;
    let ledger = setup.ledger;
    match cmd {
        LedgerCommand::Balance { account, json } => {
            let b = ledger.balance(resolve(&ledger, &account)?)?;
            if json {
                println!("{}", serde_json::json!(b));
            } else {
                println!("{}", b.address);
                println!("available {}", nano_to_bly(b.available.nano()));
                println!("pending   {}", nano_to_bly(b.pending.nano()));
                println!("owed      {}", nano_to_bly(b.owed.nano()));
            }
        }
        LedgerCommand::Transfer {
            from,
            to,
            amount,
            reference,
            idempotency_key,
            json,
        } => {
            let amount = parse_amount(&amount)?;
            let from = resolve(&ledger, &from)?;
            let to = resolve(&ledger, &to)?;
            // The data directory's owner speaks for the treasury and for every key in the
            // keystore; any other account pays only through its own API key.
            if from != SystemAccount::Treasury.address() {
                crate::keystore(data_dir)?.load(&from).with_context(|| {
                    format!(
                        "{from} has no key in this node's keystore, so this node cannot pay from it"
                    )
                })?;
            }
            let r = ledger.transfer(
                from,
                to,
                amount,
                &reference,
                idempotency_key.as_deref(),
                now_ms(),
            )?;
            if json {
                println!("{}", serde_json::json!(r));
            } else {
                println!(
                    "paid {} from {} to {} (posting {})",
                    nano_to_bly(r.amount.nano()),
                    r.from,
                    r.to,
                    r.seq
                );
            }
        }
        LedgerCommand::History {
            account,
            limit,
            before,
            json,
        } => {
            let address = resolve(&ledger, &account)?;
            let postings = ledger.history(address, before, limit)?;
            let owed = ledger.owed_entries(Some(address))?;
            if json {
                let items: Vec<_> = postings.iter().map(|p| p.to_json()).collect();
                println!(
                    "{}",
                    serde_json::json!({ "address": address, "postings": items, "owed": owed })
                );
            } else {
                // Rewards earned and not yet minted come first: they are paid, oldest first,
                // from later epochs' emission budgets.
                for o in &owed {
                    println!(
                        "   owed#{:<3} {:<14} {:>27}  {}{}",
                        o.id,
                        "reward_owed",
                        nano_to_bly(o.outstanding().nano()),
                        o.reference,
                        if o.vesting { " (vesting)" } else { "" }
                    );
                }
                for p in postings {
                    let (sign, other) = if p.debit == address && p.credit != address {
                        ('-', p.credit)
                    } else if p.credit == address && p.debit != address {
                        ('+', p.debit)
                    } else {
                        ('~', p.credit)
                    };
                    println!(
                        "{:>8}  {:<14} {sign}{:>26}  {}  {}",
                        p.seq,
                        p.kind.as_str(),
                        nano_to_bly(p.amount.nano()),
                        other,
                        p.reference
                    );
                }
            }
        }
        LedgerCommand::Supply { json } => {
            let s = ledger.supply()?;
            if json {
                println!("{}", serde_json::json!(s));
            } else {
                println!("supply cap   {}", nano_to_bly(s.cap.nano()));
                println!("circulating  {}", nano_to_bly(s.circulating.nano()));
                println!("unminted     {}", nano_to_bly(s.unminted.nano()));
                println!("burned       {}", nano_to_bly(s.burned.nano()));
                println!("postings     {}", s.postings);
                println!("accounts     {}", s.accounts);
            }
        }
        LedgerCommand::Anchor { json } => {
            let chain = crate::open_store(data_dir)?;
            let blocks = ledger.anchor(
                &chain,
                &crate::node_key(data_dir)?,
                blyan_ledger::ANCHOR_BATCH_DEFAULT,
                now_ms(),
            )?;
            if json {
                println!("{}", serde_json::json!(blocks));
            } else if blocks.is_empty() {
                println!("every posting is already anchored");
            } else {
                for b in blocks {
                    println!(
                        "ledger block {} at height {}: postings {}..{} root {}",
                        b.block,
                        b.height,
                        b.first_seq,
                        b.first_seq + b.count,
                        b.root
                    );
                }
            }
        }
        LedgerCommand::Audit { sql_only, json } => {
            let chain = if sql_only {
                None
            } else {
                Some(crate::open_store(data_dir).context(
                    "the chain half of the audit needs the block store; while the node runs, \
                     ask it (curl http://127.0.0.1:8420/ledger/audit) or pass --sql-only",
                )?)
            };
            let report = ledger.audit(chain.as_ref())?;
            if json {
                println!("{}", serde_json::json!(report));
            } else {
                println!(
                    "{} ledger: {} postings over {} accounts; {} anchored in {} ledger blocks, {} not yet anchored{}",
                    report.backend,
                    report.postings,
                    report.accounts,
                    report.anchored,
                    report.batches,
                    report.unanchored,
                    if report.chain_checked {
                        ""
                    } else {
                        " (chain not checked)"
                    }
                );
                for d in &report.discrepancies {
                    println!("DISCREPANCY: {d}");
                }
                if report.ok {
                    println!(
                        "audit passed: postings balance, no balance is negative, the SQL store matches the chain"
                    );
                }
            }
            if !report.ok {
                if !json {
                    eprintln!("audit failed: {}", report.discrepancies[0]);
                }
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
