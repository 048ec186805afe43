//! Streaming generation: determinism, stop sequences, limits, cancellation, bad requests.

use blyan_model::{
    FinishReason, GenerateRequest, Generation, Precision, SamplingParams, Step, Summary,
};

use crate::fixture::{Net, net};

fn run(net: &Net, precision: Precision, request: &GenerateRequest) -> (String, Vec<Step>, Summary) {
    let model = net.model(precision);
    let mut generation = Generation::new(&model, &net.tokenizer, request).unwrap();
    let steps: Vec<Step> = generation.by_ref().map(Result::unwrap).collect();
    let text = steps.iter().map(|s| s.text.as_str()).collect();
    (text, steps, generation.summary())
}

fn sampled(prompt: &str, seed: u64, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            repetition_penalty: 1.1,
            seed,
            ignore_eos: false,
        },
        ..GenerateRequest::new(prompt, max_tokens)
    }
}

#[test]
fn same_seed_same_text_and_another_seed_another() {
    let net = net(21);
    for precision in [Precision::F32, Precision::Int8] {
        let (a, steps, summary) = run(&net, precision, &sampled("The chain", 7, 30));
        let (b, _, _) = run(&net, precision, &sampled("The chain", 7, 30));
        let (c, _, _) = run(&net, precision, &sampled("The chain", 8, 30));
        assert_eq!(a, b, "{precision}");
        assert_ne!(a, c, "{precision}");
        assert_eq!(steps.last().unwrap().finish, summary.finish_reason.into());
        assert_eq!(summary.prompt_tokens, 1 + "The chain".len());
        assert!(summary.completion_tokens <= 30);
    }
}

#[test]
fn max_tokens_ends_with_length_and_the_stream_adds_up() {
    let net = net(22);
    let request = GenerateRequest {
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::new("abc", 12)
    };
    let (text, steps, summary) = run(&net, Precision::F32, &request);
    assert_eq!(summary.finish_reason, FinishReason::Length);
    assert_eq!(summary.completion_tokens, 12);
    assert_eq!(steps.iter().filter(|s| s.token.is_some()).count(), 12);
    // The streamed text is the decoding of the generated tokens.
    let ids: Vec<u32> = steps.iter().filter_map(|s| s.token).collect();
    assert_eq!(text, net.tokenizer.decode(&ids).unwrap());
    assert_eq!(
        steps.iter().filter(|s| s.finish.is_some()).count(),
        1,
        "exactly one final step"
    );
    assert!(steps.last().unwrap().finish.is_some());
}

#[test]
fn a_stop_sequence_cuts_the_output_before_it() {
    let net = net(23);
    let greedy = |stop: Vec<String>| GenerateRequest {
        sampling: SamplingParams::greedy(),
        stop,
        ..GenerateRequest::new("hello", 40)
    };
    let (full, _, _) = run(&net, Precision::F32, &greedy(vec![]));
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() >= 12, "{full:?}");
    // A two-character stop taken from the middle of the unstopped output.
    let (start, end) = (chars[8].0, chars[10].0);
    let stop = full[start..end].to_owned();
    let cut = full.find(&stop).unwrap();
    let (text, steps, summary) = run(&net, Precision::F32, &greedy(vec![stop.clone()]));
    assert_eq!(text, full[..cut], "stop {stop:?}");
    assert_eq!(summary.finish_reason, FinishReason::Stop);
    assert!(!steps.iter().any(|s| s.text.contains(&stop)));
}

#[test]
fn ignore_eos_runs_every_generation_to_its_token_limit() {
    let net = net(26);
    let model = net.model(Precision::F32);
    let eos = model.config().eos_token_id;
    // At temperature 2 the draws are nearly uniform, so end-of-sequence comes up now and then.
    let request = |seed, ignore_eos| GenerateRequest {
        sampling: SamplingParams {
            temperature: 2.0,
            seed,
            ignore_eos,
            ..SamplingParams::default()
        },
        ..GenerateRequest::new("e", 40)
    };
    let mut ended_early = 0;
    for seed in 0..40 {
        let (_, _, summary) = run(&net, Precision::F32, &request(seed, false));
        if summary.finish_reason == FinishReason::Stop {
            assert!(summary.completion_tokens < 40);
            ended_early += 1;
        }
        let (_, steps, summary) = run(&net, Precision::F32, &request(seed, true));
        assert_eq!(summary.finish_reason, FinishReason::Length, "seed {seed}");
        assert_eq!(summary.completion_tokens, 40, "seed {seed}");
        assert!(steps.iter().all(|s| s.token != Some(eos)), "seed {seed}");
    }
    // The masking is what made the difference: without it some of the same draws ended.
    assert!(ended_early > 0);
}

#[test]
fn cancelling_stops_between_tokens() {
    let net = net(24);
    let model = net.model(Precision::F32);
    let request = GenerateRequest {
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::new("x", 50)
    };
    let mut generation = Generation::new(&model, &net.tokenizer, &request).unwrap();
    let cancel = generation.cancel_token();
    let mut steps = 0;
    for step in generation.by_ref() {
        step.unwrap();
        steps += 1;
        if steps == 3 {
            cancel.cancel();
        }
    }
    assert_eq!(steps, 3);
    let summary = generation.summary();
    assert_eq!(summary.finish_reason, FinishReason::Cancelled);
    assert_eq!(summary.completion_tokens, 3);
}

#[test]
fn over_long_prompts_and_bad_parameters_are_refused_before_any_work() {
    let net = net(25);
    let model = net.model(Precision::F32);
    let context = model.config().context_len;
    // BOS + 62 bytes = 63 tokens leaves room for one: accepted, and ends with `length`.
    let fits = GenerateRequest::new("y".repeat(context - 2), 100);
    let mut generation = Generation::new(&model, &net.tokenizer, &fits).unwrap();
    let steps: Vec<Step> = generation.by_ref().map(Result::unwrap).collect();
    assert_eq!(steps.len(), 1);
    assert_eq!(generation.summary().completion_tokens, 1);
    assert_eq!(generation.summary().finish_reason, FinishReason::Length);
    let loads = model.cache_stats().misses + model.cache_stats().hits;
    let too_long = GenerateRequest::new("y".repeat(context - 1), 1);
    let err = Generation::new(&model, &net.tokenizer, &too_long).unwrap_err();
    assert_eq!(err.code(), "prompt_too_long");
    assert!(err.is_client_error());

    let bad: [fn(&mut GenerateRequest); 6] = [
        |r| r.max_tokens = 0,
        |r| r.sampling.temperature = f32::NAN,
        |r| r.sampling.top_p = 1.5,
        |r| r.stop = vec![String::new()],
        |r| r.stop = vec!["x".repeat(300)],
        |r| r.stop = vec!["a".into(); 5],
    ];
    for mutate in bad {
        let mut r = GenerateRequest::new("ok", 5);
        mutate(&mut r);
        let err = Generation::new(&model, &net.tokenizer, &r).unwrap_err();
        assert_eq!(err.code(), "invalid_parameter", "{r:?}");
    }
    let after = model.cache_stats().misses + model.cache_stats().hits;
    assert_eq!(after, loads, "refused requests ran no layer");
}
