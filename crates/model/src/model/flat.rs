//! The forward pass of a model held in the tiled Q8_0 layout, on flat buffers, spread over
//! the threads of a pool when one is given.
//!
//! A batch is cut into *parts*: runs of whole sequences with about equal numbers of tokens.
//! Each layer has two phases. In the first, every part runs the norms, attention and router
//! for its own sequences. In the second, the layer's experts are shared out among the
//! threads and each expert multiplies every token routed to it, so that its weights are read
//! once per step however many sequences are decoding. A token's expert outputs are added to
//! it at the start of the next first phase, in routing order.
//!
//! Every value a token gets is computed by the same operations in the same order whatever
//! the batch, the parts or the threads (the matrix kernels give a row the same bits in any
//! batch), so `forward` and `forward_in` return identical logits.

use rayon::prelude::*;

use super::{Model, Sequence, route};
use crate::{
    ModelError,
    attention::Dims,
    kernels::{QuantRows, exp, matmul_f32},
};
use blyan_primitives::ExpertId;
use blyan_tokenizer::TokenId;

/// One part of a batch: a run of whole sequences and the state of their tokens.
struct Part<'a, 's, 't> {
    seqs: &'a mut [(&'s mut Sequence, &'t [TokenId])],
    /// Batch index of the part's first token.
    first: usize,
    /// Hidden rows of its tokens, `[tokens, d]`.
    x: Vec<f32>,
    /// Its tokens' expert inputs (the post-attention norm), quantized.
    moe_in: QuantRows,
    /// Per token, its `top_k` experts and weights in routing order.
    routes: Vec<(usize, f32)>,
    /// Attention scratch.
    scores: Vec<f32>,
}

/// The output rows of one thread's experts in the second phase.
#[derive(Default)]
struct ExpertRows {
    /// Per row, the routing slot it answers: `token · top_k + choice`.
    slots: Vec<u32>,
    /// The rows, `[slots, d]`.
    y: Vec<f32>,
}

/// The experts of one layer, with the slots routed to each.
struct Routing {
    /// `(expert, slots)` for every expert with at least one token.
    experts: Vec<(usize, Vec<u32>)>,
}

/// Where each slot's output row is: `(thread's rows, row)`.
type SlotIndex = Vec<(u32, u32)>;

/// Runs `f` on every item, on the pool's threads when there is a pool.
fn each<T: Send, R: Send>(
    pool: Option<&rayon::ThreadPool>,
    items: &mut [T],
    f: impl Fn(&mut T) -> Result<R, ModelError> + Sync,
) -> Result<Vec<R>, ModelError> {
    match pool {
        Some(pool) if items.len() > 1 => pool.install(|| items.par_iter_mut().map(&f).collect()),
        _ => items.iter_mut().map(f).collect(),
    }
}

/// `out = x / rms(x) · w` per row of `d = w.len()`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut lanes = [0f32; 8];
        let mut chunks = xr.chunks_exact(8);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = v.mul_add(v, *l);
            }
        }
        let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>();
        let inv = 1.0 / (sum / d as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// Cuts `batch` into at most `parts` runs of whole sequences with about equal token counts.
fn cut<'a, 's, 't>(
    batch: &'a mut [(&'s mut Sequence, &'t [TokenId])],
    parts: usize,
) -> Vec<&'a mut [(&'s mut Sequence, &'t [TokenId])]> {
    let total: usize = batch.iter().map(|(_, t)| t.len()).sum();
    let parts = parts.clamp(1, batch.len().max(1));
    let mut out = Vec::with_capacity(parts);
    let mut rest = batch;
    let mut done = 0;
    for p in 1..parts {
        // End this part where the running token count comes closest to its share, keeping
        // at least one sequence for this part and for each part still to come.
        let target = total * p / parts;
        let mut take = 0;
        let mut tokens = done;
        while take < rest.len() - (parts - p) {
            let next = tokens + rest[take].1.len();
            if take > 0 && (tokens >= target || (next > target && next - target > target - tokens))
            {
                break;
            }
            tokens = next;
            take += 1;
        }
        let (head, tail) = rest.split_at_mut(take);
        out.push(head);
        rest = tail;
        done = tokens;
    }
    out.push(rest);
    out
}

impl Model {
    /// The logits after each sequence's last new token, computed on flat buffers (see the
    /// module notes). `ids` are the batch's tokens in order.
    pub(super) fn forward_flat(
        &self,
        ids: &[TokenId],
        batch: &mut [(&mut Sequence, &[TokenId])],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let d = self.config.hidden_size;
        // One sequence's step is too short to share: handing half of it to another thread
        // costs more than it saves (the other thread may be asleep).
        let pool = pool.filter(|_| batch.len() > 1);
        let threads = pool.map_or(1, rayon::ThreadPool::current_num_threads);
        let mut first = 0;
        let mut parts: Vec<Part<'_, '_, '_>> = cut(batch, threads)
            .into_iter()
            .map(|seqs| {
                let n: usize = seqs.iter().map(|(_, t)| t.len()).sum();
                let mut x = Vec::with_capacity(n * d);
                for &t in &ids[first..first + n] {
                    x.extend_from_slice(&self.embed[t as usize * d..(t as usize + 1) * d]);
                }
                let part = Part {
                    seqs,
                    first,
                    x,
                    moe_in: QuantRows::default(),
                    routes: Vec::new(),
                    scores: Vec::new(),
                };
                first += n;
                part
            })
            .collect();
        let total = first;
        let mut previous: Option<(Vec<ExpertRows>, SlotIndex)> = None;
        for l in 0..self.config.layers {
            let prev = previous.as_ref();
            each(pool, &mut parts, |part| {
                if let Some((rows, index)) = prev {
                    self.add_experts(part, rows, index);
                }
                self.attention_and_routing(l, part)
            })?;
            let routing = self.routing(&parts, total);
            let mut work = share(&routing, threads);
            let rows = each(pool, &mut work, |experts| {
                self.run_experts(l, experts.as_slice(), &parts)
            })?;
            let mut index = vec![(0u32, 0u32); total * self.config.top_k];
            for (w, r) in rows.iter().enumerate() {
                for (row, &slot) in r.slots.iter().enumerate() {
                    index[slot as usize] = (w as u32, row as u32);
                }
            }
            previous = Some((rows, index));
        }
        let prev = previous.as_ref();
        let logits = each(pool, &mut parts, |part| {
            if let Some((rows, index)) = prev {
                self.add_experts(part, rows, index);
            }
            self.head(part)
        })?;
        Ok(logits.into_iter().flatten().collect())
    }

    /// Adds to each of the part's tokens the weighted sum of its experts' outputs.
    fn add_experts(&self, part: &mut Part<'_, '_, '_>, rows: &[ExpertRows], index: &SlotIndex) {
        let (d, k) = (self.config.hidden_size, self.config.top_k);
        let mut sum = vec![0f32; d];
        for (i, x) in part.x.chunks_exact_mut(d).enumerate() {
            sum.fill(0.0);
            for (c, &(_, w)) in part.routes[i * k..(i + 1) * k].iter().enumerate() {
                let (thread, row) = index[(part.first + i) * k + c];
                let y = &rows[thread as usize].y[row as usize * d..(row as usize + 1) * d];
                for (s, &v) in sum.iter_mut().zip(y) {
                    *s = w.mul_add(v, *s);
                }
            }
            for (a, &s) in x.iter_mut().zip(&sum) {
                *a += s;
            }
        }
    }

    /// Layer `l`'s first phase for a part: norm, attention, residual, norm, router.
    fn attention_and_routing(
        &self,
        l: usize,
        part: &mut Part<'_, '_, '_>,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let layer = &self.layers[l];
        let (Some(qkv_w), Some(o_w)) = (layer.qkv.tiled(), layer.o.tiled()) else {
            return Err(not_tiled());
        };
        let (d, k) = (c.hidden_size, c.top_k);
        let dims = Dims::of(c);
        let n = part.x.len() / d;
        let mut h = vec![0f32; n * d];
        rms_norm(&part.x, &layer.input_norm_w, c.rms_norm_eps, &mut h);
        let mut q = QuantRows::default();
        q.quantize(&h, d);
        let mut qkv = vec![0f32; n * dims.qkv_width()];
        qkv_w.matmul(&q, &mut qkv);
        let mut attn = vec![0f32; n * d];
        self.attend_each(l, part.seqs, &mut qkv, &mut attn, &mut part.scores);
        q.quantize(&attn, d);
        o_w.matmul(&q, &mut h);
        for (a, &v) in part.x.iter_mut().zip(&h) {
            *a += v;
        }
        rms_norm(&part.x, &layer.post_norm_w, c.rms_norm_eps, &mut h);
        let mut logits = vec![0f32; n * c.experts];
        matmul_f32(&layer.router, d, &h, &mut logits);
        part.routes.clear();
        let mut token = 0;
        for (seq, tokens) in part.seqs.iter_mut() {
            for _ in 0..tokens.len() {
                let chosen = route(&logits[token * c.experts..(token + 1) * c.experts], k);
                for &(e, _) in &chosen {
                    *seq.experts_used
                        .entry(ExpertId::new(l as u16, e as u16))
                        .or_default() += 1;
                }
                part.routes.extend(chosen);
                token += 1;
            }
        }
        part.moe_in.quantize(&h, d);
        Ok(())
    }

    /// Every expert with tokens, and the slots routed to it, in expert order.
    fn routing(&self, parts: &[Part<'_, '_, '_>], total: usize) -> Routing {
        let k = self.config.top_k;
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); self.config.experts];
        for part in parts {
            for (j, &(e, _)) in part.routes.iter().enumerate() {
                slots[e].push((part.first * k + j) as u32);
            }
        }
        debug_assert_eq!(slots.iter().map(Vec::len).sum::<usize>(), total * k);
        Routing {
            experts: slots
                .into_iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .collect(),
        }
    }

    /// Layer `l`'s second phase for one thread's experts: each multiplies all its rows.
    fn run_experts(
        &self,
        l: usize,
        experts: &[(usize, Vec<u32>)],
        parts: &[Part<'_, '_, '_>],
    ) -> Result<ExpertRows, ModelError> {
        let (d, ffn, k) = (
            self.config.hidden_size,
            self.config.intermediate_size,
            self.config.top_k,
        );
        let mut out = ExpertRows::default();
        let (mut rows, mut act_rows) = (QuantRows::default(), QuantRows::default());
        let (mut h13, mut act) = (Vec::new(), Vec::new());
        for (e, slots) in experts.iter() {
            let expert = self.expert(l, *e)?;
            let (Some(w13), Some(w2)) = (expert.w13.tiled(), expert.w2.tiled()) else {
                return Err(not_tiled());
            };
            rows.clear(d);
            for &slot in slots {
                let token = slot as usize / k;
                // Parts are in token order and the first starts at token 0.
                let part = &parts[parts
                    .partition_point(|p| p.first <= token)
                    .saturating_sub(1)];
                rows.push_row(&part.moe_in, token - part.first);
            }
            let m = slots.len();
            h13.resize(m * 2 * ffn, 0.0);
            w13.matmul(&rows, &mut h13);
            act.clear();
            for r in h13.chunks_exact(2 * ffn) {
                let (gate, up) = r.split_at(ffn);
                act.extend(gate.iter().zip(up).map(|(&g, &u)| g / (1.0 + exp(-g)) * u));
            }
            act_rows.quantize(&act, ffn);
            let at = out.y.len();
            out.y.resize(at + m * d, 0.0);
            w2.matmul(&act_rows, &mut out.y[at..]);
            out.slots.extend_from_slice(slots);
        }
        Ok(out)
    }

    /// The final norm and LM head over each of the part's sequences' last token.
    fn head(&self, part: &mut Part<'_, '_, '_>) -> Result<Vec<Vec<f32>>, ModelError> {
        let Some(lm_head) = self.lm_head.tiled() else {
            return Err(not_tiled());
        };
        let d = self.config.hidden_size;
        let mut last = Vec::with_capacity(part.seqs.len() * d);
        let mut row = 0;
        for (_, tokens) in part.seqs.iter() {
            row += tokens.len();
            last.extend_from_slice(&part.x[(row - 1) * d..row * d]);
        }
        let mut h = vec![0f32; last.len()];
        rms_norm(&last, &self.norm_w, self.config.rms_norm_eps, &mut h);
        let mut q = QuantRows::default();
        q.quantize(&h, d);
        let vocab = lm_head.rows();
        let mut logits = vec![0f32; part.seqs.len() * vocab];
        lm_head.matmul(&q, &mut logits);
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

/// Shares the experts among `threads`: the one with the most rows goes to the thread with the
/// fewest so far. Each thread's list stays in expert order.
fn share(routing: &Routing, threads: usize) -> Vec<Vec<(usize, Vec<u32>)>> {
    let mut order: Vec<&(usize, Vec<u32>)> = routing.experts.iter().collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let mut work: Vec<Vec<(usize, Vec<u32>)>> = vec![Vec::new(); threads.max(1)];
    let mut load = vec![0usize; work.len()];
    for (e, slots) in order {
        let t = (0..load.len()).min_by_key(|&t| (load[t], t)).unwrap_or(0);
        load[t] += slots.len();
        work[t].push((*e, slots.clone()));
    }
    for w in &mut work {
        w.sort_by_key(|(e, _)| *e);
    }
    work.retain(|w| !w.is_empty());
    work
}

fn not_tiled() -> ModelError {
    ModelError::Unsupported {
        reason: "a matrix of the flat forward pass is not in the tiled Q8_0 layout".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(lengths: &[usize], parts: usize) -> Vec<Vec<usize>> {
        let tokens: Vec<Vec<TokenId>> = lengths.iter().map(|&n| vec![0; n]).collect();
        let mut seqs: Vec<Sequence> = lengths
            .iter()
            .map(|_| Sequence {
                kv: Vec::new(),
                len: 0,
                experts_used: std::collections::BTreeMap::new(),
            })
            .collect();
        let mut batch: Vec<(&mut Sequence, &[TokenId])> = seqs
            .iter_mut()
            .zip(&tokens)
            .map(|(s, t)| (s, t.as_slice()))
            .collect();
        cut(&mut batch, parts)
            .iter()
            .map(|p| p.iter().map(|(_, t)| t.len()).collect())
            .collect()
    }

    #[test]
    fn experts_go_to_the_least_loaded_thread_most_rows_first() {
        let routing = Routing {
            experts: [(0, 5), (1, 1), (2, 1), (3, 1), (4, 4)]
                .iter()
                .map(|&(e, n)| (e, (0..n).collect()))
                .collect(),
        };
        let experts = |threads| -> Vec<Vec<usize>> {
            share(&routing, threads)
                .iter()
                .map(|w| w.iter().map(|(e, _)| *e).collect())
                .collect()
        };
        // 5 | 4, then 1 to the 4, then the ties to the first thread: 6 and 6 rows.
        assert_eq!(experts(2), [vec![0, 2], vec![1, 3, 4]]);
        assert_eq!(experts(1), [vec![0, 1, 2, 3, 4]]);
        // More threads than experts: idle threads get no list.
        assert_eq!(experts(8).len(), 5);
    }

    #[test]
    fn parts_are_whole_sequences_with_about_equal_tokens() {
        assert_eq!(sizes(&[1; 8], 2), [vec![1; 4], vec![1; 4]]);
        assert_eq!(sizes(&[1; 7], 3), [vec![1; 2], vec![1, 1], vec![1; 3]]);
        // 25 tokens: 8 | 17 is closer to even than 20 | 5.
        assert_eq!(sizes(&[7, 1, 12, 3, 2], 2), [vec![7, 1], vec![12, 3, 2]]);
        // A long prompt takes a part of its own; every part keeps a sequence.
        assert_eq!(sizes(&[30, 1, 1], 3), [vec![30], vec![1], vec![1]]);
        assert_eq!(sizes(&[1, 1, 30], 2), [vec![1, 1], vec![30]]);
        // Fewer sequences than threads: one part each.
        assert_eq!(sizes(&[4, 4], 3), [vec![4], vec![4]]);
        assert_eq!(sizes(&[5], 2), [vec![5]]);
    }
}
