//! The Mixtral-style decoder as a differentiable candle graph.
//!
//! This is the same model as `blyan-model` serves, written for training: whole sequences
//! at once with a causal mask, and only composed operations. candle's fused
//! `softmax_last_dim`, `rms_norm` and `rope` have no backward pass, so here softmax is
//! `exp(x - max) / Σ`, RMSNorm is `x · (mean(x²) + ε)^-½ · w` and RoPE is
//! `x · cos + rotate_half(x) · sin`. Routing follows `blyan_model::route`: the top-k router
//! logits, softmax renormalised over the chosen k (the same as the full softmax's top-k
//! probabilities divided by their sum, which is what is computed here so that the router
//! gets its gradient).

use std::collections::BTreeMap;

use blyan_model::ModelConfig;
use candle_core::{D, DType, Device, Tensor, Var};

use crate::TrainError;

/// Additive mask for positions a token may not attend to.
const MASKED: f32 = -1e9;

/// The parameters of the model: trainable ones are candle `Var`s, the rest constants.
#[derive(Debug)]
pub struct Params {
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
}

impl Params {
    /// Parameters from named f32 tensors; those for which `trainable(name)` holds become
    /// variables.
    pub fn new(
        tensors: BTreeMap<String, Tensor>,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Params, TrainError> {
        let mut vars = BTreeMap::new();
        let mut frozen = BTreeMap::new();
        for (name, t) in tensors {
            if trainable(&name) {
                vars.insert(name, Var::from_tensor(&t)?);
            } else {
                frozen.insert(name, t);
            }
        }
        Ok(Params { vars, frozen })
    }

    /// A parameter by its Hugging Face name.
    pub fn get(&self, name: &str) -> Result<&Tensor, TrainError> {
        if let Some(v) = self.vars.get(name) {
            return Ok(v.as_tensor());
        }
        self.frozen.get(name).ok_or_else(|| {
            TrainError::Compute(candle_core::Error::Msg(format!(
                "the model has no tensor {name}"
            )))
        })
    }

    /// The trainable parameters.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Every parameter, trainable or not, by name.
    pub fn all(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self.frozen.clone();
        for (name, v) in &self.vars {
            out.insert(name.clone(), v.as_tensor().clone());
        }
        out
    }
}

/// The output of a forward pass.
#[derive(Debug)]
pub struct Forward {
    /// Logits, `[batch · seq, vocab]`.
    pub logits: Tensor,
    /// The load-balancing loss summed over layers (k when perfectly balanced, per layer).
    pub balance: Tensor,
    /// Tokens routed to each expert, `[layer][expert]` (each token counts once per choice).
    pub routed: Vec<Vec<u64>>,
}

/// The differentiable model.
#[derive(Debug)]
pub struct Net {
    cfg: ModelConfig,
    /// Parameters.
    pub params: Params,
    cos: Tensor,
    sin: Tensor,
}

impl Net {
    /// A model over `params`, which must hold every tensor of the spec's layout.
    pub fn new(cfg: ModelConfig, params: Params) -> Result<Net, TrainError> {
        let (cos, sin) = rope_tables(&cfg)?;
        Ok(Net {
            cfg,
            params,
            cos,
            sin,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Runs `ids` (`[batch, seq]`, u32) through the model.
    pub fn forward(&self, ids: &Tensor) -> Result<Forward, TrainError> {
        let (b, t) = ids.dims2()?;
        if t == 0 || t > self.cfg.context_len {
            return Err(TrainError::invalid(
                "seq_len",
                format!("must be 1..={}", self.cfg.context_len),
            ));
        }
        let p = &self.params;
        let mut x = p
            .get("model.embed_tokens.weight")?
            .index_select(&ids.flatten_all()?, 0)?;
        let mask = causal_mask(t, ids.device())?;
        let mut balance = Tensor::zeros((), DType::F32, ids.device())?;
        let mut routed = Vec::with_capacity(self.cfg.layers);
        for l in 0..self.cfg.layers {
            let pre = format!("model.layers.{l}");
            let h = rms_norm(
                &x,
                p.get(&format!("{pre}.input_layernorm.weight"))?,
                self.cfg.rms_norm_eps,
            )?;
            x = (x + self.attention(&pre, &h, b, t, &mask)?)?;
            let h = rms_norm(
                &x,
                p.get(&format!("{pre}.post_attention_layernorm.weight"))?,
                self.cfg.rms_norm_eps,
            )?;
            let (y, aux, counts) = self.moe(l, &h)?;
            x = (x + y)?;
            balance = (balance + aux)?;
            routed.push(counts);
        }
        let h = rms_norm(&x, p.get("model.norm.weight")?, self.cfg.rms_norm_eps)?;
        let logits = linear(&h, p.get("lm_head.weight")?)?;
        Ok(Forward {
            logits,
            balance,
            routed,
        })
    }

    fn attention(
        &self,
        pre: &str,
        h: &Tensor,
        b: usize,
        t: usize,
        mask: &Tensor,
    ) -> Result<Tensor, TrainError> {
        let c = &self.cfg;
        let p = &self.params;
        let (hd, heads, kvh) = (c.head_dim, c.heads, c.kv_heads);
        let split = |w: &str, n: usize| -> Result<Tensor, TrainError> {
            Ok(linear(h, p.get(&format!("{pre}.self_attn.{w}.weight"))?)?
                .reshape((b, t, n, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let q = rope(&split("q_proj", heads)?, &cos, &sin)?;
        let k = rope(&split("k_proj", kvh)?, &cos, &sin)?;
        let v = split("v_proj", kvh)?;
        let (k, v) = (repeat_kv(&k, heads / kvh)?, repeat_kv(&v, heads / kvh)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
        let probs = softmax_last(&scores)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, heads * hd))?;
        Ok(linear(
            &out,
            p.get(&format!("{pre}.self_attn.o_proj.weight"))?,
        )?)
    }

    /// The sparse MoE block of layer `l` over `h` (`[n, d]`): output, load-balancing loss,
    /// and tokens routed per expert.
    fn moe(&self, l: usize, h: &Tensor) -> Result<(Tensor, Tensor, Vec<u64>), TrainError> {
        let c = &self.cfg;
        let p = &self.params;
        let (n, _) = h.dims2()?;
        let (e_count, k) = (c.experts, c.top_k);
        let pre = format!("model.layers.{l}.block_sparse_moe");
        let logits = linear(h, p.get(&format!("{pre}.gate.weight"))?)?;
        let probs = softmax_last(&logits)?;

        // Choose on the host, exactly as the server does.
        let host = logits.to_vec2::<f32>()?;
        let mut chosen: Vec<u32> = Vec::with_capacity(n * k);
        let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); e_count];
        for (row, lg) in host.iter().enumerate() {
            for (slot, (e, _)) in blyan_model::route(lg, k).into_iter().enumerate() {
                chosen.push(e as u32);
                by_expert[e].push((row * k + slot) as u32);
            }
        }
        let chosen_t = Tensor::from_vec(chosen, (n, k), h.device())?;
        let top = probs.gather(&chosen_t, 1)?;
        let weights = top.broadcast_div(&top.sum_keepdim(1)?)?.flatten_all()?;

        // Slots grouped by expert; each slot is (token row, weight position).
        let order: Vec<u32> = by_expert.iter().flatten().copied().collect();
        let rows: Vec<u32> = order.iter().map(|&s| s / k as u32).collect();
        let order_t = Tensor::from_vec(order, n * k, h.device())?;
        let rows_t = Tensor::from_vec(rows, n * k, h.device())?;
        let xs = h.index_select(&rows_t, 0)?;
        let mut outs = Vec::with_capacity(e_count);
        let mut offset = 0;
        for (e, slots) in by_expert.iter().enumerate() {
            if slots.is_empty() {
                continue;
            }
            let xe = xs.narrow(0, offset, slots.len())?;
            offset += slots.len();
            let ep = format!("{pre}.experts.{e}");
            let gate = linear(&xe, p.get(&format!("{ep}.w1.weight"))?)?.silu()?;
            let up = linear(&xe, p.get(&format!("{ep}.w3.weight"))?)?;
            outs.push(linear(&(gate * up)?, p.get(&format!("{ep}.w2.weight"))?)?);
        }
        let ys = Tensor::cat(&outs, 0)?;
        let ws = weights.index_select(&order_t, 0)?.unsqueeze(1)?;
        let y = Tensor::zeros(h.dims(), DType::F32, h.device())?.index_add(
            &rows_t,
            &ys.broadcast_mul(&ws)?,
            0,
        )?;

        // Switch/Mixtral load balancing: E · Σ_e (share of choices to e) · (mean prob of e),
        // scaled by k so that a perfectly balanced router scores k.
        let counts: Vec<u64> = by_expert.iter().map(|s| s.len() as u64).collect();
        let share: Vec<f32> = counts.iter().map(|&c| c as f32 / n as f32).collect();
        let share = Tensor::from_vec(share, e_count, h.device())?;
        let aux = (probs.mean(0)? * share)?.sum_all()? * e_count as f64;
        Ok((y, aux?, counts))
    }
}

/// `x · wᵀ` for `x` of `[n, in]` and a Hugging Face weight `w` of `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.matmul(&w.t()?)
}

/// RMSNorm over the last dimension, composed of differentiable ops.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + f64::from(eps))?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// Softmax over the last dimension, composed of differentiable ops.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Mean cross-entropy of `logits` (`[n, vocab]`) against `targets` (`[n]`, u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    token_losses(logits, targets)?.mean_all()
}

/// Per-token cross-entropy, `[n]`.
pub fn token_losses(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let lse = logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(1)?
        .log()?
        .broadcast_add(&max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    (lse - picked)?.squeeze(1)
}

/// RoPE with Hugging Face's half-split pairing on `[b, heads, t, head_dim]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Cosines and sines `[context, head_dim]`, each half repeated, as the server computes them.
fn rope_tables(c: &ModelConfig) -> candle_core::Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let mut cos = Vec::with_capacity(c.context_len * c.head_dim);
    let mut sin = Vec::with_capacity(c.context_len * c.head_dim);
    for p in 0..c.context_len {
        let row: Vec<(f32, f32)> = (0..half)
            .map(|i| {
                let freq = 1.0 / f64::from(c.rope_theta).powf(2.0 * i as f64 / c.head_dim as f64);
                let (s, co) = (p as f64 * freq).sin_cos();
                (co as f32, s as f32)
            })
            .collect();
        for _ in 0..2 {
            cos.extend(row.iter().map(|r| r.0));
            sin.extend(row.iter().map(|r| r.1));
        }
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(cos, (c.context_len, c.head_dim), &dev)?,
        Tensor::from_vec(sin, (c.context_len, c.head_dim), &dev)?,
    ))
}

/// `[t, t]` additive mask: 0 on and below the diagonal, a large negative number above.
fn causal_mask(t: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { MASKED }))
        .collect();
    Tensor::from_vec(v, (t, t), dev)
}

/// Repeats each key/value head `n` times: `[b, kv, t, d]` → `[b, kv·n, t, d]`.
fn repeat_kv(x: &Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n, t, d))?
        .contiguous()?
        .reshape((b, kv * n, t, d))
}
