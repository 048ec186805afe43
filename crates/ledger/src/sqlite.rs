//! The embedded store: one SQLite file in WAL mode.
//!
//! Writers take SQLite's write lock up front (`BEGIN IMMEDIATE`), so a balance read inside a
//! write transaction cannot go stale before the posting it guards; other processes wait on
//! the busy timeout. Within a process one connection behind a mutex serves everyone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::LedgerError;
use crate::sql::{Row, SCHEMA, Store, Tx, Value};

/// How long a writer waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Durability of a commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a crash of the process, and the
    /// database stays consistent through power loss, which may lose the last commits.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is on disk before it returns.
    Full,
}

/// WAL pages after which a writer checkpoints by itself: a backstop for when the background
/// checkpointer cannot keep up (64 MiB at 4 KiB pages).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The ledger in a SQLite file.
///
/// Checkpoints (copying the WAL into the database file and syncing it) run on a thread of
/// their own with its own connection, so a commit on the request path never waits for one:
/// that is what keeps the p99 of a billing step under a millisecond.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.checkpointer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn checkpoint_loop(path: PathBuf, stop: Arc<AtomicBool>) {
    let Ok(conn) = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return;
    };
    let _ = conn.busy_timeout(Duration::from_millis(50));
    loop {
        std::thread::park_timeout(CHECKPOINT_EVERY);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // PASSIVE never blocks writers; whatever it cannot copy now it copies next round.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore, LedgerError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        let stop = Arc::new(AtomicBool::new(false));
        let checkpointer = {
            let (path, stop) = (path.to_owned(), stop.clone());
            std::thread::Builder::new()
                .name("blyan-ledger-checkpoint".into())
                .spawn(move || checkpoint_loop(path, stop))
                .map_err(|source| LedgerError::Io {
                    context: "starting the ledger checkpointer".into(),
                    source,
                })?
        };
        let store = SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            stop,
            checkpointer: Some(checkpointer),
        };
        store.write(&mut |tx| {
            for statement in SCHEMA {
                tx.exec(statement, &[])?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    fn run(
        &self,
        behavior: TransactionBehavior,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let mut conn = self.conn.lock().map_err(|_| {
            LedgerError::Store("a thread panicked inside a ledger transaction".into())
        })?;
        let txn = conn.transaction_with_behavior(behavior)?;
        let mut tx = SqliteTx { conn: &txn };
        f(&mut tx)?;
        txn.commit()?;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        self.run(TransactionBehavior::Immediate, f)
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        self.run(TransactionBehavior::Deferred, f)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

struct SqliteTx<'a> {
    conn: &'a Connection,
}

/// `$1` placeholders become SQLite's `?1`.
fn dialect(sql: &str) -> String {
    sql.replace('$', "?")
}

fn bind(params: &[Value]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|v| match v {
            Value::Int(i) => rusqlite::types::Value::Integer(*i),
            Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Value::Null => rusqlite::types::Value::Null,
        })
        .collect()
}

impl Tx for SqliteTx<'_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, LedgerError> {
        let mut stmt = self.conn.prepare_cached(&dialect(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(bind(params)))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, LedgerError> {
        let mut stmt = self.conn.prepare_cached(&dialect(sql))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(bind(params)))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t)
                            .map_err(|e| LedgerError::Store(format!("sqlite text: {e}")))?
                            .to_owned(),
                    ),
                    other => {
                        return Err(LedgerError::Store(format!(
                            "unexpected sqlite value {:?}",
                            other.data_type()
                        )));
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}
