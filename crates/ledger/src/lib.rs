//! The BLY ledger.
//!
//! Double-entry postings in integer nano-BLY over one [`Store`] trait with two backends,
//! [`SqliteStore`] (embedded, the default) and [`PgStore`] (PostgreSQL). On top: accounts
//! and the system accounts, transfers, capped minting, billing holds
//! (quote → authorize → capture / void / expire) with idempotency keys, the tokenomics file,
//! the keystore, and batches of postings anchored on the ledger chain with an audit that
//! checks the SQL store against the chain.

#![warn(missing_docs)]

mod accounts;
mod anchor;
mod billing;
mod error;
mod keystore;
mod ledger;
mod pg;
mod posting;
mod sql;
mod sqlite;
mod tokenomics;

use std::path::Path;
use std::sync::Arc;

pub use accounts::{AccountKind, OPERATOR, SystemAccount};
pub use anchor::{ANCHOR_BATCH_DEFAULT, Anchored, AuditReport, anchored_end};
pub use billing::{
    Begin, Capture, Hold, IDEMPOTENCY_KEY_LEN_MAX, IdempotencyKey, IdempotentReply, Quote,
    split_by_weight,
};
pub use error::{LedgerError, Refusal};
pub use keystore::{API_KEY_PREFIX, Keystore, address_of};
pub use ledger::{
    AccountInfo, Balance, HISTORY_LIMIT_MAX, Ledger, Supply, TransferReceipt, check_reference,
    parse_amount,
};
pub use pg::{PgStore, redact};
pub use posting::{Book, PostingKind, PostingRecord, REFERENCE_LEN_MAX};
pub use sql::{Row, Store, Tx, Value};
pub use sqlite::{Durability, SqliteStore};
pub use tokenomics::{BPS, Economics, Tokenomics, YEAR_MS};

/// File name of the SQLite ledger inside a data directory.
pub const SQLITE_FILE: &str = "ledger.sqlite";

/// File name of the tokenomics inside a data directory.
pub const TOKENOMICS_FILE: &str = "tokenomics.toml";

/// Directory name of the keystore inside a data directory.
pub const KEYSTORE_DIR: &str = "keystore";

/// Opens the ledger store a node uses: PostgreSQL when `url` is given
/// (`postgres://…`), otherwise the SQLite file in `data_dir`.
pub fn open_store(data_dir: &Path, url: Option<&str>) -> Result<Arc<dyn Store>, LedgerError> {
    match url {
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Ok(Arc::new(PgStore::open(u)?))
        }
        Some(u) if u.starts_with("sqlite://") => Ok(Arc::new(SqliteStore::open(
            Path::new(&u["sqlite://".len()..]),
            Durability::Normal,
        )?)),
        Some(u) => Err(LedgerError::Store(format!(
            "ledger URL {:?} is neither postgres://… nor sqlite://PATH",
            redact(u)
        ))),
        None => Ok(Arc::new(SqliteStore::open(
            &data_dir.join(SQLITE_FILE),
            Durability::Normal,
        )?)),
    }
}

/// The economics of `data_dir` (its `tokenomics.toml`, or the defaults when it has none).
pub fn load_economics(data_dir: &Path) -> Result<Economics, LedgerError> {
    let path = data_dir.join(TOKENOMICS_FILE);
    if path.exists() {
        Tokenomics::load(&path)
    } else {
        Tokenomics::default().check()
    }
}
