//! Rewards earned but not yet minted: the owed book.
//!
//! Minting is capped per epoch (the yearly inflation cap) and in total (the supply cap), and
//! the caps are kept exactly. A reward that does not fit is not refused: what fits is minted
//! now and the rest is queued as an owed entry, paid in order (oldest first) from later
//! epochs' budgets. An entry pays either its account directly or, for the half of a learning
//! reward that waits for a replication, the vesting account; a replication converts such an
//! entry to a direct one when it passes and cancels it when it fails (clawback), so vesting
//! works the same whether the reward was minted at once or later.

use blyan_primitives::{Address, Amount};
use serde::Serialize;

use crate::accounts::SystemAccount;
use crate::journal::{
    amount_of, check_mint, hex, int, mint_in, mint_room_in, now_i64, parse_hex, require_init,
    transfer_in,
};
use crate::ledger::check_reference;
use crate::posting::PostingKind;
use crate::sql::{self, Row, Tx, Value};
use crate::{Ledger, LedgerError, Refusal};

/// Most owed entries one payment round pays (the rest waits for the next round).
pub const OWED_PAY_ROUND_MAX: usize = 1000;

/// One queued reward.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Owed {
    /// Queue position: entries are paid in this order.
    pub id: u64,
    /// Who earned it.
    pub address: Address,
    /// Whether it is minted into the vesting account (until a replication) rather than
    /// paid to `address`.
    pub vesting: bool,
    /// What was earned and not minted when it was earned.
    pub amount: Amount,
    /// Minted since.
    pub paid: Amount,
    /// The reward's reference.
    pub reference: String,
    /// When it was queued, ms since the Unix epoch.
    pub created_ms: u64,
}

/// What a reward did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct Reward {
    /// Minted now.
    pub minted: Amount,
    /// Queued in the owed book.
    pub owed: Amount,
}

/// What settling a vested reward did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct Settled {
    /// Moved out of the vesting account now (to the contributor, or burned).
    pub moved: Amount,
    /// Still owed, now to the contributor directly (a passed replication).
    pub converted: Amount,
    /// Still owed and cancelled (a failed replication).
    pub cancelled: Amount,
}

/// The whole owed book.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct OwedTotals {
    /// Entries not yet fully paid.
    pub entries: u64,
    /// What they still owe.
    pub outstanding: Amount,
}

const OWED_COLUMNS: &str = "id, address, vesting, amount, paid, reference, created_ms";

fn owed_of(r: &Row) -> Result<Owed, LedgerError> {
    Ok(Owed {
        id: u64::try_from(r.int(0)?).map_err(|_| LedgerError::Store("negative owed id".into()))?,
        address: parse_hex(r.text(1)?)?,
        vesting: r.int(2)? != 0,
        amount: amount_of(r.int(3)?)?,
        paid: amount_of(r.int(4)?)?,
        reference: r.text(5)?.to_owned(),
        created_ms: u64::try_from(r.int(6)?).unwrap_or(0),
    })
}

impl Owed {
    /// What is still to be minted.
    pub fn outstanding(&self) -> Amount {
        self.amount.checked_sub(self.paid).unwrap_or(Amount::ZERO)
    }
}

/// Pays open entries oldest first from what may be minted now; returns what was minted.
pub(crate) fn pay_owed_in(
    tx: &mut dyn Tx,
    ledger: &Ledger,
    now_ms: u64,
) -> Result<Amount, LedgerError> {
    let rows = tx.query(
        &format!(
            "SELECT {OWED_COLUMNS} FROM owed WHERE state = 'owed' ORDER BY id LIMIT {OWED_PAY_ROUND_MAX}"
        ),
        &[],
    )?;
    let entries: Vec<Owed> = rows.iter().map(owed_of).collect::<Result<_, _>>()?;
    let mut total = Amount::ZERO;
    for e in entries {
        let room = mint_room_in(tx, ledger.econ, now_ms)?;
        if room.is_zero() {
            break;
        }
        let pay = room.min(e.outstanding());
        let to = if e.vesting {
            SystemAccount::Vesting.address()
        } else {
            e.address
        };
        mint_in(
            tx,
            ledger.econ,
            to,
            pay,
            &format!("{}:owed", e.reference),
            now_ms,
        )?;
        let paid = e.paid.checked_add(pay).ok_or_else(overflow)?;
        let state = if paid == e.amount { "paid" } else { "owed" };
        tx.exec(
            "UPDATE owed SET paid = $2, state = $3 WHERE id = $1",
            &[id(e.id), int(paid)?, state.into()],
        )?;
        total = total.checked_add(pay).ok_or_else(overflow)?;
    }
    Ok(total)
}

fn overflow() -> LedgerError {
    LedgerError::refused(Refusal::AmountOverflow, "owed amounts overflow")
}

fn id(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// What `address` is owed, over its open entries.
pub(crate) fn owed_to_in(tx: &mut dyn Tx, address: &Address) -> Result<Amount, LedgerError> {
    let r = tx.query_opt(
        "SELECT CAST(COALESCE(SUM(amount - paid), 0) AS BIGINT) FROM owed
         WHERE address = $1 AND state = 'owed'",
        &[hex(address)],
    )?;
    r.map_or(Ok(Amount::ZERO), |r| amount_of(r.int(0)?))
}

impl Ledger {
    /// Rewards `to` with `amount` (into the vesting account with `vesting`): after paying
    /// older owed entries, mints what the epoch's budget and the supply cap allow now and
    /// queues the rest, so an earned reward is never refused for the caps. One transaction.
    pub fn reward(
        &self,
        to: Address,
        amount: Amount,
        vesting: bool,
        reference: &str,
        now_ms: u64,
    ) -> Result<Reward, LedgerError> {
        check_reference(reference)?;
        // A reward is paid to its account (or, for the waiting half of a learning reward,
        // held in the vesting account on its behalf), never to another system account.
        check_mint(to, amount, false)?;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            // The account exists from its first reward on, even one owed in full, so that
            // its balance shows what it is owed.
            if !crate::journal::account_exists(tx, &to)? {
                crate::journal::insert_account(tx, to, None, crate::AccountKind::External, now_ms)?;
            }
            pay_owed_in(tx, self, now_ms)?;
            let room = mint_room_in(tx, self.econ, now_ms)?;
            let now = room.min(amount);
            if !now.is_zero() {
                let dest = if vesting {
                    SystemAccount::Vesting.address()
                } else {
                    to
                };
                mint_in(tx, self.econ, dest, now, reference, now_ms)?;
            }
            let owed = amount.checked_sub(now).ok_or_else(overflow)?;
            if !owed.is_zero() {
                let next = tx
                    .query_opt("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM owed", &[])?
                    .map_or(Ok(0), |r| r.int(0))?
                    + 1;
                tx.exec(
                    "INSERT INTO owed (id, address, vesting, amount, paid, reference, state, created_ms)
                     VALUES ($1, $2, $3, $4, 0, $5, 'owed', $6)",
                    &[
                        Value::Int(next),
                        hex(&to),
                        Value::Int(i64::from(vesting)),
                        int(owed)?,
                        reference.into(),
                        now_i64(now_ms),
                    ],
                )?;
            }
            Ok(Reward { minted: now, owed })
        })
    }

    /// Pays open owed entries, oldest first, from what may be minted now; returns what was
    /// minted. The node runs this every probe round, so a new epoch's budget pays what is
    /// owed without waiting for the next reward.
    pub fn pay_owed(&self, now_ms: u64) -> Result<Amount, LedgerError> {
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            pay_owed_in(tx, self, now_ms)
        })
    }

    /// Open owed entries, oldest first, of `address` or of everyone.
    pub fn owed_entries(&self, address: Option<Address>) -> Result<Vec<Owed>, LedgerError> {
        sql::read(&*self.store, |tx| {
            let rows = match address {
                Some(a) => tx.query(
                    &format!(
                        "SELECT {OWED_COLUMNS} FROM owed WHERE state = 'owed' AND address = $1 ORDER BY id"
                    ),
                    &[hex(&a)],
                )?,
                None => tx.query(
                    &format!("SELECT {OWED_COLUMNS} FROM owed WHERE state = 'owed' ORDER BY id"),
                    &[],
                )?,
            };
            rows.iter().map(owed_of).collect()
        })
    }

    /// The open entries' count and what they still owe.
    pub fn owed_totals(&self) -> Result<OwedTotals, LedgerError> {
        sql::read(&*self.store, |tx| {
            let r = tx.query_opt(
                "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(amount - paid), 0) AS BIGINT)
                 FROM owed WHERE state = 'owed'",
                &[],
            )?;
            match r {
                None => Ok(OwedTotals::default()),
                Some(r) => Ok(OwedTotals {
                    entries: u64::try_from(r.int(0)?).unwrap_or(0),
                    outstanding: amount_of(r.int(1)?)?,
                }),
            }
        })
    }

    /// Settles a vested reward after its replication: `held` is what the reward put into
    /// vesting (minted or still owed) under `vest_reference`. What was minted leaves the
    /// vesting account, to `to` when the replication passed or to the burn account when it
    /// failed (`to = None`); what is still owed becomes owed to `to` directly, or is
    /// cancelled. One transaction.
    pub fn settle_vested(
        &self,
        vest_reference: &str,
        to: Option<Address>,
        held: Amount,
        reference: &str,
        now_ms: u64,
    ) -> Result<Settled, LedgerError> {
        check_reference(reference)?;
        if let Some(a) = to
            && SystemAccount::of(a).is_some()
        {
            return Err(LedgerError::refused(
                Refusal::SystemAccount,
                format!("vested rewards are paid to contributors, not to {a}"),
            ));
        }
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            let rows = tx.query(
                &format!(
                    "SELECT {OWED_COLUMNS} FROM owed
                     WHERE state = 'owed' AND vesting = 1 AND reference = $1 ORDER BY id"
                ),
                &[vest_reference.into()],
            )?;
            let entries: Vec<Owed> = rows.iter().map(owed_of).collect::<Result<_, _>>()?;
            let mut outstanding = Amount::ZERO;
            for e in &entries {
                outstanding = outstanding
                    .checked_add(e.outstanding())
                    .ok_or_else(overflow)?;
            }
            let moved = held.checked_sub(outstanding).ok_or_else(|| {
                LedgerError::Store(format!(
                    "{vest_reference} owes {} nano-BLY, more than the {} it holds",
                    outstanding.nano(),
                    held.nano()
                ))
            })?;
            if !moved.is_zero() {
                let (dest, kind) = match to {
                    Some(a) => (a, PostingKind::Transfer),
                    None => (SystemAccount::Burn.address(), PostingKind::Burn),
                };
                if !crate::journal::account_exists(tx, &dest)? {
                    crate::journal::insert_account(
                        tx,
                        dest,
                        None,
                        crate::AccountKind::External,
                        now_ms,
                    )?;
                }
                transfer_in(
                    tx,
                    SystemAccount::Vesting.address(),
                    dest,
                    moved,
                    kind,
                    reference,
                    now_ms,
                )?;
            }
            let mut out = Settled {
                moved,
                ..Settled::default()
            };
            for e in &entries {
                match to {
                    Some(a) => {
                        tx.exec(
                            "UPDATE owed SET vesting = 0, address = $2 WHERE id = $1",
                            &[id(e.id), hex(&a)],
                        )?;
                        out.converted = out
                            .converted
                            .checked_add(e.outstanding())
                            .ok_or_else(overflow)?;
                    }
                    None => {
                        tx.exec(
                            "UPDATE owed SET state = 'cancelled' WHERE id = $1",
                            &[id(e.id)],
                        )?;
                        out.cancelled = out
                            .cancelled
                            .checked_add(e.outstanding())
                            .ok_or_else(overflow)?;
                    }
                }
            }
            Ok(out)
        })
    }
}
