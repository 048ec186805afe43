//! The node's side of the ledger: who pays for a request, the hold made before it is queued,
//! the capture after it finishes (or the void when it does not), anchoring postings on the
//! chain, and the ledger's readiness probe.
//!
//! Every call here blocks on the ledger's database; the HTTP layer makes them from blocking
//! threads, never from async tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use blyan_ledger::{
    Anchored, AuditReport, Balance, Begin, Capture, IdempotencyKey, IdempotentReply, Ledger,
    LedgerError, PostingKind, PostingRecord, Served, Supply, TransferReceipt,
};
use blyan_model::Summary;
use blyan_primitives::{Address, Amount, ExpertId};

use crate::{ComponentReport, Node, NodeError};

/// Unanchored postings beyond which the ledger probe reports the anchoring as behind.
const UNANCHORED_COMFORT: u64 = 100_000;

/// A hold made for one generation, until it is captured. A bill dropped without being
/// captured voids its hold (and forgets its pending idempotency record), so no path that
/// leaves a request early — a refusal after the hold, a failed queue, a cancelled stream, a
/// panic unwinding through the handler — can leave the payer's funds held until the TTL.
#[derive(Debug)]
pub(crate) struct Bill {
    node: Arc<Node>,
    hold: String,
    idempotency: Option<IdempotencyKey>,
    payees: Arc<BTreeMap<ExpertId, Address>>,
    /// Set once the ledger has settled the hold (captured); then drop does nothing.
    settled: bool,
}

impl Drop for Bill {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.node.void(&self.hold, self.idempotency.as_ref());
        }
    }
}

impl Node {
    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The operator's account.
    pub fn operator(&self) -> Address {
        self.operator
    }

    pub(crate) fn refused(&self, e: LedgerError) -> NodeError {
        if let Some(r) = e.refusal() {
            self.metrics.ledger_refused(r.code());
        }
        NodeError::Ledger(e)
    }

    /// The account a request pays from: the one its API key is bound to, or, for a keyless
    /// request from a loopback address, the configured loopback account. A keyless request
    /// from elsewhere is refused with [`NodeError::Unauthorized`].
    ///
    /// As local model servers do (vLLM, llama.cpp, Ollama), a loopback caller's bearer token
    /// that is not a Blyan key at all (no `bly_` prefix: the `EMPTY`, `sk-no-key-required` or
    /// `ollama` that OpenAI clients need to start) counts as no key. Anything with the prefix
    /// is a Blyan key, and an unknown one is refused, so a mistyped key never silently bills
    /// the loopback account.
    ///
    /// A wallet's session token ([`blyan_auth::looks_like_session_token`]) bills the wallet,
    /// from anywhere, and a bad one is refused with its code.
    pub fn payer(&self, api_key: Option<&str>, loopback: bool) -> Result<Address, NodeError> {
        if let Some(token) = api_key
            && blyan_auth::looks_like_session_token(token)
        {
            return self.session_wallet(token, crate::unix_ms());
        }
        let api_key = api_key.filter(|k| !loopback || blyan_ledger::is_api_key_like(k));
        match api_key {
            Some(key) => self
                .ledger
                .account_for_api_key(key)
                .map_err(|e| self.refused(e)),
            None if loopback => self.loopback_payer.ok_or(NodeError::Unauthorized(
                "this node bills every request to an API key: send `Authorization: Bearer <key>`",
            )),
            None => Err(NodeError::Unauthorized(
                "requests from other machines need `Authorization: Bearer <api key>`; \
                 create one with `blyan account new`",
            )),
        }
    }

    /// Claims an idempotency key for a request about to run.
    pub fn idempotency_begin(&self, key: &IdempotencyKey) -> Result<Begin, NodeError> {
        self.ledger
            .idempotency_begin(key, crate::unix_ms())
            .map_err(|e| self.refused(e))
    }

    /// Forgets a claimed key whose request failed before anything was held.
    pub fn idempotency_abort(&self, key: &IdempotencyKey) {
        if let Err(e) = self.ledger.idempotency_abort(key) {
            tracing::warn!(key = ?key.key, error = %e, "releasing an idempotency key failed");
        }
    }

    pub(crate) fn hold(
        self: &Arc<Self>,
        payer: Address,
        tokens: u64,
        idempotency: Option<IdempotencyKey>,
        payees: Arc<BTreeMap<ExpertId, Address>>,
    ) -> Result<Bill, NodeError> {
        let started = Instant::now();
        let hold = self.ledger.hold(payer, tokens, crate::unix_ms());
        self.metrics
            .observe_billing("hold", started.elapsed().as_secs_f64());
        let hold = hold.map_err(|e| self.refused(e))?;
        if !hold.amount.is_zero() {
            self.metrics.ledger_posted(PostingKind::Hold.as_str(), 1);
        }
        Ok(Bill {
            node: self.clone(),
            hold: hold.id,
            idempotency,
            payees,
            settled: false,
        })
    }

    pub(crate) fn capture(
        &self,
        mut bill: Bill,
        summary: &Summary,
        reply: Option<IdempotentReply>,
    ) -> Result<Capture, NodeError> {
        let started = Instant::now();
        let mut served = Served {
            contributors: BTreeMap::new(),
            hosts: summary.remote_answered.clone(),
        };
        for (expert, tokens) in &summary.experts_used {
            let payee = bill.payees.get(expert).copied().unwrap_or(Address::ZERO);
            let slot = served.contributors.entry(payee).or_default();
            *slot = slot.saturating_add(*tokens);
        }
        let tokens =
            (summary.prompt_tokens as u64).saturating_add(summary.completion_tokens as u64);
        let finish = match (&bill.idempotency, &reply) {
            (Some(k), Some(r)) => Some((k, r)),
            _ => None,
        };
        let result = self.ledger.capture(
            &bill.hold,
            tokens,
            &served,
            self.operator,
            finish,
            crate::unix_ms(),
        );
        self.metrics
            .observe_billing("capture", started.elapsed().as_secs_f64());
        match result {
            Ok(c) => {
                bill.settled = true;
                let count = |kind: PostingKind, n: usize| {
                    if n > 0 {
                        self.metrics.ledger_posted(kind.as_str(), n as u64);
                    }
                };
                count(PostingKind::Fee, usize::from(!c.fee.is_zero()));
                count(PostingKind::Release, usize::from(!c.released.is_zero()));
                count(PostingKind::Royalty, c.royalties.len());
                count(PostingKind::HostShare, c.host_shares.len());
                count(
                    PostingKind::OperatorShare,
                    usize::from(!c.operator_share.is_zero()),
                );
                count(PostingKind::Burn, usize::from(!c.burned.is_zero()));
                Ok(c)
            }
            Err(e) => {
                // Nothing was charged; dropping the bill releases the hold so the payer is
                // not left short.
                drop(bill);
                Err(self.refused(e))
            }
        }
    }

    fn void(&self, hold: &str, idempotency: Option<&IdempotencyKey>) {
        let started = Instant::now();
        match self.ledger.void(hold, idempotency, crate::unix_ms()) {
            Ok(released) => {
                if !released.is_zero() {
                    self.metrics.ledger_posted(PostingKind::Release.as_str(), 1);
                }
            }
            Err(e) => {
                // The hold expires on its own after the hold TTL.
                tracing::warn!(hold, error = %e, "voiding a hold failed; it expires after its TTL");
            }
        }
        self.metrics
            .observe_billing("void", started.elapsed().as_secs_f64());
    }

    /// `address`'s balances.
    pub fn balance(&self, address: Address) -> Result<Balance, NodeError> {
        self.ledger.balance(address).map_err(|e| self.refused(e))
    }

    /// `address`'s postings, newest first.
    pub fn history(
        &self,
        address: Address,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PostingRecord>, NodeError> {
        self.ledger
            .history(address, before, limit)
            .map_err(|e| self.refused(e))
    }

    /// Moves `amount` from `from` to `to` (the caller has authenticated `from`).
    pub fn transfer(
        &self,
        from: Address,
        to: Address,
        amount: Amount,
        reference: &str,
        idempotency_key: Option<&str>,
    ) -> Result<TransferReceipt, NodeError> {
        let receipt = self
            .ledger
            .transfer(
                from,
                to,
                amount,
                reference,
                idempotency_key,
                crate::unix_ms(),
            )
            .map_err(|e| self.refused(e))?;
        if !receipt.replayed {
            let kind = if to == blyan_ledger::SystemAccount::Burn.address() {
                PostingKind::Burn
            } else {
                PostingKind::Transfer
            };
            self.metrics.ledger_posted(kind.as_str(), 1);
        }
        Ok(receipt)
    }

    /// The supply and the ledger's size.
    pub fn supply(&self) -> Result<Supply, NodeError> {
        self.ledger.supply().map_err(|e| self.refused(e))
    }

    /// Audits the ledger against itself and the chain.
    pub fn audit_ledger(&self) -> Result<AuditReport, NodeError> {
        Ok(self.ledger.audit(Some(&self.store))?)
    }

    /// Voids holds past their expiry (left by a crashed node, or a generation that outlived
    /// the hold TTL); returns how many.
    pub fn expire_holds(&self) -> Result<usize, NodeError> {
        let expired = self.ledger.expire_holds(crate::unix_ms())?;
        if expired > 0 {
            self.metrics
                .ledger_posted(PostingKind::Release.as_str(), expired as u64);
        }
        Ok(expired)
    }

    /// Anchors the postings not yet on the chain; returns the blocks written.
    /// A node that follows its network anchors nothing: chain L is the operator's.
    pub fn anchor_ledger(&self) -> Result<Vec<Anchored>, NodeError> {
        if !self.writer {
            return Ok(Vec::new());
        }
        let _one = self.anchoring.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::unix_ms();
        let anchored = self.ledger.anchor(
            &self.store,
            &self.signer,
            blyan_ledger::ANCHOR_BATCH_DEFAULT,
            now,
        )?;
        for a in &anchored {
            self.notify_block(a.block);
        }
        Ok(anchored)
    }

    /// The ledger: its database answers, the books sum to the supply cap, and anchoring
    /// keeps up.
    pub(crate) fn probe_ledger(&self) -> ComponentReport {
        let report = |readiness: f64, detail: String| ComponentReport {
            name: "ledger",
            readiness,
            detail,
            weight: 2.0,
            critical: true,
        };
        let supply = match self.ledger.supply() {
            Ok(s) => s,
            Err(e) => {
                return report(
                    0.0,
                    format!("{} store unreadable: {e}", self.ledger.store().backend()),
                );
            }
        };
        let anchored = match blyan_ledger::anchored_end(&self.store) {
            Ok((end, _)) => end,
            Err(e) => return report(0.5, format!("ledger chain unreadable: {e}")),
        };
        let unanchored = supply.postings.saturating_sub(anchored);
        // Captures empty the fee pool in the transaction that fills it; anything left there
        // means a split went wrong.
        match self
            .ledger
            .balance(blyan_ledger::SystemAccount::FeePool.address())
        {
            Ok(pool) if pool.available.is_zero() && pool.pending.is_zero() => {}
            Ok(pool) => {
                return report(
                    0.0,
                    format!(
                        "the fee pool holds {} nano-BLY between captures",
                        pool.available.nano()
                    ),
                );
            }
            Err(e) => return report(0.0, format!("fee pool unreadable: {e}")),
        }
        let detail = format!(
            "{} ledger at {}: {} postings ({unanchored} not yet anchored), {} accounts, {} BLY circulating",
            self.ledger.store().backend(),
            self.ledger.store().location(),
            supply.postings,
            supply.accounts,
            supply.circulating
        );
        if unanchored > UNANCHORED_COMFORT && self.config.anchor_interval_s > 0 && self.writer {
            return report(0.8, format!("{detail}; anchoring is behind"));
        }
        report(1.0, detail)
    }
}
