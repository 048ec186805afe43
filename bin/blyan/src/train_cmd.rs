//! `blyan train`: tokenizer, genesis model, and one expert.

use std::path::{Path, PathBuf};

use anyhow::Context;
use blyan_train::TrainConfig;
use blyan_train::corpus::{Split, Splitter};
use blyan_train::optim::OptimConfig;
use indicatif::{ProgressBar, ProgressStyle};

/// `blyan train …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TrainCommand {
    /// Train a byte-level BPE tokenizer on the corpus's train split.
    Tokenizer(TokenizerArgs),
    /// Train the whole MoE from random weights on the corpus's train split.
    Genesis(GenesisArgs),
    /// Fine-tune one expert of the chain's model on your own text into a candidate block.
    Expert(crate::expert_cmd::ExpertArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct TokenizerArgs {
    /// Corpus file (`REFERENCE<TAB>TEXT` lines; see scripts/fetch-corpus.sh) [default: the
    /// King James corpus bundled in the binary].
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// Vocabulary size, special tokens included.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Where to write tokenizer.json.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GenesisArgs {
    /// Corpus file [default: the King James corpus bundled in the binary].
    #[arg(long, value_name = "FILE")]
    corpus: Option<PathBuf>,
    /// The tokenizer (from `blyan train tokenizer`).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output directory; a run found there is resumed from its newest checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps in total (the defaults are the shipped genesis recipe).
    #[arg(long, default_value_t = 900)]
    steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 80)]
    warmup: u64,
    /// Weight of the router's load-balancing loss.
    #[arg(long, default_value_t = 0.01)]
    balance_coef: f64,
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = blyan_chain::genesis::GENESIS_SEED)]
    seed: u64,
    /// Steps between validation scores.
    #[arg(long, default_value_t = 150)]
    eval_every: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Print the recipe as JSON at the end.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(data_dir: &Path, cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Tokenizer(args) => tokenizer(&args),
        TrainCommand::Genesis(args) => genesis(&args),
        TrainCommand::Expert(args) => crate::expert_cmd::run(data_dir, args),
    }
}

fn tokenizer(args: &TokenizerArgs) -> anyhow::Result<()> {
    let corpus = crate::bundled::corpus(args.corpus.as_deref())?;
    let texts: Vec<String> = corpus
        .documents(Split::Train, Splitter::Genesis)
        .map(|d| d.text())
        .collect();
    let json =
        blyan_train::bpe::train_tokenizer(texts.iter().map(String::as_str), args.vocab_size)?;
    std::fs::write(&args.out, &json).with_context(|| format!("writing {}", args.out.display()))?;
    let tok = blyan_tokenizer::Tokenizer::from_json(&json)?;
    println!(
        "wrote {} ({} tokens, sha256 {})",
        args.out.display(),
        tok.vocab_size(),
        blyan_primitives::Hash::of(&json)
    );
    Ok(())
}

fn genesis(args: &GenesisArgs) -> anyhow::Result<()> {
    let corpus = crate::bundled::corpus(args.corpus.as_deref())?;
    let tokenizer = std::fs::read(&args.tokenizer)
        .with_context(|| format!("reading {}", args.tokenizer.display()))?;
    let meta = blyan_train::genesis::genesis_meta(tokenizer)?;
    let opts = blyan_train::genesis::GenesisOptions {
        out: args.out.clone(),
        train: TrainConfig {
            seed: args.seed,
            batch: args.batch,
            seq_len: args.seq_len,
            balance_coef: args.balance_coef,
            optim: OptimConfig {
                lr: args.lr,
                min_lr_ratio: 0.1,
                warmup_steps: args.warmup,
                total_steps: args.steps,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                clip_norm: 1.0,
            },
        },
        init_seed: args.seed,
        eval_every: args.eval_every,
        checkpoint_every: args.checkpoint_every,
    };
    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} steps, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut last_val = None;
    let recipe = blyan_train::genesis::train_genesis(&corpus, &meta, &opts, |r, val| {
        if val.is_some() {
            last_val = val;
        }
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.3}{} {:.0} tok/s",
            r.loss,
            last_val.map(|v| format!(" val {v:.3}")).unwrap_or_default(),
            r.tokens as f64 / r.elapsed.as_secs_f64().max(1e-9)
        ));
    })?;
    bar.finish();
    if args.json {
        println!("{}", serde_json::to_string(&recipe)?);
    } else {
        println!(
            "{} steps; validation loss {:.4} (f32) / {:.4} (Q8_0, shipped), perplexity {:.1}; \
             unigram {:.1}, bigram {:.1}",
            recipe.steps,
            recipe.validation_loss_f32,
            recipe.validation_loss_q8_0,
            recipe.validation_perplexity,
            recipe.baseline_perplexity.0,
            recipe.baseline_perplexity.1
        );
        println!("wrote {}", args.out.display());
    }
    Ok(())
}
