//! The `blyan` command: node, chain, inference, training, Proof of Learning and ledger in one
//! binary. This file is the command line only; the work happens in the library crates.

mod bundled;
mod chain_cmd;
mod chat_cmd;
mod expert_cmd;
mod generate_cmd;
mod interop_cmd;
mod ledger_cmd;
mod net_cmd;
mod node_cmd;
mod pol_cmd;
mod train_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use blyan_chain::genesis::{self, GENESIS_SEED, InitOutcome};
use blyan_chain::{Store, VerifyMode};
use clap::{Parser, Subcommand};

/// Blyan: a Mixture-of-Experts language model that lives on a blockchain.
#[derive(Debug, Parser)]
#[command(name = "blyan", version, about)]
struct Cli {
    /// Node data directory [default: the per-user data directory, e.g. ~/.local/share/blyan].
    #[arg(long, global = true, env = "BLYAN_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// The ledger's PostgreSQL URL (postgres://user@host:port/db) [default: the SQLite file
    /// DATA_DIR/ledger.sqlite].
    #[arg(long, global = true, env = "BLYAN_LEDGER_URL", value_name = "URL")]
    ledger_url: Option<String>,

    /// Log lines on stderr as text or as one JSON object each; which lines is `RUST_LOG`
    /// (e.g. `info`, `blyan_api=debug`) [default: info].
    #[arg(long, global = true, env = "BLYAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// A file whose first line is the keystore's passphrase. Without it the passphrase comes
    /// from BLYAN_KEY_PASSPHRASE, else from a prompt on a terminal, else it is empty.
    #[arg(long, global = true, value_name = "FILE")]
    key_passphrase_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a network in the data directory from the genesis spec and weights.
    Init(InitArgs),
    /// Initialise the data directory if needed, verify it, then run the node.
    Up(node_cmd::NodeArgs),
    /// Serve the OpenAI-compatible API and the web UI for the network in the data directory.
    Node(node_cmd::NodeArgs),
    /// Chat with a running node in the terminal, streamed.
    Chat(chat_cmd::ChatArgs),
    /// Generate text with the model on the chain.
    Generate(generate_cmd::GenerateArgs),
    /// Import a model from files into the chain.
    #[command(subcommand)]
    Import(interop_cmd::ImportCommand),
    /// Export the chain's current model to files.
    #[command(subcommand)]
    Export(interop_cmd::ExportCommand),
    /// Train the tokenizer, the genesis model, or one expert.
    #[command(subcommand)]
    Train(train_cmd::TrainCommand),
    /// Inspect and verify the block store.
    #[command(subcommand)]
    Chain(chain_cmd::ChainCommand),
    /// Create accounts and API keys.
    #[command(subcommand)]
    Account(ledger_cmd::AccountCommand),
    /// BLY balances, transfers, history, supply, anchoring and the audit.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCommand),
    /// Submit a candidate expert for Proof of Learning.
    Submit(pol_cmd::SubmitArgs),
    /// Proof of Learning: the hidden pool, status, verification and replication.
    #[command(subcommand)]
    Pol(pol_cmd::PolCommand),
    /// Export a public split of the corpus.
    #[command(subcommand)]
    Corpus(pol_cmd::CorpusCommand),
    /// Manage expert versions.
    #[command(subcommand)]
    Expert(pol_cmd::ExpertCommand),
    /// This node's identity on the peer network.
    #[command(subcommand)]
    Net(net_cmd::NetCommand),
    /// Create a node from its peers: sync the named network's chain into the data directory.
    Join(net_cmd::JoinArgs),
}

#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Start from untrained random weights and the byte-level tokenizer instead of the
    /// bundled trained genesis model (for tests and benchmarks).
    #[arg(long)]
    random_weights: bool,
    /// Seed of the random weights (with --random-weights).
    #[arg(long, default_value_t = GENESIS_SEED, requires = "random_weights")]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The corpus whose hidden split becomes the Proof-of-Learning pool [default: the King
    /// James corpus bundled in the binary].
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span (a request's id) it happened in.
    Json,
}

/// Structured logs on stderr, filtered by `RUST_LOG` (default `info`). Standard output stays
/// the commands' own output.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A subscriber set twice (never here) would keep the first; nothing to report.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli, started) {
        Ok(code) => code,
        // A reader that stops early (`blyan chain log | head`) is not an error.
        Err(e)
            if e.chain().any(|c| {
                let kind = c
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| c.downcast_ref::<serde_json::Error>()?.io_error_kind());
                kind == Some(std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, started: std::time::Instant) -> anyhow::Result<ExitCode> {
    let data_dir = match cli.data_dir {
        Some(d) => d,
        None => dirs::data_dir()
            .context("no per-user data directory on this system; pass --data-dir")?
            .join("blyan"),
    };
    let url = cli.ledger_url.as_deref();
    let _ = PASSPHRASE_FILE.set(cli.key_passphrase_file.clone());
    match cli.command {
        Command::Init(args) => init(&data_dir, url, &args).map(|_| ExitCode::SUCCESS),
        Command::Up(args) => up(&data_dir, url, &args, started),
        Command::Node(args) => {
            node_cmd::run(&data_dir, url, &args, started).map(|_| ExitCode::SUCCESS)
        }
        Command::Account(cmd) => {
            ledger_cmd::account(&data_dir, url, cmd).map(|_| ExitCode::SUCCESS)
        }
        Command::Ledger(cmd) => ledger_cmd::ledger(&data_dir, url, cmd),
        Command::Chat(args) => chat_cmd::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Generate(args) => generate_cmd::run(&data_dir, args).map(|_| ExitCode::SUCCESS),
        Command::Import(cmd) => interop_cmd::import(&data_dir, cmd).map(|_| ExitCode::SUCCESS),
        Command::Export(cmd) => interop_cmd::export(&data_dir, cmd).map(|_| ExitCode::SUCCESS),
        Command::Train(cmd) => train_cmd::run(&data_dir, cmd).map(|_| ExitCode::SUCCESS),
        Command::Chain(cmd) => chain_cmd::run(&open_store(&data_dir)?, cmd),
        Command::Submit(args) => pol_cmd::submit(&data_dir, url, args),
        Command::Pol(cmd) => pol_cmd::run(&data_dir, url, cmd),
        Command::Corpus(cmd) => pol_cmd::corpus(&data_dir, cmd),
        Command::Expert(cmd) => pol_cmd::expert(&data_dir, url, cmd),
        Command::Net(cmd) => net_cmd::run(&data_dir, cmd).map(|_| ExitCode::SUCCESS),
        Command::Join(args) => net_cmd::join(&data_dir, args).map(|_| ExitCode::SUCCESS),
    }
}

/// Where the keystore's passphrase comes from: `--key-passphrase-file`, when given.
static PASSPHRASE_FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
/// The passphrase, found once per process on first use.
static PASSPHRASE: std::sync::OnceLock<blyan_node::KeyPassphrase> = std::sync::OnceLock::new();

/// The keystore's passphrase: the first line of `--key-passphrase-file`, else
/// `BLYAN_KEY_PASSPHRASE`, else typed at a prompt when stdin is a terminal, else empty (the
/// keys are still in the standard encrypted format, under an empty passphrase; a warning
/// says so).
pub(crate) fn key_passphrase() -> anyhow::Result<blyan_node::KeyPassphrase> {
    if let Some(p) = PASSPHRASE.get() {
        return Ok(p.clone());
    }
    let found = if let Some(Some(file)) = PASSPHRASE_FILE.get() {
        read_passphrase_file(file)?.to_string()
    } else if let Ok(p) = std::env::var("BLYAN_KEY_PASSPHRASE") {
        p
    } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        rpassword::prompt_password("keystore passphrase (empty for none): ")
            .context("reading the passphrase")?
    } else {
        String::new()
    };
    if found.is_empty() {
        tracing::warn!(
            "the keystore's passphrase is empty: anyone who can read the data directory can use its keys \
             (set BLYAN_KEY_PASSPHRASE or --key-passphrase-file)"
        );
    }
    Ok(PASSPHRASE
        .get_or_init(|| blyan_node::KeyPassphrase::new(found))
        .clone())
}

/// The first line of the passphrase file `file`.
pub(crate) fn read_passphrase_file(
    file: &std::path::Path,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(file)
            .with_context(|| format!("reading the passphrase file {}", file.display()))?,
    );
    Ok(zeroize::Zeroizing::new(
        text.lines().next().unwrap_or("").to_owned(),
    ))
}

/// The keystore of `data_dir`, opened with the passphrase: one per process (a process serves
/// one data directory), so the node key is unlocked once.
pub(crate) fn keystore(data_dir: &std::path::Path) -> anyhow::Result<blyan_ledger::Keystore> {
    static KEYSTORE: std::sync::OnceLock<blyan_ledger::Keystore> = std::sync::OnceLock::new();
    let dir = data_dir.join(blyan_ledger::KEYSTORE_DIR);
    if let Some(ks) = KEYSTORE.get().filter(|ks| ks.dir() == dir) {
        return Ok(ks.clone());
    }
    let ks = blyan_ledger::Keystore::new(dir, key_passphrase()?.expose());
    let _ = KEYSTORE.set(ks.clone());
    Ok(ks)
}

/// The node's key in `data_dir`'s keystore (made on first use): it signs every block this
/// data directory's node makes.
pub(crate) fn node_key(data_dir: &std::path::Path) -> anyhow::Result<blyan_primitives::SigningKey> {
    keystore(data_dir)?
        .node_key()
        .with_context(|| format!("loading the node key of {}", data_dir.display()))
}

/// The block store inside a data directory.
pub(crate) fn open_store(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    let dir = data_dir.join("chain");
    Store::open(&dir).with_context(|| format!("opening the block store in {}", dir.display()))
}

fn init(
    data_dir: &std::path::Path,
    ledger_url: Option<&str>,
    args: &InitArgs,
) -> anyhow::Result<InitOutcome> {
    // Read first: a corpus that cannot be read must stop `init` before it writes anything.
    let corpus = bundled::corpus(args.corpus.as_deref())?;
    let store = open_store(data_dir)?;
    let key = node_key(data_dir)?;
    let blocks = if args.random_weights {
        genesis::random_genesis(args.seed, &key)
    } else {
        genesis::bundled_genesis(
            bundled::GENESIS_SPEC,
            bundled::GENESIS_TOKENIZER,
            bundled::GENESIS_WEIGHTS,
            &key,
        )
    }
    .context("building the genesis blocks")?;
    let count = blocks.len();
    let bytes: u64 = blocks.iter().map(|b| b.header.payload_len).sum();
    let outcome = genesis::init(&store, blocks)?;
    let pool = if blyan_pol::record::PolRecord::read(&store)?.commit.is_some() {
        None
    } else {
        Some(pol_cmd::build_pool(&store, data_dir, &corpus)?)
    };
    let (created, network) = match outcome {
        InitOutcome::Created { network } => (true, network),
        InitOutcome::AlreadyPresent { network } => (false, network),
    };
    let ledger = blyan_ledger::setup(
        data_dir,
        ledger_url,
        &keystore(data_dir)?,
        blyan_node::unix_ms(),
    )
    .context("creating the ledger")?;
    let operator_balance = ledger.ledger.balance(ledger.operator)?;
    if args.json {
        let out = serde_json::json!({
            "created": created,
            "network": network,
            "blocks": count,
            "payload_bytes": bytes,
            "data_dir": data_dir,
            "pool": pool.as_ref().map(|(hash, c)| serde_json::json!({
                "block": hash, "root": c.root, "items": c.items, "source": c.source,
                "validation_items": c.validation_items,
            })),
            "ledger": {
                "backend": ledger.ledger.store().backend(),
                "location": ledger.ledger.store().location(),
                "created": ledger.created,
                "operator": ledger.operator,
                "operator_available": operator_balance.available,
            },
        });
        println!("{out}");
    } else if created {
        println!("created network {network} in {}", data_dir.display());
        if let Some((_, c)) = &pool {
            println!(
                "hidden pool: {} items of {} tokens committed on chain P (root {})",
                c.items, c.item_tokens, c.root
            );
        }
        println!(
            "{count} genesis blocks, {:.1} MB of payload",
            bytes as f64 / 1e6
        );
    } else {
        println!(
            "network {network} already initialised in {}",
            data_dir.display()
        );
    }
    if !args.json {
        println!(
            "ledger ({}) operator {} holds {} BLY",
            ledger.ledger.store().backend(),
            ledger.operator,
            operator_balance.available
        );
    }
    Ok(outcome)
}

fn up(
    data_dir: &std::path::Path,
    ledger_url: Option<&str>,
    args: &node_cmd::NodeArgs,
    started: std::time::Instant,
) -> anyhow::Result<ExitCode> {
    // A data directory that already holds a network (bundled, random or imported) is run as
    // it is; an empty one gets the bundled genesis.
    let existing = {
        let store = open_store(data_dir)?;
        store.at_height(blyan_chain::ChainId::Meta, 0)?
    };
    let network = match existing {
        Some(network) => network,
        None => match init(
            data_dir,
            ledger_url,
            &InitArgs {
                random_weights: false,
                seed: GENESIS_SEED,
                json: false,
                corpus: None,
            },
        )? {
            InitOutcome::Created { network } | InitOutcome::AlreadyPresent { network } => network,
        },
    };
    let report = {
        let store = open_store(data_dir)?;
        match store.verify(VerifyMode::Links, |_| {})? {
            Ok(report) => report,
            Err(failure) => {
                chain_cmd::print_failure(&failure);
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    println!(
        "store verified: {} blocks, every header and link intact; network {network}",
        report.blocks
    );
    node_cmd::run(data_dir, ledger_url, args, started)?;
    Ok(ExitCode::SUCCESS)
}
