//! The interop error type.

use std::path::PathBuf;

use blyan_chain::{BlockError, ChainError};

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum InteropError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An input file is malformed or does not describe a model Blyan can hold.
    #[error("{path}: {reason}")]
    InvalidInput {
        /// The file (or directory).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's architecture differs from the network's.
    #[error("the checkpoint's spec differs from this network's: {reason}")]
    SpecMismatch {
        /// Which field differs.
        reason: String,
    },
    /// The export destination already has content.
    #[error("{path} exists and is not empty; refusing to overwrite")]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// The store has no model.
    #[error("the chain has no model spec; run `blyan init` or import one first")]
    NoModel,
    /// A block built from the input was refused (e.g. a NaN weight).
    #[error("block refused: {0}")]
    Block(#[from] BlockError),
    /// The store refused a block built from the input.
    #[error("block refused: {0}")]
    Refused(ChainError),
    /// The store failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl InteropError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            InteropError::Io { .. } => "io",
            InteropError::InvalidInput { .. } => "invalid_input",
            InteropError::SpecMismatch { .. } => "spec_mismatch",
            InteropError::DestinationNotEmpty { .. } => "destination_not_empty",
            InteropError::NoModel => "no_model",
            InteropError::Block(_) | InteropError::Refused(_) => "block_refused",
            InteropError::Chain(_) => "chain",
        }
    }

    /// Separates the store refusing a block from the store failing.
    pub(crate) fn appending(e: ChainError) -> InteropError {
        match e {
            ChainError::Invalid { .. } => InteropError::Refused(e),
            other => InteropError::Chain(other),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> InteropError {
        let path = path.into();
        move |source| InteropError::Io { path, source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> InteropError {
        InteropError::InvalidInput {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
