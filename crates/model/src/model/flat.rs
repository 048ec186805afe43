//! The forward pass of a model held in the tiled Q8_0 layout, on flat buffers, spread over
//! the threads of a [`Team`] when one is given.
//!
//! A batch is cut into *parts*: runs of whole sequences with about equal numbers of tokens.
//! Each layer has three phases. In the first, every part runs the norms, attention and
//! router for its own sequences. In the second, each thread multiplies every token routed
//! to each of the layer's experts by its own share of the expert's gate and up rows, and
//! quantizes its share of the activations; in the third, by its share of the down rows,
//! over the activations the threads' shares make up. Every expert's weights are thus read
//! once per step however many sequences are decoding, and split evenly over the threads
//! whatever the routing. A token's expert outputs are added to it at the start of the next
//! first phase, in routing order.
//!
//! Every value a token gets is computed by the same operations in the same order whatever
//! the batch, the parts or the threads (the matrix kernels give a row the same bits in any
//! batch), so `forward` and `forward_in` return identical logits.

use std::{
    ops::Range,
    sync::{Arc, Mutex, PoisonError},
};

use super::{Expert, Model, Sequence, route};
use crate::{
    ExpertRows, ModelError, RemoteCall, RemoteOutcome,
    attention::Dims,
    kernels::{QK, QuantRows, TILE, exp, matmul_f32},
    team::Team,
};
use blyan_primitives::{Address, ExpertId};
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

/// The experts of one layer that have tokens, and where each slot's output row is.
struct Routing {
    /// `(expert, slots)` for every expert with at least one token, in expert order; a slot
    /// is `token · top_k + choice`.
    experts: Vec<(usize, Vec<u32>)>,
    /// Per slot, its row among all the experts' rows (the experts' rows in that order).
    row_of_slot: Vec<u32>,
    /// Rows in all: the batch's tokens times `top_k`.
    rows: usize,
}

/// One thread's output columns of every expert row of a layer.
struct ExpertCols {
    cols: Range<usize>,
    /// `[routing.rows, cols.len()]`.
    y: Vec<f32>,
}

/// Share `thread` of `threads` of `0..len`, in whole units of `unit` (the last may be short):
/// contiguous, about equal, together all of it.
fn share(len: usize, unit: usize, thread: usize, threads: usize) -> Range<usize> {
    let units = len.div_ceil(unit);
    let at = |t: usize| (units * t / threads * unit).min(len);
    at(thread)..at(thread + 1)
}

/// An item of [`each`] and, once run, its result.
type Cell<'a, T, R> = Mutex<(&'a mut T, Option<Result<R, ModelError>>)>;

/// Runs `f` on every item, item `i` on thread `i mod size` of the team when there is one.
fn each<T: Send, R: Send>(
    team: Option<&Team>,
    items: &mut [T],
    f: impl Fn(&mut T) -> Result<R, ModelError> + Sync,
) -> Result<Vec<R>, ModelError> {
    match team {
        Some(team) if items.len() > 1 => {
            let cells: Vec<Cell<'_, T, R>> = items
                .iter_mut()
                .map(|item| Mutex::new((item, None)))
                .collect();
            let size = team.size();
            team.run(&|thread| {
                for cell in cells.iter().skip(thread).step_by(size) {
                    let mut cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
                    let result = f(cell.0);
                    cell.1 = Some(result);
                }
            });
            cells
                .into_iter()
                .map(|cell| {
                    let (_, result) = cell.into_inner().unwrap_or_else(PoisonError::into_inner);
                    result.unwrap_or_else(|| unreachable!("every item runs before `run` returns"))
                })
                .collect()
        }
        _ => items.iter_mut().map(f).collect(),
    }
}

/// Whether batch token `token` belongs to a sequence whose hidden states must stay here.
fn local_only_token(parts: &[Part<'_, '_, '_>], token: usize) -> bool {
    let (p, s) = owner(parts, token);
    parts[p].seqs[s].0.local_only
}

/// The part holding batch token `token`. Parts are in token order and the first starts at
/// token 0.
fn part_of(parts: &[Part<'_, '_, '_>], token: usize) -> usize {
    parts
        .partition_point(|p| p.first <= token)
        .saturating_sub(1)
}

/// The part holding batch token `token` and the sequence within it.
fn owner(parts: &[Part<'_, '_, '_>], token: usize) -> (usize, usize) {
    let p = part_of(parts, token);
    let mut end = parts[p].first;
    let s = parts[p]
        .seqs
        .iter()
        .position(|(_, tokens)| {
            end += tokens.len();
            token < end
        })
        .unwrap_or(0);
    (p, s)
}

/// What became of one remote call of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// A host's answer was used; its account is paid for the rows.
    Answered(Address),
    /// Computed here: no host answered, the answer was malformed, or a spot check found it
    /// wrong.
    Here,
    /// No host answered and this machine could not read the expert's block: its tokens go
    /// without it.
    Missing,
}

/// The layer's experts computed elsewhere, with their slots, in call order.
fn remote_experts<'r>(
    routing: &'r Routing,
    remote: &'r [bool],
) -> impl Iterator<Item = &'r (usize, Vec<u32>)> {
    routing
        .experts
        .iter()
        .zip(remote)
        .filter(|(_, r)| **r)
        .map(|(expert, _)| expert)
}

/// Records, in each sequence whose tokens went to other machines at layer `l`, which hosts
/// were sent them, and how many of its token-expert computations hosts' answers gave, by
/// host account.
fn note_remote(
    parts: &mut [Part<'_, '_, '_>],
    routing: &Routing,
    remote: &[bool],
    outcomes: &[RemoteOutcome],
    fates: &[Fate],
    l: usize,
    k: usize,
) {
    let calls = remote_experts(routing, remote).zip(outcomes.iter().zip(fates));
    for ((_, slots), (outcome, fate)) in calls {
        for &slot in slots {
            let (p, s) = owner(parts, slot as usize / k);
            let seq = &mut *parts[p].seqs[s].0;
            for host in &outcome.sent_to {
                seq.remote_layers
                    .entry(host.clone())
                    .or_default()
                    .insert(l as u16);
            }
            if let Fate::Answered(account) = fate {
                *seq.remote_answered.entry(*account).or_default() += 1;
            }
        }
    }
}

/// Takes the experts no machine could compute out of their tokens' mixtures: each such
/// token's remaining experts' router weights are scaled to sum to one again (a token left
/// with none keeps only its residual), and each sequence counts the tokens that went
/// without each expert.
fn drop_missing(
    parts: &mut [Part<'_, '_, '_>],
    routing: &Routing,
    remote: &[bool],
    fates: &[Fate],
    l: usize,
    k: usize,
) {
    let missing = remote_experts(routing, remote)
        .zip(fates)
        .filter(|(_, f)| **f == Fate::Missing)
        .map(|((e, slots), _)| (*e, slots));
    let mut tokens = std::collections::BTreeSet::new();
    for (e, slots) in missing {
        for &slot in slots {
            let token = slot as usize / k;
            let (p, s) = owner(parts, token);
            let part = &mut parts[p];
            let at = slot as usize - part.first * k;
            // A weight of exactly zero marks the dropped choice (softmax weights are positive).
            part.routes[at].1 = 0.0;
            *part.seqs[s]
                .0
                .missing
                .entry(ExpertId::new(l as u16, e as u16))
                .or_default() += 1;
            tokens.insert(token);
        }
    }
    for token in tokens {
        let p = part_of(parts, token);
        let part = &mut parts[p];
        let at = (token - part.first) * k;
        let choices = &mut part.routes[at..at + k];
        let kept: f32 = choices.iter().map(|&(_, w)| w).sum();
        for (_, w) in choices.iter_mut() {
            *w = if kept > 0.0 { *w / kept } else { 0.0 };
        }
    }
}

/// The quantized inputs of the tokens in `slots` (`token · top_k + choice`), in order.
fn expert_rows(parts: &[Part<'_, '_, '_>], slots: &[u32], k: usize, d: usize) -> QuantRows {
    let mut rows = QuantRows::default();
    fill_expert_rows(&mut rows, parts, slots, k, d);
    rows
}

/// Refills `rows` with the quantized inputs of the tokens in `slots`, in order.
fn fill_expert_rows(
    rows: &mut QuantRows,
    parts: &[Part<'_, '_, '_>],
    slots: &[u32],
    k: usize,
    d: usize,
) {
    rows.clear(d);
    for &slot in slots {
        let token = slot as usize / k;
        let p = part_of(parts, token);
        rows.push_row(&parts[p].moe_in, token - parts[p].first);
    }
}

impl Expert {
    /// The expert's outputs `[rows, d]` for quantized input rows, on one thread: the same
    /// operations as the threads of [`Model::forward_in`] split between them (gate and up
    /// rows, SwiGLU, activations quantized in whole blocks, down rows), so the same bits.
    pub(crate) fn compute_rows(&self, rows: &QuantRows, d: usize) -> Result<Vec<f32>, ModelError> {
        let (Some(w13), Some(w2)) = (self.w13.tiled(), self.w2.tiled()) else {
            return Err(not_tiled());
        };
        let (m, ffn) = (rows.rows(), self.ffn);
        let mut gate = vec![0f32; m * ffn];
        let mut up = vec![0f32; m * ffn];
        w13.matmul_rows(rows, 0..ffn, &mut gate);
        w13.matmul_rows(rows, ffn..2 * ffn, &mut up);
        let mut act = Vec::new();
        swiglu(&gate, &up, &mut act);
        let mut q = QuantRows::default();
        q.quantize(&act, ffn);
        let mut y = vec![0f32; m * d];
        w2.matmul_rows(&q, 0..d, &mut y);
        Ok(y)
    }
}

/// `out = x / rms(x) · w` per row of `d = w.len()`.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
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

/// `sum += w · y`, element by element, each a fused multiply-add (with `w = 1` a plain
/// sum: the product is exact).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn add_scaled(sum: &mut [f32], w: f32, y: &[f32]) {
    for (s, &v) in sum.iter_mut().zip(y) {
        *s = w.mul_add(v, *s);
    }
}

/// `act = silu(gate) · up`, element by element.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn swiglu(gate: &[f32], up: &[f32], act: &mut Vec<f32>) {
    act.clear();
    act.extend(gate.iter().zip(up).map(|(&g, &u)| g / (1.0 + exp(-g)) * u));
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
        team: Option<&Team>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let d = self.config.hidden_size;
        // A single sequence is not split: its attention and LM head, cut by sequence, would
        // leave the other threads idle (the split pass is measured for batches only).
        let team = team.filter(|_| batch.len() > 1);
        let threads = team.map_or(1, Team::size);
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
        let mut previous: Option<(Routing, Vec<ExpertCols>)> = None;
        let mut threads_list: Vec<usize> = (0..threads).collect();
        for l in 0..self.config.layers {
            let prev = previous.as_ref();
            each(team, &mut parts, |part| {
                if let Some((routing, cols)) = prev {
                    self.add_experts(part, routing, cols);
                }
                self.attention_and_routing(l, part)
            })?;
            let routing = self.routing(&parts, total);
            // Experts other machines compute for this one: their rows go out in one call per
            // expert, all of the layer's at once, while the local experts are computed here.
            // An expert any of whose tokens belongs to a local-only request is computed here.
            let remote: Vec<bool> = routing
                .experts
                .iter()
                .map(|(e, slots)| {
                    self.hosts
                        .as_ref()
                        .is_some_and(|h| !h.computes_locally(ExpertId::new(l as u16, *e as u16)))
                        && !slots.iter().any(|&slot| {
                            local_only_token(&parts, slot as usize / self.config.top_k)
                        })
                })
                .collect();
            let calls: Arc<[RemoteCall]> = routing
                .experts
                .iter()
                .zip(&remote)
                .filter(|(_, r)| **r)
                .map(|((e, slots), _)| RemoteCall {
                    expert: ExpertId::new(l as u16, *e as u16),
                    block: self.experts[l][*e].block,
                    rows: ExpertRows {
                        q: expert_rows(&parts, slots, self.config.top_k, self.config.hidden_size),
                    },
                })
                .collect();
            // Cold experts load here, one at a time, before the threads share them.
            let experts = routing
                .experts
                .iter()
                .zip(&remote)
                .map(|((e, _), r)| (!r).then(|| self.expert_repaired(l, *e)).transpose())
                .collect::<Result<Vec<_>, _>>()?;
            let compute_local = |threads_list: &mut Vec<usize>| {
                each(team, threads_list, |&mut t| {
                    self.expert_activations(&experts, &routing, &parts, t, threads)
                })
                .and_then(|acts| {
                    each(team, threads_list, |&mut t| {
                        self.expert_outputs(&experts, &routing, &acts, t, threads)
                    })
                })
            };
            let ask = |calls: &Arc<[RemoteCall]>| match &self.hosts {
                Some(h) if !calls.is_empty() => h.compute(calls),
                _ => Vec::new(),
            };
            let (answers, local) = if remote.iter().all(|&r| r) {
                // Nothing to compute here: this thread waits for the answers itself (a
                // thread started only to wait would cost a spawn and two switches per layer).
                (ask(&calls), compute_local(&mut threads_list))
            } else {
                std::thread::scope(|s| {
                    let asked = (!calls.is_empty()).then(|| s.spawn(|| ask(&calls)));
                    let local = compute_local(&mut threads_list);
                    let answers = asked
                        .map(|h| h.join().unwrap_or_default())
                        .unwrap_or_default();
                    (answers, local)
                })
            };
            let mut cols = local?;
            let mut answers = answers;
            let fates = self.place_remote(&routing, &remote, &calls, &mut answers, &mut cols)?;
            let k = self.config.top_k;
            note_remote(&mut parts, &routing, &remote, &answers, &fates, l, k);
            drop_missing(&mut parts, &routing, &remote, &fates, l, k);
            previous = Some((routing, cols));
        }
        let prev = previous.as_ref();
        let logits = each(team, &mut parts, |part| {
            if let Some((routing, cols)) = prev {
                self.add_experts(part, routing, cols);
            }
            self.head(part)
        })?;
        Ok(logits.into_iter().flatten().collect())
    }

    /// Adds to each of the part's tokens the weighted sum of its experts' outputs.
    fn add_experts(&self, part: &mut Part<'_, '_, '_>, routing: &Routing, cols: &[ExpertCols]) {
        let (d, k) = (self.config.hidden_size, self.config.top_k);
        let mut sum = vec![0f32; d];
        for (i, x) in part.x.chunks_exact_mut(d).enumerate() {
            sum.fill(0.0);
            for (c, &(_, w)) in part.routes[i * k..(i + 1) * k].iter().enumerate() {
                let row = routing.row_of_slot[(part.first + i) * k + c] as usize;
                for piece in cols {
                    let width = piece.cols.len();
                    let y = &piece.y[row * width..(row + 1) * width];
                    add_scaled(&mut sum[piece.cols.clone()], w, y);
                }
            }
            add_scaled(x, 1.0, &sum);
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

    /// Every expert with tokens, the slots routed to it, and where their rows go.
    fn routing(&self, parts: &[Part<'_, '_, '_>], total: usize) -> Routing {
        let k = self.config.top_k;
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); self.config.experts];
        for part in parts {
            for (j, &(e, _)) in part.routes.iter().enumerate() {
                slots[e].push((part.first * k + j) as u32);
            }
        }
        debug_assert_eq!(slots.iter().map(Vec::len).sum::<usize>(), total * k);
        let experts: Vec<(usize, Vec<u32>)> = slots
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .collect();
        let mut row_of_slot = vec![0u32; total * k];
        for (row, &slot) in experts.iter().flat_map(|(_, s)| s).enumerate() {
            row_of_slot[slot as usize] = row as u32;
        }
        Routing {
            experts,
            row_of_slot,
            rows: total * k,
        }
    }

    /// Layer `l`'s second phase for thread `thread` of `threads`: per expert (in routing
    /// order), its rows times the thread's share of the gate and up rows, through SwiGLU,
    /// quantized: `[rows of the expert, share]`.
    fn expert_activations(
        &self,
        experts: &[Option<Arc<Expert>>],
        routing: &Routing,
        parts: &[Part<'_, '_, '_>],
        thread: usize,
        threads: usize,
    ) -> Result<Vec<QuantRows>, ModelError> {
        let (d, ffn, k) = (
            self.config.hidden_size,
            self.config.intermediate_size,
            self.config.top_k,
        );
        // Whole quantization blocks, so that the pieces join into the row quantized whole.
        let cols = share(ffn, QK, thread, threads);
        let width = cols.len();
        let mut out = Vec::with_capacity(experts.len());
        let mut rows = QuantRows::default();
        let (mut gate, mut up, mut act) = (Vec::new(), Vec::new(), Vec::new());
        for (expert, (_, slots)) in experts.iter().zip(&routing.experts) {
            let mut q = QuantRows::default();
            let Some(expert) = expert else {
                // Computed elsewhere.
                q.clear(0);
                out.push(q);
                continue;
            };
            if width == 0 {
                q.clear(0);
                out.push(q);
                continue;
            }
            let Some(w13) = expert.w13.tiled() else {
                return Err(not_tiled());
            };
            fill_expert_rows(&mut rows, parts, slots, k, d);
            let m = slots.len();
            gate.resize(m * width, 0.0);
            up.resize(m * width, 0.0);
            w13.matmul_rows(&rows, cols.clone(), &mut gate);
            w13.matmul_rows(&rows, ffn + cols.start..ffn + cols.end, &mut up);
            swiglu(&gate, &up, &mut act);
            q.quantize(&act, width);
            out.push(q);
        }
        Ok(out)
    }

    /// Layer `l`'s third phase for thread `thread` of `threads`: every expert row's output
    /// columns of the thread's share of the down rows.
    fn expert_outputs(
        &self,
        experts: &[Option<Arc<Expert>>],
        routing: &Routing,
        acts: &[Vec<QuantRows>],
        thread: usize,
        threads: usize,
    ) -> Result<ExpertCols, ModelError> {
        let (d, ffn) = (self.config.hidden_size, self.config.intermediate_size);
        let cols = share(d, TILE, thread, threads);
        let width = cols.len();
        let mut y = vec![0f32; routing.rows * width];
        if width == 0 {
            return Ok(ExpertCols { cols, y });
        }
        let mut act = QuantRows::default();
        let mut row = 0;
        for (i, (expert, (_, slots))) in experts.iter().zip(&routing.experts).enumerate() {
            let m = slots.len();
            let Some(expert) = expert else {
                // Computed elsewhere: its rows are filled in afterwards.
                row += m;
                continue;
            };
            let Some(w2) = expert.w2.tiled() else {
                return Err(not_tiled());
            };
            act.clear(ffn);
            for r in 0..m {
                act.push_joined_row(acts.iter().map(|t| &t[i]), r);
            }
            w2.matmul_rows(&act, cols.clone(), &mut y[row * width..(row + m) * width]);
            row += m;
        }
        Ok(ExpertCols { cols, y })
    }

    /// Expert `e` of layer `l`; if its block cannot be read here, after fetching a good copy
    /// of it by hash from another machine, when one has it.
    fn expert_repaired(&self, l: usize, e: usize) -> Result<Arc<Expert>, ModelError> {
        match self.expert(l, e) {
            Err(err)
                if unreadable(&err)
                    && self
                        .hosts
                        .as_ref()
                        .is_some_and(|h| h.fetch_block(&self.experts[l][e].block)) =>
            {
                self.expert(l, e)
            }
            other => other,
        }
    }

    /// Writes the remote experts' output rows into the threads' column pieces: each answer
    /// that has the right size and only finite values, else the expert computed here from
    /// its block (no host answered, or the answer was malformed). Returns each call's fate;
    /// an expert whose block cannot be read here either is [`Fate::Missing`] and its rows
    /// stay zero.
    fn place_remote(
        &self,
        routing: &Routing,
        remote: &[bool],
        calls: &[RemoteCall],
        answers: &mut [RemoteOutcome],
        cols: &mut [ExpertCols],
    ) -> Result<Vec<Fate>, ModelError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.config.hidden_size;
        let mut fates = Vec::with_capacity(calls.len());
        let mut answers = answers.iter_mut();
        let mut calls = calls.iter();
        let mut row = 0;
        for ((e, slots), &is_remote) in routing.experts.iter().zip(remote) {
            let m = slots.len();
            if is_remote {
                let call = calls.next().ok_or_else(|| ModelError::Unsupported {
                    reason: "a remote expert without its call".into(),
                })?;
                let answer = answers
                    .next()
                    .and_then(|o| o.answer.take_if(|a| a.output.len() == m * d))
                    .filter(|a| a.output.iter().all(|v| v.is_finite()));
                // The expert from this machine's copy of its block; `None` when that cannot
                // be read (missing or corrupt, and no other machine gave a good copy of it),
                // any other failure an error.
                let local = |model: &Model| -> Result<Option<Vec<f32>>, ModelError> {
                    match model.expert_repaired(call.expert.layer.into(), *e) {
                        Ok(expert) => expert.compute_rows(&call.rows.q, d).map(Some),
                        Err(err) if unreadable(&err) => Ok(None),
                        Err(err) => Err(err),
                    }
                };
                let (y, fate) = match answer {
                    Some(a) if a.check => match local(self)? {
                        // A spot check: the same bits, or the host is reported and this
                        // process's own outputs are used.
                        Some(own) => {
                            let same = own.len() == a.output.len()
                                && own
                                    .iter()
                                    .zip(&a.output)
                                    .all(|(x, y)| x.to_bits() == y.to_bits());
                            if same {
                                (own, Fate::Answered(a.account))
                            } else {
                                if let Some(hosts) = &self.hosts {
                                    hosts.mismatch(call, &a, &own);
                                }
                                (own, Fate::Here)
                            }
                        }
                        // Nothing here to check it against.
                        None => (a.output, Fate::Answered(a.account)),
                    },
                    Some(a) => (a.output, Fate::Answered(a.account)),
                    None => match local(self)? {
                        Some(own) => (own, Fate::Here),
                        None => {
                            fates.push(Fate::Missing);
                            row += m;
                            continue;
                        }
                    },
                };
                fates.push(fate);
                for piece in cols.iter_mut() {
                    let width = piece.cols.len();
                    for r in 0..m {
                        let from = &y[r * d..(r + 1) * d][piece.cols.clone()];
                        piece.y[(row + r) * width..(row + r + 1) * width].copy_from_slice(from);
                    }
                }
            }
            row += m;
        }
        Ok(fates)
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

/// Whether `e` says an expert's block cannot be read here (missing or corrupt).
fn unreadable(e: &ModelError) -> bool {
    matches!(
        e,
        ModelError::BlockMissing { .. } | ModelError::BlockCorrupt { .. } | ModelError::Chain(_)
    )
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
                remote_layers: std::collections::BTreeMap::new(),
                remote_answered: std::collections::BTreeMap::new(),
                missing: std::collections::BTreeMap::new(),
                local_only: false,
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
    fn shares_are_contiguous_whole_units_covering_everything() {
        let shares = |len, unit, threads| -> Vec<Range<usize>> {
            (0..threads).map(|t| share(len, unit, t, threads)).collect()
        };
        assert_eq!(shares(1024, 32, 2), [0..512, 512..1024]);
        assert_eq!(shares(256, 16, 3), [0..80, 80..160, 160..256]);
        // A short last unit stays whole with its thread.
        assert_eq!(shares(40, 16, 2), [0..16, 16..40]);
        // More threads than units: some get nothing.
        assert_eq!(shares(32, 32, 2), [0..0, 0..32]);
        assert_eq!(shares(64, 32, 1), vec![0..64; 1]);
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
