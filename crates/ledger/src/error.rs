//! Why a ledger operation failed: a [`Refusal`] (the request broke a rule; nothing was
//! posted) or a fault of the store underneath.

use std::fmt;

use serde::Serialize;

/// Why the ledger refused an operation. Discriminants and codes are stable: clients match on
/// them, and they are counted in `/metrics` by code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u16)]
pub enum Refusal {
    /// The payer's available balance is smaller than the amount.
    InsufficientFunds = 1,
    /// No account has this address or name.
    UnknownAccount = 2,
    /// The amount is zero where a positive amount is required.
    ZeroAmount = 3,
    /// The amount, or a sum it takes part in, overflows.
    AmountOverflow = 4,
    /// Payer and payee are the same account.
    SelfTransfer = 5,
    /// An address is not `0x` and 40 hex characters, or its checksum is wrong.
    MalformedAddress = 6,
    /// An idempotency key was reused with a different request.
    IdempotencyKeyReused = 7,
    /// No quote has this id.
    UnknownQuote = 8,
    /// The quote's time to live has passed.
    QuoteExpired = 9,
    /// No hold has this id.
    UnknownHold = 10,
    /// The hold was already captured, voided or expired.
    HoldNotActive = 11,
    /// A capture larger than the hold.
    CaptureExceedsHold = 12,
    /// A mint beyond this epoch's share of the yearly inflation cap.
    InflationCapReached = 13,
    /// A mint beyond the supply cap.
    SupplyCapReached = 14,
    /// System accounts other than the treasury cannot be paid from by a transfer.
    SystemAccount = 15,
    /// The account already exists.
    AccountExists = 16,
    /// The API key is not known.
    UnknownApiKey = 17,
    /// A malformed amount (sign, exponent, too many decimals).
    MalformedAmount = 18,
    /// A text field is too long or holds control characters.
    InvalidReference = 19,
    /// The ledger was opened with tokenomics that disagree with the ones it was created with.
    TokenomicsMismatch = 20,
    /// The ledger has not been initialized (`blyan init`).
    NotInitialized = 21,
    /// No top-up was made for this payment.
    UnknownPayment = 22,
    /// The account holds as many API keys as one account may.
    ApiKeyLimit = 23,
}

impl Refusal {
    /// Every refusal, for metrics and documentation.
    pub const ALL: [Refusal; 23] = [
        Refusal::InsufficientFunds,
        Refusal::UnknownAccount,
        Refusal::ZeroAmount,
        Refusal::AmountOverflow,
        Refusal::SelfTransfer,
        Refusal::MalformedAddress,
        Refusal::IdempotencyKeyReused,
        Refusal::UnknownQuote,
        Refusal::QuoteExpired,
        Refusal::UnknownHold,
        Refusal::HoldNotActive,
        Refusal::CaptureExceedsHold,
        Refusal::InflationCapReached,
        Refusal::SupplyCapReached,
        Refusal::SystemAccount,
        Refusal::AccountExists,
        Refusal::UnknownApiKey,
        Refusal::MalformedAmount,
        Refusal::InvalidReference,
        Refusal::TokenomicsMismatch,
        Refusal::NotInitialized,
        Refusal::UnknownPayment,
        Refusal::ApiKeyLimit,
    ];

    /// The stable snake-case code.
    pub const fn code(self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::UnknownAccount => "unknown_account",
            Refusal::ZeroAmount => "zero_amount",
            Refusal::AmountOverflow => "amount_overflow",
            Refusal::SelfTransfer => "self_transfer",
            Refusal::MalformedAddress => "malformed_address",
            Refusal::IdempotencyKeyReused => "idempotency_key_reused",
            Refusal::UnknownQuote => "unknown_quote",
            Refusal::QuoteExpired => "quote_expired",
            Refusal::UnknownHold => "unknown_hold",
            Refusal::HoldNotActive => "hold_not_active",
            Refusal::CaptureExceedsHold => "capture_exceeds_hold",
            Refusal::InflationCapReached => "inflation_cap_reached",
            Refusal::SupplyCapReached => "supply_cap_reached",
            Refusal::SystemAccount => "system_account",
            Refusal::AccountExists => "account_exists",
            Refusal::UnknownApiKey => "unknown_api_key",
            Refusal::MalformedAmount => "malformed_amount",
            Refusal::InvalidReference => "invalid_reference",
            Refusal::TokenomicsMismatch => "tokenomics_mismatch",
            Refusal::NotInitialized => "ledger_not_initialized",
            Refusal::UnknownPayment => "unknown_payment",
            Refusal::ApiKeyLimit => "api_key_limit",
        }
    }

    /// The stable numeric code (the discriminant).
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// The HTTP status this refusal maps to.
    pub const fn http_status(self) -> u16 {
        match self {
            Refusal::InsufficientFunds => 402,
            Refusal::UnknownAccount
            | Refusal::UnknownQuote
            | Refusal::UnknownHold
            | Refusal::UnknownPayment => 404,
            Refusal::IdempotencyKeyReused => 422,
            Refusal::HoldNotActive
            | Refusal::QuoteExpired
            | Refusal::AccountExists
            | Refusal::ApiKeyLimit => 409,
            Refusal::UnknownApiKey => 401,
            Refusal::SystemAccount => 403,
            Refusal::InflationCapReached
            | Refusal::SupplyCapReached
            | Refusal::TokenomicsMismatch
            | Refusal::NotInitialized => 503,
            _ => 400,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The operation broke a rule; nothing was posted.
    #[error("{detail} [{refusal}]")]
    Refused {
        /// Which rule.
        refusal: Refusal,
        /// The specifics, for people.
        detail: String,
    },
    /// The database failed or holds something this code cannot read.
    #[error("ledger store: {0}")]
    Store(String),
    /// A file (keystore, tokenomics) could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The tokenomics file is invalid.
    #[error("tokenomics: {0}")]
    Tokenomics(String),
    /// The chain refused or failed an anchor batch.
    #[error(transparent)]
    Chain(#[from] blyan_chain::ChainError),
}

impl LedgerError {
    /// A refusal with its detail.
    pub fn refused(refusal: Refusal, detail: impl Into<String>) -> LedgerError {
        LedgerError::Refused {
            refusal,
            detail: detail.into(),
        }
    }

    /// The refusal, when this is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            LedgerError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Refused { refusal, .. } => refusal.code(),
            LedgerError::Store(_) => "ledger_store",
            LedgerError::Io { .. } => "ledger_io",
            LedgerError::Tokenomics(_) => "invalid_tokenomics",
            LedgerError::Chain(_) => "chain",
        }
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> LedgerError {
        LedgerError::Store(format!("sqlite: {e}"))
    }
}

impl From<postgres::Error> for LedgerError {
    fn from(e: postgres::Error) -> LedgerError {
        LedgerError::Store(pg_message(&e))
    }
}

/// A PostgreSQL error with the server's message and SQLSTATE when there is one.
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => format!("postgres: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_numbers_are_unique() {
        let codes: HashSet<_> = Refusal::ALL.iter().map(|r| r.code()).collect();
        let numbers: HashSet<_> = Refusal::ALL.iter().map(|r| r.number()).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
        assert_eq!(numbers.len(), Refusal::ALL.len());
        assert_eq!(Refusal::InsufficientFunds.http_status(), 402);
    }
}
