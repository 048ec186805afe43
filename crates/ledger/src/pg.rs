//! The PostgreSQL store.
//!
//! Every write transaction first takes one transaction-scoped advisory lock, so writers from
//! any number of threads and processes run one at a time: sequence numbers stay gapless and a
//! balance read cannot go stale before the posting it guards. Reads run in `REPEATABLE READ`
//! read-only transactions and never wait for writers. Connections are pooled; statements are
//! prepared once per connection. The sync `postgres` client drives its own runtime, so call
//! this store from a plain or `spawn_blocking` thread, never from inside an async task.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, IsolationLevel, NoTls, Statement};

use crate::LedgerError;
use crate::sql::{Row, SCHEMA, Store, Tx, Value};

/// The advisory lock key writers serialize on ("BLYLEDGR").
const WRITE_LOCK: i64 = 0x424c_594c_4544_4752;

/// Attempts of a transaction the server aborted for serialization or deadlock.
const ATTEMPTS: usize = 5;

/// Idle connections kept.
const POOL_MAX: usize = 16;

struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// The ledger in a PostgreSQL database.
pub struct PgStore {
    url: String,
    schema: Option<String>,
    pool: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates the schema if needed.
    pub fn open(url: &str) -> Result<PgStore, LedgerError> {
        PgStore::open_in_schema(url, None)
    }

    /// Like [`open`](PgStore::open), with every table in the PostgreSQL schema `schema`
    /// (created if missing). Tests use one schema each.
    pub fn open_in_schema(url: &str, schema: Option<&str>) -> Result<PgStore, LedgerError> {
        if let Some(s) = schema
            && (s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(LedgerError::Store(format!(
                "schema name {s:?} must be ASCII letters, digits and underscores"
            )));
        }
        let store = PgStore {
            url: url.to_owned(),
            schema: schema.map(str::to_owned),
            pool: Mutex::new(Vec::new()),
        };
        if let Some(s) = schema {
            let mut client = Client::connect(url, NoTls)?;
            client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))?;
        }
        store.write(&mut |tx| {
            for statement in SCHEMA {
                tx.exec(statement, &[])?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    fn checkout(&self) -> Result<Conn, LedgerError> {
        while let Some(conn) = self.pool.lock().map_err(poisoned)?.pop() {
            if !conn.client.is_closed() {
                return Ok(conn);
            }
        }
        let mut client = Client::connect(&self.url, NoTls)?;
        if let Some(s) = &self.schema {
            client.batch_execute(&format!("SET search_path TO {s}"))?;
        }
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn checkin(&self, conn: Conn) {
        if conn.client.is_closed() {
            return;
        }
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < POOL_MAX
        {
            pool.push(conn);
        }
    }

    fn run(
        &self,
        write: bool,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.checkout()?;
            let result = run_once(&mut conn, write, f);
            self.checkin(conn);
            match result {
                Err(Attempt::Retry(_)) if attempt < ATTEMPTS => continue,
                Err(Attempt::Retry(e)) => return Err(e.into()),
                Err(Attempt::Fail(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }
}

enum Attempt {
    Retry(postgres::Error),
    Fail(LedgerError),
}

fn classify(e: postgres::Error) -> Attempt {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Attempt::Retry(e)
        }
        _ => Attempt::Fail(e.into()),
    }
}

fn run_once(
    conn: &mut Conn,
    write: bool,
    f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
) -> Result<(), Attempt> {
    let Conn { client, statements } = conn;
    let mut builder = client.build_transaction();
    if !write {
        builder = builder
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true);
    }
    let mut txn = builder.start().map_err(classify)?;
    if write {
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .map_err(classify)?;
    }
    let mut tx = PgTx {
        txn: &mut txn,
        statements,
        failed: None,
    };
    let outcome = f(&mut tx);
    if let Some(e) = tx.failed.take() {
        return Err(classify(e));
    }
    outcome.map_err(Attempt::Fail)?;
    txn.commit().map_err(classify)
}

struct PgTx<'a, 'b> {
    txn: &'a mut postgres::Transaction<'b>,
    statements: &'a mut HashMap<String, Statement>,
    /// The driver error behind a failed statement, kept so the caller can retry on it.
    failed: Option<postgres::Error>,
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, LedgerError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.txn.prepare(sql).map_err(|e| self.keep(e))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn keep(&mut self, e: postgres::Error) -> LedgerError {
        let error = LedgerError::Store(crate::error::pg_message(&e));
        self.failed.get_or_insert(e);
        error
    }
}

fn bind(types: &[Type], params: &[Value]) -> Result<Vec<Box<dyn ToSql + Sync>>, LedgerError> {
    if types.len() != params.len() {
        return Err(LedgerError::Store(format!(
            "statement takes {} parameters, {} given",
            types.len(),
            params.len()
        )));
    }
    types
        .iter()
        .zip(params)
        .map(|(ty, v)| -> Result<Box<dyn ToSql + Sync>, LedgerError> {
            Ok(match (v, ty) {
                (Value::Int(i), t) if *t == Type::INT4 => Box::new(
                    i32::try_from(*i)
                        .map_err(|_| LedgerError::Store(format!("{i} does not fit INT4")))?,
                ),
                (Value::Int(i), _) => Box::new(*i),
                (Value::Text(s), _) => Box::new(s.clone()),
                (Value::Null, t) if *t == Type::TEXT || *t == Type::VARCHAR => {
                    Box::new(None::<String>)
                }
                (Value::Null, _) => Box::new(None::<i64>),
            })
        })
        .collect()
}

fn value(row: &postgres::Row, i: usize) -> Result<Value, LedgerError> {
    let ty = row.columns()[i].type_();
    let bad = |e: postgres::Error| LedgerError::Store(format!("postgres column {i}: {e}"));
    Ok(if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Int)
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
        row.try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Text)
    } else if *ty == Type::VOID {
        Value::Null
    } else {
        return Err(LedgerError::Store(format!("unexpected postgres type {ty}")));
    })
}

impl Tx for PgTx<'_, '_> {
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64, LedgerError> {
        let stmt = self.statement(sql)?;
        let boxed = bind(stmt.params(), params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        self.txn.execute(&stmt, &refs).map_err(|e| self.keep(e))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, LedgerError> {
        let stmt = self.statement(sql)?;
        let boxed = bind(stmt.params(), params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
        let rows = self.txn.query(&stmt, &refs).map_err(|e| self.keep(e))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| value(r, i))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }
}

impl Store for PgStore {
    fn write(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        self.run(true, f)
    }

    fn read(
        &self,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        self.run(false, f)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        redact(&self.url)
    }
}

/// `url` with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn poisoned<T>(_: T) -> LedgerError {
    LedgerError::Store("a thread panicked holding the connection pool".into())
}
