//! The journal: what every ledger operation does inside its one write transaction. Postings
//! between (account, book) pairs, balances, accounts, minting within the caps, and the
//! conversions between the store's integers and the ledger's types. The operation modules
//! (transfers in `ledger`, billing, the owed book, idempotency, anchoring) build on these and
//! never on each other.

use blyan_primitives::{Address, Amount};
use serde::Serialize;

use crate::accounts::{AccountKind, SystemAccount};
use crate::posting::{Book, PostingKind, PostingRecord};
use crate::sql::{Row, Tx, Value};
use crate::tokenomics::Economics;
use crate::{LedgerError, Refusal};

/// An account's balances.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Balance {
    /// The account.
    pub address: Address,
    /// Spendable nano-BLY.
    pub available: Amount,
    /// Nano-BLY held for requests in flight.
    pub pending: Amount,
    /// Nano-BLY of rewards earned and not yet minted (the owed book), paid from later
    /// epochs' emission budgets.
    pub owed: Amount,
}

/// What a transfer posted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, serde::Deserialize)]
pub struct TransferReceipt {
    /// The operation id.
    pub tx: u64,
    /// The posting's sequence number.
    pub seq: u64,
    /// Payer.
    pub from: Address,
    /// Payee.
    pub to: Address,
    /// Nano-BLY moved.
    pub amount: Amount,
    /// Whether this receipt answers a retry under an idempotency key (nothing was posted).
    #[serde(skip)]
    pub replayed: bool,
}

/// A posting waiting to be written: who pays, who is paid, how much and why.
#[derive(Clone, Debug)]
pub(crate) struct Leg {
    pub kind: PostingKind,
    pub debit: Address,
    pub debit_book: Book,
    pub credit: Address,
    pub credit_book: Book,
    pub amount: Amount,
}

pub(crate) fn hex(a: &Address) -> Value {
    Value::Text(a.to_hex_lower())
}

pub(crate) fn parse_hex(s: &str) -> Result<Address, LedgerError> {
    let mut out = [0u8; 20];
    hex::decode_to_slice(s, &mut out).map_err(|_| {
        LedgerError::Store(format!("stored address {s:?} is not 40 hex characters"))
    })?;
    Ok(Address(out))
}

pub(crate) fn amount_of(v: i64) -> Result<Amount, LedgerError> {
    u64::try_from(v)
        .map(Amount::from_nano)
        .map_err(|_| LedgerError::Store(format!("negative amount {v} in the store")))
}

pub(crate) fn int(a: Amount) -> Result<Value, LedgerError> {
    i64::try_from(a.nano()).map(Value::Int).map_err(|_| {
        LedgerError::refused(
            Refusal::AmountOverflow,
            format!("{} nano-BLY does not fit", a.nano()),
        )
    })
}

pub(crate) fn u64_of(v: i64) -> Result<u64, LedgerError> {
    u64::try_from(v).map_err(|_| LedgerError::Store(format!("negative counter {v} in the store")))
}

pub(crate) fn now_i64(now_ms: u64) -> Value {
    Value::Int(i64::try_from(now_ms).unwrap_or(i64::MAX))
}

/// Checks a mint's amount (above zero) and payee: an account, or a pool that newly minted
/// BLY may go to (the treasury, the validator and royalty pools, and with `vesting` the
/// vesting account); never the emission, burn or fee accounts.
pub(crate) fn check_mint(to: Address, amount: Amount, vesting: bool) -> Result<(), LedgerError> {
    if amount.is_zero() {
        return Err(LedgerError::refused(
            Refusal::ZeroAmount,
            "the amount must be above zero",
        ));
    }
    match SystemAccount::of(to) {
        None
        | Some(
            SystemAccount::Treasury | SystemAccount::ValidatorPool | SystemAccount::RoyaltyPool,
        ) => Ok(()),
        Some(SystemAccount::Vesting) if vesting => Ok(()),
        Some(s) => Err(LedgerError::refused(
            Refusal::SystemAccount,
            format!("cannot mint to the {s} account"),
        )),
    }
}

/// The epoch of `now_ms`, its budget and what was minted in it so far; the epoch's row is
/// created (its base fixed at the circulating supply) on first use.
fn epoch_in(
    tx: &mut dyn Tx,
    econ: Economics,
    now_ms: u64,
) -> Result<(u64, Amount, Amount, Amount), LedgerError> {
    let epoch = now_ms / econ.epoch_ms;
    let epoch_v = Value::Int(i64::try_from(epoch).unwrap_or(i64::MAX));
    let (base, minted) = match tx.query_opt(
        "SELECT base, minted FROM emission_epochs WHERE epoch = $1",
        std::slice::from_ref(&epoch_v),
    )? {
        Some(r) => (amount_of(r.int(0)?)?, amount_of(r.int(1)?)?),
        None => {
            let base = circulating_in(tx, econ)?;
            tx.exec(
                "INSERT INTO emission_epochs (epoch, base, minted) VALUES ($1, $2, 0)",
                &[epoch_v.clone(), int(base)?],
            )?;
            (base, Amount::ZERO)
        }
    };
    Ok((epoch, base, econ.epoch_budget(base), minted))
}

/// What may still be minted at `now_ms`: the rest of the epoch's budget, and never more
/// than the emission account holds (the supply cap).
pub(crate) fn mint_room_in(
    tx: &mut dyn Tx,
    econ: Economics,
    now_ms: u64,
) -> Result<Amount, LedgerError> {
    let emission = balance_in(tx, SystemAccount::Emission.address())?.available;
    let (_, _, budget, minted) = epoch_in(tx, econ, now_ms)?;
    Ok(budget
        .checked_sub(minted)
        .unwrap_or(Amount::ZERO)
        .min(emission))
}

/// Mints `amount` to `to` inside the caller's transaction, refusing what would pass the
/// epoch's budget or the supply cap.
pub(crate) fn mint_in(
    tx: &mut dyn Tx,
    econ: Economics,
    to: Address,
    amount: Amount,
    reference: &str,
    now_ms: u64,
) -> Result<TransferReceipt, LedgerError> {
    let emission = balance_in(tx, SystemAccount::Emission.address())?.available;
    if amount > emission {
        return Err(LedgerError::refused(
            Refusal::SupplyCapReached,
            format!(
                "minting {} nano-BLY would pass the supply cap; {} remain",
                amount.nano(),
                emission.nano()
            ),
        ));
    }
    let (epoch, base, budget, minted) = epoch_in(tx, econ, now_ms)?;
    let epoch_v = Value::Int(i64::try_from(epoch).unwrap_or(i64::MAX));
    let after = minted
        .checked_add(amount)
        .ok_or_else(|| LedgerError::refused(Refusal::AmountOverflow, "mint overflows"))?;
    if after > budget {
        return Err(LedgerError::refused(
            Refusal::InflationCapReached,
            format!(
                "epoch {epoch} may mint {} nano-BLY ({} bps a year of {} circulating); \
                 {} already minted",
                budget.nano(),
                econ.inflation_cap_bps,
                base.nano(),
                minted.nano()
            ),
        ));
    }
    tx.exec(
        "UPDATE emission_epochs SET minted = $2 WHERE epoch = $1",
        &[epoch_v, int(after)?],
    )?;
    if !account_exists(tx, &to)? {
        insert_account(tx, to, None, AccountKind::External, now_ms)?;
    }
    transfer_in(
        tx,
        SystemAccount::Emission.address(),
        to,
        amount,
        PostingKind::Mint,
        reference,
        now_ms,
    )
}

/// One transfer inside the caller's transaction. An unknown payer or payee is refused by
/// [`post`] (its guarded updates find no row), which rolls the transaction back.
pub(crate) fn transfer_in(
    tx: &mut dyn Tx,
    from: Address,
    to: Address,
    amount: Amount,
    kind: PostingKind,
    reference: &str,
    now_ms: u64,
) -> Result<TransferReceipt, LedgerError> {
    let (tx_id, seq) = post(
        tx,
        &[Leg {
            kind,
            debit: from,
            debit_book: Book::Available,
            credit: to,
            credit_book: Book::Available,
            amount,
        }],
        reference,
        now_ms,
    )?;
    Ok(TransferReceipt {
        tx: tx_id,
        seq,
        from,
        to,
        amount,
        replayed: false,
    })
}

/// The rules a transfer must meet before the database is asked; returns its posting kind.
pub(crate) fn check_transfer(
    from: Address,
    to: Address,
    amount: Amount,
) -> Result<PostingKind, LedgerError> {
    if amount.is_zero() {
        return Err(LedgerError::refused(
            Refusal::ZeroAmount,
            "the amount must be above zero",
        ));
    }
    if from == to {
        return Err(LedgerError::refused(
            Refusal::SelfTransfer,
            format!("{from} cannot pay itself"),
        ));
    }
    if let Some(s) = SystemAccount::of(from)
        && s != SystemAccount::Treasury
    {
        return Err(LedgerError::refused(
            Refusal::SystemAccount,
            format!("the {s} account cannot pay by transfer"),
        ));
    }
    match SystemAccount::of(to) {
        Some(s @ (SystemAccount::Emission | SystemAccount::FeePool)) => Err(LedgerError::refused(
            Refusal::SystemAccount,
            format!("the {s} account cannot be paid by transfer"),
        )),
        Some(SystemAccount::Burn) => Ok(PostingKind::Burn),
        _ => Ok(PostingKind::Transfer),
    }
}

/// The columns a [`PostingRecord`] is read from, in [`posting_of`]'s order.
pub(crate) const POSTING_COLUMNS: &str =
    "seq, tx, kind, debit, debit_book, credit, credit_book, amount, reference, time_ms";

pub(crate) fn posting_of(r: &Row) -> Result<PostingRecord, LedgerError> {
    Ok(PostingRecord {
        seq: u64_of(r.int(0)?)?,
        tx: u64_of(r.int(1)?)?,
        kind: PostingKind::parse(r.text(2)?)?,
        debit: parse_hex(r.text(3)?)?,
        debit_book: Book::from_number(r.int(4)?)?,
        credit: parse_hex(r.text(5)?)?,
        credit_book: Book::from_number(r.int(6)?)?,
        amount: amount_of(r.int(7)?)?,
        reference: r.text(8)?.to_owned(),
        time_ms: u64_of(r.int(9)?)?,
    })
}

pub(crate) fn postings_in(
    tx: &mut dyn Tx,
    from: u64,
    limit: usize,
) -> Result<Vec<PostingRecord>, LedgerError> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let rows = tx.query(
        &format!("SELECT {POSTING_COLUMNS} FROM postings WHERE seq >= $1 ORDER BY seq LIMIT $2"),
        &[Value::Int(from), Value::Int(limit.min(1 << 20) as i64)],
    )?;
    rows.iter().map(posting_of).collect()
}

pub(crate) fn require_init(tx: &mut dyn Tx) -> Result<(), LedgerError> {
    if tx
        .query_opt(
            "SELECT value FROM ledger_meta WHERE key = $1",
            &["supply_cap".into()],
        )?
        .is_none()
    {
        return Err(LedgerError::refused(
            Refusal::NotInitialized,
            "the ledger has not been created; run `blyan init`",
        ));
    }
    Ok(())
}

pub(crate) fn account_exists(tx: &mut dyn Tx, address: &Address) -> Result<bool, LedgerError> {
    Ok(tx
        .query_opt("SELECT 1 FROM accounts WHERE address = $1", &[hex(address)])?
        .is_some())
}

pub(crate) fn find_name(tx: &mut dyn Tx, name: &str) -> Result<Option<Address>, LedgerError> {
    tx.query_opt(
        "SELECT address FROM accounts WHERE name = $1",
        &[name.into()],
    )?
    .map(|r| parse_hex(r.text(0)?))
    .transpose()
}

pub(crate) fn insert_account(
    tx: &mut dyn Tx,
    address: Address,
    name: Option<&str>,
    kind: AccountKind,
    now_ms: u64,
) -> Result<(), LedgerError> {
    tx.exec(
        "INSERT INTO accounts (address, name, kind, created_ms) VALUES ($1, $2, $3, $4)",
        &[
            hex(&address),
            name.into(),
            kind.as_str().into(),
            now_i64(now_ms),
        ],
    )?;
    for book in [Book::Available, Book::Pending] {
        tx.exec(
            "INSERT INTO balances (address, book, amount) VALUES ($1, $2, 0)",
            &[hex(&address), Value::Int(book.number())],
        )?;
    }
    Ok(())
}

pub(crate) fn balance_in(tx: &mut dyn Tx, address: Address) -> Result<Balance, LedgerError> {
    let rows = tx.query(
        "SELECT book, amount FROM balances WHERE address = $1",
        &[hex(&address)],
    )?;
    if rows.is_empty() {
        return Err(LedgerError::refused(
            Refusal::UnknownAccount,
            format!("no account {address}"),
        ));
    }
    let mut out = Balance {
        address,
        available: Amount::ZERO,
        pending: Amount::ZERO,
        owed: crate::owed::owed_to_in(tx, &address)?,
    };
    for r in &rows {
        let amount = amount_of(r.int(1)?)?;
        match Book::from_number(r.int(0)?)? {
            Book::Available => out.available = amount,
            Book::Pending => out.pending = amount,
        }
    }
    Ok(out)
}

fn book_balance(
    tx: &mut dyn Tx,
    address: &Address,
    book: Book,
) -> Result<Option<Amount>, LedgerError> {
    tx.query_opt(
        "SELECT amount FROM balances WHERE address = $1 AND book = $2",
        &[hex(address), Value::Int(book.number())],
    )?
    .map(|r| amount_of(r.int(0)?))
    .transpose()
}

pub(crate) fn circulating_in(tx: &mut dyn Tx, econ: Economics) -> Result<Amount, LedgerError> {
    let unminted = balance_in(tx, SystemAccount::Emission.address())?.available;
    let burned = balance_in(tx, SystemAccount::Burn.address())?.available;
    circulating(econ, unminted, burned)
}

/// The supply in circulation: the cap less what is unminted and what is burned.
pub(crate) fn circulating(
    econ: Economics,
    unminted: Amount,
    burned: Amount,
) -> Result<Amount, LedgerError> {
    econ.supply_cap
        .checked_sub(unminted)
        .and_then(|a| a.checked_sub(burned))
        .ok_or_else(|| LedgerError::Store("emission plus burn exceed the supply cap".into()))
}

pub(crate) fn next_seq(tx: &mut dyn Tx) -> Result<u64, LedgerError> {
    let row = tx.query_opt("SELECT MAX(seq) FROM postings", &[])?;
    match row.map(|r| r.opt_int(0)).transpose()?.flatten() {
        Some(max) => Ok(u64_of(max)? + 1),
        None => Ok(0),
    }
}

/// Writes `legs` as one operation: checks every payer can pay and no payee overflows, then
/// moves the balances and appends the postings. Returns (operation id, last sequence
/// number). The burn account never pays. Runs inside the caller's write transaction, so a
/// refusal part-way rolls every leg back.
pub(crate) fn post(
    tx: &mut dyn Tx,
    legs: &[Leg],
    reference: &str,
    now_ms: u64,
) -> Result<(u64, u64), LedgerError> {
    let first = next_seq(tx)?;
    let mut seq = first;
    for leg in legs {
        if leg.amount.is_zero() {
            return Err(LedgerError::refused(
                Refusal::ZeroAmount,
                "a posting moves a positive amount",
            ));
        }
        if leg.debit == leg.credit && leg.debit_book == leg.credit_book {
            return Err(LedgerError::refused(
                Refusal::SelfTransfer,
                format!("{} cannot pay itself", leg.debit),
            ));
        }
        if SystemAccount::of(leg.debit) == Some(SystemAccount::Burn) {
            return Err(LedgerError::refused(
                Refusal::SystemAccount,
                "the burn account can never pay",
            ));
        }
        let amount = int(leg.amount)?;
        // One statement per side: the debit only where the funds are there, the credit only
        // where it cannot overflow. A miss is explained afterwards, off the common path.
        let debited = tx.exec(
            "UPDATE balances SET amount = amount - $3
             WHERE address = $1 AND book = $2 AND amount >= $3",
            &[
                hex(&leg.debit),
                Value::Int(leg.debit_book.number()),
                amount.clone(),
            ],
        )?;
        if debited == 0 {
            let have = book_balance(tx, &leg.debit, leg.debit_book)?.ok_or_else(|| {
                LedgerError::refused(Refusal::UnknownAccount, format!("no account {}", leg.debit))
            })?;
            return Err(LedgerError::refused(
                Refusal::InsufficientFunds,
                format!(
                    "{} has {} nano-BLY {}, {} needed",
                    leg.debit,
                    have.nano(),
                    match leg.debit_book {
                        Book::Available => "available",
                        Book::Pending => "pending",
                    },
                    leg.amount.nano()
                ),
            ));
        }
        let credited = tx.exec(
            "UPDATE balances SET amount = amount + $3
             WHERE address = $1 AND book = $2 AND amount <= CAST($4 AS BIGINT) - $3",
            &[
                hex(&leg.credit),
                Value::Int(leg.credit_book.number()),
                amount.clone(),
                Value::Int(i64::MAX),
            ],
        )?;
        if credited == 0 {
            return Err(match book_balance(tx, &leg.credit, leg.credit_book)? {
                None => LedgerError::refused(
                    Refusal::UnknownAccount,
                    format!("no account {}", leg.credit),
                ),
                Some(_) => LedgerError::refused(
                    Refusal::AmountOverflow,
                    format!("{}'s balance would overflow", leg.credit),
                ),
            });
        }
        tx.exec(
            &format!(
                "INSERT INTO postings ({POSTING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            &[
                Value::Int(seq as i64),
                Value::Int(first as i64),
                leg.kind.as_str().into(),
                hex(&leg.debit),
                Value::Int(leg.debit_book.number()),
                hex(&leg.credit),
                Value::Int(leg.credit_book.number()),
                amount,
                reference.into(),
                now_i64(now_ms),
            ],
        )?;
        seq += 1;
    }
    Ok((first, seq.saturating_sub(1)))
}
