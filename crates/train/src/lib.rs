//! Blyan's trainer: the corpus and its splits, byte-level BPE tokenizer training, genesis
//! training of the whole MoE, and fine-tuning of one expert into a candidate block.
//!
//! Training runs on candle with a real backward pass through a graph built only from
//! composed operations ([`net`]); [`optim::AdamW`] keeps its moments as plain tensors so a
//! [`Trainer`] checkpoint restores a run exactly.

#![warn(missing_docs)]

pub mod baseline;
pub mod bpe;
pub mod candidate;
pub mod corpus;
pub mod data;
mod error;
pub mod expert;
pub mod genesis;
pub mod net;
pub mod optim;
pub mod plot;
mod trainer;
pub mod weights;

pub use error::TrainError;
pub use trainer::{StepReport, TrainConfig, Trainer, eval_loss};
