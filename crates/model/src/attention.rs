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

/// Positions per key block.
const KEY_BLOCK: usize = 8;

/// One layer's keys and values of one sequence.
///
/// Keys are kept in blocks of eight positions, transposed: block `b`, KV head `g`, dimension
/// `d` hold the keys of positions `8b .. 8b + 8` side by side, so that the scores of eight
/// positions are one multiply-add per dimension with no horizontal sums. Values stay
/// `[position][kv_heads · head_dim]`: they are added row by row.
#[derive(Debug, Default, Clone)]
pub(crate) struct LayerKv {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl LayerKv {
    /// Room for `positions` keys and values of width `kv_dim` before growing.
    pub(crate) fn with_capacity(positions: usize, kv_dim: usize) -> LayerKv {
        LayerKv {
            keys: Vec::with_capacity(positions.div_ceil(KEY_BLOCK) * KEY_BLOCK * kv_dim),
            values: Vec::with_capacity(positions * kv_dim),
        }
    }

    /// Drops every position from `len` on.
    pub(crate) fn truncate(&mut self, len: usize, kv_dim: usize) {
        self.keys
            .truncate(len.div_ceil(KEY_BLOCK) * KEY_BLOCK * kv_dim);
        self.values.truncate(len * kv_dim);
    }

    /// Stores the key and value of position `pos`, the next one.
    fn push(&mut self, pos: usize, key: &[f32], value: &[f32]) {
        let kv_dim = key.len();
        debug_assert_eq!(self.values.len(), pos * kv_dim);
        if pos.is_multiple_of(KEY_BLOCK) {
            self.keys.resize(self.keys.len() + KEY_BLOCK * kv_dim, 0.0);
        }
        let base = pos / KEY_BLOCK * KEY_BLOCK * kv_dim;
        for (c, &k) in key.iter().enumerate() {
            self.keys[base + c * KEY_BLOCK + pos % KEY_BLOCK] = k;
        }
        self.values.extend_from_slice(value);
    }
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
/// of `hidden`) is written to `out`. The query heads that share a KV head are scored together,
/// so each key and value is read once for all of them.
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
        kv.push(p0 + i, k, v);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let mut sums = vec![0f32; group];
    for i in 0..n {
        let len = p0 + i + 1;
        let blocks = len.div_ceil(KEY_BLOCK);
        let stride = blocks * KEY_BLOCK;
        let q_row = &qkv[i * width..i * width + d];
        let out_row = &mut out[i * d..(i + 1) * d];
        for g in 0..dims.kv_heads {
            scores.clear();
            scores.resize(group * stride, 0.0);
            for b in 0..blocks {
                let keys = &kv.keys[(b * kvd + g * hd) * KEY_BLOCK..][..hd * KEY_BLOCK];
                for hh in 0..group {
                    let q = &q_row[(g * group + hh) * hd..][..hd];
                    let mut acc = [0f32; KEY_BLOCK];
                    for (&qd, k) in q.iter().zip(keys.chunks_exact(KEY_BLOCK)) {
                        for l in 0..KEY_BLOCK {
                            acc[l] += qd * k[l];
                        }
                    }
                    let at = hh * stride + b * KEY_BLOCK;
                    for (s, a) in scores[at..at + KEY_BLOCK].iter_mut().zip(acc) {
                        *s = a * scale;
                    }
                }
            }
            sums.fill(0.0);
            for (hh, sum) in sums.iter_mut().enumerate() {
                let row = &mut scores[hh * stride..hh * stride + len];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for s in row.iter_mut() {
                    *s = (*s - max).exp();
                    *sum += *s;
                }
            }
            let heads_out = &mut out_row[g * group * hd..(g + 1) * group * hd];
            heads_out.fill(0.0);
            for j in 0..len {
                let v = &kv.values[j * kvd + g * hd..][..hd];
                for (hh, acc) in heads_out.chunks_exact_mut(hd).enumerate() {
                    let w = scores[hh * stride + j] / sums[hh];
                    for (a, &x) in acc.iter_mut().zip(v) {
                        *a += w * x;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pos: usize, salt: f32, width: usize) -> Vec<f32> {
        (0..width)
            .map(|c| (pos * width + c) as f32 * 0.01 + salt)
            .collect()
    }

    /// The key of position `pos`, read back from the blocked layout.
    fn key(kv: &LayerKv, pos: usize, width: usize) -> Vec<f32> {
        let base = pos / KEY_BLOCK * KEY_BLOCK * width;
        (0..width)
            .map(|c| kv.keys[base + c * KEY_BLOCK + pos % KEY_BLOCK])
            .collect()
    }

    #[test]
    fn truncated_caches_continue_like_fresh_ones() {
        let width = 12;
        let mut kv = LayerKv::with_capacity(4, width);
        for pos in 0..11 {
            kv.push(pos, &row(pos, 1.0, width), &row(pos, 2.0, width));
        }
        // A failed pass rolls back to 5 positions; new tokens then follow.
        kv.truncate(5, width);
        for pos in 5..19 {
            kv.push(pos, &row(pos, 3.0, width), &row(pos, 4.0, width));
        }
        let mut fresh = LayerKv::default();
        for pos in 0..19 {
            let salt = if pos < 5 { 0.0 } else { 2.0 };
            fresh.push(
                pos,
                &row(pos, 1.0 + salt, width),
                &row(pos, 2.0 + salt, width),
            );
        }
        assert_eq!(kv.values, fresh.values);
        for pos in 0..19 {
            assert_eq!(
                key(&kv, pos, width),
                key(&fresh, pos, width),
                "position {pos}"
            );
        }
        assert_eq!(
            kv.keys.len(),
            19usize.div_ceil(KEY_BLOCK) * KEY_BLOCK * width
        );
    }
}
