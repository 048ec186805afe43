//! The forward pass against the naive f64 reference, ragged batches and int8 agreement.

use blyan_model::{Precision, Sequence, Team};
use blyan_primitives::ExpertId;

use crate::{
    fixture::{net, net_with, test_spec},
    reference::Reference,
};

/// f32 logits must match the f64 reference within this, relative to the largest |logit|.
const TOLERANCE: f64 = 1e-4;

fn tokens(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % 256)
        .collect()
}

fn assert_close(actual: &[f32], expected: &[f64], what: &str) {
    let scale = expected.iter().fold(1f64, |m, x| m.max(x.abs()));
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (f64::from(*a) - e).abs())
        .fold(0f64, f64::max);
    assert!(
        worst <= TOLERANCE * scale,
        "{what}: max |Δ| {worst:.3e} exceeds {TOLERANCE:.0e} × {scale:.2}"
    );
}

fn counts(routes: &[Vec<Vec<usize>>]) -> std::collections::BTreeMap<ExpertId, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (l, layer) in routes.iter().enumerate() {
        for chosen in layer {
            for &e in chosen {
                *out.entry(ExpertId::new(l as u16, e as u16)).or_default() += 1;
            }
        }
    }
    out
}

#[test]
fn prefill_and_decode_match_the_f64_reference() {
    let net = net(11);
    let model = net.model(Precision::F32);
    let toks = tokens(24, 5);
    let reference = Reference::new(&net.meta.spec, &net.weights).forward(&toks);

    // The whole prompt in one pass.
    let mut seq = model.new_sequence().unwrap();
    let logits = model.forward(&mut [(&mut seq, &toks)]).unwrap();
    assert_close(&logits[0], &reference.logits[23], "prefill");

    // One token at a time through the KV cache.
    let mut seq = model.new_sequence().unwrap();
    for (pos, t) in toks.iter().enumerate() {
        let logits = model.forward(&mut [(&mut seq, &[*t])]).unwrap();
        assert_close(
            &logits[0],
            &reference.logits[pos],
            &format!("decode at {pos}"),
        );
    }
    assert_eq!(seq.len(), toks.len());

    // Routing: the same experts, token for token. f32 router logits differ from f64 ones by
    // about 1e-6, so every margin above 1e-5 makes each choice a real comparison.
    let min_margin = reference
        .route_margins
        .iter()
        .flatten()
        .fold(f64::INFINITY, |m, &x| m.min(x));
    assert!(min_margin > 1e-5, "router near-tie {min_margin}");
    assert_eq!(seq.experts_used(), &counts(&reference.routes));
    let used: usize = seq.experts_used().values().map(|&c| c as usize).sum();
    assert_eq!(used, 24 * 2 * 2, "tokens × layers × top-k");
}

#[test]
fn kv_cache_grows_past_its_initial_capacity() {
    let mut meta = test_spec();
    meta.spec.max_position_embeddings = 200;
    let net = net_with(meta, 12);
    let model = net.model(Precision::F32);
    let toks = tokens(150, 9);
    let reference = Reference::new(&net.meta.spec, &net.weights).forward(&toks);
    let mut seq = model.new_sequence().unwrap();
    model.forward(&mut [(&mut seq, &toks[..100])]).unwrap();
    for (pos, t) in toks.iter().enumerate().skip(100) {
        let logits = model.forward(&mut [(&mut seq, &[*t])]).unwrap();
        if pos % 10 == 9 {
            assert_close(&logits[0], &reference.logits[pos], &format!("pos {pos}"));
        }
    }
}

#[test]
fn a_ragged_batch_equals_separate_passes() {
    let net = net(13);
    let model = net.model(Precision::F32);
    let prompts = [tokens(7, 1), tokens(1, 2), tokens(12, 3)];
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let mut seq = model.new_sequence().unwrap();
            model.forward(&mut [(&mut seq, p)]).unwrap().remove(0)
        })
        .collect();
    let mut seqs: Vec<Sequence> = (0..3).map(|_| model.new_sequence().unwrap()).collect();
    let mut batch: Vec<_> = seqs
        .iter_mut()
        .zip(&prompts)
        .map(|(s, p)| (s, p.as_slice()))
        .collect();
    let together = model.forward(&mut batch).unwrap();
    for (a, b) in alone.iter().zip(&together) {
        let a64: Vec<f64> = a.iter().map(|&x| f64::from(x)).collect();
        assert_close(b, &a64, "batched vs alone");
    }
    // And one decode step for all three, at different positions.
    let next = [[1u32], [2], [3]];
    let mut batch: Vec<_> = seqs
        .iter_mut()
        .zip(&next)
        .map(|(s, p)| (s, p.as_slice()))
        .collect();
    model.forward(&mut batch).unwrap();
    assert_eq!(
        seqs.iter().map(Sequence::len).collect::<Vec<_>>(),
        [8, 2, 13]
    );
}

#[test]
fn int8_passes_spread_over_threads_give_the_same_bits() {
    let net = net(14);
    let model = net.model(Precision::Int8);
    assert!(model.parallel(), "int8 has the parallel pass on every CPU");
    assert!(!net.model(Precision::F32).parallel());
    // Prefills of different lengths, then decode steps, run serially and on pools of two
    // and three threads (sequences split into parts, experts shared out among threads).
    let prompts = [
        tokens(7, 4),
        tokens(1, 5),
        tokens(12, 6),
        tokens(3, 7),
        tokens(2, 8),
    ];
    let run = |team: Option<&Team>| -> Vec<Vec<f32>> {
        let mut seqs: Vec<Sequence> = (0..prompts.len())
            .map(|_| model.new_sequence().unwrap())
            .collect();
        let mut out = Vec::new();
        let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
        for _ in 0..4 {
            let mut batch: Vec<_> = seqs
                .iter_mut()
                .zip(&inputs)
                .map(|(s, p)| (s, p.as_slice()))
                .collect();
            let logits = match team {
                Some(team) => model.forward_in(&mut batch, team),
                None => model.forward(&mut batch),
            }
            .unwrap();
            inputs = logits
                .iter()
                .map(|l| vec![blyan_model::argmax(l)])
                .collect();
            out.extend(logits);
        }
        out
    };
    let serial = run(None);
    for threads in [2, 3] {
        let team = Team::new(threads, "test-forward");
        let spread = run(Some(&team));
        assert_eq!(spread.len(), serial.len());
        for (i, (a, b)) in spread.iter().zip(&serial).enumerate() {
            assert!(a == b, "{threads} threads: logits row {i} differ");
        }
    }
}

/// Cosine similarity of two logit vectors.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn int8_agrees_with_f32() {
    let net = net(14);
    let f32_model = net.model(Precision::F32);
    let int8_model = net.model(Precision::Int8);
    let toks = tokens(48, 4);
    let (mut a, mut b) = (
        f32_model.new_sequence().unwrap(),
        int8_model.new_sequence().unwrap(),
    );
    let mut same_top = 0;
    let mut worst = 1f64;
    for t in &toks {
        let la = f32_model.forward(&mut [(&mut a, &[*t])]).unwrap().remove(0);
        let lb = int8_model
            .forward(&mut [(&mut b, &[*t])])
            .unwrap()
            .remove(0);
        worst = worst.min(cosine(&la, &lb));
        same_top += usize::from(blyan_model::argmax(&la) == blyan_model::argmax(&lb));
    }
    // Bounds: every position's logits within cosine 0.999 of f32, and the greedy choice
    // the same at 90% of positions or more.
    assert!(worst >= 0.999, "worst cosine {worst}");
    assert!(same_top * 10 >= toks.len() * 9, "{same_top}/{}", toks.len());
}

#[test]
fn bad_token_ids_and_overflowing_the_context_are_refused_without_advancing() {
    let net = net(15);
    let model = net.model(Precision::F32);
    let mut seq = model.new_sequence().unwrap();
    let err = model.forward(&mut [(&mut seq, &[1, 300])]).unwrap_err();
    assert_eq!(err.code(), "invalid_parameter");
    let err = model.forward(&mut [(&mut seq, &[])]).unwrap_err();
    assert_eq!(err.code(), "invalid_parameter");
    let err = model
        .forward(&mut [(&mut seq, &tokens(65, 1))])
        .unwrap_err();
    assert_eq!(err.code(), "prompt_too_long");
    assert_eq!(seq.len(), 0);
    model.forward(&mut [(&mut seq, &tokens(64, 1))]).unwrap();
    assert_eq!(seq.len(), 64);
    let err = model.forward(&mut [(&mut seq, &[1])]).unwrap_err();
    assert_eq!(err.code(), "prompt_too_long");
}
