//! `blyan net`: this node's network identity.

use std::path::Path;

use anyhow::Context;

use blyan_net::Identity;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum NetCommand {
    /// This node's network key and the account address it is bound to.
    Id {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The peers a running node follows: key, API address, round trip, blocks, bans.
    Peers {
        /// The node's API.
        #[arg(long, env = "BLYAN_URL", default_value = "http://127.0.0.1:8420")]
        url: String,
        /// Print the node's JSON answer instead of a table.
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
        NetCommand::Peers { url, json } => {
            let target = format!("{}/net/peers", url.trim_end_matches('/'));
            let report: serde_json::Value = ureq::get(&target)
                .call()
                .with_context(|| format!("asking {target}"))?
                .body_mut()
                .read_json()
                .with_context(|| format!("reading the reply of {target}"))?;
            if json {
                println!("{report}");
                return Ok(());
            }
            let peers = report["peers"].as_array().cloned().unwrap_or_default();
            if peers.is_empty() {
                println!("this node follows no peer");
            }
            for p in peers {
                let rtt = p["rtt_ms"]
                    .as_f64()
                    .map_or("-".to_owned(), |r| format!("{r:.1} ms"));
                let banned = p["banned_for_ms"]
                    .as_u64()
                    .map_or(String::new(), |ms| format!(", banned {} s more", ms / 1000));
                println!(
                    "{}  {}  rtt {rtt}  blocks from {} / to {}  bans {}{banned}",
                    p["key"].as_str().unwrap_or("?"),
                    p["api"].as_str().unwrap_or("?"),
                    p["blocks_from"],
                    p["blocks_to"],
                    p["bans"]
                );
            }
            Ok(())
        }
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
    /// Payload bytes asked for per request, in KiB: smaller chunks spread one large block
    /// over more requests (and peers answer each sooner).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(4..=1024))]
    chunk_kib: u32,
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
        args.chunk_kib * 1024,
        move |snap| {
            if last.elapsed() >= std::time::Duration::from_millis(500) {
                last = std::time::Instant::now();
                let from: Vec<String> = snap
                    .peers
                    .iter()
                    .map(|p| format!("{}={}", &p.key[..8], p.blocks_from))
                    .collect();
                eprintln!(
                    "syncing: {} blocks stored, {} in flight, {:.1} MB received; from {}",
                    snap.stats.imported,
                    snap.wanted,
                    snap.stats.bytes_in as f64 / 1e6,
                    from.join(" ")
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

/// The node's blocks as the sync engine sees them: the chain store, plus the node's
/// follow-up for every block a peer delivers (the same as for its own: verdicts recorded,
/// new expert heads served).
#[derive(Debug)]
struct NodeBlocks {
    chain: blyan_net::ChainStore,
    node: std::sync::Arc<blyan_node::Node>,
}

impl blyan_net::BlockStore for NodeBlocks {
    fn genesis(&self) -> blyan_primitives::Hash {
        self.chain.genesis()
    }
    fn heads(&self) -> Result<Vec<blyan_net::Head>, blyan_net::ImportError> {
        self.chain.heads()
    }
    fn has(&self, hash: &blyan_primitives::Hash) -> Result<bool, blyan_net::ImportError> {
        self.chain.has(hash)
    }
    fn header(
        &self,
        hash: &blyan_primitives::Hash,
    ) -> Result<Option<blyan_net::SignedHeader>, blyan_net::ImportError> {
        self.chain.header(hash)
    }
    fn hashes(
        &self,
        chain: u8,
        from: u64,
        max: u32,
    ) -> Result<Vec<blyan_primitives::Hash>, blyan_net::ImportError> {
        self.chain.hashes(chain, from, max)
    }
    fn chunk(
        &self,
        hash: &blyan_primitives::Hash,
        offset: u64,
        len: u32,
    ) -> Result<Option<Vec<u8>>, blyan_net::ImportError> {
        self.chain.chunk(hash, offset, len)
    }
    fn check_header(
        &self,
        hash: &blyan_primitives::Hash,
        header: &[u8],
        signature: &[u8],
    ) -> Result<blyan_chain::BlockHeader, blyan_net::ImportError> {
        self.chain.check_header(hash, header, signature)
    }
    fn import(&self, block: blyan_chain::Block) -> Result<(), blyan_net::ImportError> {
        let (hash, header) = (block.hash(), block.header.clone());
        self.chain.import(block)?;
        if let Err(e) = self.node.on_appended(hash, &header) {
            tracing::warn!(%hash, error = %e, "follow-up of a block from a peer failed");
        }
        Ok(())
    }
}

/// Starts following `peers` on a thread of its own until `stop` is set; the node hears the
/// engine's state once a second (the `network` component and metrics).
pub(crate) fn follow_peers(
    node: std::sync::Arc<blyan_node::Node>,
    peers: Vec<blyan_net::Bootstrap>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let blocks = std::sync::Arc::new(NodeBlocks {
        chain: blyan_net::ChainStore::new(node.store().clone(), node.network()),
        node: node.clone(),
    });
    let expected = peers.len();
    println!(
        "following    {} peers: {}",
        expected,
        peers
            .iter()
            .map(|p| p.addr.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::thread::Builder::new()
        .name("blyan-sync".into())
        .spawn(move || {
            let addrs: std::collections::BTreeMap<String, String> = peers
                .iter()
                .map(|p| (p.key.to_string(), p.addr.clone()))
                .collect();
            blyan_net::follow(blocks, &peers, stop, move |snap| {
                let s = blyan_net::SyncStatus::of(snap, expected);
                let report: Vec<serde_json::Value> = snap
                    .peers
                    .iter()
                    .map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        v["api"] = serde_json::json!(addrs.get(&p.key));
                        v
                    })
                    .collect();
                node.set_network_view(
                    blyan_node::NetworkView {
                        expected: s.expected,
                        present: s.present,
                        lag_blocks: s.lag_blocks,
                        bans: s.bans,
                        imported: s.imported,
                    },
                    serde_json::Value::Array(report),
                );
            });
        })
        .context("starting the sync thread")
}
