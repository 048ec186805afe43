//! The paired test in integers.
//!
//! For items i = 1..n with losses in micro-nats, d_i = loss_parent − loss_child (positive when
//! the candidate is better). With S1 = Σ d_i and S2 = Σ d_i², the one-sided test with critical
//! value t accepts when the lower confidence bound of the mean gain clears the minimum effect
//! m:
//!
//! ```text
//! mean − t·sqrt(var/n) > m,   mean = S1/n,   var = (n·S2 − S1²) / (n(n−1))
//! ⇔ A > 0  and  A²·(n−1) > t²·(n·S2 − S1²),   where A = S1 − n·m
//! ```
//!
//! Both sides are integers (t is held in millionths, so both sides are scaled by 10¹²), and
//! everything fits an `i128` for up to a million items of at most 10⁹ micro-nats of difference
//! each, so the verdict has no rounding at all.

use serde::Serialize;

/// Most items one decision takes.
pub const ITEMS_MAX: u64 = 1_000_000;

/// Largest |d_i| accepted, in micro-nats (1,000 nats: far beyond any real loss difference).
pub const DIFF_MAX: i64 = 1_000_000_000;

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

/// Significance level of the one-sided test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Alpha {
    /// 5%.
    FivePercent,
    /// 1% (the default).
    OnePercent,
}

/// Upper one-sided quantiles of Student's t, in millionths, at (degrees of freedom, α = 5%,
/// α = 1%). Standard table values; between two rows the smaller df is used, which can only
/// make the test stricter. The last row is the normal limit.
const T_TABLE: &[(u64, i128, i128)] = &[
    (1, 6_313_752, 31_820_516),
    (2, 2_919_986, 6_964_557),
    (3, 2_353_363, 4_540_703),
    (4, 2_131_847, 3_746_947),
    (5, 2_015_048, 3_364_930),
    (6, 1_943_180, 3_142_668),
    (7, 1_894_579, 2_997_952),
    (8, 1_859_548, 2_896_459),
    (9, 1_833_113, 2_821_438),
    (10, 1_812_461, 2_763_769),
    (12, 1_782_288, 2_680_998),
    (15, 1_753_050, 2_602_480),
    (20, 1_724_718, 2_527_977),
    (25, 1_708_141, 2_485_107),
    (30, 1_697_261, 2_457_262),
    (40, 1_683_851, 2_423_257),
    (60, 1_670_649, 2_390_119),
    (120, 1_657_651, 2_357_825),
    (u64::MAX, 1_644_854, 2_326_348),
];

/// The critical value of the one-sided t-test with `df` degrees of freedom, in millionths.
pub fn t_critical_micro(alpha: Alpha, df: u64) -> i128 {
    let row = T_TABLE
        .iter()
        .rev()
        .find(|(d, _, _)| *d <= df.max(1))
        .unwrap_or(&T_TABLE[0]);
    // The last row stands for df → ∞; any df beyond 120 uses the 120 row.
    let row = if row.0 == u64::MAX {
        &T_TABLE[T_TABLE.len() - 2]
    } else {
        row
    };
    match alpha {
        Alpha::FivePercent => row.1,
        Alpha::OnePercent => row.2,
    }
}

/// What the test requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// Significance level.
    pub alpha: Alpha,
    /// Smallest mean gain per item worth accepting, micro-nats (≥ 0).
    pub min_effect_micro: i64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            alpha: Alpha::OnePercent,
            // 0.001 nats per item.
            min_effect_micro: 1_000,
        }
    }
}

/// The test's outcome, with the figures a proof records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the lower confidence bound of the mean gain clears the minimum effect.
    pub passes: bool,
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

/// Decides the one-sided paired test on `sums` exactly.
pub fn decide(sums: PairedSums, thresholds: Thresholds) -> Result<Decision, StatsError> {
    let n = sums.n;
    if n < 2 {
        return Err(StatsError::TooFewItems(n));
    }
    if n > ITEMS_MAX {
        return Err(StatsError::TooManyItems(n));
    }
    let n_i = i128::from(n);
    let t = t_critical_micro(thresholds.alpha, n - 1);
    // n·S2 − S1² = n² · (population variance) ≥ 0 by Cauchy–Schwarz.
    let spread = n_i * sums.sum_sq - sums.sum * sums.sum;
    let a = sums.sum - n_i * i128::from(thresholds.min_effect_micro.max(0));
    // Both sides scaled by 10¹² (t is in millionths): A²(n−1)·10¹² > t²·spread.
    let passes = a > 0 && {
        let lhs = (a * a).checked_mul((n_i - 1) * 1_000_000_000_000);
        let rhs = (t * t).checked_mul(spread);
        match (lhs, rhs) {
            (Some(l), Some(r)) => l > r,
            // Cannot happen within ITEMS_MAX and DIFF_MAX; refuse to accept rather than guess.
            _ => false,
        }
    };
    let mean_micro = sums.sum.div_euclid(n_i);
    // se = sqrt(spread / (n²(n−1))); t·se in micro-nats = t_micro · se / 10⁶.
    let se_sq_scaled =
        (spread.max(0) as u128) * 1_000_000_000_000 / ((n_i * n_i * (n_i - 1)) as u128);
    let t_se = (t as u128) * se_sq_scaled.isqrt() / 1_000_000_000_000;
    let lcb_micro = mean_micro - t_se as i128 - 1;
    Ok(Decision {
        passes,
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
        assert!(d.passes, "{d:?}");
        assert!(d.lcb_micro > 1_000);
        let same: Vec<(i64, i64)> = (0..200).map(|i| (2_000_000 + i, 2_000_000 + i)).collect();
        let d = decide(PairedSums::of(same).unwrap(), Thresholds::default()).unwrap();
        assert!(!d.passes, "identical losses never pass");
        // A real but tiny gain is refused by the minimum effect.
        let tiny: Vec<(i64, i64)> = (0..1000)
            .map(|i| (2_000_500 + (i % 3), 2_000_000 + (i % 3)))
            .collect();
        let d = decide(PairedSums::of(tiny).unwrap(), Thresholds::default()).unwrap();
        assert!(!d.passes, "{d:?}");
        let d = decide(
            PairedSums::of((0..1000).map(|i| (2_000_500 + (i % 3), 2_000_000 + (i % 3)))).unwrap(),
            Thresholds {
                min_effect_micro: 0,
                ..Thresholds::default()
            },
        )
        .unwrap();
        assert!(d.passes, "the same gain passes with no minimum effect");
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
            passed += usize::from(d.passes);
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
            if (lcb - min_effect as f64).abs() > 1e-6 * (1.0 + lcb.abs()) {
                proptest::prop_assert_eq!(d.passes, lcb > min_effect as f64, "lcb {}", lcb);
            }
            proptest::prop_assert!((d.lcb_micro as f64 - lcb).abs() <= 2.0 + 1e-9 * lcb.abs(), "{} vs {}", d.lcb_micro, lcb);
        }
    }

    #[test]
    fn critical_values_fall_with_df_and_are_conservative_between_rows() {
        assert_eq!(t_critical_micro(Alpha::OnePercent, 1), 31_820_516);
        assert_eq!(
            t_critical_micro(Alpha::OnePercent, 11),
            2_763_769,
            "df 11 uses the df 10 row"
        );
        assert_eq!(t_critical_micro(Alpha::OnePercent, 10_000), 2_357_825);
        assert_eq!(t_critical_micro(Alpha::FivePercent, 199), 1_657_651);
        let mut last = i128::MAX;
        for df in 1..500 {
            let t = t_critical_micro(Alpha::OnePercent, df);
            assert!(t <= last);
            last = t;
        }
    }
}
