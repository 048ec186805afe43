//! Scores windows of a text file against a candidate expert file with the deterministic
//! evaluator and prints the paired evidence.
//!
//! `cargo run --release -p blyan-pol --example pol_probe -- DATA_DIR TEXT CANDIDATE [ITEMS] [TOKENS] [THREADS]`

use std::time::Instant;

use blyan_pol::eval::ExpertWeights;
use blyan_pol::snapshot::Snapshot;
use blyan_pol::{Pool, Rules, judge};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let store = blyan_chain::Store::open(std::path::Path::new(&args[1]).join("chain"))?;
    let text = std::fs::read_to_string(&args[2])?;
    let cand = std::fs::read(&args[3])?;
    let items: usize = args.get(4).map_or(Ok(256), |s| s.parse())?;
    let tokens_per: usize = args.get(5).map_or(Ok(64), |s| s.parse())?;
    let threads: usize = args.get(6).map_or(Ok(2), |s| s.parse())?;
    let (_, meta) = store.meta()?.ok_or("no model")?;
    let tok = blyan_tokenizer::Tokenizer::from_json(&meta.tokenizer)?;
    let mut ids = Vec::new();
    for line in text.lines() {
        ids.push(meta.spec.bos_token_id);
        ids.extend(tok.encode(line)?);
        ids.push(meta.spec.eos_token_id);
    }
    let pool = Pool::from_tokens(&ids, tokens_per);
    println!("{} tokens, {} items of {tokens_per}", ids.len(), pool.len());
    let t0 = Instant::now();
    let snap = Snapshot::at(&store, None)?;
    let model = snap.model(&store)?;
    println!("model loaded in {:.2?}", t0.elapsed());
    let st = safetensors::SafeTensors::deserialize(&cand)?;
    let get = |w: &str| -> Vec<f32> {
        let name = st
            .names()
            .into_iter()
            .find(|n| n.ends_with(&format!(".{w}.weight")))
            .unwrap()
            .to_string();
        blyan_tensor::f32_from_bytes(st.tensor(&name).unwrap().data())
    };
    let (_, md) = safetensors::SafeTensors::read_metadata(&cand)?;
    let json = md
        .metadata()
        .as_ref()
        .unwrap()
        .get("blyan.candidate")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(json)?;
    let expert: blyan_primitives::ExpertId = v["expert"].as_str().unwrap().parse()?;
    let child = ExpertWeights {
        w1: get("w1"),
        w2: get("w2"),
        w3: get("w3"),
    };
    println!(
        "delta norm {} ppm",
        blyan_pol::delta_norm_ppm(model.expert(expert)?, &child)
    );
    let tokens: Vec<Vec<u32>> = (0..items.min(pool.len()) as u32)
        .map(|i| pool.tokens(i).unwrap())
        .collect();
    let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let t0 = Instant::now();
    let scores = model.score_all(expert, &child, &refs, threads)?;
    let dt = t0.elapsed();
    let j = judge(&scores, Rules::default())?;
    println!(
        "{} items in {:.2?} ({threads} threads): {:?}",
        refs.len(),
        dt,
        j.reason
    );
    println!(
        "n {} mean {:?} lcb {:?} gain_bps {} mixture {} -> {}",
        j.sums.n,
        j.decision.as_ref().map(|d| d.mean_micro),
        j.decision.as_ref().map(|d| d.lcb_micro),
        j.gain_bps,
        j.mixture_parent,
        j.mixture_child
    );
    let pos: u64 = scores.iter().map(|s| u64::from(s.positions)).sum();
    println!(
        "parent mean loss {:.4} nats/token",
        j.mixture_parent as f64 / 1e6 / pos as f64
    );
    Ok(())
}
