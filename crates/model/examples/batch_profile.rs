//! Profiles batched decode steps: 8 sequences through `Model::forward` together.
//!
//! Run: `cargo run --release -p blyan-model --example batch_profile -- [precision] [steps] [streams] [threads] [rounds]`
//!
//! With `threads` above 0, each step is `Model::forward_in` on a team of that many threads.
//! Each round starts fresh sequences (so `steps` is also the context length reached); several
//! rounds keep a profiler's samples on decoding rather than on building the network.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use blyan_model::{LoadOptions, Model, Precision, Team, argmax};

fn main() {
    let precision: Precision = std::env::args()
        .nth(1)
        .map_or(Precision::Int8, |p| p.parse().unwrap());
    let steps: usize = std::env::args().nth(2).map_or(200, |s| s.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let model = Model::load(
        common::genesis_store(tmp.path()),
        LoadOptions {
            precision,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let list: Vec<usize> = std::env::args()
        .nth(3)
        .map_or(vec![1, 8], |s| vec![s.parse().unwrap()]);
    let team = std::env::args()
        .nth(4)
        .map(|t| t.parse::<usize>().unwrap())
        .filter(|&t| t > 0)
        .map(|t| Team::new(t, "batch-profile"));
    let rounds: usize = std::env::args().nth(5).map_or(1, |r| r.parse().unwrap());
    common::warm_experts(&model);
    for streams in list
        .into_iter()
        .flat_map(|s| std::iter::repeat_n(s, rounds))
    {
        let mut seqs: Vec<_> = (0..streams)
            .map(|_| model.new_sequence().unwrap())
            .collect();
        let mut next: Vec<Vec<u32>> = (0..streams).map(|i| vec![10 + i as u32, 20, 30]).collect();
        let start = Instant::now();
        for _ in 0..steps {
            let mut batch: Vec<_> = seqs
                .iter_mut()
                .zip(&next)
                .map(|(s, t)| (s, t.as_slice()))
                .collect();
            let logits = match &team {
                Some(team) => model.forward_in(&mut batch, team).unwrap(),
                None => model.forward(&mut batch).unwrap(),
            };
            next = logits.iter().map(|l| vec![argmax(l)]).collect();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{precision} streams {streams}: {:.0} tok/s, {:.3} ms/step",
            (streams * steps) as f64 / secs,
            secs * 1e3 / steps as f64
        );
    }
}
