//! Choosing the next token from logits: repetition penalty, temperature, top-k, top-p and a
//! seeded random draw, so that the same seed and inputs give the same text.

use blyan_tokenizer::TokenId;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Highest accepted temperature (the OpenAI API's bound).
pub const TEMPERATURE_MAX: f32 = 2.0;
/// Highest accepted repetition penalty.
pub const REPETITION_PENALTY_MAX: f32 = 10.0;

/// Sampling parameters of one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature in `[0, 2]`; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to at least this,
    /// in `(0, 1]`; 1 keeps all.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Divides positive (multiplies negative) logits of tokens already in the sequence,
    /// in `(0, 10]`; 1 is off.
    pub repetition_penalty: f32,
    /// Seed of the random draw.
    pub seed: u64,
    /// Never end on the end-of-sequence token: its logit is masked before the draw, so the
    /// generation runs until `max_tokens`, a stop sequence, the context window or a cancel.
    /// For measuring decode speed over a fixed number of tokens (llama.cpp and vLLM call it
    /// the same).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Refuses out-of-range or non-finite values.
    pub fn check(&self, vocab_size: usize) -> Result<(), ModelError> {
        let bad = |name, reason: String| Err(ModelError::InvalidParameter { name, reason });
        if !(self.temperature.is_finite() && (0.0..=TEMPERATURE_MAX).contains(&self.temperature)) {
            return bad(
                "temperature",
                format!(
                    "must be in [0, {TEMPERATURE_MAX}], got {}",
                    self.temperature
                ),
            );
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k as usize > vocab_size {
            return bad(
                "top_k",
                format!(
                    "must be at most the vocabulary size {vocab_size}, got {}",
                    self.top_k
                ),
            );
        }
        if !(self.repetition_penalty.is_finite()
            && self.repetition_penalty > 0.0
            && self.repetition_penalty <= REPETITION_PENALTY_MAX)
        {
            return bad(
                "repetition_penalty",
                format!(
                    "must be in (0, {REPETITION_PENALTY_MAX}], got {}",
                    self.repetition_penalty
                ),
            );
        }
        Ok(())
    }
}

/// Draws tokens for one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch: (token, probability) candidates.
    candidates: Vec<(TokenId, f32)>,
    /// Scratch: the nucleus search's bucket masses.
    buckets: Vec<f32>,
}

impl Sampler {
    /// A sampler; the parameters must have passed [`SamplingParams::check`].
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
            buckets: Vec::new(),
        }
    }

    /// The next token given `logits` and the tokens seen so far (for the repetition penalty).
    /// `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], seen: &[TokenId]) -> TokenId {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                if let Some(x) = logits.get_mut(t as usize)
                    && done.insert(t)
                {
                    *x = if *x > 0.0 {
                        *x / p.repetition_penalty
                    } else {
                        *x * p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / p.temperature;
        weigh(logits, max, inv_t, &mut self.candidates);
        let c = &mut self.candidates;
        let k = p.top_k as usize;
        if k > 0 && k < c.len() {
            c.select_nth_unstable_by(k - 1, by_prob);
            c.truncate(k);
            // Back to id order, so that the draw below walks the same order in every case.
            c.sort_unstable_by_key(|x| x.0);
        }
        if p.top_p < 1.0
            && let Some(cut) = nucleus_cut(c, p.top_p, &mut self.buckets)
        {
            c.retain(|x| by_prob(x, &cut) != std::cmp::Ordering::Greater);
        }
        let total: f64 = c.iter().map(|x| f64::from(x.1)).sum();
        let mut target = self.rng.random::<f64>() * total;
        for &(id, w) in c.iter() {
            target -= f64::from(w);
            if target < 0.0 {
                return id;
            }
        }
        // Rounding left a little of the draw: the last candidate that can be drawn at all.
        c.iter()
            .rev()
            .find(|x| x.1 > 0.0)
            .map_or_else(|| argmax(logits), |x| x.0)
    }
}

/// `candidates = [(id, e^((logit − max) / T))]` for every token, in id order.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn weigh(logits: &[f32], max: f32, inv_t: f32, candidates: &mut Vec<(TokenId, f32)>) {
    candidates.clear();
    candidates.extend(
        logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as TokenId, crate::kernels::exp((x - max) * inv_t))),
    );
}

/// Most likely first; ties broken by id so that the order is fully determined.
fn by_prob(a: &(TokenId, f32), b: &(TokenId, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Low bits of a weight's f32 pattern dropped to give its bucket: the buckets are the
/// exponent and the top three mantissa bits, 2,048 of them.
const BUCKET_SHIFT: u32 = 20;
const BUCKETS: usize = 1 << (31 - BUCKET_SHIFT);

/// The last candidate, in [`by_prob`] order, of the nucleus of `c`: the fewest most likely
/// candidates whose mass reaches `top_p` of the total; `None` if rounding leaves every
/// bucket short of it (keep all). Weights must be non-negative.
///
/// Non-negative floats order like their bit patterns, so one pass adds each weight to the
/// bucket of its exponent and top mantissa bits; walking the buckets from the top finds the
/// one where the mass reaches `top_p`, and only that bucket's candidates are sorted. That is
/// linear in the candidates with a small constant, where sorting them all would cost more
/// than the rest of a decode step on a flat distribution.
fn nucleus_cut(c: &[(TokenId, f32)], top_p: f32, buckets: &mut Vec<f32>) -> Option<(TokenId, f32)> {
    let bucket = |w: f32| (w.to_bits() >> BUCKET_SHIFT) as usize & (BUCKETS - 1);
    buckets.clear();
    buckets.resize(BUCKETS, 0.0);
    let mut total = 0f32;
    for &(_, w) in c {
        buckets[bucket(w)] += w;
        total += w;
    }
    let want = top_p * total;
    let mut above = 0f32;
    let edge = (0..BUCKETS).rev().find(|&b| {
        let reached = above + buckets[b] >= want;
        if !reached {
            above += buckets[b];
        }
        reached
    })?;
    let mut members: Vec<(TokenId, f32)> =
        c.iter().filter(|x| bucket(x.1) == edge).copied().collect();
    members.sort_unstable_by(by_prob);
    for &m in &members {
        above += m.1;
        if above >= want {
            return Some(m);
        }
    }
    // Sums in another order fell a rounding short: the whole bucket.
    members.last().copied()
}

/// The index of the largest logit, the first one on ties.
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as TokenId
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            repetition_penalty: 1.0,
            seed,
            ignore_eos: false,
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0, 3.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws_and_different_seed_different_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, 0, seed));
            (0..40)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [5.0, 4.0, 3.0, 0.0, -1.0];
        let mut s = Sampler::new(params(1.0, 1.0, 2, 1));
        for _ in 0..200 {
            assert!(s.sample(&mut logits.clone(), &[]) < 2);
        }
        // p(0) ≈ 0.66, p(0)+p(1) ≈ 0.91: top_p 0.9 keeps two tokens.
        let mut s = Sampler::new(params(1.0, 0.9, 0, 1));
        let draws: Vec<_> = (0..300)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect();
        assert!(draws.iter().all(|&t| t < 2));
        assert!(draws.contains(&1));
    }

    #[test]
    fn the_nucleus_is_the_smallest_head_reaching_top_p() {
        let mut buckets = Vec::new();
        for (n, top_p, spread) in [
            (1000usize, 0.5f32, 100.0),
            (1000, 0.999, 100.0),
            (4096, 0.95, 100.0),
            (7, 0.3, 100.0),
            // Weights over many octaves, as after a softmax; and many equal ones.
            (4096, 0.9, 1.0),
            (300, 0.5, 1e9),
        ] {
            let c: Vec<(TokenId, f32)> = (0..n as u32)
                .map(|i| (i, (-(((i * 7919) % 997) as f32) / spread).exp()))
                .collect();
            let mut sorted = c.clone();
            sorted.sort_by(by_prob);
            let total: f32 = sorted.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let expected = sorted
                .iter()
                .position(|x| {
                    acc += x.1;
                    acc >= top_p * total
                })
                .unwrap()
                + 1;
            let cut = nucleus_cut(&c, top_p, &mut buckets).unwrap();
            let got = sorted.iter().position(|x| *x == cut).unwrap() + 1;
            // Float sums in a different order can move the cut by one at the boundary.
            assert!(
                got.abs_diff(expected) <= 1,
                "{n} {top_p}: {got} vs {expected}"
            );
        }
        // Equal weights: the lowest ids first.
        let flat: Vec<(TokenId, f32)> = (0..10).map(|i| (i, 1.0)).collect();
        assert_eq!(nucleus_cut(&flat, 0.35, &mut buckets), Some((3, 1.0)));
    }

    #[test]
    fn the_draw_keeps_exactly_the_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (ids in reverse): top-p 0.75 keeps the first two.
        let logits = [0.05f32.ln(), 0.15f32.ln(), 0.3f32.ln(), 0.5f32.ln()];
        let mut s = Sampler::new(params(1.0, 0.75, 0, 5));
        let draws: Vec<TokenId> = (0..2000)
            .map(|_| s.sample(&mut logits.clone(), &[]))
            .collect();
        assert!(
            draws.iter().all(|&t| t == 2 || t == 3),
            "outside the nucleus"
        );
        let threes = draws.iter().filter(|&&t| t == 3).count();
        // 0.5 / 0.8 of the draws.
        assert!((1_150..1_350).contains(&threes), "{threes}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with probabilities 0.8 and 0.2.
        let logits = [0.0, (0.25f32).ln()];
        let mut s = Sampler::new(params(1.0, 1.0, 0, 3));
        let ones = (0..10_000)
            .filter(|_| s.sample(&mut logits.clone(), &[]) == 1)
            .count();
        assert!((1_800..2_200).contains(&ones), "{ones}");
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        let mut logits = [3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits, &[0, 0]), 1);
        assert_eq!(logits, [1.5, 2.0, -1.0]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        let ok = SamplingParams::default();
        ok.check(100).unwrap();
        let cases: [fn(&mut SamplingParams); 8] = [
            |p| p.temperature = -0.1,
            |p| p.temperature = f32::NAN,
            |p| p.temperature = 2.5,
            |p| p.top_p = 0.0,
            |p| p.top_p = f32::INFINITY,
            |p| p.top_k = 101,
            |p| p.repetition_penalty = 0.0,
            |p| p.repetition_penalty = f32::NAN,
        ];
        for mutate in cases {
            let mut p = ok.clone();
            mutate(&mut p);
            let err = p.check(100).unwrap_err();
            assert_eq!(err.code(), "invalid_parameter", "{p:?}");
        }
    }
}
