//! Hugging Face checkpoints and GGUF files to and from chain blocks.
//!
//! [`import_hf`] reads a Mixtral-layout checkpoint directory (`config.json`, `*.safetensors`,
//! `tokenizer.json`) into a new network or as new version blocks of an existing one;
//! [`export_hf`] writes the chain's current model back in the same layout, and [`export_gguf`]
//! writes a GGUF file with the metadata and tensor names llama.cpp expects of a Mixtral.

#![warn(missing_docs)]

mod error;
mod gguf;
mod hf;

pub use error::InteropError;
pub use gguf::{GgufType, export_gguf};
pub use hf::{HfConfig, ImportOutcome, export_hf, import_hf};
