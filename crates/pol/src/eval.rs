//! The deterministic evaluator: the served model recomputed in plain Rust so that every
//! validator gets the same losses bit for bit.
//!
//! Every reduction runs in a fixed order: dot products keep eight independent f32 lanes
//! that are added in one fixed tree, softmax and log-sum-exp walk their rows front to back,
//! and `exp`, `ln`, `sin`, `cos` and `pow` come from the pure-Rust `libm` crate, not the
//! platform's math library. Rust never fuses a multiply and an add on its own, so the same
//! inputs give the same bits on any x86-64 or AArch64 machine. Items are scored one per
//! task; threads only decide which task runs where, and the per-item results are integers
//! added afterwards, so the verdict does not depend on the thread count.
//!
//! An item is a window of token ids: position `p` predicts token `p + 1`. For a candidate
//! of expert `L.E`, layers below `L` and the router of layer `L` see exactly the same
//! inputs with the parent and with the child, so the positions routed to `E` in layer `L`
//! are the same for both; the evaluator runs the shared part once and the rest twice.

use std::collections::BTreeMap;

use blyan_chain::spec::{ModelSpec, expert_group_name};
use blyan_primitives::ExpertId;

/// Version of the evaluator recorded in every proof; bumped whenever any loss or the way the
/// decision reads them could change. Version 2 tests each item's whole loss (version 1 tested
/// the mean over its routed positions) and caps a position's loss. Version 3 evaluates in
/// stages, stopping at the first conclusive look, and accepts when the gain is significant
/// and its mean clears the minimum effect (version 2 required the lower confidence bound to
/// clear it). Version 4 adds the contamination check: an accepted candidate whose gain on the
/// hidden items is far above its gain on public validation items is refused as
/// `suspected_leak`.
pub const EVALUATOR_VERSION: u32 = 4;

/// One nat in the integer unit of losses.
pub const MICRO: f64 = 1e6;

/// Why an evaluation could not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A tensor the model needs is missing or has the wrong number of values.
    #[error("tensor {name}: {detail}")]
    Tensor {
        /// Its name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// The expert is not in the model.
    #[error("expert {0} is not in the model")]
    UnknownExpert(ExpertId),
    /// An item is too short, too long or holds a token outside the vocabulary.
    #[error("item {index}: {detail}")]
    BadItem {
        /// The item's position in the batch.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// A loss came out NaN or infinite.
    #[error("item {index}: the {model} model's loss is not finite")]
    NonFinite {
        /// The item's position in the batch.
        index: usize,
        /// `parent` or `child`.
        model: &'static str,
    },
}

/// The shape of the model, from its spec.
#[derive(Clone, Copy, Debug)]
struct Shape {
    vocab: usize,
    d: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    experts: usize,
    top_k: usize,
    context: usize,
    eps: f32,
}

/// One expert's SwiGLU weights, row-major as Hugging Face stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertWeights {
    /// Gate projection `[ffn, d]`.
    pub w1: Vec<f32>,
    /// Down projection `[d, ffn]`.
    pub w2: Vec<f32>,
    /// Up projection `[ffn, d]`.
    pub w3: Vec<f32>,
}

struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    experts: Vec<ExpertWeights>,
}

/// The whole model in f32, ready to evaluate.
pub struct Model {
    shape: Shape,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// The losses of one item, in micro-nats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemScore {
    /// Positions scored (the window length minus one).
    pub positions: u32,
    /// Positions routed to the candidate's expert.
    pub routed: u32,
    /// Sum of the parent's losses over the routed positions.
    pub parent_routed: i64,
    /// Sum of the child's losses over the routed positions.
    pub child_routed: i64,
    /// Sum of the parent's losses over every position.
    pub parent_all: i64,
    /// Sum of the child's losses over every position.
    pub child_all: i64,
}

impl Model {
    /// The model `spec` describes, from every tensor of its layout as f32 values by name.
    pub fn new(
        spec: &ModelSpec,
        mut tensors: BTreeMap<String, Vec<f32>>,
    ) -> Result<Model, EvalError> {
        let shape = Shape {
            vocab: spec.vocab_size as usize,
            d: spec.hidden_size as usize,
            ffn: spec.intermediate_size as usize,
            layers: usize::from(spec.num_hidden_layers),
            heads: usize::from(spec.num_attention_heads),
            kv_heads: usize::from(spec.num_key_value_heads),
            head_dim: spec.head_dim() as usize,
            experts: usize::from(spec.num_local_experts),
            top_k: usize::from(spec.num_experts_per_tok),
            context: spec.max_position_embeddings as usize,
            eps: spec.rms_norm_eps,
        };
        let s = shape;
        let mut take = |name: String, len: usize| -> Result<Vec<f32>, EvalError> {
            let v = tensors.remove(&name).ok_or_else(|| EvalError::Tensor {
                name: name.clone(),
                detail: "missing".into(),
            })?;
            if v.len() != len {
                return Err(EvalError::Tensor {
                    name,
                    detail: format!("{} values, the spec needs {len}", v.len()),
                });
            }
            Ok(v)
        };
        let embed = take("model.embed_tokens.weight".into(), s.vocab * s.d)?;
        let mut layers = Vec::with_capacity(s.layers);
        for l in 0..s.layers {
            let pre = format!("model.layers.{l}");
            let attn = |w: &str| format!("{pre}.self_attn.{w}.weight");
            let mut experts = Vec::with_capacity(s.experts);
            for e in 0..s.experts {
                let group = expert_group_name(ExpertId::new(l as u16, e as u16));
                experts.push(ExpertWeights {
                    w1: take(format!("{group}.w1.weight"), s.ffn * s.d)?,
                    w2: take(format!("{group}.w2.weight"), s.d * s.ffn)?,
                    w3: take(format!("{group}.w3.weight"), s.ffn * s.d)?,
                });
            }
            layers.push(Layer {
                input_norm: take(format!("{pre}.input_layernorm.weight"), s.d)?,
                post_norm: take(format!("{pre}.post_attention_layernorm.weight"), s.d)?,
                q: take(attn("q_proj"), s.heads * s.head_dim * s.d)?,
                k: take(attn("k_proj"), s.kv_heads * s.head_dim * s.d)?,
                v: take(attn("v_proj"), s.kv_heads * s.head_dim * s.d)?,
                o: take(attn("o_proj"), s.d * s.heads * s.head_dim)?,
                gate: take(
                    format!("{pre}.block_sparse_moe.gate.weight"),
                    s.experts * s.d,
                )?,
                experts,
            });
        }
        let norm = take("model.norm.weight".into(), s.d)?;
        let lm_head = take("lm_head.weight".into(), s.vocab * s.d)?;
        let (cos, sin) = rope_tables(s.context, s.head_dim, spec.rope_theta);
        Ok(Model {
            shape,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
        })
    }

    /// The weights of expert `id`.
    pub fn expert(&self, id: ExpertId) -> Result<&ExpertWeights, EvalError> {
        self.layers
            .get(usize::from(id.layer))
            .and_then(|l| l.experts.get(usize::from(id.expert)))
            .ok_or(EvalError::UnknownExpert(id))
    }

    /// Checks that `child` has the shape of expert `id`.
    pub fn check_expert(&self, id: ExpertId, child: &ExpertWeights) -> Result<(), EvalError> {
        let parent = self.expert(id)?;
        for (name, a, b) in [
            ("w1", &parent.w1, &child.w1),
            ("w2", &parent.w2, &child.w2),
            ("w3", &parent.w3, &child.w3),
        ] {
            if a.len() != b.len() {
                return Err(EvalError::Tensor {
                    name: format!("{}.{name}.weight", expert_group_name(id)),
                    detail: format!("{} values, the spec needs {}", b.len(), a.len()),
                });
            }
        }
        Ok(())
    }

    /// Mean loss per position of the model as it is, in nats, over `tokens`.
    pub fn loss(&self, tokens: &[u32]) -> Result<f64, EvalError> {
        self.check_item(0, tokens)?;
        let mut x = self.embed(tokens);
        for l in 0..self.shape.layers {
            self.layer(l, &mut x, None);
        }
        let (sum, n) = self
            .nll(&x, &tokens[1..])
            .iter()
            .fold((0.0f64, 0usize), |(s, n), v| (s + v, n + 1));
        Ok(sum / n as f64)
    }

    /// Scores one item with expert `id` as it is (the parent) and replaced by `child`.
    pub fn score(
        &self,
        id: ExpertId,
        child: &ExpertWeights,
        tokens: &[u32],
        index: usize,
    ) -> Result<ItemScore, EvalError> {
        self.check_expert(id, child)?;
        self.check_item(index, tokens)?;
        let layer = usize::from(id.layer);
        let expert = usize::from(id.expert);
        let mut x = self.embed(tokens);
        for l in 0..layer {
            self.layer(l, &mut x, None);
        }
        let mut child_x = x.clone();
        let routed = self.layer(layer, &mut x, None);
        self.layer(layer, &mut child_x, Some((expert, child)));
        for l in layer + 1..self.shape.layers {
            self.layer(l, &mut x, None);
            self.layer(l, &mut child_x, None);
        }
        let targets = &tokens[1..];
        let parent = self.nll(&x, targets);
        let child = self.nll(&child_x, targets);
        let mut score = ItemScore {
            positions: targets.len() as u32,
            ..ItemScore::default()
        };
        for (p, (&a, &b)) in parent.iter().zip(&child).enumerate() {
            if !a.is_finite() {
                return Err(EvalError::NonFinite {
                    index,
                    model: "parent",
                });
            }
            if !b.is_finite() {
                return Err(EvalError::NonFinite {
                    index,
                    model: "child",
                });
            }
            let (a, b) = (to_micro(a), to_micro(b));
            score.parent_all += a;
            score.child_all += b;
            if routed[p].contains(&expert) {
                score.routed += 1;
                score.parent_routed += a;
                score.child_routed += b;
            }
        }
        Ok(score)
    }

    /// Scores every item, spread over `threads` threads (at least one). The result is the
    /// same for any thread count.
    pub fn score_all(
        &self,
        id: ExpertId,
        child: &ExpertWeights,
        items: &[&[u32]],
        threads: usize,
    ) -> Result<Vec<ItemScore>, EvalError> {
        let threads = threads.clamp(1, items.len().max(1));
        if threads == 1 {
            return items
                .iter()
                .enumerate()
                .map(|(i, t)| self.score(id, child, t, i))
                .collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut out: Vec<Option<Result<ItemScore, EvalError>>> = vec![None; items.len()];
        let results = std::sync::Mutex::new(&mut out);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= items.len() {
                            break;
                        }
                        let r = self.score(id, child, items[i], i);
                        results.lock().expect("score lock")[i] = Some(r);
                    }
                });
            }
        });
        out.into_iter()
            .map(|r| r.expect("every item is scored"))
            .collect()
    }

    fn check_item(&self, index: usize, tokens: &[u32]) -> Result<(), EvalError> {
        let bad = |detail: String| Err(EvalError::BadItem { index, detail });
        if tokens.len() < 2 {
            return bad(format!("{} tokens; an item needs at least 2", tokens.len()));
        }
        if tokens.len() - 1 > self.shape.context {
            return bad(format!(
                "{} tokens; the context holds {}",
                tokens.len(),
                self.shape.context + 1
            ));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.shape.vocab) {
            return bad(format!(
                "token {t} is outside the vocabulary of {}",
                self.shape.vocab
            ));
        }
        Ok(())
    }

    /// Embeddings of the inputs (every token but the last), `[t, d]`.
    fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let d = self.shape.d;
        let mut x = Vec::with_capacity((tokens.len() - 1) * d);
        for &t in &tokens[..tokens.len() - 1] {
            x.extend_from_slice(&self.embed[t as usize * d..(t as usize + 1) * d]);
        }
        x
    }

    /// Runs layer `l` over `x` (`[t, d]`) in place, with expert `swap.0` replaced by
    /// `swap.1` if given. Returns the experts each position was routed to.
    fn layer(
        &self,
        l: usize,
        x: &mut [f32],
        swap: Option<(usize, &ExpertWeights)>,
    ) -> Vec<Vec<usize>> {
        let s = &self.shape;
        let w = &self.layers[l];
        let t = x.len() / s.d;
        let h = rms_norm(x, &w.input_norm, s.eps);
        let attn = self.attention(w, &h, t);
        for (xi, ai) in x.iter_mut().zip(&attn) {
            *xi += ai;
        }
        let h = rms_norm(x, &w.post_norm, s.eps);
        let logits = matmul(&h, &w.gate, s.experts, s.d);
        let routes: Vec<Vec<(usize, f32)>> = (0..t)
            .map(|p| route(&logits[p * s.experts..(p + 1) * s.experts], s.top_k))
            .collect();
        // Each expert runs once over the positions routed to it, weight rows outermost, so
        // its weights are read once per layer; each position then adds its experts' outputs
        // in routing order.
        let mut outputs: Vec<Vec<(usize, Vec<f32>)>> = vec![Vec::new(); t];
        for e in 0..s.experts {
            let rows: Vec<usize> = (0..t)
                .filter(|&p| routes[p].iter().any(|&(c, _)| c == e))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let ew = match swap {
                Some((se, sw)) if se == e => sw,
                _ => &w.experts[e],
            };
            let xs: Vec<f32> = rows
                .iter()
                .flat_map(|&p| h[p * s.d..(p + 1) * s.d].iter().copied())
                .collect();
            let mut hidden = matmul(&xs, &ew.w1, s.ffn, s.d);
            let up = matmul(&xs, &ew.w3, s.ffn, s.d);
            for (g, u) in hidden.iter_mut().zip(&up) {
                *g = silu(*g) * u;
            }
            let ys = matmul(&hidden, &ew.w2, s.d, s.ffn);
            for (r, &p) in rows.iter().enumerate() {
                outputs[p].push((e, ys[r * s.d..(r + 1) * s.d].to_vec()));
            }
        }
        for (p, chosen) in routes.iter().enumerate() {
            let xp = &mut x[p * s.d..(p + 1) * s.d];
            for &(e, weight) in chosen {
                let y = &outputs[p]
                    .iter()
                    .find(|(c, _)| *c == e)
                    .expect("every chosen expert ran")
                    .1;
                for (xi, yi) in xp.iter_mut().zip(y) {
                    *xi += weight * yi;
                }
            }
        }
        routes
            .into_iter()
            .map(|c| c.into_iter().map(|(e, _)| e).collect())
            .collect()
    }

    /// Causal grouped-query attention over normed inputs `h` (`[t, d]`), projected back.
    fn attention(&self, w: &Layer, h: &[f32], t: usize) -> Vec<f32> {
        let s = &self.shape;
        let hd = s.head_dim;
        let mut q = matmul(h, &w.q, s.heads * hd, s.d);
        let mut k = matmul(h, &w.k, s.kv_heads * hd, s.d);
        let v = matmul(h, &w.v, s.kv_heads * hd, s.d);
        for p in 0..t {
            for head in 0..s.heads {
                self.rope(&mut q[(p * s.heads + head) * hd..][..hd], p);
            }
            for head in 0..s.kv_heads {
                self.rope(&mut k[(p * s.kv_heads + head) * hd..][..hd], p);
            }
        }
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let group = s.heads / s.kv_heads;
        let mut out = vec![0f32; t * s.heads * hd];
        let mut scores = vec![0f32; t];
        for head in 0..s.heads {
            let kvh = head / group;
            for p in 0..t {
                let qp = &q[(p * s.heads + head) * hd..][..hd];
                let mut max = f32::NEG_INFINITY;
                for (j, sc) in scores[..=p].iter_mut().enumerate() {
                    *sc = dot(qp, &k[(j * s.kv_heads + kvh) * hd..][..hd]) * scale;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in &mut scores[..=p] {
                    *sc = libm::expf(*sc - max);
                    sum += *sc;
                }
                let o = &mut out[(p * s.heads + head) * hd..][..hd];
                for (j, sc) in scores[..=p].iter().enumerate() {
                    let weight = sc / sum;
                    let vj = &v[(j * s.kv_heads + kvh) * hd..][..hd];
                    for (oi, vi) in o.iter_mut().zip(vj) {
                        *oi += weight * vi;
                    }
                }
            }
        }
        matmul(&out, &w.o, s.d, s.heads * hd)
    }

    /// Rotates one head's vector at position `p` (Hugging Face's half-split pairing).
    fn rope(&self, x: &mut [f32], p: usize) {
        let hd = x.len();
        let half = hd / 2;
        let cos = &self.cos[p * half..(p + 1) * half];
        let sin = &self.sin[p * half..(p + 1) * half];
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i] + a * sin[i];
        }
    }

    /// Loss in nats of each position: final norm, LM head, log-sum-exp in f64.
    fn nll(&self, x: &[f32], targets: &[u32]) -> Vec<f64> {
        let s = &self.shape;
        let h = rms_norm(x, &self.norm, s.eps);
        let logits = matmul(&h, &self.lm_head, s.vocab, s.d);
        let mut out = Vec::with_capacity(targets.len());
        for (row, &target) in logits.chunks_exact(s.vocab).zip(targets) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
            let mut sum = 0f64;
            for &l in row {
                sum += libm::exp(f64::from(l - max));
            }
            out.push(f64::from(max) + libm::log(sum) - f64::from(row[target as usize]));
        }
        out
    }
}

/// Largest loss one position can score, nats. A finite loss above it (only a hostile
/// candidate's logits can produce one) counts as this much, which keeps every item's sum far
/// inside `i64` and the paired differences inside [`crate::DIFF_MAX`].
pub const POSITION_LOSS_MAX_NATS: f64 = 1_000.0;

/// A loss in nats as integer micro-nats, rounded to nearest, at most
/// [`POSITION_LOSS_MAX_NATS`].
fn to_micro(nats: f64) -> i64 {
    libm::round(nats.min(POSITION_LOSS_MAX_NATS) * MICRO) as i64
}

/// Dot product with eight independent lanes added in a fixed tree, then the tail.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

/// `x · wᵀ` for `x` of `[t, inner]` and `w` of `[out, inner]`: `[t, out]`. Every output is
/// exactly [`dot`] of its row and column; they are computed in blocks of up to four rows by
/// two columns, whose eight independent accumulator chains hide the adds' latency and read
/// each loaded row for two columns and each column for four rows. Compiled a second time for
/// AVX2 (chosen at run time): wider vectors, the same operations in the same order, so the
/// same bits.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn matmul(x: &[f32], w: &[f32], out: usize, inner: usize) -> Vec<f32> {
    let t = x.len() / inner;
    let mut y = vec![0f32; t * out];
    let mut o = 0;
    while o < out {
        let cols = (out - o).min(2);
        let mut p = 0;
        while p < t {
            let rows = (t - p).min(4);
            match (rows, cols) {
                (4, 2) => block::<4, 2>(&mut y, x, w, (p, o), out, inner),
                (3, 2) => block::<3, 2>(&mut y, x, w, (p, o), out, inner),
                (2, 2) => block::<2, 2>(&mut y, x, w, (p, o), out, inner),
                (1, 2) => block::<1, 2>(&mut y, x, w, (p, o), out, inner),
                (4, _) => block::<4, 1>(&mut y, x, w, (p, o), out, inner),
                (3, _) => block::<3, 1>(&mut y, x, w, (p, o), out, inner),
                (2, _) => block::<2, 1>(&mut y, x, w, (p, o), out, inner),
                _ => block::<1, 1>(&mut y, x, w, (p, o), out, inner),
            }
            p += rows;
        }
        o += cols;
    }
    y
}

/// Rows `p..p + R` and columns `o..o + C` of `y = x · wᵀ` (`y` of `[t, out]`).
#[inline(always)]
fn block<const R: usize, const C: usize>(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    (p, o): (usize, usize),
    out: usize,
    inner: usize,
) {
    let a = std::array::from_fn(|r| &x[(p + r) * inner..(p + r + 1) * inner]);
    let b = std::array::from_fn(|c| &w[(o + c) * inner..(o + c + 1) * inner]);
    for (r, d) in dots::<R, C>(a, b).iter().enumerate() {
        y[(p + r) * out + o..][..C].copy_from_slice(d);
    }
}

/// The dot products of each of `a` with each of `b`, every one summed in [`dot`]'s order
/// (eight lanes, the same tree, then the remainder), so each equals `dot` bit for bit.
#[inline(always)]
fn dots<const R: usize, const C: usize>(a: [&[f32]; R], b: [&[f32]; C]) -> [[f32; C]; R] {
    let n = b[0].len();
    let mut acc = [[[0f32; 8]; C]; R];
    let chunks = n / 8;
    for ch in 0..chunks {
        let ys: [&[f32]; C] = std::array::from_fn(|c| &b[c][ch * 8..ch * 8 + 8]);
        for r in 0..R {
            let x = &a[r][ch * 8..ch * 8 + 8];
            for c in 0..C {
                for i in 0..8 {
                    acc[r][c][i] += x[i] * ys[c][i];
                }
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let acc = &acc[r][c];
            let mut sum =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
            for i in chunks * 8..n {
                sum += a[r][i] * b[c][i];
            }
            out[r][c] = sum;
        }
    }
    out
}

/// RMSNorm of each row of `x` (`[t, d]`) times `w`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let ms = dot(row, row) / d as f32;
        let inv = 1.0 / libm::sqrtf(ms + eps);
        out.extend(row.iter().zip(w).map(|(v, g)| v * inv * g));
    }
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// The `k` experts with the highest router logits (ties to the lower index) and their
/// weights, the softmax over the chosen logits: the serving model's rule.
fn route(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(k);
    let max = logits[order[0]];
    let exp: Vec<f32> = order.iter().map(|&e| libm::expf(logits[e] - max)).collect();
    let mut sum = 0f32;
    for v in &exp {
        sum += v;
    }
    order
        .into_iter()
        .zip(exp.into_iter().map(|v| v / sum))
        .collect()
}

/// Cosine and sine tables `[context, head_dim / 2]` in f64, rounded to f32.
fn rope_tables(context: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(context * half);
    let mut sin = Vec::with_capacity(context * half);
    for p in 0..context {
        for i in 0..half {
            let freq = 1.0 / libm::pow(f64::from(theta), 2.0 * i as f64 / head_dim as f64);
            let angle = p as f64 * freq;
            cos.push(libm::cos(angle) as f32);
            sin.push(libm::sin(angle) as f32);
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blyan_primitives::Hash;
    use rand::{Rng, SeedableRng};

    /// A random model of `spec`, weights of size ~0.3 so that routing and losses vary.
    fn random_model(spec: &ModelSpec, seed: u64) -> Model {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        for group in spec.groups_in_order() {
            for t in &group.tensors {
                let n: u64 = t.shape.iter().product();
                let norm = t.name.contains("norm");
                let v: Vec<f32> = (0..n)
                    .map(|_| {
                        if norm {
                            1.0
                        } else {
                            (rng.random::<f32>() - 0.5) * 0.6
                        }
                    })
                    .collect();
                tensors.insert(t.name.clone(), v);
            }
        }
        Model::new(spec, tensors).expect("model")
    }

    fn spec() -> ModelSpec {
        let mut s = ModelSpec::tiny(Hash::ZERO);
        s.num_hidden_layers = 2;
        s.num_local_experts = 4;
        s.num_experts_per_tok = 2;
        s
    }

    /// The blocked product gives every output the bits of `dot` of its row and column, for
    /// every block shape and tail (rows mod 4, columns mod 2, lengths mod 8).
    #[test]
    fn blocked_matmul_is_dot_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for inner in [1, 7, 8, 9, 16, 63, 256] {
            for t in 1..=9 {
                for out in 1..=5 {
                    let x: Vec<f32> = (0..t * inner).map(|_| rng.random::<f32>() - 0.5).collect();
                    let w: Vec<f32> = (0..out * inner)
                        .map(|_| (rng.random::<f32>() - 0.5) * 1e3)
                        .collect();
                    let y = matmul(&x, &w, out, inner);
                    for p in 0..t {
                        for o in 0..out {
                            let want = dot(
                                &x[p * inner..(p + 1) * inner],
                                &w[o * inner..(o + 1) * inner],
                            );
                            assert_eq!(
                                y[p * out + o].to_bits(),
                                want.to_bits(),
                                "t {t} out {out} inner {inner} at ({p}, {o})"
                            );
                        }
                    }
                }
            }
        }
    }

    fn items(vocab: u32, count: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| (0..len).map(|_| rng.random_range(0..vocab)).collect())
            .collect()
    }

    #[test]
    fn the_parent_against_itself_scores_zero_difference() {
        let spec = spec();
        let model = random_model(&spec, 1);
        let id = ExpertId::new(1, 2);
        let same = model.expert(id).expect("expert").clone();
        let items = items(spec.vocab_size, 12, 20, 2);
        let refs: Vec<&[u32]> = items.iter().map(Vec::as_slice).collect();
        let scores = model.score_all(id, &same, &refs, 1).expect("scores");
        let mut routed = 0;
        for s in &scores {
            assert_eq!(s.parent_all, s.child_all);
            assert_eq!(s.parent_routed, s.child_routed);
            assert_eq!(s.positions, 19);
            routed += s.routed;
        }
        assert!(routed > 0, "some positions route to the expert");
        // The evaluator's loss is the model's mean loss.
        let mean = model.loss(&items[0]).expect("loss");
        assert!((mean * 19.0 * MICRO - scores[0].parent_all as f64).abs() < 19.0);
    }

    #[test]
    fn verdict_inputs_are_identical_for_any_thread_count() {
        let spec = spec();
        let model = random_model(&spec, 3);
        let id = ExpertId::new(0, 1);
        let mut child = model.expert(id).expect("expert").clone();
        for (i, w) in child.w2.iter_mut().enumerate() {
            *w += if i % 3 == 0 { 0.05 } else { -0.02 };
        }
        let items = items(spec.vocab_size, 23, 33, 4);
        let refs: Vec<&[u32]> = items.iter().map(Vec::as_slice).collect();
        let one = model.score_all(id, &child, &refs, 1).expect("1 thread");
        for threads in [2, 3, 8] {
            assert_eq!(
                one,
                model
                    .score_all(id, &child, &refs, threads)
                    .expect("n threads")
            );
        }
        assert!(
            one.iter().any(|s| s.parent_all != s.child_all),
            "the change shows"
        );
        // Positions routed elsewhere are untouched: an item with no routed position has
        // identical losses.
        for s in &one {
            if s.routed == 0 {
                assert_eq!(s.parent_all, s.child_all);
            }
        }
    }

    #[test]
    fn bad_items_and_non_finite_children_are_refused() {
        let spec = spec();
        let model = random_model(&spec, 5);
        let id = ExpertId::new(0, 0);
        let parent = model.expert(id).expect("expert").clone();
        assert!(matches!(
            model.score(id, &parent, &[1], 0),
            Err(EvalError::BadItem { .. })
        ));
        assert!(matches!(
            model.score(id, &parent, &[1, spec.vocab_size], 0),
            Err(EvalError::BadItem { .. })
        ));
        let long = vec![1u32; spec.max_position_embeddings as usize + 2];
        assert!(matches!(
            model.score(id, &parent, &long, 0),
            Err(EvalError::BadItem { .. })
        ));
        let mut short = parent.clone();
        short.w1.pop();
        assert!(matches!(
            model.score(id, &short, &[1, 2, 3], 0),
            Err(EvalError::Tensor { .. })
        ));
        let mut huge = parent;
        for w in &mut huge.w2 {
            *w = f32::MAX;
        }
        let items = items(spec.vocab_size, 8, 16, 6);
        let refs: Vec<&[u32]> = items.iter().map(Vec::as_slice).collect();
        let r = model.score_all(id, &huge, &refs, 2);
        assert!(
            matches!(r, Err(EvalError::NonFinite { model: "child", .. })),
            "{r:?}"
        );
        assert!(matches!(
            model.expert(ExpertId::new(9, 0)),
            Err(EvalError::UnknownExpert(_))
        ));
    }
}
