//! The Proof-of-Learning settings and the rules they give the test.

use super::*;

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
    /// The contamination check's margin: an accepted candidate whose hidden gain per
    /// position exceeds its validation gain by more than this (micro-nats), and by at least
    /// three standard errors, is refused as `suspected_leak`.
    pub leak_margin_micro: i64,
    /// Largest ‖child − parent‖ / ‖parent‖, millionths.
    pub delta_norm_max_ppm: u64,
    /// Leading zero bits of the proof-of-work stamp (pow and hybrid modes).
    pub pow_bits: u32,
    /// Evaluator threads (0: one per core).
    pub threads: usize,
    /// Items per rewarded validation batch.
    pub batch_items: usize,
    /// Replicate the oldest unreplicated acceptance after each new verdict.
    pub auto_replicate: bool,
    /// What an account pays the operator to have a candidate evaluated (it spends hidden
    /// items), refunded when the candidate is accepted. Local submissions pay nothing; so do
    /// submissions in pow mode, which evaluate nothing.
    pub submission_fee: Amount,
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
            leak_margin_micro: blyan_pol::LEAK_MARGIN_DEFAULT_MICRO,
            delta_norm_max_ppm: 1_000_000,
            pow_bits: blyan_pol::POW_BITS_DEFAULT,
            threads: 0,
            batch_items: 16,
            auto_replicate: true,
            submission_fee: Amount::from_nano(10 * blyan_primitives::NANO_PER_BLY),
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
            self.leak_margin_micro,
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
