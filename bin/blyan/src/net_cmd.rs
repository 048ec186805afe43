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
