//! What wallet login and card payments keep in the ledger's database: accounts opened at a
//! wallet's first login, the API keys a wallet manages itself, revoked session tokens, and
//! card top-ups credited from the treasury exactly once per payment event (and reversed,
//! as far as the wallet has not spent them, when the payment is refunded).
//!
//! Nothing here knows Stripe's formats: the node turns a verified event into a [`TopUp`] or
//! a refund, and the ledger makes the postings and the event's record in one transaction,
//! so a retried event can never post twice.

use blyan_primitives::{Address, Amount};
use serde::Serialize;

use crate::accounts::{AccountKind, SystemAccount};
use crate::journal::{
    account_exists, amount_of, balance_in, check_transfer, hex, insert_account, now_i64,
    require_init, transfer_in, u64_of,
};
use crate::ledger::check_reference;
use crate::sql::{self, Tx, Value};
use crate::{Ledger, LedgerError, Refusal, TransferReceipt};

/// A sum that cannot be represented, saturated.
const MAX: Amount = Amount::from_nano(u64::MAX);

/// Most API keys one account may hold at once.
pub const API_KEYS_PER_ACCOUNT_MAX: usize = 32;
/// Length of an API key's public id: the first hex digits of its stored hash.
const API_KEY_ID_LEN: usize = 16;
/// Longest payment or event id taken from a payment provider.
pub const PAYMENT_ID_LEN_MAX: usize = 100;

/// An API key as its owner sees it after creation: never the key itself, which is stored
/// only hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKeyInfo {
    /// The key's id (the first 16 hex digits of its hash): what revocation names.
    pub id: String,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A paid top-up to credit: `amount` BLY from the treasury to `address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopUp {
    /// The payment event that reports it (credited at most once).
    pub event: String,
    /// The payment it is for (what a refund names).
    pub payment: String,
    /// The wallet credited.
    pub address: Address,
    /// BLY credited.
    pub amount: Amount,
    /// What was paid, in the currency's minor unit (cents).
    pub paid_minor: u64,
    /// The currency, lower case (`usd`).
    pub currency: String,
}

/// What crediting a top-up did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Credited {
    /// Credited now.
    Credited {
        /// The transfer from the treasury.
        receipt: TransferReceipt,
    },
    /// This event, or another for the same payment, was already credited: nothing posted.
    AlreadyCredited,
}

/// What a refund did to a top-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reversal {
    /// The wallet.
    pub address: Address,
    /// Taken back to the treasury by this event.
    pub reversed: Amount,
    /// Owed back but already spent by this event's time: flagged, not taken.
    pub flagged: Amount,
    /// Whether this event was handled before (nothing posted now).
    pub replayed: bool,
}

fn check_id(what: &str, id: &str) -> Result<(), LedgerError> {
    if id.is_empty()
        || id.len() > PAYMENT_ID_LEN_MAX
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(LedgerError::refused(
            Refusal::InvalidReference,
            format!("a {what} id is 1 to {PAYMENT_ID_LEN_MAX} letters, digits, `_` or `-`"),
        ));
    }
    Ok(())
}

/// Whether `event` was handled already.
fn event_seen(tx: &mut dyn Tx, event: &str) -> Result<bool, LedgerError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM payment_events WHERE event = $1",
            &[event.into()],
        )?
        .is_some())
}

fn record_event(
    tx: &mut dyn Tx,
    event: &str,
    kind: &str,
    outcome: &str,
    now_ms: u64,
) -> Result<(), LedgerError> {
    tx.exec(
        "INSERT INTO payment_events (event, kind, outcome, created_ms) VALUES ($1, $2, $3, $4)",
        &[event.into(), kind.into(), outcome.into(), now_i64(now_ms)],
    )?;
    Ok(())
}

impl Ledger {
    /// Opens a user account for `address` unless it has one; returns whether it was opened.
    pub fn open_wallet(&self, address: Address, now_ms: u64) -> Result<bool, LedgerError> {
        if SystemAccount::of(address).is_some() {
            return Err(LedgerError::refused(
                Refusal::SystemAccount,
                "a system account cannot log in",
            ));
        }
        // Most logins are of wallets that have an account: a read answers them.
        if sql::read(&*self.store, |tx| account_exists(tx, &address))? {
            return Ok(false);
        }
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            if account_exists(tx, &address)? {
                return Ok(false);
            }
            insert_account(tx, address, None, AccountKind::User, now_ms)?;
            Ok(true)
        })
    }

    /// The API keys of `address`'s account, oldest first.
    pub fn api_keys(&self, address: Address) -> Result<Vec<ApiKeyInfo>, LedgerError> {
        sql::read(&*self.store, |tx| keys_of(tx, address))
    }

    /// Issues a new API key for `address`, refusing once it holds
    /// [`API_KEYS_PER_ACCOUNT_MAX`]. Returns the key (shown once) and its id.
    pub fn issue_own_api_key(
        &self,
        address: Address,
        now_ms: u64,
    ) -> Result<(String, ApiKeyInfo), LedgerError> {
        let key = crate::keystore::new_api_key();
        let hash = crate::keystore::key_hash(&key);
        sql::write(&*self.store, |tx| {
            if keys_of(tx, address)?.len() >= API_KEYS_PER_ACCOUNT_MAX {
                return Err(LedgerError::refused(
                    Refusal::ApiKeyLimit,
                    format!(
                        "an account holds at most {API_KEYS_PER_ACCOUNT_MAX} API keys; revoke one"
                    ),
                ));
            }
            crate::keystore::insert_api_key(tx, address, &hash, now_ms)
        })?;
        let id = hash[..API_KEY_ID_LEN].to_owned();
        Ok((
            key,
            ApiKeyInfo {
                id,
                created_ms: now_ms,
            },
        ))
    }

    /// Revokes `address`'s API key `id`; an id that names none of its keys is refused with
    /// `unknown_api_key` (whoever else's key it may name is untouched).
    pub fn revoke_api_key(&self, address: Address, id: &str) -> Result<(), LedgerError> {
        let unknown = || {
            LedgerError::refused(
                Refusal::UnknownApiKey,
                format!("this account has no API key {id:?}"),
            )
        };
        if id.len() != API_KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(unknown());
        }
        let id = id.to_ascii_lowercase();
        sql::write(&*self.store, |tx| {
            let rows = tx.query(
                "SELECT key_hash FROM api_keys WHERE address = $1",
                &[hex(&address)],
            )?;
            let mut found = None;
            for r in &rows {
                let h = r.text(0)?;
                if h.starts_with(&id) {
                    found = Some(h.to_owned());
                }
            }
            let hash = found.ok_or_else(unknown)?;
            tx.exec(
                "DELETE FROM api_keys WHERE key_hash = $1 AND address = $2",
                &[Value::Text(hash), hex(&address)],
            )?;
            Ok(())
        })
    }

    /// Records that the session token `jti` is revoked until `expires_ms` (when it stops
    /// being accepted anyway); forgets revocations that have run out.
    pub fn revoke_session(
        &self,
        jti: &str,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        check_reference(jti)?;
        sql::write(&*self.store, |tx| {
            tx.exec(
                "DELETE FROM revoked_sessions WHERE expires_ms <= $1",
                &[now_i64(now_ms)],
            )?;
            if tx
                .query_opt(
                    "SELECT 1 FROM revoked_sessions WHERE jti = $1",
                    &[jti.into()],
                )?
                .is_none()
            {
                tx.exec(
                    "INSERT INTO revoked_sessions (jti, expires_ms) VALUES ($1, $2)",
                    &[jti.into(), now_i64(expires_ms)],
                )?;
            }
            Ok(())
        })
    }

    /// The revoked session tokens that have not run out at `now_ms`, with when each would.
    pub fn revoked_sessions(&self, now_ms: u64) -> Result<Vec<(String, u64)>, LedgerError> {
        sql::read(&*self.store, |tx| {
            tx.query(
                "SELECT jti, expires_ms FROM revoked_sessions WHERE expires_ms > $1",
                &[now_i64(now_ms)],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?.to_owned(), u64_of(r.int(1)?)?)))
            .collect()
        })
    }

    /// Credits a paid top-up from the treasury, once: a second event for the same payment,
    /// or the same event again, posts nothing. The wallet's account is opened if needed.
    pub fn credit_topup(&self, t: &TopUp, now_ms: u64) -> Result<Credited, LedgerError> {
        check_id("event", &t.event)?;
        check_id("payment", &t.payment)?;
        check_id("currency", &t.currency)?;
        let from = SystemAccount::Treasury.address();
        check_transfer(from, t.address, t.amount)?;
        if t.paid_minor == 0 || i64::try_from(t.paid_minor).is_err() {
            return Err(LedgerError::refused(
                Refusal::ZeroAmount,
                "a top-up must have been paid for",
            ));
        }
        let reference = format!("topup:{}", t.event);
        check_reference(&reference)?;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM topups WHERE payment = $1 OR event = $2",
                    &[t.payment.as_str().into(), t.event.as_str().into()],
                )?
                .is_some();
            if done || event_seen(tx, &t.event)? {
                return Ok(Credited::AlreadyCredited);
            }
            if !account_exists(tx, &t.address)? {
                insert_account(tx, t.address, None, AccountKind::User, now_ms)?;
            }
            let receipt = transfer_in(
                tx,
                from,
                t.address,
                t.amount,
                crate::PostingKind::Transfer,
                &reference,
                now_ms,
            )?;
            tx.exec(
                "INSERT INTO topups (payment, event, address, amount, paid_minor, currency, \
                 reversed, flagged, created_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7)",
                &[
                    t.payment.as_str().into(),
                    t.event.as_str().into(),
                    hex(&t.address),
                    crate::journal::int(t.amount)?,
                    Value::Int(i64::try_from(t.paid_minor).unwrap_or(i64::MAX)),
                    t.currency.as_str().into(),
                    now_i64(now_ms),
                ],
            )?;
            record_event(tx, &t.event, "topup", "credited", now_ms)?;
            Ok(Credited::Credited { receipt })
        })
    }

    /// Applies a refund of `payment` that has now refunded `refunded_minor` of what was paid
    /// (Stripe reports the running total): the top-up's BLY owed back in proportion is
    /// taken from the wallet's available balance to the treasury as far as it lasts, and the
    /// rest is flagged. Once per `event`; a payment that was never topped up is refused with
    /// `unknown_payment`.
    pub fn reverse_topup(
        &self,
        event: &str,
        payment: &str,
        refunded_minor: u64,
        now_ms: u64,
    ) -> Result<Reversal, LedgerError> {
        check_id("event", event)?;
        check_id("payment", payment)?;
        let reference = format!("topup_refund:{event}");
        check_reference(&reference)?;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            let row = tx
                .query_opt(
                    "SELECT address, amount, paid_minor, reversed, flagged FROM topups \
                     WHERE payment = $1",
                    &[payment.into()],
                )?
                .ok_or_else(|| {
                    LedgerError::refused(
                        Refusal::UnknownPayment,
                        format!("no top-up was credited for payment {payment}"),
                    )
                })?;
            let address = crate::journal::parse_hex(row.text(0)?)?;
            if event_seen(tx, event)? {
                return Ok(Reversal {
                    address,
                    reversed: Amount::ZERO,
                    flagged: Amount::ZERO,
                    replayed: true,
                });
            }
            let amount = u128::from(amount_of(row.int(1)?)?.nano());
            let paid = u128::from(u64_of(row.int(2)?)?);
            let reversed = amount_of(row.int(3)?)?;
            let flagged = amount_of(row.int(4)?)?;
            let refunded = u128::from(refunded_minor).min(paid);
            // What the refunds so far take back in all, rounded down: never more than was
            // credited.
            let owed_total = Amount::from_nano(
                u64::try_from(amount * refunded / paid.max(1)).unwrap_or(u64::MAX),
            );
            let settled = reversed.checked_add(flagged).unwrap_or(MAX);
            let due = owed_total.checked_sub(settled).unwrap_or(Amount::ZERO);
            let available = balance_in(tx, address)?.available;
            let take = due.min(available);
            let flag = due.checked_sub(take).unwrap_or(Amount::ZERO);
            if !take.is_zero() {
                transfer_in(
                    tx,
                    address,
                    SystemAccount::Treasury.address(),
                    take,
                    crate::PostingKind::Transfer,
                    &reference,
                    now_ms,
                )?;
            }
            tx.exec(
                "UPDATE topups SET reversed = $1, flagged = $2 WHERE payment = $3",
                &[
                    crate::journal::int(reversed.checked_add(take).unwrap_or(MAX))?,
                    crate::journal::int(flagged.checked_add(flag).unwrap_or(MAX))?,
                    payment.into(),
                ],
            )?;
            let outcome = if flag.is_zero() {
                "reversed"
            } else {
                "flagged"
            };
            record_event(tx, event, "refund", outcome, now_ms)?;
            Ok(Reversal {
                address,
                reversed: take,
                flagged: flag,
                replayed: false,
            })
        })
    }

    /// Records a payment event that changes nothing here (an unknown type, a refund of a
    /// payment never topped up), so that its retries are recognised; returns whether it was
    /// new.
    pub fn note_payment_event(
        &self,
        event: &str,
        kind: &str,
        now_ms: u64,
    ) -> Result<bool, LedgerError> {
        check_id("event", event)?;
        check_reference(kind)?;
        sql::write(&*self.store, |tx| {
            if event_seen(tx, event)? {
                return Ok(false);
            }
            record_event(tx, event, kind, "ignored", now_ms)?;
            Ok(true)
        })
    }

    /// The top-ups made for `address`, as (payment, BLY, reversed, flagged), oldest first.
    pub fn topups(&self, address: Address) -> Result<Vec<TopUpRecord>, LedgerError> {
        sql::read(&*self.store, |tx| {
            tx.query(
                "SELECT payment, amount, reversed, flagged, created_ms FROM topups \
                 WHERE address = $1 ORDER BY created_ms, payment",
                &[hex(&address)],
            )?
            .iter()
            .map(|r| {
                Ok(TopUpRecord {
                    payment: r.text(0)?.to_owned(),
                    amount: amount_of(r.int(1)?)?,
                    reversed: amount_of(r.int(2)?)?,
                    flagged: amount_of(r.int(3)?)?,
                    created_ms: u64_of(r.int(4)?)?,
                })
            })
            .collect()
        })
    }
}

/// A top-up as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopUpRecord {
    /// The payment.
    pub payment: String,
    /// BLY credited.
    pub amount: Amount,
    /// BLY taken back by refunds.
    pub reversed: Amount,
    /// BLY owed back by refunds but already spent.
    pub flagged: Amount,
    /// When it was credited.
    pub created_ms: u64,
}

fn keys_of(tx: &mut dyn Tx, address: Address) -> Result<Vec<ApiKeyInfo>, LedgerError> {
    tx.query(
        "SELECT key_hash, created_ms FROM api_keys WHERE address = $1 ORDER BY created_ms, key_hash",
        &[hex(&address)],
    )?
    .iter()
    .map(|r| {
        let hash = r.text(0)?;
        Ok(ApiKeyInfo {
            id: hash.get(..API_KEY_ID_LEN).unwrap_or(hash).to_owned(),
            created_ms: u64_of(r.int(1)?)?,
        })
    })
    .collect()
}
