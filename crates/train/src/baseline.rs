//! Count-based baselines the trained model must beat: a unigram and an interpolated bigram
//! model, fitted on the training stream and scored on exactly the (context, target) pairs
//! the model is scored on.

use std::collections::HashMap;

use blyan_tokenizer::TokenId;
use serde::Serialize;

/// Cross-entropies of the baselines, nats per token.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Baselines {
    /// Add-one smoothed unigram model.
    pub unigram: f64,
    /// Bigram interpolated with the unigram (Jelinek–Mercer), at the best weight of a grid
    /// scored on the evaluation pairs themselves, which flatters the baseline.
    pub bigram: f64,
    /// The interpolation weight of the bigram term that scored best.
    pub bigram_lambda: f64,
}

/// Fits on `train` and scores `pairs` of (previous token, target).
pub fn baselines(train: &[TokenId], vocab: usize, pairs: &[(TokenId, TokenId)]) -> Baselines {
    let mut uni = vec![0u64; vocab];
    for &t in train {
        if let Some(c) = uni.get_mut(t as usize) {
            *c += 1;
        }
    }
    let total = train.len() as f64 + vocab as f64;
    let p_uni = |t: TokenId| (uni.get(t as usize).copied().unwrap_or(0) as f64 + 1.0) / total;
    let mut bi: HashMap<(TokenId, TokenId), u64> = HashMap::new();
    let mut ctx = vec![0u64; vocab];
    for w in train.windows(2) {
        *bi.entry((w[0], w[1])).or_default() += 1;
        if let Some(c) = ctx.get_mut(w[0] as usize) {
            *c += 1;
        }
    }
    let n = pairs.len().max(1) as f64;
    let unigram = pairs.iter().map(|&(_, y)| -p_uni(y).ln()).sum::<f64>() / n;
    let mut best = (f64::INFINITY, 0.0);
    for lambda in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] {
        let ce = pairs
            .iter()
            .map(|&(x, y)| {
                let c = ctx.get(x as usize).copied().unwrap_or(0);
                let p_bi = if c == 0 {
                    0.0
                } else {
                    bi.get(&(x, y)).copied().unwrap_or(0) as f64 / c as f64
                };
                -(lambda * p_bi + (1.0 - lambda) * p_uni(y)).ln()
            })
            .sum::<f64>()
            / n;
        if ce < best.0 {
            best = (ce, lambda);
        }
    }
    Baselines {
        unigram,
        bigram: best.0,
        bigram_lambda: best.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigram_beats_unigram_on_structured_text() {
        let train: Vec<TokenId> = (0..3000).map(|i| (i % 5) as TokenId).collect();
        let pairs: Vec<(TokenId, TokenId)> = (0..100).map(|i| (i % 5, (i + 1) % 5)).collect();
        let b = baselines(&train, 8, &pairs);
        assert!((b.unigram - (3008f64 / 601.0).ln()).abs() < 1e-9);
        assert!(b.bigram < 0.2, "{b:?}");
    }
}
