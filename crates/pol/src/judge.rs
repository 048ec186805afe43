//! From per-item scores to a verdict, and the checks a candidate must pass before any item
//! is spent on it.

use blyan_primitives::{Address, Hash};
use serde::{Deserialize, Serialize};

use crate::eval::{ExpertWeights, ItemScore};
use crate::stats::{
    Alpha, Decision, LOOKS_MAX, PairedSums, StatsError, Thresholds, decide_against,
};

/// Basis points in one.
const BPS: i128 = 10_000;

/// Why a candidate was not accepted, or that it was. The strings are stable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The test passed, the minimum effect is cleared and the mixture does not regress.
    Accepted,
    /// Accepted without a learning test (`pow` mode).
    AcceptedPow,
    /// The gain is not significant at the configured level.
    NotSignificant,
    /// The mean gain per position does not exceed the minimum effect.
    BelowMinEffect,
    /// The whole mixture got worse by more than the tolerance.
    MixtureRegression,
    /// Fewer than two drawn items route any position to the expert.
    TooFewRoutedItems,
    /// The learning test passed, but the gain on the hidden items is far above the gain on
    /// the public validation items: the candidate looks trained on hidden text.
    SuspectedLeak,
}

impl Reason {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::AcceptedPow => "accepted_pow",
            Reason::NotSignificant => "not_significant",
            Reason::BelowMinEffect => "below_min_effect",
            Reason::MixtureRegression => "mixture_regression",
            Reason::TooFewRoutedItems => "too_few_routed_items",
            Reason::SuspectedLeak => "suspected_leak",
        }
    }

    /// Whether it is an acceptance.
    pub fn accepted(self) -> bool {
        matches!(self, Reason::Accepted | Reason::AcceptedPow)
    }

    /// Parses a stable code.
    pub fn parse(code: &str) -> Option<Reason> {
        [
            Reason::Accepted,
            Reason::AcceptedPow,
            Reason::NotSignificant,
            Reason::BelowMinEffect,
            Reason::MixtureRegression,
            Reason::TooFewRoutedItems,
            Reason::SuspectedLeak,
        ]
        .into_iter()
        .find(|r| r.as_str() == code)
    }
}

/// The thresholds of a verdict and the shape of its sample.
///
/// An evaluation is sequential: it draws up to `stages` × `stage_items` items in one seeded
/// order and looks at the evidence after every `stage_items` of them, stopping as soon as a
/// look accepts or finds the minimum effect out of reach (see [`Judgement::conclusive`]).
/// Clear cases cost one stage of the scarce hidden pool; small real gains get the larger
/// sample they need to be seen. Every look is tested at α / `stages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The paired test's level and minimum effect.
    pub thresholds: Thresholds,
    /// Largest mixture regression tolerated, basis points of the parent's loss.
    pub mixture_tolerance_bps: u32,
    /// Items per stage (look).
    pub stage_items: u32,
    /// Most stages one evaluation takes, 1 to [`LOOKS_MAX`].
    pub stages: u8,
    /// The contamination check's margin, micro-nats per position (see [`leak_check`]).
    pub leak_margin_micro: i64,
}

/// The contamination check's default margin, micro-nats per position (calibrated in
/// docs/BENCHMARKS.md, "Contamination check").
pub const LEAK_MARGIN_DEFAULT_MICRO: i64 = 40_000;

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            thresholds: Thresholds::default(),
            mixture_tolerance_bps: 10,
            stage_items: 64,
            stages: LOOKS_MAX,
            leak_margin_micro: LEAK_MARGIN_DEFAULT_MICRO,
        }
    }
}

impl Rules {
    /// Rules from their recorded form: α in percent (5 means 5%, anything else 1%), the
    /// minimum effect in micro-nats, the mixture tolerance in basis points, the items per
    /// stage (at least 1), the most stages (clamped to 1..=[`LOOKS_MAX`]) and the
    /// contamination check's margin.
    pub fn new(
        alpha_percent: u8,
        min_effect_micro: i64,
        mixture_tolerance_bps: u32,
        stage_items: u32,
        stages: u8,
        leak_margin_micro: i64,
    ) -> Rules {
        Rules {
            thresholds: Thresholds {
                alpha: if alpha_percent == 5 {
                    Alpha::FivePercent
                } else {
                    Alpha::OnePercent
                },
                min_effect_micro,
            },
            mixture_tolerance_bps,
            stage_items: stage_items.max(1),
            stages: stages.clamp(1, LOOKS_MAX),
            leak_margin_micro,
        }
    }

    /// The most items one evaluation draws.
    pub fn sample_max(&self) -> usize {
        self.stage_items as usize * usize::from(self.stages)
    }

    /// The significance level in percent.
    pub fn alpha_percent(&self) -> u8 {
        match self.thresholds.alpha {
            Alpha::OnePercent => 1,
            Alpha::FivePercent => 5,
        }
    }
}

/// The evidence and the decision of one evaluation.
///
/// The unit of the test is an item that routes at least one position to the expert (items
/// that route none score exactly the same with either version and carry no evidence), and an
/// item's loss is its whole negative log-likelihood: the sum of its losses over every
/// position. A changed expert moves the residual stream at its routed positions, and through
/// attention every later position in later layers, so the item's whole loss is where its
/// effect shows; summing rather than averaging also weights each item by the positions it
/// holds. The minimum effect is per position: the total gain must clear it times the
/// positions of the counted items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// Paired sums of the counted items' whole losses (d = parent − child).
    pub sums: PairedSums,
    /// Positions scored in the counted items.
    pub positions: u64,
    /// Σ of the parent's whole loss over the counted items, micro-nats.
    pub parent_sum: i128,
    /// The whole mixture's loss over every item with the parent, micro-nats.
    pub mixture_parent: i128,
    /// The same with the candidate swapped in.
    pub mixture_child: i128,
    /// The test, when at least two items were counted.
    pub decision: Option<Decision>,
    /// The verdict.
    pub reason: Reason,
    /// The mixture's gain relative to its loss with the parent, basis points (0 if none):
    /// what the learning reward pays for.
    pub gain_bps: u32,
}

impl Judgement {
    /// Whether an evaluation can stop at this look: the candidate is accepted, or the
    /// minimum effect is out of reach (the upper confidence bound is below it). Otherwise
    /// it goes on to the next stage while the sample has one, and this is the verdict when
    /// it has none.
    pub fn conclusive(&self) -> bool {
        self.reason.accepted() || self.decision.is_some_and(|d| d.futile)
    }

    /// Mean gain per position of the counted items, micro-nats (0 without a test).
    pub fn gain_per_position_micro(&self) -> i128 {
        match (&self.decision, self.positions) {
            (Some(_), p) if p > 0 => self.sums.sum.div_euclid(i128::from(p)),
            _ => 0,
        }
    }

    /// Lower confidence bound of the gain per position, micro-nats (0 without a test).
    pub fn lcb_per_position_micro(&self) -> i128 {
        match (&self.decision, self.positions) {
            (Some(d), p) if p > 0 => {
                (d.lcb_micro * i128::from(self.sums.n)).div_euclid(i128::from(p))
            }
            _ => 0,
        }
    }
}

/// Decides on `scores` (every item seen so far) under `rules`: accepted when the gain is
/// significant at this look's level, its mean per position clears the minimum effect and the
/// mixture does not regress beyond the tolerance.
pub fn judge(scores: &[ItemScore], rules: Rules) -> Result<Judgement, StatsError> {
    let mut sums = PairedSums::default();
    let (mut positions, mut parent_sum) = (0u64, 0i128);
    let (mut mixture_parent, mut mixture_child) = (0i128, 0i128);
    for s in scores {
        mixture_parent += i128::from(s.parent_all);
        mixture_child += i128::from(s.child_all);
        if s.routed > 0 {
            sums.push(s.parent_all, s.child_all)?;
            positions += u64::from(s.positions);
            parent_sum += i128::from(s.parent_all);
        }
    }
    let gain_bps = if mixture_parent > 0 && mixture_child < mixture_parent {
        u32::try_from((mixture_parent - mixture_child) * BPS / mixture_parent).unwrap_or(u32::MAX)
    } else {
        0
    };
    let regression = (mixture_child - mixture_parent) * BPS
        > i128::from(rules.mixture_tolerance_bps) * mixture_parent;
    // The total gain must clear the minimum effect for every counted position.
    let margin = i128::from(rules.thresholds.min_effect_micro.max(0)) * i128::from(positions);
    let decision = if sums.n >= 2 {
        Some(decide_against(
            sums,
            rules.thresholds.alpha,
            rules.stages,
            margin,
        )?)
    } else {
        None
    };
    let reason = match &decision {
        None => Reason::TooFewRoutedItems,
        Some(d) if !d.clears_min_effect => Reason::BelowMinEffect,
        Some(d) if !d.significant => Reason::NotSignificant,
        Some(_) if regression => Reason::MixtureRegression,
        Some(_) => Reason::Accepted,
    };
    Ok(Judgement {
        sums,
        positions,
        parent_sum,
        mixture_parent,
        mixture_child,
        decision,
        reason,
        gain_bps,
    })
}

/// How far above the validation gain a candidate's hidden gain must be, in standard errors
/// of the difference, before the contamination check may call it a leak.
pub const LEAK_Z: f64 = 3.0;

/// The contamination check of one accepted candidate: its gain on public validation items
/// beside its gain on the hidden items.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakCheck {
    /// Paired sums over the validation items that route a position to the expert.
    pub sums: PairedSums,
    /// Positions scored in those items.
    pub positions: u64,
    /// Hidden gain per position minus validation gain per position, nats.
    pub excess: f64,
    /// That excess in standard errors of the difference (0 when a side has under two items).
    pub z: f64,
    /// Whether the excess is above the margin and at least [`LEAK_Z`] standard errors.
    pub leak: bool,
}

/// Compares the gain of `hidden` (the learning test's evidence) with the gain on the scored
/// `validation` items. For an honest candidate the two are draws from one distribution (the
/// split is random); a candidate trained on hidden text gains far more on it than on text it
/// never saw. A leak is an excess of more than `margin_micro` per position that is also at
/// least [`LEAK_Z`] standard errors; with under two routed items on either side there is no
/// evidence and no leak. Only IEEE-754 basic operations and a square root are used, so every
/// validator computes the same result.
pub fn leak_check(
    hidden: &Judgement,
    validation: &[ItemScore],
    margin_micro: i64,
) -> Result<LeakCheck, StatsError> {
    let mut sums = PairedSums::default();
    let mut positions = 0u64;
    for s in validation.iter().filter(|s| s.routed > 0) {
        sums.push(s.parent_all, s.child_all)?;
        positions += u64::from(s.positions);
    }
    // Per-position mean and the variance of that mean, in nats.
    let side = |sums: &PairedSums, positions: u64| -> Option<(f64, f64)> {
        if sums.n < 2 || positions == 0 {
            return None;
        }
        let n = sums.n as f64;
        let (sum, sum_sq) = (sums.sum as f64 / 1e6, sums.sum_sq as f64 / 1e12);
        let var_item = ((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0);
        let p = positions as f64;
        Some((sum / p, var_item * n / (p * p)))
    };
    let (excess, z) = match (side(&hidden.sums, hidden.positions), side(&sums, positions)) {
        (Some((gh, vh)), Some((gv, vv))) => {
            let se = (vh + vv).sqrt();
            let excess = gh - gv;
            (excess, if se > 0.0 { excess / se } else { f64::INFINITY })
        }
        _ => (0.0, 0.0),
    };
    let leak = excess * 1e6 > margin_micro as f64 && z >= LEAK_Z;
    Ok(LeakCheck {
        sums,
        positions,
        excess,
        z,
        leak,
    })
}

/// ‖child − parent‖ / ‖parent‖ over all three matrices, in millionths (fixed-order f64
/// sums, rounded up). `u64::MAX` when the parent is all zeros and the child is not.
pub fn delta_norm_ppm(parent: &ExpertWeights, child: &ExpertWeights) -> u64 {
    let (mut diff, mut base) = (0f64, 0f64);
    for (p, c) in [
        (&parent.w1, &child.w1),
        (&parent.w2, &child.w2),
        (&parent.w3, &child.w3),
    ] {
        for (a, b) in p.iter().zip(c) {
            let d = f64::from(*b) - f64::from(*a);
            diff += d * d;
            base += f64::from(*a) * f64::from(*a);
        }
    }
    if base == 0.0 {
        return if diff == 0.0 { 0 } else { u64::MAX };
    }
    let ratio = libm::sqrt(diff / base) * 1e6;
    if ratio >= u64::MAX as f64 {
        u64::MAX
    } else {
        libm::ceil(ratio) as u64
    }
}

/// The default difficulty of a submission's proof of work, in leading zero bits: 2^24 ≈ 16.8
/// million hashes on average, seconds of one core (docs/BENCHMARKS.md).
pub const POW_BITS_DEFAULT: u32 = 24;

/// Bytes hashed for a proof-of-work stamp: candidate, parent, contributor, nonce.
const POW_INPUT_LEN: usize = 32 + 32 + 20 + 8;

fn pow_input(candidate: &Hash, parent: &Hash, contributor: &Address) -> [u8; POW_INPUT_LEN] {
    let mut bytes = [0u8; POW_INPUT_LEN];
    bytes[..32].copy_from_slice(&candidate.0);
    bytes[32..64].copy_from_slice(&parent.0);
    bytes[64..84].copy_from_slice(&contributor.0);
    bytes
}

/// The proof-of-work stamp of a submission in `pow` or `hybrid` mode:
/// `SHA-256(candidate || parent || contributor || nonce as 8 LE bytes)`, the candidate being
/// its id (the hash of the expert-block payload it becomes). It binds the work to this
/// candidate, this parent and this contributor, so it cannot be reused for another.
pub fn pow_stamp(candidate: &Hash, parent: &Hash, contributor: &Address, nonce: u64) -> Hash {
    let mut bytes = pow_input(candidate, parent, contributor);
    bytes[84..].copy_from_slice(&nonce.to_le_bytes());
    Hash::of(&bytes)
}

/// Leading zero bits of a hash.
pub fn leading_zero_bits(h: &Hash) -> u32 {
    let mut bits = 0;
    for b in h.0 {
        if b == 0 {
            bits += 8;
        } else {
            bits += b.leading_zeros();
            break;
        }
    }
    bits
}

/// Whether `nonce` stamps the submission with at least `bits` leading zero bits.
pub fn pow_ok(
    candidate: &Hash,
    parent: &Hash,
    contributor: &Address,
    nonce: u64,
    bits: u32,
) -> bool {
    leading_zero_bits(&pow_stamp(candidate, parent, contributor, nonce)) >= bits
}

/// The smallest nonce that stamps the submission with `bits` leading zero bits: about
/// 2^`bits` hashes on average.
pub fn pow_solve(candidate: &Hash, parent: &Hash, contributor: &Address, bits: u32) -> u64 {
    let mut bytes = pow_input(candidate, parent, contributor);
    for nonce in 0..u64::MAX {
        bytes[84..].copy_from_slice(&nonce.to_le_bytes());
        if leading_zero_bits(&Hash::of(&bytes)) >= bits {
            return nonce;
        }
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(routed: u32, parent: i64, child: i64) -> ItemScore {
        ItemScore {
            positions: 32,
            routed,
            parent_routed: parent * i64::from(routed),
            child_routed: child * i64::from(routed),
            parent_all: parent * 32,
            child_all: child * 32,
        }
    }

    #[test]
    fn a_clear_gain_is_accepted_and_pays_the_mixture_gain() {
        let scores: Vec<ItemScore> = (0..100)
            .map(|i| {
                item(
                    8,
                    3_000_000 + i * 1000,
                    2_950_000 + i * 1000 + (i % 3) * 500,
                )
            })
            .collect();
        let j = judge(&scores, Rules::default()).unwrap();
        assert_eq!(j.reason, Reason::Accepted, "{j:?}");
        assert!(j.gain_bps > 0);
        assert!(j.conclusive());
    }

    #[test]
    fn no_gain_is_refused_with_the_right_reason() {
        let same: Vec<ItemScore> = (0..100)
            .map(|i| item(8, 3_000_000 + i, 3_000_000 + i))
            .collect();
        let j = judge(&same, Rules::default()).unwrap();
        assert_eq!(j.reason, Reason::BelowMinEffect);
        assert!(
            j.conclusive(),
            "no gain at all cannot reach the minimum effect"
        );
        let noisy: Vec<ItemScore> = (0..100)
            .map(|i| {
                item(
                    8,
                    3_000_000,
                    3_000_000 - 2_000 + if i % 2 == 0 { 200_000 } else { -200_000 },
                )
            })
            .collect();
        let j = judge(&noisy, Rules::default()).unwrap();
        assert_eq!(j.reason, Reason::NotSignificant);
        assert!(!j.conclusive(), "a noisy sample goes on to the next stage");
        let unrouted: Vec<ItemScore> = (0..100).map(|_| item(0, 3_000_000, 2_000_000)).collect();
        assert_eq!(
            judge(&unrouted, Rules::default()).unwrap().reason,
            Reason::TooFewRoutedItems
        );
    }

    /// An honest gain shows on validation items too; a gain on hidden items alone is a leak,
    /// unless it is within the margin or the evidence is too thin.
    #[test]
    fn a_gain_on_hidden_items_alone_is_a_suspected_leak() {
        let gain = |per_position: i64, n: i64| -> Vec<ItemScore> {
            (0..n)
                .map(|i| item(8, 3_000_000, 3_000_000 - per_position + (i % 5 - 2) * 2_000))
                .collect()
        };
        let hidden = judge(&gain(200_000, 64), Rules::default()).unwrap();
        assert_eq!(hidden.reason, Reason::Accepted);
        let margin = LEAK_MARGIN_DEFAULT_MICRO;
        let honest = leak_check(&hidden, &gain(195_000, 64), margin).unwrap();
        assert!(!honest.leak, "{honest:?}");
        assert_eq!(honest.sums.n, 64);
        let leaked = leak_check(&hidden, &gain(10_000, 64), margin).unwrap();
        assert!(leaked.leak && leaked.z > 10.0, "{leaked:?}");
        assert!((leaked.excess - 0.19).abs() < 1e-3, "{leaked:?}");
        // Within the margin, or with no routed validation item: no leak.
        assert!(
            !leak_check(&hidden, &gain(180_000, 64), margin)
                .unwrap()
                .leak
        );
        let unrouted: Vec<ItemScore> = (0..64).map(|_| item(0, 3_000_000, 3_000_000)).collect();
        let thin = leak_check(&hidden, &unrouted, margin).unwrap();
        assert!(!thin.leak && thin.z == 0.0 && thin.sums.n == 0);
        // A large excess that the noise explains is not called a leak.
        let noisy: Vec<ItemScore> = (0..4)
            .map(|i| {
                item(
                    8,
                    3_000_000,
                    3_000_000 + if i % 2 == 0 { 9_000_000 } else { -9_000_000 },
                )
            })
            .collect();
        let wide = leak_check(&hidden, &noisy, margin).unwrap();
        assert!(!wide.leak && wide.z < LEAK_Z, "{wide:?}");
    }

    /// A candidate that lowers the loss where it is routed but raises it on the rest of the
    /// item (through attention in later layers) is judged on the whole item and refused.
    #[test]
    fn a_gain_at_routed_positions_that_hurts_the_item_is_refused() {
        let scores: Vec<ItemScore> = (0..100)
            .map(|i| ItemScore {
                positions: 32,
                routed: 4,
                parent_routed: 4 * (3_000_000 + i * 100),
                child_routed: 4 * (2_900_000 + i * 100),
                parent_all: 32 * 3_000_000,
                child_all: 32 * 3_010_000,
            })
            .collect();
        let j = judge(&scores, Rules::default()).unwrap();
        assert_eq!(j.reason, Reason::BelowMinEffect);
        assert_eq!(j.gain_bps, 0);
        assert!(j.gain_per_position_micro() < 0);
    }

    /// The mixture check still refuses scores whose uncounted items got worse (impossible
    /// for a real evaluation, where an item that never routes to the expert scores the same).
    #[test]
    fn a_mixture_regression_is_refused() {
        let mut scores: Vec<ItemScore> = (0..100)
            .map(|i| {
                item(
                    8,
                    3_000_000 + i * 1000,
                    2_990_000 + i * 1000 + (i % 3) * 100,
                )
            })
            .collect();
        scores.extend((0..100).map(|_| item(0, 3_000_000, 3_100_000)));
        let j = judge(&scores, Rules::default()).unwrap();
        assert_eq!(j.reason, Reason::MixtureRegression, "{j:?}");
        assert_eq!(j.sums.n, 100);
        assert_eq!(j.positions, 3200);
    }

    #[test]
    fn gains_are_reported_per_position() {
        let scores: Vec<ItemScore> = (0..50)
            .map(|i| item(8, 3_000_000, 2_990_000 + (i % 2) * 2_000))
            .collect();
        let j = judge(&scores, Rules::default()).unwrap();
        assert_eq!(j.reason, Reason::Accepted);
        // Per position: 10,000 or 8,000 micro-nats, alternately.
        assert_eq!(j.gain_per_position_micro(), 9_000);
        let lcb = j.lcb_per_position_micro();
        assert!(lcb > 1_000 && lcb < 9_000, "{lcb}");
        // A minimum effect above the gain turns it down for that reason.
        let strict = Rules::new(1, 9_500, 10, 64, 4, LEAK_MARGIN_DEFAULT_MICRO);
        assert_eq!(
            judge(&scores, strict).unwrap().reason,
            Reason::BelowMinEffect
        );
    }

    #[test]
    fn delta_norm_and_pow() {
        let p = ExpertWeights {
            w1: vec![3.0, 0.0],
            w2: vec![4.0],
            w3: vec![0.0],
        };
        let mut c = p.clone();
        assert_eq!(delta_norm_ppm(&p, &c), 0);
        c.w2[0] = 4.5;
        assert_eq!(delta_norm_ppm(&p, &c), 100_000);
        let (h, parent, a) = (Hash::of(b"candidate"), Hash::of(b"parent"), Address::ZERO);
        let nonce = pow_solve(&h, &parent, &a, 8);
        assert!(pow_ok(&h, &parent, &a, nonce, 8));
        assert!(leading_zero_bits(&pow_stamp(&h, &parent, &a, nonce)) >= 8);
        assert!((0..nonce).all(|n| !pow_ok(&h, &parent, &a, n, 8)));
        // The stamp binds candidate, parent and contributor: the same nonce for another
        // parent or contributor is (almost surely) no proof.
        let other = Hash::of(b"another parent");
        assert_ne!(
            pow_stamp(&h, &parent, &a, nonce),
            pow_stamp(&h, &other, &a, nonce)
        );
        assert_ne!(
            pow_stamp(&h, &parent, &a, nonce),
            pow_stamp(&h, &parent, &Address([1; 20]), nonce)
        );
    }

    #[test]
    fn a_stamp_is_the_documented_hash() {
        let (h, parent, a) = (Hash([1; 32]), Hash([2; 32]), Address([3; 20]));
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[1; 32]);
        bytes.extend_from_slice(&[2; 32]);
        bytes.extend_from_slice(&[3; 20]);
        bytes.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(pow_stamp(&h, &parent, &a, 7), Hash::of(&bytes));
    }

    #[test]
    fn difficulty_zero_takes_any_nonce() {
        let (h, parent, a) = (Hash::of(b"c"), Hash::of(b"p"), Address::ZERO);
        assert_eq!(pow_solve(&h, &parent, &a, 0), 0);
        assert!((0..100).all(|n| pow_ok(&h, &parent, &a, n, 0)));
    }

    #[test]
    fn a_proof_at_the_default_difficulty() {
        // Fixed inputs: the smallest solution is a fixed nonce, so this takes the same time on
        // every run (about 2^24 hashes on average over inputs).
        let (h, parent, a) = (
            Hash::of(b"candidate"),
            Hash::of(b"parent"),
            Address([0xaa; 20]),
        );
        let nonce = pow_solve(&h, &parent, &a, POW_BITS_DEFAULT);
        assert!(pow_ok(&h, &parent, &a, nonce, POW_BITS_DEFAULT));
        assert!(leading_zero_bits(&pow_stamp(&h, &parent, &a, nonce)) >= POW_BITS_DEFAULT);
        if nonce > 0 {
            assert!(!pow_ok(&h, &parent, &a, nonce - 1, POW_BITS_DEFAULT));
        }
        assert!(!pow_ok(&h, &other_parent(), &a, nonce, POW_BITS_DEFAULT));
    }

    fn other_parent() -> Hash {
        Hash::of(b"another parent")
    }

    /// `cargo test --release -p blyan-pol --lib -- --ignored --nocapture pow_timing`
    #[test]
    #[ignore = "a timing run; its results are in docs/BENCHMARKS.md"]
    fn pow_timing() {
        let mut times = Vec::new();
        for i in 0u32..16 {
            let h = Hash::of(&i.to_le_bytes());
            let started = std::time::Instant::now();
            let nonce = pow_solve(
                &h,
                &Hash::of(b"parent"),
                &Address([0xaa; 20]),
                POW_BITS_DEFAULT,
            );
            let s = started.elapsed().as_secs_f64();
            println!(
                "candidate {i}: nonce {nonce} in {s:.2} s ({:.0} ns per hash)",
                s * 1e9 / (nonce + 1) as f64
            );
            times.push(s);
        }
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "{} bits: mean {mean:.2} s, median {:.2} s, min {:.2} s, max {:.2} s",
            POW_BITS_DEFAULT,
            (times[7] + times[8]) / 2.0,
            times[0],
            times[15]
        );
    }
}
