//! Proof of Learning through the node on an untrained network: refusals before evaluation
//! (nothing written, no item spent), an accepted candidate becoming the head, verification
//! of every verdict, replication with vesting, rollback, and the pow and hybrid modes.

use blyan_chain::{ChainId, PolMode, Store, genesis};
use blyan_node::pol::{ITEM_TOKENS, PolRefusal, Pool, Submission, commit_pool, sign_submission};
use blyan_node::{Node, NodeConfig, NodeError};
use blyan_primitives::{Address, Amount, ExpertId, Hash, NANO_PER_BLY, SigningKey, address_of};
use blyan_train::candidate::Candidate;
use blyan_train::expert::{ExpertOptions, ExpertTraining};

const NOW: u64 = 1_800_000_000_000;

fn text(lines: usize, seed: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "and the {} of the {} said unto the {} that it was {}\n",
                ["king", "people", "prophet", "servant"][(i + seed) % 4],
                ["land", "city", "house", "river"][(i * 3 + seed) % 4],
                ["men", "priests", "elders"][(i * 7) % 3],
                ["good", "so", "done", "well"][(i * 5 + seed) % 4]
            )
        })
        .collect()
}

fn open(mode: PolMode) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path().join("chain")).expect("store");
        genesis::init(
            &store,
            genesis::random_genesis(
                3,
                &blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"),
            )
            .expect("genesis"),
        )
        .expect("init");
        let (_, meta) = store.meta().expect("meta").expect("spec");
        let tok = blyan_tokenizer::Tokenizer::from_json(&meta.tokenizer).expect("tokenizer");
        let tokens_of = |text: String| -> Vec<u32> {
            let mut tokens = Vec::new();
            for line in text.lines() {
                tokens.push(meta.spec.bos_token_id);
                tokens.extend(tok.encode(line).expect("encode"));
                tokens.push(meta.spec.eos_token_id);
            }
            tokens
        };
        // The hidden items, salted with a test secret, and validation items of the same
        // kind of text.
        let secret = [5u8; 32];
        let pool = Pool::salted(
            Pool::windows(&tokens_of(text(400, 1)), ITEM_TOKENS),
            &secret,
        );
        let validation = Pool::new(Pool::windows(&tokens_of(text(100, 2)), ITEM_TOKENS));
        commit_pool(
            &store,
            dir.path(),
            (&pool, &validation),
            "test text",
            &secret,
            &blyan_primitives::SigningKey::from_slice(&[2; 32]).expect("key"),
            NOW,
        )
        .expect("pool");
    }
    // An untrained model improves by whole percents: keep rewards inside the epoch's
    // inflation budget.
    let econ = blyan_ledger::Tokenomics {
        learning_reward_per_percent: "10".into(),
        ..blyan_ledger::Tokenomics::default()
    };
    std::fs::write(dir.path().join("tokenomics.toml"), econ.to_toml()).expect("tokenomics");
    let mut config = NodeConfig::default();
    config.pol = blyan_node::pol::PolSettings {
        mode,
        stage_items: 24,
        pow_bits: 8,
        ..config.pol
    };
    // The node's key is the one that made the network: this node operates it.
    blyan_ledger::Keystore::new(dir.path().join(blyan_ledger::KEYSTORE_DIR), "")
        .set_node_key(&blyan_primitives::SigningKey::from_slice(&[1; 32]).expect("key"))
        .expect("node key");
    let node = Node::open(dir.path(), config, NOW).expect("node");
    (dir, node)
}

fn trained(node: &Node, expert: ExpertId, steps: u64) -> Candidate {
    let mut opts = ExpertOptions::new(expert);
    opts.steps = steps;
    opts.lr = 3e-3;
    // Small steps: these tests are about the node's handling, not the candidate's quality.
    opts.batch = 4;
    opts.seq_len = 48;
    let mut run =
        ExpertTraining::new(node.store(), text(200, 1).as_bytes(), opts).expect("training");
    while !run.is_done() {
        run.step().expect("step");
    }
    run.candidate().expect("candidate")
}

/// A contributor's key (and so their address).
fn contributor(n: u8) -> SigningKey {
    SigningKey::from_slice(&[n; 32]).expect("key")
}

/// `bytes` as `who` submits it to `node`: signed for the node's network, naming `who`.
fn signed(node: &Node, bytes: Vec<u8>, who: &SigningKey, pow_nonce: Option<u64>) -> Submission {
    Submission {
        signature: sign_submission(who, &node.info().network, &bytes).expect("sign"),
        candidate: bytes,
        contributor: Some(address_of(who)),
        pow_nonce,
        payer: None,
    }
}

fn submit(
    node: &Node,
    c: &Candidate,
    who: &SigningKey,
) -> Result<blyan_node::pol::VerdictReport, NodeError> {
    node.pol_submit(signed(node, c.encode().expect("encode"), who, None), NOW)
}

/// Like [`submit`], from an account that pays the submission fee.
fn submit_paying(
    node: &Node,
    c: &Candidate,
    who: &SigningKey,
) -> Result<blyan_node::pol::VerdictReport, NodeError> {
    let mut sub = signed(node, c.encode().expect("encode"), who, None);
    sub.payer = Some(address_of(who));
    node.pol_submit(sub, NOW)
}

/// `who` with an account holding `bly` BLY, paid by the operator.
fn fund(node: &Node, who: Address, bly: u64) {
    let ledger = node.ledger();
    ledger
        .create_account(who, blyan_ledger::AccountKind::User, NOW)
        .expect("account");
    ledger
        .transfer(
            node.operator(),
            who,
            Amount::from_nano(bly * NANO_PER_BLY),
            "funding",
            None,
            NOW,
        )
        .expect("funded");
}

fn refusal(r: Result<blyan_node::pol::VerdictReport, NodeError>) -> PolRefusal {
    match r {
        Err(NodeError::Pol { refusal, .. }) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn proof_height(node: &Node) -> u64 {
    node.store()
        .head(ChainId::Proof)
        .expect("head")
        .expect("proof")
        .0
}

#[test]
fn submissions_refusals_verification_replication_and_rollback() {
    let (_dir, node) = open(PolMode::Pol);
    let key = contributor(0xaa);
    let who = &key;
    let paid = address_of(who);
    let expert = ExpertId::new(0, 1);
    let genesis_head = node
        .store()
        .expert_head(expert)
        .expect("head")
        .expect("expert");
    let good = trained(&node, expert, 40);

    // Refusals before evaluation write nothing and spend no item.
    let before = (proof_height(&node), node.pol_status().pool_remaining);
    let mut copy = good.clone();
    let head = blyan_pol::snapshot::block_tensors(node.store(), &genesis_head).expect("head");
    for (t, (_, v)) in copy.tensors.iter_mut().zip(&head) {
        t.2 = v.clone();
    }
    assert_eq!(refusal(submit(&node, &copy, who)), PolRefusal::HeadCopy);
    let mut huge = good.clone();
    for t in &mut huge.tensors {
        for v in &mut t.2 {
            *v *= 4.0;
        }
    }
    assert_eq!(
        refusal(submit(&node, &huge, who)),
        PolRefusal::DeltaTooLarge
    );
    let mut shapes = good.clone();
    shapes.tensors[0].1 = vec![1, shapes.tensors[0].2.len()];
    assert_eq!(
        refusal(submit(&node, &shapes, who)),
        PolRefusal::WrongShapes
    );
    let mut nan = good.encode().expect("encode");
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut sub = signed(&node, good.encode().expect("encode"), who, None);
    sub.candidate = nan;
    assert_eq!(refusal(node.pol_submit(sub, NOW)), PolRefusal::NonFinite);
    let mut sub = signed(&node, good.encode().expect("encode"), who, None);
    sub.candidate = b"not a candidate".to_vec();
    assert_eq!(
        refusal(node.pol_submit(sub, NOW)),
        PolRefusal::MalformedCandidate
    );
    // Signatures: someone else's key naming `who`; a signature made for another network; the
    // malleable (high-s) twin of a good signature.
    let bytes = good.encode().expect("encode");
    let mut sub = signed(&node, bytes.clone(), &contributor(0xbb), None);
    sub.contributor = Some(paid);
    assert_eq!(refusal(node.pol_submit(sub, NOW)), PolRefusal::WrongSigner);
    let mut sub = signed(&node, bytes.clone(), who, None);
    sub.signature = sign_submission(who, &Hash::of(b"another network"), &bytes).expect("sign");
    assert_eq!(refusal(node.pol_submit(sub, NOW)), PolRefusal::WrongSigner);
    let mut sub = signed(&node, bytes.clone(), who, None);
    let mut high = sub.signature.0;
    let s_low = k256::U256::from_be_slice(&high[32..64]);
    let order = <k256::Secp256k1 as k256::elliptic_curve::Curve>::ORDER;
    high[32..64].copy_from_slice(&k256::elliptic_curve::bigint::Encoding::to_be_bytes(
        &order.wrapping_sub(&s_low),
    ));
    high[64] = 55 - high[64];
    sub.signature = blyan_primitives::Signature(high);
    assert_eq!(refusal(node.pol_submit(sub, NOW)), PolRefusal::BadSignature);
    let mut stranger = good.clone();
    stranger.parent = Hash::of(b"elsewhere");
    assert_eq!(
        refusal(submit(&node, &stranger, who)),
        PolRefusal::StaleParent
    );
    // An account that cannot pay the submission fee is refused before anything is spent.
    let poor = contributor(0xcc);
    fund(&node, address_of(&poor), 1);
    match submit_paying(&node, &good, &poor) {
        Err(NodeError::Ledger(e)) => assert_eq!(e.code(), "insufficient_funds", "{e}"),
        other => panic!("expected insufficient funds, got {other:?}"),
    }
    assert_eq!(
        before,
        (proof_height(&node), node.pol_status().pool_remaining)
    );

    // A real improvement is accepted, becomes the head and is paid half now; its submission
    // fee comes back.
    fund(&node, paid, 25);
    let funds = Amount::from_nano(25 * NANO_PER_BLY);
    let fee = Amount::from_nano(10 * NANO_PER_BLY);
    let report = submit_paying(&node, &good, who).expect("verdict");
    assert_eq!((report.fee, report.fee_refunded), (fee, true));
    assert!(report.accepted, "{report:?}");
    assert_eq!(
        report.items, 24,
        "a clear gain is accepted at the first look"
    );
    let new_head = report.block.expect("new head");
    assert_eq!(
        node.store().expert_head(expert).expect("head"),
        Some(new_head)
    );
    assert!(
        node.experts()
            .expect("experts")
            .iter()
            .any(|e| e.id == expert && e.served == new_head)
    );
    assert!(!report.reward.is_zero() && report.reward == report.vesting);
    assert_eq!(
        node.ledger().balance(paid).expect("balance").available,
        funds.checked_add(report.reward).expect("sum")
    );
    // The verdict names the signer and carries the signature; the version's block is the
    // validator's, and royalties follow the verdict.
    let (_, verdict) = node
        .pol_verdicts()
        .into_iter()
        .find(|(h, _)| *h == report.proof)
        .expect("verdict");
    assert_eq!(verdict.contributor, paid);
    assert_eq!(verdict.submitter(&node.info().network), Ok(paid));
    let block = node
        .store()
        .header(&new_head)
        .expect("header")
        .expect("block");
    assert_ne!(block.author, paid);

    // The same file again: its parent is no longer the head.
    assert_eq!(refusal(submit(&node, &good, who)), PolRefusal::StaleParent);

    // A rejected candidate (no change to speak of) is recorded; submitting it again is a
    // duplicate.
    let other = ExpertId::new(1, 2);
    let mut tiny = trained(&node, other, 1);
    let other_head = node.store().expert_head(other).expect("h").expect("e");
    let head = blyan_pol::snapshot::block_tensors(node.store(), &other_head).expect("head");
    for (t, (_, v)) in tiny.tensors.iter_mut().zip(&head) {
        t.2 = v.iter().map(|x| x * (1.0 + 1e-6)).collect();
    }
    let rejected = submit_paying(&node, &tiny, who).expect("verdict");
    assert!(!rejected.accepted);
    // A rejected candidate's fee stays with the operator.
    assert_eq!((rejected.fee, rejected.fee_refunded), (fee, false));
    assert_eq!(
        (rejected.reason.as_str(), rejected.items),
        ("below_min_effect", 24),
        "no gain to speak of is refused at the first look, spending one stage"
    );
    assert_eq!(
        refusal(submit(&node, &tiny, who)),
        PolRefusal::DuplicatePayload
    );

    // That later evaluation replicated the acceptance: the held half is paid.
    let status = node.pol_status();
    assert!(status.awaiting_replication.is_empty(), "{status:?}");
    let total = node.ledger().balance(paid).expect("balance").available;
    assert_eq!(
        total.nano(),
        report.reward.nano() * 2 + funds.nano() - fee.nano()
    );
    assert_eq!(
        refusal(node.pol_replicate(report.proof, NOW)),
        PolRefusal::NotReplicable
    );

    // Every verdict recomputes to the same numbers, from this node's pool and from the
    // chain alone: each verdict's reveal opens exactly its items against the committed
    // roots.
    for (proof, verdict) in node.pol_verdicts() {
        for from_chain in [false, true] {
            let check = node.pol_verify(proof, from_chain).expect("verify");
            assert!(check.agrees, "{from_chain}: {check:?}");
        }
        let record = blyan_pol::record::PolRecord::read(node.store()).expect("record");
        let reveal = blyan_pol::record::reveal_of(node.store(), &record, &proof)
            .expect("read")
            .expect("every verdict that drew items has a reveal");
        let opened: Vec<u32> = reveal.hidden.iter().map(|i| i.index).collect();
        assert_eq!(opened, verdict.items);
        let opened: Vec<u32> = reveal.validation.iter().map(|i| i.index).collect();
        assert_eq!(opened, verdict.validation_items);
    }
    // The accepted candidate passed the contamination check, which scored validation items;
    // the refused one never reached it.
    assert!(
        report.leak_z.is_some() && report.reveal.is_some(),
        "{report:?}"
    );
    assert!(rejected.leak_z.is_none());

    // Rollback: the genesis version serves again; the old proofs still verify.
    node.rollback_expert(expert, genesis_head, "test", NOW)
        .expect("rollback");
    assert_eq!(
        node.store().expert_head(expert).expect("head"),
        Some(genesis_head)
    );
    assert!(
        node.rollback_expert(expert, genesis_head, "again", NOW)
            .is_err()
    );
    for (proof, _) in node.pol_verdicts() {
        assert!(node.pol_verify(proof, true).expect("verify").agrees);
    }
    assert!(node.audit_ledger().expect("audit").ok);
}

#[test]
fn pow_and_hybrid_modes() {
    let key = contributor(0xbb);
    let who = &key;
    let paid = address_of(who);
    let expert = ExpertId::new(0, 0);

    // Pow mode: no learning test and no reward, but the work, the signature, the shapes and
    // the delta bound are all required.
    let (_dir, node) = open(PolMode::Pow);
    let c = trained(&node, expert, 2);
    assert_eq!(refusal(submit(&node, &c, who)), PolRefusal::PowMissing);
    let bytes = c.encode().expect("encode");
    let nonce = blyan_node::pol::solve_pow(&bytes, &paid, 8).expect("solve");
    let mut huge = c.clone();
    for t in &mut huge.tensors {
        for v in &mut t.2 {
            *v *= 4.0;
        }
    }
    let huge_bytes = huge.encode().expect("encode");
    let huge_nonce = blyan_node::pol::solve_pow(&huge_bytes, &paid, 8).expect("solve");
    assert_eq!(
        refusal(node.pol_submit(signed(&node, huge_bytes, who, Some(huge_nonce)), NOW)),
        PolRefusal::DeltaTooLarge
    );
    let mut forged = signed(&node, bytes.clone(), &contributor(0xdd), Some(nonce));
    forged.contributor = Some(paid);
    assert_eq!(
        refusal(node.pol_submit(forged, NOW)),
        PolRefusal::WrongSigner
    );
    // The work is bound to its contributor: another signer cannot reuse it.
    let other = contributor(0xde);
    if !blyan_pol::pow_ok(
        &blyan_node::pol::candidate_id(&bytes).expect("id"),
        &c.parent,
        &address_of(&other),
        nonce,
        8,
    ) {
        assert_eq!(
            refusal(node.pol_submit(signed(&node, bytes.clone(), &other, Some(nonce)), NOW)),
            PolRefusal::PowInvalid
        );
    }
    let r = node
        .pol_submit(signed(&node, bytes, who, Some(nonce)), NOW)
        .expect("verdict");
    assert!(r.accepted && r.reason == "accepted_pow" && r.items == 0 && r.reward.is_zero());
    assert!(node.pol_verify(r.proof, true).expect("verify").agrees);
    assert!(r.reveal.is_none(), "a pow verdict draws nothing to reveal");
    let (_, verdict) = node
        .pol_verdicts()
        .into_iter()
        .find(|(h, _)| *h == r.proof)
        .expect("verdict");
    assert_eq!(verdict.pow_nonce, nonce);

    let (_dir, node) = open(PolMode::Hybrid);
    let c = trained(&node, expert, 2);
    assert_eq!(refusal(submit(&node, &c, who)), PolRefusal::PowMissing);
    let bytes = c.encode().expect("encode");
    let id = blyan_node::pol::candidate_id(&bytes).expect("id");
    let nonce = blyan_pol::pow_solve(&id, &c.parent, &paid, 8);
    let bad = (0..)
        .find(|n| !blyan_pol::pow_ok(&id, &c.parent, &paid, *n, 8))
        .expect("a bad nonce");
    let sub = |n| signed(&node, bytes.clone(), who, Some(n));
    assert_eq!(
        refusal(node.pol_submit(sub(bad), NOW)),
        PolRefusal::PowInvalid
    );
    let r = node.pol_submit(sub(nonce), NOW).expect("verdict");
    assert!(r.items % 24 == 0 && (24..=96).contains(&r.items), "{r:?}");
}
