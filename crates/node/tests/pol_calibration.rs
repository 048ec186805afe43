//! Calibration of the Proof-of-Learning decision on the trained genesis model and the real
//! hidden pool (the corpus split keyed by a fixed test secret, as `blyan init` keys it with a
//! random one): zero-gain candidates (the head plus tiny noise) must almost never pass, and
//! honest 100-step fine-tunes with default settings on the public train split almost always
//! must; a candidate overfitted to the public validation split must not be paid, and one
//! fine-tuned on the documents of revealed hidden items is refused as `suspected_leak`.
//!
//! Each candidate is judged exactly as a submission is (same evaluator, rules and sequential
//! sample) on its own seeded draw from the pool; draws are not retired here, so a hundred
//! candidates fit in one pool. The measured rates and the spread of the paired differences
//! are printed (`--nocapture`) and recorded in docs/BENCHMARKS.md.

use std::collections::BTreeSet;
use std::path::Path;

use blyan_chain::{Store, genesis};
use blyan_node::pol::{ITEM_TOKENS, PolSettings, pools_of};
use blyan_pol::eval::ExpertWeights;
use blyan_pol::record::{Evaluation, check_contamination, evaluate};
use blyan_pol::snapshot::{Snapshot, block_tensors, expert_weights};
use blyan_pol::{Judgement, Pool, Reason};
use blyan_primitives::{ExpertId, Hash};
use blyan_train::corpus::{Corpus, Split, Splitter};
use blyan_train::expert::{ExpertOptions, ExpertTraining};
use rand::{Rng, SeedableRng};

const SPEC: &[u8] = include_bytes!("../../../genesis/spec.json");
const TOKENIZER: &[u8] = include_bytes!("../../../genesis/tokenizer.json");
const WEIGHTS: &[u8] = include_bytes!("../../../genesis/weights.q8");

/// The test's pool secret (a node makes a random one at `init`).
const SECRET: [u8; 32] = [0x5e; 32];

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    corpus: Corpus,
    pool: Pool,
    validation: Pool,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("chain")).expect("store");
    genesis::init(
        &store,
        genesis::bundled_genesis(
            SPEC,
            TOKENIZER,
            WEIGHTS,
            &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
        )
        .expect("genesis"),
    )
    .expect("init");
    let corpus =
        Corpus::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/corpus/kjv.tsv"))
            .expect("corpus");
    let (pool, validation, source) = pools_of(&store, &corpus, &SECRET).expect("pools");
    eprintln!(
        "{source}: {} hidden items, {} validation items",
        pool.len(),
        validation.len()
    );
    Setup {
        _dir: dir,
        store,
        corpus,
        pool,
        validation,
    }
}

/// Judges `child` for `expert` against the head on the sequential draw of `seed`, as a
/// submission is, contamination check included.
fn judge(s: &Setup, expert: ExpertId, child: &ExpertWeights, seed: u64) -> Evaluation {
    judge_after(s, expert, child, seed, &BTreeSet::new())
}

/// [`judge`] with the items in `retired` already used.
fn judge_after(
    s: &Setup,
    expert: ExpertId,
    child: &ExpertWeights,
    seed: u64,
    retired: &BTreeSet<u32>,
) -> Evaluation {
    let settings = PolSettings::default();
    let rules = settings.rules();
    let snapshot = Snapshot::at(&s.store, None).expect("snapshot");
    let model = snapshot.model(&s.store).expect("model");
    let seed = Hash::of(&seed.to_le_bytes());
    let order = s
        .pool
        .draw_stages(
            seed,
            rules.stage_items as usize,
            usize::from(rules.stages),
            retired,
        )
        .expect("draw");
    let mut e = evaluate(
        &model,
        expert,
        child,
        &s.pool,
        &order,
        rules,
        settings.thread_count(),
    )
    .expect("evaluate");
    check_contamination(
        &model,
        expert,
        child,
        &s.validation,
        &seed,
        rules,
        &mut e,
        settings.thread_count(),
    )
    .expect("contamination check");
    e
}

/// The contamination check's figures, for the printed lines.
fn leak_figures(e: &Evaluation) -> String {
    match &e.leak {
        Some(l) => format!(
            "hidden − validation gain {:.4} nats/position ({:.1} standard errors, {} validation \
             items routed)",
            l.excess, l.z, l.sums.n
        ),
        None => "no contamination check".into(),
    }
}

fn head_weights(s: &Setup, expert: ExpertId) -> ExpertWeights {
    let head = s.store.expert_head(expert).expect("head").expect("expert");
    expert_weights(&block_tensors(&s.store, &head).expect("tensors")).expect("expert")
}

/// Mean and standard deviation of the per-item differences d (whole-item loss), nats.
fn spread(j: &Judgement) -> (f64, f64) {
    let n = j.sums.n as f64;
    let mean = j.sums.sum as f64 / n;
    let var = (j.sums.sum_sq as f64 - n * mean * mean) / (n - 1.0);
    (mean / 1e6, var.max(0.0).sqrt() / 1e6)
}

/// The candidate `opts` trains on `text`, with its held-out loss before and after.
fn train(s: &Setup, opts: ExpertOptions, text: &str) -> (ExpertWeights, f64, f64) {
    let mut run = ExpertTraining::new(&s.store, text.as_bytes(), opts).expect("training");
    while !run.is_done() {
        run.step().expect("step");
    }
    let c = run.candidate().expect("candidate");
    let (before, after) = (c.manifest.eval_loss_before, c.manifest.eval_loss_after);
    let tensors: Vec<(String, Vec<f32>)> = c.tensors.into_iter().map(|(n, _, v)| (n, v)).collect();
    (expert_weights(&tensors).expect("weights"), before, after)
}

/// Trains `expert` with default settings (batch-order seed 0) on the whole public train
/// split, judges it on the expert's own draw, prints the figures and says whether it was
/// accepted. Training and draw are deterministic, so an expert's outcome here is the same in
/// every test that uses this.
fn honest(s: &Setup, text: &str, expert: ExpertId) -> bool {
    let draw = 5_000 + u64::from(expert.layer) * 100 + u64::from(expert.expert);
    let started = std::time::Instant::now();
    let opts = ExpertOptions::new(expert);
    let (child, before, after) = train(s, opts, text);
    let judged = std::time::Instant::now();
    let e = judge(s, expert, &child, draw);
    let eval_s = judged.elapsed().as_secs_f64();
    let j = &e.judgement;
    let (mean, sd) = spread(j);
    eprintln!(
        "honest {expert}: held-out {before:.4} -> {after:.4}; {} after {} stage(s) (n {}, gain \
         {:.4} nats/position, lower bound {:.4}, item d mean {mean:.3} sd {sd:.3}, mixture {} \
         bps; {}; evaluation {eval_s:.1} s, all {:.0} s)",
        j.reason.as_str(),
        e.stages,
        j.sums.n,
        j.gain_per_position_micro() as f64 / 1e6,
        j.lcb_per_position_micro() as f64 / 1e6,
        j.gain_bps,
        leak_figures(&e),
        started.elapsed().as_secs_f64()
    );
    assert_ne!(j.reason, Reason::AcceptedPow);
    j.reason.accepted()
}

/// Lines of a split (keyed by the test secret), one document per line, `count` documents
/// from `skip`.
fn train_text(s: &Setup, split: Split, skip: usize, count: usize) -> String {
    s.corpus
        .documents(split, Splitter::Keyed(&SECRET))
        .skip(skip)
        .take(count)
        .map(|d| d.line() + "\n")
        .collect()
}

#[test]
fn zero_gain_candidates_almost_never_pass() {
    let s = setup();
    let trials = 100u64;
    let (mut accepted, mut first_look) = (0, 0);
    let mut sds = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for t in 0..trials {
        let expert = ExpertId::new((t % 4) as u16, ((t / 4) % 8) as u16);
        let head = head_weights(&s, expert);
        // Noise of one part in 10⁴ of each weight's size: no real change in behaviour.
        let mut noisy = |w: &[f32]| -> Vec<f32> {
            w.iter()
                .map(|&x| x + x.abs() * 1e-4 * (rng.random::<f32>() * 2.0 - 1.0))
                .collect()
        };
        let child = ExpertWeights {
            w1: noisy(&head.w1),
            w2: noisy(&head.w2),
            w3: noisy(&head.w3),
        };
        let e = judge(&s, expert, &child, 1_000 + t);
        let j = &e.judgement;
        if j.reason.accepted() {
            accepted += 1;
        }
        first_look += u64::from(e.stages == 1);
        if j.sums.n >= 2 {
            sds.push(spread(j).1);
        }
    }
    sds.sort_by(f64::total_cmp);
    eprintln!(
        "zero-gain: {accepted}/{trials} accepted, {first_look} stopped at the first look; \
         per-item d sd median {:.6} nats (max {:.6})",
        sds[sds.len() / 2],
        sds[sds.len() - 1]
    );
    assert!(
        accepted * 100 <= 2 * trials,
        "{accepted} of {trials} zero-gain candidates passed"
    );
    assert_eq!(
        first_look, trials,
        "a change this small cannot reach the minimum effect: one stage is all it may spend"
    );
}

/// Honest 100-step fine-tunes with default settings on the (keyed) public train split, from
/// layers 0, 1 and 3, are accepted, and pass the contamination check; 3.7's gain is small
/// (about 0.006 nats per position). Training and draws are deterministic, so these outcomes
/// are the ones recorded in docs/BENCHMARKS.md for the same experts; this test guards the
/// pipeline that produces them: the trainer's defaults, the evaluator, the sequential
/// evaluation, the contamination check and the decision.
#[test]
fn honest_fine_tunes_are_accepted() {
    let s = setup();
    let text = train_text(&s, Split::Train, 0, usize::MAX);
    let experts = [
        ExpertId::new(0, 1),
        ExpertId::new(1, 3),
        ExpertId::new(3, 7),
    ];
    let accepted = experts.iter().filter(|&&e| honest(&s, &text, e)).count();
    assert_eq!(accepted, experts.len(), "honest candidates were refused");
}

/// The acceptance rate of honest default fine-tunes over many experts (target ≥ 90%). Run
/// with `cargo test -p blyan-node --test pol_calibration -- --ignored --nocapture`;
/// `POL_HONEST_EXPERTS=L.E,…` picks the experts (default: 20 of the 32).
#[test]
#[ignore = "trains 20 experts: over an hour on two cores"]
fn honest_acceptance_rate() {
    let s = setup();
    let text = train_text(&s, Split::Train, 0, usize::MAX);
    let experts: Vec<ExpertId> = match std::env::var("POL_HONEST_EXPERTS") {
        Ok(list) => list
            .split(',')
            .map(|e| e.trim().parse().expect("L.E"))
            .collect(),
        Err(_) => (0..20u16)
            .map(|i| ExpertId::new(i % 4, (i * 3 + i / 4) % 8))
            .collect(),
    };
    let mut accepted = 0;
    for (i, &e) in experts.iter().enumerate() {
        accepted += usize::from(honest(&s, &text, e));
        eprintln!("honest so far: {accepted}/{}", i + 1);
    }
    assert!(
        accepted * 10 >= experts.len() * 9,
        "{accepted} of {} honest candidates accepted",
        experts.len()
    );
}

/// A candidate that memorised the public validation split is not paid for it.
#[test]
fn an_overfit_candidate_is_not_paid() {
    let s = setup();
    let expert = ExpertId::new(2, 5);
    // Memorising twenty validation documents: 300 steps at a high rate on small batches.
    let text = train_text(&s, Split::Validation, 0, 20);
    let opts = ExpertOptions {
        steps: 300,
        lr: 1e-2,
        seed: 99,
        batch: 4,
        seq_len: 48,
        ..ExpertOptions::new(expert)
    };
    let (child, _, _) = train(&s, opts, &text);
    let e = judge(&s, expert, &child, 9_999);
    let j = &e.judgement;
    let (mean, sd) = spread(j);
    eprintln!(
        "overfit to validation: {} after {} stage(s) (item d mean {mean:.4}, sd {sd:.4}, \
         mixture {} bps)",
        j.reason.as_str(),
        e.stages,
        j.gain_bps
    );
    assert!(
        !j.reason.accepted() || j.gain_bps == 0,
        "an overfit candidate was accepted with a {} bps gain",
        j.gain_bps
    );
    assert_ne!(j.reason, Reason::AcceptedPow);
}

/// The hidden documents (one line each) that hold any of `items`: what a contributor who
/// reads those items in their reveal finds by searching the public corpus for them.
fn documents_of(s: &Setup, items: &[u32]) -> Vec<String> {
    let (_, meta) = s.store.meta().expect("meta").expect("spec");
    let tok = blyan_tokenizer::Tokenizer::from_json(&meta.tokenizer).expect("tokenizer");
    let docs: Vec<String> = s
        .corpus
        .documents(Split::Hidden, Splitter::Keyed(&SECRET))
        .map(|d| d.line())
        .collect();
    // Each document is BOS, its tokens, EOS in the pool's stream; item i is tokens
    // [i·64, (i+1)·64) of it.
    let mut spans = Vec::with_capacity(docs.len());
    let mut at = 0usize;
    for d in &docs {
        let len = tok.encode(d).expect("encode").len() + 2;
        spans.push(at..at + len);
        at += len;
    }
    assert_eq!(
        at / ITEM_TOKENS,
        s.pool.len(),
        "the spans cover the pool's stream"
    );
    docs.iter()
        .zip(&spans)
        .filter(|(_, span)| {
            items.iter().any(|&i| {
                let item = i as usize * ITEM_TOKENS..(i as usize + 1) * ITEM_TOKENS;
                item.start < span.end && span.start < item.end
            })
        })
        .map(|(d, _)| d.clone())
        .collect()
}

/// A leak: the fine-tune of `expert` on the documents of the items an earlier evaluation
/// revealed (two stages of the draw `revealed_seed`), judged on a later draw from the items
/// left. About three passes over those documents (400 steps of 8 × 64 tokens at lr 10⁻²;
/// `POL_LEAK_STEPS` and `POL_LEAK_LR` override): one pass at a gentler rate (150 steps, lr
/// 3 · 10⁻³) only generalises, gaining as much on validation items as on hidden ones, and is
/// no leak to speak of (docs/BENCHMARKS.md).
fn leaked(s: &Setup, expert: ExpertId, revealed_seed: &[u8], draw: u64) -> Evaluation {
    let rules = PolSettings::default().rules();
    let revealed = s
        .pool
        .draw_stages(
            Hash::of(revealed_seed),
            rules.stage_items as usize,
            2,
            &BTreeSet::new(),
        )
        .expect("draw");
    let docs = documents_of(s, &revealed);
    let text: String = docs.iter().map(|d| d.clone() + "\n").collect();
    let env = |name: &str, default: f64| -> f64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let opts = ExpertOptions {
        steps: env("POL_LEAK_STEPS", 400.0) as u64,
        lr: env("POL_LEAK_LR", 1e-2),
        seed: 7,
        batch: 8,
        seq_len: 64,
        ..ExpertOptions::new(expert)
    };
    let (child, before, after) = train(s, opts, &text);
    let retired: BTreeSet<u32> = revealed.into_iter().collect();
    let e = judge_after(s, expert, &child, draw, &retired);
    let j = &e.judgement;
    eprintln!(
        "leaked {expert} ({} revealed documents): held-out {before:.4} -> {after:.4}; {} after \
         {} stage(s) (n {}, gain {:.4} nats/position, mixture {} bps; {})",
        docs.len(),
        j.reason.as_str(),
        e.stages,
        j.sums.n,
        j.gain_per_position_micro() as f64 / 1e6,
        j.gain_bps,
        leak_figures(&e)
    );
    e
}

/// A contributor who reads an earlier verdict's reveal, finds those items' documents in the
/// public corpus and fine-tunes on them gains far more on the hidden items left in those
/// documents than on anything else: the learning test alone would pay for it; the
/// contamination check refuses it.
#[test]
fn a_candidate_trained_on_revealed_hidden_documents_is_a_suspected_leak() {
    let s = setup();
    // The first case of `leaked_candidates`.
    let e = leaked(&s, ExpertId::new(2, 6), b"reveal 0", 40_000);
    assert_eq!(e.judgement.reason, Reason::SuspectedLeak);
    assert!(e.leak.as_ref().is_some_and(|l| l.leak));
}

/// The contamination check over several leaked candidates (the margin is calibrated from
/// these and the honest runs' printed excess). `POL_LEAK_EXPERTS=L.E,…` picks the experts.
/// Run with `cargo test --release -p blyan-node --test pol_calibration leaked_candidates --
/// --ignored --nocapture`.
#[test]
#[ignore = "trains several experts: minutes each on two cores"]
fn leaked_candidates() {
    let s = setup();
    let experts: Vec<ExpertId> = std::env::var("POL_LEAK_EXPERTS")
        .unwrap_or_else(|_| "2.6,0.1,1.3,3.7,2.3,0.5".into())
        .split(',')
        .map(|e| e.trim().parse().expect("L.E"))
        .collect();
    let mut caught = 0;
    for (i, &e) in experts.iter().enumerate() {
        let seed = format!("reveal {i}");
        let ev = leaked(&s, e, seed.as_bytes(), 40_000 + i as u64);
        caught += usize::from(ev.judgement.reason == Reason::SuspectedLeak);
        eprintln!("leaks caught so far: {caught}/{}", i + 1);
    }
}
