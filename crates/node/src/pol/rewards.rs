//! Paying for verdicts: the validator's reward, the learning reward (half now, half vesting
//! until a replication) and the settlement of a replication, all through the ledger's owed
//! book so the emission caps never refuse an earned reward; then the verdict block.

use super::*;

impl Node {
    /// Pays the rewards the verdict earns, appends it to chain P and remembers it.
    /// `vesting` is, for a replication, what the original acceptance holds in the vesting
    /// account: paid out if the replication passes, burned if it fails.
    pub(super) fn record_verdict(
        &self,
        state: &mut PolState,
        mut verdict: Verdict,
        evidence: Option<&Evidence>,
        vesting: Option<u64>,
        now_ms: u64,
        eval_ms: u64,
    ) -> Result<VerdictReport, NodeError> {
        let settings = self.config.pol;
        let (height, prev) = next_on(&self.store, ChainId::Proof)?;
        let reference = verdict_reference(&verdict.candidate, height);
        let mut refused = None;
        let mut owed = Amount::ZERO;
        let mut note = |r: Result<blyan_ledger::Reward, blyan_ledger::LedgerError>| match r {
            Ok(r) => {
                owed = owed
                    .checked_add(r.owed)
                    .unwrap_or(Amount::from_nano(u64::MAX));
                Some(r)
            }
            Err(e) => {
                refused = Some(e.code().to_owned());
                None
            }
        };
        if verdict.mode != PolMode::Pow {
            let batches = verdict.items.len().div_ceil(settings.batch_items.max(1)) as u64;
            let validation = self
                .ledger
                .economics()
                .validation_reward
                .checked_mul(batches)
                .ok_or_else(|| {
                    blyan_ledger::LedgerError::refused(
                        blyan_ledger::Refusal::AmountOverflow,
                        "the validation reward overflows",
                    )
                });
            match validation {
                Ok(a) if a.is_zero() => {}
                validation => {
                    let paid = validation.and_then(|a| {
                        self.ledger.reward(
                            self.operator,
                            a,
                            false,
                            &format!("{reference}:validate"),
                            now_ms,
                        )
                    });
                    if let Some(r) = note(paid) {
                        verdict.validator_reward = r.minted.nano();
                    }
                }
            }
            match (verdict.accepted, vesting) {
                (true, None) => {
                    // Half of the learning reward is paid at once, the rest waits in the
                    // vesting account for the replication. What the emission caps do not
                    // allow now is owed, and paid from later epochs' budgets.
                    let full = self
                        .ledger
                        .economics()
                        .learning_reward(u64::from(verdict.gain_bps))
                        .map_or(0, |a| a.nano());
                    let now_half = full / 2;
                    if now_half > 0
                        && let Some(r) = note(self.ledger.reward(
                            verdict.contributor,
                            Amount::from_nano(now_half),
                            false,
                            &format!("{reference}:learn"),
                            now_ms,
                        ))
                    {
                        verdict.reward = r.minted.nano();
                    }
                    if full - now_half > 0
                        && note(self.ledger.reward(
                            verdict.contributor,
                            Amount::from_nano(full - now_half),
                            true,
                            &vest_reference(&reference),
                            now_ms,
                        ))
                        .is_some()
                    {
                        verdict.vesting = full - now_half;
                    }
                }
                (accepted, Some(held)) if held > 0 => {
                    let to = accepted.then_some(verdict.contributor);
                    let tag = if accepted { "vest" } else { "withdraw" };
                    let original = replicated_reference(&state.record, &verdict)?;
                    match self.ledger.settle_vested(
                        &vest_reference(&original),
                        to,
                        Amount::from_nano(held),
                        &format!("{reference}:{tag}"),
                        now_ms,
                    ) {
                        Ok(r) => {
                            if accepted {
                                verdict.reward = r.moved.nano();
                                owed = owed
                                    .checked_add(r.converted)
                                    .unwrap_or(Amount::from_nano(u64::MAX));
                            }
                        }
                        Err(e) => refused = Some(e.code().to_owned()),
                    }
                }
                _ => {}
            }
        }
        let block = Block::new(
            ChainId::Proof,
            height,
            prev,
            vec![verdict.parent],
            BlockKind::Verdict,
            BlockMeta {
                name: "verdict".into(),
                ..BlockMeta::default()
            },
            verdict.encode(),
            &self.signer,
            now_ms.max(prev_ts(&self.store, &prev)?),
        );
        // The verdict joins the record (on_appended).
        let hash = self.append_block(block, Some(state))?;
        self.metrics.record_pol_verdict(&verdict.reason);
        let reveal = self.reveal_items(state, hash, &verdict, now_ms)?;
        let judgement = evidence.map(|e| &e.judgement);
        let leak = evidence.and_then(|e| e.leak.as_ref());
        let report = VerdictReport {
            accepted: verdict.accepted,
            reason: verdict.reason.clone(),
            gain: judgement.map_or(0.0, |j| j.gain_per_position_micro() as f64 / 1e6),
            lcb: judgement.map_or(0.0, |j| j.lcb_per_position_micro() as f64 / 1e6),
            gain_bps: verdict.gain_bps,
            n: verdict.n,
            items: verdict.items.len(),
            proof: hash,
            reward: Amount::from_nano(verdict.reward),
            vesting: Amount::from_nano(verdict.vesting),
            validator_reward: Amount::from_nano(verdict.validator_reward),
            reward_refused: refused,
            owed,
            block: None,
            replicates: verdict.replicates,
            eval_ms,
            leak_excess: leak.map(|l| l.excess),
            leak_z: leak.map(|l| l.z),
            reveal,
            fee: Amount::ZERO,
            fee_refunded: false,
        };
        Ok(report)
    }
}

impl Node {
    /// Opens the items verdict `hash` used, now that it is on chain: a reveal block on
    /// chain P with each hidden item's salt, bytes and Merkle proof, and each validation
    /// item's bytes and proof, so anyone can redo the evaluation from the chain. Nothing to
    /// open for a verdict that drew no items.
    fn reveal_items(
        &self,
        state: &mut PolState,
        hash: Hash,
        verdict: &Verdict,
        now_ms: u64,
    ) -> Result<Option<Hash>, NodeError> {
        if verdict.items.is_empty() {
            return Ok(None);
        }
        let pools = state
            .pool
            .clone()
            .ok_or_else(|| NodeError::Internal("a verdict without the pool it drew".into()))?;
        let (hidden, validation) = (
            pools.0.reveal(&verdict.items),
            pools.1.reveal(&verdict.validation_items),
        );
        let (Some(hidden), Some(validation)) = (hidden, validation) else {
            return Err(NodeError::Internal(
                "a verdict's items are not in the pool it drew them from".into(),
            ));
        };
        let reveal = Reveal {
            verdict: hash,
            hidden,
            validation,
        };
        let (height, prev) = next_on(&self.store, ChainId::Proof)?;
        let block = Block::new(
            ChainId::Proof,
            height,
            prev,
            vec![hash],
            BlockKind::Reveal,
            BlockMeta {
                name: "reveal".into(),
                ..BlockMeta::default()
            },
            reveal.encode(),
            &self.signer,
            now_ms.max(prev_ts(&self.store, &prev)?),
        );
        Ok(Some(self.append_block(block, Some(state))?))
    }
}

/// The ledger reference of a verdict: its candidate and its height on chain P.
fn verdict_reference(candidate: &Hash, height: u64) -> String {
    format!("pol:{candidate}:{height}")
}

/// The reference under which an acceptance puts the second half of its learning reward in
/// the vesting account (minted, or owed until it can be).
fn vest_reference(verdict_reference: &str) -> String {
    format!("{verdict_reference}:hold")
}

/// The reference of the acceptance that `replication` replicates.
fn replicated_reference(record: &PolRecord, replication: &Verdict) -> Result<String, NodeError> {
    let original = replication.replicates.ok_or_else(|| {
        NodeError::Internal("a settlement of vesting without the verdict it replicates".into())
    })?;
    let entry = record
        .verdict(&original)
        .ok_or_else(|| NodeError::NotFound {
            what: format!("verdict {original}"),
        })?;
    Ok(verdict_reference(&entry.verdict.candidate, entry.height))
}
