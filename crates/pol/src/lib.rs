//! Proof of Learning.
//!
//! This first part is the decision: per evaluated item the parent's and the candidate's loss
//! in integer micro-nats, summed exactly ([`PairedSums`]), and a one-sided paired t-test
//! decided with integer arithmetic only ([`decide`]), so every validator reaches the same
//! verdict bit for bit, at up to [`LOOKS_MAX`] looks at a growing sample; and the hidden pool ([`Pool`]): items under a Merkle root, samples
//! drawn without reuse from a seed fixed only after the candidate is committed. The
//! evaluator, proof blocks and rewards build on these.

#![warn(missing_docs)]

pub mod eval;
mod judge;
mod pool;
pub mod record;
pub mod snapshot;
mod stats;

pub use judge::{
    Judgement, LEAK_MARGIN_DEFAULT_MICRO, LEAK_Z, LeakCheck, POW_BITS_DEFAULT, Reason, Rules,
    delta_norm_ppm, judge, leading_zero_bits, leak_check, pow_ok, pow_solve, pow_stamp,
};
pub use pool::{Pool, PoolError, decode_item, encode_item, evaluation_seed, item_salt};
pub use stats::{
    Alpha, DIFF_MAX, Decision, ITEMS_MAX, LOOKS_MAX, PairedSums, StatsError, Thresholds, decide,
    decide_against, t_critical_micro,
};
