//! Damaged or missing blocks, pinned versions and the expert cache under a small budget.

use std::{collections::BTreeMap, fs, sync::Arc};

use blyan_chain::{Block, BlockKind, BlockMeta, ChainId, Store, spec::expert_group_name};
use blyan_model::{
    Engine, EngineConfig, Event, GenerateRequest, Generation, LoadOptions, Model, ModelError,
    Precision, SamplingParams, Team,
};
use blyan_primitives::{ExpertId, Hash};
use blyan_tensor::{TensorDesc, encode_tensors, f32_to_bytes};

use crate::fixture::{Net, net};

fn greedy(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::new("route me everywhere", max_tokens)
    }
}

fn generate(model: &Model, net: &Net, request: &GenerateRequest) -> Result<String, ModelError> {
    Generation::new(model, &net.tokenizer, request)?
        .map(|s| s.map(|s| s.text))
        .collect()
}

fn damage_payload(store: &Store, block: Hash, damage: impl FnOnce(&std::path::Path)) {
    let header = store.header(&block).unwrap().unwrap();
    let path = store.payload_path(&header.payload_hash);
    let mut perms = fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&path, perms).unwrap();
    damage(&path);
}

#[test]
fn a_corrupt_expert_block_is_named_in_the_error() {
    for damage in ["flip", "truncate", "delete"] {
        let net = net(41);
        let model = net.model(Precision::Int8);
        let id = first_routed_expert(&model, &net);
        let block = model.expert_blocks()[&id];
        damage_payload(&net.store, block, |path| match damage {
            "flip" => {
                let mut bytes = fs::read(path).unwrap();
                let i = bytes.len() - 5;
                bytes[i] ^= 0x40;
                fs::write(path, bytes).unwrap();
            }
            "truncate" => {
                let bytes = fs::read(path).unwrap();
                fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
            }
            _ => fs::remove_file(path).unwrap(),
        });
        model.clear_expert_cache();
        let err = generate(&model, &net, &greedy(8)).unwrap_err();
        match &err {
            ModelError::BlockCorrupt { part, block: b, .. } => {
                assert_eq!(part, &format!("expert {id}"), "{damage}");
                assert_eq!(*b, block);
            }
            other => panic!("{damage}: {other}"),
        }
        assert_eq!(err.code(), "block_corrupt");
        let message = err.to_string();
        assert!(message.contains(&format!("expert {id}")) && message.contains(&block.to_string()));
    }
}

/// The first expert the greedy prompt routes to in layer 0.
fn first_routed_expert(model: &Model, net: &Net) -> ExpertId {
    let mut generation = Generation::new(model, &net.tokenizer, &greedy(1)).unwrap();
    generation.by_ref().for_each(drop);
    *generation.summary().experts_used.keys().next().unwrap()
}

#[test]
fn a_missing_dense_block_fails_the_load_with_its_name() {
    let net = net(42);
    let block = net
        .store
        .group_head("model.layers.1.self_attn")
        .unwrap()
        .unwrap();
    damage_payload(&net.store, block, |path| {
        let mut bytes = fs::read(path).unwrap();
        bytes[100] ^= 1;
        fs::write(path, bytes).unwrap();
    });
    let err = Model::load(net.store.clone(), LoadOptions::default()).unwrap_err();
    assert_eq!(err.code(), "block_corrupt");
    assert!(
        err.to_string().contains("model.layers.1.self_attn"),
        "{err}"
    );
}

#[test]
fn an_empty_store_has_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let err = Model::load(store, LoadOptions::default()).unwrap_err();
    assert_eq!(err.code(), "no_model");
}

/// Appends a new version of expert `id` whose weights are the genesis ones scaled by `scale`.
fn new_version(net: &Net, id: ExpertId, scale: f32) -> Hash {
    let name = expert_group_name(id);
    let layout = net.meta.spec.layout();
    let group = &layout[&name];
    let tensors: Vec<(TensorDesc, Vec<u8>)> = group
        .tensors
        .iter()
        .map(|d| {
            let values: Vec<f32> = net.weights[&d.name].iter().map(|x| x * scale).collect();
            (d.clone(), f32_to_bytes(&values))
        })
        .collect();
    let refs: Vec<(TensorDesc, &[u8])> = tensors
        .iter()
        .map(|(d, b)| (d.clone(), b.as_slice()))
        .collect();
    let (height, prev) = net.store.head(ChainId::Param).unwrap().unwrap();
    let parent = net.store.expert_head(id).unwrap().unwrap();
    let (spec_hash, _) = net.store.meta().unwrap().unwrap();
    let ts = net.store.header(&prev).unwrap().unwrap().timestamp_ms + 1;
    let block = Block::new(
        ChainId::Param,
        height + 1,
        prev,
        vec![spec_hash, parent],
        BlockKind::Expert,
        BlockMeta {
            name,
            expert: Some(id),
            tensors: tensors.iter().map(|(d, _)| d.clone()).collect(),
        },
        encode_tensors(&refs).unwrap(),
        &blyan_primitives::SigningKey::from_slice(&[9; 32]).unwrap(),
        ts,
    );
    net.store.append(block).unwrap()
}

#[test]
fn any_version_can_be_served_by_pinning_it() {
    let net = net(43);
    let old = net.model(Precision::F32);
    let id = first_routed_expert(&old, &net);
    let genesis_block = old.expert_blocks()[&id];
    let before = generate(&old, &net, &greedy(16)).unwrap();

    let head = new_version(&net, id, -3.0);
    let current = net.model(Precision::F32);
    assert_eq!(current.expert_blocks()[&id], head);
    let after = generate(&current, &net, &greedy(16)).unwrap();
    assert_ne!(before, after, "the new head is what gets served");

    let pinned = Model::load(
        net.store.clone(),
        LoadOptions {
            precision: Precision::F32,
            expert_versions: BTreeMap::from([(id, genesis_block)]),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(pinned.expert_blocks()[&id], genesis_block);
    assert_eq!(generate(&pinned, &net, &greedy(16)).unwrap(), before);

    for (pin, code) in [
        ((id, Hash::of(b"nonsense")), "unknown_expert_version"),
        (
            (ExpertId::new(id.layer, (id.expert + 1) % 4), head),
            "unknown_expert_version",
        ),
        ((ExpertId::new(9, 0), head), "invalid_parameter"),
    ] {
        let err = Model::load(
            net.store.clone(),
            LoadOptions {
                expert_versions: BTreeMap::from([pin]),
                ..LoadOptions::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), code, "{pin:?}");
    }
}

#[test]
fn a_small_cache_evicts_and_still_gives_the_same_output() {
    let net = net(44);
    let roomy = net.model(Precision::Int8);
    let expected = generate(&roomy, &net, &greedy(24)).unwrap();
    let all = roomy.cache_stats();
    assert_eq!(all.evictions, 0);
    assert_eq!(all.entries, 8, "every expert of both layers was used");
    let one_expert = all.bytes / all.entries;

    // Room for three experts: a token needs two per layer, so the cache churns.
    let budget = 3 * one_expert as usize;
    let small = Model::load(
        net.store.clone(),
        LoadOptions {
            precision: Precision::Int8,
            expert_cache_bytes: budget,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(generate(&small, &net, &greedy(24)).unwrap(), expected);
    let s = small.cache_stats();
    assert!(s.evictions > 0, "{s:?}");
    assert!(s.bytes as usize <= budget, "{s:?}");
    assert!(s.entries <= 3);
    assert!(s.misses > all.misses);
}

#[test]
fn a_corrupt_expert_fails_a_pass_split_over_threads_and_every_request_in_it() {
    let net = net(43);
    let model = Arc::new(net.model(Precision::Int8));
    // Every expert of layer 0 loses its payload, so any token fails there.
    for e in 0..net.meta.spec.num_local_experts {
        let block = model.expert_blocks()[&ExpertId::new(0, e)];
        damage_payload(&net.store, block, |path| fs::remove_file(path).unwrap());
    }
    model.clear_expert_cache();
    let team = Team::new(2, "test-errors");
    let mut seqs: Vec<_> = (0..3).map(|_| model.new_sequence().unwrap()).collect();
    let prompts = [vec![5u32, 6, 7], vec![8], vec![9, 10]];
    let mut batch: Vec<_> = seqs
        .iter_mut()
        .zip(&prompts)
        .map(|(s, p)| (s, p.as_slice()))
        .collect();
    let err = model.forward_in(&mut batch, &team).unwrap_err();
    assert_eq!(err.code(), "block_corrupt", "{err}");
    assert!(seqs.iter().all(|s| s.is_empty()), "no sequence advanced");

    let engine = Engine::start(
        model.clone(),
        net.tokenizer.clone(),
        EngineConfig {
            max_batch: 4,
            lanes: 1,
            threads: 2,
        },
    );
    for round in 0..2 {
        let receivers: Vec<_> = ["one", "two", "three"]
            .iter()
            .map(|p| engine.submit(&GenerateRequest::new(*p, 8)).unwrap())
            .collect();
        for rx in receivers {
            match rx.last() {
                Some(Event::Failed(e)) => assert_eq!(e.code(), "block_corrupt", "round {round}"),
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}
