//! The Mixtral-style decoder: embeddings, layers of attention and sparse MoE, LM head.
//!
//! Dense parts are loaded when the model is; experts are loaded from their blocks on first use
//! through the [`ExpertCache`]. The forward pass takes a *ragged batch*: several sequences,
//! each with any number of new tokens, flattened into one token matrix for every weight
//! multiplication, while attention runs per sequence against that sequence's KV cache. The
//! same call therefore serves a prompt's prefill, one stream's decode step and a batch of
//! streams decoding together.

use std::{collections::BTreeMap, sync::Arc};

use blyan_chain::{
    BlockKind, Store,
    spec::{ModelSpec, TensorGroup, expert_group_name},
};
use blyan_primitives::{ExpertId, Hash};
use blyan_tokenizer::TokenId;
use candle_core::{DType, Device, Tensor};
use candle_nn::{
    ops::{rms_norm, softmax_last_dim},
    rotary_emb::rope,
};

use crate::{
    ModelConfig, ModelError, Precision,
    cache::{ByteSize, CacheStats, ExpertCache},
    linear::Linear,
    load::read_group,
};

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
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            precision: Precision::default(),
            expert_cache_bytes: EXPERT_CACHE_BYTES_DEFAULT,
            expert_versions: BTreeMap::new(),
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
    /// `q_proj`, `k_proj` and `v_proj` stacked: `[d + 2·kv_dim, d]`.
    qkv: Linear,
    o: Linear,
    /// Router `[experts, d]`, always f32: routing decisions should not move with quantization.
    router: Tensor,
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
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    store: Arc<Store>,
    layout: BTreeMap<String, TensorGroup>,
    experts: Vec<Vec<ExpertSource>>,
    cache: ExpertCache<Expert>,
}

/// A sequence being decoded: its KV cache, position and routing counts.
#[derive(Debug)]
pub struct Sequence {
    /// Per layer: keys and values `[kv_heads, capacity, head_dim]`.
    kv: Vec<(Tensor, Tensor)>,
    len: usize,
    experts_used: BTreeMap<ExpertId, u64>,
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
}

/// KV caches start this long and double up to the context window.
const KV_CAPACITY_INITIAL: usize = 128;

impl Model {
    /// Loads the model the chain in `store` describes: dense parts now, experts on demand.
    pub fn load(store: Arc<Store>, options: LoadOptions) -> Result<Model, ModelError> {
        let (spec_block, meta) = store.meta()?.ok_or(ModelError::NoModel)?;
        let spec = meta.spec;
        let config = ModelConfig::from_spec(&spec);
        let layout = spec.layout();
        let precision = options.precision;

        let dense = |name: &str| -> Result<Vec<Tensor>, ModelError> {
            let group = layout.get(name).ok_or_else(|| ModelError::PartMissing {
                part: name.to_owned(),
            })?;
            let block = store
                .group_head(name)?
                .ok_or_else(|| ModelError::PartMissing {
                    part: name.to_owned(),
                })?;
            read_group(&store, block, group, name)
        };
        let one = |name: &str| -> Result<Tensor, ModelError> {
            dense(name)?
                .pop()
                .ok_or_else(|| ModelError::PartMissing { part: name.into() })
        };

        let embed = one("model.embed_tokens")?;
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = format!("model.layers.{l}");
            // Group tensors come sorted by name: k, o, q, v and input, post-attention.
            let [k, o, q, v]: [Tensor; 4] =
                dense(&format!("{p}.self_attn"))?.try_into().map_err(|_| {
                    ModelError::PartMissing {
                        part: format!("{p}.self_attn"),
                    }
                })?;
            let [input_norm, post_norm]: [Tensor; 2] = dense(&format!("{p}.norms"))?
                .try_into()
                .map_err(|_| ModelError::PartMissing {
                    part: format!("{p}.norms"),
                })?;
            layers.push(Layer {
                input_norm,
                post_norm,
                qkv: Linear::new(Tensor::cat(&[q, k, v], 0)?, precision)?,
                o: Linear::new(o, precision)?,
                router: one(&format!("{p}.block_sparse_moe.gate"))?,
            });
        }
        let norm = one("model.norm")?;
        let lm_head = Linear::new(one("lm_head")?, precision)?;

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

        let (cos, sin) = rope_tables(&config)?;
        Ok(Model {
            precision,
            spec_block,
            spec,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            store,
            layout,
            experts,
            cache: ExpertCache::new(options.expert_cache_bytes),
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
        let capacity = KV_CAPACITY_INITIAL.min(c.context_len);
        let kv = (0..c.layers)
            .map(|_| {
                let shape = (c.kv_heads, capacity, c.head_dim);
                Ok((
                    Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                    Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<Result<_, candle_core::Error>>()?;
        Ok(Sequence {
            kv,
            len: 0,
            experts_used: BTreeMap::new(),
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
        for (seq, tokens) in batch.iter_mut() {
            self.reserve(seq, tokens.len())?;
        }

        let total = ids.len();
        let mut x = self
            .embed
            .index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, c.rms_norm_eps)?;
            let qkv = layer.qkv.forward(&h)?;
            let mut outs = Vec::with_capacity(batch.len());
            let mut row = 0;
            for (seq, tokens) in batch.iter_mut() {
                let n = tokens.len();
                outs.push(self.attend(l, seq, &qkv.narrow(0, row, n)?)?);
                row += n;
            }
            let attn = if outs.len() == 1 {
                outs.pop().ok_or(ModelError::EngineStopped)?
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + layer.o.forward(&attn)?)?;
            let h = rms_norm(&x, &layer.post_norm, c.rms_norm_eps)?;
            x = (&x + self.moe(l, &h, batch)?)?;
        }

        let mut last = Vec::with_capacity(batch.len());
        let mut row = 0u32;
        for (seq, tokens) in batch.iter_mut() {
            row += tokens.len() as u32;
            last.push(row - 1);
            seq.len += tokens.len();
        }
        let x = if last.len() == 1 && total == 1 {
            x
        } else {
            x.index_select(&Tensor::new(last, &Device::Cpu)?, 0)?
        };
        let x = rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        Ok(self.lm_head.forward(&x)?.to_vec2::<f32>()?)
    }

    /// Grows a sequence's KV cache to hold `n` more tokens.
    fn reserve(&self, seq: &mut Sequence, n: usize) -> Result<(), ModelError> {
        let need = seq.len + n;
        let Some((k0, _)) = seq.kv.first() else {
            return Ok(());
        };
        let capacity = k0.dim(1)?;
        if need <= capacity {
            return Ok(());
        }
        let grown = need.max(capacity * 2).min(self.config.context_len);
        for (k, v) in seq.kv.iter_mut() {
            for t in [k, v] {
                let bigger = Tensor::zeros(
                    (self.config.kv_heads, grown, self.config.head_dim),
                    DType::F32,
                    &Device::Cpu,
                )?;
                if seq.len > 0 {
                    bigger.slice_set(&t.narrow(1, 0, seq.len)?.contiguous()?, 1, 0)?;
                }
                *t = bigger;
            }
        }
        Ok(())
    }

    /// Causal grouped-query attention of one sequence's new tokens; `qkv` is `[n, d + 2·kv]`.
    fn attend(&self, l: usize, seq: &mut Sequence, qkv: &Tensor) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let (n, hd, kvd) = (qkv.dim(0)?, c.head_dim, c.kv_dim());
        let group = c.heads / c.kv_heads;
        let p0 = seq.len;
        let cos = self.cos.narrow(0, p0, n)?;
        let sin = self.sin.narrow(0, p0, n)?;
        let heads = |start: usize, count: usize| -> Result<Tensor, ModelError> {
            let t = qkv
                .narrow(1, start, count * hd)?
                .reshape((n, count, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?;
            Ok(rope(&t, &cos, &sin)?.squeeze(0)?)
        };
        let q = heads(0, c.heads)?;
        let k = heads(c.hidden_size, c.kv_heads)?;
        let v = qkv
            .narrow(1, c.hidden_size + kvd, kvd)?
            .reshape((n, c.kv_heads, hd))?
            .transpose(0, 1)?
            .contiguous()?;
        let (kc, vc) = &seq.kv[l];
        kc.slice_set(&k, 1, p0)?;
        vc.slice_set(&v, 1, p0)?;
        let len = p0 + n;
        let keys = kc.narrow(1, 0, len)?;
        let values = vc.narrow(1, 0, len)?;

        // Query head h uses key/value head h / group, so the heads of one group can share a
        // single matrix product: [kv_heads, group·n, hd] × [kv_heads, hd, len].
        let q = q.reshape((c.kv_heads, group * n, hd))?;
        let mut scores = (q.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        if n > 1 {
            let mut mask = vec![0f32; group * n * len];
            for g in 0..group {
                for i in 0..n {
                    let row = (g * n + i) * len;
                    for j in p0 + i + 1..len {
                        mask[row + j] = f32::NEG_INFINITY;
                    }
                }
            }
            let mask = Tensor::from_vec(mask, (group * n, len), &Device::Cpu)?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = softmax_last_dim(&scores)?;
        let out = probs.matmul(&values.contiguous()?)?;
        Ok(out
            .reshape((c.heads, n, hd))?
            .transpose(0, 1)?
            .reshape((n, c.hidden_size))?)
    }

    /// The sparse MoE block over the batch's tokens `h` `[tokens, d]`.
    fn moe(
        &self,
        l: usize,
        h: &Tensor,
        batch: &mut [(&mut Sequence, &[TokenId])],
    ) -> Result<Tensor, ModelError> {
        let c = &self.config;
        let logits = h.matmul(&self.layers[l].router.t()?)?.to_vec2::<f32>()?;
        let tokens = logits.len();
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
        let [w1, w2, w3]: [Tensor; 3] = read_group(&self.store, source.block, group, &part)?
            .try_into()
            .map_err(|_| ModelError::PartMissing { part: part.clone() })?;
        Ok(Expert {
            w13: Linear::new(Tensor::cat(&[w1, w3], 0)?, self.precision)?,
            w2: Linear::new(w2, self.precision)?,
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
    let exp: Vec<f32> = order.iter().map(|&e| (logits[e] - max).exp()).collect();
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

/// RoPE cosine and sine tables `[context_len, head_dim / 2]` in the Hugging Face (half-split)
/// convention.
fn rope_tables(c: &ModelConfig) -> Result<(Tensor, Tensor), ModelError> {
    let half = c.head_dim / 2;
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| 1.0 / f64::from(c.rope_theta).powf(2.0 * i as f64 / c.head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(c.context_len * half);
    let mut sin = Vec::with_capacity(c.context_len * half);
    for p in 0..c.context_len {
        for &f in &inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (c.context_len, half), &Device::Cpu)?,
        Tensor::from_vec(sin, (c.context_len, half), &Device::Cpu)?,
    ))
}
