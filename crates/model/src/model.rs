//! The Mixtral-style decoder: embeddings, layers of attention and sparse MoE, LM head.
//!
//! Dense parts are loaded when the model is; experts are loaded from their blocks on first use
//! through the [`ExpertCache`]. The forward pass takes a *ragged batch*: several sequences,
//! each with any number of new tokens, flattened into one token matrix for every weight
//! multiplication, while attention runs per sequence against that sequence's KV cache. The
//! same call therefore serves a prompt's prefill, one stream's decode step and a batch of
//! streams decoding together.
//!
//! Two implementations run that pass: candle tensor operations for f32, and plain loops on
//! flat buffers for int8 (`model/flat.rs`), which [`Model::forward_in`] can spread over the
//! threads of a [`Team`]. The int8 pass gives the same bits on every CPU.

use std::{collections::BTreeMap, sync::Arc};

use blyan_chain::{
    BlockKind, Store,
    spec::{ModelSpec, TensorGroup, expert_group_name},
};
use blyan_primitives::{Address, ExpertId, Hash};
use blyan_tokenizer::TokenId;
use candle_core::{Device, Tensor};
use candle_nn::ops::rms_norm;

use crate::{
    ModelConfig, ModelError, Precision,
    attention::{Dims, LayerKv, RopeTables, attend},
    cache::{ByteSize, CacheStats, ExpertCache},
    kernels::matmul_f32,
    linear::Linear,
    load::{read_group, with_group},
    remote::{ExpertHosts, ExpertRows},
    team::Team,
};

mod flat;

/// Default byte budget of the expert cache.
pub const EXPERT_CACHE_BYTES_DEFAULT: usize = 256 << 20;

/// How to load a model from the chain.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Precision of the weight matrices.
    pub precision: Precision,
    /// Byte budget of the expert cache.
    pub expert_cache_bytes: usize,
    /// Expert versions to serve instead of the heads.
    pub expert_versions: BTreeMap<ExpertId, Hash>,
    /// Who computes the experts this process does not (int8 only); none: every expert here.
    pub hosts: Option<Arc<dyn ExpertHosts>>,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            precision: Precision::default(),
            expert_cache_bytes: EXPERT_CACHE_BYTES_DEFAULT,
            expert_versions: BTreeMap::new(),
            hosts: None,
        }
    }
}

/// One expert's SwiGLU MLP, decoded.
#[derive(Debug)]
pub struct Expert {
    /// `w1` (gate) and `w3` (up) stacked into one `[2·ffn, d]` matrix: one multiplication.
    w13: Linear,
    /// Down projection `[d, ffn]`.
    w2: Linear,
    ffn: usize,
}

impl ByteSize for Expert {
    fn bytes(&self) -> usize {
        self.w13.bytes() + self.w2.bytes()
    }
}

impl Expert {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.w13.forward(x)?;
        let gate = h.narrow(1, 0, self.ffn)?;
        let up = h.narrow(1, self.ffn, self.ffn)?;
        let act = (gate.silu()? * up)?;
        self.w2.forward(&act)
    }
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    /// The two norms' weights as plain vectors, for the flat forward pass.
    input_norm_w: Vec<f32>,
    post_norm_w: Vec<f32>,
    /// `q_proj`, `k_proj` and `v_proj` stacked: `[d + 2·kv_dim, d]`.
    qkv: Linear,
    o: Linear,
    /// Router `[experts, d]` row-major, always f32: routing decisions should not move with
    /// quantization.
    router: Vec<f32>,
}

/// Where an expert's weights come from.
#[derive(Clone, Debug)]
struct ExpertSource {
    id: ExpertId,
    block: Hash,
}

/// A loaded model.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    precision: Precision,
    spec_block: Hash,
    spec: ModelSpec,
    /// The embedding table `[vocab, d]`, row-major.
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Tensor,
    norm_w: Vec<f32>,
    /// Whether every dense matrix is in the tiled Q8_0 layout (int8), so that the flat
    /// forward pass serves it.
    flat: bool,
    lm_head: Linear,
    rope: RopeTables,
    store: Arc<Store>,
    layout: BTreeMap<String, TensorGroup>,
    experts: Vec<Vec<ExpertSource>>,
    cache: ExpertCache<Expert>,
    hosts: Option<Arc<dyn ExpertHosts>>,
}

/// A sequence being decoded: its KV cache, position and routing counts.
#[derive(Debug)]
pub struct Sequence {
    /// Per layer: keys and values.
    kv: Vec<LayerKv>,
    len: usize,
    experts_used: BTreeMap<ExpertId, u64>,
    /// Per host that was sent any of this sequence's hidden states, the layers they were of.
    remote_layers: BTreeMap<String, std::collections::BTreeSet<u16>>,
    /// Of `experts_used`, the token-expert computations whose outputs came from other
    /// machines, per host account (an answer a spot check found wrong is not counted).
    remote_answered: BTreeMap<Address, u64>,
    /// Per expert no machine could compute, how many of its tokens went without it (their
    /// router weights renormalised over the experts that were computed).
    missing: BTreeMap<ExpertId, u64>,
    /// Whether its hidden states must stay on this machine.
    local_only: bool,
}

impl Sequence {
    /// Tokens in the KV cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many of this sequence's tokens each expert processed.
    pub fn experts_used(&self) -> &BTreeMap<ExpertId, u64> {
        &self.experts_used
    }

    /// The hosts that were sent this sequence's hidden states, and of which layers.
    pub fn remote_layers(&self) -> &BTreeMap<String, std::collections::BTreeSet<u16>> {
        &self.remote_layers
    }

    /// Keeps this sequence's hidden states on this machine (or lets them go again): every
    /// expert its tokens need is computed here.
    pub fn set_local_only(&mut self, local_only: bool) {
        self.local_only = local_only;
    }

    /// How many of its token-expert computations other machines answered.
    pub fn remote_rows(&self) -> u64 {
        self.remote_answered.values().sum()
    }

    /// Per host account, the token-expert computations whose answers were used.
    pub fn remote_answered(&self) -> &BTreeMap<Address, u64> {
        &self.remote_answered
    }

    /// Per expert no machine could compute, how many of its tokens went without it.
    pub fn missing(&self) -> &BTreeMap<ExpertId, u64> {
        &self.missing
    }
}

/// KV caches start with room for this many positions and grow as needed.
const KV_CAPACITY_INITIAL: usize = 128;

impl Model {
    /// Loads the model the chain in `store` describes: dense parts now, experts on demand.
    pub fn load(store: Arc<Store>, options: LoadOptions) -> Result<Model, ModelError> {
        let (spec_block, meta) = store.meta()?.ok_or(ModelError::NoModel)?;
        let spec = meta.spec;
        let config = ModelConfig::from_spec(&spec);
        let layout = spec.layout();
        let precision = options.precision;

        let head = |name: &str| -> Result<(Hash, &TensorGroup), ModelError> {
            let missing = || ModelError::PartMissing {
                part: name.to_owned(),
            };
            let group = layout.get(name).ok_or_else(missing)?;
            let block = store.group_head(name)?.ok_or_else(missing)?;
            Ok((block, group))
        };
        // Vectors and the embedding table stay f32 tensors.
        let dense = |name: &str| -> Result<Vec<Tensor>, ModelError> {
            let (block, group) = head(name)?;
            read_group(&store, block, group, name)
        };
        let one = |name: &str| -> Result<Tensor, ModelError> {
            dense(name)?
                .pop()
                .ok_or_else(|| ModelError::PartMissing { part: name.into() })
        };
        // Weight matrices are built straight from the payload, as experts are.
        let matrices = |name: &str, stacks: &[&[usize]]| -> Result<Vec<Linear>, ModelError> {
            let (block, group) = head(name)?;
            with_group(&store, block, group, name, |t| {
                stacks
                    .iter()
                    .map(|rows| {
                        let parts = rows
                            .iter()
                            .map(|&i| t.get(i))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| ModelError::PartMissing { part: name.into() })?;
                        Linear::stacked(&parts, precision)
                    })
                    .collect()
            })
        };

        let embed = one("model.embed_tokens")?.flatten_all()?.to_vec1::<f32>()?;
        if embed.len() != config.vocab_size * config.hidden_size {
            return Err(ModelError::PartMissing {
                part: "model.embed_tokens".into(),
            });
        }
        let vector =
            |t: &Tensor| -> Result<Vec<f32>, ModelError> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = format!("model.layers.{l}");
            // Group tensors come sorted by name: k, o, q, v and input, post-attention.
            let [qkv, o]: [Linear; 2] = matrices(&format!("{p}.self_attn"), &[&[2, 0, 3], &[1]])?
                .try_into()
                .map_err(|_| ModelError::PartMissing {
                    part: format!("{p}.self_attn"),
                })?;
            let [input_norm, post_norm]: [Tensor; 2] = dense(&format!("{p}.norms"))?
                .try_into()
                .map_err(|_| ModelError::PartMissing {
                    part: format!("{p}.norms"),
                })?;
            layers.push(Layer {
                input_norm_w: vector(&input_norm)?,
                post_norm_w: vector(&post_norm)?,
                input_norm,
                post_norm,
                qkv,
                o,
                router: one(&format!("{p}.block_sparse_moe.gate"))?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            });
        }
        let norm = one("model.norm")?;
        let norm_w = vector(&norm)?;
        let lm_head =
            matrices("lm_head", &[&[0]])?
                .pop()
                .ok_or_else(|| ModelError::PartMissing {
                    part: "lm_head".into(),
                })?;

        let flat = lm_head.tiled().is_some()
            && layers
                .iter()
                .all(|l| l.qkv.tiled().is_some() && l.o.tiled().is_some());
        let mut experts = Vec::with_capacity(config.layers);
        for &id in options.expert_versions.keys() {
            if usize::from(id.layer) >= config.layers || usize::from(id.expert) >= config.experts {
                return Err(ModelError::InvalidParameter {
                    name: "expert_version",
                    reason: format!("the model has no expert {id}"),
                });
            }
        }
        for l in 0..config.layers {
            let mut row = Vec::with_capacity(config.experts);
            for e in 0..config.experts {
                let id = ExpertId::new(l as u16, e as u16);
                let block = match options.expert_versions.get(&id) {
                    Some(&pinned) => {
                        if !store.expert_versions(id)?.contains(&pinned) {
                            return Err(ModelError::UnknownExpertVersion {
                                expert: id.to_string(),
                                block: pinned,
                            });
                        }
                        pinned
                    }
                    None => store
                        .expert_head(id)?
                        .ok_or_else(|| ModelError::PartMissing {
                            part: format!("expert {id}"),
                        })?,
                };
                row.push(ExpertSource { id, block });
            }
            experts.push(row);
        }

        Ok(Model {
            precision,
            spec_block,
            spec,
            embed,
            layers,
            norm,
            norm_w,
            flat,
            lm_head,
            rope: RopeTables::new(&config),
            store,
            layout,
            experts,
            cache: ExpertCache::new(options.expert_cache_bytes),
            hosts: options.hosts.clone(),
            config,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The spec this model was loaded from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The spec block this model was loaded from.
    pub fn spec_block(&self) -> Hash {
        self.spec_block
    }

    /// The precision of the weight matrices.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The block each expert is served from.
    pub fn expert_blocks(&self) -> BTreeMap<ExpertId, Hash> {
        self.experts
            .iter()
            .flatten()
            .map(|s| (s.id, s.block))
            .collect()
    }

    /// Whether expert `id`'s served version is decoded in the expert cache now.
    pub fn expert_cached(&self, id: ExpertId) -> bool {
        self.experts
            .get(usize::from(id.layer))
            .and_then(|row| row.get(usize::from(id.expert)))
            .is_some_and(|s| self.cache.contains(&s.block))
    }

    /// Expert cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Drops every cached expert, so that the next use of each loads it from its block.
    pub fn clear_expert_cache(&self) {
        self.cache.clear();
    }

    /// Loads an expert into the cache if it is not there yet.
    pub fn load_expert(&self, id: ExpertId) -> Result<(), ModelError> {
        self.expert(usize::from(id.layer), usize::from(id.expert))
            .map(drop)
    }

    /// A fresh sequence with an empty KV cache.
    pub fn new_sequence(&self) -> Result<Sequence, ModelError> {
        let c = &self.config;
        let room = KV_CAPACITY_INITIAL.min(c.context_len);
        let kv = (0..c.layers)
            .map(|_| LayerKv::with_capacity(room, c.kv_dim()))
            .collect();
        Ok(Sequence {
            kv,
            len: 0,
            experts_used: BTreeMap::new(),
            remote_layers: BTreeMap::new(),
            remote_answered: BTreeMap::new(),
            missing: BTreeMap::new(),
            local_only: false,
        })
    }

    /// Runs new tokens of one or more sequences through the model and returns, per entry,
    /// the next-token logits after its last new token.
    ///
    /// Every entry needs at least one token, every token must be in the vocabulary and no
    /// sequence may outgrow the context window; on error no sequence has advanced.
    pub fn forward(
        &self,
        batch: &mut [(&mut Sequence, &[TokenId])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.run(batch, None)
    }

    /// As [`Model::forward`], with the work of the pass spread over the threads of `team`
    /// where the model has a parallel pass (int8; see [`Model::parallel`]). The logits are
    /// the same bits as those of [`Model::forward`].
    pub fn forward_in(
        &self,
        batch: &mut [(&mut Sequence, &[TokenId])],
        team: &Team,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.run(batch, Some(team))
    }

    /// Whether [`Model::forward_in`] spreads a pass over threads: true for int8, where every
    /// matrix is in the tiled layout.
    pub fn parallel(&self) -> bool {
        self.flat
    }

    fn run(
        &self,
        batch: &mut [(&mut Sequence, &[TokenId])],
        team: Option<&Team>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let mut ids = Vec::new();
        for (seq, tokens) in batch.iter() {
            if tokens.is_empty() {
                return Err(ModelError::InvalidParameter {
                    name: "tokens",
                    reason: "a sequence step needs at least one token".into(),
                });
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::InvalidParameter {
                    name: "tokens",
                    reason: format!("token {bad} is outside the vocabulary of {}", c.vocab_size),
                });
            }
            if seq.len + tokens.len() > c.context_len {
                return Err(ModelError::PromptTooLong {
                    tokens: seq.len + tokens.len(),
                    context_len: c.context_len,
                });
            }
            ids.extend_from_slice(tokens);
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let result = if self.flat {
            self.forward_flat(&ids, batch, team)
        } else {
            self.forward_tensors(ids, batch)
        };
        if result.is_err() {
            // Leave every KV cache as it was before this call.
            let kvd = c.kv_dim();
            for (seq, _) in batch.iter_mut() {
                for kv in &mut seq.kv {
                    kv.truncate(seq.len, kvd);
                }
            }
        }
        let logits = result?;
        for (seq, tokens) in batch.iter_mut() {
            seq.len += tokens.len();
        }
        Ok(logits)
    }

    /// The forward pass as candle tensor operations (f32, or int8 without the vector
    /// kernel): the logits after each sequence's last new token.
    fn forward_tensors(
        &self,
        ids: Vec<TokenId>,
        batch: &mut [(&mut Sequence, &[TokenId])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let total = ids.len();
        let x = self.layers_forward(ids, batch)?;
        let mut last = Vec::with_capacity(batch.len());
        let mut row = 0u32;
        for (_, tokens) in batch.iter() {
            row += tokens.len() as u32;
            last.push(row - 1);
        }
        let x = if last.len() == 1 && total == 1 {
            x
        } else {
            x.index_select(&Tensor::new(last, &Device::Cpu)?, 0)?
        };
        let x = rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        Ok(self.lm_head.forward(&x)?.to_vec2::<f32>()?)
    }

    /// The decoder layers over the batch's tokens; returns the hidden states `[tokens, d]`.
    fn layers_forward(
        &self,
        ids: Vec<TokenId>,
        batch: &mut [(&mut Sequence, &[TokenId])],
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let total = ids.len();
        let d = c.hidden_size;
        let mut rows = Vec::with_capacity(total * d);
        for &t in &ids {
            rows.extend_from_slice(&self.embed[t as usize * d..(t as usize + 1) * d]);
        }
        let mut x = Tensor::from_vec(rows, (total, d), &Device::Cpu)?;
        let mut scores = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, c.rms_norm_eps)?;
            let mut qkv = layer.qkv.forward(&h)?.flatten_all()?.to_vec1::<f32>()?;
            let mut attn = vec![0f32; total * c.hidden_size];
            self.attend_each(l, batch, &mut qkv, &mut attn, &mut scores);
            let attn = Tensor::from_vec(attn, (total, c.hidden_size), &Device::Cpu)?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = rms_norm(&x, &layer.post_norm, c.rms_norm_eps)?;
            x = (&x + self.moe(l, &h, batch)?)?;
        }
        Ok(x)
    }

    /// Attention of layer `l` for each sequence of `batch` in turn: `qkv` holds the
    /// sequences' fused projections one after another (rotated in place), `out` receives
    /// their attention rows.
    fn attend_each(
        &self,
        l: usize,
        batch: &mut [(&mut Sequence, &[TokenId])],
        qkv: &mut [f32],
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let dims = Dims::of(&self.config);
        let (mut qkv_rest, mut out_rest) = (qkv, out);
        for (seq, tokens) in batch.iter_mut() {
            let n = tokens.len();
            let (qkv_seq, q_tail) = qkv_rest.split_at_mut(n * dims.qkv_width());
            let (out_seq, o_tail) = out_rest.split_at_mut(n * dims.hidden);
            attend(
                dims,
                &self.rope,
                &mut seq.kv[l],
                seq.len,
                qkv_seq,
                out_seq,
                scores,
            );
            (qkv_rest, out_rest) = (q_tail, o_tail);
        }
    }

    /// The sparse MoE block over the batch's tokens `h` `[tokens, d]`.
    fn moe(
        &self,
        l: usize,
        h: &Tensor,
        batch: &mut [(&mut Sequence, &[TokenId])],
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let hidden = h.flatten_all()?.to_vec1::<f32>()?;
        let tokens = hidden.len() / c.hidden_size;
        let mut flat = vec![0f32; tokens * c.experts];
        matmul_f32(&self.layers[l].router, c.hidden_size, &hidden, &mut flat);
        let logits: Vec<&[f32]> = flat.chunks_exact(c.experts).collect();
        // Per expert: the tokens routed to it and their weights.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); c.experts];
        let mut owner = Vec::with_capacity(tokens);
        for (s, (_, toks)) in batch.iter().enumerate() {
            owner.extend(std::iter::repeat_n(s, toks.len()));
        }
        for (t, row) in logits.iter().enumerate() {
            for (e, w) in route(row, c.top_k) {
                routed[e].0.push(t as u32);
                routed[e].1.push(w);
                *batch[owner[t]]
                    .0
                    .experts_used
                    .entry(ExpertId::new(l as u16, e as u16))
                    .or_default() += 1;
            }
        }
        let mut out: Option<Tensor> = None;
        for (e, (idx, weights)) in routed.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            let expert = self.expert(l, e)?;
            let n = idx.len();
            let all = n == tokens;
            let xs = if all {
                h.clone()
            } else {
                h.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)?
            };
            let y = expert.forward(&xs)?.broadcast_mul(&Tensor::from_vec(
                weights,
                (n, 1),
                &Device::Cpu,
            )?)?;
            out = Some(match (out, all) {
                (Some(acc), true) => (acc + y)?,
                (None, true) => y,
                (acc, false) => {
                    let acc = match acc {
                        Some(acc) => acc,
                        None => h.zeros_like()?,
                    };
                    acc.index_add(&Tensor::new(idx, &Device::Cpu)?, &y, 0)?
                }
            });
        }
        match out {
            Some(out) => Ok(out),
            None => Ok(h.zeros_like()?),
        }
    }

    /// Computes expert `id` at exactly `block` (any of its versions in the store) on `rows`,
    /// as a host does for another machine: `[rows, d]` outputs, the bits that machine's own
    /// int8 pass would have computed.
    pub fn compute_expert(
        &self,
        id: ExpertId,
        block: Hash,
        rows: &ExpertRows,
    ) -> Result<Vec<f32>, ModelError> {
        if !self.flat {
            return Err(ModelError::Unsupported {
                reason: "experts are computed for other machines in int8 only".into(),
            });
        }
        if usize::from(id.layer) >= self.config.layers
            || usize::from(id.expert) >= self.config.experts
        {
            return Err(ModelError::InvalidParameter {
                name: "expert",
                reason: format!("this model has no expert {id}"),
            });
        }
        if rows.cols() != self.config.hidden_size {
            return Err(ModelError::InvalidParameter {
                name: "rows",
                reason: format!(
                    "rows are {} wide, this model's are {}",
                    rows.cols(),
                    self.config.hidden_size
                ),
            });
        }
        let source = ExpertSource { id, block };
        let expert = self
            .cache
            .get_or_load(block, || self.decode_expert(&source))?;
        expert.compute_rows(&rows.q, self.config.hidden_size)
    }

    fn expert(&self, l: usize, e: usize) -> Result<Arc<Expert>, ModelError> {
        let source = &self.experts[l][e];
        self.cache
            .get_or_load(source.block, || self.decode_expert(source))
    }

    fn decode_expert(&self, source: &ExpertSource) -> Result<Expert, ModelError> {
        let part = format!("expert {}", source.id);
        let header = self
            .store
            .header(&source.block)?
            .ok_or_else(|| ModelError::BlockMissing {
                part: part.clone(),
                block: source.block,
            })?;
        if header.kind != BlockKind::Expert || header.meta.expert != Some(source.id) {
            return Err(ModelError::BlockCorrupt {
                part,
                block: source.block,
                reason: "the block is not this expert's".into(),
            });
        }
        let name = expert_group_name(source.id);
        let group = self
            .layout
            .get(&name)
            .ok_or_else(|| ModelError::PartMissing { part: part.clone() })?;
        // Sorted by name: w1, w2, w3.
        let precision = self.precision;
        let (w13, w2) = with_group(&self.store, source.block, group, &part, |t| match t {
            [w1, w2, w3] => Ok((
                Linear::stacked(&[w1, w3], precision)?,
                Linear::stacked(&[w2], precision)?,
            )),
            _ => Err(ModelError::PartMissing { part: part.clone() }),
        })?;
        Ok(Expert {
            w13,
            w2,
            ffn: self.config.intermediate_size,
        })
    }
}

/// The `k` experts with the highest router logits (ties to the lower index) and their
/// weights: the softmax over all experts renormalised over the chosen ones, which equals the
/// softmax over the chosen logits.
pub fn route(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(k);
    let max = order.first().map_or(0.0, |&e| logits[e]);
    // Pure-Rust libm, not the platform's (whose result may depend on the CPU's features):
    // the same weights on every machine.
    let exp: Vec<f32> = order.iter().map(|&e| libm::expf(logits[e] - max)).collect();
    let sum: f32 = exp.iter().sum();
    let chosen: Vec<(usize, f32)> = order
        .into_iter()
        .zip(exp.into_iter().map(|x| x / sum))
        .collect();
    let total: f32 = chosen.iter().map(|&(_, w)| w).sum();
    assert!(
        (total - 1.0).abs() < 1e-4 || !total.is_finite(),
        "router weights sum to {total}, not 1"
    );
    chosen
}
