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
mod idempotency;
mod journal;
pub mod keyfile;
mod keystore;
mod ledger;
mod owed;
mod pg;
mod posting;
mod sql;
mod sqlite;
mod tokenomics;
mod wallet;

use std::path::Path;
use std::sync::Arc;

pub use accounts::{AccountKind, OPERATOR, SystemAccount};
pub use anchor::{ANCHOR_BATCH_DEFAULT, Anchored, AuditReport, anchored_end};
pub use billing::{Capture, Hold, Quote, Served, split_by_weight};
pub use blyan_primitives::address_of;
pub use error::{LedgerError, Refusal};
pub use idempotency::{Begin, IDEMPOTENCY_KEY_LEN_MAX, IdempotencyKey, IdempotentReply};
pub use journal::{Balance, TransferReceipt};
pub use keystore::{API_KEY_PREFIX, Keystore, is_api_key_like};
pub use ledger::{AccountInfo, HISTORY_LIMIT_MAX, Ledger, Supply, check_reference, parse_amount};
pub use owed::{OWED_PAY_ROUND_MAX, Owed, OwedTotals, Reward, Settled};
pub use pg::{PgStore, redact};
pub use posting::{Book, PostingKind, PostingRecord, REFERENCE_LEN_MAX};
pub use sql::{Row, Store, Tx, Value};
pub use sqlite::{Durability, SqliteStore};
pub use tokenomics::{BPS, Economics, Tokenomics, YEAR_MS};
pub use wallet::{
    API_KEYS_PER_ACCOUNT_MAX, ApiKeyInfo, Credited, PAYMENT_ID_LEN_MAX, Reversal, TopUp,
    TopUpRecord,
};

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

/// A ledger ready for a node: opened, initialized, with its operator account.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The ledger.
    pub ledger: Ledger,
    /// The operator's address.
    pub operator: blyan_primitives::Address,
    /// Whether this call created the ledger.
    pub created: bool,
    /// Whether this call created the operator account (and its key).
    pub operator_created: bool,
}

/// Opens the ledger of `data_dir` (PostgreSQL at `url` when given) and makes sure it is
/// ready: the tokenomics file written with the defaults if missing, the system accounts and
/// genesis allocation created, and an `operator` account, funded from the treasury, whose key
/// is the node's key ([`Keystore::node_key`]). Safe to call on every start: what exists is left alone.
pub fn setup(
    data_dir: &Path,
    url: Option<&str>,
    keystore: &Keystore,
    now_ms: u64,
) -> Result<Setup, LedgerError> {
    let path = data_dir.join(TOKENOMICS_FILE);
    if !path.exists() {
        std::fs::create_dir_all(data_dir).map_err(|source| LedgerError::Io {
            context: format!("creating {}", data_dir.display()),
            source,
        })?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, Tokenomics::default().to_toml())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| LedgerError::Io {
                context: format!("writing {}", path.display()),
                source,
            })?;
    }
    let econ = Tokenomics::load(&path)?;
    let ledger = Ledger::new(open_store(data_dir, url)?, econ);
    let created = ledger.init(now_ms)?;
    let (operator, operator_created) = match ledger.resolve(OPERATOR) {
        Ok(a) => (a, false),
        Err(e) if e.refusal() == Some(Refusal::UnknownAccount) => {
            let address = blyan_primitives::address_of(&keystore.node_key()?);
            (ledger.create_operator(address, now_ms)?, true)
        }
        Err(e) => return Err(e),
    };
    Ok(Setup {
        ledger,
        operator,
        created,
        operator_created,
    })
}
