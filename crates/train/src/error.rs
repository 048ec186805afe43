//! Errors of the trainer, each with a stable code.

use std::path::PathBuf;

/// Why training could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The training data holds no text.
    #[error("the training data is empty")]
    EmptyData,
    /// The training data is not UTF-8 text.
    #[error("the training data is not UTF-8 text ({reason})")]
    BinaryData {
        /// What gave it away.
        reason: String,
    },
    /// The training data is over the size limit.
    #[error("the training data is {len} bytes; the limit is {limit}")]
    DataTooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The training data is too short to train on and evaluate.
    #[error("the training data is too small: {detail}")]
    DataTooSmall {
        /// What is missing.
        detail: String,
    },
    /// The expert is not in the model.
    #[error("expert {layer}.{expert} is not in the model ({layers} layers of {experts} experts)")]
    UnknownExpert {
        /// Requested layer.
        layer: u16,
        /// Requested expert.
        expert: u16,
        /// Layers in the model.
        layers: usize,
        /// Experts per layer.
        experts: usize,
    },
    /// A hyperparameter is out of range.
    #[error("invalid parameter {name}: {detail}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Why.
        detail: String,
    },
    /// The corpus file is malformed.
    #[error("corpus line {line}: {detail}")]
    Corpus {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// A checkpoint could not be read or does not fit this run.
    #[error("checkpoint {}: {detail}", path.display())]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A candidate file is malformed.
    #[error("candidate: {detail}")]
    Candidate {
        /// What is wrong.
        detail: String,
    },
    /// A candidate file holds a NaN or an infinity.
    #[error("candidate: {tensor} holds a non-finite value at {index}")]
    NonFiniteCandidate {
        /// The tensor.
        tensor: String,
        /// The first bad value's position.
        index: usize,
    },
    /// The loss became NaN or infinite.
    #[error("the loss diverged at step {step} ({loss})")]
    Diverged {
        /// The step.
        step: u64,
        /// The loss.
        loss: f32,
    },
    /// The store holds no model.
    #[error("the data directory holds no model; run `blyan init` first")]
    NoModel,
    /// Tokenizer training or use failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor computation failed.
    #[error("compute: {0}")]
    Compute(#[from] candle_core::Error),
    /// The block store failed.
    #[error(transparent)]
    Chain(#[from] blyan_chain::ChainError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl TrainError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TrainError::EmptyData => "empty_data",
            TrainError::BinaryData { .. } => "binary_data",
            TrainError::DataTooLarge { .. } => "data_too_large",
            TrainError::DataTooSmall { .. } => "data_too_small",
            TrainError::UnknownExpert { .. } => "unknown_expert",
            TrainError::InvalidParameter { .. } => "invalid_parameter",
            TrainError::Corpus { .. } => "corpus",
            TrainError::Checkpoint { .. } => "checkpoint",
            TrainError::Candidate { .. } => "candidate",
            TrainError::NonFiniteCandidate { .. } => "non_finite_candidate",
            TrainError::Diverged { .. } => "diverged",
            TrainError::NoModel => "no_model",
            TrainError::Tokenizer(_) => "tokenizer",
            TrainError::Compute(_) => "compute",
            TrainError::Chain(_) => "chain",
            TrainError::Io { .. } => "io",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }

    pub(crate) fn invalid(name: &'static str, detail: impl Into<String>) -> TrainError {
        TrainError::InvalidParameter {
            name,
            detail: detail.into(),
        }
    }
}
