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
                // Pure-Rust libm, not the platform's: the same tables on every machine.
                let freq =
                    1.0 / libm::pow(f64::from(c.rope_theta), 2.0 * i as f64 / c.head_dim as f64);
                let (s, co) = libm::sincos(p as f64 * freq);
                cos.push(co as f32);
                sin.push(s as f32);
            }
        }
        RopeTables { half, cos, sin }
    }

    /// Rotates every head (of `2·half` values) in `x` to position `pos`: element `i` pairs
    /// with element `i + half`.
    #[inline]
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
    #[inline]
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
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
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
            let heads = g * group..(g + 1) * group;
            let keys = |b: usize| &kv.keys[(b * kvd + g * hd) * KEY_BLOCK..][..hd * KEY_BLOCK];
            // Four query heads at a time: each key row is loaded once for all of them.
            let mut h = 0;
            while h < group {
                let q = |j: usize| &q_row[(heads.start + h + j) * hd..][..hd];
                let rows = &mut scores[h * stride..];
                match group - h {
                    1 => score_heads::<1>([q(0)], blocks, &keys, scale, rows, stride),
                    2 => score_heads::<2>([q(0), q(1)], blocks, &keys, scale, rows, stride),
                    3 => score_heads::<3>([q(0), q(1), q(2)], blocks, &keys, scale, rows, stride),
                    _ => score_heads::<4>(
                        [q(0), q(1), q(2), q(3)],
                        blocks,
                        &keys,
                        scale,
                        rows,
                        stride,
                    ),
                }
                h += 4.min(group - h);
            }
            for hh in 0..group {
                softmax(&mut scores[hh * stride..hh * stride + len]);
            }
            // Two heads at a time: each value row is loaded once for both.
            let heads_out = &mut out_row[g * group * hd..(g + 1) * group * hd];
            let values = &kv.values[g * hd..];
            let w = |hh: usize| &scores[hh * stride..hh * stride + len];
            let mut pairs = heads_out.chunks_exact_mut(2 * hd);
            for (pair, acc) in (&mut pairs).enumerate() {
                let (a, b) = acc.split_at_mut(hd);
                weighted_values([w(2 * pair), w(2 * pair + 1)], values, kvd, [a, b]);
            }
            let rest = pairs.into_remainder();
            if !rest.is_empty() {
                weighted_values([w(group - 1)], values, kvd, [rest]);
            }
        }
    }
}

/// `rows[h · stride + p] = scale · q_h · key_p` for `H` query heads and every key of
/// `blocks` blocks; `keys(b)` is block `b` of one KV head (`[dimension][8]`).
///
/// Two blocks are scored together, so that with four heads eight independent chains of
/// multiply-adds are in flight; a last odd block goes alone. Every score is the same
/// sequential sum over dimensions either way.
#[inline(always)]
fn score_heads<'k, const H: usize>(
    q: [&[f32]; H],
    blocks: usize,
    keys: &impl Fn(usize) -> &'k [f32],
    scale: f32,
    rows: &mut [f32],
    stride: usize,
) {
    let hd = q[0].len();
    let mut b = 0;
    while b < blocks {
        let pair = usize::from(b + 1 < blocks) + 1;
        let mut acc = [[[0f32; KEY_BLOCK]; 2]; H];
        let k0 = keys(b);
        let k1 = keys(b + pair - 1);
        for dim in 0..hd {
            let (Ok(r0), Ok(r1)) = (
                <&[f32; KEY_BLOCK]>::try_from(&k0[dim * KEY_BLOCK..(dim + 1) * KEY_BLOCK]),
                <&[f32; KEY_BLOCK]>::try_from(&k1[dim * KEY_BLOCK..(dim + 1) * KEY_BLOCK]),
            ) else {
                unreachable!("key rows are KEY_BLOCK wide");
            };
            for (a, qh) in acc.iter_mut().zip(&q) {
                let x = qh[dim];
                for l in 0..KEY_BLOCK {
                    a[0][l] = x.mul_add(r0[l], a[0][l]);
                    a[1][l] = x.mul_add(r1[l], a[1][l]);
                }
            }
        }
        for (h, a) in acc.iter().enumerate() {
            for (j, block) in a.iter().take(pair).enumerate() {
                let at = h * stride + (b + j) * KEY_BLOCK;
                for (o, &v) in rows[at..at + KEY_BLOCK].iter_mut().zip(block) {
                    *o = v * scale;
                }
            }
        }
        b += pair;
    }
}

/// Dimensions per piece of [`weighted_values`]: four 8-float vectors.
const PIECE: usize = 32;

/// `out_h = Σ_j w_h[j] · v_j` for `H` heads, where `v_j` is the `out_h.len()` values at
/// `values[j · stride ..]`.
///
/// Each piece of 32 dimensions is summed in registers (`4·H` independent chains of
/// multiply-adds, each a sequential sum over positions), then written once.
#[inline(always)]
fn weighted_values<const H: usize>(
    w: [&[f32]; H],
    values: &[f32],
    stride: usize,
    mut out: [&mut [f32]; H],
) {
    let hd = out[0].len();
    let len = w[0].len();
    let mut at = 0;
    while at + PIECE <= hd {
        let mut acc = [[0f32; PIECE]; H];
        for j in 0..len {
            let Ok(v) =
                <&[f32; PIECE]>::try_from(&values[j * stride + at..j * stride + at + PIECE])
            else {
                unreachable!("a piece is PIECE wide");
            };
            for (a, wh) in acc.iter_mut().zip(&w) {
                let x = wh[j];
                for c in 0..PIECE {
                    a[c] = x.mul_add(v[c], a[c]);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            o[at..at + PIECE].copy_from_slice(a);
        }
        at += PIECE;
    }
    for (o, wh) in out.iter_mut().zip(&w) {
        for (c, x) in o[at..].iter_mut().enumerate() {
            *x = wh.iter().enumerate().fold(0.0, |acc, (j, &wj)| {
                wj.mul_add(values[j * stride + at + c], acc)
            });
        }
    }
}

/// Replaces `row` by its softmax. Sums run over eight interleaved lanes, so that they
/// vectorise too.
#[inline(always)]
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
    fn softmax_matches_f64() {
        let len = 7;
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
    }

    #[test]
    fn value_sums_equal_plain_loops() {
        // 40 dimensions: one piece of 32 and a remainder; 7 positions.
        let (hd, stride, len) = (40, 56, 7);
        let values: Vec<f32> = (0..len * stride + 3)
            .map(|i| (i % 13) as f32 * 0.3 - 1.7)
            .collect();
        let w: Vec<Vec<f32>> = (0..2)
            .map(|h| (0..len).map(|j| (j + h) as f32 * 0.11 - 0.2).collect())
            .collect();
        let want = |h: usize, c: usize| -> f64 {
            (0..len)
                .map(|j| f64::from(w[h][j]) * f64::from(values[3 + j * stride + c]))
                .sum()
        };
        let (mut a, mut b) = (vec![f32::NAN; hd], vec![f32::NAN; hd]);
        weighted_values([&w[0], &w[1]], &values[3..], stride, [&mut a, &mut b]);
        let mut single = vec![f32::NAN; hd];
        weighted_values([&w[1]], &values[3..], stride, [&mut single]);
        for c in 0..hd {
            for (h, got) in [(0, a[c]), (1, b[c]), (1, single[c])] {
                assert!(
                    (f64::from(got) - want(h, c)).abs() < 1e-5,
                    "head {h} dimension {c}: {got} vs {}",
                    want(h, c)
                );
            }
        }
        // A head's sums do not depend on the head beside it.
        assert_eq!(b, single);
    }

    #[test]
    fn head_scores_equal_plain_loops() {
        // 34 dimensions; 3 blocks: a pair and an odd one out.
        let (hd, blocks) = (34, 3);
        let keys: Vec<f32> = (0..blocks * hd * KEY_BLOCK)
            .map(|i| (i % 11) as f32 * 0.2 - 1.0)
            .collect();
        let block = |b: usize| &keys[b * hd * KEY_BLOCK..(b + 1) * hd * KEY_BLOCK];
        let q: Vec<Vec<f32>> = (0..4)
            .map(|h| (0..hd).map(|d| (d + 3 * h) as f32 * 0.05 - 0.8).collect())
            .collect();
        let stride = blocks * KEY_BLOCK;
        let want = |h: usize, p: usize| -> f64 {
            let (b, l) = (p / KEY_BLOCK, p % KEY_BLOCK);
            (0..hd)
                .map(|d| f64::from(q[h][d]) * f64::from(block(b)[d * KEY_BLOCK + l]))
                .sum::<f64>()
                * 0.5
        };
        let mut four = vec![f32::NAN; 4 * stride];
        score_heads::<4>(
            [&q[0], &q[1], &q[2], &q[3]],
            blocks,
            &block,
            0.5,
            &mut four,
            stride,
        );
        let mut three = vec![f32::NAN; 3 * stride];
        score_heads::<3>(
            [&q[1], &q[2], &q[3]],
            blocks,
            &block,
            0.5,
            &mut three,
            stride,
        );
        for h in 0..4 {
            for p in 0..stride {
                let got = four[h * stride + p];
                assert!(
                    (f64::from(got) - want(h, p)).abs() < 1e-5,
                    "head {h} key {p}: {got} vs {}",
                    want(h, p)
                );
            }
        }
        // A head's scores do not depend on how many heads are scored with it.
        assert_eq!(three, four[stride..]);
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
