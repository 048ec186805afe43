//! Proof of Learning.
//!
//! This first part is the decision: per evaluated item the parent's and the candidate's loss
//! in integer micro-nats, summed exactly ([`PairedSums`]), and a one-sided paired t-test
//! decided with integer arithmetic only ([`decide`]), so every validator reaches the same
//! verdict bit for bit. The hidden pool, the evaluator, proof blocks and rewards build on it.

#![warn(missing_docs)]

mod stats;

pub use stats::{
    Alpha, DIFF_MAX, Decision, ITEMS_MAX, PairedSums, StatsError, Thresholds, decide,
    t_critical_micro,
};
