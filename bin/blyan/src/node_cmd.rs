//! `blyan node` and `blyan up`: serve the API and web UI until SIGINT or SIGTERM.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context;
use blyan_node::{ConfigLayer, Node, NodeConfig};

/// Settings of `blyan node` / `blyan up`. Each overrides the environment variable named
/// beside it, which overrides the config file, which overrides the defaults.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct NodeArgs {
    /// TOML config file [default: DATA_DIR/blyan.toml if it exists].
    #[arg(long, env = "BLYAN_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Address of the API and web UI [default: 127.0.0.1:8420].
    #[arg(long, env = "BLYAN_LISTEN", value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Precision of the served weights, f32 or int8 [default: int8].
    #[arg(long, env = "BLYAN_PRECISION", value_parser = ["f32", "int8"])]
    precision: Option<String>,
    /// Byte budget of the expert cache, in MiB [default: 256].
    #[arg(long, env = "BLYAN_EXPERT_CACHE_MIB")]
    expert_cache_mib: Option<usize>,
    /// Most sequences decoded together [default: 64].
    #[arg(long, env = "BLYAN_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Engine lanes (0: one per core).
    #[arg(long, env = "BLYAN_LANES")]
    lanes: Option<usize>,
    /// Most generations in flight before requests are refused [default: 256].
    #[arg(long, env = "BLYAN_MAX_ACTIVE")]
    max_active: Option<usize>,
    /// Account billed for keyless requests from loopback addresses; "" makes every request
    /// bring an API key (do that behind a reverse proxy) [default: operator].
    #[arg(long, env = "BLYAN_LOOPBACK_ACCOUNT", value_name = "ACCOUNT")]
    loopback_account: Option<String>,
    /// Seconds between anchoring rounds of ledger postings on the chain; 0 never [default: 60].
    #[arg(long, env = "BLYAN_ANCHOR_INTERVAL_S")]
    anchor_interval_s: Option<u64>,
    /// Proof-of-Learning mode: pol, hybrid or pow [default: pol].
    #[arg(long, env = "BLYAN_POL_MODE", value_parser = ["pol", "hybrid", "pow"])]
    pol_mode: Option<String>,
    /// A peer to follow, `KEY@HOST:PORT` (its network key and API address); repeat it, or
    /// give a comma-separated list in the environment [default: none].
    #[arg(
        long = "peer",
        env = "BLYAN_PEERS",
        value_delimiter = ',',
        value_name = "KEY@HOST:PORT"
    )]
    peers: Vec<String>,
    /// Listen for the authenticated p2p network of admitted nodes on ADDR, where blocks are
    /// pushed as soon as they are stored [default: none, pull over HTTP only].
    #[arg(long, env = "BLYAN_P2P_LISTEN", value_name = "ADDR")]
    p2p_listen: Option<std::net::SocketAddr>,
    /// The address other nodes dial to reach the p2p listener [default: --p2p-listen].
    #[arg(long, env = "BLYAN_P2P_DIALABLE", value_name = "ADDR")]
    p2p_dialable: Option<std::net::SocketAddr>,
    /// The URL people open the web UI at, `http(s)://host[:port]`: wallet logins must name
    /// it [default: http:// and --listen].
    #[arg(long, env = "BLYAN_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// The experts this node computes itself, e.g. `0.*,1.0-1.3`; the others are asked of
    /// expert hosts (`--expert-host`, and the peers) [default: `*`, all].
    #[arg(long, env = "BLYAN_EXPERTS", value_name = "SET")]
    experts: Option<String>,
    /// The API address of a node that computes experts for this one; repeat it, or give a
    /// comma-separated list in the environment [default: the peers].
    #[arg(
        long = "expert-host",
        env = "BLYAN_EXPERT_HOSTS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    expert_hosts: Vec<String>,
    /// The EIP-155 chain id wallet logins must name [default: 1].
    #[arg(long, env = "BLYAN_SIWE_CHAIN_ID", value_name = "ID")]
    siwe_chain_id: Option<u64>,
}

impl NodeArgs {
    fn layer(&self, ledger_url: Option<&str>) -> ConfigLayer {
        ConfigLayer {
            ledger_url: ledger_url.map(str::to_owned),
            loopback_account: self.loopback_account.clone(),
            anchor_interval_s: self.anchor_interval_s,
            listen: self.listen,
            precision: self.precision.clone(),
            expert_cache_mib: self.expert_cache_mib,
            max_batch: self.max_batch,
            lanes: self.lanes,
            max_active: self.max_active,
            pol_mode: self.pol_mode.clone(),
            peers: (!self.peers.is_empty()).then(|| self.peers.clone()),
            p2p_listen: self.p2p_listen,
            p2p_dialable: self.p2p_dialable,
            public_url: self.public_url.clone(),
            experts: self.experts.clone(),
            expert_hosts: (!self.expert_hosts.is_empty()).then(|| self.expert_hosts.clone()),
            siwe_chain_id: self.siwe_chain_id,
            // Secrets come from the environment only, never from a flag (flags show in `ps`).
            stripe_api_key: std::env::var("BLYAN_STRIPE_API_KEY").ok(),
            stripe_webhook_secret: std::env::var("BLYAN_STRIPE_WEBHOOK_SECRET").ok(),
            stripe_api_base: std::env::var("BLYAN_STRIPE_API_BASE").ok(),
            ..ConfigLayer::default()
        }
    }
}

/// The settings: defaults, then the config file, then environment and flags.
pub(crate) fn node_config(
    data_dir: &Path,
    ledger_url: Option<&str>,
    args: &NodeArgs,
) -> anyhow::Result<NodeConfig> {
    let mut config = NodeConfig::default();
    let file = match &args.config {
        Some(f) => Some(f.clone()),
        None => Some(data_dir.join("blyan.toml")).filter(|f| f.exists()),
    };
    if let Some(file) = file {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading the config file {}", file.display()))?;
        let layer = ConfigLayer::from_toml(&text)
            .with_context(|| format!("in the config file {}", file.display()))?;
        config
            .apply(&layer)
            .with_context(|| format!("in the config file {}", file.display()))?;
    }
    config.apply(&args.layer(ledger_url))?;
    config.key_passphrase = crate::key_passphrase()?;
    Ok(config)
}

pub(crate) fn run(
    data_dir: &Path,
    ledger_url: Option<&str>,
    args: &NodeArgs,
    started: Instant,
) -> anyhow::Result<()> {
    let config = node_config(data_dir, ledger_url, args)?;
    let peers = config
        .peers
        .iter()
        .map(|p| p.parse::<blyan_net::Bootstrap>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("[invalid_config] peers: {e}"))?;
    let p2p = match (config.p2p_listen, config.p2p_dialable) {
        (None, None) => None,
        (None, Some(_)) => {
            anyhow::bail!("[invalid_config] p2p_dialable is set but p2p_listen is not")
        }
        (Some(listen), dialable) => {
            let dialable = dialable.unwrap_or(listen);
            if dialable.ip().is_unspecified() || dialable.port() == 0 {
                anyhow::bail!(
                    "[invalid_config] p2p: others cannot dial {dialable}; set p2p_dialable"
                );
            }
            Some(crate::net_cmd::P2pStart { listen, dialable })
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blyan-api")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let dir = data_dir.to_owned();
        let node =
            tokio::task::spawn_blocking(move || Node::open(&dir, config, blyan_api::unix_ms()))
                .await
                .context("loading the node")??;
        let node = Arc::new(node);
        let info = node.info();
        println!(
            "node of network {} serving {} ({} layers × {} experts, top-{}) from {}",
            info.network,
            info.precision,
            info.layers,
            info.experts,
            info.top_k,
            data_dir.display()
        );
        println!("web UI       http://{addr}/");
        println!(
            "OpenAI API   http://{addr}/v1   (model \"{}\")",
            blyan_api::MODEL_ID
        );
        println!("health       http://{addr}/health   metrics http://{addr}/metrics");
        println!(
            "ledger       {} at {}; keyless local requests bill {}",
            node.ledger().store().backend(),
            node.ledger().store().location(),
            match node.config().loopback_account.as_str() {
                "" => "nobody (API keys required)".to_owned(),
                who => who.to_owned(),
            }
        );
        println!(
            "ready in {:.2} s; Ctrl-C stops the node",
            started.elapsed().as_secs_f64()
        );
        tracing::info!(
            listen = %addr,
            network = %info.network,
            precision = %info.precision,
            "serving"
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let follower = if peers.is_empty() && p2p.is_none() {
            // A node on its own still says who it is.
            node.set_net_identity(crate::net_cmd::identity_json(
                &crate::net_cmd::identity(data_dir)?,
                None,
            ));
            None
        } else {
            Some(crate::net_cmd::follow_peers(
                data_dir,
                node.clone(),
                peers,
                p2p,
                stop.clone(),
            )?)
        };
        blyan_api::serve(node.clone(), listener, shutdown_signal())
            .await
            .context("serving the API")?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(f) = follower {
            let _ = tokio::task::spawn_blocking(move || f.join()).await;
        }
        println!(
            "stopped cleanly ({} generations were in flight)",
            node.active_generations()
        );
        anyhow::Ok(())
    })
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: refusing new requests, finishing streams");
}
