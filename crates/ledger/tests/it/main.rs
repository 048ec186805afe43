//! One suite, run against both stores: every test below is instantiated for SQLite and for
//! PostgreSQL (a real server: `BLYAN_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, one fresh schema per test).

#![allow(clippy::unwrap_used)]

mod crash;
mod suite;

use std::path::PathBuf;
use std::sync::Arc;

use blyan_ledger::{Durability, Economics, Ledger, PgStore, SqliteStore, Store, Tokenomics};

/// The PostgreSQL server the suite uses.
pub(crate) fn pg_url() -> String {
    std::env::var("BLYAN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where a test's ledger lives; dropping it removes the data.
#[derive(Debug)]
pub(crate) enum Place {
    Sqlite(tempfile::TempDir),
    Pg(String),
}

impl Place {
    pub(crate) fn new(backend: &str) -> Place {
        match backend {
            "sqlite" => Place::Sqlite(tempfile::tempdir().unwrap()),
            _ => {
                let mut bytes = [0u8; 8];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                Place::Pg(format!("t_{}", hex::encode(bytes)))
            }
        }
    }

    pub(crate) fn sqlite_path(&self) -> Option<PathBuf> {
        match self {
            Place::Sqlite(d) => Some(d.path().join("ledger.sqlite")),
            Place::Pg(_) => None,
        }
    }

    /// A new connection to this place's store (several may be open at once).
    pub(crate) fn open(&self) -> Arc<dyn Store> {
        match self {
            Place::Sqlite(d) => Arc::new(
                SqliteStore::open(&d.path().join("ledger.sqlite"), Durability::Normal).unwrap(),
            ),
            Place::Pg(schema) => Arc::new(
                PgStore::open_in_schema(&pg_url(), Some(schema)).unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {} is needed for the ledger suite: {e}",
                        pg_url()
                    )
                }),
            ),
        }
    }

    pub(crate) fn ledger(&self, econ: Economics) -> Ledger {
        Ledger::new(self.open(), econ)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Place::Pg(schema) = self
            && let Ok(mut c) = ::postgres::Client::connect(&pg_url(), ::postgres::NoTls)
        {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// The default economics with a small genesis so tests read easily.
pub(crate) fn econ() -> Economics {
    Tokenomics {
        genesis_allocation: "1000000".into(),
        operator_grant: "1000".into(),
        ..Tokenomics::default()
    }
    .check()
    .unwrap()
}

/// Every test in `suite`, once per backend.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { crate::suite::$name("sqlite"); } )*
        }
        mod postgres {
            $( #[test] fn $name() { crate::suite::$name("postgres"); } )*
        }
    };
}

both!(
    init_is_idempotent_and_balanced,
    transfers_move_exact_amounts,
    bad_input_is_refused_and_posts_nothing,
    idempotent_transfers_post_once,
    billing_captures_exactly_and_splits,
    expert_hosts_are_paid_from_the_operators_share,
    void_and_expiry_release_everything,
    idempotency_of_requests,
    mint_respects_inflation_and_supply_caps,
    history_pages_newest_first,
    api_keys_bind_accounts,
    anchoring_and_audit_agree,
    audit_names_tampering,
    concurrent_transfers_never_overdraw,
    concurrent_idempotent_retries_charge_once,
    random_operation_sequences_keep_the_books,
    killed_writer_leaves_no_partial_transfer,
    batches_are_all_or_nothing,
    rewards_beyond_the_caps_are_owed_and_never_lost,
    wallets_manage_their_keys_and_revoked_sessions_persist,
    topups_credit_once_and_refunds_take_back_what_is_unspent,
);
