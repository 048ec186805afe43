//! Store behaviour: genesis, versions and heads, reopening, and verification finding damage.

use std::fs;

use blyan_chain::genesis::{InitOutcome, RandomWeights, genesis_blocks, init};
use blyan_chain::{BlockKind, ChainError, ChainId, Store, VerifyMode};
use blyan_primitives::{ExpertId, Hash};
use redb::ReadableTable;

use crate::fixture::{
    expert_tensors, expert_version, init_tiny, operator_key, tiny_net, tiny_spec,
};

#[test]
fn genesis_has_every_group_and_is_reproducible() {
    let net = tiny_net();
    let summary = net.store.blocks(None).unwrap();
    // spec; embed, attn, norms, router, 2 experts, final norm, lm head; dataset; proof
    assert_eq!(summary.len(), 1 + 8 + 2);
    assert_eq!(summary[0].kind, BlockKind::Spec);
    assert_eq!(net.store.blocks(Some(ChainId::Param)).unwrap().len(), 8);
    assert_eq!(
        net.store.blocks(Some(ChainId::Proof)).unwrap()[0].kind,
        BlockKind::ChainGenesis
    );
    let again = genesis_blocks(
        &tiny_spec(),
        &mut RandomWeights { seed: 1 },
        &operator_key(),
    )
    .unwrap();
    assert_eq!(
        again.iter().map(|b| b.hash()).collect::<Vec<_>>(),
        summary.iter().map(|s| s.hash).collect::<Vec<_>>()
    );
    let (meta_hash, meta) = net.store.meta().unwrap().unwrap();
    assert_eq!(meta_hash, net.spec_hash);
    assert_eq!(meta, tiny_spec());
}

#[test]
fn init_is_idempotent_and_refuses_another_network() {
    let net = tiny_net();
    let same = genesis_blocks(
        &tiny_spec(),
        &mut RandomWeights { seed: 1 },
        &operator_key(),
    )
    .unwrap();
    assert_eq!(
        init(&net.store, same).unwrap(),
        InitOutcome::AlreadyPresent {
            network: net.spec_hash
        }
    );
    let other = genesis_blocks(
        &tiny_spec(),
        &mut RandomWeights { seed: 2 },
        &operator_key(),
    )
    .unwrap();
    assert!(init(&net.store, other).is_err());
}

#[test]
fn versions_heads_and_payloads_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = ExpertId::new(0, 0);
    let (v1, v2) = {
        let store = Store::open(dir.path()).unwrap();
        let spec_hash = init_tiny(&store);
        let net = crate::fixture::Net {
            store,
            spec_hash,
            _dir: tempfile::tempdir().unwrap(),
        };
        let v1 = net
            .store
            .append(expert_version(&net, id, expert_tensors(id, 0.25)))
            .unwrap();
        let v2 = net
            .store
            .append(expert_version(&net, id, expert_tensors(id, 0.75)))
            .unwrap();
        (v1, v2)
    };
    let store = Store::open(dir.path()).unwrap();
    let versions = store.expert_versions(id).unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(&versions[1..], [v1, v2]);
    assert_eq!(store.expert_head(id).unwrap(), Some(v2));
    let payload = store.payload_verified(&v1).unwrap();
    let set = blyan_tensor::TensorSet::parse(&payload).unwrap();
    assert!(
        set.tensors()
            .iter()
            .all(|t| t.to_f32().iter().all(|&x| x == 0.25))
    );
    let report = store.verify(VerifyMode::Full, |_| {}).unwrap().unwrap();
    assert_eq!(report.blocks, 13);
}

#[test]
fn verify_names_a_tampered_payload() {
    let net = tiny_net();
    let victim = net.store.at_height(ChainId::Param, 3).unwrap().unwrap();
    let header = net.store.header(&victim).unwrap().unwrap();
    let path = net.store.payload_path(&header.payload_hash);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    // Links mode only checks lengths; the flip is found by re-hashing.
    assert!(net.store.verify(VerifyMode::Links, |_| {}).unwrap().is_ok());
    let failure = net
        .store
        .verify(VerifyMode::Full, |_| {})
        .unwrap()
        .unwrap_err();
    assert_eq!(failure.block, victim);
    assert_eq!(failure.height, Some(3));
    assert!(
        failure.cause.contains("payload hashes to"),
        "{}",
        failure.cause
    );
    assert!(net.store.payload_verified(&victim).is_err());
}

#[test]
fn a_corrupt_or_missing_payload_is_repaired_only_with_its_own_bytes() {
    let net = tiny_net();
    let victim = net.store.at_height(ChainId::Param, 3).unwrap().unwrap();
    let good = net.store.payload_verified(&victim).unwrap().to_vec();
    let header = net.store.header(&victim).unwrap().unwrap();
    let path = net.store.payload_path(&header.payload_hash);
    let mut bad = good.clone();
    bad[0] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    assert!(net.store.payload_verified(&victim).is_err());
    // Other bytes (the corrupt copy, a truncated one, nothing) are refused and change nothing.
    for wrong in [&bad[..], &good[..good.len() - 1], &[][..]] {
        assert!(matches!(
            net.store.repair_payload(&victim, wrong),
            Err(ChainError::Corrupt { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), bad);
    }
    assert!(matches!(
        net.store.repair_payload(&Hash::of(b"no such block"), &good),
        Err(ChainError::NotFound(_))
    ));
    net.store.repair_payload(&victim, &good).unwrap();
    assert_eq!(net.store.payload_verified(&victim).unwrap().to_vec(), good);
    // A payload file that is gone is written again.
    fs::remove_file(&path).unwrap();
    assert!(net.store.payload(&victim).is_err());
    net.store.repair_payload(&victim, &good).unwrap();
    assert!(net.store.verify(VerifyMode::Full, |_| {}).unwrap().is_ok());
}

#[test]
fn verify_names_a_forged_or_missing_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (victim, donor) = {
        let store = Store::open(dir.path()).unwrap();
        init_tiny(&store);
        let report = store.verify(VerifyMode::Full, |_| {}).unwrap().unwrap();
        assert_eq!(report.signatures_checked, report.blocks);
        (
            store.at_height(ChainId::Param, 3).unwrap().unwrap(),
            store.at_height(ChainId::Param, 4).unwrap().unwrap(),
        )
    };
    type Signatures<'t> = redb::Table<'t, [u8; 32], [u8; 65]>;
    let table: redb::TableDefinition<'static, [u8; 32], [u8; 65]> =
        redb::TableDefinition::new("signatures");
    let edit = |change: &dyn Fn(&mut Signatures<'_>)| {
        let db = redb::Database::create(dir.path().join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        change(&mut txn.open_table(table).unwrap());
        txn.commit().unwrap();
    };
    let verify = |mode| {
        Store::open(dir.path())
            .unwrap()
            .verify(mode, |_| {})
            .unwrap()
            .unwrap_err()
    };
    // The same author's valid signature of another block.
    edit(&|t| {
        let donated = t.get(donor.0).unwrap().unwrap().value();
        t.insert(victim.0, donated).unwrap();
    });
    // The cheap start-up check sees a signature present; the full one recovers it.
    assert!(
        Store::open(dir.path())
            .unwrap()
            .verify(VerifyMode::Links, |_| {})
            .unwrap()
            .is_ok()
    );
    let failure = verify(VerifyMode::Full);
    assert_eq!(failure.block, victim);
    assert!(failure.cause.contains("wrong_signer"), "{}", failure.cause);
    edit(&|t| {
        t.remove(victim.0).unwrap();
    });
    let failure = verify(VerifyMode::Links);
    assert_eq!(failure.block, victim);
    assert!(
        failure.cause.contains("missing_signature"),
        "{}",
        failure.cause
    );
}

#[test]
fn verify_names_a_missing_or_truncated_payload() {
    let net = tiny_net();
    let victim = net.store.at_height(ChainId::Param, 5).unwrap().unwrap();
    let header = net.store.header(&victim).unwrap().unwrap();
    let path = net.store.payload_path(&header.payload_hash);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let failure = net
        .store
        .verify(VerifyMode::Links, |_| {})
        .unwrap()
        .unwrap_err();
    assert_eq!(failure.block, victim);
    assert!(
        failure.cause.contains("bytes, header says"),
        "{}",
        failure.cause
    );
    fs::remove_file(&path).unwrap();
    let failure = net
        .store
        .verify(VerifyMode::Links, |_| {})
        .unwrap()
        .unwrap_err();
    assert_eq!(failure.block, victim);
}

#[test]
fn concurrent_appenders_never_fork_a_chain() {
    let net = tiny_net();
    let ids = [ExpertId::new(0, 0), ExpertId::new(0, 1)];
    std::thread::scope(|s| {
        for id in ids {
            let net = &net;
            s.spawn(move || {
                let mut stored = 0;
                let mut tries = 0;
                while stored < 10 && tries < 1000 {
                    tries += 1;
                    // Races on the head are refused as wrong height/prev, never stored twice.
                    let block = expert_version(net, id, expert_tensors(id, tries as f32));
                    if net.store.append(block).is_ok() {
                        stored += 1;
                    }
                }
                assert_eq!(stored, 10);
            });
        }
    });
    assert_eq!(
        net.store.blocks(Some(ChainId::Param)).unwrap().len(),
        8 + 20
    );
    assert!(net.store.verify(VerifyMode::Full, |_| {}).unwrap().is_ok());
}

/// `count` ledger-chain blocks after the current ledger head, one small batch each.
fn ledger_blocks(net: &crate::fixture::Net, count: u64) -> Vec<blyan_chain::Block> {
    let (mut height, mut prev) = match net.store.head(ChainId::Ledger).unwrap() {
        Some((h, p)) => (h + 1, p),
        None => (0, blyan_primitives::Hash::ZERO),
    };
    (0..count)
        .map(|i| {
            let batch = blyan_chain::LedgerBatch::new(height, vec![vec![i as u8; 1 + i as usize]]);
            let block = blyan_chain::Block::new(
                ChainId::Ledger,
                height,
                prev,
                vec![net.spec_hash],
                BlockKind::LedgerBatch,
                blyan_chain::BlockMeta {
                    name: "ledger_batch".into(),
                    ..blyan_chain::BlockMeta::default()
                },
                batch.encode(),
                &crate::fixture::author_key(),
                1_000 + height,
            );
            height += 1;
            prev = block.hash();
            block
        })
        .collect()
}

#[test]
fn pages_and_totals_come_from_the_index_and_match_a_full_scan() {
    let net = tiny_net();
    net.store.append_batch(ledger_blocks(&net, 23)).unwrap();
    for v in 0..3 {
        let id = ExpertId::new(0, v % 2);
        net.store
            .append(expert_version(&net, id, expert_tensors(id, v as f32)))
            .unwrap();
    }
    net.store.append_batch(ledger_blocks(&net, 4)).unwrap();
    let check = |store: &Store| {
        let totals = store.chain_totals().unwrap();
        for chain in [
            None,
            Some(ChainId::Meta),
            Some(ChainId::Param),
            Some(ChainId::Ledger),
        ] {
            let all = store.blocks(chain).unwrap();
            if let Some(c) = chain {
                let t = totals[&c];
                assert_eq!(t.blocks, all.len() as u64, "{c:?}");
                assert_eq!(
                    t.payload_bytes,
                    all.iter().map(|b| b.payload_len).sum::<u64>(),
                    "{c:?}"
                );
            }
            for offset in 0..=all.len() + 2 {
                for limit in [1, 2, 5, 50] {
                    let (total, page) = store.blocks_page(chain, offset as u64, limit).unwrap();
                    assert_eq!(total, all.len() as u64);
                    let want: Vec<_> = all.iter().skip(offset).take(limit).cloned().collect();
                    assert_eq!(page, want, "{chain:?} offset {offset} limit {limit}");
                }
            }
        }
        assert_eq!(
            totals.values().map(|t| t.blocks).sum::<u64>(),
            store.len().unwrap()
        );
    };
    check(&net.store);
    // A refused append changes no total.
    let mut bad = ledger_blocks(&net, 2);
    bad[1].header.height += 5;
    assert!(net.store.append_batch(bad).is_err());
    check(&net.store);
    assert_eq!(
        net.store.chain_totals().unwrap()[&ChainId::Ledger].blocks,
        27
    );
    // Reopened, the totals are the stored ones.
    let dir = net.store.dir().to_path_buf();
    let before = net.store.chain_totals().unwrap();
    let crate::fixture::Net {
        store,
        spec_hash,
        _dir,
    } = net;
    drop(store);
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.chain_totals().unwrap(), before);
    check(&store);
    let _ = spec_hash;
}

/// `append_each` stores, in one transaction, every block of a batch that passes and gives
/// each block the verdict `append` one by one would: the good blocks land, a block with a
/// wrong payload and the child built on it are refused, a stored block is a duplicate.
#[test]
fn append_each_keeps_the_good_blocks_of_a_batch_and_refuses_each_bad_one() {
    let net = tiny_net();
    let stored = ledger_blocks(&net, 1);
    net.store.append(stored[0].clone()).unwrap();
    let mut ledger = ledger_blocks(&net, 4);
    // Block 2 arrives with one payload byte changed (its header still names the true bytes).
    ledger[2].payload[0] ^= 1;
    let expert = expert_version(
        &net,
        ExpertId::new(0, 1),
        expert_tensors(ExpertId::new(0, 1), 3.0),
    );
    let before = net.store.len().unwrap();
    let mut batch = vec![ledger[3].clone(), expert.clone(), stored[0].clone()];
    batch.extend(ledger[..3].iter().cloned());
    let verdicts = net.store.append_each(batch).unwrap();
    let codes: Vec<String> = verdicts
        .iter()
        .map(|v| match v {
            Ok(_) => "ok".to_string(),
            Err(blyan_chain::ChainError::Invalid { error, .. }) => error.code().to_string(),
            Err(e) => panic!("store failure: {e}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "wrong_height",
            "ok",
            "duplicate",
            "ok",
            "ok",
            "payload_hash_mismatch"
        ]
    );
    assert_eq!(net.store.len().unwrap(), before + 3);
    assert_eq!(
        net.store.head(ChainId::Ledger).unwrap().unwrap(),
        (2, ledger[1].hash())
    );
    assert_eq!(
        net.store.expert_head(ExpertId::new(0, 1)).unwrap(),
        Some(expert.hash())
    );
    // The stored blocks are complete: payloads on disk, the whole store verifies.
    let report = net.store.verify(VerifyMode::Full, |_| {}).unwrap();
    assert!(report.is_ok(), "{report:?}");
    // The refused block with its true bytes, and its child, append afterwards.
    let mut fixed = ledger[2].clone();
    fixed.payload[0] ^= 1;
    net.store
        .append_batch(vec![ledger[3].clone(), fixed])
        .unwrap();
    assert_eq!(net.store.head(ChainId::Ledger).unwrap().unwrap().0, 4);
}
