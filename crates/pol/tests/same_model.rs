//! The deterministic evaluator computes the same model as the trainer's candle graph (and so
//! the served model): per-position losses agree to float rounding on random weights.

use std::collections::BTreeMap;

use blyan_chain::spec::ModelSpec;
use blyan_model::ModelConfig;
use blyan_pol::eval::Model;
use blyan_primitives::Hash;
use blyan_train::net::{Net, Params, token_losses};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

#[test]
fn evaluator_losses_match_the_candle_graph() {
    let mut spec = ModelSpec::tiny(Hash::ZERO);
    spec.num_hidden_layers = 2;
    spec.num_local_experts = 4;
    spec.num_experts_per_tok = 2;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut values: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for group in spec.groups_in_order() {
        for t in &group.tensors {
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|_| {
                    if t.name.contains("norm") {
                        1.0 + (rng.random::<f32>() - 0.5) * 0.2
                    } else {
                        (rng.random::<f32>() - 0.5) * 0.6
                    }
                })
                .collect();
            values.insert(t.name.clone(), (shape, v));
        }
    }
    let model = Model::new(
        &spec,
        values
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect(),
    )
    .expect("evaluator model");
    let tensors: BTreeMap<String, Tensor> = values
        .iter()
        .map(|(k, (s, v))| {
            (
                k.clone(),
                Tensor::from_vec(v.clone(), s.clone(), &Device::Cpu).expect("tensor"),
            )
        })
        .collect();
    let net = Net::new(
        ModelConfig::from_spec(&spec),
        Params::new(tensors, |_| false).expect("params"),
    )
    .expect("net");
    for seed in 0..4u64 {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(100 + seed);
        let tokens: Vec<u32> = (0..25)
            .map(|_| r.random_range(0..spec.vocab_size))
            .collect();
        let inputs = Tensor::from_vec(tokens[..24].to_vec(), (1, 24), &Device::Cpu).expect("ids");
        let targets = Tensor::from_vec(tokens[1..].to_vec(), 24, &Device::Cpu).expect("targets");
        let fwd = net.forward(&inputs).expect("forward");
        let candle: Vec<f32> = token_losses(&fwd.logits, &targets)
            .expect("losses")
            .to_vec1()
            .expect("vec");
        let candle_mean = candle.iter().map(|&l| f64::from(l)).sum::<f64>() / 24.0;
        let ours = model.loss(&tokens).expect("loss");
        assert!(
            (ours - candle_mean).abs() < 1e-4 * candle_mean.abs().max(1.0),
            "evaluator {ours} vs candle {candle_mean}"
        );
    }
}
