//! The batching engine: batched output equals single-stream output; cancellation and dropped
//! receivers leave the other requests alone.

use std::sync::Arc;

use blyan_model::{
    Engine, EngineConfig, Event, FinishReason, GenerateRequest, Generation, Precision,
    SamplingParams, Summary,
};

use crate::fixture::net;

fn request(prompt: &str, seed: u64, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams {
            temperature: 0.8,
            seed,
            ..SamplingParams::default()
        },
        ..GenerateRequest::new(prompt, max_tokens)
    }
}

fn collect(rx: blyan_model::Receiver) -> (String, Summary) {
    let mut text = String::new();
    for event in rx {
        match event {
            Event::Step(step) => text.push_str(&step.text),
            Event::Done(summary) => return (text, summary),
            Event::Failed(e) => panic!("{e}"),
        }
    }
    panic!("stream ended without Done");
}

#[test]
fn batched_requests_produce_what_they_would_alone() {
    let net = net(31);
    let model = Arc::new(net.model(Precision::Int8));
    let requests: Vec<GenerateRequest> = (0..6)
        .map(|i| request(&format!("prompt number {i}"), i, 10 + 3 * i as u32))
        .collect();
    let alone: Vec<String> = requests
        .iter()
        .map(|r| {
            Generation::new(&model, &net.tokenizer, r)
                .unwrap()
                .map(|s| s.unwrap().text)
                .collect()
        })
        .collect();
    // One lane, several lanes decoding side by side, and passes spread over threads: the
    // same text every way.
    for (lanes, threads) in [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3), (2, 2)] {
        let engine = Engine::start(
            model.clone(),
            net.tokenizer.clone(),
            EngineConfig {
                max_batch: 4,
                lanes,
                threads,
            },
        );
        assert_eq!(engine.lanes(), lanes);
        let expected_threads = if model.parallel() { threads } else { 1 };
        assert_eq!(engine.threads(), expected_threads);
        let receivers: Vec<_> = requests.iter().map(|r| engine.submit(r).unwrap()).collect();
        for (i, rx) in receivers.into_iter().enumerate() {
            let (text, summary) = collect(rx);
            assert_eq!(
                text, alone[i],
                "request {i} with {lanes} lanes of {threads} threads"
            );
            assert!(summary.completion_tokens > 0);
        }
    }
}

#[test]
fn lanes_and_threads_follow_the_settings() {
    let one = EngineConfig {
        max_batch: 1,
        lanes: 4,
        threads: 0,
    };
    assert_eq!(one.lanes_here(), 1, "never more lanes than sequences");
    let auto = EngineConfig::default();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // By default a lane per core, each pass on its lane's thread.
    assert_eq!(auto.lanes_here(), cores.min(auto.max_batch));
    assert_eq!(auto.threads_here(true), 1);
    assert_eq!(auto.threads_here(false), 1);
    let set = EngineConfig {
        lanes: 2,
        threads: 3,
        ..EngineConfig::default()
    };
    assert_eq!((set.lanes_here(), set.threads_here(true)), (2, 3));
    // A model without a parallel pass ignores the thread count.
    assert_eq!(set.threads_here(false), 1);
}

#[test]
fn cancelled_and_abandoned_requests_leave_the_rest_running() {
    let net = net(32);
    let model = Arc::new(net.model(Precision::F32));
    let engine = Engine::start(model, net.tokenizer.clone(), EngineConfig::default());
    let greedy = |p: &str| GenerateRequest {
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::new(p, 40)
    };
    let keep = engine.submit(&greedy("keep")).unwrap();
    let cancel = engine.submit(&greedy("cancel")).unwrap();
    let abandon = engine.submit(&greedy("abandon")).unwrap();
    drop(abandon);
    let first = cancel.recv();
    assert!(matches!(first, Some(Event::Step(_))));
    cancel.cancel();
    let mut reason = None;
    for event in cancel {
        if let Event::Done(s) = event {
            reason = Some(s.finish_reason);
        }
    }
    assert_eq!(reason, Some(FinishReason::Cancelled));
    let (_, summary) = collect(keep);
    assert_ne!(summary.finish_reason, FinishReason::Cancelled);

    let err = engine.submit(&GenerateRequest::new("x", 0)).unwrap_err();
    assert_eq!(err.code(), "invalid_parameter");
}
