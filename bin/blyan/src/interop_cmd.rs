//! `blyan import` and `blyan export`: Hugging Face checkpoints and GGUF files.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use blyan_interop::{GgufType, ImportOutcome, export_gguf, export_hf, import_hf};
use clap::Subcommand;

/// `blyan import …`
#[derive(Debug, Subcommand)]
pub(crate) enum ImportCommand {
    /// Import a Mixtral-layout checkpoint directory (config.json, *.safetensors,
    /// tokenizer.json): a new network in an empty data directory, otherwise new versions of
    /// the tensor groups that changed. Every block is signed by the node's key.
    Hf {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `blyan export …`
#[derive(Debug, Subcommand)]
pub(crate) enum ExportCommand {
    /// Write the current model as a Hugging Face checkpoint into DIR (new or empty).
    Hf {
        /// Destination directory.
        dir: PathBuf,
    },
    /// Write the current model as a GGUF file for llama.cpp.
    Gguf {
        /// Destination file.
        file: PathBuf,
        /// Encoding of the weight matrices.
        #[arg(long, default_value = "q8_0", value_parser = ["f32", "q8_0"])]
        r#type: String,
    },
}

pub(crate) fn import(data_dir: &Path, cmd: ImportCommand) -> anyhow::Result<()> {
    let ImportCommand::Hf { dir, json } = cmd;
    let store = crate::open_store(data_dir)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let outcome = import_hf(&store, &dir, &crate::node_key(data_dir)?, now_ms)
        .with_context(|| format!("importing {}", dir.display()))?;
    match outcome {
        ImportOutcome::Created { network, blocks } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"created": true, "network": network, "blocks": blocks})
                );
            } else {
                println!(
                    "created network {network} from {} ({blocks} blocks)",
                    dir.display()
                );
            }
        }
        ImportOutcome::Updated {
            network,
            versions,
            unchanged,
        } => {
            if json {
                let versions: serde_json::Map<String, serde_json::Value> = versions
                    .iter()
                    .map(|(name, hash)| (name.clone(), hash.to_string().into()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "created": false, "network": network,
                        "versions": versions, "unchanged": unchanged
                    })
                );
            } else {
                println!(
                    "network {network}: {} new versions, {unchanged} groups unchanged",
                    versions.len()
                );
                for (name, hash) in versions {
                    println!("  {name} {hash}");
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn export(data_dir: &Path, cmd: ExportCommand) -> anyhow::Result<()> {
    let store = crate::open_store(data_dir)?;
    match cmd {
        ExportCommand::Hf { dir } => {
            export_hf(&store, &dir).with_context(|| format!("exporting to {}", dir.display()))?;
            println!(
                "wrote config.json, tokenizer.json, model.safetensors to {}",
                dir.display()
            );
        }
        ExportCommand::Gguf { file, r#type } => {
            let ty = if r#type == "f32" {
                GgufType::F32
            } else {
                GgufType::Q8_0
            };
            export_gguf(&store, &file, ty)
                .with_context(|| format!("exporting to {}", file.display()))?;
            let len = std::fs::metadata(&file).map_or(0, |m| m.len());
            println!("wrote {} ({:.1} MB)", file.display(), len as f64 / 1e6);
        }
    }
    Ok(())
}
