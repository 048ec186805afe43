//! Causal grouped-query attention with RoPE over per-sequence KV caches, in plain loops.
//!
//! Attention is the only part of the forward pass that differs per sequence. Running it as
//! tensor operations costs a couple of dozen small ops per sequence per layer, and at d = 256
//! their fixed overhead outweighs the arithmetic; a decode step of 8 sequences then spends most
//! of its time dispatching. Here a whole ragged batch is one pass over flat buffers.

use crate::ModelConfig;

/// RoPE cosines and sines, `[context_len][head_dim / 2]`, Hugging Face (half-split) pairing.
#[derive(Debug)]
pub(crate) struct RopeTables {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTables {
    pub(crate) fn new(c: &ModelConfig) -> RopeTables {
        let half = c.head_dim / 2;
        let mut cos = Vec::with_capacity(c.context_len * half);
        let mut sin = Vec::with_capacity(c.context_len * half);
        for p in 0..c.context_len {
            for i in 0..half {
                let freq = 1.0 / f64::from(c.rope_theta).powf(2.0 * i as f64 / c.head_dim as f64);
                let (s, co) = (p as f64 * freq).sin_cos();
                cos.push(co as f32);
                sin.push(s as f32);
            }
        }
        RopeTables { half, cos, sin }
    }

    /// Rotates every head (of `2·half` values) in `x` to position `pos`: element `i` pairs
    /// with element `i + half`.
    fn apply(&self, x: &mut [f32], pos: usize) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in x.chunks_exact_mut(2 * self.half) {
            let (a, b) = head.split_at_mut(self.half);
            for i in 0..self.half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

/// One layer's keys and values of one sequence: `[position][kv_heads · head_dim]`.
#[derive(Debug, Default, Clone)]
pub(crate) struct LayerKv {
    pub(crate) keys: Vec<f32>,
    pub(crate) values: Vec<f32>,
}

/// The shape facts attention needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

impl Dims {
    pub(crate) fn of(c: &ModelConfig) -> Dims {
        Dims {
            hidden: c.hidden_size,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        }
    }

    fn kv_dim(self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Width of a fused q‖k‖v row.
    pub(crate) fn qkv_width(self) -> usize {
        self.hidden + 2 * self.kv_dim()
    }
}

/// Attention for `n` new tokens of one sequence that already holds `p0` positions in `kv`.
///
/// `qkv` holds the tokens' fused projections (`n` rows of [`Dims::qkv_width`]); it is rotated
/// in place. The new keys and values are appended to `kv`, and the attention output (`n` rows
/// of `hidden`) is written to `out`.
pub(crate) fn attend(
    dims: Dims,
    rope: &RopeTables,
    kv: &mut LayerKv,
    p0: usize,
    qkv: &mut [f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let (d, hd, kvd, width) = (dims.hidden, dims.head_dim, dims.kv_dim(), dims.qkv_width());
    let group = dims.heads / dims.kv_heads;
    let n = qkv.len() / width;
    for (i, row) in qkv.chunks_exact_mut(width).enumerate() {
        let (q, kv_part) = row.split_at_mut(d);
        let (k, v) = kv_part.split_at_mut(kvd);
        rope.apply(q, p0 + i);
        rope.apply(k, p0 + i);
        kv.keys.extend_from_slice(k);
        kv.values.extend_from_slice(v);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    for i in 0..n {
        let len = p0 + i + 1;
        let q_row = &qkv[i * width..i * width + d];
        let out_row = &mut out[i * d..(i + 1) * d];
        for h in 0..dims.heads {
            let kvh = h / group;
            let q = &q_row[h * hd..(h + 1) * hd];
            scores.clear();
            scores.extend((0..len).map(|j| {
                let k = &kv.keys[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                dot(q, k) * scale
            }));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let acc = &mut out_row[h * hd..(h + 1) * hd];
            acc.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let v = &kv.values[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                let w = p / sum;
                for (a, &x) in acc.iter_mut().zip(v) {
                    *a += w * x;
                }
            }
        }
    }
}

/// Dot product with eight independent accumulators, so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
