//! Proof of Learning on the node: the hidden pool, submissions, replications and rewards.
//!
//! A submission is checked before any pool item is spent on it (format, finite values,
//! shapes, a parent that is still the head, not a copy of the head, not a payload judged
//! before, a bounded change, the proof-of-work stamp in hybrid mode). Then the seed is fixed
//! from the candidate's payload hash, the pool root and the proof chain's head; the items
//! are drawn from those never used; the deterministic evaluator scores parent and child;
//! the verdict block goes on chain P with every number needed to recompute it. An accepted
//! candidate becomes the expert's head at once (its block depends on the verdict) and the
//! served model is swapped. Submissions are serialised: the proof chain's head is part of
//! the seed, so two evaluations must not interleave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blyan_chain::spec::expert_group_name;
use blyan_chain::{
    Block, BlockHeader, BlockKind, BlockMeta, ChainId, Migration, PolMode, PoolCommit, Reveal,
    Store, Verdict,
};
use blyan_pol::eval::{EVALUATOR_VERSION, ExpertWeights};
use blyan_pol::record::{PolRecord, ProofCheck, Trial, TrialError, VerdictEntry, run_trial};
use blyan_pol::snapshot::{Snapshot, block_tensors, expert_weights};
use blyan_pol::{Judgement, LeakCheck, Reason, Rules};
use blyan_primitives::{Address, Amount, ExpertId, Hash, Signature, SigningKey};
use blyan_tensor::{DType, TensorDesc};
use blyan_train::TrainError;
use blyan_train::candidate::Candidate;
use serde::Serialize;

use crate::{Node, NodeError};

mod admission;
mod refusal;
mod rewards;
mod settings;
mod status;

pub(crate) use admission::{AdmittedCandidate, CheckedCandidate};
pub use admission::{Submission, candidate_id, sign_submission, solve_pow};
pub use blyan_pol::Pool;
pub use refusal::PolRefusal;
pub use settings::PolSettings;
pub use status::{Evaluating, PolStatus, VerdictSummary};
pub(crate) use status::{PolGuard, status_of};

/// Tokens per pool item (63 predictions each).
pub const ITEM_TOKENS: usize = 64;
/// Verdicts kept for `/pol/status`.
const RECENT_MAX: usize = 20;

/// One verdict as the API and CLI report it.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictReport {
    /// Whether the candidate was accepted.
    pub accepted: bool,
    /// Stable reason code.
    pub reason: String,
    /// Mean gain per position of the items that route to the expert, nats.
    pub gain: f64,
    /// Lower confidence bound of that gain, nats per position.
    pub lcb: f64,
    /// Mixture gain, basis points (what the reward pays for).
    pub gain_bps: u32,
    /// Items that route to the expert (the test's n).
    pub n: u64,
    /// Items drawn.
    pub items: usize,
    /// The verdict block on chain P.
    pub proof: Hash,
    /// BLY paid to the contributor by this verdict.
    pub reward: Amount,
    /// BLY held in the vesting account until replication.
    pub vesting: Amount,
    /// BLY paid to the validator.
    pub validator_reward: Amount,
    /// Why a reward the verdict earned could not be booked, if so (a ledger refusal code).
    /// The emission caps never refuse one: what they do not allow now is `owed`.
    pub reward_refused: Option<String>,
    /// BLY this verdict earned that the emission caps did not allow to mint now: queued in
    /// the owed book and paid, in order, from later epochs' budgets.
    pub owed: Amount,
    /// The new head's block, when accepted.
    pub block: Option<Hash>,
    /// The verdict this one replicates.
    pub replicates: Option<Hash>,
    /// Milliseconds spent evaluating.
    pub eval_ms: u64,
    /// Hidden gain minus validation gain per position, nats, and that excess in standard
    /// errors: the contamination check, when it ran (accepted candidates only).
    pub leak_excess: Option<f64>,
    /// See `leak_excess`.
    pub leak_z: Option<f64>,
    /// The reveal block that opens the items this verdict used, when it used any.
    pub reveal: Option<Hash>,
    /// The submission fee this submission paid (zero for local ones).
    pub fee: Amount,
    /// Whether that fee was refunded (an accepted candidate's is).
    pub fee_refunded: bool,
}

/// What an evaluation found: the judgement and, for an accepted candidate, the
/// contamination check.
#[derive(Clone, Debug)]
pub(crate) struct Evidence {
    pub(crate) judgement: Judgement,
    pub(crate) leak: Option<LeakCheck>,
}

/// The node's Proof-of-Learning state.
#[derive(Debug, Default)]
pub(crate) struct PolState {
    pub(crate) record: PolRecord,
    /// The hidden pool and the validation items, as committed on chain P.
    pub(crate) pool: Option<Arc<(Pool, Pool)>>,
    /// Why no pool is loaded, if none is.
    pub(crate) pool_problem: Option<String>,
}

/// Where the pool file lives.
pub fn pool_path(data_dir: &Path) -> PathBuf {
    data_dir.join("pol").join("pool.bin")
}

/// Where evaluated candidates' payloads are kept (for `pol verify` of rejected ones).
pub fn candidates_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pol").join("candidates")
}

/// Reads chain P and the pool file.
pub(crate) fn load_state(store: &Store, data_dir: &Path) -> Result<PolState, NodeError> {
    let record = PolRecord::read(store).map_err(snapshot_err)?;
    let mut state = PolState {
        record,
        ..PolState::default()
    };
    let path = pool_path(data_dir);
    match (&state.record.commit, std::fs::read(&path)) {
        (None, _) => {
            state.pool_problem =
                Some("no pool is committed on chain P (run `blyan pol pool`)".into())
        }
        (Some(_), Err(e)) => {
            state.pool_problem = Some(format!("cannot read {}: {e}", path.display()))
        }
        (Some((_, commit)), Ok(bytes)) => match Pool::decode_file(&bytes) {
            Ok((pool, validation))
                if pool.root() == commit.root && validation.root() == commit.validation_root =>
            {
                state.pool = Some(Arc::new((pool, validation)))
            }
            Ok((pool, validation)) => {
                state.pool_problem = Some(format!(
                    "{} has roots {} and {}, chain P commits to {} and {}",
                    path.display(),
                    pool.root(),
                    validation.root(),
                    commit.root,
                    commit.validation_root
                ))
            }
            Err(e) => state.pool_problem = Some(format!("{}: {e}", path.display())),
        },
    }
    Ok(state)
}

fn snapshot_err(e: blyan_pol::snapshot::SnapshotError) -> NodeError {
    match e {
        blyan_pol::snapshot::SnapshotError::Chain(c) => NodeError::Chain(c),
        other => NodeError::Internal(other.to_string()),
    }
}

fn refuse(code: PolRefusal, message: impl Into<String>) -> NodeError {
    NodeError::Pol {
        refusal: code,
        message: message.into(),
    }
}

/// One split of `corpus` under `splitter` as the chain's tokenizer reads it, each document
/// one line (`Document::line`) between BOS and EOS: the token stream pool items are cut
/// from. Also returns the number of documents.
pub fn split_tokens(
    store: &Store,
    corpus: &blyan_train::corpus::Corpus,
    split: blyan_train::corpus::Split,
    splitter: blyan_train::corpus::Splitter<'_>,
) -> Result<(Vec<u32>, usize), NodeError> {
    let (_, meta) = store
        .meta()?
        .ok_or_else(|| NodeError::NoNetwork(store.dir().display().to_string()))?;
    let tokenizer = blyan_tokenizer::Tokenizer::from_json(&meta.tokenizer)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let docs: Vec<String> = corpus
        .documents(split, splitter)
        .map(|d| d.line())
        .collect();
    let stream = blyan_train::data::TokenStream::from_documents(
        &tokenizer,
        &docs,
        meta.spec.bos_token_id,
        meta.spec.eos_token_id,
    )
    .map_err(|e| NodeError::Internal(e.to_string()))?;
    Ok((stream.tokens().to_vec(), docs.len()))
}

/// The pools a secret makes of `corpus`: the hidden split (keyed by `secret`) salted with
/// it, and the public validation split (keyed by the same secret), each cut into items of
/// [`ITEM_TOKENS`]; and a description of the source for the commitment.
pub fn pools_of(
    store: &Store,
    corpus: &blyan_train::corpus::Corpus,
    secret: &[u8; 32],
) -> Result<(Pool, Pool, String), NodeError> {
    use blyan_train::corpus::{Split, Splitter};
    let (hidden, hidden_docs) =
        split_tokens(store, corpus, Split::Hidden, Splitter::Keyed(secret))?;
    let (validation, validation_docs) =
        split_tokens(store, corpus, Split::Validation, Splitter::Keyed(secret))?;
    let source = format!(
        "{hidden_docs} hidden, {validation_docs} validation documents of corpus {}",
        corpus.hash().short(12),
    );
    Ok((
        Pool::salted(Pool::windows(&hidden, ITEM_TOKENS), secret),
        Pool::new(Pool::windows(&validation, ITEM_TOKENS)),
        source,
    ))
}

/// Writes the pool file of `pool` and `validation` (made by [`pools_of`] with `secret`)
/// and commits their roots and the secret's hash on chain P in a block signed by
/// `validator`. Refuses if a pool is already committed.
pub fn commit_pool(
    store: &Store,
    data_dir: &Path,
    (pool, validation): (&Pool, &Pool),
    source: &str,
    secret: &[u8; 32],
    validator: &SigningKey,
    now_ms: u64,
) -> Result<(Hash, PoolCommit), NodeError> {
    let record = PolRecord::read(store).map_err(snapshot_err)?;
    if let Some((hash, commit)) = record.commit {
        return Err(NodeError::InvalidParameter {
            name: "pool",
            reason: format!(
                "a pool is already committed on chain P (block {hash}, {} items)",
                commit.items
            ),
        });
    }
    let max = blyan_chain::POOL_ITEMS_MAX as usize;
    if pool.len() < 2 || pool.len() > max || validation.len() > max {
        return Err(NodeError::InvalidParameter {
            name: "pool",
            reason: format!(
                "{} hidden and {} validation items; a pool needs 2 to {max}",
                pool.len(),
                validation.len()
            ),
        });
    }
    let file = Pool::encode_file(pool, validation).ok_or_else(|| NodeError::InvalidParameter {
        name: "pool",
        reason: "a pool rebuilt from reveals cannot be committed".into(),
    })?;
    crate::checker::write_atomic(&pool_path(data_dir), &file)?;
    let commit = PoolCommit {
        root: pool.root(),
        items: pool.len() as u32,
        item_tokens: ITEM_TOKENS as u32,
        source: source
            .chars()
            .take(blyan_chain::PROOF_TEXT_MAX / 4)
            .collect(),
        secret_hash: PoolCommit::secret_hash_of(secret),
        validation_root: validation.root(),
        validation_items: validation.len() as u32,
    };
    let (height, prev) = next_on(store, ChainId::Proof)?;
    let block = Block::new(
        ChainId::Proof,
        height,
        prev,
        vec![],
        BlockKind::PoolCommit,
        BlockMeta {
            name: "pool".into(),
            ..BlockMeta::default()
        },
        commit.encode(),
        validator,
        now_ms.max(prev_ts(store, &prev)?),
    );
    let hash = store.append(block)?;
    Ok((hash, commit))
}

fn next_on(store: &Store, chain: ChainId) -> Result<(u64, Hash), NodeError> {
    Ok(match store.head(chain)? {
        Some((h, hash)) => (h + 1, hash),
        None => (0, Hash::ZERO),
    })
}

fn prev_ts(store: &Store, prev: &Hash) -> Result<u64, NodeError> {
    if prev.is_zero() {
        return Ok(0);
    }
    Ok(store.header(prev)?.map_or(0, |h| h.timestamp_ms))
}

impl Node {
    /// Appends `block` to the store and runs [`Node::on_appended`] for it. `pol` is the PoL
    /// state when the caller holds its lock.
    pub(crate) fn append_block(
        &self,
        block: Block,
        pol: Option<&mut PolState>,
    ) -> Result<Hash, NodeError> {
        self.require_writer("writing a block")?;
        let header = block.header.clone();
        let hash = self.store.append(block)?;
        self.after_append(hash, &header, pol)?;
        Ok(hash)
    }

    /// What follows every block stored, whoever made it: this node's verdicts and versions,
    /// an operator's rollback, and (with the network) blocks a peer delivers. Chain P's pool
    /// commitment and verdicts join the Proof-of-Learning record; a new expert head, or a
    /// migration back to an older version, is served at once (replacing any pin on that
    /// expert). `hash` must be stored already.
    pub fn on_appended(&self, hash: Hash, header: &BlockHeader) -> Result<(), NodeError> {
        self.after_append(hash, header, None)
    }

    fn after_append(
        &self,
        hash: Hash,
        header: &BlockHeader,
        pol: Option<&mut PolState>,
    ) -> Result<(), NodeError> {
        self.notify_block(hash);
        match (header.chain, header.kind) {
            (ChainId::Proof, BlockKind::Verdict | BlockKind::PoolCommit | BlockKind::Reveal) => {
                match pol {
                    Some(state) => state.record.push(&self.store, hash, header),
                    None => self.pol_state().record.push(&self.store, hash, header),
                }
                .map_err(snapshot_err)
            }
            (ChainId::Param, BlockKind::Expert | BlockKind::Migration) => {
                let Some(expert) = header
                    .meta
                    .expert
                    .or_else(|| blyan_chain::spec::expert_of_group(&header.meta.name))
                else {
                    return Ok(());
                };
                let mut pins = self.pins();
                pins.remove(&expert);
                self.serve_versions(pins)
            }
            _ => Ok(()),
        }
    }

    /// Publishes what `/pol/status` shows.
    fn publish_pol(&self, state: &PolState, evaluating: Option<Evaluating>) {
        let status = Arc::new(status_of(self.config.pol, state, evaluating));
        *self.pol_view.write().unwrap_or_else(|p| p.into_inner()) = status;
    }

    fn pol_state(&self) -> PolGuard<'_> {
        PolGuard {
            node: self,
            state: self.pol.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Largest candidate file accepted over HTTP: one expert in f32 plus room for the
    /// metadata.
    pub fn candidate_len_max(&self) -> usize {
        let c = &self.model_config;
        (3 * c.hidden_size * c.intermediate_size * 4 + (64 << 10))
            .min(blyan_train::candidate::CANDIDATE_LEN_MAX)
    }

    /// Proof-of-Learning status: the snapshot published when the state last changed (it
    /// never waits for an evaluation in progress) and the owed book, read from the ledger.
    pub fn pol_status(&self) -> PolStatus {
        let mut status = PolStatus::clone(&self.pol_view.read().unwrap_or_else(|p| p.into_inner()));
        status.owed = self.ledger.owed_totals().ok();
        status
    }

    /// Judges a candidate and, if accepted, makes it the expert's head and pays for it.
    /// A refusal before evaluation spends no pool item and writes nothing.
    pub fn pol_submit(&self, sub: Submission, now_ms: u64) -> Result<VerdictReport, NodeError> {
        self.require_writer("judging a submission")?;
        let settings = self.config.pol;
        let (_, meta) = self
            .store
            .meta()?
            .ok_or_else(|| NodeError::NoNetwork(self.data_dir.display().to_string()))?;
        let checked = CheckedCandidate::check(&sub.candidate, &meta.spec)?;
        // Rewards go to whoever signed the submission, never to an address typed beside it.
        let contributor = checked.signer(&self.network, &sub.signature)?;
        if let Some(named) = sub.contributor
            && named != contributor
        {
            return Err(refuse(
                PolRefusal::WrongSigner,
                format!("the submission names contributor {named} but was signed by {contributor}"),
            ));
        }
        let pow_nonce = admission::check_pow(&checked, &contributor, &settings, sub.pow_nonce)?;
        let mut state = self.pol_state();
        let admitted = AdmittedCandidate::admit(
            checked,
            &self.store,
            &state.record,
            &settings,
            contributor,
            pow_nonce,
        )?;
        let (expert, id, head, pow_nonce, contributor) = (
            admitted.expert(),
            admitted.id(),
            admitted.head(),
            admitted.pow_nonce(),
            admitted.contributor(),
        );
        let group = expert_group_name(expert);
        let snapshot = Snapshot::at(&self.store, None).map_err(snapshot_err)?;
        // An account pays for the hidden items an evaluation spends; the fee comes back if
        // the candidate is accepted, or if no verdict is reached.
        let fee = match sub.payer {
            Some(payer)
                if settings.mode != PolMode::Pow
                    && payer != self.operator
                    && !settings.submission_fee.is_zero() =>
            {
                self.ledger
                    .transfer(
                        payer,
                        self.operator,
                        settings.submission_fee,
                        &format!("pol submission fee {id}"),
                        None,
                        now_ms,
                    )
                    .map_err(|e| self.refused(e))?;
                Some((payer, settings.submission_fee))
            }
            _ => None,
        };
        let refund = |why: &str| match fee {
            Some((payer, amount)) => match self.ledger.transfer(
                self.operator,
                payer,
                amount,
                &format!("pol submission fee {id} refunded: {why}"),
                None,
                now_ms,
            ) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(%payer, error = %e, "refunding a submission fee failed");
                    false
                }
            },
            None => false,
        };
        let started = std::time::Instant::now();
        let (verdict, judgement) = match settings.mode {
            PolMode::Pow => (
                Verdict {
                    pow_nonce,
                    ..self.pow_verdict(&snapshot, expert, id, head, (contributor, sub.signature))
                },
                None,
            ),
            PolMode::Pol | PolMode::Hybrid => {
                let (v, j) = match self.evaluate_into_verdict(
                    &state,
                    &snapshot,
                    expert,
                    admitted.child(),
                    id,
                    head,
                    (contributor, sub.signature),
                    None,
                ) {
                    Ok(done) => done,
                    Err(e) => {
                        refund("no verdict");
                        return Err(e);
                    }
                };
                (Verdict { pow_nonce, ..v }, Some(j))
            }
        };
        let eval_ms = started.elapsed().as_millis() as u64;
        let (payload, descs) = admitted.into_block_payload();
        crate::checker::write_atomic(
            &candidates_dir(&self.data_dir).join(id.to_string()),
            &payload,
        )?;
        let mut report = self.record_verdict(
            &mut state,
            verdict,
            judgement.as_ref(),
            None,
            now_ms,
            eval_ms,
        )?;
        report.fee = fee.map_or(Amount::ZERO, |(_, amount)| amount);
        if report.accepted {
            report.fee_refunded = refund("accepted");
            let (height, prev) = next_on(&self.store, ChainId::Param)?;
            let block = Block::new(
                ChainId::Param,
                height,
                prev,
                vec![self.spec_block, head, report.proof],
                BlockKind::Expert,
                BlockMeta {
                    name: group,
                    expert: Some(expert),
                    tensors: descs,
                },
                payload,
                // Placed and signed by this validator; the contributor, who is paid for it,
                // is named in the verdict it depends on.
                &self.signer,
                now_ms.max(prev_ts(&self.store, &prev)?),
            );
            // The new head is served from here on (on_appended).
            report.block = Some(self.append_block(block, Some(&mut state))?);
        }
        if settings.auto_replicate && settings.mode != PolMode::Pow {
            // A later evaluation replicates the oldest acceptance still waiting (never the
            // verdict just made).
            let pending = state
                .record
                .awaiting_replication()
                .into_iter()
                .map(|v| v.hash)
                .find(|h| *h != report.proof);
            if let Some(p) = pending {
                // A replication that cannot run now (pool exhausted) waits for a later one.
                let _ = self.replicate_locked(&mut state, p, now_ms);
            }
        }
        Ok(report)
    }

    /// Replicates accepted verdict `proof` on a fresh sample; a pass vests the second half
    /// of the learning reward, a failure withdraws it.
    pub fn pol_replicate(&self, proof: Hash, now_ms: u64) -> Result<VerdictReport, NodeError> {
        self.require_writer("replicating a verdict")?;
        let mut state = self.pol_state();
        self.replicate_locked(&mut state, proof, now_ms)
    }

    fn replicate_locked(
        &self,
        state: &mut PolState,
        proof: Hash,
        now_ms: u64,
    ) -> Result<VerdictReport, NodeError> {
        let original =
            state
                .record
                .verdict(&proof)
                .cloned()
                .ok_or_else(|| NodeError::NotFound {
                    what: format!("verdict {proof}"),
                })?;
        let v = &original.verdict;
        if !v.accepted || v.replicates.is_some() || v.mode == PolMode::Pow {
            return Err(refuse(
                PolRefusal::NotReplicable,
                format!("{proof} is not an accepted learning verdict"),
            ));
        }
        if let Some(r) = state.record.replication_of(&proof) {
            return Err(refuse(
                PolRefusal::NotReplicable,
                format!("{proof} was replicated by {}", r.hash),
            ));
        }
        let payload = self.candidate_bytes(&v.candidate)?.ok_or_else(|| {
            refuse(
                PolRefusal::CandidateUnavailable,
                format!("candidate {} is not held here", v.candidate),
            )
        })?;
        let child = blyan_pol::record::candidate_weights(&payload).map_err(NodeError::Internal)?;
        let mut snapshot = Snapshot::at(&self.store, Some(v.param_head)).map_err(snapshot_err)?;
        snapshot.heads.insert(expert_group_name(v.expert), v.parent);
        let started = std::time::Instant::now();
        let (verdict, judgement) = self.evaluate_into_verdict(
            state,
            &snapshot,
            v.expert,
            &child,
            v.candidate,
            v.parent,
            (v.contributor, v.contributor_signature),
            Some(proof),
        )?;
        let eval_ms = started.elapsed().as_millis() as u64;
        self.record_verdict(
            state,
            verdict,
            Some(&judgement),
            Some(v.vesting),
            now_ms,
            eval_ms,
        )
    }

    /// The candidate payload `id`, from the chain or the local candidates directory.
    fn candidate_bytes(&self, id: &Hash) -> Result<Option<Vec<u8>>, NodeError> {
        let path = candidates_dir(&self.data_dir).join(id.to_string());
        match std::fs::read(&path) {
            Ok(b) if Hash::of(&b) == *id => Ok(Some(b)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Io {
                context: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    fn pow_verdict(
        &self,
        snapshot: &Snapshot,
        expert: ExpertId,
        id: Hash,
        parent: Hash,
        (contributor, contributor_signature): (Address, Signature),
    ) -> Verdict {
        let rules = self.config.pol.rules();
        Verdict {
            expert,
            candidate: id,
            parent,
            param_head: snapshot.param_head,
            contributor,
            contributor_signature,
            mode: PolMode::Pow,
            pow_nonce: 0,
            replicates: None,
            pool_root: Hash::ZERO,
            seed: Hash::ZERO,
            items: vec![],
            evaluator_version: EVALUATOR_VERSION,
            alpha_percent: self.config.pol.alpha_percent,
            min_effect_micro: rules.thresholds.min_effect_micro,
            mixture_tolerance_bps: rules.mixture_tolerance_bps,
            stage_items: rules.stage_items,
            stages: rules.stages,
            n: 0,
            sum: 0,
            sum_sq: 0,
            parent_sum: 0,
            mixture_parent: 0,
            mixture_child: 0,
            accepted: true,
            reason: Reason::AcceptedPow.as_str().into(),
            gain_bps: 0,
            reward: 0,
            vesting: 0,
            validator_reward: 0,
            leak_margin_micro: rules.leak_margin_micro,
            validation_items: vec![],
            validation_n: 0,
            validation_sum: 0,
            validation_sum_sq: 0,
        }
    }

    /// Draws, evaluates and decides; the verdict's rewards are filled in when it is recorded.
    #[allow(clippy::too_many_arguments)]
    fn evaluate_into_verdict(
        &self,
        state: &PolState,
        snapshot: &Snapshot,
        expert: ExpertId,
        child: &ExpertWeights,
        id: Hash,
        parent: Hash,
        (contributor, contributor_signature): (Address, Signature),
        replicates: Option<Hash>,
    ) -> Result<(Verdict, Evidence), NodeError> {
        let settings = self.config.pol;
        let pools = state.pool.clone().ok_or_else(|| {
            refuse(
                PolRefusal::NoPool,
                state
                    .pool_problem
                    .clone()
                    .unwrap_or_else(|| "no pool".into()),
            )
        })?;
        let proof_head = self
            .store
            .head(ChainId::Proof)?
            .map_or(Hash::ZERO, |(_, h)| h);
        let rules = settings.rules();
        let retired = state.record.retired();
        let trial = Trial {
            expert,
            candidate: id,
            parent,
            param_head: snapshot.param_head,
            proof_prev: proof_head,
            retired: &retired,
            rules,
        };
        self.publish_pol(
            state,
            Some(Evaluating {
                expert,
                candidate: id,
                replicates,
                since_ms: crate::unix_ms(),
            }),
        );
        // The same path `pol verify` recomputes a verdict with.
        let (pool, validation) = (&pools.0, &pools.1);
        let done = run_trial(
            &self.store,
            pool,
            validation,
            &trial,
            child,
            settings.thread_count(),
        )
        .map_err(|e| match e {
            TrialError::Draw(e) => refuse(PolRefusal::PoolExhausted, e.to_string()),
            TrialError::Snapshot(e) => snapshot_err(e),
            TrialError::Evaluate(e) if e.is_non_finite() => {
                refuse(PolRefusal::NonFinite, e.to_string())
            }
            TrialError::Evaluate(e) => NodeError::Internal(e.to_string()),
        })?;
        let (seed, evaluation) = (done.seed, done.evaluation);
        let (items, j, leak) = (evaluation.items, evaluation.judgement, evaluation.leak);
        let validation_sums = leak.as_ref().map(|l| l.sums).unwrap_or_default();
        let verdict = Verdict {
            expert,
            candidate: id,
            parent,
            param_head: snapshot.param_head,
            contributor,
            contributor_signature,
            mode: settings.mode,
            pow_nonce: 0,
            replicates,
            pool_root: pool.root(),
            seed,
            items,
            evaluator_version: EVALUATOR_VERSION,
            alpha_percent: rules.alpha_percent(),
            min_effect_micro: rules.thresholds.min_effect_micro,
            mixture_tolerance_bps: rules.mixture_tolerance_bps,
            stage_items: rules.stage_items,
            stages: rules.stages,
            n: j.sums.n,
            sum: j.sums.sum,
            sum_sq: j.sums.sum_sq,
            parent_sum: j.parent_sum,
            mixture_parent: j.mixture_parent,
            mixture_child: j.mixture_child,
            accepted: j.reason.accepted(),
            reason: j.reason.as_str().into(),
            gain_bps: j.gain_bps,
            reward: 0,
            vesting: 0,
            validator_reward: 0,
            leak_margin_micro: rules.leak_margin_micro,
            validation_items: evaluation.validation_items,
            validation_n: validation_sums.n,
            validation_sum: validation_sums.sum,
            validation_sum_sq: validation_sums.sum_sq,
        };
        Ok((verdict, Evidence { judgement: j, leak }))
    }

    /// Recomputes verdict `proof` from the chain, the candidate's bytes and the items: this
    /// node's pools, or with `from_chain` (or when it holds none) the verdict's reveal on
    /// chain P, as anyone without the pool would.
    pub fn pol_verify(&self, proof: Hash, from_chain: bool) -> Result<ProofCheck, NodeError> {
        let state = self.pol_state();
        let entry: &VerdictEntry =
            state
                .record
                .verdict(&proof)
                .ok_or_else(|| NodeError::NotFound {
                    what: format!("verdict {proof}"),
                })?;
        let payload = self.candidate_bytes(&entry.verdict.candidate)?;
        let payload = match payload {
            Some(p) => Some(p),
            None => self.stored_payload(entry.verdict.expert, &entry.verdict.candidate)?,
        };
        blyan_pol::record::verify(
            &self.store,
            &state.record,
            state
                .pool
                .as_deref()
                .filter(|_| !from_chain)
                .map(|(p, v)| (p, v)),
            &proof,
            payload.as_deref(),
            self.config.pol.thread_count(),
        )
        .map_err(snapshot_err)
    }

    /// Every verdict on chain P, oldest first.
    pub fn pol_verdicts(&self) -> Vec<(Hash, Verdict)> {
        self.pol_state()
            .record
            .verdicts
            .iter()
            .map(|v| (v.hash, v.verdict.clone()))
            .collect()
    }

    fn stored_payload(&self, expert: ExpertId, id: &Hash) -> Result<Option<Vec<u8>>, NodeError> {
        for v in self.store.expert_versions(expert)? {
            if self
                .store
                .header(&v)?
                .is_some_and(|h| h.payload_hash == *id)
            {
                return Ok(Some(self.store.payload_verified(&v)?.to_vec()));
            }
        }
        Ok(None)
    }

    /// Makes version `to` the head of expert `id` again, recording a migration block.
    pub fn rollback_expert(
        &self,
        id: ExpertId,
        to: Hash,
        reason: &str,
        now_ms: u64,
    ) -> Result<Hash, NodeError> {
        self.require_writer("rolling an expert back")?;
        let mut guard = self.pol_state();
        let group = expert_group_name(id);
        let from = self
            .store
            .expert_head(id)?
            .ok_or_else(|| NodeError::NotFound {
                what: format!("expert {id}"),
            })?;
        if !self.store.expert_versions(id)?.contains(&to) {
            return Err(NodeError::InvalidParameter {
                name: "to",
                reason: format!("{to} is not a version of expert {id}"),
            });
        }
        if from == to {
            return Err(NodeError::InvalidParameter {
                name: "to",
                reason: format!("expert {id} already serves {to}"),
            });
        }
        let migration = Migration {
            group: group.clone(),
            from,
            to,
            reason: reason
                .chars()
                .take(blyan_chain::PROOF_TEXT_MAX / 4)
                .collect(),
        };
        let (height, prev) = next_on(&self.store, ChainId::Param)?;
        let block = Block::new(
            ChainId::Param,
            height,
            prev,
            vec![to],
            BlockKind::Migration,
            BlockMeta {
                name: group,
                ..BlockMeta::default()
            },
            migration.encode(),
            &self.signer,
            now_ms.max(prev_ts(&self.store, &prev)?),
        );
        // The older version is served from here on (on_appended).
        self.append_block(block, Some(&mut guard))
    }
}

/// Versions of every expert on the chain (for callers that list them).
pub fn expert_heads(store: &Store) -> Result<BTreeMap<String, Hash>, NodeError> {
    Ok(Snapshot::at(store, None).map_err(snapshot_err)?.heads)
}
