//! Inference benchmark on the genesis network.
//!
//! Run: `cargo run --release -p blyan-model --example infer_bench [-- DATA_DIR [PRECISION]]`
//!
//! PRECISION (`f32` or `int8`) measures one precision only; `-` as DATA_DIR keeps the
//! temporary network. Without DATA_DIR it builds a network of the genesis config with random
//! weights (seed `GENESIS_SEED`) in a temporary directory; `blyan init --data-dir D` makes
//! one with the trained genesis weights to pass instead. It prints one JSON object: cold
//! expert load times, single-stream decode speed (forward pass only and end to end with
//! sampling and text), time to first token, the speed of one stream and the aggregate speed
//! of 8 concurrent streams through the batching engine, the mean next-token loss of f32 and
//! int8 on a held-out text (this repository's docs/ARCHITECTURE.md, first 512 tokens), and
//! peak RSS. Every stream decodes exactly 256 tokens (end-of-sequence is ignored), and the
//! speeds are the medians of 11 rounds.

#![allow(clippy::unwrap_used)]

mod common;

use std::{path::PathBuf, sync::Arc, time::Instant};

use blyan_model::{
    Engine, EngineConfig, Event, GenerateRequest, Generation, LoadOptions, Model, Precision,
    SamplingParams, argmax,
};
use blyan_primitives::ExpertId;
use blyan_tokenizer::Tokenizer;

const DECODE_TOKENS: usize = 256;
const STREAMS: usize = 8;
const ROUNDS: usize = 11;

/// Each measurement's value in every round.
#[derive(Default)]
struct Rounds {
    forward: Vec<f64>,
    e2e: Vec<f64>,
    ttft: Vec<f64>,
    engine_single: Vec<f64>,
    batch: Vec<f64>,
    batch_ttft: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let arg = std::env::args().nth(1).filter(|a| a != "-");
    let only: Option<Precision> = std::env::args().nth(2).map(|p| p.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let dir = arg.map_or_else(|| tmp.path().join("chain"), PathBuf::from);
    let store = common::genesis_store(&dir);
    let (_, meta) = store.meta().unwrap().unwrap();
    let tokenizer = Arc::new(Tokenizer::from_json(&meta.tokenizer).unwrap());
    let mut report = serde_json::Map::new();
    let held_out = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/ARCHITECTURE.md"
    ))
    .unwrap();
    let mut held_out_ids = vec![meta.spec.bos_token_id];
    held_out_ids.extend(tokenizer.encode(&held_out).unwrap());
    held_out_ids.truncate(513);
    let mut losses = Vec::new();
    for precision in [Precision::F32, Precision::Int8] {
        if only.is_some_and(|p| p != precision) {
            continue;
        }
        let model = Arc::new(
            Model::load(
                store.clone(),
                LoadOptions {
                    precision,
                    ..LoadOptions::default()
                },
            )
            .unwrap(),
        );
        losses.push(mean_loss(&model, &held_out_ids));
        let cold = cold_loads(&model);
        // The speeds are measured in rounds, each taking every measurement once, and the
        // medians reported: on a shared machine a slow spell then hits every measurement
        // alike instead of one of them.
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            rounds.forward.push(forward_decode(&model));
            let (e2e, ttft) = end_to_end(&model, &tokenizer);
            rounds.e2e.push(e2e);
            rounds.ttft.push(ttft);
            rounds.engine_single.push(batched(&model, &tokenizer, 1).0);
            let (batch, batch_ttft) = batched(&model, &tokenizer, STREAMS);
            rounds.batch.push(batch);
            rounds.batch_ttft.push(batch_ttft);
        }
        let per_round = |over: &[f64]| -> Vec<f64> {
            rounds
                .batch
                .iter()
                .zip(over)
                .map(|(b, s)| (b / s * 100.0).round() / 100.0)
                .collect()
        };
        let (e2e_tps, engine_single_tps, batch_tps) = (
            median(&rounds.e2e),
            median(&rounds.engine_single),
            median(&rounds.batch),
        );
        report.insert(
            precision.to_string(),
            serde_json::json!({
                "rounds": ROUNDS,
                "cold_expert_load_ms": cold,
                "held_out_loss": losses.last(),
                "single_stream_forward_tok_s": median(&rounds.forward),
                "single_stream_tok_s": e2e_tps,
                "time_to_first_token_ms": median(&rounds.ttft),
                "streams": STREAMS,
                "aggregate_tok_s": batch_tps,
                "aggregate_over_single": batch_tps / e2e_tps,
                "aggregate_over_single_per_round": per_round(&rounds.e2e),
                "engine_single_stream_tok_s": engine_single_tps,
                "aggregate_over_engine_single": batch_tps / engine_single_tps,
                "aggregate_over_engine_single_per_round": per_round(&rounds.engine_single),
                "batched_time_to_first_token_ms": median(&rounds.batch_ttft),
                "expert_cache": model.cache_stats(),
            }),
        );
    }
    if let [f32_loss, int8_loss] = losses[..] {
        report.insert(
            "held_out_loss_delta_int8".into(),
            (int8_loss - f32_loss).into(),
        );
    }
    report.insert("peak_rss_mib".into(), peak_rss_mib().into());
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

/// Mean cross-entropy (nats per token) of predicting each token of `ids` from its prefix.
fn mean_loss(model: &Model, ids: &[u32]) -> f64 {
    let mut seq = model.new_sequence().unwrap();
    let mut total = 0.0;
    for w in ids.windows(2) {
        let logits = model.forward(&mut [(&mut seq, &w[..1])]).unwrap().remove(0);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = logits
            .iter()
            .map(|&x| f64::from(x - max).exp())
            .sum::<f64>()
            .ln()
            + f64::from(max);
        total += log_sum - f64::from(logits[w[1] as usize]);
    }
    total / (ids.len() - 1) as f64
}

/// Median and worst time to load one expert from its block into an empty cache.
fn cold_loads(model: &Model) -> serde_json::Value {
    let c = model.config();
    let mut times = Vec::new();
    for l in 0..c.layers {
        for e in 0..c.experts {
            model.clear_expert_cache();
            let start = Instant::now();
            model
                .load_expert(ExpertId::new(l as u16, e as u16))
                .unwrap();
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    serde_json::json!({
        "median": times[times.len() / 2],
        "max": times[times.len() - 1],
        "count": times.len(),
    })
}

/// Greedy decode through `Model::forward` alone, experts warm.
fn forward_decode(model: &Model) -> f64 {
    let mut seq = model.new_sequence().unwrap();
    let prompt: Vec<u32> = "The model on the chain".bytes().map(u32::from).collect();
    let mut logits = model.forward(&mut [(&mut seq, &prompt)]).unwrap();
    // Warm every expert first so the timing is decode, not loading.
    common::warm_experts(model);
    let start = Instant::now();
    for _ in 0..DECODE_TOKENS {
        let next = argmax(&logits[0]);
        logits = model.forward(&mut [(&mut seq, &[next])]).unwrap();
    }
    DECODE_TOKENS as f64 / start.elapsed().as_secs_f64()
}

fn request(i: usize) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            seed: i as u64,
            // Every stream decodes exactly DECODE_TOKENS, so that 8 streams stay 8 until the
            // end and a stream's speed is measured over the same context lengths as one alone.
            ignore_eos: true,
            ..SamplingParams::default()
        },
        ..GenerateRequest::new(format!("Request {i} to the chain"), DECODE_TOKENS as u32)
    }
}

/// One generation with sampling and streaming text: decode tokens/s and first-token time.
fn end_to_end(model: &Model, tokenizer: &Tokenizer) -> (f64, f64) {
    let mut generation = Generation::new(model, tokenizer, &request(0)).unwrap();
    generation.by_ref().for_each(|s| drop(s.unwrap()));
    let s = generation.summary();
    (
        s.decode_tokens_per_s(),
        s.time_to_first_token.as_secs_f64() * 1e3,
    )
}

/// `streams` requests submitted together to the engine: generated tokens per second of wall
/// time, and the mean time to first token.
fn batched(model: &Arc<Model>, tokenizer: &Arc<Tokenizer>, streams: usize) -> (f64, f64) {
    let engine = Engine::start(model.clone(), tokenizer.clone(), EngineConfig::default());
    let start = Instant::now();
    let receivers: Vec<_> = (0..streams)
        .map(|i| engine.submit(&request(i + 1)).unwrap())
        .collect();
    let mut tokens = 0;
    let mut ttft = 0.0;
    for rx in receivers {
        for event in rx {
            match event {
                Event::Step(_) => {}
                Event::Done(s) => {
                    tokens += s.completion_tokens;
                    ttft += s.time_to_first_token.as_secs_f64() * 1e3;
                }
                Event::Failed(e) => panic!("{e}"),
            }
        }
    }
    (
        tokens as f64 / start.elapsed().as_secs_f64(),
        ttft / streams as f64,
    )
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
