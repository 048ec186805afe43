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
    Block, BlockHeader, BlockKind, BlockMeta, ChainId, Migration, PolMode, PoolCommit, Store,
    Verdict,
};
use blyan_pol::eval::{EVALUATOR_VERSION, ExpertWeights};
use blyan_pol::record::{PolRecord, ProofCheck, Trial, TrialError, VerdictEntry, run_trial};
use blyan_pol::snapshot::{Snapshot, block_tensors, expert_weights};
use blyan_pol::{Judgement, Pool, Reason, Rules};
use blyan_primitives::{Address, Amount, ExpertId, Hash};
use blyan_tensor::{DType, TensorDesc};
use blyan_train::TrainError;
use blyan_train::candidate::Candidate;
use serde::Serialize;

use crate::{Node, NodeError};

/// Tokens per pool item (63 predictions each).
pub const ITEM_TOKENS: usize = 64;
/// Verdicts kept for `/pol/status`.
const RECENT_MAX: usize = 20;

/// Why a submission or replication is refused before a verdict. Discriminants and codes are
/// stable: clients match on them, and a new refusal gets the next number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u16)]
pub enum PolRefusal {
    /// The file is not a candidate (format, metadata, tensor names or types).
    MalformedCandidate = 1,
    /// A tensor holds NaN or ±∞.
    NonFinite = 2,
    /// A tensor's shape is not the spec's.
    WrongShapes = 3,
    /// The expert is not in the model.
    UnknownExpert = 4,
    /// This payload was judged or stored before.
    DuplicatePayload = 5,
    /// The candidate equals the head it claims to improve.
    HeadCopy = 6,
    /// The parent is no longer (or never was) the expert's head.
    StaleParent = 7,
    /// The change from the parent exceeds the configured bound (model replacement).
    DeltaTooLarge = 8,
    /// Hybrid mode and no proof-of-work nonce.
    PowMissing = 9,
    /// The nonce does not meet the difficulty.
    PowInvalid = 10,
    /// No hidden pool is committed on this node.
    NoPool = 11,
    /// Too few unused items remain for a sample.
    PoolExhausted = 12,
    /// The verdict cannot be replicated (not accepted, a replication, pow mode, or done).
    NotReplicable = 13,
    /// The candidate's bytes are not held here.
    CandidateUnavailable = 14,
}

impl PolRefusal {
    /// Every refusal, in number order.
    pub const ALL: [PolRefusal; 14] = [
        PolRefusal::MalformedCandidate,
        PolRefusal::NonFinite,
        PolRefusal::WrongShapes,
        PolRefusal::UnknownExpert,
        PolRefusal::DuplicatePayload,
        PolRefusal::HeadCopy,
        PolRefusal::StaleParent,
        PolRefusal::DeltaTooLarge,
        PolRefusal::PowMissing,
        PolRefusal::PowInvalid,
        PolRefusal::NoPool,
        PolRefusal::PoolExhausted,
        PolRefusal::NotReplicable,
        PolRefusal::CandidateUnavailable,
    ];

    /// The stable number.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            PolRefusal::MalformedCandidate => "malformed_candidate",
            PolRefusal::NonFinite => "non_finite",
            PolRefusal::WrongShapes => "wrong_shapes",
            PolRefusal::UnknownExpert => "unknown_expert",
            PolRefusal::DuplicatePayload => "duplicate_payload",
            PolRefusal::HeadCopy => "head_copy",
            PolRefusal::StaleParent => "stale_parent",
            PolRefusal::DeltaTooLarge => "delta_too_large",
            PolRefusal::PowMissing => "pow_missing",
            PolRefusal::PowInvalid => "pow_invalid",
            PolRefusal::NoPool => "no_pool",
            PolRefusal::PoolExhausted => "pool_exhausted",
            PolRefusal::NotReplicable => "not_replicable",
            PolRefusal::CandidateUnavailable => "candidate_unavailable",
        }
    }

    /// The HTTP status it maps to.
    pub fn http_status(self) -> u16 {
        // Every refusal is placed here on purpose: no default arm.
        match self {
            PolRefusal::DuplicatePayload | PolRefusal::HeadCopy | PolRefusal::StaleParent => 409,
            PolRefusal::NoPool | PolRefusal::PoolExhausted => 503,
            PolRefusal::CandidateUnavailable => 404,
            PolRefusal::MalformedCandidate
            | PolRefusal::NonFinite
            | PolRefusal::WrongShapes
            | PolRefusal::UnknownExpert
            | PolRefusal::DeltaTooLarge
            | PolRefusal::PowMissing
            | PolRefusal::PowInvalid
            | PolRefusal::NotReplicable => 422,
        }
    }
}

/// The Proof-of-Learning settings (from the node config).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PolSettings {
    /// `pol`, `hybrid` or `pow`.
    pub mode: PolMode,
    /// Significance level of the paired test, percent (1 or 5).
    pub alpha_percent: u8,
    /// Minimum mean gain per position of the items routed to the expert, micro-nats.
    pub min_effect_micro: i64,
    /// Largest mixture regression tolerated, basis points.
    pub mixture_tolerance_bps: u32,
    /// Items per stage of an evaluation (it looks at the evidence after each stage).
    pub stage_items: usize,
    /// Most stages one evaluation takes (1 to 4); each look is tested at α / this.
    pub stages: u8,
    /// Largest ‖child − parent‖ / ‖parent‖, millionths.
    pub delta_norm_max_ppm: u64,
    /// Leading zero bits of the hybrid-mode stamp.
    pub pow_bits: u32,
    /// Evaluator threads (0: one per core).
    pub threads: usize,
    /// Items per rewarded validation batch.
    pub batch_items: usize,
    /// Replicate the oldest unreplicated acceptance after each new verdict.
    pub auto_replicate: bool,
}

impl Default for PolSettings {
    fn default() -> PolSettings {
        PolSettings {
            mode: PolMode::Pol,
            alpha_percent: 1,
            min_effect_micro: 1_000,
            mixture_tolerance_bps: 10,
            stage_items: 64,
            stages: 4,
            delta_norm_max_ppm: 1_000_000,
            pow_bits: 16,
            threads: 0,
            batch_items: 16,
            auto_replicate: true,
        }
    }
}

impl PolSettings {
    /// The decision rules.
    pub fn rules(&self) -> Rules {
        Rules::new(
            self.alpha_percent,
            self.min_effect_micro,
            self.mixture_tolerance_bps,
            u32::try_from(self.stage_items).unwrap_or(u32::MAX),
            self.stages,
        )
    }

    /// Evaluator threads to use.
    pub fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

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
}

/// The node's Proof-of-Learning state.
#[derive(Debug, Default)]
pub(crate) struct PolState {
    pub(crate) record: PolRecord,
    pub(crate) pool: Option<Arc<Pool>>,
    /// Why no pool is loaded, if none is.
    pub(crate) pool_problem: Option<String>,
}

/// One verdict of chain P, as `/pol/status` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictSummary {
    /// The verdict block.
    pub proof: Hash,
    /// The expert.
    pub expert: ExpertId,
    /// The candidate's payload hash.
    pub candidate: Hash,
    /// Who submitted it.
    pub contributor: Address,
    /// `pol`, `hybrid` or `pow`.
    pub mode: PolMode,
    /// Whether it was accepted (or, for a replication, whether it replicated).
    pub accepted: bool,
    /// Stable reason code.
    pub reason: String,
    /// Items routed to the expert.
    pub n: u64,
    /// Mixture gain, basis points.
    pub gain_bps: u32,
    /// Paid to the contributor by this verdict.
    pub reward: Amount,
    /// Held until replication.
    pub vesting: Amount,
    /// The verdict it replicates.
    pub replicates: Option<Hash>,
    /// When, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

impl VerdictSummary {
    fn of(e: &VerdictEntry) -> VerdictSummary {
        let v = &e.verdict;
        VerdictSummary {
            proof: e.hash,
            expert: v.expert,
            candidate: v.candidate,
            contributor: v.contributor,
            mode: v.mode,
            accepted: v.accepted,
            reason: v.reason.clone(),
            n: v.n,
            gain_bps: v.gain_bps,
            reward: Amount::from_nano(v.reward),
            vesting: Amount::from_nano(v.vesting),
            replicates: v.replicates,
            timestamp_ms: e.timestamp_ms,
        }
    }
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
        (Some((_, commit)), Ok(bytes)) => match Pool::decode(&bytes) {
            Ok(pool) if pool.root() == commit.root => state.pool = Some(Arc::new(pool)),
            Ok(pool) => {
                state.pool_problem = Some(format!(
                    "{} has root {}, chain P commits to {}",
                    path.display(),
                    pool.root(),
                    commit.root
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

/// The hidden split of `corpus` as the chain's tokenizer reads it, each document one line
/// (`Document::line`) between BOS and EOS: the pool's token stream. Also returns a
/// description of the source for the commitment.
pub fn hidden_tokens(
    store: &Store,
    corpus: &blyan_train::corpus::Corpus,
) -> Result<(Vec<u32>, String), NodeError> {
    use blyan_train::corpus::Split;
    let (_, meta) = store
        .meta()?
        .ok_or_else(|| NodeError::NoNetwork(store.dir().display().to_string()))?;
    let tokenizer = blyan_tokenizer::Tokenizer::from_json(&meta.tokenizer)
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    let docs: Vec<String> = corpus.documents(Split::Hidden).map(|d| d.line()).collect();
    let stream = blyan_train::data::TokenStream::from_documents(
        &tokenizer,
        &docs,
        meta.spec.bos_token_id,
        meta.spec.eos_token_id,
    )
    .map_err(|e| NodeError::Internal(e.to_string()))?;
    let source = format!(
        "hidden split of corpus {} ({} documents)",
        corpus.hash(),
        docs.len()
    );
    Ok((stream.tokens().to_vec(), source))
}

/// Builds the hidden pool from `tokens` (the hidden split, tokenized), writes the pool file
/// and commits its root on chain P. Refuses if a pool is already committed.
pub fn commit_pool(
    store: &Store,
    data_dir: &Path,
    tokens: &[u32],
    source: &str,
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
    let pool = Pool::from_tokens(tokens, ITEM_TOKENS);
    if pool.len() < 2 {
        return Err(NodeError::InvalidParameter {
            name: "pool",
            reason: format!(
                "{} tokens make {} items; a pool needs at least 2",
                tokens.len(),
                pool.len()
            ),
        });
    }
    crate::checker::write_atomic(&pool_path(data_dir), &pool.encode())?;
    let commit = PoolCommit {
        root: pool.root(),
        items: pool.len() as u32,
        item_tokens: ITEM_TOKENS as u32,
        source: source
            .chars()
            .take(blyan_chain::PROOF_TEXT_MAX / 4)
            .collect(),
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
        Address::ZERO,
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

/// The expert-block payload of a candidate: its three tensors in f32, in spec order.
fn candidate_payload(c: &Candidate) -> Result<(Vec<u8>, Vec<TensorDesc>), NodeError> {
    let descs: Vec<TensorDesc> = c
        .tensors
        .iter()
        .map(|(name, shape, _)| TensorDesc {
            name: name.clone(),
            dtype: DType::F32,
            shape: shape.iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let bytes: Vec<Vec<u8>> = c
        .tensors
        .iter()
        .map(|(_, _, v)| blyan_tensor::f32_to_bytes(v))
        .collect();
    let refs: Vec<(TensorDesc, &[u8])> = descs
        .iter()
        .cloned()
        .zip(bytes.iter().map(Vec::as_slice))
        .collect();
    let payload = blyan_tensor::encode_tensors(&refs)
        .map_err(|e| refuse(PolRefusal::MalformedCandidate, e.to_string()))?;
    let mut sorted = descs;
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((payload, sorted))
}

fn weights_of(c: &Candidate) -> Result<ExpertWeights, NodeError> {
    let tensors: Vec<(String, Vec<f32>)> = c
        .tensors
        .iter()
        .map(|(n, _, v)| (n.clone(), v.clone()))
        .collect();
    expert_weights(&tensors).map_err(|e| refuse(PolRefusal::MalformedCandidate, e))
}

/// The id of a candidate file: the hash of the expert-block payload it becomes (what the
/// proof-of-work stamp and the verdict name).
pub fn candidate_id(candidate: &[u8]) -> Result<Hash, NodeError> {
    let c = Candidate::decode(candidate)
        .map_err(|e| refuse(PolRefusal::MalformedCandidate, e.to_string()))?;
    Ok(Hash::of(&candidate_payload(&c)?.0))
}

/// A submission as the API and CLI make it.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The candidate file's bytes.
    pub candidate: Vec<u8>,
    /// Who is paid.
    pub contributor: Address,
    /// Proof-of-work nonce (hybrid mode).
    pub pow_nonce: Option<u64>,
}

/// A candidate checked without any state: it decodes, every value is finite, its expert is
/// in the model and its tensors have the spec's shapes. The first step of admission.
#[derive(Debug)]
pub(crate) struct CheckedCandidate {
    expert: ExpertId,
    /// The version it says it improves on.
    parent: Hash,
    child: ExpertWeights,
    /// The expert-block payload it would become, and its tensors.
    payload: Vec<u8>,
    descs: Vec<TensorDesc>,
    /// The payload's hash: the candidate's identity.
    id: Hash,
}

impl CheckedCandidate {
    /// Checks `bytes` (a candidate file) against `spec`.
    pub(crate) fn check(
        bytes: &[u8],
        spec: &blyan_chain::spec::ModelSpec,
    ) -> Result<CheckedCandidate, NodeError> {
        let candidate = Candidate::decode(bytes).map_err(|e| match e {
            TrainError::NonFiniteCandidate { .. } => refuse(PolRefusal::NonFinite, e.to_string()),
            e => refuse(PolRefusal::MalformedCandidate, e.to_string()),
        })?;
        if candidate.expert.layer >= spec.num_hidden_layers
            || candidate.expert.expert >= spec.num_local_experts
        {
            return Err(refuse(
                PolRefusal::UnknownExpert,
                format!("expert {} is not in the model", candidate.expert),
            ));
        }
        candidate
            .check_shapes(spec)
            .map_err(|e| refuse(PolRefusal::WrongShapes, e.to_string()))?;
        let child = weights_of(&candidate)?;
        let (payload, descs) = candidate_payload(&candidate)?;
        Ok(CheckedCandidate {
            expert: candidate.expert,
            parent: candidate.parent,
            child,
            id: Hash::of(&payload),
            payload,
            descs,
        })
    }
}

/// A checked candidate admitted against the chain and chain P as they are under the PoL
/// lock: it builds on the expert's head, is not a copy of it, was never submitted or stored
/// before, changes the parent by no more than the bound, and carries the proof of work hybrid
/// mode asks for. Only an admitted candidate is evaluated.
#[derive(Debug)]
pub(crate) struct AdmittedCandidate {
    checked: CheckedCandidate,
    /// The expert's head, which the candidate improves on.
    head: Hash,
    pow_nonce: u64,
    contributor: Address,
}

impl AdmittedCandidate {
    /// Admits `checked` from `contributor`; a refusal writes nothing and spends no item.
    pub(crate) fn admit(
        checked: CheckedCandidate,
        store: &Store,
        record: &PolRecord,
        settings: &PolSettings,
        contributor: Address,
        pow_nonce: Option<u64>,
    ) -> Result<AdmittedCandidate, NodeError> {
        let (expert, id) = (checked.expert, checked.id);
        let parent_claimed = checked.parent;
        let head = store.expert_head(expert)?.ok_or_else(|| {
            refuse(
                PolRefusal::UnknownExpert,
                format!("expert {expert} has no version"),
            )
        })?;
        if parent_claimed != head {
            let known = store.expert_versions(expert)?.contains(&parent_claimed);
            return Err(refuse(
                PolRefusal::StaleParent,
                if known {
                    format!(
                        "the candidate builds on {parent_claimed}, but expert {expert} is now at {head}; retrain from the head"
                    )
                } else {
                    format!(
                        "{parent_claimed} is not a version of expert {expert} (its head is {head})"
                    )
                },
            ));
        }
        let parent = expert_weights(&block_tensors(store, &head).map_err(snapshot_err)?)
            .map_err(NodeError::Internal)?;
        if parent == checked.child {
            return Err(refuse(
                PolRefusal::HeadCopy,
                format!("the candidate is a copy of the head {head}"),
            ));
        }
        let stored = store
            .expert_versions(expert)?
            .into_iter()
            .try_fold(false, |hit, v| {
                Ok::<bool, NodeError>(
                    hit || store.header(&v)?.is_some_and(|h| h.payload_hash == id),
                )
            })?;
        if stored || record.seen(&id) {
            return Err(refuse(
                PolRefusal::DuplicatePayload,
                format!("payload {id} was submitted before"),
            ));
        }
        let delta = blyan_pol::delta_norm_ppm(&parent, &checked.child);
        if delta > settings.delta_norm_max_ppm {
            return Err(refuse(
                PolRefusal::DeltaTooLarge,
                format!(
                    "the change is {:.1}% of the parent's norm; the limit is {:.1}%",
                    delta as f64 / 1e4,
                    settings.delta_norm_max_ppm as f64 / 1e4
                ),
            ));
        }
        let pow_nonce = match settings.mode {
            PolMode::Hybrid => {
                let nonce = pow_nonce.ok_or_else(|| {
                    refuse(
                        PolRefusal::PowMissing,
                        "hybrid mode needs a proof-of-work nonce",
                    )
                })?;
                if !blyan_pol::pow_ok(&id, &contributor, nonce, settings.pow_bits) {
                    return Err(refuse(
                        PolRefusal::PowInvalid,
                        format!(
                            "the stamp has fewer than {} leading zero bits",
                            settings.pow_bits
                        ),
                    ));
                }
                nonce
            }
            PolMode::Pol | PolMode::Pow => 0,
        };
        Ok(AdmittedCandidate {
            checked,
            head,
            pow_nonce,
            contributor,
        })
    }
}

/// What `/pol/status` reports.
#[derive(Clone, Debug, Serialize)]
pub struct PolStatus {
    /// Settings.
    pub settings: PolSettings,
    /// Evaluator version.
    pub evaluator_version: u32,
    /// The committed pool's root, if any.
    pub pool_root: Option<Hash>,
    /// Items in the pool.
    pub pool_items: usize,
    /// Items never drawn.
    pub pool_remaining: usize,
    /// Stages the remaining items hold: each evaluation takes one to `settings.stages` of
    /// them, so this many evaluations at most and this over `stages` at least.
    pub stages_left: usize,
    /// Why the pool is unavailable, if it is.
    pub pool_problem: Option<String>,
    /// Verdicts on chain P.
    pub verdicts: usize,
    /// Accepted verdicts awaiting replication.
    pub awaiting_replication: Vec<Hash>,
    /// The latest verdicts on chain P, newest last.
    pub recent: Vec<VerdictSummary>,
    /// The evaluation running now, if one is.
    pub evaluating: Option<Evaluating>,
    /// Rewards earned and not yet minted for the emission caps (the ledger's owed book);
    /// absent when the ledger cannot be read.
    pub owed: Option<blyan_ledger::OwedTotals>,
}

/// The Proof-of-Learning state, locked. Every change to the state happens under this guard,
/// and releasing it publishes a fresh [`PolStatus`], so `/pol/status` reads a snapshot and
/// never waits for an evaluation that holds the lock for seconds.
pub(crate) struct PolGuard<'a> {
    node: &'a Node,
    state: std::sync::MutexGuard<'a, PolState>,
}

impl std::ops::Deref for PolGuard<'_> {
    type Target = PolState;
    fn deref(&self) -> &PolState {
        &self.state
    }
}

impl std::ops::DerefMut for PolGuard<'_> {
    fn deref_mut(&mut self) -> &mut PolState {
        &mut self.state
    }
}

impl Drop for PolGuard<'_> {
    fn drop(&mut self) {
        self.node.publish_pol(&self.state, None);
    }
}

/// An evaluation in progress, as `/pol/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluating {
    /// The expert.
    pub expert: ExpertId,
    /// The candidate's payload hash.
    pub candidate: Hash,
    /// The verdict being replicated, for a replication.
    pub replicates: Option<Hash>,
    /// When it started, ms since the Unix epoch.
    pub since_ms: u64,
}

/// What `/pol/status` shows of `state`.
pub(crate) fn status_of(
    settings: PolSettings,
    s: &PolState,
    evaluating: Option<Evaluating>,
) -> PolStatus {
    let pool_items = s.pool.as_ref().map_or(0, |p| p.len());
    let retired = s.record.retired().len();
    let remaining = pool_items.saturating_sub(retired);
    PolStatus {
        settings,
        evaluator_version: EVALUATOR_VERSION,
        pool_root: s.record.commit.as_ref().map(|(_, c)| c.root),
        pool_items,
        pool_remaining: remaining,
        stages_left: remaining / settings.stage_items.max(1),
        pool_problem: s.pool_problem.clone(),
        verdicts: s.record.verdicts.len(),
        awaiting_replication: s
            .record
            .awaiting_replication()
            .iter()
            .map(|v| v.hash)
            .collect(),
        recent: s.record.verdicts[s.record.verdicts.len().saturating_sub(RECENT_MAX)..]
            .iter()
            .map(VerdictSummary::of)
            .collect(),
        evaluating,
        owed: None,
    }
}

impl Node {
    /// Appends `block` to the store and runs [`Node::on_appended`] for it. `pol` is the PoL
    /// state when the caller holds its lock.
    pub(crate) fn append_block(
        &self,
        block: Block,
        pol: Option<&mut PolState>,
    ) -> Result<Hash, NodeError> {
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
        match (header.chain, header.kind) {
            (ChainId::Proof, BlockKind::Verdict | BlockKind::PoolCommit) => match pol {
                Some(state) => state.record.push(&self.store, hash, header),
                None => self.pol_state().record.push(&self.store, hash, header),
            }
            .map_err(snapshot_err),
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
        let settings = self.config.pol;
        let (_, meta) = self
            .store
            .meta()?
            .ok_or_else(|| NodeError::NoNetwork(self.data_dir.display().to_string()))?;
        let checked = CheckedCandidate::check(&sub.candidate, &meta.spec)?;
        let mut state = self.pol_state();
        let admitted = AdmittedCandidate::admit(
            checked,
            &self.store,
            &state.record,
            &settings,
            sub.contributor,
            sub.pow_nonce,
        )?;
        let AdmittedCandidate {
            checked:
                CheckedCandidate {
                    expert,
                    child,
                    payload,
                    descs,
                    id,
                    ..
                },
            head,
            pow_nonce,
            contributor,
        } = admitted;
        let group = expert_group_name(expert);
        let snapshot = Snapshot::at(&self.store, None).map_err(snapshot_err)?;
        let started = std::time::Instant::now();
        let (verdict, judgement) = match settings.mode {
            PolMode::Pow => (
                self.pow_verdict(&snapshot, expert, id, head, contributor),
                None,
            ),
            PolMode::Pol | PolMode::Hybrid => {
                let (v, j) = self.evaluate_into_verdict(
                    &state,
                    &snapshot,
                    expert,
                    &child,
                    id,
                    head,
                    contributor,
                    None,
                )?;
                (Verdict { pow_nonce, ..v }, Some(j))
            }
        };
        let eval_ms = started.elapsed().as_millis() as u64;
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
        if report.accepted {
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
                contributor,
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
            v.contributor,
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
        contributor: Address,
    ) -> Verdict {
        let rules = self.config.pol.rules();
        Verdict {
            expert,
            candidate: id,
            parent,
            param_head: snapshot.param_head,
            contributor,
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
        contributor: Address,
        replicates: Option<Hash>,
    ) -> Result<(Verdict, Judgement), NodeError> {
        let settings = self.config.pol;
        let pool = state.pool.clone().ok_or_else(|| {
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
        let done =
            run_trial(&self.store, &pool, &trial, child, settings.thread_count()).map_err(|e| {
                match e {
                    TrialError::Draw(e) => refuse(PolRefusal::PoolExhausted, e.to_string()),
                    TrialError::Snapshot(e) => snapshot_err(e),
                    TrialError::Evaluate(e) if e.is_non_finite() => {
                        refuse(PolRefusal::NonFinite, e.to_string())
                    }
                    TrialError::Evaluate(e) => NodeError::Internal(e.to_string()),
                }
            })?;
        let (seed, evaluation) = (done.seed, done.evaluation);
        let (items, j) = (evaluation.items, evaluation.judgement);
        let verdict = Verdict {
            expert,
            candidate: id,
            parent,
            param_head: snapshot.param_head,
            contributor,
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
        };
        Ok((verdict, j))
    }

    /// Pays the rewards the verdict earns, appends it to chain P and remembers it.
    /// `vesting` is, for a replication, what the original acceptance holds in the vesting
    /// account: paid out if the replication passes, burned if it fails.
    fn record_verdict(
        &self,
        state: &mut PolState,
        mut verdict: Verdict,
        judgement: Option<&Judgement>,
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
                .unwrap_or(Amount::ZERO);
            if !validation.is_zero()
                && let Some(r) = note(self.ledger.reward(
                    self.operator,
                    validation,
                    false,
                    &format!("{reference}:validate"),
                    now_ms,
                ))
            {
                verdict.validator_reward = r.minted.nano();
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
                    let original = replicated_reference(&self.store, &verdict)?;
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
            self.operator,
            now_ms.max(prev_ts(&self.store, &prev)?),
        );
        // The verdict joins the record (on_appended).
        let hash = self.append_block(block, Some(state))?;
        self.metrics.record_pol_verdict(&verdict.reason);
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
        };
        Ok(report)
    }

    /// Recomputes verdict `proof` from the chain, the pool and the candidate's bytes.
    pub fn pol_verify(&self, proof: Hash) -> Result<ProofCheck, NodeError> {
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
            state.pool.as_deref(),
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
            self.operator,
            now_ms.max(prev_ts(&self.store, &prev)?),
        );
        // The older version is served from here on (on_appended).
        self.append_block(block, Some(&mut guard))
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
fn replicated_reference(store: &Store, replication: &Verdict) -> Result<String, NodeError> {
    let original = replication.replicates.ok_or_else(|| {
        NodeError::Internal("a settlement of vesting without the verdict it replicates".into())
    })?;
    let header = store
        .header(&original)?
        .ok_or(blyan_chain::ChainError::NotFound(original))?;
    let v = Verdict::decode(&store.payload_verified(&original)?)
        .map_err(|e| NodeError::Internal(format!("verdict {original}: {e}")))?;
    Ok(verdict_reference(&v.candidate, header.height))
}

/// Versions of every expert on the chain (for callers that list them).
pub fn expert_heads(store: &Store) -> Result<BTreeMap<String, Hash>, NodeError> {
    Ok(Snapshot::at(store, None).map_err(snapshot_err)?.heads)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn refusals_have_unique_numbers_and_codes_and_list_all() {
        let numbers: BTreeSet<u16> = PolRefusal::ALL.iter().map(|r| r.number()).collect();
        let codes: BTreeSet<&str> = PolRefusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(numbers.len(), PolRefusal::ALL.len());
        assert_eq!(codes.len(), PolRefusal::ALL.len());
        // Numbered from 1 without gaps, in the order of `ALL`.
        for (i, r) in PolRefusal::ALL.iter().enumerate() {
            assert_eq!(usize::from(r.number()), i + 1, "{r:?}");
            let json = serde_json::to_value(r).expect("json");
            assert_eq!(json, r.code(), "the serialized name is the code");
            assert!(matches!(r.http_status(), 404 | 409 | 422 | 503));
        }
    }
}
