//! What `/pol/status` shows, published as a snapshot whenever the PoL lock is released.

use super::*;

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
    pub(super) node: &'a Node,
    pub(super) state: std::sync::MutexGuard<'a, PolState>,
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
    let pool_items = s.pool.as_ref().map_or(0, |p| p.0.len());
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
