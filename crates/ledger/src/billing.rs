//! Billing a request: quote → authorize (hold) → capture (or void, or expire), and the
//! idempotency records that make retried requests charge once.
//!
//! A hold moves the quoted price from the payer's available book to its pending book. A
//! capture charges exactly the fee for the tokens used: it moves the fee from pending to the
//! fee pool, releases the rest of the hold, and splits the fee in the same transaction into
//! royalties (by routed tokens, largest remainder), the shares of the hosts that computed
//! experts for the node, the operator's share and the burn. A void releases the whole hold. Each step is one write transaction.

use std::collections::BTreeMap;

use blyan_primitives::{Address, Amount};
use rand::RngCore;
use serde::Serialize;

use crate::accounts::{AccountKind, SystemAccount};
use crate::idempotency::{
    Begin, IdempotencyKey, IdempotentReply, Stored, idem_lookup, store_reply,
};
use crate::journal::{
    Leg, account_exists, amount_of, hex, insert_account, int, now_i64, parse_hex, post,
    require_init,
};
use crate::ledger::Ledger;
use crate::posting::{Book, PostingKind};
use crate::sql::{self, Tx, Value};
use crate::tokenomics::BPS;
use crate::{LedgerError, Refusal};

/// A price for a number of tokens, valid until `expires_ms`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Quote {
    /// Quote id.
    pub id: String,
    /// Who will pay.
    pub payer: Address,
    /// Tokens priced (prompt plus the most that may be generated).
    pub tokens: u64,
    /// The price in nano-BLY.
    pub amount: Amount,
    /// When the quote lapses.
    pub expires_ms: u64,
}

/// Funds held for a request in flight.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Hold {
    /// Hold id.
    pub id: String,
    /// Who pays.
    pub payer: Address,
    /// Nano-BLY held.
    pub amount: Amount,
    /// When an uncaptured hold is voided.
    pub expires_ms: u64,
}

/// What a capture charged and paid.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Capture {
    /// The hold.
    pub hold: String,
    /// Who paid.
    pub payer: Address,
    /// Tokens charged.
    pub tokens: u64,
    /// The fee charged.
    pub fee: Amount,
    /// The part of the hold returned.
    pub released: Amount,
    /// Royalties by contributor (the royalty pool for experts with no contributor).
    pub royalties: Vec<(Address, Amount)>,
    /// What the hosts that computed experts for the node were paid, by host.
    pub host_shares: Vec<(Address, Amount)>,
    /// The operator's share (less the hosts').
    pub operator_share: Amount,
    /// The part burned.
    pub burned: Amount,
}

/// Who did the work a fee pays for, counted in token-expert computations (one token through
/// one expert of one layer).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Served {
    /// Per contributor, the computations of its experts: all of the request's. The zero
    /// address and system accounts stand for experts with no contributor.
    pub contributors: BTreeMap<Address, u64>,
    /// Per expert host, the computations it answered for the serving node (the rest were the
    /// node's own).
    pub hosts: BTreeMap<Address, u64>,
}

impl Served {
    /// Work all done by the serving node: royalties by `contributors` only.
    pub fn locally(contributors: BTreeMap<Address, u64>) -> Served {
        Served {
            contributors,
            hosts: BTreeMap::new(),
        }
    }
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// The royalty split: `total` over `shares` by weight, largest remainder first, ties to the
/// earlier address. The parts sum to `total` exactly.
pub fn split_by_weight(total: Amount, shares: &BTreeMap<Address, u64>) -> Vec<(Address, Amount)> {
    let weight: u128 = shares.values().map(|&w| u128::from(w)).sum();
    if weight == 0 || total.is_zero() {
        return Vec::new();
    }
    let total = u128::from(total.nano());
    let mut parts: Vec<(Address, u128, u128)> = shares
        .iter()
        .map(|(a, &w)| {
            let exact = total * u128::from(w);
            (*a, exact / weight, exact % weight)
        })
        .collect();
    let given: u128 = parts.iter().map(|p| p.1).sum();
    let mut leftover = total - given;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&i, &j| parts[j].2.cmp(&parts[i].2).then(i.cmp(&j)));
    for i in order {
        if leftover == 0 {
            break;
        }
        parts[i].1 += 1;
        leftover -= 1;
    }
    parts
        .into_iter()
        .filter(|p| p.1 > 0)
        .map(|(a, n, _)| (a, Amount::from_nano(n as u64)))
        .collect()
}

impl Ledger {
    /// Prices `tokens` tokens for `payer`; the quote can be authorized until its TTL passes.
    pub fn quote(&self, payer: Address, tokens: u64, now_ms: u64) -> Result<Quote, LedgerError> {
        sql::write(&*self.store, |tx| self.quote_in(tx, payer, tokens, now_ms))
    }

    fn quote_in(
        &self,
        tx: &mut dyn Tx,
        payer: Address,
        tokens: u64,
        now_ms: u64,
    ) -> Result<Quote, LedgerError> {
        require_init(tx)?;
        if tokens == 0 {
            return Err(LedgerError::refused(
                Refusal::ZeroAmount,
                "a quote is for at least one token",
            ));
        }
        if !account_exists(tx, &payer)? {
            return Err(LedgerError::refused(
                Refusal::UnknownAccount,
                format!("no account {payer}"),
            ));
        }
        let amount = self
            .econ
            .fee(tokens)
            .filter(|a| a.nano() <= i64::MAX as u64)
            .ok_or_else(|| LedgerError::refused(Refusal::AmountOverflow, "the price overflows"))?;
        let quote = Quote {
            id: random_id("q_"),
            payer,
            tokens,
            amount,
            expires_ms: now_ms.saturating_add(self.econ.quote_ttl_ms),
        };
        tx.exec(
            "INSERT INTO quotes (id, address, tokens, amount, expires_ms, used) VALUES ($1, $2, $3, $4, $5, 0)",
            &[
                quote.id.clone().into(),
                hex(&payer),
                Value::Int(i64::try_from(tokens).unwrap_or(i64::MAX)),
                int(amount)?,
                now_i64(quote.expires_ms),
            ],
        )?;
        Ok(quote)
    }

    /// Holds a quote's price: moves it from the payer's available book to pending.
    pub fn authorize(&self, quote_id: &str, now_ms: u64) -> Result<Hold, LedgerError> {
        sql::write(&*self.store, |tx| self.authorize_in(tx, quote_id, now_ms))
    }

    fn authorize_in(
        &self,
        tx: &mut dyn Tx,
        quote_id: &str,
        now_ms: u64,
    ) -> Result<Hold, LedgerError> {
        require_init(tx)?;
        let row = tx
            .query_opt(
                "SELECT address, amount, expires_ms, used FROM quotes WHERE id = $1",
                &[quote_id.into()],
            )?
            .ok_or_else(|| {
                LedgerError::refused(Refusal::UnknownQuote, format!("no quote {quote_id:?}"))
            })?;
        if row.int(3)? != 0 {
            return Err(LedgerError::refused(
                Refusal::UnknownQuote,
                format!("quote {quote_id} was already authorized"),
            ));
        }
        let expires = u64::try_from(row.int(2)?).unwrap_or(0);
        if now_ms > expires {
            return Err(LedgerError::refused(
                Refusal::QuoteExpired,
                format!("quote {quote_id} lapsed at {expires} ms"),
            ));
        }
        let payer = parse_hex(row.text(0)?)?;
        let amount = amount_of(row.int(1)?)?;
        tx.exec(
            "UPDATE quotes SET used = 1 WHERE id = $1",
            &[quote_id.into()],
        )?;
        let hold = Hold {
            id: random_id("h_"),
            payer,
            amount,
            expires_ms: now_ms.saturating_add(self.econ.hold_ttl_ms),
        };
        if !amount.is_zero() {
            post(
                tx,
                &[Leg {
                    kind: PostingKind::Hold,
                    debit: payer,
                    debit_book: Book::Available,
                    credit: payer,
                    credit_book: Book::Pending,
                    amount,
                }],
                &hold.id,
                now_ms,
            )?;
        }
        tx.exec(
            "INSERT INTO holds (id, address, amount, state, captured, created_ms, expires_ms)
             VALUES ($1, $2, $3, 'held', 0, $4, $5)",
            &[
                hold.id.clone().into(),
                hex(&payer),
                int(amount)?,
                now_i64(now_ms),
                now_i64(hold.expires_ms),
            ],
        )?;
        Ok(hold)
    }

    /// Quotes and authorizes in one transaction: the serving path's hold for `tokens`.
    pub fn hold(&self, payer: Address, tokens: u64, now_ms: u64) -> Result<Hold, LedgerError> {
        sql::write(&*self.store, |tx| {
            let quote = self.quote_in(tx, payer, tokens, now_ms)?;
            self.authorize_in(tx, &quote.id, now_ms)
        })
    }

    /// Charges exactly the fee for `tokens` against hold `hold_id`, releases the rest, and
    /// splits the fee: royalties to the contributors of `served` by routed tokens (the zero
    /// address and system accounts stand for "no contributor" and are paid to the royalty
    /// pool), the operator's share to `operator` less what the hosts of `served` earned
    /// (`host_bps` of the fee times their part of all computations, split by computations),
    /// the remainder burned. With `finish`, the request's reply is stored under its
    /// idempotency key in the same transaction, so a retry gets the same reply and is never
    /// charged twice.
    pub fn capture(
        &self,
        hold_id: &str,
        tokens: u64,
        served: &Served,
        operator: Address,
        finish: Option<(&IdempotencyKey, &IdempotentReply)>,
        now_ms: u64,
    ) -> Result<Capture, LedgerError> {
        let econ = self.econ;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            let (payer, held) = active_hold(tx, hold_id)?;
            let fee = econ.fee(tokens).ok_or_else(|| {
                LedgerError::refused(Refusal::AmountOverflow, "the fee overflows")
            })?;
            if fee > held {
                return Err(LedgerError::refused(
                    Refusal::CaptureExceedsHold,
                    format!(
                        "{tokens} tokens cost {} nano-BLY; hold {hold_id} is {}",
                        fee.nano(),
                        held.nano()
                    ),
                ));
            }
            if !account_exists(tx, &operator)? {
                return Err(LedgerError::refused(
                    Refusal::UnknownAccount,
                    format!("no operator account {operator}"),
                ));
            }
            let released = held.checked_sub(fee).unwrap_or_default();
            let royalty_total = share(fee, econ.royalty_bps);
            let operator_total = share(fee, econ.operator_bps);
            let burned = fee
                .checked_sub(royalty_total)
                .and_then(|a| a.checked_sub(operator_total))
                .unwrap_or_default();
            let host_shares = host_shares(fee, econ.host_bps, served);
            let hosts_total = host_shares.iter().fold(Amount::ZERO, |sum, (_, a)| {
                sum.checked_add(*a).unwrap_or(sum)
            });
            let operator_share = operator_total.checked_sub(hosts_total).ok_or_else(|| {
                LedgerError::Store("the hosts' shares exceed the operator's share".into())
            })?;
            let mut weights: BTreeMap<Address, u64> = BTreeMap::new();
            for (a, w) in &served.contributors {
                let to = if *a == Address::ZERO || SystemAccount::of(*a).is_some() {
                    SystemAccount::RoyaltyPool.address()
                } else {
                    *a
                };
                let slot = weights.entry(to).or_default();
                *slot = slot.saturating_add(*w);
            }
            let mut royalties = split_by_weight(royalty_total, &weights);
            if royalties.is_empty() && !royalty_total.is_zero() {
                royalties.push((SystemAccount::RoyaltyPool.address(), royalty_total));
            }
            let mut legs = Vec::new();
            let mut leg = |kind, debit, debit_book, credit, credit_book, amount: Amount| {
                if !amount.is_zero() {
                    legs.push(Leg {
                        kind,
                        debit,
                        debit_book,
                        credit,
                        credit_book,
                        amount,
                    });
                }
            };
            let pool = SystemAccount::FeePool.address();
            leg(
                PostingKind::Fee,
                payer,
                Book::Pending,
                pool,
                Book::Available,
                fee,
            );
            leg(
                PostingKind::Release,
                payer,
                Book::Pending,
                payer,
                Book::Available,
                released,
            );
            for (to, amount) in &royalties {
                leg(
                    PostingKind::Royalty,
                    pool,
                    Book::Available,
                    *to,
                    Book::Available,
                    *amount,
                );
            }
            for (to, amount) in &host_shares {
                leg(
                    PostingKind::HostShare,
                    pool,
                    Book::Available,
                    *to,
                    Book::Available,
                    *amount,
                );
            }
            leg(
                PostingKind::OperatorShare,
                pool,
                Book::Available,
                operator,
                Book::Available,
                operator_share,
            );
            leg(
                PostingKind::Burn,
                pool,
                Book::Available,
                SystemAccount::Burn.address(),
                Book::Available,
                burned,
            );
            for (to, _) in royalties.iter().chain(&host_shares) {
                if !account_exists(tx, to)? {
                    insert_account(tx, *to, None, AccountKind::External, now_ms)?;
                }
            }
            if !legs.is_empty() {
                post(tx, &legs, hold_id, now_ms)?;
            }
            tx.exec(
                "UPDATE holds SET state = 'captured', captured = $2 WHERE id = $1",
                &[hold_id.into(), int(fee)?],
            )?;
            if let Some((key, reply)) = finish {
                store_reply(tx, key, reply, now_ms)?;
            }
            Ok(Capture {
                hold: hold_id.to_owned(),
                payer,
                tokens,
                fee,
                released,
                royalties: royalties.clone(),
                host_shares: host_shares.clone(),
                operator_share,
                burned,
            })
        })
    }

    /// Releases the whole of hold `hold_id` (the request failed or was cancelled), and with
    /// `abort` forgets the request's idempotency record so a retry runs afresh.
    pub fn void(
        &self,
        hold_id: &str,
        abort: Option<&IdempotencyKey>,
        now_ms: u64,
    ) -> Result<Amount, LedgerError> {
        sql::write(&*self.store, |tx| {
            let released = void_in(tx, hold_id, "voided", now_ms)?;
            if let Some(key) = abort {
                tx.exec(
                    "DELETE FROM idempotency WHERE account = $1 AND key = $2 AND state = 'pending'",
                    &[hex(&key.account), key.key.clone().into()],
                )?;
            }
            Ok(released)
        })
    }

    /// Voids every hold past its expiry; returns how many.
    pub fn expire_holds(&self, now_ms: u64) -> Result<usize, LedgerError> {
        sql::write(&*self.store, |tx| {
            let (voided, _) = void_held_in(tx, now_ms, "expired", now_ms)?;
            tx.exec(
                "DELETE FROM quotes WHERE expires_ms < $1",
                &[now_i64(now_ms.saturating_sub(self.econ.quote_ttl_ms))],
            )?;
            Ok(voided)
        })
    }

    /// Voids every open hold, whatever its expiry, and forgets every pending idempotency
    /// record; returns the holds voided and the amount released. A node calls this when it
    /// starts, before it serves: holds and pending records belong to requests of a process
    /// that is gone (a crash or a kill), and none of them can ever be captured. The node's
    /// exclusive lock on its block store makes it the only process billing this ledger.
    pub fn release_abandoned(&self, now_ms: u64) -> Result<(usize, Amount), LedgerError> {
        sql::write(&*self.store, |tx| {
            let voided = void_held_in(tx, u64::MAX, "abandoned", now_ms)?;
            tx.exec("DELETE FROM idempotency WHERE state = 'pending'", &[])?;
            Ok(voided)
        })
    }

    /// Holds still open.
    pub fn open_holds(&self) -> Result<u64, LedgerError> {
        sql::read(&*self.store, |tx| {
            let n = tx
                .query_opt("SELECT COUNT(*) FROM holds WHERE state = 'held'", &[])?
                .map_or(Ok(0), |r| r.int(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}

/// The hosts' shares of `fee`: `host_bps` of it times the hosts' part of all the request's
/// computations, split among them by computations (largest remainder). Hosts that are system
/// accounts or the zero address are left out; counts beyond the request's total are capped.
fn host_shares(fee: Amount, host_bps: u64, served: &Served) -> Vec<(Address, Amount)> {
    let all: u128 = served.contributors.values().map(|&w| u128::from(w)).sum();
    let hosts: BTreeMap<Address, u64> = served
        .hosts
        .iter()
        .filter(|(a, w)| **a != Address::ZERO && SystemAccount::of(**a).is_none() && **w > 0)
        .map(|(a, w)| (*a, *w))
        .collect();
    let computed: u128 = hosts.values().map(|&w| u128::from(w)).sum();
    if all == 0 || computed == 0 {
        return Vec::new();
    }
    // fee · host_bps / BPS · computed / all, rounded down: at most fee · host_bps / BPS.
    let total =
        u128::from(fee.nano()) * u128::from(host_bps) * computed.min(all) / (u128::from(BPS) * all);
    split_by_weight(Amount::from_nano(total as u64), &hosts)
}

fn share(fee: Amount, bps: u64) -> Amount {
    Amount::from_nano((u128::from(fee.nano()) * u128::from(bps) / u128::from(BPS)) as u64)
}

fn active_hold(tx: &mut dyn Tx, hold_id: &str) -> Result<(Address, Amount), LedgerError> {
    let row = tx
        .query_opt(
            "SELECT address, amount, state FROM holds WHERE id = $1",
            &[hold_id.into()],
        )?
        .ok_or_else(|| {
            LedgerError::refused(Refusal::UnknownHold, format!("no hold {hold_id:?}"))
        })?;
    let state = row.text(2)?;
    if state != "held" {
        return Err(LedgerError::refused(
            Refusal::HoldNotActive,
            format!("hold {hold_id} is {state}"),
        ));
    }
    Ok((parse_hex(row.text(0)?)?, amount_of(row.int(1)?)?))
}

/// Voids, as `state`, every open hold that expires before `expires_before_ms`; returns how
/// many and what they released.
fn void_held_in(
    tx: &mut dyn Tx,
    expires_before_ms: u64,
    state: &str,
    now_ms: u64,
) -> Result<(usize, Amount), LedgerError> {
    let ids: Vec<String> = tx
        .query(
            "SELECT id FROM holds WHERE state = 'held' AND expires_ms < $1 ORDER BY id",
            &[now_i64(expires_before_ms)],
        )?
        .iter()
        .map(|r| r.text(0).map(str::to_owned))
        .collect::<Result<_, _>>()?;
    let mut released = Amount::ZERO;
    for id in &ids {
        let amount = void_in(tx, id, state, now_ms)?;
        released = released
            .checked_add(amount)
            .ok_or_else(|| LedgerError::Store("released hold amounts overflow".into()))?;
    }
    Ok((ids.len(), released))
}

fn void_in(
    tx: &mut dyn Tx,
    hold_id: &str,
    state: &str,
    now_ms: u64,
) -> Result<Amount, LedgerError> {
    require_init(tx)?;
    let (payer, held) = active_hold(tx, hold_id)?;
    if !held.is_zero() {
        post(
            tx,
            &[Leg {
                kind: PostingKind::Release,
                debit: payer,
                debit_book: Book::Pending,
                credit: payer,
                credit_book: Book::Available,
                amount: held,
            }],
            hold_id,
            now_ms,
        )?;
    }
    tx.exec(
        "UPDATE holds SET state = $2 WHERE id = $1",
        &[hold_id.into(), state.into()],
    )?;
    Ok(held)
}

/// Idempotency of billed requests: claiming a key, storing a reply, forgetting a failure.
impl Ledger {
    /// Claims `key` for a request about to run. A repeat of a finished request gets the
    /// stored reply; one still running is reported in flight; a different request under the
    /// same key is refused with [`Refusal::IdempotencyKeyReused`].
    pub fn idempotency_begin(
        &self,
        key: &IdempotencyKey,
        now_ms: u64,
    ) -> Result<Begin, LedgerError> {
        let stale = self.econ.hold_ttl_ms;
        sql::write(&*self.store, |tx| {
            match idem_lookup(tx, &key.account, &key.key, &key.request, now_ms, stale)? {
                Some(Stored::Done { status, body }) => {
                    Ok(Begin::Done(IdempotentReply { status, body }))
                }
                Some(Stored::InFlight) => Ok(Begin::InFlight),
                None => {
                    tx.exec(
                        "INSERT INTO idempotency (account, key, request_hash, state, status, body, created_ms)
                         VALUES ($1, $2, $3, 'pending', 0, '', $4)",
                        &[hex(&key.account), key.key.clone().into(), key.request.clone().into(), now_i64(now_ms)],
                    )?;
                    Ok(Begin::Fresh)
                }
            }
        })
    }

    /// Stores a reply under `key` outside a capture (a request that posted nothing).
    pub fn idempotency_finish(
        &self,
        key: &IdempotencyKey,
        reply: &IdempotentReply,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        sql::write(&*self.store, |tx| store_reply(tx, key, reply, now_ms))
    }

    /// Forgets a pending record under `key` (the request failed before charging).
    pub fn idempotency_abort(&self, key: &IdempotencyKey) -> Result<(), LedgerError> {
        sql::write(&*self.store, |tx| {
            tx.exec(
                "DELETE FROM idempotency WHERE account = $1 AND key = $2 AND state = 'pending'",
                &[hex(&key.account), key.key.clone().into()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sums_exactly_and_follows_weights() {
        let a = Address([1; 20]);
        let b = Address([2; 20]);
        let c = Address([3; 20]);
        let shares: BTreeMap<_, _> = [(a, 1), (b, 1), (c, 1)].into_iter().collect();
        let parts = split_by_weight(Amount::from_nano(10), &shares);
        assert_eq!(parts, vec![(a, Amount(4)), (b, Amount(3)), (c, Amount(3))]);
        let shares: BTreeMap<_, _> = [(a, 3), (b, 1)].into_iter().collect();
        let parts = split_by_weight(Amount::from_nano(1000), &shares);
        assert_eq!(parts, vec![(a, Amount(750)), (b, Amount(250))]);
        assert!(split_by_weight(Amount(5), &BTreeMap::new()).is_empty());
    }
}
