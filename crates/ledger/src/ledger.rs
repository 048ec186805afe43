//! The double-entry core: accounts, postings, transfers, mints, supply and history.
//!
//! Every balance change is a posting that takes an amount from one (account, book) and gives
//! it to another, so the sum of all balances is always the supply cap: the emission account
//! opens with the whole cap, minting moves from it, burning moves to the burn account, which
//! can never pay. Each operation runs in one serialized write transaction: it checks, posts
//! and commits, or posts nothing.

use std::sync::Arc;

use blyan_primitives::{Address, Amount, Hash};
use serde::Serialize;

use crate::accounts::{AccountKind, OPERATOR, SystemAccount};
use crate::posting::{Book, PostingKind, PostingRecord, REFERENCE_LEN_MAX};
use crate::sql::{self, Row, Store, Tx, Value};
use crate::tokenomics::Economics;
use crate::{LedgerError, Refusal};

/// Most postings one history page returns.
pub const HISTORY_LIMIT_MAX: usize = 1000;

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

/// The supply and size of the ledger.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Supply {
    /// The supply cap.
    pub cap: Amount,
    /// Not yet minted (the emission account's balance).
    pub unminted: Amount,
    /// Destroyed (the burn account's balance).
    pub burned: Amount,
    /// In circulation: cap − unminted − burned.
    pub circulating: Amount,
    /// Postings so far.
    pub postings: u64,
    /// Accounts, system accounts included.
    pub accounts: u64,
}

/// One account as listed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct AccountInfo {
    /// Address.
    pub address: Address,
    /// Name, for system accounts and the operator.
    pub name: Option<String>,
    /// Kind.
    pub kind: AccountKind,
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

/// The ledger over a [`Store`].
#[derive(Debug, Clone)]
pub struct Ledger {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) econ: Economics,
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

fn u64_of(v: i64) -> Result<u64, LedgerError> {
    u64::try_from(v).map_err(|_| LedgerError::Store(format!("negative counter {v} in the store")))
}

pub(crate) fn now_i64(now_ms: u64) -> Value {
    Value::Int(i64::try_from(now_ms).unwrap_or(i64::MAX))
}

/// Checks a free-text reference: at most [`REFERENCE_LEN_MAX`] bytes, no control characters.
pub fn check_reference(reference: &str) -> Result<(), LedgerError> {
    if reference.len() > REFERENCE_LEN_MAX || reference.chars().any(char::is_control) {
        return Err(LedgerError::refused(
            Refusal::InvalidReference,
            format!("a reference is at most {REFERENCE_LEN_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Parses a user-given amount of BLY, refusing zero.
pub fn parse_amount(s: &str) -> Result<Amount, LedgerError> {
    let amount: Amount = s.parse().map_err(|e: blyan_primitives::AmountParseError| {
        let refusal = match e {
            blyan_primitives::AmountParseError::Overflow(_) => Refusal::AmountOverflow,
            _ => Refusal::MalformedAmount,
        };
        LedgerError::refused(refusal, e.to_string())
    })?;
    if amount.is_zero() {
        return Err(LedgerError::refused(
            Refusal::ZeroAmount,
            "the amount must be above zero",
        ));
    }
    Ok(amount)
}

impl Ledger {
    /// The ledger in `store` with `econ`. Call [`init`](Ledger::init) once before use.
    pub fn new(store: Arc<dyn Store>, econ: Economics) -> Ledger {
        Ledger { store, econ }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The economics.
    pub fn economics(&self) -> &Economics {
        &self.econ
    }

    /// Creates the system accounts and the genesis allocation, once; later calls check the
    /// supply cap matches and change nothing. Returns whether this call created the ledger.
    pub fn init(&self, now_ms: u64) -> Result<bool, LedgerError> {
        let econ = self.econ;
        sql::write(&*self.store, |tx| {
            if let Some(row) = tx.query_opt(
                "SELECT value FROM ledger_meta WHERE key = $1",
                &["supply_cap".into()],
            )? {
                let stored = row.text(0)?;
                if stored != econ.supply_cap.nano().to_string() {
                    return Err(LedgerError::refused(
                        Refusal::TokenomicsMismatch,
                        format!(
                            "this ledger was created with a supply cap of {stored} nano-BLY; \
                             the tokenomics say {}",
                            econ.supply_cap.nano()
                        ),
                    ));
                }
                // System accounts added by later versions (vesting) open empty.
                for s in SystemAccount::ALL {
                    if !account_exists(tx, &s.address())? {
                        insert_account(
                            tx,
                            s.address(),
                            Some(s.name()),
                            AccountKind::System,
                            now_ms,
                        )?;
                    }
                }
                return Ok(false);
            }
            tx.exec(
                "INSERT INTO ledger_meta (key, value) VALUES ($1, $2)",
                &[
                    "supply_cap".into(),
                    econ.supply_cap.nano().to_string().into(),
                ],
            )?;
            for s in SystemAccount::ALL {
                insert_account(tx, s.address(), Some(s.name()), AccountKind::System, now_ms)?;
            }
            tx.exec(
                "UPDATE balances SET amount = $2 WHERE address = $1 AND book = 0",
                &[
                    hex(&SystemAccount::Emission.address()),
                    int(econ.supply_cap)?,
                ],
            )?;
            if !econ.genesis_allocation.is_zero() {
                post(
                    tx,
                    &[Leg {
                        kind: PostingKind::Genesis,
                        debit: SystemAccount::Emission.address(),
                        debit_book: Book::Available,
                        credit: SystemAccount::Treasury.address(),
                        credit_book: Book::Available,
                        amount: econ.genesis_allocation,
                    }],
                    "genesis_allocation",
                    now_ms,
                )?;
            }
            Ok(true)
        })
    }

    /// Whether [`init`](Ledger::init) has run on this store.
    pub fn is_initialized(&self) -> Result<bool, LedgerError> {
        sql::read(&*self.store, |tx| {
            Ok(tx
                .query_opt(
                    "SELECT value FROM ledger_meta WHERE key = $1",
                    &["supply_cap".into()],
                )?
                .is_some())
        })
    }

    /// Opens an account at `address`; refuses one that exists.
    pub fn create_account(
        &self,
        address: Address,
        kind: AccountKind,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            if account_exists(tx, &address)? {
                return Err(LedgerError::refused(
                    Refusal::AccountExists,
                    format!("account {address} already exists"),
                ));
            }
            insert_account(tx, address, None, kind, now_ms)
        })
    }

    /// Opens the `operator` account at `address` and pays it the operator grant from the
    /// treasury, once. Returns the operator's address (the existing one if already made).
    pub fn create_operator(&self, address: Address, now_ms: u64) -> Result<Address, LedgerError> {
        let grant = self.econ.operator_grant;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            if let Some(existing) = find_name(tx, OPERATOR)? {
                return Ok(existing);
            }
            if account_exists(tx, &address)? {
                return Err(LedgerError::refused(
                    Refusal::AccountExists,
                    format!("account {address} already exists"),
                ));
            }
            insert_account(tx, address, Some(OPERATOR), AccountKind::Operator, now_ms)?;
            if !grant.is_zero() {
                post(
                    tx,
                    &[Leg {
                        kind: PostingKind::Transfer,
                        debit: SystemAccount::Treasury.address(),
                        debit_book: Book::Available,
                        credit: address,
                        credit_book: Book::Available,
                        amount: grant,
                    }],
                    "operator_grant",
                    now_ms,
                )?;
            }
            Ok(address)
        })
    }

    /// The address of `who`: an address (checked, EIP-55 case or one case) or an account
    /// name (`operator`, `treasury`, …). Names must exist; addresses need not.
    pub fn resolve(&self, who: &str) -> Result<Address, LedgerError> {
        if who.starts_with("0x") || who.starts_with("0X") {
            return who
                .parse::<Address>()
                .map_err(|e| LedgerError::refused(Refusal::MalformedAddress, e.to_string()));
        }
        if let Some(s) = SystemAccount::ALL.into_iter().find(|s| s.name() == who) {
            return Ok(s.address());
        }
        if who.len() > 64 {
            return Err(LedgerError::refused(
                Refusal::UnknownAccount,
                "name too long",
            ));
        }
        let found = sql::read(&*self.store, |tx| find_name(tx, who))?;
        found.ok_or_else(|| {
            LedgerError::refused(
                Refusal::UnknownAccount,
                format!("no account named {who:?}; give an address (0x…) or a known name"),
            )
        })
    }

    /// `address`'s balances; refuses an address with no account.
    pub fn balance(&self, address: Address) -> Result<Balance, LedgerError> {
        sql::read(&*self.store, |tx| balance_in(tx, address))
    }

    /// Every account, in address order.
    pub fn accounts(&self) -> Result<Vec<AccountInfo>, LedgerError> {
        sql::read(&*self.store, |tx| {
            tx.query(
                "SELECT address, name, kind FROM accounts ORDER BY address",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(AccountInfo {
                    address: parse_hex(r.text(0)?)?,
                    name: r.opt_text(1)?.map(str::to_owned),
                    kind: match r.text(2)? {
                        "system" => AccountKind::System,
                        "operator" => AccountKind::Operator,
                        "user" => AccountKind::User,
                        _ => AccountKind::External,
                    },
                })
            })
            .collect()
        })
    }

    /// Moves `amount` from `from` to `to`. Paying the burn account burns. System accounts
    /// other than the treasury never pay by transfer, and nothing may be paid to the emission
    /// account or the fee pool. With `idempotency`, a repeat of the same request returns the
    /// first receipt without posting again, and a different request under the key is refused.
    pub fn transfer(
        &self,
        from: Address,
        to: Address,
        amount: Amount,
        reference: &str,
        idempotency: Option<&str>,
        now_ms: u64,
    ) -> Result<TransferReceipt, LedgerError> {
        check_reference(reference)?;
        let kind = check_transfer(from, to, amount)?;
        let request =
            Hash::of(format!("transfer:{from}:{to}:{}:{reference}", amount.nano()).as_bytes())
                .to_string();
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            if let Some(key) = idempotency
                && let Some(stored) =
                    crate::billing::idem_lookup(tx, &from, key, &request, now_ms, u64::MAX)?
            {
                return match stored {
                    crate::billing::Stored::Done { body, .. } => {
                        serde_json::from_str::<TransferReceipt>(&body)
                            .map(|r| TransferReceipt {
                                replayed: true,
                                ..r
                            })
                            .map_err(|e| LedgerError::Store(format!("stored receipt: {e}")))
                    }
                    crate::billing::Stored::InFlight => Err(LedgerError::Store(
                        "a transfer under this idempotency key is in flight".into(),
                    )),
                };
            }
            let receipt = transfer_in(tx, from, to, amount, kind, reference, now_ms)?;
            if let Some(key) = idempotency {
                let body = serde_json::to_string(&receipt)
                    .map_err(|e| LedgerError::Store(format!("encoding a receipt: {e}")))?;
                crate::billing::idem_store(tx, &from, key, &request, 200, &body, now_ms)?;
            }
            Ok(receipt)
        })
    }

    /// Makes every transfer in `batch` in one write transaction: all of them or none. Each
    /// is its own operation with its own receipt, under the same rules as
    /// [`transfer`](Ledger::transfer).
    pub fn transfer_batch(
        &self,
        batch: &[(Address, Address, Amount)],
        reference: &str,
        now_ms: u64,
    ) -> Result<Vec<TransferReceipt>, LedgerError> {
        check_reference(reference)?;
        let kinds = batch
            .iter()
            .map(|&(from, to, amount)| check_transfer(from, to, amount))
            .collect::<Result<Vec<_>, _>>()?;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            let mut out = Vec::with_capacity(batch.len());
            for (&(from, to, amount), &kind) in batch.iter().zip(&kinds) {
                out.push(transfer_in(tx, from, to, amount, kind, reference, now_ms)?);
            }
            Ok(out)
        })
    }

    /// Mints `amount` to `to` from the emission account (a reward), refusing what would pass
    /// this epoch's share of the yearly inflation cap or the supply cap. Opens `to`'s
    /// account if it has none.
    pub fn mint(
        &self,
        to: Address,
        amount: Amount,
        reference: &str,
        now_ms: u64,
    ) -> Result<TransferReceipt, LedgerError> {
        check_reference(reference)?;
        if amount.is_zero() {
            return Err(LedgerError::refused(
                Refusal::ZeroAmount,
                "the amount must be above zero",
            ));
        }
        if let Some(s) = SystemAccount::of(to)
            && !matches!(
                s,
                SystemAccount::Treasury
                    | SystemAccount::ValidatorPool
                    | SystemAccount::RoyaltyPool
                    | SystemAccount::Vesting
            )
        {
            return Err(LedgerError::refused(
                Refusal::SystemAccount,
                format!("cannot mint to the {s} account"),
            ));
        }
        let econ = self.econ;
        sql::write(&*self.store, |tx| {
            require_init(tx)?;
            mint_in(tx, econ, to, amount, reference, now_ms)
        })
    }

    /// The supply and the ledger's size.
    pub fn supply(&self) -> Result<Supply, LedgerError> {
        let econ = self.econ;
        sql::read(&*self.store, |tx| {
            require_init(tx)?;
            let unminted = balance_in(tx, SystemAccount::Emission.address())?.available;
            let burned = balance_in(tx, SystemAccount::Burn.address())?.available;
            let postings = next_seq(tx)?;
            let accounts = tx
                .query_opt("SELECT COUNT(*) FROM accounts", &[])?
                .map_or(Ok(0), |r| r.int(0))?;
            Ok(Supply {
                cap: econ.supply_cap,
                unminted,
                burned,
                circulating: circulating(econ, unminted, burned)?,
                postings,
                accounts: u64_of(accounts)?,
            })
        })
    }

    /// `address`'s postings, newest first, before sequence number `before` if given.
    pub fn history(
        &self,
        address: Address,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PostingRecord>, LedgerError> {
        let limit = limit.clamp(1, HISTORY_LIMIT_MAX) as i64;
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        sql::read(&*self.store, |tx| {
            if !account_exists(tx, &address)? {
                return Err(LedgerError::refused(
                    Refusal::UnknownAccount,
                    format!("no account {address}"),
                ));
            }
            let rows = tx.query(
                &format!(
                    "SELECT {POSTING_COLUMNS} FROM postings
                     WHERE (debit = $1 OR credit = $1) AND seq < $2
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[hex(&address), Value::Int(before), Value::Int(limit)],
            )?;
            rows.iter().map(posting_of).collect()
        })
    }

    /// Postings `from .. from + limit` in sequence order.
    pub fn postings(&self, from: u64, limit: usize) -> Result<Vec<PostingRecord>, LedgerError> {
        sql::read(&*self.store, |tx| postings_in(tx, from, limit))
    }

    /// The number of postings (the next sequence number).
    pub fn posting_count(&self) -> Result<u64, LedgerError> {
        sql::read(&*self.store, next_seq)
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
fn check_transfer(from: Address, to: Address, amount: Amount) -> Result<PostingKind, LedgerError> {
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

fn find_name(tx: &mut dyn Tx, name: &str) -> Result<Option<Address>, LedgerError> {
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
fn circulating(econ: Economics, unminted: Amount, burned: Amount) -> Result<Amount, LedgerError> {
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
