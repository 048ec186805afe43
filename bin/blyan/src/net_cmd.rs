//! `blyan net`: this node's network identity.

use std::path::Path;

use anyhow::Context;

use blyan_net::Identity;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum NetCommand {
    /// This node's network key, the account address it is bound to and its p2p address:
    /// what others pass to `--peer` / `--bootstrap`, and what the operator admits.
    Id {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The p2p address to report [default: `p2p_dialable`, else `p2p_listen`, of the
        /// config file or the environment].
        #[arg(long, env = "BLYAN_P2P_LISTEN", value_name = "ADDR")]
        p2p_listen: Option<std::net::SocketAddr>,
    },
    /// Give a network key a role (or take it away) with an admission block on the meta
    /// chain: offline on this data directory, or through a running node's operator-only API
    /// with --url. Only the network's operator may.
    Admit {
        /// The network key (`blyan net id` of the node admitted), 64 hex digits.
        key: String,
        /// host (serves experts) or validator (evaluates candidates).
        #[arg(long, value_parser = ["host", "validator"])]
        role: String,
        /// Take the role away instead.
        #[arg(long)]
        remove: bool,
        /// The operator node's API (else the data directory is written directly; stop its
        /// node first).
        #[arg(long)]
        url: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The admitted keys and their roles, from this data directory's meta chain (or a running
    /// node's, with --url).
    Registry {
        /// A node's API.
        #[arg(long)]
        url: Option<String>,
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
    /// Who hosts what: the experts a running node computes for others, and, per expert
    /// host it knows, the expert blocks it serves, its queue, latency, calls answered and
    /// failed, and whether it is banned.
    Experts {
        /// The node's API.
        #[arg(long, env = "BLYAN_URL", default_value = "http://127.0.0.1:8420")]
        url: String,
        /// Print the node's JSON answer instead of text.
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

/// The p2p address a node configured for `data_dir` tells others to dial, if any.
fn p2p_address(
    data_dir: &Path,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let config = crate::node_cmd::node_config(data_dir, None, &Default::default())?;
    Ok(config.p2p_dialable.or(listen).or(config.p2p_listen))
}

/// What `blyan net id --json` and `GET /net/id` show.
pub(crate) fn identity_json(id: &Identity, p2p: Option<std::net::SocketAddr>) -> serde_json::Value {
    serde_json::json!({
        "key": id.public_key().to_string(),
        "address": id.address().to_string(),
        "binding": format!("0x{}", hex::encode(id.binding().0)),
        "p2p_listen": p2p.map(|a| a.to_string()),
    })
}

fn get_json(url: &str) -> anyhow::Result<serde_json::Value> {
    ureq::get(url)
        .call()
        .with_context(|| format!("asking {url}"))?
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the reply of {url}"))
}

pub(crate) fn run(data_dir: &Path, cmd: NetCommand) -> anyhow::Result<()> {
    match cmd {
        NetCommand::Admit {
            key,
            role,
            remove,
            url,
            json,
        } => admit(data_dir, &key, &role, !remove, url.as_deref(), json),
        NetCommand::Registry { url, json } => {
            let members = match url {
                Some(url) => {
                    get_json(&format!("{}/net/registry", url.trim_end_matches('/')))?["members"]
                        .clone()
                }
                None => {
                    let store = crate::open_store(data_dir)?;
                    let registry = blyan_chain::Registry::of(&store)?;
                    serde_json::to_value(registry.members.into_values().collect::<Vec<_>>())?
                }
            };
            if json {
                println!("{}", serde_json::json!({ "members": members }));
                return Ok(());
            }
            let list = members.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no key is admitted");
            }
            for m in list {
                let roles: Vec<&str> = m["roles"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                println!("{}  {}", m["key"].as_str().unwrap_or("?"), roles.join(","));
            }
            Ok(())
        }
        NetCommand::Experts { url, json } => {
            let report = get_json(&format!("{}/experts/hosted", url.trim_end_matches('/')))?;
            if json {
                println!("{report}");
                return Ok(());
            }
            let experts = report["experts"].as_array().cloned().unwrap_or_default();
            println!(
                "this node ({}) computes {} ({} expert versions); {} calls for peers; {} of its calls answered remotely in {} requests ({} hedged to a second host), {} computed here when no host answered, {} spot-checked; {} unreadable blocks repaired from peers",
                report["account"].as_str().unwrap_or("?"),
                report["hosted"].as_str().unwrap_or("*"),
                experts.len(),
                report["computed_for_peers"],
                report["remote_calls"],
                report["requests"],
                report["hedged"],
                report["fallbacks"],
                report["checked"],
                report["repaired"],
            );
            let hosts = report["hosts"].as_array().cloned().unwrap_or_default();
            if hosts.is_empty() {
                println!("it knows no expert host");
            }
            for h in hosts {
                let mut banned = h["banned"]
                    .as_str()
                    .map_or(String::new(), |r| format!("  BANNED: {r}"));
                if h["admitted"] == false {
                    banned.push_str("  NOT ADMITTED as a host: never called");
                }
                println!(
                    "{}  {}  {} expert blocks  queue {}  latency {:.2} ms  answered {} failed {}  seen {} ms ago{banned}",
                    h["api"].as_str().unwrap_or("?"),
                    h["account"].as_str().unwrap_or("?"),
                    h["blocks"].as_array().map_or(0, Vec::len),
                    h["queue"],
                    h["latency_ms"].as_f64().unwrap_or(0.0),
                    h["answered"],
                    h["failed"],
                    h["seen_ms_ago"],
                );
            }
            Ok(())
        }
        NetCommand::Peers { url, json } => {
            let report = get_json(&format!("{}/net/peers", url.trim_end_matches('/')))?;
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
                    "{}  {}  {}  {}  rtt {rtt}  blocks from {} / to {}  bans {}{banned}",
                    p["key"].as_str().unwrap_or("?"),
                    p["address"].as_str().unwrap_or("-"),
                    p["transport"].as_str().unwrap_or("?"),
                    p["api"].as_str().unwrap_or("-"),
                    p["blocks_from"],
                    p["blocks_to"],
                    p["bans"]
                );
            }
            Ok(())
        }
        NetCommand::Id { json, p2p_listen } => {
            let id = identity(data_dir)?;
            let out = identity_json(&id, p2p_address(data_dir, p2p_listen)?);
            if json {
                println!("{out}");
            } else {
                println!("key         {}", out["key"].as_str().unwrap_or(""));
                println!("address     {}", out["address"].as_str().unwrap_or(""));
                println!("binding     {}", out["binding"].as_str().unwrap_or(""));
                println!(
                    "p2p_listen  {}",
                    out["p2p_listen"].as_str().unwrap_or("(none)")
                );
            }
            Ok(())
        }
    }
}

/// `blyan net admit`.
fn admit(
    data_dir: &Path,
    key: &str,
    role: &str,
    admitted: bool,
    url: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let parsed = blyan_net::parse_key(key).map_err(|e| anyhow::anyhow!("[invalid_key] {e}"))?;
    let role: blyan_chain::Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let out = match url {
        Some(url) => {
            let target = format!("{}/net/admit", url.trim_end_matches('/'));
            let mut response = ureq::post(&target)
                .config()
                .http_status_as_error(false)
                .build()
                .send_json(serde_json::json!({
                    "key": key,
                    "role": role,
                    "admitted": admitted,
                }))
                .with_context(|| format!("asking {target}"))?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response
                .body_mut()
                .read_json()
                .with_context(|| format!("reading the reply of {target}"))?;
            if status != 200 {
                anyhow::bail!(
                    "[{}] {}",
                    body["error"]["code"].as_str().unwrap_or("refused"),
                    body["error"]["message"].as_str().unwrap_or("")
                );
            }
            body
        }
        None => {
            let store = crate::open_store(data_dir)?;
            let signer = crate::keystore(data_dir)?.node_key()?;
            let bytes = blyan_net::key_bytes(&parsed);
            let block = blyan_node::admission_block(
                &store,
                &signer,
                bytes,
                role,
                admitted,
                blyan_node::unix_ms(),
            )
            .map_err(|e| anyhow::anyhow!("[{}] {e}", e.code()))?;
            let hash = store.append(block)?;
            serde_json::json!({
                "block": hash,
                "key": hex::encode(bytes),
                "role": role,
                "admitted": admitted,
            })
        }
    };
    if json {
        println!("{out}");
    } else {
        println!(
            "{} {} as {role} in block {}",
            if admitted { "admitted" } else { "removed" },
            out["key"].as_str().unwrap_or(key),
            out["block"].as_str().unwrap_or("?")
        );
    }
    Ok(())
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

/// What a node of the p2p network needs at start.
pub(crate) struct P2pStart {
    /// Where to listen.
    pub listen: std::net::SocketAddr,
    /// Where others reach it.
    pub dialable: std::net::SocketAddr,
}

/// An HTTP client for a peer's small answers: two seconds at most.
fn short_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(2)))
        .build()
        .into()
}

/// The `GET /net/id` answer of the node whose API is at `addr`, if it gives one.
fn net_id_of(agent: &ureq::Agent, addr: &str) -> Option<serde_json::Value> {
    agent
        .get(&format!("http://{addr}/net/id"))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()
}

/// The p2p addresses of `peers`, from their `GET /net/id`, for those that listen on one and
/// whose answer names the key we know them by. Each is asked a few times over about five
/// seconds (a peer may be starting too); the others are left to the HTTP read path.
fn p2p_bootstrappers(
    peers: &[blyan_net::Bootstrap],
) -> Vec<(blyan_net::PeerKey, std::net::SocketAddr)> {
    let agent = short_agent();
    let mut found = Vec::new();
    for p in peers {
        for attempt in 0..5 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            let Some(id) = net_id_of(&agent, &p.addr) else {
                continue;
            };
            if id["key"].as_str() != Some(p.key.to_string().as_str()) {
                tracing::warn!(peer = %p.addr, "its /net/id names another key; not dialled over p2p");
                break;
            }
            if let Some(addr) = id["p2p_listen"].as_str().and_then(|a| a.parse().ok()) {
                found.push((p.key.clone(), addr));
            }
            break;
        }
    }
    found
}

/// The account address each peer's binding proves, by key, from its `GET /net/id`.
fn peer_addresses(peers: &[blyan_net::Bootstrap]) -> std::collections::BTreeMap<String, String> {
    let agent = short_agent();
    let mut out = std::collections::BTreeMap::new();
    for p in peers {
        let Some(id) = net_id_of(&agent, &p.addr) else {
            continue;
        };
        let (Some(address), Some(binding)) = (id["address"].as_str(), id["binding"].as_str())
        else {
            continue;
        };
        let (Ok(address), Ok(binding)) = (
            address.parse::<blyan_primitives::Address>(),
            hex::decode(binding.trim_start_matches("0x"))
                .ok()
                .and_then(|b| blyan_primitives::Signature::from_slice(&b).ok())
                .ok_or(()),
        ) else {
            continue;
        };
        if blyan_net::check_binding(&p.key, &address, &binding) {
            out.insert(p.key.to_string(), address.to_string());
        }
    }
    out
}

/// The admitted keys of `node`'s network and the meta chain's height they were read at;
/// `last` is the previous answer, reused while that height is the same.
fn members(
    node: &blyan_node::Node,
    last: &mut Option<(u64, Vec<blyan_net::PeerKey>)>,
) -> (u64, Vec<blyan_net::PeerKey>) {
    let version = node
        .store()
        .head(blyan_chain::ChainId::Meta)
        .ok()
        .flatten()
        .map_or(0, |(h, _)| h);
    // The registry changes only with the meta chain: read it again only when that grew.
    if let Some((v, keys)) = last.as_ref()
        && *v == version
    {
        return (version, keys.clone());
    }
    let keys: Vec<blyan_net::PeerKey> = node
        .registry()
        .map(|r| {
            r.members
                .keys()
                .filter_map(blyan_net::key_of_bytes)
                .collect()
        })
        .unwrap_or_default();
    *last = Some((version, keys.clone()));
    (version, keys)
}

/// Starts following `peers` on a thread of its own until `stop` is set; the node hears the
/// engines' state once a second (the `network` component and metrics). With `p2p`, the node
/// also joins the authenticated network of admitted keys: the operator's node admits its own
/// key as a validator first, and every block the node stores is announced there at once.
pub(crate) fn follow_peers(
    data_dir: &Path,
    node: std::sync::Arc<blyan_node::Node>,
    peers: Vec<blyan_net::Bootstrap>,
    p2p: Option<P2pStart>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let id = identity(data_dir)?;
    node.set_net_identity(identity_json(&id, p2p.as_ref().map(|p| p.dialable)));
    if p2p.is_some() && node.is_writer() {
        let me = blyan_net::key_bytes(&id.public_key());
        let registry = node.registry()?;
        if !registry.has(&me, blyan_chain::Role::Validator) {
            let block = node.admit(
                me,
                blyan_chain::Role::Validator,
                true,
                blyan_node::unix_ms(),
            )?;
            println!("admitted     this node's key as a validator (block {block})");
        }
    }
    let blocks = std::sync::Arc::new(NodeBlocks {
        chain: blyan_net::ChainStore::new(node.store().clone(), node.network()),
        node: node.clone(),
    });
    let expected = peers.len();
    if expected > 0 {
        println!(
            "following    {} peers: {}",
            expected,
            peers
                .iter()
                .map(|p| p.addr.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(p) = &p2p {
        println!("p2p          {} (key {})", p.dialable, id.public_key());
    }
    std::thread::Builder::new()
        .name("blyan-sync".into())
        .spawn(move || {
            let apis: std::collections::BTreeMap<String, String> = peers
                .iter()
                .map(|p| (p.key.to_string(), p.addr.clone()))
                .collect();
            let mut addresses = peer_addresses(&peers);
            let settings = p2p.map(|p| {
                let n = node.clone();
                blyan_net::P2pSettings {
                    identity: id,
                    network: node.network(),
                    listen: p.listen,
                    dialable: p.dialable,
                    bootstrappers: p2p_bootstrappers(&peers),
                    members: {
                        let mut last = None;
                        Box::new(move || members(&n, &mut last))
                    },
                }
            });
            let gossip_node = node.clone();
            let on_gossip = move |handle: blyan_net::Handle| {
                gossip_node.on_block(move |hash| handle.announce(hash));
            };
            let mut asked = std::time::Instant::now();
            let known = peers.clone();
            blyan_net::follow(blocks, &peers, settings, stop, on_gossip, move |report| {
                if addresses.len() < known.len()
                    && asked.elapsed() >= std::time::Duration::from_secs(30)
                {
                    asked = std::time::Instant::now();
                    addresses = peer_addresses(&known);
                }
                let http = blyan_net::SyncStatus::of(&report.http, expected);
                let gossip = report
                    .p2p
                    .as_ref()
                    .map(|s| blyan_net::SyncStatus::of(s, s.peers.len()));
                let mut rows: Vec<serde_json::Value> = Vec::new();
                for (transport, snap) in std::iter::once(("http", &report.http))
                    .chain(report.p2p.iter().map(|s| ("p2p", s)))
                {
                    for p in &snap.peers {
                        let mut v = serde_json::to_value(p).unwrap_or_default();
                        v["transport"] = serde_json::json!(transport);
                        v["api"] = serde_json::json!(apis.get(&p.key));
                        v["address"] = serde_json::json!(addresses.get(&p.key));
                        rows.push(v);
                    }
                }
                // A peer may be reached both ways: the better view of the two counts.
                node.set_network_view(
                    blyan_node::NetworkView {
                        expected: http.expected.max(gossip.map_or(0, |g| g.expected)),
                        present: http.present.max(gossip.map_or(0, |g| g.present)),
                        lag_blocks: http.lag_blocks.max(gossip.map_or(0, |g| g.lag_blocks)),
                        bans: http.bans + gossip.map_or(0, |g| g.bans),
                        imported: http.imported + gossip.map_or(0, |g| g.imported),
                    },
                    serde_json::Value::Array(rows),
                );
            });
        })
        .context("starting the sync thread")
}
