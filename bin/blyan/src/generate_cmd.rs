//! `blyan generate`: run the chain's model on a prompt and stream the text.

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use blyan_model::{GenerateRequest, Generation, LoadOptions, Model, Precision, SamplingParams};
use blyan_primitives::{ExpertId, Hash};
use blyan_tokenizer::Tokenizer;

/// Arguments of `blyan generate`.
#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Seed of the sampler [default: drawn from the clock and reported].
    #[arg(long)]
    seed: Option<u64>,
    /// Softmax temperature, 0 to 2; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Sample among the k most likely tokens only; 0 means all.
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Penalty on tokens already present, in (0, 10]; 1 is off.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Stop before this text (repeatable, up to 4).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// Never end on the end-of-sequence token: generate until --max-tokens, a stop sequence
    /// or the context window (for timing a fixed number of tokens).
    #[arg(long)]
    ignore_eos: bool,
    /// Weight precision.
    #[arg(long, default_value = "int8", value_parser = ["f32", "int8"])]
    precision: String,
    /// Serve this version of an expert instead of its head (repeatable): `L.E=BLOCK_HASH`.
    #[arg(long, value_name = "L.E=HASH", value_parser = parse_pin)]
    expert_version: Vec<(ExpertId, Hash)>,
    /// Byte budget of the expert cache, in MiB.
    #[arg(long, default_value_t = 256)]
    expert_cache_mib: usize,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

fn parse_pin(s: &str) -> Result<(ExpertId, Hash), String> {
    let (id, hash) = s
        .split_once('=')
        .ok_or_else(|| format!("expected L.E=HASH, got {s:?}"))?;
    let id: ExpertId = id.parse().map_err(|e| format!("{id:?}: {e}"))?;
    let hash: Hash = hash.parse().map_err(|e| format!("{hash:?}: {e}"))?;
    Ok((id, hash))
}

pub(crate) fn run(data_dir: &Path, args: GenerateArgs) -> anyhow::Result<()> {
    let store = Arc::new(crate::open_store(data_dir)?);
    let (_, meta) = store.meta()?.with_context(|| {
        format!(
            "no network in {}; run `blyan init` first",
            data_dir.display()
        )
    })?;
    let tokenizer = Tokenizer::from_json(&meta.tokenizer).context("loading the tokenizer")?;
    let precision: Precision = args.precision.parse().map_err(anyhow::Error::msg)?;
    let model = Model::load(
        store,
        LoadOptions {
            precision,
            expert_cache_bytes: args.expert_cache_mib << 20,
            expert_versions: args.expert_version.iter().copied().collect(),
            hosts: None,
        },
    )
    .context("loading the model from the chain")?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let request = GenerateRequest {
        prompt: args.prompt,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            repetition_penalty: args.repetition_penalty,
            seed,
            ignore_eos: args.ignore_eos,
        },
        stop: args.stop,
    };
    let mut generation = Generation::new(&model, &tokenizer, &request)?;
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    for step in generation.by_ref() {
        let step = step?;
        if !args.json {
            stdout.write_all(step.text.as_bytes())?;
            stdout.flush()?;
        }
        text.push_str(&step.text);
    }
    let summary = generation.summary();
    let cache = model.cache_stats();
    let tokens_per_s = summary.decode_tokens_per_s();
    if args.json {
        let experts_used: BTreeMap<String, u64> = summary
            .experts_used
            .iter()
            .map(|(id, n)| (id.to_string(), *n))
            .collect();
        let out = serde_json::json!({
            "text": text,
            "tokens": summary.completion_tokens,
            "prompt_tokens": summary.prompt_tokens,
            "tokens_per_s": tokens_per_s,
            "time_to_first_token_ms": summary.time_to_first_token.as_secs_f64() * 1e3,
            "finish_reason": summary.finish_reason,
            "seed": seed,
            "precision": precision,
            "q8_kernel": blyan_model::q8_kernel(),
            "expert_cache": {
                "hits": cache.hits,
                "misses": cache.misses,
                "evictions": cache.evictions,
                "bytes": cache.bytes,
            },
            "experts_used": experts_used,
        });
        writeln!(stdout, "{out}")?;
    } else {
        writeln!(stdout)?;
        eprintln!(
            "{} tokens ({:?}), {:.0} tok/s, first token {:.1} ms, {precision}, seed {seed}, \
             expert cache {} hits / {} misses",
            summary.completion_tokens,
            summary.finish_reason,
            tokens_per_s,
            summary.time_to_first_token.as_secs_f64() * 1e3,
            cache.hits,
            cache.misses,
        );
    }
    Ok(())
}
