//! Candidate expert files: the new tensors of one expert, the version they improve on, and
//! how they were trained.
//!
//! A candidate is a safetensors file of the expert's f32 tensors under their Hugging Face
//! names, with one metadata entry `blyan.candidate` holding JSON
//! `{"expert", "parent", "manifest"}`. Any safetensors reader opens it.

use std::collections::HashMap;

use blyan_chain::spec::{ModelSpec, expert_group_name};
use blyan_primitives::{ExpertId, Hash};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Metadata key of a candidate file.
pub const CANDIDATE_KEY: &str = "blyan.candidate";

/// Largest candidate file accepted, in bytes.
pub const CANDIDATE_LEN_MAX: usize = 256 << 20;

/// How a candidate was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 of the training data file.
    pub data_sha256: Hash,
    /// Its size in bytes.
    pub data_bytes: u64,
    /// Tokens in the training part of the data.
    pub train_tokens: u64,
    /// Tokens in the held-out part.
    pub eval_tokens: u64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per micro-step (a step's gradient is summed over its micro-steps).
    #[serde(default)]
    pub micro_rows: usize,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Gradient clipping norm.
    pub clip_norm: f64,
    /// Held-out loss before training, nats per token.
    pub eval_loss_before: f64,
    /// Held-out loss after training.
    pub eval_loss_after: f64,
    /// The program that trained it.
    pub trainer: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    expert: String,
    parent: Hash,
    manifest: Manifest,
}

/// A candidate expert version.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The expert it replaces.
    pub expert: ExpertId,
    /// The version it was trained from.
    pub parent: Hash,
    /// Tensors (full name, shape, values), sorted by name.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// How it was trained.
    pub manifest: Manifest,
}

impl Candidate {
    /// The file bytes.
    pub fn encode(&self) -> Result<Vec<u8>, TrainError> {
        let bad = |e: &dyn std::fmt::Display| TrainError::Candidate {
            detail: e.to_string(),
        };
        let header = Header {
            expert: self.expert.to_string(),
            parent: self.parent,
            manifest: self.manifest.clone(),
        };
        let meta = HashMap::from([(
            CANDIDATE_KEY.to_string(),
            serde_json::to_string(&header).map_err(|e| bad(&e))?,
        )]);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), blyan_tensor::f32_to_bytes(v)))
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| bad(&e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize(views, Some(meta)).map_err(|e| bad(&e))
    }

    /// Parses and checks a candidate file: the metadata, exactly the expert's three tensors
    /// in f32, all values finite.
    pub fn decode(bytes: &[u8]) -> Result<Candidate, TrainError> {
        let bad = |detail: String| TrainError::Candidate { detail };
        if bytes.len() > CANDIDATE_LEN_MAX {
            return Err(bad(format!(
                "{} bytes; the limit is {CANDIDATE_LEN_MAX}",
                bytes.len()
            )));
        }
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, md) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let json = md
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CANDIDATE_KEY))
            .ok_or_else(|| bad(format!("no {CANDIDATE_KEY} metadata")))?;
        let header: Header =
            serde_json::from_str(json).map_err(|e| bad(format!("bad metadata: {e}")))?;
        let expert: ExpertId = header
            .expert
            .parse()
            .map_err(|e| bad(format!("bad expert {:?}: {e}", header.expert)))?;
        let group = expert_group_name(expert);
        let mut want: Vec<String> = ["w1", "w2", "w3"]
            .iter()
            .map(|w| format!("{group}.{w}.weight"))
            .collect();
        want.sort();
        let mut tensors = Vec::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        if names != want {
            return Err(bad(format!("expected tensors {want:?}, found {names:?}")));
        }
        for name in names {
            let view = st.tensor(&name).map_err(|e| bad(format!("{name}: {e}")))?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("{name} is {:?}, not F32", view.dtype())));
            }
            let values = blyan_tensor::f32_from_bytes(view.data());
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(TrainError::NonFiniteCandidate {
                    tensor: name,
                    index: i,
                });
            }
            tensors.push((name, view.shape().to_vec(), values));
        }
        Ok(Candidate {
            expert,
            parent: header.parent,
            tensors,
            manifest: header.manifest,
        })
    }

    /// Checks the tensors' shapes against the spec the chain serves.
    pub fn check_shapes(&self, spec: &ModelSpec) -> Result<(), TrainError> {
        let layout = spec.layout();
        let group =
            layout
                .get(&expert_group_name(self.expert))
                .ok_or_else(|| TrainError::Candidate {
                    detail: format!("expert {} is not in the model", self.expert),
                })?;
        for desc in &group.tensors {
            let want: Vec<usize> = desc.shape.iter().map(|&d| d as usize).collect();
            let found = self
                .tensors
                .iter()
                .find(|t| t.0 == desc.name)
                .map(|t| t.1.clone());
            if found.as_ref() != Some(&want) {
                return Err(TrainError::Candidate {
                    detail: format!("{} has shape {found:?}, the spec says {want:?}", desc.name),
                });
            }
        }
        Ok(())
    }
}
