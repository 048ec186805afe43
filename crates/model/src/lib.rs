//! The sparse MoE transformer served from chain blocks: expert cache, KV cache, sampling,
//! batching and generation.
//!
//! [`Model::load`] reads the spec from the meta chain and the dense tensors from their
//! parameter blocks; experts are read from their blocks when a token is first routed to them
//! and kept in an [`ExpertCache`]. [`Generation`] streams one request; [`Engine`] decodes many
//! together.

#![warn(missing_docs)]

mod attention;
mod cache;
mod config;
mod engine;
mod error;
mod generate;
mod kernels;
mod linear;
mod load;
mod model;
mod remote;
mod sampling;
mod team;

pub use cache::{ByteSize, CacheStats, ExpertCache};
pub use config::{ModelConfig, Precision};
pub use engine::{Engine, EngineConfig, Event, MAX_BATCH_DEFAULT, Receiver};
pub use error::ModelError;
pub use generate::{
    CancelToken, FinishReason, GenerateRequest, Generation, STOP_LEN_MAX, STOP_SEQUENCES_MAX, Step,
    Summary,
};
pub use kernels::q8_kernel;
pub use model::{EXPERT_CACHE_BYTES_DEFAULT, Expert, LoadOptions, Model, Sequence, route};
pub use remote::{ExpertHosts, ExpertRows, RemoteAnswer, RemoteCall, RemoteOutcome};
pub use sampling::{REPETITION_PENALTY_MAX, Sampler, SamplingParams, TEMPERATURE_MAX, argmax};
pub use team::Team;
