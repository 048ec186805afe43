//! Causal grouped-query attention with RoPE over per-sequence KV caches, in plain loops.
//!
//! Attention is the only part of the forward pass that differs per sequence. Running it as
//! tensor operations costs a couple of dozen small ops per sequence per layer, and at d = 256
//! their fixed overhead outweighs the arithmetic; a decode step of 8 sequences then spends most
//! of its time dispatching. Here a whole ragged batch is one pass over flat buffers.

use crate::{ModelConfig, kernels::exp};

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
                    let at = hh * stride + b * KEY_BLOCK;
                    dot_block(q, keys, scale, &mut scores[at..at + KEY_BLOCK]);
                }
            }
            for hh in 0..group {
                softmax(&mut scores[hh * stride..hh * stride + len]);
            }
            let heads_out = &mut out_row[g * group * hd..(g + 1) * group * hd];
            for (hh, acc) in heads_out.chunks_exact_mut(hd).enumerate() {
                weighted_values(
                    &scores[hh * stride..hh * stride + len],
                    &kv.values[g * hd..],
                    kvd,
                    acc,
                );
            }
        }
    }
}

/// `out[l] = scale · q · key_l` for the eight keys of a block (`keys[d·8 + l]`).
///
/// Four dimensions are summed in four separate accumulators and added at the end, so that
/// the multiply-adds form four independent chains instead of one long one.
fn dot_block(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    let mut acc = [[0f32; KEY_BLOCK]; 4];
    let mut qs = q.chunks_exact(4);
    let mut ks = keys.chunks_exact(4 * KEY_BLOCK);
    for (q4, k4) in (&mut qs).zip(&mut ks) {
        for (c, a) in acc.iter_mut().enumerate() {
            for l in 0..KEY_BLOCK {
                a[l] = q4[c].mul_add(k4[c * KEY_BLOCK + l], a[l]);
            }
        }
    }
    for (&qd, k) in qs
        .remainder()
        .iter()
        .zip(ks.remainder().chunks_exact(KEY_BLOCK))
    {
        for l in 0..KEY_BLOCK {
            acc[0][l] = qd.mul_add(k[l], acc[0][l]);
        }
    }
    for (l, o) in out.iter_mut().enumerate() {
        *o = ((acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])) * scale;
    }
}

/// Dimensions per piece of [`weighted_values`]: four 8-float vectors.
const PIECE: usize = 32;

/// `out = Σ_j w[j] · v_j`, where `v_j` is the `out.len()` values at `values[j · stride ..]`.
///
/// Each piece of 32 dimensions is summed in registers, with even and odd positions in
/// separate accumulators (eight independent chains of multiply-adds), then written once.
fn weighted_values(w: &[f32], values: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    let mut at = 0;
    while at + PIECE <= hd {
        let mut even = [0f32; PIECE];
        let mut odd = [0f32; PIECE];
        let mut pairs = w.chunks_exact(2);
        for (p, ww) in (&mut pairs).enumerate() {
            let v0 = &values[2 * p * stride + at..][..PIECE];
            let v1 = &values[(2 * p + 1) * stride + at..][..PIECE];
            for c in 0..PIECE {
                even[c] = ww[0].mul_add(v0[c], even[c]);
                odd[c] = ww[1].mul_add(v1[c], odd[c]);
            }
        }
        if let [last] = pairs.remainder() {
            let v = &values[(w.len() - 1) * stride + at..][..PIECE];
            for c in 0..PIECE {
                even[c] = last.mul_add(v[c], even[c]);
            }
        }
        for (c, o) in out[at..at + PIECE].iter_mut().enumerate() {
            *o = even[c] + odd[c];
        }
        at += PIECE;
    }
    for (c, o) in out[at..].iter_mut().enumerate() {
        *o = w.iter().enumerate().fold(0.0, |acc, (j, &wj)| {
            wj.mul_add(values[j * stride + at + c], acc)
        });
    }
}

/// Replaces `row` by its softmax. Sums run over eight interleaved lanes, so that they
/// vectorise too.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in row.iter_mut() {
        *s = exp(*s - max);
    }
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        *s *= inv;
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
    fn blocked_sums_equal_plain_loops() {
        // 40 dimensions: one piece of 32 and a remainder; 7 positions: an odd one out.
        let (hd, stride, len) = (40, 56, 7);
        let values: Vec<f32> = (0..len * stride)
            .map(|i| (i % 13) as f32 * 0.3 - 1.7)
            .collect();
        let mut w: Vec<f32> = (0..len).map(|j| j as f32 * 0.5 - 1.0).collect();
        softmax(&mut w);
        let exps: Vec<f64> = (0..len)
            .map(|j| (f64::from(j as f32 * 0.5 - 1.0) - 2.0).exp())
            .collect();
        let total: f64 = exps.iter().sum();
        for (a, e) in w.iter().zip(&exps) {
            assert!(
                (f64::from(*a) - e / total).abs() < 1e-6,
                "{a} vs {}",
                e / total
            );
        }
        let mut out = vec![f32::NAN; hd];
        weighted_values(&w, &values[3..], stride, &mut out);
        for (c, o) in out.iter().enumerate() {
            let want: f64 = (0..len)
                .map(|j| f64::from(w[j]) * f64::from(values[3 + j * stride + c]))
                .sum();
            assert!(
                (f64::from(*o) - want).abs() < 1e-5,
                "dimension {c}: {o} vs {want}"
            );
        }
        // 34 dimensions: eight keys per block, two dimensions past the fours.
        let q: Vec<f32> = (0..34).map(|d| d as f32 * 0.1 - 1.0).collect();
        let keys: Vec<f32> = (0..34 * KEY_BLOCK)
            .map(|i| (i % 11) as f32 * 0.2 - 1.0)
            .collect();
        let mut scores = [0f32; KEY_BLOCK];
        dot_block(&q, &keys, 0.5, &mut scores);
        for (l, s) in scores.iter().enumerate() {
            let want: f64 = (0..34)
                .map(|d| f64::from(q[d]) * f64::from(keys[d * KEY_BLOCK + l]))
                .sum::<f64>()
                * 0.5;
            assert!(
                (f64::from(*s) - want).abs() < 1e-5,
                "key {l}: {s} vs {want}"
            );
        }
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
