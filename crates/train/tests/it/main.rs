//! Trainer tests on small models: gradients reach every variable, a model overfits a tiny
//! text, a resumed run equals an uninterrupted one, the training graph computes the logits
//! the server computes, and expert fine-tuning trains only its expert and refuses bad input.

use std::collections::BTreeMap;
use std::sync::Arc;

use blyan_chain::Store;
use blyan_chain::genesis::{WeightSource, genesis_blocks, init};
use blyan_chain::spec::{MetaPayload, ModelSpec, TensorGroup, byte_level_tokenizer_json};
use blyan_model::{LoadOptions, Model, ModelConfig, Precision};
use blyan_primitives::{ExpertId, Hash};
use blyan_tensor::{TensorDesc, f32_to_bytes};
use blyan_tokenizer::Tokenizer;
use blyan_train::candidate::Candidate;
use blyan_train::data::TokenStream;
use blyan_train::expert::{ExpertOptions, ExpertTraining};
use blyan_train::net::{Net, Params, cross_entropy};
use blyan_train::optim::OptimConfig;
use blyan_train::weights::random_weights;
use blyan_train::{TrainConfig, Trainer};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

type Result<T = ()> = anyhow::Result<T>;

/// 2 layers of 4 experts, top-2, d = 32 over 4 heads and 2 key/value heads.
fn small_meta() -> MetaPayload {
    let tokenizer = byte_level_tokenizer_json();
    let spec = ModelSpec {
        vocab_size: 300,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        num_local_experts: 4,
        num_experts_per_tok: 2,
        max_position_embeddings: 64,
        ..ModelSpec::genesis(Hash::of(&tokenizer))
    };
    MetaPayload { spec, tokenizer }
}

/// Weights large enough that every part of the network changes the logits.
struct Wide(u64);

impl WeightSource for Wide {
    fn tensors(&mut self, group: &TensorGroup) -> Vec<(TensorDesc, Vec<u8>)> {
        group
            .tensors
            .iter()
            .map(|d| {
                let key = Hash::of(format!("wide:{}:{}", self.0, d.name).as_bytes());
                let mut rng = rand_chacha::ChaCha8Rng::from_seed(key.0);
                let n = d.numel().expect("small") as usize;
                let fan_in = *d.shape.last().expect("shape") as f32;
                let std = if d.name.contains("embed") {
                    1.0
                } else {
                    1.5 / fan_in.sqrt()
                };
                let base = if d.name.ends_with("norm.weight") {
                    1.0
                } else {
                    0.0
                };
                let v: Vec<f32> = (0..n)
                    .map(|_| base + (rng.random::<f32>() * 2.0 - 1.0) * std * 1.7)
                    .collect();
                (d.clone(), f32_to_bytes(&v))
            })
            .collect()
    }
}

fn cfg(steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        seed: 5,
        batch: 4,
        seq_len: 16,
        balance_coef: 0.01,
        optim: OptimConfig {
            lr,
            min_lr_ratio: 0.1,
            warmup_steps: 5,
            total_steps: steps,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_norm: 1.0,
        },
    }
}

fn text_stream(meta: &MetaPayload, text: &str) -> Result<TokenStream> {
    let tok = Tokenizer::from_json(&meta.tokenizer)?;
    Ok(TokenStream::from_documents(
        &tok,
        [text],
        meta.spec.bos_token_id,
        meta.spec.eos_token_id,
    )?)
}

fn random_net(meta: &MetaPayload, seed: u64) -> Result<Net> {
    let params = Params::new(random_weights(&meta.spec, seed)?, |_| true)?;
    Ok(Net::new(ModelConfig::from_spec(&meta.spec), params)?)
}

const TEXT: &str = "In the beginning God created the heaven and the earth. And the earth \
                    was without form, and void; and darkness was upon the face of the deep.";

#[test]
fn every_trainable_variable_gets_a_nonzero_gradient() -> Result {
    let meta = small_meta();
    let net = random_net(&meta, 3)?;
    let stream = text_stream(&meta, &TEXT.repeat(4))?;
    let (x, y) = stream.batch(1, 0, 4, 32)?;
    let fwd = net.forward(&x)?;
    let loss = (cross_entropy(&fwd.logits, &y)? + (fwd.balance * 0.01)?)?;
    let grads = loss.backward()?;
    let vars = net.params.vars();
    assert_eq!(
        vars.len(),
        meta.spec
            .layout()
            .values()
            .map(|g| g.tensors.len())
            .sum::<usize>()
    );
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm² {norm}"
        );
    }
    Ok(())
}

#[test]
fn a_small_model_overfits_a_tiny_text() -> Result {
    let meta = small_meta();
    let stream = text_stream(&meta, TEXT)?;
    let mut t = Trainer::new(random_net(&meta, 1)?, stream.clone(), cfg(150, 1e-2))?;
    let before = t.eval(&stream)?;
    while t.steps() < 150 {
        t.step()?;
    }
    let after = t.eval(&stream)?;
    assert!(before > 5.0, "starts near ln(300): {before}");
    assert!(after < 0.5, "memorised the text: {before} -> {after}");
    Ok(())
}

#[test]
fn micro_steps_sum_to_the_whole_batch_step() -> Result {
    let meta = small_meta();
    let stream = text_stream(&meta, &TEXT.repeat(3))?;
    // Without the balance loss the split is exact up to float summation order.
    let config = TrainConfig {
        balance_coef: 0.0,
        ..cfg(6, 3e-3)
    };
    let mut whole = Trainer::new(random_net(&meta, 4)?, stream.clone(), config.clone())?;
    let mut parts = Trainer::new(random_net(&meta, 4)?, stream, config)?;
    for step in 1..=3u64 {
        let a = whole.step()?;
        // batch 4 in micro-steps of 3 + 1 rows: an uneven split on purpose.
        assert!(parts.micro_step(3)?.is_none(), "a step ended early");
        assert_eq!(parts.steps(), step - 1);
        let b = parts.micro_step(3)?.expect("the step completes");
        assert_eq!(b.step, step);
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0),
            "{} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    let (a, b) = (whole.net().params.all(), parts.net().params.all());
    for (name, ta) in &a {
        let diff = (ta - &b[name])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{name} differs by {diff}");
    }
    assert_eq!(
        parts.micro_step(0).expect_err("refused").code(),
        "invalid_parameter"
    );
    Ok(())
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() -> Result {
    let meta = small_meta();
    let stream = text_stream(&meta, &TEXT.repeat(3))?;
    let dir = tempfile::tempdir()?;
    let mut straight = Trainer::new(random_net(&meta, 2)?, stream.clone(), cfg(12, 3e-3))?;
    let mut first = Trainer::new(random_net(&meta, 2)?, stream.clone(), cfg(12, 3e-3))?;
    let mut losses_a = Vec::new();
    for _ in 0..12 {
        losses_a.push(straight.step()?.loss);
    }
    let mut losses_b = Vec::new();
    for _ in 0..5 {
        losses_b.push(first.step()?.loss);
    }
    first.save_checkpoint(dir.path(), 2)?;
    drop(first);
    let mut second = Trainer::new(random_net(&meta, 2)?, stream, cfg(12, 3e-3))?;
    assert!(second.resume(dir.path())?.is_some());
    assert_eq!(second.steps(), 5);
    while second.steps() < 12 {
        losses_b.push(second.step()?.loss);
    }
    assert_eq!(losses_a, losses_b, "same losses step for step");
    let (a, b) = (straight.net().params.all(), second.net().params.all());
    for (name, ta) in &a {
        let diff = (ta - &b[name])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name} differs by {diff}");
    }
    // A checkpoint from other settings is refused.
    let mut other = Trainer::new(
        random_net(&meta, 2)?,
        text_stream(&meta, TEXT)?,
        cfg(13, 3e-3),
    )?;
    let err = other.resume(dir.path()).expect_err("refused");
    assert_eq!(err.code(), "checkpoint");
    Ok(())
}

fn wide_store(meta: &MetaPayload, seed: u64) -> Result<(tempfile::TempDir, Arc<Store>)> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path())?);
    init(
        &store,
        genesis_blocks(
            meta,
            &mut Wide(seed),
            &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
        )?,
    )?;
    Ok((dir, store))
}

#[test]
fn the_training_graph_computes_the_servers_logits() -> Result {
    let meta = small_meta();
    let (_dir, store) = wide_store(&meta, 11)?;
    let tensors = blyan_train::weights::head_weights(&store)?.tensors;
    let net = Net::new(
        ModelConfig::from_spec(&meta.spec),
        Params::new(tensors, |_| false)?,
    )?;
    let tok = Tokenizer::from_json(&meta.tokenizer)?;
    let mut ids = vec![meta.spec.bos_token_id];
    ids.extend(tok.encode("And God said, Let there be light")?);
    let train_logits = net
        .forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?)?
        .logits
        .to_vec2::<f32>()?;
    let model = Model::load(
        store,
        LoadOptions {
            precision: Precision::F32,
            ..LoadOptions::default()
        },
    )?;
    let mut seq = model.new_sequence()?;
    for (pos, &id) in ids.iter().enumerate() {
        let served = model.forward(&mut [(&mut seq, &[id][..])])?.remove(0);
        let scale = served.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = served
            .iter()
            .zip(&train_logits[pos])
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-4 * scale,
            "position {pos}: off by {worst} (scale {scale})"
        );
    }
    Ok(())
}

fn lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("Line {i}: and the sons of Noah went forth out of the ark, {i} of them."))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn expert_training_changes_only_its_expert_and_writes_a_candidate() -> Result {
    let meta = small_meta();
    let (_dir, store) = wide_store(&meta, 12)?;
    let id = ExpertId::new(1, 2);
    let data = lines(60);
    let mut run = ExpertTraining::new(
        &store,
        data.as_bytes(),
        ExpertOptions {
            steps: 30,
            lr: 3e-3,
            batch: 4,
            seq_len: 16,
            ..ExpertOptions::new(id)
        },
    )?;
    let before = run.eval_loss_before();
    while !run.is_done() {
        run.step()?;
    }
    let cand = run.candidate()?;
    assert!(
        cand.manifest.eval_loss_after < before,
        "held-out loss {before} -> {}",
        cand.manifest.eval_loss_after
    );
    assert_eq!(cand.parent, store.expert_head(id)?.expect("head"));
    assert_eq!(cand.tensors.len(), 3);
    assert!(
        cand.tensors
            .iter()
            .all(|t| t.0.contains("layers.1.block_sparse_moe.experts.2."))
    );
    cand.check_shapes(&meta.spec)?;
    let bytes = cand.encode()?;
    assert_eq!(Candidate::decode(&bytes)?, cand);
    // The chain's tensors for this expert differ from the candidate's; nothing else trained.
    let heads = blyan_train::weights::head_weights(&store)?.tensors;
    let changed: BTreeMap<&str, bool> = cand
        .tensors
        .iter()
        .map(|(n, _, v)| {
            let old = heads[n]
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("f32");
            (n.as_str(), old != *v)
        })
        .collect();
    assert!(changed.values().all(|&c| c), "{changed:?}");
    Ok(())
}

#[test]
fn expert_training_refuses_bad_input() -> Result {
    let meta = small_meta();
    let (_dir, store) = wide_store(&meta, 13)?;
    let good = lines(60);
    let opts = |id: ExpertId| ExpertOptions {
        steps: 5,
        seq_len: 16,
        ..ExpertOptions::new(id)
    };
    let code = |data: &[u8], o: ExpertOptions| {
        ExpertTraining::new(&store, data, o)
            .expect_err("refused")
            .code()
    };
    let id = ExpertId::new(0, 1);
    assert_eq!(code(b"", opts(id)), "empty_data");
    assert_eq!(code(b"  \n\n\t", opts(id)), "empty_data");
    assert_eq!(code(b"\x7fELF\x02\x01\x01\0\0\0", opts(id)), "binary_data");
    assert_eq!(code(b"caf\xc3", opts(id)), "binary_data");
    let big = vec![b'a'; (blyan_train::expert::DATA_LEN_MAX + 1) as usize];
    assert_eq!(code(&big, opts(id)), "data_too_large");
    assert_eq!(code(b"one line\ntwo lines\n", opts(id)), "data_too_small");
    assert_eq!(
        code(good.as_bytes(), opts(ExpertId::new(2, 0))),
        "unknown_expert"
    );
    assert_eq!(
        code(good.as_bytes(), opts(ExpertId::new(0, 4))),
        "unknown_expert"
    );
    let zero = ExpertOptions {
        steps: 0,
        ..opts(id)
    };
    assert_eq!(code(good.as_bytes(), zero), "invalid_parameter");
    let nan = ExpertOptions {
        lr: f64::NAN,
        ..opts(id)
    };
    assert_eq!(code(good.as_bytes(), nan), "invalid_parameter");
    Ok(())
}

#[test]
fn malformed_candidates_are_refused() -> Result {
    assert_eq!(
        Candidate::decode(b"garbage").expect_err("refused").code(),
        "candidate"
    );
    let meta = small_meta();
    let (_dir, store) = wide_store(&meta, 14)?;
    let run = ExpertTraining::new(
        &store,
        lines(40).as_bytes(),
        ExpertOptions {
            steps: 1,
            seq_len: 16,
            ..ExpertOptions::new(ExpertId::new(0, 0))
        },
    )?;
    let good = run.candidate()?;
    let mut nan = good.clone();
    nan.tensors[0].2[3] = f32::NAN;
    assert_eq!(
        Candidate::decode(&nan.encode()?)
            .expect_err("NaN refused")
            .code(),
        "non_finite_candidate"
    );
    let mut short = good.clone();
    short.tensors.pop();
    assert!(
        Candidate::decode(&short.encode()?).is_err(),
        "missing tensor refused"
    );
    let mut shape = good;
    shape.tensors[0].1 = vec![1, shape.tensors[0].2.len()];
    let decoded = Candidate::decode(&shape.encode()?)?;
    assert!(
        decoded.check_shapes(&meta.spec).is_err(),
        "wrong shape refused"
    );
    Ok(())
}
