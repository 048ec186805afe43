//! Anchoring postings on the ledger chain, and the audit that checks the SQL store against
//! itself and against the chain.

use std::collections::BTreeMap;

use blyan_chain::{Block, BlockKind, BlockMeta, ChainId, LedgerBatch};
use blyan_primitives::{Address, Hash, SigningKey};
use serde::Serialize;

use crate::LedgerError;
use crate::accounts::SystemAccount;
use crate::journal::{parse_hex, postings_in};
use crate::ledger::Ledger;
use crate::posting::{Book, PostingRecord};
use crate::sql;

/// Postings read per page during audit and per anchor batch by default.
pub const ANCHOR_BATCH_DEFAULT: usize = 4096;

/// Discrepancies listed in a report before the audit stops collecting them.
const DISCREPANCIES_MAX: usize = 20;

/// One anchored batch.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Anchored {
    /// The ledger-chain block.
    pub block: Hash,
    /// Its height.
    pub height: u64,
    /// First posting in it.
    pub first_seq: u64,
    /// Postings in it.
    pub count: u64,
    /// Their Merkle root.
    pub root: Hash,
}

/// What an audit found.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct AuditReport {
    /// Whether every check passed.
    pub ok: bool,
    /// The store audited (`sqlite` or `postgres`).
    pub backend: String,
    /// Postings replayed.
    pub postings: u64,
    /// Accounts with a balance row.
    pub accounts: u64,
    /// Postings found on the chain, in batches.
    pub anchored: u64,
    /// Ledger-chain blocks read.
    pub batches: u64,
    /// Postings not yet on the chain (normal between anchor rounds).
    pub unanchored: u64,
    /// Whether the chain was checked at all.
    pub chain_checked: bool,
    /// What is wrong, first discrepancy first.
    pub discrepancies: Vec<String>,
}

/// The sequence number after the last posting anchored on `chain` (0 for none).
pub fn anchored_end(chain: &blyan_chain::Store) -> Result<(u64, Option<(u64, Hash)>), LedgerError> {
    let Some((height, head)) = chain.head(ChainId::Ledger)? else {
        return Ok((0, None));
    };
    let payload = chain.payload_verified(&head)?;
    let batch = LedgerBatch::decode(&payload)
        .map_err(|e| LedgerError::Store(format!("ledger block {head}: {e}")))?;
    Ok((batch.end_seq(), Some((height, head))))
}

impl Ledger {
    /// Appends the postings not yet on `chain` as ledger-chain blocks of at most
    /// `batch_max` postings each, signed by `signer`. Returns the blocks written.
    pub fn anchor(
        &self,
        chain: &blyan_chain::Store,
        signer: &SigningKey,
        batch_max: usize,
        now_ms: u64,
    ) -> Result<Vec<Anchored>, LedgerError> {
        let batch_max = batch_max.clamp(1, blyan_chain::LEDGER_BATCH_POSTINGS_MAX);
        let spec = chain
            .at_height(ChainId::Meta, 0)?
            .ok_or_else(|| LedgerError::Store("the chain holds no network to anchor on".into()))?;
        let mut out = Vec::new();
        loop {
            let (end, head) = anchored_end(chain)?;
            let postings = self.postings(end, batch_max)?;
            if postings.is_empty() {
                return Ok(out);
            }
            let (height, prev, prev_ts) = match head {
                Some((h, hash)) => {
                    let header = chain
                        .header(&hash)?
                        .ok_or(blyan_chain::ChainError::NotFound(hash))?;
                    (h + 1, hash, header.timestamp_ms)
                }
                None => (0, Hash::ZERO, 0),
            };
            let batch = LedgerBatch::new(end, postings.iter().map(PostingRecord::encode).collect());
            let count = batch.postings.len() as u64;
            let root = batch.root;
            let block = Block::new(
                ChainId::Ledger,
                height,
                prev,
                vec![spec],
                BlockKind::LedgerBatch,
                BlockMeta {
                    name: "ledger_batch".into(),
                    ..BlockMeta::default()
                },
                batch.encode(),
                signer,
                now_ms.max(prev_ts),
            );
            let hash = chain.append(block)?;
            out.push(Anchored {
                block: hash,
                height,
                first_seq: end,
                count,
                root,
            });
        }
    }

    /// Checks the ledger: every posting replayed from the opening balances keeps each
    /// account's books non-negative and gives exactly the stored balances; the balances
    /// sum to the supply cap; pending books equal the open holds; the fee pool is empty; and,
    /// with `chain`, every anchored batch is the SQL store's postings byte for byte.
    pub fn audit(&self, chain: Option<&blyan_chain::Store>) -> Result<AuditReport, LedgerError> {
        let cap = self.econ.supply_cap;
        let mut report = AuditReport {
            ok: false,
            backend: self.store.backend().to_owned(),
            postings: 0,
            accounts: 0,
            anchored: 0,
            batches: 0,
            unanchored: 0,
            chain_checked: chain.is_some(),
            discrepancies: Vec::new(),
        };
        let mut flag = |report: &mut AuditReport, what: String| {
            if report.discrepancies.len() < DISCREPANCIES_MAX {
                report.discrepancies.push(what);
            }
        };
        // One read transaction, so the replay, the balances and the holds are one snapshot.
        let (next, replay, problems, stored, holds) = sql::read(&*self.store, |tx| {
            crate::journal::require_init(tx)?;
            let mut replay: BTreeMap<(Address, Book), i128> = BTreeMap::new();
            replay.insert(
                (SystemAccount::Emission.address(), Book::Available),
                i128::from(cap.nano()),
            );
            let mut problems = Vec::new();
            let mut next = 0u64;
            loop {
                let page = postings_in(tx, next, ANCHOR_BATCH_DEFAULT)?;
                if page.is_empty() {
                    break;
                }
                for p in &page {
                    if p.seq != next {
                        problems.push(format!(
                            "posting {next} is missing (next stored is {})",
                            p.seq
                        ));
                    }
                    if p.amount.is_zero() {
                        problems.push(format!("posting {} moves nothing", p.seq));
                    }
                    if p.debit == p.credit && p.debit_book == p.credit_book {
                        problems.push(format!("posting {} pays {} to itself", p.seq, p.debit));
                    }
                    if SystemAccount::of(p.debit) == Some(SystemAccount::Burn) {
                        problems.push(format!("posting {} spends burned supply", p.seq));
                    }
                    let amount = i128::from(p.amount.nano());
                    let debit = replay.entry((p.debit, p.debit_book)).or_default();
                    *debit -= amount;
                    if *debit < 0 {
                        problems.push(format!(
                            "posting {} overdraws {} ({:?}) to {} nano-BLY",
                            p.seq, p.debit, p.debit_book, *debit
                        ));
                    }
                    *replay.entry((p.credit, p.credit_book)).or_default() += amount;
                    next = p.seq + 1;
                }
            }
            let mut stored: BTreeMap<(Address, Book), i128> = BTreeMap::new();
            for r in tx.query(
                "SELECT address, book, amount FROM balances ORDER BY address, book",
                &[],
            )? {
                stored.insert(
                    (parse_hex(r.text(0)?)?, Book::from_number(r.int(1)?)?),
                    i128::from(r.int(2)?),
                );
            }
            let mut holds: BTreeMap<Address, i128> = BTreeMap::new();
            for r in tx.query(
                "SELECT address, amount FROM holds WHERE state = 'held'",
                &[],
            )? {
                *holds.entry(parse_hex(r.text(0)?)?).or_default() += i128::from(r.int(1)?);
            }
            Ok((next, replay, problems, stored, holds))
        })?;
        report.postings = next;
        report.accounts = stored
            .keys()
            .map(|(a, _)| *a)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        for p in problems {
            flag(&mut report, p);
        }
        let keys: std::collections::BTreeSet<_> =
            replay.keys().chain(stored.keys()).copied().collect();
        for key in keys {
            let want = replay.get(&key).copied().unwrap_or(0);
            match stored.get(&key) {
                Some(&have) if have == want => {}
                Some(&have) => flag(
                    &mut report,
                    format!(
                        "{} {:?} balance is {have} nano-BLY; its postings give {want}",
                        key.0, key.1
                    ),
                ),
                None if want == 0 => {}
                None => flag(
                    &mut report,
                    format!("{} has postings but no balance row", key.0),
                ),
            }
            if want < 0 {
                flag(
                    &mut report,
                    format!("{} {:?} ends negative: {want}", key.0, key.1),
                );
            }
        }
        let total: i128 = stored.values().sum();
        if total != i128::from(cap.nano()) {
            flag(
                &mut report,
                format!(
                    "balances sum to {total} nano-BLY, not the supply cap {}",
                    cap.nano()
                ),
            );
        }
        for (key, &amount) in &stored {
            if key.1 == Book::Pending {
                let held = holds.get(&key.0).copied().unwrap_or(0);
                if held != amount {
                    flag(
                        &mut report,
                        format!(
                            "{} has {amount} nano-BLY pending but {held} in open holds",
                            key.0
                        ),
                    );
                }
            }
        }
        let pool = stored
            .get(&(SystemAccount::FeePool.address(), Book::Available))
            .copied()
            .unwrap_or(0);
        if pool != 0 {
            flag(
                &mut report,
                format!("the fee pool holds {pool} nano-BLY; it must be empty between captures"),
            );
        }
        if let Some(chain) = chain {
            self.audit_chain(chain, &mut report, &mut flag)?;
        }
        report.ok = report.discrepancies.is_empty();
        Ok(report)
    }

    fn audit_chain(
        &self,
        chain: &blyan_chain::Store,
        report: &mut AuditReport,
        flag: &mut impl FnMut(&mut AuditReport, String),
    ) -> Result<(), LedgerError> {
        let Some((head, _)) = chain.head(ChainId::Ledger)? else {
            report.unanchored = report.postings;
            return Ok(());
        };
        let mut expected = 0u64;
        for height in 0..=head {
            let hash = chain
                .at_height(ChainId::Ledger, height)?
                .ok_or_else(|| LedgerError::Store(format!("ledger chain lacks height {height}")))?;
            report.batches += 1;
            let payload = chain.payload_verified(&hash)?;
            let batch = match LedgerBatch::decode(&payload) {
                Ok(b) => b,
                Err(e) => {
                    flag(
                        report,
                        format!("ledger block {hash} at height {height}: {e}"),
                    );
                    return Ok(());
                }
            };
            if batch.first_seq != expected {
                flag(
                    report,
                    format!(
                        "ledger block {hash} starts at posting {}; the previous block ended at {expected}",
                        batch.first_seq
                    ),
                );
                return Ok(());
            }
            let sql_postings = self.postings(batch.first_seq, batch.postings.len())?;
            for (i, bytes) in batch.postings.iter().enumerate() {
                let seq = batch.first_seq + i as u64;
                match sql_postings.get(i) {
                    Some(p) if p.seq == seq && p.encode() == *bytes => {}
                    Some(p) if p.seq == seq => {
                        flag(
                            report,
                            format!(
                                "posting {seq} in the SQL store differs from the one anchored in block {hash}"
                            ),
                        );
                        return Ok(());
                    }
                    _ => {
                        flag(
                            report,
                            format!(
                                "block {hash} anchors posting {seq}, which the SQL store lacks"
                            ),
                        );
                        return Ok(());
                    }
                }
            }
            expected = batch.end_seq();
            report.anchored = expected;
        }
        report.unanchored = report.postings.saturating_sub(expected);
        Ok(())
    }
}
