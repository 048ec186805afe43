//! `blyan train expert`: fine-tune one expert into a candidate file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use blyan_primitives::ExpertId;
use blyan_train::expert::{ExpertOptions, ExpertTraining};

/// Arguments of `blyan train expert`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExpertArgs {
    /// The expert to train, `LAYER.EXPERT`.
    #[arg(long, value_name = "L.E")]
    expert: ExpertId,
    /// Your training text (UTF-8, one passage per line; every tenth line is held out).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = blyan_train::expert::STEPS_DEFAULT)]
    steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = blyan_train::expert::LR_DEFAULT)]
    lr: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = blyan_train::expert::BATCH_DEFAULT)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = blyan_train::expert::SEQ_LEN_DEFAULT)]
    seq_len: usize,
    /// Sequences per micro-step (the yield point); a step sums the gradients of its
    /// micro-steps.
    #[arg(long, default_value_t = blyan_train::expert::MICRO_ROWS_DEFAULT)]
    micro_rows: usize,
    /// Where to write the candidate file.
    #[arg(long, value_name = "CANDIDATE")]
    out: PathBuf,
    /// Print one JSON object instead of progress.
    #[arg(long)]
    json: bool,
}

/// A trainer error with its stable code in front: `[empty_data] the training data is empty`.
pub(crate) fn coded(e: blyan_train::TrainError) -> anyhow::Error {
    anyhow::anyhow!("[{}] {e}", e.code())
}

pub(crate) fn run(data_dir: &Path, args: ExpertArgs) -> anyhow::Result<()> {
    let store = crate::open_store(data_dir)?;
    let data =
        std::fs::read(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    let opts = ExpertOptions {
        expert: args.expert,
        steps: args.steps,
        lr: args.lr,
        seed: args.seed,
        batch: args.batch,
        seq_len: args.seq_len,
        micro_rows: args.micro_rows,
    };
    let mut run = ExpertTraining::new(&store, &data, opts).map_err(coded)?;
    let (train_tokens, eval_tokens) = run.token_counts();
    if !args.json {
        eprintln!(
            "expert {}: {train_tokens} training tokens, {eval_tokens} held out; held-out loss {:.4}",
            args.expert,
            run.eval_loss_before()
        );
    }
    let start = Instant::now();
    let mut tokens = 0u64;
    // Latency of each micro-step, the unit a serving node would yield between.
    let mut step_ms = Vec::new();
    while !run.is_done() {
        let micro = Instant::now();
        let report = run.step().map_err(coded)?;
        step_ms.push(micro.elapsed().as_secs_f64() * 1e3);
        let Some(r) = report else { continue };
        tokens += r.tokens as u64;
        if !args.json && (r.step % 10 == 0 || run.is_done()) {
            eprintln!("step {:>5}  loss {:.4}  lr {:.2e}", r.step, r.loss, r.lr);
        }
    }
    let train_s = start.elapsed().as_secs_f64();
    let candidate = run.candidate()?;
    let bytes = candidate.encode()?;
    let tmp = args.out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    step_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| step_ms[((step_ms.len() - 1) as f64 * p).round() as usize];
    if args.json {
        let out = serde_json::json!({
            "eval_loss_before": candidate.manifest.eval_loss_before,
            "eval_loss_after": candidate.manifest.eval_loss_after,
            "steps": candidate.manifest.steps,
            "tokens": tokens,
            "tokens_per_s": tokens as f64 / train_s.max(1e-9),
            "candidate": args.out,
            "expert": args.expert.to_string(),
            "parent": candidate.parent,
            "micro_steps": step_ms.len(),
            "step_ms": {"p50": pct(0.5), "p90": pct(0.9), "max": pct(1.0)},
        });
        println!("{out}");
    } else {
        println!(
            "held-out loss {:.4} -> {:.4}; {} steps, {:.0} tokens/s; micro-step p50 {:.0} ms, max {:.0} ms",
            candidate.manifest.eval_loss_before,
            candidate.manifest.eval_loss_after,
            candidate.manifest.steps,
            tokens as f64 / train_s.max(1e-9),
            pct(0.5),
            pct(1.0)
        );
        println!(
            "wrote candidate {} (parent {})",
            args.out.display(),
            candidate.parent
        );
    }
    Ok(())
}
