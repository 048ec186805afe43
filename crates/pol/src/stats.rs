//! The paired test in integers.
//!
//! For items i = 1..n with losses in micro-nats, d_i = loss_parent − loss_child (positive when
//! the candidate is better). With S1 = Σ d_i and S2 = Σ d_i², a confidence bound of the total
//! gain with critical value t is S1 ∓ t·sqrt(n·var), and comparing it with a margin M is
//!
//! ```text
//! S1 − t·sqrt(n·var) > M,   var = (n·S2 − S1²) / (n(n−1))
//! ⇔ A > 0  and  A²·(n−1) > t²·(n·S2 − S1²),   where A = S1 − M
//! ```
//!
//! (the upper bound is the same comparison on −S1 and −M). A decision reports three facts:
//! the gain is *significant* (lower bound above zero, the one-sided test at the level), it
//! *clears the minimum effect* (S1 above M, the mean above the minimum effect), and it is
//! *futile* (upper bound below M). Both sides are integers (t is held in millionths, so both
//! sides are scaled by 10¹²) and are compared as exact 256-bit products, so the verdict has no
//! rounding at all for up to [`ITEMS_MAX`] items of at most [`DIFF_MAX`] micro-nats each.
//!
//! An evaluation may look at its sample up to [`LOOKS_MAX`] times as it grows; each look is
//! tested at α divided by the number of looks allowed ([`t_critical_micro`]), which keeps the
//! chance of passing a candidate of no gain at any look within α.

use serde::Serialize;

/// Most items one decision takes.
pub const ITEMS_MAX: u64 = 100_000;

/// Largest |d_i| accepted, in micro-nats: 10⁷ nats, beyond any item the evaluator can score
/// (at most 1,000 nats per position, and items of at most 10,000 positions).
pub const DIFF_MAX: i64 = 10_000_000_000_000;

/// Why sums cannot be formed or decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    /// Fewer than two items: there is no variance to test against.
    #[error("a paired test needs at least 2 items, got {0}")]
    TooFewItems(u64),
    /// More items than [`ITEMS_MAX`].
    #[error("at most {ITEMS_MAX} items per decision, got {0}")]
    TooManyItems(u64),
    /// A loss difference beyond [`DIFF_MAX`] (a broken evaluator or a hostile input).
    #[error("item {index}: loss difference {diff} micro-nats is beyond ±{DIFF_MAX}")]
    DiffOutOfRange {
        /// Which item.
        index: u64,
        /// Its difference.
        diff: i128,
    },
    /// Sums that no items within the bounds can produce (a forged or corrupted record).
    #[error("paired sums beyond what {ITEMS_MAX} items of at most ±{DIFF_MAX} can produce")]
    SumsOutOfRange,
}

/// The exact sums of the paired differences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairedSums {
    /// Items.
    pub n: u64,
    /// Σ (loss_parent − loss_child), micro-nats.
    pub sum: i128,
    /// Σ (loss_parent − loss_child)², micro-nats².
    pub sum_sq: i128,
}

impl PairedSums {
    /// Adds one item's losses (micro-nats), in order.
    pub fn push(&mut self, parent: i64, child: i64) -> Result<(), StatsError> {
        let diff = i128::from(parent) - i128::from(child);
        if diff.abs() > i128::from(DIFF_MAX) {
            return Err(StatsError::DiffOutOfRange {
                index: self.n,
                diff,
            });
        }
        if self.n >= ITEMS_MAX {
            return Err(StatsError::TooManyItems(self.n + 1));
        }
        self.n += 1;
        self.sum += diff;
        self.sum_sq += diff * diff;
        Ok(())
    }

    /// The sums of `pairs` of (parent, child) losses.
    pub fn of(pairs: impl IntoIterator<Item = (i64, i64)>) -> Result<PairedSums, StatsError> {
        let mut sums = PairedSums::default();
        for (p, c) in pairs {
            sums.push(p, c)?;
        }
        Ok(sums)
    }
}

/// Significance level of the one-sided test, over all the looks of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Alpha {
    /// 5%.
    FivePercent,
    /// 1% (the default).
    OnePercent,
}

/// Most looks one evaluation may take at its growing sample (the stages a verdict may
/// record).
pub const LOOKS_MAX: u8 = blyan_chain::VERDICT_STAGES_MAX;

/// Upper one-sided quantiles of Student's t, in millionths, by degrees of freedom, at the
/// per-look levels α/K for α = 5% then α = 1% and K = 1, 2, 3, 4 looks (so the columns are
/// 5%, 2.5%, 1.67%, 1.25%, 1%, 0.5%, 0.33%, 0.25%). Computed with SciPy's `t.isf` and
/// rounded to the nearest millionth; `critical_values_are_t_quantiles` re-derives every entry
/// by integrating the t density. Between two rows the smaller df is used, and beyond the last
/// row the last row, which can only make the test stricter.
const T_TABLE: &[(u64, [i128; 8])] = &[
    (
        1,
        [
            6_313_752,
            12_706_205,
            19_081_137,
            25_451_700,
            31_820_516,
            63_656_741,
            95_489_475,
            127_321_336,
        ],
    ),
    (
        2,
        [
            2_919_986, 4_302_653, 5_339_333, 6_205_347, 6_964_557, 9_924_843, 12_186_126,
            14_089_047,
        ],
    ),
    (
        3,
        [
            2_353_363, 3_182_446, 3_740_490, 4_176_535, 4_540_703, 5_840_909, 6_741_054, 7_453_319,
        ],
    ),
    (
        4,
        [
            2_131_847, 2_776_445, 3_186_316, 3_495_406, 3_746_947, 4_604_095, 5_166_801, 5_597_568,
        ],
    ),
    (
        5,
        [
            2_015_048, 2_570_582, 2_911_710, 3_163_381, 3_364_930, 4_032_143, 4_455_752, 4_773_341,
        ],
    ),
    (
        6,
        [
            1_943_180, 2_446_912, 2_749_057, 2_968_687, 3_142_668, 3_707_428, 4_057_852, 4_316_827,
        ],
    ),
    (
        7,
        [
            1_894_579, 2_364_624, 2_641_860, 2_841_244, 2_997_952, 3_499_483, 3_805_521, 4_029_337,
        ],
    ),
    (
        8,
        [
            1_859_548, 2_306_004, 2_566_019, 2_751_524, 2_896_459, 3_355_387, 3_631_900, 3_832_519,
        ],
    ),
    (
        9,
        [
            1_833_113, 2_262_157, 2_509_587, 2_685_011, 2_821_438, 3_249_836, 3_505_399, 3_689_662,
        ],
    ),
    (
        10,
        [
            1_812_461, 2_228_139, 2_465_983, 2_633_767, 2_763_769, 3_169_273, 3_409_251, 3_581_406,
        ],
    ),
    (
        12,
        [
            1_782_288, 2_178_813, 2_403_040, 2_560_033, 2_680_998, 3_054_540, 3_272_950, 3_428_444,
        ],
    ),
    (
        15,
        [
            1_753_050, 2_131_450, 2_342_925, 2_489_880, 2_602_480, 2_946_713, 3_145_557, 3_286_039,
        ],
    ),
    (
        20,
        [
            1_724_718, 2_085_963, 2_285_497, 2_423_117, 2_527_977, 2_845_340, 3_026_439, 3_153_401,
        ],
    ),
    (
        25,
        [
            1_708_141, 2_059_539, 2_252_276, 2_384_610, 2_485_107, 2_787_436, 2_958_694, 3_078_199,
        ],
    ),
    (
        30,
        [
            1_697_261, 2_042_272, 2_230_625, 2_359_562, 2_457_262, 2_749_996, 2_915_008, 3_029_798,
        ],
    ),
    (
        40,
        [
            1_683_851, 2_021_075, 2_204_107, 2_328_935, 2_423_257, 2_704_459, 2_862_003, 2_971_171,
        ],
    ),
    (
        60,
        [
            1_670_649, 2_000_298, 2_178_181, 2_299_046, 2_390_119, 2_660_283, 2_810_716, 2_914_553,
        ],
    ),
    (
        120,
        [
            1_657_651, 1_979_930, 2_152_832, 2_269_875, 2_357_825, 2_617_421, 2_761_086, 2_859_865,
        ],
    ),
    (
        250,
        [
            1_650_971, 1_969_498, 2_139_874, 2_254_983, 2_341_356, 2_595_638, 2_735_913, 2_832_166,
        ],
    ),
    (
        500,
        [
            1_647_907, 1_964_720, 2_133_944, 2_248_173, 2_333_829, 2_585_698, 2_724_438, 2_819_548,
        ],
    ),
];

/// The critical value, in millionths, of one look of a one-sided t-test with `df` degrees of
/// freedom when an evaluation may take up to `looks` looks (clamped to 1..=[`LOOKS_MAX`]):
/// each look is tested at α / `looks`, so by the union bound the chance that any look passes
/// a candidate of no gain is at most α, however the looks are correlated.
pub fn t_critical_micro(alpha: Alpha, looks: u8, df: u64) -> i128 {
    let (_, row) = T_TABLE
        .iter()
        .rev()
        .find(|(d, _)| *d <= df.max(1))
        .unwrap_or(&T_TABLE[0]);
    let k = usize::from(looks.clamp(1, LOOKS_MAX)) - 1;
    match alpha {
        Alpha::FivePercent => row[k],
        Alpha::OnePercent => row[4 + k],
    }
}

/// What the test requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// Significance level.
    pub alpha: Alpha,
    /// Smallest mean gain worth accepting, micro-nats (≥ 0): per item for [`decide`]; per
    /// scored position when a verdict is judged (`judge`).
    pub min_effect_micro: i64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            alpha: Alpha::OnePercent,
            // 0.001 nats.
            min_effect_micro: 1_000,
        }
    }
}

/// The test's outcome, with the figures a proof records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The lower confidence bound of the gain is above zero: the gain is significant.
    pub significant: bool,
    /// The total gain exceeds the margin: the mean gain clears the minimum effect.
    pub clears_min_effect: bool,
    /// The upper confidence bound of the gain is below the margin: more items would not
    /// plausibly show the minimum effect, so a sequential evaluation stops here.
    pub futile: bool,
    /// The sums it was decided on.
    pub sums: PairedSums,
    /// Mean gain per item, micro-nats, rounded toward −∞.
    pub mean_micro: i128,
    /// Lower confidence bound of the mean gain, micro-nats, rounded toward −∞ (for people;
    /// the verdict is decided exactly, not from this).
    pub lcb_micro: i128,
    /// The critical value used, millionths.
    pub t_micro: i128,
}

impl Decision {
    /// Whether the test passes: the gain is significant and clears the minimum effect.
    pub fn passes(&self) -> bool {
        self.significant && self.clears_min_effect
    }
}

/// The full 256-bit product of two unsigned 128-bit integers, as (high, low) halves.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const LOW: u128 = u64::MAX as u128;
    let (a1, a0) = (a >> 64, a & LOW);
    let (b1, b0) = (b >> 64, b & LOW);
    let lo = a0 * b0;
    let mid1 = a1 * b0;
    let mid2 = a0 * b1;
    let hi = a1 * b1;
    // Add the middle terms' low halves into the low word, carrying into the high word.
    let (lo, c1) = lo.overflowing_add((mid1 & LOW) << 64);
    let (lo, c2) = lo.overflowing_add((mid2 & LOW) << 64);
    let hi = hi + (mid1 >> 64) + (mid2 >> 64) + u128::from(c1) + u128::from(c2);
    (hi, lo)
}

/// Whether `s1 − t·sqrt(spread / (n − 1)) > margin`, exactly: A = s1 − margin > 0 and
/// A²·(n−1)·10¹² > t²·spread. Every factor fits 127 bits within [`ITEMS_MAX`] and
/// [`DIFF_MAX`] (|margin| included); the products are compared in 256 bits.
fn bound_clears(s1: i128, n: i128, spread: i128, t: i128, margin: i128) -> bool {
    let a = s1 - margin;
    a > 0 && {
        let lhs = mul_wide((a * a) as u128, ((n - 1) * 1_000_000_000_000) as u128);
        let rhs = mul_wide((t * t) as u128, spread as u128);
        lhs > rhs
    }
}

/// Decides the one-sided paired test on `sums` exactly, at one look, with a minimum effect
/// per item.
pub fn decide(sums: PairedSums, thresholds: Thresholds) -> Result<Decision, StatsError> {
    let margin = i128::from(sums.n) * i128::from(thresholds.min_effect_micro.max(0));
    decide_against(sums, thresholds.alpha, 1, margin)
}

/// Decides the one-sided paired test on `sums` exactly, as one of up to `looks` looks: the
/// gain is significant when the lower confidence bound of the total gain S1 is above zero,
/// clears the minimum effect when S1 exceeds `margin` micro-nats (a negative margin counts as
/// zero), and is futile when even the upper confidence bound is below `margin`.
pub fn decide_against(
    sums: PairedSums,
    alpha: Alpha,
    looks: u8,
    margin: i128,
) -> Result<Decision, StatsError> {
    let n = sums.n;
    if n < 2 {
        return Err(StatsError::TooFewItems(n));
    }
    if n > ITEMS_MAX {
        return Err(StatsError::TooManyItems(n));
    }
    let bound = i128::from(n) * i128::from(DIFF_MAX);
    if sums.sum.abs() > bound || sums.sum_sq < 0 || sums.sum_sq > bound * i128::from(DIFF_MAX) {
        return Err(StatsError::SumsOutOfRange);
    }
    let margin = margin.clamp(0, bound);
    let n_i = i128::from(n);
    let t = t_critical_micro(alpha, looks, n - 1);
    // n·S2 − S1² = n² · (population variance) ≥ 0 by Cauchy–Schwarz for real sums; sums that
    // break it are forged and refused.
    let spread = n_i * sums.sum_sq - sums.sum * sums.sum;
    if spread < 0 {
        return Err(StatsError::SumsOutOfRange);
    }
    let significant = bound_clears(sums.sum, n_i, spread, t, 0);
    // S1 + t·sqrt(…) < M  ⇔  (−S1) − t·sqrt(…) > −M.
    let futile = bound_clears(-sums.sum, n_i, spread, t, -margin);
    let mean_micro = sums.sum.div_euclid(n_i);
    // se = sqrt(spread / (n²(n−1))); t·se in micro-nats = t_micro · se / 10⁶. Scaled by 10¹²
    // for sub-micro precision when that fits, else in whole micro-nats.
    let denom = (n_i * n_i * (n_i - 1)) as u128;
    let t_se = match (spread as u128).checked_mul(1_000_000_000_000) {
        Some(scaled) => (t as u128) * (scaled / denom).isqrt() / 1_000_000_000_000,
        None => ((t as u128) * ((spread as u128) / denom).isqrt()).div_ceil(1_000_000),
    };
    let lcb_micro = mean_micro - t_se as i128 - 1;
    Ok(Decision {
        significant,
        clears_min_effect: sums.sum > margin,
        futile,
        sums,
        mean_micro,
        lcb_micro,
        t_micro: t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn float_lcb(diffs: &[i64], t: f64) -> f64 {
        let n = diffs.len() as f64;
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / n;
        let var = diffs
            .iter()
            .map(|&d| (d as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        mean - t * (var / n).sqrt()
    }

    #[test]
    fn a_clear_gain_passes_and_no_gain_does_not() {
        let gain: Vec<(i64, i64)> = (0..200)
            .map(|i| (2_000_000 + (i % 7) * 1000, 1_990_000 + (i % 5) * 1000))
            .collect();
        let d = decide(PairedSums::of(gain).unwrap(), Thresholds::default()).unwrap();
        assert!(d.passes(), "{d:?}");
        assert!(d.lcb_micro > 1_000);
        let same: Vec<(i64, i64)> = (0..200).map(|i| (2_000_000 + i, 2_000_000 + i)).collect();
        let d = decide(PairedSums::of(same).unwrap(), Thresholds::default()).unwrap();
        assert!(!d.passes(), "identical losses never pass");
        // A real but tiny gain is refused by the minimum effect.
        let tiny: Vec<(i64, i64)> = (0..1000)
            .map(|i| (2_000_500 + (i % 3), 2_000_000 + (i % 3)))
            .collect();
        let d = decide(PairedSums::of(tiny).unwrap(), Thresholds::default()).unwrap();
        assert!(!d.passes(), "{d:?}");
        let d = decide(
            PairedSums::of((0..1000).map(|i| (2_000_500 + (i % 3), 2_000_000 + (i % 3)))).unwrap(),
            Thresholds {
                min_effect_micro: 0,
                ..Thresholds::default()
            },
        )
        .unwrap();
        assert!(d.passes(), "the same gain passes with no minimum effect");
    }

    #[test]
    fn hostile_inputs_are_refused() {
        assert_eq!(
            decide(PairedSums::default(), Thresholds::default()),
            Err(StatsError::TooFewItems(0))
        );
        assert!(matches!(
            PairedSums::of([(i64::MAX, i64::MIN)]),
            Err(StatsError::DiffOutOfRange { index: 0, .. })
        ));
        let forged = PairedSums {
            n: ITEMS_MAX + 1,
            sum: 1,
            sum_sq: 1,
        };
        assert_eq!(
            decide(forged, Thresholds::default()),
            Err(StatsError::TooManyItems(ITEMS_MAX + 1))
        );
    }

    #[test]
    fn wide_products_are_exact() {
        assert_eq!(mul_wide(0, u128::MAX), (0, 0));
        assert_eq!(mul_wide(u128::MAX, 1), (0, u128::MAX));
        // (2¹²⁸ − 1)² = 2²⁵⁶ − 2¹²⁹ + 1.
        assert_eq!(mul_wide(u128::MAX, u128::MAX), (u128::MAX - 1, 1));
        assert_eq!(mul_wide(1 << 64, 1 << 64), (1, 0));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..1000 {
            let (a, b): (u64, u64) = (rng.random(), rng.random());
            assert_eq!(
                mul_wide(u128::from(a), u128::from(b)),
                (0, u128::from(a) * u128::from(b))
            );
        }
    }

    /// Items at the difference bound, as many as allowed, decide without overflow, and a
    /// margin per item equals `decide`'s minimum effect.
    #[test]
    fn extreme_sums_decide_exactly() {
        let n = ITEMS_MAX;
        let big = PairedSums {
            n,
            sum: i128::from(n) * i128::from(DIFF_MAX),
            sum_sq: i128::from(n) * i128::from(DIFF_MAX) * i128::from(DIFF_MAX),
        };
        let d = decide_against(big, Alpha::OnePercent, 1, 0).unwrap();
        assert!(d.passes(), "a uniform huge gain passes");
        assert_eq!(d.mean_micro, i128::from(DIFF_MAX));
        let worse = PairedSums {
            sum: -big.sum,
            ..big
        };
        let d = decide_against(worse, Alpha::OnePercent, 4, 0).unwrap();
        assert!(!d.passes() && d.futile);
        let sums = PairedSums::of((0..50).map(|i| (2_000_000 + i * 37 % 11, 1_990_000))).unwrap();
        for m in [0i64, 5_000, 10_000, 20_000] {
            assert_eq!(
                decide(
                    sums,
                    Thresholds {
                        alpha: Alpha::OnePercent,
                        min_effect_micro: m,
                    }
                )
                .unwrap(),
                decide_against(sums, Alpha::OnePercent, 1, 50 * i128::from(m)).unwrap()
            );
        }
        for forged in [
            PairedSums {
                n: 10,
                sum: 11 * i128::from(DIFF_MAX),
                sum_sq: 0,
            },
            PairedSums {
                n: 10,
                sum: 100,
                sum_sq: -1,
            },
            PairedSums {
                n: 10,
                sum: 100,
                sum_sq: 5,
            },
        ] {
            assert_eq!(
                decide_against(forged, Alpha::OnePercent, 1, 0),
                Err(StatsError::SumsOutOfRange)
            );
        }
    }

    /// Zero-gain candidates (symmetric noise around no difference) pass about α of the time.
    #[test]
    fn zero_gain_acceptance_is_near_alpha() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let trials = 2000;
        let mut passed = 0;
        for _ in 0..trials {
            let sums = PairedSums::of((0..200).map(|_| {
                let base: i64 = rng.random_range(1_000_000..5_000_000);
                (
                    base + rng.random_range(-20_000..=20_000),
                    base + rng.random_range(-20_000..=20_000),
                )
            }))
            .unwrap();
            let d = decide(
                sums,
                Thresholds {
                    min_effect_micro: 0,
                    ..Thresholds::default()
                },
            )
            .unwrap();
            passed += usize::from(d.passes());
        }
        // α = 1%: expect about 20 of 2000; allow sampling spread, never more than 2%.
        assert!(
            passed <= trials / 50,
            "{passed} of {trials} zero-gain candidates passed"
        );
    }

    proptest::proptest! {
        /// The exact verdict agrees with the floating-point formula wherever the latter is not
        /// within rounding of the threshold.
        #[test]
        fn matches_the_float_formula(
            diffs in proptest::collection::vec(-50_000i64..60_000, 2..300),
            min_effect in 0i64..5_000,
        ) {
            let sums = PairedSums::of(diffs.iter().map(|&d| (d, 0))).unwrap();
            let th = Thresholds { alpha: Alpha::OnePercent, min_effect_micro: min_effect };
            let d = decide(sums, th).unwrap();
            let t = d.t_micro as f64 / 1e6;
            let lcb = float_lcb(&diffs, t);
            if lcb.abs() > 1e-6 * (1.0 + lcb.abs()) {
                proptest::prop_assert_eq!(d.significant, lcb > 0.0, "lcb {}", lcb);
            }
            let total: i128 = diffs.iter().map(|&d| i128::from(d)).sum();
            proptest::prop_assert_eq!(d.clears_min_effect, total > i128::from(min_effect) * diffs.len() as i128);
            let ucb = 2.0 * (total as f64 / diffs.len() as f64) - lcb;
            if (ucb - min_effect as f64).abs() > 1e-6 * (1.0 + ucb.abs()) {
                proptest::prop_assert_eq!(d.futile, ucb < min_effect as f64, "ucb {}", ucb);
            }
            proptest::prop_assert!((d.lcb_micro as f64 - lcb).abs() <= 2.0 + 1e-9 * lcb.abs(), "{} vs {}", d.lcb_micro, lcb);
        }
    }

    #[test]
    fn critical_values_fall_with_df_rise_with_looks_and_are_conservative_between_rows() {
        assert_eq!(t_critical_micro(Alpha::OnePercent, 1, 1), 31_820_516);
        assert_eq!(
            t_critical_micro(Alpha::OnePercent, 1, 11),
            2_763_769,
            "df 11 uses the df 10 row"
        );
        assert_eq!(t_critical_micro(Alpha::OnePercent, 1, 10_000), 2_333_829);
        assert_eq!(t_critical_micro(Alpha::FivePercent, 1, 199), 1_657_651);
        assert_eq!(t_critical_micro(Alpha::OnePercent, 4, 255), 2_832_166);
        assert_eq!(
            t_critical_micro(Alpha::OnePercent, 9, 255),
            2_832_166,
            "looks are clamped to LOOKS_MAX"
        );
        for alpha in [Alpha::FivePercent, Alpha::OnePercent] {
            for looks in 1..=LOOKS_MAX {
                let mut last = i128::MAX;
                for df in 1..2000 {
                    let t = t_critical_micro(alpha, looks, df);
                    assert!(t <= last);
                    if looks > 1 {
                        assert!(t > t_critical_micro(alpha, looks - 1, df));
                    }
                    last = t;
                }
            }
        }
    }

    /// P(T > t) for Student's t with `df` degrees of freedom: one half minus the density's
    /// integral over [0, t] by Simpson's rule on 200,000 intervals.
    fn t_tail(df: u64, t: f64) -> f64 {
        let v = df as f64;
        let ln_c = libm::lgamma((v + 1.0) / 2.0)
            - libm::lgamma(v / 2.0)
            - 0.5 * (v * std::f64::consts::PI).ln();
        let pdf = |x: f64| (ln_c - (v + 1.0) / 2.0 * (1.0 + x * x / v).ln()).exp();
        let steps = 200_000;
        let h = t / steps as f64;
        let mut acc = pdf(0.0) + pdf(t);
        for i in 1..steps {
            acc += pdf(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        0.5 - acc * h / 3.0
    }

    /// Every table entry is the t quantile of its per-look level, to the table's precision.
    #[test]
    fn critical_values_are_t_quantiles() {
        for &(df, row) in T_TABLE {
            for (k, &t) in row.iter().enumerate() {
                let alpha = if k < 4 { 0.05 } else { 0.01 };
                let level = alpha / (k % 4 + 1) as f64;
                let tail = t_tail(df, t as f64 / 1e6);
                assert!(
                    (tail - level).abs() < 1e-5 * level,
                    "df {df}, column {k}: P(T > {t}e-6) = {tail}, expected {level}"
                );
            }
        }
    }

    /// A zero-gain candidate with tiny noise is futile at once; a noisy one with a real gain
    /// is neither futile nor yet significant on a few items, and becomes significant with more.
    #[test]
    fn futility_and_growing_samples() {
        let zero = PairedSums::of((0..64).map(|i| (3_000_000 + i % 3, 3_000_000))).unwrap();
        let d = decide_against(zero, Alpha::OnePercent, 4, 64 * 1_000).unwrap();
        assert!(d.futile && !d.passes(), "{d:?}");
        let noisy = |n: i64| {
            PairedSums::of(
                (0..n).map(|i| (3_000_000 + 6_000 + (i * 7919 % 61 - 30) * 1_000, 3_000_000)),
            )
            .unwrap()
        };
        let d = decide_against(noisy(8), Alpha::OnePercent, 4, 8 * 1_000).unwrap();
        assert!(!d.futile && !d.significant, "{d:?}");
        let d = decide_against(noisy(256), Alpha::OnePercent, 4, 256 * 1_000).unwrap();
        assert!(d.passes(), "{d:?}");
    }
}
