//! Prints the model's next-token logits after each token of a prompt, as JSON, for comparing
//! with other implementations (e.g. llama.cpp on an exported GGUF file).
//!
//! Run: `cargo run --release -p blyan-model --example logits -- DATA_DIR/chain f32|int8 TOKEN...`

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use blyan_chain::Store;
use blyan_model::{LoadOptions, Model, Precision};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: logits STORE_DIR PRECISION TOKEN...");
    let precision: Precision = args.next().expect("precision").parse().unwrap();
    let tokens: Vec<u32> = args.map(|t| t.parse().unwrap()).collect();
    let store = Arc::new(Store::open(dir).unwrap());
    let model = Model::load(
        store,
        LoadOptions {
            precision,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let mut seq = model.new_sequence().unwrap();
    let rows: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| model.forward(&mut [(&mut seq, &[t])]).unwrap().remove(0))
        .collect();
    println!("{}", serde_json::to_string(&rows).unwrap());
}
