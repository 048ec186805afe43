//! The model crate's error type, with a stable code per variant.

use blyan_chain::ChainError;
use blyan_primitives::Hash;
use blyan_tokenizer::TokenizerError;

/// Why loading the model or generating failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The store has no spec block, so there is no model to load.
    #[error("the chain has no model spec; run `blyan init` first")]
    NoModel,
    /// No block holds a part of the model.
    #[error("{part}: no block on the chain holds it")]
    PartMissing {
        /// Which part, e.g. `expert 2.5` or `model.layers.0.self_attn`.
        part: String,
    },
    /// A part's block, or its payload, is absent from the store.
    #[error("{part}: block {block} is missing from the store")]
    BlockMissing {
        /// Which part.
        part: String,
        /// The block that should hold it.
        block: Hash,
    },
    /// A part's block is present but its payload is damaged or does not fit the spec.
    #[error("{part}: block {block} is corrupt: {reason}")]
    BlockCorrupt {
        /// Which part.
        part: String,
        /// The damaged block.
        block: Hash,
        /// What is wrong with it.
        reason: String,
    },
    /// `--expert-version` named a block that is not a version of that expert.
    #[error("block {block} is not a version of expert {expert}")]
    UnknownExpertVersion {
        /// The expert, as `L.E`.
        expert: String,
        /// The pinned block.
        block: Hash,
    },
    /// A request parameter is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// The accepted range, or what is wrong.
        reason: String,
    },
    /// The prompt leaves no room in the context window.
    #[error("prompt is {tokens} tokens; the context window holds {context_len}")]
    PromptTooLong {
        /// Prompt length, the BOS token included.
        tokens: usize,
        /// The model's context window.
        context_len: usize,
    },
    /// The model cannot run this configuration (e.g. int8 with a width not divisible by 32).
    #[error("unsupported: {reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// The batching engine has shut down.
    #[error("the generation engine has stopped")]
    EngineStopped,
    /// Tokenizing the prompt or decoding output failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Reading the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl ModelError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::NoModel => "no_model",
            ModelError::PartMissing { .. } => "part_missing",
            ModelError::BlockMissing { .. } => "block_missing",
            ModelError::BlockCorrupt { .. } => "block_corrupt",
            ModelError::UnknownExpertVersion { .. } => "unknown_expert_version",
            ModelError::InvalidParameter { .. } => "invalid_parameter",
            ModelError::PromptTooLong { .. } => "prompt_too_long",
            ModelError::Unsupported { .. } => "unsupported",
            ModelError::EngineStopped => "engine_stopped",
            ModelError::Tokenizer(_) => "tokenizer",
            ModelError::Chain(_) => "chain",
            ModelError::Compute(_) => "compute",
        }
    }

    /// Whether the caller's input caused the error (as opposed to the node's state).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            ModelError::UnknownExpertVersion { .. }
                | ModelError::InvalidParameter { .. }
                | ModelError::PromptTooLong { .. }
                | ModelError::Tokenizer(TokenizerError::TextTooLong { .. })
        )
    }
}
