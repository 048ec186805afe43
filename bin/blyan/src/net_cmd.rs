//! `blyan net`: this node's network identity.

use std::path::Path;

use blyan_net::Identity;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum NetCommand {
    /// This node's network key and the account address it is bound to.
    Id {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The node's network identity: the network key from the keystore (made on first use),
/// bound to the node's account key.
pub(crate) fn identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let ks = crate::keystore(data_dir)?;
    let seed = ks.network_secret_or_new()?;
    let account = ks.node_key()?;
    Ok(Identity::new(&seed, &account))
}

pub(crate) fn run(data_dir: &Path, cmd: NetCommand) -> anyhow::Result<()> {
    match cmd {
        NetCommand::Id { json } => {
            let id = identity(data_dir)?;
            let key = id.public_key().to_string();
            let binding = format!("0x{}", hex::encode(id.binding().0));
            if json {
                let out = serde_json::json!({
                    "key": key,
                    "address": id.address().to_string(),
                    "binding": binding,
                });
                println!("{out}");
            } else {
                println!("key      {key}");
                println!("address  {}", id.address());
                println!("binding  {binding}");
            }
            Ok(())
        }
    }
}

/// Settings of `blyan join`.
#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The network to join: the hash of its spec block (`network` in a node's `GET /node`).
    #[arg(long, value_name = "GENESIS_HASH")]
    network: blyan_primitives::Hash,
    /// A peer to sync from, `KEY@HOST:PORT`: its network key (`blyan net id`) and the
    /// address of its API, whose read path anyone may use. Repeat it to fetch from several
    /// peers at once.
    #[arg(long = "bootstrap", required = true, value_name = "KEY@HOST:PORT")]
    bootstrap: Vec<blyan_net::Bootstrap>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_s: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// `blyan join`: fills the data directory's block store from peers, checking every block,
/// and returns once it holds what they hold. `blyan up` then serves it.
pub(crate) fn join(data_dir: &Path, args: JoinArgs) -> anyhow::Result<()> {
    let store = std::sync::Arc::new(crate::open_store(data_dir)?);
    let json = args.json;
    let mut last = std::time::Instant::now();
    let report = blyan_net::join(
        store,
        args.network,
        &args.bootstrap,
        std::time::Duration::from_secs(args.timeout_s),
        move |snap| {
            if !json && last.elapsed() >= std::time::Duration::from_secs(1) {
                last = std::time::Instant::now();
                eprintln!(
                    "syncing: {} blocks stored, {} in flight, {:.1} MB received",
                    snap.stats.imported,
                    snap.wanted,
                    snap.stats.bytes_in as f64 / 1e6
                );
            }
        },
    )?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "joined network {}: {} blocks, {:.1} MB in {:.1} s ({:.1} MB/s) from {} peers",
            report.network,
            report.blocks,
            report.bytes as f64 / 1e6,
            report.seconds,
            report.mb_per_s,
            report.snapshot.peers.len()
        );
        for p in &report.snapshot.peers {
            println!(
                "  peer {}: {} blocks served, {} bans",
                p.key, p.blocks_from, p.bans
            );
        }
        println!("run it with: blyan up --data-dir {}", data_dir.display());
    }
    Ok(())
}
