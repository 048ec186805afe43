//! Aggregate decode speed through the engine for several lane × thread settings and stream
//! counts, on the genesis network in int8: the measurement behind the engine's default.
//!
//! Run: `cargo run --release -p blyan-model --example engine_configs [-- ROUNDS]`
//!
//! Each stream decodes exactly 256 tokens (temperature 0.8, top-p 0.95, its own seed,
//! end-of-sequence ignored); experts are warmed first. Prints one line per round, setting
//! and stream count.

#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Instant};

use blyan_model::{
    Engine, EngineConfig, Event, GenerateRequest, LoadOptions, Model, Precision, SamplingParams,
};
use blyan_tokenizer::Tokenizer;

fn main() {
    let rounds: u64 = std::env::args().nth(1).map_or(3, |r| r.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let store = common::genesis_store(tmp.path());
    let (_, meta) = store.meta().unwrap().unwrap();
    let tokenizer = Arc::new(Tokenizer::from_json(&meta.tokenizer).unwrap());
    let model = Arc::new(
        Model::load(
            store,
            LoadOptions {
                precision: Precision::Int8,
                ..LoadOptions::default()
            },
        )
        .unwrap(),
    );
    common::warm_experts(&model);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for round in 0..rounds {
        for (lanes, threads) in [(cores, 1), (1, cores)] {
            let engine = Engine::start(
                model.clone(),
                tokenizer.clone(),
                EngineConfig {
                    max_batch: 16,
                    lanes,
                    threads,
                },
            );
            for streams in [1u64, 2, 4, 8, 16] {
                let start = Instant::now();
                let receivers: Vec<_> = (0..streams)
                    .map(|i| {
                        let request = GenerateRequest {
                            sampling: SamplingParams {
                                temperature: 0.8,
                                top_p: 0.95,
                                seed: round * 100 + i,
                                ignore_eos: true,
                                ..SamplingParams::default()
                            },
                            ..GenerateRequest::new(format!("Request {i} to the chain"), 256)
                        };
                        engine.submit(&request).unwrap()
                    })
                    .collect();
                let mut tokens = 0;
                for rx in receivers {
                    for event in rx {
                        match event {
                            Event::Done(s) => tokens += s.completion_tokens,
                            Event::Failed(e) => panic!("{e}"),
                            Event::Step(_) => {}
                        }
                    }
                }
                println!(
                    "round {round} lanes {lanes} threads {threads} streams {streams}: {:.0} tok/s",
                    tokens as f64 / start.elapsed().as_secs_f64()
                );
            }
        }
    }
}
