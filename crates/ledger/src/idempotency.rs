//! Idempotency records: a client's key bound to its request's bytes and paying account, so
//! that a retried request answers with the first reply and charges once, even when retries
//! race.

use blyan_primitives::{Address, Hash};

use crate::journal::{hex, now_i64};
use crate::sql::{Tx, Value};
use crate::{LedgerError, Refusal};

/// Longest idempotency key in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// The stored outcome of an idempotent request, to answer a retry with.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IdempotentReply {
    /// HTTP status of the first answer.
    pub status: u16,
    /// Its body.
    pub body: String,
}

/// What [`Ledger::idempotency_begin`] found.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Begin {
    /// The key is new (or its earlier attempt failed or was abandoned): go ahead.
    Fresh,
    /// The request already completed: answer with this.
    Done(IdempotentReply),
    /// The same request is running right now: wait and ask again.
    InFlight,
}

/// An idempotency key with the request it belongs to, scoped to the paying account.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IdempotencyKey {
    /// The paying account.
    pub account: Address,
    /// The client's key.
    pub key: String,
    /// SHA-256 of the request body, hex.
    pub request: String,
}

impl IdempotencyKey {
    /// A key for `body` under `key`, checked: 1 to 255 printable ASCII characters.
    pub fn new(account: Address, key: &str, body: &[u8]) -> Result<IdempotencyKey, LedgerError> {
        check_key(key)?;
        Ok(IdempotencyKey {
            account,
            key: key.to_owned(),
            request: Hash::of(body).to_string(),
        })
    }
}

fn check_key(key: &str) -> Result<(), LedgerError> {
    if key.is_empty()
        || key.len() > IDEMPOTENCY_KEY_LEN_MAX
        || !key.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(LedgerError::refused(
            Refusal::InvalidReference,
            format!(
                "an idempotency key is 1 to {IDEMPOTENCY_KEY_LEN_MAX} printable ASCII characters"
            ),
        ));
    }
    Ok(())
}

pub(crate) enum Stored {
    Done { status: u16, body: String },
    InFlight,
}

/// The record under (`account`, `key`), refusing one made for a different request (`request`
/// is the SHA-256 hex of the request). A
/// pending record older than `stale_after_ms` is treated as abandoned (its process died).
pub(crate) fn idem_lookup(
    tx: &mut dyn Tx,
    account: &Address,
    key: &str,
    request: &str,
    now_ms: u64,
    stale_after_ms: u64,
) -> Result<Option<Stored>, LedgerError> {
    check_key(key)?;
    let Some(row) = tx.query_opt(
        "SELECT request_hash, state, status, body, created_ms FROM idempotency
         WHERE account = $1 AND key = $2",
        &[hex(account), key.into()],
    )?
    else {
        return Ok(None);
    };
    if row.text(0)? != request {
        return Err(LedgerError::refused(
            Refusal::IdempotencyKeyReused,
            format!("idempotency key {key:?} was used for a different request"),
        ));
    }
    match row.text(1)? {
        "done" => Ok(Some(Stored::Done {
            status: u16::try_from(row.int(2)?).unwrap_or(500),
            body: row.text(3)?.to_owned(),
        })),
        _ => {
            let created = u64::try_from(row.int(4)?).unwrap_or(0);
            if now_ms.saturating_sub(created) > stale_after_ms {
                tx.exec(
                    "DELETE FROM idempotency WHERE account = $1 AND key = $2",
                    &[hex(account), key.into()],
                )?;
                Ok(None)
            } else {
                Ok(Some(Stored::InFlight))
            }
        }
    }
}

/// Records the finished request under its key (inserting or completing a pending record).
pub(crate) fn idem_store(
    tx: &mut dyn Tx,
    account: &Address,
    key: &str,
    request: &str,
    status: u16,
    body: &str,
    now_ms: u64,
) -> Result<(), LedgerError> {
    let updated = tx.exec(
        "UPDATE idempotency SET state = 'done', status = $3, body = $4
         WHERE account = $1 AND key = $2",
        &[
            hex(account),
            key.into(),
            Value::Int(status.into()),
            body.into(),
        ],
    )?;
    if updated == 0 {
        tx.exec(
            "INSERT INTO idempotency (account, key, request_hash, state, status, body, created_ms)
             VALUES ($1, $2, $3, 'done', $4, $5, $6)",
            &[
                hex(account),
                key.into(),
                request.to_owned().into(),
                Value::Int(status.into()),
                body.into(),
                now_i64(now_ms),
            ],
        )?;
    }
    Ok(())
}

/// Records `reply` as the answer of the request under `key` ([`idem_store`] for a billed
/// request's key).
pub(crate) fn store_reply(
    tx: &mut dyn Tx,
    key: &IdempotencyKey,
    reply: &IdempotentReply,
    now_ms: u64,
) -> Result<(), LedgerError> {
    idem_store(
        tx,
        &key.account,
        &key.key,
        &key.request,
        reply.status,
        &reply.body,
        now_ms,
    )
}
