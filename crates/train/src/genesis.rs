//! Genesis training: the whole MoE from seeded random weights on the corpus's train split,
//! resumable, with a loss curve, a validation score against count baselines, and the
//! bundled Q8_0 weights `blyan init` ships.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blyan_chain::spec::{MetaPayload, ModelSpec};
use blyan_model::ModelConfig;
use blyan_primitives::Hash;
use blyan_tensor::{decode_bundle, encode_bundle};
use blyan_tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::TrainError;
use crate::baseline::{Baselines, baselines};
use crate::bpe::{BOS, EOS};
use crate::corpus::{Corpus, Split, Splitter};
use crate::data::TokenStream;
use crate::net::{Net, Params};
use crate::plot::draw_loss_curve;
use crate::trainer::{StepReport, TrainConfig, Trainer, eval_loss};
use crate::weights::{random_weights, values};

/// How a genesis run is set up.
#[derive(Clone, Debug)]
pub struct GenesisOptions {
    /// Output directory: checkpoints, loss curve, weights, recipe.
    pub out: PathBuf,
    /// Batch, schedule and optimizer.
    pub train: TrainConfig,
    /// Seed of the random initial weights.
    pub init_seed: u64,
    /// Steps between validation scores (0: only at the end).
    pub eval_every: u64,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
}

/// What a genesis run produced; written to `recipe.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    /// SHA-256 of the corpus file.
    pub corpus_sha256: Hash,
    /// SHA-256 of `tokenizer.json`.
    pub tokenizer_sha256: Hash,
    /// SHA-256 of `weights.q8` (the bundle).
    pub weights_sha256: Hash,
    /// The model's spec.
    pub spec: ModelSpec,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Training settings (batch seed included).
    pub train: TrainConfig,
    /// Steps taken in total.
    pub steps: u64,
    /// Tokens in the train split.
    pub train_split_tokens: usize,
    /// Tokens seen by training (steps × batch × seq_len).
    pub tokens_seen: u64,
    /// Tokens in the validation split.
    pub validation_tokens: usize,
    /// Validation cross-entropy of the f32 weights, nats per token.
    pub validation_loss_f32: f64,
    /// Validation cross-entropy of the shipped Q8_0 weights, nats per token.
    pub validation_loss_q8_0: f64,
    /// exp(validation_loss_q8_0).
    pub validation_perplexity: f64,
    /// Unigram and bigram baselines on the same validation pairs.
    pub baselines: Baselines,
    /// Perplexities of the baselines.
    pub baseline_perplexity: (f64, f64),
    /// Final training loss (mean of the last 50 steps).
    pub final_train_loss: f64,
    /// Wall time of this invocation's training steps, seconds.
    pub train_seconds: f64,
    /// Training throughput of this invocation, tokens per second.
    pub tokens_per_s: f64,
    /// Step this invocation resumed from, if any.
    pub resumed_from: Option<u64>,
}

/// The meta payload of a genesis network for a trained tokenizer: the genesis architecture
/// with the tokenizer's vocabulary size and special ids.
pub fn genesis_meta(tokenizer_json: Vec<u8>) -> Result<MetaPayload, TrainError> {
    let tok =
        Tokenizer::from_json(&tokenizer_json).map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    let mut spec = ModelSpec::genesis(Hash::of(&tokenizer_json));
    spec.vocab_size = tok.vocab_size();
    spec.bos_token_id = tok
        .token_id(BOS)
        .ok_or_else(|| TrainError::Tokenizer(format!("no {BOS} token")))?;
    spec.eos_token_id = tok
        .token_id(EOS)
        .ok_or_else(|| TrainError::Tokenizer(format!("no {EOS} token")))?;
    spec.check()
        .map_err(|e| TrainError::Tokenizer(format!("spec: {e}")))?;
    Ok(MetaPayload {
        spec,
        tokenizer: tokenizer_json,
    })
}

/// The token streams of one split.
pub fn split_stream(
    corpus: &Corpus,
    split: Split,
    tok: &Tokenizer,
    spec: &ModelSpec,
) -> Result<TokenStream, TrainError> {
    TokenStream::from_documents(
        tok,
        corpus.documents(split, Splitter::Genesis).map(|d| d.text()),
        spec.bos_token_id,
        spec.eos_token_id,
    )
}

/// Trains `meta`'s model on `corpus`; calls `on_step` after every step with the validation
/// loss when one was measured. Resumes from the newest checkpoint in `out/checkpoints`.
pub fn train_genesis(
    corpus: &Corpus,
    meta: &MetaPayload,
    opts: &GenesisOptions,
    mut on_step: impl FnMut(&StepReport, Option<f64>),
) -> Result<Recipe, TrainError> {
    let spec = &meta.spec;
    let cfg = ModelConfig::from_spec(spec);
    let tok =
        Tokenizer::from_json(&meta.tokenizer).map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    let train = split_stream(corpus, Split::Train, &tok, spec)?;
    let validation = split_stream(corpus, Split::Validation, &tok, spec)?;
    let train_split_tokens = train.len();
    let pairs = validation.eval_pairs(opts.train.seq_len);
    let base = baselines(train.tokens(), cfg.vocab_size, &pairs);

    let params = Params::new(random_weights(spec, opts.init_seed)?, |_| true)?;
    let mut trainer = Trainer::new(
        Net::new(cfg.clone(), params)?,
        train.clone(),
        opts.train.clone(),
    )?;
    std::fs::create_dir_all(&opts.out).map_err(TrainError::io(&opts.out))?;
    let ckpt_dir = opts.out.join("checkpoints");
    let resumed_from = trainer.resume(&ckpt_dir)?.map(|_| trainer.steps());
    let csv_path = opts.out.join("loss.csv");
    let mut history = read_history(&csv_path, trainer.steps())?;
    let mut csv = rewrite_csv(&csv_path, &history)?;

    let total = opts.train.optim.total_steps;
    let started = Instant::now();
    let mut done_here = 0u64;
    while trainer.steps() < total {
        let report = trainer.step()?;
        done_here += 1;
        let s = report.step;
        let val = if (opts.eval_every > 0 && s % opts.eval_every == 0) || s == total {
            Some(trainer.eval(&validation)?)
        } else {
            None
        };
        let row = Row {
            step: s,
            loss: report.loss,
            balance: report.balance,
            lr: report.lr,
            grad_norm: report.grad_norm,
            ms: report.elapsed.as_secs_f64() * 1e3,
            validation: val,
        };
        writeln!(csv, "{}", row.csv()).map_err(TrainError::io(&csv_path))?;
        csv.flush().map_err(TrainError::io(&csv_path))?;
        history.push(row);
        on_step(&report, val);
        if opts.checkpoint_every > 0 && s % opts.checkpoint_every == 0 && s < total {
            trainer.save_checkpoint(&ckpt_dir, 2)?;
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    trainer.save_checkpoint(&ckpt_dir, 2)?;

    let validation_loss_f32 = trainer.eval(&validation)?;
    let all = trainer.net().params.all();
    let mut bundle_in = Vec::with_capacity(all.len());
    for (name, t) in &all {
        bundle_in.push((name.clone(), t.dims().to_vec(), values(t)?));
    }
    let bundle = encode_bundle(&bundle_in)
        .map_err(|e| TrainError::Compute(candle_core::Error::Msg(e.to_string())))?;
    let shipped = net_from_bundle(&cfg, &bundle)?;
    let validation_loss_q8_0 =
        eval_loss(&shipped, &validation, opts.train.batch, opts.train.seq_len)?;

    write(&opts.out.join("weights.q8"), &bundle)?;
    write(&opts.out.join("tokenizer.json"), &meta.tokenizer)?;
    let spec_json = serde_json::to_vec_pretty(spec).map_err(|e| TrainError::Io {
        path: opts.out.join("spec.json"),
        source: std::io::Error::other(e),
    })?;
    write(&opts.out.join("spec.json"), &spec_json)?;
    let train_points: Vec<(u64, f32)> = history.iter().map(|r| (r.step, r.loss)).collect();
    let val_points: Vec<(u64, f64)> = history
        .iter()
        .filter_map(|r| Some((r.step, r.validation?)))
        .collect();
    draw_loss_curve(&opts.out.join("loss.png"), &train_points, &val_points)?;
    let tail: Vec<f64> = history
        .iter()
        .rev()
        .take(50)
        .map(|r| f64::from(r.loss))
        .collect();
    let steps = trainer.steps();
    let recipe = Recipe {
        corpus_sha256: corpus.hash(),
        tokenizer_sha256: Hash::of(&meta.tokenizer),
        weights_sha256: Hash::of(&bundle),
        spec: spec.clone(),
        init_seed: opts.init_seed,
        train: opts.train.clone(),
        steps,
        train_split_tokens,
        tokens_seen: steps * (opts.train.batch * opts.train.seq_len) as u64,
        validation_tokens: pairs.len(),
        validation_loss_f32,
        validation_loss_q8_0,
        validation_perplexity: validation_loss_q8_0.exp(),
        baselines: base,
        baseline_perplexity: (base.unigram.exp(), base.bigram.exp()),
        final_train_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        train_seconds,
        tokens_per_s: (done_here * (opts.train.batch * opts.train.seq_len) as u64) as f64
            / train_seconds.max(1e-9),
        resumed_from,
    };
    let json = serde_json::to_vec_pretty(&recipe).map_err(|e| TrainError::Io {
        path: opts.out.join("recipe.json"),
        source: std::io::Error::other(e),
    })?;
    write(&opts.out.join("recipe.json"), &json)?;
    Ok(recipe)
}

/// A frozen model from a bundle's weights.
pub fn net_from_bundle(cfg: &ModelConfig, bundle: &[u8]) -> Result<Net, TrainError> {
    let mut tensors = std::collections::BTreeMap::new();
    for (name, shape, v) in decode_bundle(bundle)
        .map_err(|e| TrainError::Compute(candle_core::Error::Msg(e.to_string())))?
    {
        tensors.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
    }
    Net::new(cfg.clone(), Params::new(tensors, |_| false)?)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(TrainError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(TrainError::io(path))
}

struct Row {
    step: u64,
    loss: f32,
    balance: f32,
    lr: f64,
    grad_norm: f64,
    ms: f64,
    validation: Option<f64>,
}

const CSV_HEADER: &str = "step,loss,balance,lr,grad_norm,step_ms,validation_loss";

impl Row {
    fn csv(&self) -> String {
        format!(
            "{},{:.5},{:.5},{:.6e},{:.4},{:.1},{}",
            self.step,
            self.loss,
            self.balance,
            self.lr,
            self.grad_norm,
            self.ms,
            self.validation
                .map(|v| format!("{v:.5}"))
                .unwrap_or_default()
        )
    }

    fn parse(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 7 {
            return None;
        }
        Some(Row {
            step: f[0].parse().ok()?,
            loss: f[1].parse().ok()?,
            balance: f[2].parse().ok()?,
            lr: f[3].parse().ok()?,
            grad_norm: f[4].parse().ok()?,
            ms: f[5].parse().ok()?,
            validation: if f[6].is_empty() {
                None
            } else {
                Some(f[6].parse().ok()?)
            },
        })
    }
}

/// Rows of an earlier run's CSV up to `upto` (the step the run resumes from).
fn read_history(path: &Path, upto: u64) -> Result<Vec<Row>, TrainError> {
    if upto == 0 || !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(Row::parse)
        .filter(|r| r.step <= upto)
        .collect())
}

fn rewrite_csv(path: &Path, rows: &[Row]) -> Result<std::fs::File, TrainError> {
    let mut f = std::fs::File::create(path).map_err(TrainError::io(path))?;
    writeln!(f, "{CSV_HEADER}").map_err(TrainError::io(path))?;
    for r in rows {
        writeln!(f, "{}", r.csv()).map_err(TrainError::io(path))?;
    }
    Ok(f)
}
