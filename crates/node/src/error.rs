//! The node crate's error type, with a stable code per variant.

use blyan_chain::ChainError;
use blyan_model::ModelError;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The settings are invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory holds no network.
    #[error("no network in {0}; run `blyan init` first")]
    NoNetwork(String),
    /// The model refused or failed a request.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The caller asked for something that does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A request parameter is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The prompt plus the requested tokens do not fit the context window.
    #[error(
        "this model's context window is {context_len} tokens; the prompt has {prompt_tokens} and {max_tokens} more were requested"
    )]
    ContextLengthExceeded {
        /// The model's window.
        context_len: usize,
        /// Prompt tokens, BOS included.
        prompt_tokens: usize,
        /// Requested completion tokens.
        max_tokens: u32,
    },
    /// Too many generations are in flight.
    #[error("the node is busy: {active} generations in flight (limit {limit}); retry later")]
    Overloaded {
        /// Generations in flight.
        active: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The node is shutting down and takes no new work.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node may not write blocks on its network: it joined from peers and is not the
    /// network's operator (admission through the chain comes with the registry).
    #[error(
        "this node follows network {network} and may not write blocks on it (its key {key} is not admitted); {what} needs the network's operator node"
    )]
    NotAdmitted {
        /// The network.
        network: String,
        /// This node's address.
        key: String,
        /// What was asked.
        what: &'static str,
    },
    /// The network admits its members through the registry, and the caller of a members'
    /// call (an expert computation) did not prove it is one.
    #[error("{reason}")]
    CallerNotAdmitted {
        /// What was missing or wrong.
        reason: String,
    },
    /// Encoding the node's own state or metrics failed (a bug, not bad input).
    #[error("internal: {0}")]
    Internal(String),
    /// The request carries no usable credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The ledger refused or failed an operation.
    #[error(transparent)]
    Ledger(#[from] blyan_ledger::LedgerError),
    /// Proof of Learning refused a submission or replication before a verdict.
    #[error("{message}")]
    Pol {
        /// The stable reason.
        refusal: crate::pol::PolRefusal,
        /// What happened, for people.
        message: String,
    },
    /// A wallet login was refused.
    #[error("{0}")]
    Login(blyan_auth::AuthError),
    /// A session token was refused.
    #[error("{0}")]
    Session(blyan_auth::SessionError),
    /// A card payment or its webhook was refused or failed.
    #[error("{message}")]
    Payment {
        /// The stable code.
        code: &'static str,
        /// The HTTP status it maps to.
        status: u16,
        /// What happened, for people (never a secret).
        message: String,
    },
    /// File-system work failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl NodeError {
    /// The ledger's refusal behind this error, if that is what it is.
    pub fn refusal(&self) -> Option<blyan_ledger::Refusal> {
        match self {
            NodeError::Ledger(e) => e.refusal(),
            _ => None,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Config(_) => "invalid_config",
            NodeError::NoNetwork(_) => "no_network",
            NodeError::Model(e) => e.code(),
            NodeError::Chain(_) => "chain",
            NodeError::NotFound { .. } => "not_found",
            NodeError::InvalidParameter { .. } => "invalid_parameter",
            NodeError::ContextLengthExceeded { .. } => "context_length_exceeded",
            NodeError::Overloaded { .. } => "overloaded",
            NodeError::ShuttingDown => "shutting_down",
            NodeError::NotAdmitted { .. } => "not_admitted",
            NodeError::CallerNotAdmitted { .. } => "caller_not_admitted",
            NodeError::Internal(_) => "internal",
            NodeError::Io { .. } => "io",
            NodeError::Ledger(e) => e.code(),
            NodeError::Unauthorized(_) => "missing_api_key",
            NodeError::Pol { refusal, .. } => refusal.code(),
            NodeError::Login(e) => e.code(),
            NodeError::Session(e) => e.code(),
            NodeError::Payment { code, .. } => code,
        }
    }

    /// Whether the caller's input caused the error (as opposed to the node's state).
    pub fn is_client_error(&self) -> bool {
        match self {
            NodeError::Model(e) => e.is_client_error(),
            NodeError::NotFound { .. }
            | NodeError::InvalidParameter { .. }
            | NodeError::ContextLengthExceeded { .. } => true,
            NodeError::Ledger(e) => e.refusal().is_some_and(|r| r.http_status() < 500),
            NodeError::Pol { refusal, .. } => refusal.http_status() < 500,
            NodeError::Login(_) | NodeError::Session(_) => true,
            NodeError::Payment { status, .. } => *status < 500,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let context = context.into();
        move |source| NodeError::Io { context, source }
    }
}
