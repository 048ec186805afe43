//! The Proof-of-Learning record on chain P, and recomputing any verdict in it.
//!
//! Chain P holds the pool commitment, every verdict in order, and after each verdict a
//! reveal of the items it used. The items a verdict drew are retired by it, so the retired
//! set before any verdict is the union of the items of the verdicts below it: nothing else
//! needs to be stored, and `pol verify` can redo the draw, the evaluation and the decision
//! from the chain (the reveal opens the items against the committed roots) and the
//! candidate bytes, without the validator's pool or secret.

use std::collections::{BTreeMap, BTreeSet};

use blyan_chain::spec::expert_group_name;
use blyan_chain::{BlockKind, ChainError, ChainId, PolMode, PoolCommit, Reveal, Store, Verdict};
use blyan_primitives::{ExpertId, Hash};
use serde::Serialize;

use crate::eval::{EVALUATOR_VERSION, EvalError, ExpertWeights, ItemScore, Model};
use crate::judge::{Judgement, LeakCheck, Reason, Rules, judge, leak_check};
use crate::pool::{Pool, evaluation_seed};
use crate::snapshot::{Snapshot, SnapshotError, expert_weights, tensors_of_payload};
use crate::stats::StatsError;

/// Why an evaluation could not reach a judgement.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// A drawn item is not in the pool (a pool that does not match the commitment).
    #[error("item {0} is not in the pool")]
    NotInPool(u32),
    /// The evaluator refused the model, the candidate or an item.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The scores cannot be tested.
    #[error(transparent)]
    Stats(#[from] StatsError),
}

impl EvaluateError {
    /// Whether a loss came out NaN or infinite (the candidate's fault, not the node's).
    pub fn is_non_finite(&self) -> bool {
        matches!(self, EvaluateError::Eval(EvalError::NonFinite { .. }))
    }
}

/// One verdict block.
#[derive(Clone, Debug)]
pub struct VerdictEntry {
    /// Its block hash.
    pub hash: Hash,
    /// Its height on chain P.
    pub height: u64,
    /// The proof-chain block it extends (its draw's seed depends on it).
    pub prev: Hash,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The verdict.
    pub verdict: Verdict,
}

/// What chain P says about Proof of Learning.
#[derive(Clone, Debug, Default)]
pub struct PolRecord {
    /// The pool commitment block and its payload.
    pub commit: Option<(Hash, PoolCommit)>,
    /// Every verdict, oldest first.
    pub verdicts: Vec<VerdictEntry>,
    /// The reveal block of each verdict that has one, by verdict.
    pub reveals: BTreeMap<Hash, Hash>,
}

impl PolRecord {
    /// Reads chain P.
    pub fn read(store: &Store) -> Result<PolRecord, SnapshotError> {
        let mut record = PolRecord::default();
        let Some((top, _)) = store.head(ChainId::Proof)? else {
            return Ok(record);
        };
        for height in 0..=top {
            let hash = store
                .at_height(ChainId::Proof, height)?
                .ok_or(ChainError::NotFound(Hash::ZERO))?;
            let header = store.header(&hash)?.ok_or(ChainError::NotFound(hash))?;
            record.push(store, hash, &header)?;
        }
        Ok(record)
    }

    /// Adds a block just appended to chain P.
    pub fn push(
        &mut self,
        store: &Store,
        hash: Hash,
        header: &blyan_chain::BlockHeader,
    ) -> Result<(), SnapshotError> {
        let corrupt = |e: blyan_chain::BlockError| SnapshotError::Corrupt {
            block: hash,
            detail: e.to_string(),
        };
        match header.kind {
            BlockKind::PoolCommit if self.commit.is_none() => {
                let payload = store.payload_verified(&hash)?;
                self.commit = Some((hash, PoolCommit::decode(&payload).map_err(corrupt)?));
            }
            BlockKind::Verdict => {
                let payload = store.payload_verified(&hash)?;
                self.verdicts.push(VerdictEntry {
                    hash,
                    height: header.height,
                    prev: header.prev,
                    timestamp_ms: header.timestamp_ms,
                    verdict: Verdict::decode(&payload).map_err(corrupt)?,
                });
            }
            // A reveal depends on the verdict it opens; its payload is read only when that
            // verdict is verified ([`reveal_of`] checks that they agree).
            BlockKind::Reveal => {
                if let Some(verdict) = header.depends_on.first() {
                    self.reveals.entry(*verdict).or_insert(hash);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Items retired by verdicts below proof-chain height `height`.
    pub fn retired_before(&self, height: u64) -> BTreeSet<u32> {
        self.verdicts
            .iter()
            .filter(|v| v.height < height)
            .flat_map(|v| v.verdict.items.iter().copied())
            .collect()
    }

    /// Every retired item.
    pub fn retired(&self) -> BTreeSet<u32> {
        self.retired_before(u64::MAX)
    }

    /// Whether a candidate with this payload hash was judged before.
    pub fn seen(&self, candidate: &Hash) -> bool {
        self.verdicts
            .iter()
            .any(|v| v.verdict.candidate == *candidate && v.verdict.replicates.is_none())
    }

    /// The verdict block `hash`.
    pub fn verdict(&self, hash: &Hash) -> Option<&VerdictEntry> {
        self.verdicts.iter().find(|v| v.hash == *hash)
    }

    /// The replication of verdict `hash`, if one was made.
    pub fn replication_of(&self, hash: &Hash) -> Option<&VerdictEntry> {
        self.verdicts
            .iter()
            .find(|v| v.verdict.replicates == Some(*hash))
    }

    /// Accepted learning-test verdicts not yet replicated, oldest first.
    pub fn awaiting_replication(&self) -> Vec<&VerdictEntry> {
        self.verdicts
            .iter()
            .filter(|v| {
                v.verdict.accepted
                    && v.verdict.replicates.is_none()
                    && v.verdict.mode != PolMode::Pow
                    && self.replication_of(&v.hash).is_none()
            })
            .collect()
    }
}

/// The rules a verdict recorded.
pub fn rules_of(v: &Verdict) -> Rules {
    Rules::new(
        v.alpha_percent,
        v.min_effect_micro,
        v.mixture_tolerance_bps,
        v.stage_items,
        v.stages,
        v.leak_margin_micro,
    )
}

/// The reveal of verdict `verdict`, if chain P holds one.
pub fn reveal_of(
    store: &Store,
    record: &PolRecord,
    verdict: &Hash,
) -> Result<Option<Reveal>, SnapshotError> {
    let Some(hash) = record.reveals.get(verdict) else {
        return Ok(None);
    };
    let payload = store.payload_verified(hash)?;
    let corrupt = |detail: String| SnapshotError::Corrupt {
        block: *hash,
        detail,
    };
    let reveal = Reveal::decode(&payload).map_err(|e| corrupt(e.to_string()))?;
    if reveal.verdict != *verdict {
        return Err(corrupt(format!(
            "the reveal opens verdict {} but depends on {verdict}",
            reveal.verdict
        )));
    }
    Ok(Some(reveal))
}

/// The model a verdict compares against: the parameter chain at `param_head`, with expert
/// `expert` at version `parent`.
pub fn parent_model(
    store: &Store,
    param_head: Hash,
    expert: ExpertId,
    parent: Hash,
) -> Result<Model, SnapshotError> {
    let mut snap = Snapshot::at(store, Some(param_head))?;
    snap.heads.insert(expert_group_name(expert), parent);
    snap.model(store)
}

/// The weights of a candidate payload (an expert block's tensors).
pub fn candidate_weights(payload: &[u8]) -> Result<ExpertWeights, String> {
    expert_weights(&tensors_of_payload(payload)?)
}

/// What a sequential evaluation found.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The items it used (the stages it looked at), ascending: the ones it retires.
    pub items: Vec<u32>,
    /// Their scores, in the order drawn.
    pub scores: Vec<ItemScore>,
    /// Stages looked at.
    pub stages: u32,
    /// The judgement at the last look (with the contamination check applied, after
    /// [`run_trial`]).
    pub judgement: Judgement,
    /// The validation items the contamination check scored, ascending (empty when it did
    /// not run).
    pub validation_items: Vec<u32>,
    /// The contamination check, when it ran (only for an accepted candidate).
    pub leak: Option<LeakCheck>,
}

/// Scores `order` (a sample from [`Pool::draw_stages`]) stage by stage under `rules`,
/// judging everything seen so far after each stage, and stops at the first conclusive look
/// ([`Judgement::conclusive`]) or when the sample runs out.
pub fn evaluate(
    model: &Model,
    expert: ExpertId,
    child: &ExpertWeights,
    pool: &Pool,
    order: &[u32],
    rules: Rules,
    threads: usize,
) -> Result<Evaluation, EvaluateError> {
    let mut scores: Vec<ItemScore> = Vec::with_capacity(order.len());
    let mut stages = 0u32;
    let mut judgement = None;
    for stage in order.chunks(rules.stage_items.max(1) as usize) {
        let tokens: Vec<Vec<u32>> = stage
            .iter()
            .map(|&i| pool.tokens(i).ok_or(EvaluateError::NotInPool(i)))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
        scores.extend(model.score_all(expert, child, &refs, threads)?);
        stages += 1;
        let j = judge(&scores, rules)?;
        let done = j.conclusive();
        judgement = Some(j);
        if done {
            break;
        }
    }
    let judgement = match judgement {
        Some(j) => j,
        None => judge(&scores, rules)?,
    };
    let mut items = order[..scores.len()].to_vec();
    items.sort_unstable();
    Ok(Evaluation {
        items,
        scores,
        stages,
        judgement,
        validation_items: Vec::new(),
        leak: None,
    })
}

/// The validation items the contamination check of the evaluation seeded `seed` scores:
/// `k` of them (all when fewer), drawn with a seed derived from it, ascending.
pub fn validation_sample(validation: &Pool, seed: &Hash, k: usize) -> Vec<u32> {
    let k = k.min(validation.len());
    if k == 0 {
        return Vec::new();
    }
    let mut bytes = b"blyan-pol-validation".to_vec();
    bytes.extend_from_slice(&seed.0);
    validation
        .draw(Hash::of(&bytes), k, &BTreeSet::new())
        .unwrap_or_default()
}

/// Runs the contamination check on an accepted `evaluation`: scores the validation sample
/// and turns the acceptance into `suspected_leak` when the hidden gain is far above the
/// validation gain. Anything not accepted is left as it is.
#[allow(clippy::too_many_arguments)]
pub fn check_contamination(
    model: &Model,
    expert: ExpertId,
    child: &ExpertWeights,
    validation: &Pool,
    seed: &Hash,
    rules: Rules,
    evaluation: &mut Evaluation,
    threads: usize,
) -> Result<(), EvaluateError> {
    if evaluation.judgement.reason != Reason::Accepted {
        return Ok(());
    }
    let sample = validation_sample(validation, seed, rules.stage_items as usize);
    let tokens: Vec<Vec<u32>> = sample
        .iter()
        .map(|&i| validation.tokens(i).ok_or(EvaluateError::NotInPool(i)))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let scores = model.score_all(expert, child, &refs, threads)?;
    let check = leak_check(&evaluation.judgement, &scores, rules.leak_margin_micro)?;
    if check.leak {
        evaluation.judgement.reason = Reason::SuspectedLeak;
    }
    evaluation.validation_items = sample;
    evaluation.leak = Some(check);
    Ok(())
}

/// Everything that decides one evaluation, as a verdict records it: the one input of
/// [`run_trial`], which the validator runs to make a verdict and [`verify`] runs to remake
/// it.
#[derive(Clone, Copy, Debug)]
pub struct Trial<'a> {
    /// The expert.
    pub expert: ExpertId,
    /// The candidate's payload hash.
    pub candidate: Hash,
    /// The version it improves on.
    pub parent: Hash,
    /// The parameter chain's head the evaluation runs against (with `parent` as the
    /// expert's version).
    pub param_head: Hash,
    /// The head of chain P the verdict extends; with the candidate and the pool root it
    /// seeds the draw.
    pub proof_prev: Hash,
    /// Items retired before the verdict.
    pub retired: &'a BTreeSet<u32>,
    /// The test's rules.
    pub rules: Rules,
}

impl Trial<'_> {
    /// The seed, from (candidate, pool root, chain P's head), and the staged order it draws
    /// from the unretired items.
    pub fn draw(&self, pool: &Pool) -> Result<(Hash, Vec<u32>), crate::pool::PoolError> {
        let seed = evaluation_seed(&self.candidate, &pool.root(), &self.proof_prev);
        let order = pool.draw_stages(
            seed,
            self.rules.stage_items as usize,
            usize::from(self.rules.stages),
            self.retired,
        )?;
        Ok((seed, order))
    }
}

/// What a trial drew and found.
#[derive(Clone, Debug)]
pub struct Trialled {
    /// The seed of the draw.
    pub seed: Hash,
    /// The whole order drawn (every stage), of which the evaluation used a prefix.
    pub order: Vec<u32>,
    /// The evaluation.
    pub evaluation: Evaluation,
}

/// Why a trial reached no judgement.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// Too few unused items for the draw.
    #[error(transparent)]
    Draw(#[from] crate::pool::PoolError),
    /// The chain could not give the parent's model.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The evaluation failed.
    #[error(transparent)]
    Evaluate(#[from] EvaluateError),
}

/// The one path from a trial to a judgement: the seed from (candidate, pool root, chain P's
/// head), the staged draw from the unretired items, the model at `param_head` with the
/// parent in place, the sequential evaluation of the child against it, and for an accepted
/// child the contamination check on the `validation` items.
pub fn run_trial(
    store: &Store,
    pool: &Pool,
    validation: &Pool,
    trial: &Trial<'_>,
    child: &ExpertWeights,
    threads: usize,
) -> Result<Trialled, TrialError> {
    let (seed, order) = trial.draw(pool)?;
    let model = parent_model(store, trial.param_head, trial.expert, trial.parent)?;
    let mut evaluation = evaluate(
        &model,
        trial.expert,
        child,
        pool,
        &order,
        trial.rules,
        threads,
    )?;
    check_contamination(
        &model,
        trial.expert,
        child,
        validation,
        &seed,
        trial.rules,
        &mut evaluation,
        threads,
    )?;
    Ok(Trialled {
        seed,
        order,
        evaluation,
    })
}

/// The outcome of recomputing one verdict.
#[derive(Clone, Debug, Serialize)]
pub struct ProofCheck {
    /// The verdict block.
    pub proof: Hash,
    /// Whether everything recomputed equals what the block says.
    pub agrees: bool,
    /// Each disagreement, in words.
    pub problems: Vec<String>,
    /// The recomputed reason code, when the evaluation could be redone.
    pub reason: Option<String>,
    /// Recomputed n, Σd and Σd².
    pub n: Option<u64>,
    /// Recomputed Σd.
    pub sum: Option<i128>,
}

/// Recomputes verdict `proof`: the pool root, the seed from the candidate and the block it
/// extends, the draw from the items retired before it, every item's losses, the stage at
/// which the evaluation stops, the sums, the contamination check and the decision.
/// `candidate` is the candidate's expert-block payload, which must hash to the recorded
/// candidate. The items come from `local` (the validator's hidden and validation pools)
/// when given, else from the verdict's reveal on chain P, each opened against the committed
/// roots.
pub fn verify(
    store: &Store,
    record: &PolRecord,
    local: Option<(&Pool, &Pool)>,
    proof: &Hash,
    candidate: Option<&[u8]>,
    threads: usize,
) -> Result<ProofCheck, SnapshotError> {
    let entry = record.verdict(proof).ok_or(ChainError::NotFound(*proof))?;
    let v = &entry.verdict;
    let mut problems: Vec<String> = Vec::new();
    let finish = |problems: Vec<String>, j: Option<&Judgement>| ProofCheck {
        proof: *proof,
        agrees: problems.is_empty(),
        problems,
        reason: j.map(|j| j.reason.as_str().to_owned()),
        n: j.map(|j| j.sums.n),
        sum: j.map(|j| j.sums.sum),
    };
    // Who submitted it: the recorded contributor must be the submission's signer.
    let network = store
        .at_height(ChainId::Meta, 0)?
        .ok_or(ChainError::NotFound(Hash::ZERO))?;
    match v.submitter(&network) {
        Ok(signer) if signer == v.contributor => {}
        Ok(signer) => problems.push(format!(
            "the submission was signed by {signer}, but the verdict pays {}",
            v.contributor
        )),
        Err(e) => problems.push(format!("the submission signature: {e} ({})", e.code())),
    }
    if v.mode == PolMode::Pow {
        if !v.items.is_empty() || v.reward != 0 || v.reason != Reason::AcceptedPow.as_str() {
            problems.push(
                "a pow-mode verdict draws no items, pays nothing and says accepted_pow".into(),
            );
        }
        return Ok(finish(problems, None));
    }
    if v.evaluator_version != EVALUATOR_VERSION {
        problems.push(format!(
            "evaluated by evaluator {}, this is evaluator {EVALUATOR_VERSION}",
            v.evaluator_version
        ));
    }
    let Some((_, commit)) = &record.commit else {
        problems.push("chain P holds no pool commitment".into());
        return Ok(finish(problems, None));
    };
    if v.pool_root != commit.root {
        problems.push(format!(
            "pool root {} is not the committed {}",
            v.pool_root, commit.root
        ));
    }
    let opened;
    let (pool, validation) = match local {
        Some((pool, validation)) => {
            if pool.root() != commit.root || validation.root() != commit.validation_root {
                problems.push("the local pool does not match the committed roots".into());
                return Ok(finish(problems, None));
            }
            (pool, validation)
        }
        None => {
            let reveal = match reveal_of(store, record, proof) {
                Ok(Some(reveal)) => reveal,
                Ok(None) => {
                    problems.push("chain P holds no reveal of this verdict's items".into());
                    return Ok(finish(problems, None));
                }
                Err(SnapshotError::Corrupt { block, detail }) => {
                    problems.push(format!("the reveal {block}: {detail}"));
                    return Ok(finish(problems, None));
                }
                Err(e) => return Err(e),
            };
            let indices = |items: &[blyan_chain::RevealedItem]| -> Vec<u32> {
                items.iter().map(|i| i.index).collect()
            };
            if indices(&reveal.hidden) != v.items
                || indices(&reveal.validation) != v.validation_items
            {
                problems.push("the reveal does not open exactly the verdict's items".into());
            }
            let (pool, bad) = Pool::revealed(commit.root, commit.items, &reveal.hidden);
            let (validation, bad_v) = Pool::revealed(
                commit.validation_root,
                commit.validation_items,
                &reveal.validation,
            );
            if !bad.is_empty() || !bad_v.is_empty() {
                problems.push(format!(
                    "revealed items that do not open the committed roots: hidden {bad:?}, \
                     validation {bad_v:?}"
                ));
                return Ok(finish(problems, None));
            }
            opened = (pool, validation);
            (&opened.0, &opened.1)
        }
    };
    let retired = record.retired_before(entry.height);
    let trial = Trial {
        expert: v.expert,
        candidate: v.candidate,
        parent: v.parent,
        param_head: v.param_head,
        proof_prev: entry.prev,
        retired: &retired,
        rules: rules_of(v),
    };
    match trial.draw(pool) {
        Ok((seed, order)) => {
            if seed != v.seed {
                problems.push(format!("seed {} should be {seed}", v.seed));
            }
            let mut used = v.items.clone();
            used.sort_unstable();
            used.dedup();
            let mut prefix = order.get(..v.items.len()).unwrap_or(&order).to_vec();
            prefix.sort_unstable();
            if used != v.items || prefix != v.items {
                problems.push("the items are not the draw the seed gives".into());
            }
        }
        Err(e) => {
            problems.push(format!("the draw fails: {e}"));
            return Ok(finish(problems, None));
        }
    }
    let Some(payload) = candidate else {
        problems.push(format!(
            "the candidate {} is not available here",
            v.candidate
        ));
        return Ok(finish(problems, None));
    };
    if Hash::of(payload) != v.candidate {
        problems.push("the candidate bytes do not hash to the recorded candidate".into());
        return Ok(finish(problems, None));
    }
    let child = match candidate_weights(payload) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("the candidate does not parse: {e}"));
            return Ok(finish(problems, None));
        }
    };
    let done = match run_trial(store, pool, validation, &trial, &child, threads) {
        Ok(done) => done,
        Err(TrialError::Snapshot(e)) => return Err(e),
        Err(e) => {
            problems.push(format!("the evaluation fails: {e}"));
            return Ok(finish(problems, None));
        }
    };
    let e = done.evaluation;
    if e.items != v.items {
        problems.push(format!(
            "the evaluation stops after {} items, the verdict used {}",
            e.items.len(),
            v.items.len()
        ));
    }
    let j = e.judgement;
    let pairs: [(&str, i128, i128); 9] = [
        ("n", i128::from(v.n), i128::from(j.sums.n)),
        ("sum", v.sum, j.sums.sum),
        ("sum_sq", v.sum_sq, j.sums.sum_sq),
        ("parent_sum", v.parent_sum, j.parent_sum),
        ("mixture_parent", v.mixture_parent, j.mixture_parent),
        ("mixture_child", v.mixture_child, j.mixture_child),
        (
            "validation_n",
            i128::from(v.validation_n),
            e.leak.as_ref().map_or(0, |l| i128::from(l.sums.n)),
        ),
        (
            "validation_sum",
            v.validation_sum,
            e.leak.as_ref().map_or(0, |l| l.sums.sum),
        ),
        (
            "validation_sum_sq",
            v.validation_sum_sq,
            e.leak.as_ref().map_or(0, |l| l.sums.sum_sq),
        ),
    ];
    if e.validation_items != v.validation_items {
        problems.push(format!(
            "the contamination check scored {} validation items, the verdict {}",
            e.validation_items.len(),
            v.validation_items.len()
        ));
    }
    for (name, recorded, recomputed) in pairs {
        if recorded != recomputed {
            problems.push(format!("{name} is {recorded}, recomputed {recomputed}"));
        }
    }
    if v.reason != j.reason.as_str() || v.accepted != j.reason.accepted() {
        problems.push(format!(
            "the verdict says {}, recomputed {}",
            v.reason,
            j.reason.as_str()
        ));
    }
    if v.replicates.is_none() && v.gain_bps != j.gain_bps {
        problems.push(format!(
            "gain is {} bps, recomputed {}",
            v.gain_bps, j.gain_bps
        ));
    }
    Ok(finish(problems, Some(&j)))
}
