//! Postings: the one kind of ledger entry, and its canonical encoding for the chain.

use blyan_primitives::{Address, Amount, codec};
use borsh::{BorshDeserialize, BorshSerialize};
use serde::Serialize;

use crate::LedgerError;

/// Which balance of an account a posting moves.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Serialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Book {
    /// Spendable.
    Available = 0,
    /// Held for a request in flight.
    Pending = 1,
}

impl Book {
    /// The number stored in SQL.
    pub const fn number(self) -> i64 {
        self as i64
    }

    /// The book stored as `n`.
    pub fn from_number(n: i64) -> Result<Book, LedgerError> {
        match n {
            0 => Ok(Book::Available),
            1 => Ok(Book::Pending),
            _ => Err(LedgerError::Store(format!("unknown book {n}"))),
        }
    }
}

/// Why a posting was made. Discriminants are part of the anchored encoding.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Serialize,
    BorshSerialize,
    BorshDeserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PostingKind {
    /// The genesis allocation from the emission account to the treasury.
    Genesis = 0,
    /// A transfer between accounts.
    Transfer = 1,
    /// New supply from the emission account (rewards), within the inflation cap.
    Mint = 2,
    /// Funds moved from available to pending for a request in flight.
    Hold = 3,
    /// Held funds returned to available (void, expiry, or the unused part of a capture).
    Release = 4,
    /// The inference fee, from the payer's pending book to the fee pool.
    Fee = 5,
    /// A contributor's share of a fee.
    Royalty = 6,
    /// The operator's share of a fee.
    OperatorShare = 7,
    /// Supply destroyed: moved to the burn account, which can never pay.
    Burn = 8,
    /// An expert host's share of a fee, for the experts it computed for the serving node.
    HostShare = 9,
}

impl PostingKind {
    /// Every kind, for metrics.
    pub const ALL: [PostingKind; 10] = [
        PostingKind::Genesis,
        PostingKind::Transfer,
        PostingKind::Mint,
        PostingKind::Hold,
        PostingKind::Release,
        PostingKind::Fee,
        PostingKind::Royalty,
        PostingKind::OperatorShare,
        PostingKind::Burn,
        PostingKind::HostShare,
    ];

    /// The snake-case name stored in SQL and shown to people.
    pub const fn as_str(self) -> &'static str {
        match self {
            PostingKind::Genesis => "genesis",
            PostingKind::Transfer => "transfer",
            PostingKind::Mint => "mint",
            PostingKind::Hold => "hold",
            PostingKind::Release => "release",
            PostingKind::Fee => "fee",
            PostingKind::Royalty => "royalty",
            PostingKind::OperatorShare => "operator_share",
            PostingKind::Burn => "burn",
            PostingKind::HostShare => "host_share",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Result<PostingKind, LedgerError> {
        PostingKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| LedgerError::Store(format!("unknown posting kind {s:?}")))
    }
}

/// Longest posting reference in bytes.
pub const REFERENCE_LEN_MAX: usize = 128;

/// One posting: `amount` leaves `debit`'s `debit_book` and enters `credit`'s `credit_book`.
/// Its Borsh bytes are what a ledger batch on the chain commits to.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, BorshSerialize, BorshDeserialize)]
pub struct PostingRecord {
    /// Position in the ledger, from 0, without gaps.
    pub seq: u64,
    /// The operation this posting belongs to; one operation may post several times.
    pub tx: u64,
    /// Why.
    pub kind: PostingKind,
    /// The account paying.
    pub debit: Address,
    /// The payer's book.
    pub debit_book: Book,
    /// The account paid.
    pub credit: Address,
    /// The payee's book.
    pub credit_book: Book,
    /// Nano-BLY moved; never zero.
    pub amount: Amount,
    /// The hold, transfer or reward this belongs to (at most [`REFERENCE_LEN_MAX`] bytes).
    pub reference: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl PostingRecord {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<PostingRecord, LedgerError> {
        codec::decode(bytes, blyan_chain::LEDGER_POSTING_LEN_MAX)
            .map_err(|e| LedgerError::Store(format!("posting encoding: {e}")))
    }

    /// The JSON shown to people: amounts as nano-BLY integers, addresses checksummed.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "tx": self.tx,
            "kind": self.kind.as_str(),
            "debit": self.debit,
            "debit_book": self.debit_book,
            "credit": self.credit,
            "credit_book": self.credit_book,
            "amount": self.amount.nano(),
            "reference": self.reference,
            "time_ms": self.time_ms,
        })
    }
}
