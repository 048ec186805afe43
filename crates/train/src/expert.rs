//! Fine-tuning one expert of the chain's model on a contributor's text.
//!
//! Only the expert's three matrices are variables; the router, attention, norms, embeddings
//! and every other expert are constants, so their gradients are never computed. The text is
//! split by line: every tenth non-empty line is held out to measure progress, the rest is
//! trained on. Each [`ExpertTraining::step`] is one optimizer update on a small batch
//! (tens to a couple of hundred milliseconds on two cores), the point at which a caller can
//! yield to other work.

use blyan_chain::Store;
use blyan_chain::spec::{MetaPayload, expert_group_name};
use blyan_model::ModelConfig;
use blyan_primitives::{ExpertId, Hash};
use blyan_tokenizer::Tokenizer;

use crate::candidate::{Candidate, Manifest};
use crate::data::TokenStream;
use crate::net::{Net, Params};
use crate::optim::OptimConfig;
use crate::weights::{HeadWeights, head_weights, values};
use crate::{StepReport, TrainConfig, TrainError, Trainer};

/// Largest training data file, in bytes.
pub const DATA_LEN_MAX: u64 = 64 << 20;

/// One line in this many is held out for evaluation.
const EVAL_EVERY_LINES: usize = 10;

/// Settings of an expert fine-tuning run.
#[derive(Clone, Debug)]
pub struct ExpertOptions {
    /// The expert to train.
    pub expert: ExpertId,
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per micro-step: each optimizer step runs as `batch / micro_rows`
    /// micro-steps (forward and backward over that many sequences, gradients summed), each
    /// one a yield point.
    pub micro_rows: usize,
}

/// Sequences per micro-step by default. On this project's 2-core reference machine a
/// micro-step of 2 × 48 tokens measured p50 81 ms / p90 97 ms for an expert in layer 0 (the
/// deepest backward pass) and 53 / 64 ms in layer 2 (docs/BENCHMARKS.md), inside the
/// 50–200 ms a serving node can yield for.
pub const MICRO_ROWS_DEFAULT: usize = 2;

/// Optimizer steps by default.
pub const STEPS_DEFAULT: u64 = 100;
/// Peak learning rate by default.
pub const LR_DEFAULT: f64 = 1e-3;
/// Sequences per optimizer step by default.
///
/// Large on purpose: only about a quarter of the positions route to any one expert, so a
/// step over 32 × 64 tokens gives the expert ~500 positions of gradient. On the trained
/// genesis, 100 steps of 4 × 48 tokens at this learning rate left most experts no better on
/// held-out text, while 32 × 64 improved every expert measured by 20–30 basis points of the
/// whole model's loss, which Proof of Learning's 64-item sample detects (docs/BENCHMARKS.md).
pub const BATCH_DEFAULT: usize = 32;
/// Tokens per sequence by default.
pub const SEQ_LEN_DEFAULT: usize = 64;

impl ExpertOptions {
    /// Defaults for `expert`: [`STEPS_DEFAULT`] steps at [`LR_DEFAULT`], batches of
    /// [`BATCH_DEFAULT`] × [`SEQ_LEN_DEFAULT`] tokens in micro-steps of
    /// [`MICRO_ROWS_DEFAULT`] sequences.
    pub fn new(expert: ExpertId) -> ExpertOptions {
        ExpertOptions {
            expert,
            steps: STEPS_DEFAULT,
            lr: LR_DEFAULT,
            seed: 0,
            batch: BATCH_DEFAULT,
            seq_len: SEQ_LEN_DEFAULT,
            micro_rows: MICRO_ROWS_DEFAULT,
        }
    }
}

/// Checks that `bytes` is usable text: not empty, not binary, not oversized.
pub fn check_text(bytes: &[u8]) -> Result<&str, TrainError> {
    if bytes.len() as u64 > DATA_LEN_MAX {
        return Err(TrainError::DataTooLarge {
            len: bytes.len() as u64,
            limit: DATA_LEN_MAX,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| TrainError::BinaryData {
        reason: e.to_string(),
    })?;
    if let Some(i) = text
        .bytes()
        .position(|b| b == 0 || (b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t' | 0x0c)))
    {
        return Err(TrainError::BinaryData {
            reason: format!("control byte 0x{:02x} at offset {i}", bytes[i]),
        });
    }
    if text.trim().is_empty() {
        return Err(TrainError::EmptyData);
    }
    Ok(text)
}

/// A fine-tuning run in progress.
#[derive(Debug)]
pub struct ExpertTraining {
    trainer: Trainer,
    eval: TokenStream,
    expert: ExpertId,
    parent: Hash,
    data_sha256: Hash,
    data_bytes: u64,
    train_tokens: u64,
    eval_loss_before: f64,
    opts: ExpertOptions,
    warmup: u64,
}

impl ExpertTraining {
    /// Loads the chain's current model and prepares to train `opts.expert` on `data`.
    pub fn new(
        store: &Store,
        data: &[u8],
        opts: ExpertOptions,
    ) -> Result<ExpertTraining, TrainError> {
        let text = check_text(data)?;
        if opts.steps == 0 {
            return Err(TrainError::invalid("steps", "must be at least 1"));
        }
        if opts.micro_rows == 0 {
            return Err(TrainError::invalid("micro_rows", "must be at least 1"));
        }
        let HeadWeights {
            meta,
            tensors,
            heads,
        } = head_weights(store)?;
        let cfg = ModelConfig::from_spec(&meta.spec);
        let id = opts.expert;
        if usize::from(id.layer) >= cfg.layers || usize::from(id.expert) >= cfg.experts {
            return Err(TrainError::UnknownExpert {
                layer: id.layer,
                expert: id.expert,
                layers: cfg.layers,
                experts: cfg.experts,
            });
        }
        let group = expert_group_name(id);
        let parent = *heads.get(&group).ok_or(TrainError::NoModel)?;
        let (train, eval) = split_text(&meta, text, opts.seq_len)?;
        let prefix = format!("{group}.");
        let params = Params::new(tensors, |n| n.starts_with(&prefix))?;
        let net = Net::new(cfg, params)?;
        let warmup = (opts.steps / 10).clamp(1, 20);
        let train_cfg = TrainConfig {
            seed: opts.seed,
            batch: opts.batch,
            seq_len: opts.seq_len,
            balance_coef: 0.0,
            optim: OptimConfig {
                lr: opts.lr,
                min_lr_ratio: 0.1,
                warmup_steps: warmup,
                total_steps: opts.steps,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
                clip_norm: 1.0,
            },
        };
        let train_tokens = train.len() as u64;
        let trainer = Trainer::new(net, train, train_cfg)?;
        let eval_loss_before = trainer.eval(&eval)?;
        Ok(ExpertTraining {
            trainer,
            eval,
            expert: id,
            parent,
            data_sha256: Hash::of(data),
            data_bytes: data.len() as u64,
            train_tokens,
            eval_loss_before,
            opts,
            warmup,
        })
    }

    /// Held-out loss of the chain's version, nats per token.
    pub fn eval_loss_before(&self) -> f64 {
        self.eval_loss_before
    }

    /// Held-out loss of the expert as trained so far.
    pub fn eval_loss(&self) -> Result<f64, TrainError> {
        self.trainer.eval(&self.eval)
    }

    /// Tokens in the training and held-out parts.
    pub fn token_counts(&self) -> (u64, u64) {
        (self.train_tokens, self.eval.len() as u64)
    }

    /// Steps done.
    pub fn steps(&self) -> u64 {
        self.trainer.steps()
    }

    /// Whether every step has been taken.
    pub fn is_done(&self) -> bool {
        self.trainer.steps() >= self.opts.steps
    }

    /// One micro-step, the yield point: forward and backward over the next `micro_rows`
    /// sequences. Returns the step's report when this micro-step completed an optimizer
    /// step.
    pub fn step(&mut self) -> Result<Option<StepReport>, TrainError> {
        self.trainer.micro_step(self.opts.micro_rows)
    }

    /// The candidate: the expert's tensors now, its parent and the manifest.
    pub fn candidate(&self) -> Result<Candidate, TrainError> {
        let mut tensors = Vec::new();
        for (name, var) in self.trainer.net().params.vars() {
            let t = var.as_tensor();
            tensors.push((name.clone(), t.dims().to_vec(), values(t)?));
        }
        let cfg = self.trainer.config();
        Ok(Candidate {
            expert: self.expert,
            parent: self.parent,
            tensors,
            manifest: Manifest {
                data_sha256: self.data_sha256,
                data_bytes: self.data_bytes,
                train_tokens: self.train_tokens,
                eval_tokens: self.eval.len() as u64,
                seed: cfg.seed,
                steps: self.trainer.steps(),
                lr: cfg.optim.lr,
                batch: cfg.batch,
                seq_len: cfg.seq_len,
                micro_rows: self.opts.micro_rows.min(cfg.batch),
                warmup_steps: self.warmup,
                weight_decay: cfg.optim.weight_decay,
                clip_norm: cfg.optim.clip_norm,
                eval_loss_before: self.eval_loss_before,
                eval_loss_after: self.eval_loss()?,
                trainer: concat!("blyan-train ", env!("CARGO_PKG_VERSION")).into(),
            },
        })
    }
}

/// Tokenizes `text` line by line into a training and a held-out stream (every tenth
/// non-empty line), each line as `<s> line </s>`.
fn split_text(
    meta: &MetaPayload,
    text: &str,
    seq_len: usize,
) -> Result<(TokenStream, TokenStream), TrainError> {
    let tok =
        Tokenizer::from_json(&meta.tokenizer).map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() < EVAL_EVERY_LINES {
        return Err(TrainError::DataTooSmall {
            detail: format!(
                "{} non-empty lines; at least {EVAL_EVERY_LINES} are needed (one in \
                 {EVAL_EVERY_LINES} is held out)",
                lines.len()
            ),
        });
    }
    let (bos, eos) = (meta.spec.bos_token_id, meta.spec.eos_token_id);
    let held = |i: &usize| i % EVAL_EVERY_LINES == EVAL_EVERY_LINES - 1;
    let train = TokenStream::from_documents(
        &tok,
        lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !held(i))
            .map(|(_, l)| *l),
        bos,
        eos,
    )?;
    let eval = TokenStream::from_documents(
        &tok,
        lines
            .iter()
            .enumerate()
            .filter(|(i, _)| held(i))
            .map(|(_, l)| *l),
        bos,
        eos,
    )?;
    for (part, s) in [("training", &train), ("held-out", &eval)] {
        if s.len() < seq_len + 1 {
            return Err(TrainError::DataTooSmall {
                detail: format!(
                    "the {part} part has {} tokens; it needs at least {}",
                    s.len(),
                    seq_len + 1
                ),
            });
        }
    }
    Ok((train, eval))
}
