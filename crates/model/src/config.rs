//! The model's shape as the forward pass uses it, and the numeric precision it runs in.

use std::{fmt, str::FromStr};

use blyan_chain::spec::ModelSpec;
use blyan_tokenizer::TokenId;
use serde::{Deserialize, Serialize};

/// The spec block's `ModelSpec`, in the units the forward pass works in.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// Expert hidden width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Experts per layer.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Context window in tokens.
    pub context_len: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Beginning-of-sequence token.
    pub bos_token_id: TokenId,
    /// End-of-sequence token.
    pub eos_token_id: TokenId,
}

impl ModelConfig {
    /// The config of a (checked) spec.
    pub fn from_spec(spec: &ModelSpec) -> ModelConfig {
        ModelConfig {
            vocab_size: spec.vocab_size as usize,
            hidden_size: spec.hidden_size as usize,
            intermediate_size: spec.intermediate_size as usize,
            layers: usize::from(spec.num_hidden_layers),
            heads: usize::from(spec.num_attention_heads),
            kv_heads: usize::from(spec.num_key_value_heads),
            head_dim: spec.head_dim() as usize,
            experts: usize::from(spec.num_local_experts),
            top_k: usize::from(spec.num_experts_per_tok),
            context_len: spec.max_position_embeddings as usize,
            rope_theta: spec.rope_theta,
            rms_norm_eps: spec.rms_norm_eps,
            bos_token_id: spec.bos_token_id,
            eos_token_id: spec.eos_token_id,
        }
    }

    /// Width of the key (and value) projection.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Numeric precision of the weight matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere: the reference path.
    F32,
    /// Q8_0 matrices (blocks of 32 int8 values with an f16 scale), f32 activations: the
    /// serving path. Embeddings, norms and routers stay f32.
    #[default]
    Int8,
}

impl Precision {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "int8" | "q8_0" => Ok(Precision::Int8),
            other => Err(format!("unknown precision {other:?}; expected f32 or int8")),
        }
    }
}
