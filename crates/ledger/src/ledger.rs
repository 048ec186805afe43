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
use crate::journal::{
    Balance, Leg, POSTING_COLUMNS, TransferReceipt, account_exists, balance_in, check_mint,
    check_transfer, circulating, find_name, hex, insert_account, int, mint_in, next_seq, parse_hex,
    post, posting_of, postings_in, require_init, transfer_in, u64_of,
};
use crate::posting::{Book, PostingKind, PostingRecord, REFERENCE_LEN_MAX};
use crate::sql::{self, Store, Value};
use crate::tokenomics::Economics;
use crate::{LedgerError, Refusal};

/// Most postings one history page returns.
pub const HISTORY_LIMIT_MAX: usize = 1000;

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

/// The ledger over a [`Store`].
#[derive(Debug, Clone)]
pub struct Ledger {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) econ: Economics,
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
                    crate::idempotency::idem_lookup(tx, &from, key, &request, now_ms, u64::MAX)?
            {
                return match stored {
                    crate::idempotency::Stored::Done { body, .. } => {
                        serde_json::from_str::<TransferReceipt>(&body)
                            .map(|r| TransferReceipt {
                                replayed: true,
                                ..r
                            })
                            .map_err(|e| LedgerError::Store(format!("stored receipt: {e}")))
                    }
                    crate::idempotency::Stored::InFlight => Err(LedgerError::Store(
                        "a transfer under this idempotency key is in flight".into(),
                    )),
                };
            }
            let receipt = transfer_in(tx, from, to, amount, kind, reference, now_ms)?;
            if let Some(key) = idempotency {
                let body = serde_json::to_string(&receipt)
                    .map_err(|e| LedgerError::Store(format!("encoding a receipt: {e}")))?;
                crate::idempotency::idem_store(tx, &from, key, &request, 200, &body, now_ms)?;
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
        check_mint(to, amount, true)?;
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
