//! The one store trait both databases implement, and the schema they share.
//!
//! The ledger's logic is written once against [`Tx`]: statements with `$1`-style
//! placeholders and values that are 64-bit integers, text or NULL. Each backend runs them in
//! a transaction that serializes writers ([`Store::write`]), so balance checks and the
//! postings they guard can never interleave with another writer's.

use crate::LedgerError;

/// A value bound to or read from a statement.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    /// A 64-bit integer (`BIGINT`).
    Int(i64),
    /// Text.
    Text(String),
    /// SQL NULL.
    Null,
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// One row of a result.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, LedgerError> {
        match self.0.get(i) {
            Some(Value::Int(v)) => Ok(*v),
            other => Err(LedgerError::Store(format!(
                "column {i} should be an integer, is {other:?}"
            ))),
        }
    }

    /// Column `i` as an integer that may be NULL.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, LedgerError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<&str, LedgerError> {
        match self.0.get(i) {
            Some(Value::Text(v)) => Ok(v),
            other => Err(LedgerError::Store(format!(
                "column {i} should be text, is {other:?}"
            ))),
        }
    }

    /// Column `i` as text that may be NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<&str>, LedgerError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// Statements inside one transaction.
pub trait Tx {
    /// Runs a statement; returns the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, LedgerError>;
    /// Runs a query; returns its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, LedgerError>;

    /// Runs a query expected to return at most one row.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, LedgerError> {
        let mut rows = self.query(sql, params)?;
        if rows.len() > 1 {
            return Err(LedgerError::Store(format!(
                "expected at most one row, got {}: {sql}",
                rows.len()
            )));
        }
        Ok(rows.pop())
    }
}

/// A database the ledger lives in. Implemented by [`crate::SqliteStore`] and
/// [`crate::PgStore`]; the same test suite runs against both.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Runs `f` in a write transaction that no other writer (thread or process) interleaves
    /// with, and commits when it returns `Ok`; an `Err` rolls everything back. `f` may be
    /// called again if the database asks for a retry.
    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError>;

    /// Runs `f` in a read-only transaction with a consistent snapshot.
    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError>;

    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Where the data lives, without credentials.
    fn location(&self) -> String;
}

/// Runs `f` in a write transaction and returns its value.
pub(crate) fn write<T>(
    store: &dyn Store,
    mut f: impl FnMut(&mut dyn Tx) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let mut out = None;
    store.write(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| LedgerError::Store("write transaction returned nothing".into()))
}

/// Runs `f` in a read transaction and returns its value.
pub(crate) fn read<T>(
    store: &dyn Store,
    mut f: impl FnMut(&mut dyn Tx) -> Result<T, LedgerError>,
) -> Result<T, LedgerError> {
    let mut out = None;
    store.read(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    out.ok_or_else(|| LedgerError::Store("read transaction returned nothing".into()))
}

/// The schema, in statements both SQLite and PostgreSQL accept. Addresses are 40 lowercase
/// hex characters; amounts are nano-BLY in `BIGINT` (the supply cap, 10¹⁸, fits).
pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ledger_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS accounts (
        address TEXT PRIMARY KEY,
        name TEXT UNIQUE,
        kind TEXT NOT NULL,
        created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS balances (
        address TEXT NOT NULL REFERENCES accounts(address),
        book BIGINT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount >= 0),
        PRIMARY KEY (address, book))",
    "CREATE TABLE IF NOT EXISTS postings (
        seq BIGINT PRIMARY KEY,
        tx BIGINT NOT NULL,
        kind TEXT NOT NULL,
        debit TEXT NOT NULL,
        debit_book BIGINT NOT NULL,
        credit TEXT NOT NULL,
        credit_book BIGINT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0),
        reference TEXT NOT NULL,
        time_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS postings_by_debit ON postings (debit, seq)",
    "CREATE INDEX IF NOT EXISTS postings_by_credit ON postings (credit, seq)",
    "CREATE TABLE IF NOT EXISTS quotes (
        id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        tokens BIGINT NOT NULL,
        amount BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        used BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS holds (
        id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        amount BIGINT NOT NULL,
        state TEXT NOT NULL,
        captured BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS holds_by_state ON holds (state, expires_ms)",
    "CREATE TABLE IF NOT EXISTS idempotency (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        status BIGINT NOT NULL,
        body TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (account, key))",
    "CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY,
        address TEXT NOT NULL REFERENCES accounts(address),
        created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS owed (
        id BIGINT PRIMARY KEY,
        address TEXT NOT NULL,
        vesting BIGINT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0),
        paid BIGINT NOT NULL CHECK (paid >= 0 AND paid <= amount),
        reference TEXT NOT NULL,
        state TEXT NOT NULL,
        created_ms BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS owed_by_state ON owed (state, id)",
    "CREATE INDEX IF NOT EXISTS owed_by_address ON owed (address, state)",
    "CREATE TABLE IF NOT EXISTS revoked_sessions (
        jti TEXT PRIMARY KEY,
        expires_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS topups (
        payment TEXT PRIMARY KEY,
        event TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL REFERENCES accounts(address),
        amount BIGINT NOT NULL CHECK (amount > 0),
        paid_minor BIGINT NOT NULL CHECK (paid_minor > 0),
        currency TEXT NOT NULL,
        reversed BIGINT NOT NULL CHECK (reversed >= 0),
        flagged BIGINT NOT NULL CHECK (flagged >= 0),
        created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS payment_events (
        event TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        outcome TEXT NOT NULL,
        created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS emission_epochs (
        epoch BIGINT PRIMARY KEY,
        base BIGINT NOT NULL,
        minted BIGINT NOT NULL)",
];
