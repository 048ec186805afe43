//! The admission registry: only the operator admits, the registry is the meta chain's
//! admission blocks applied in order, and a wrong one changes nothing.

use blyan_chain::{Admission, Block, BlockKind, BlockMeta, ChainId, Registry, Role};
use blyan_primitives::SigningKey;

use crate::fixture::{Net, author_key, operator_key, tiny_net};

fn admission(
    net: &Net,
    signer: &SigningKey,
    a: &Admission,
    depends_on: Vec<blyan_primitives::Hash>,
) -> Block {
    let (height, prev) = net.store.head(ChainId::Meta).unwrap().unwrap();
    let ts = net.store.header(&prev).unwrap().unwrap().timestamp_ms;
    Block::new(
        ChainId::Meta,
        height + 1,
        prev,
        depends_on,
        BlockKind::Admission,
        BlockMeta {
            name: "admission".into(),
            ..BlockMeta::default()
        },
        a.encode(),
        signer,
        ts + 1,
    )
}

fn admit(key: u8, role: Role, admitted: bool) -> Admission {
    Admission {
        key: [key; 32],
        role,
        admitted,
    }
}

#[test]
fn the_registry_follows_the_operators_admissions_in_order() {
    let net = tiny_net();
    assert!(Registry::of(&net.store).unwrap().members.is_empty());
    let spec = vec![net.spec_hash];
    for a in [
        admit(1, Role::Host, true),
        admit(2, Role::Validator, true),
        admit(1, Role::Validator, true),
        admit(2, Role::Validator, false),
    ] {
        let block = admission(&net, &operator_key(), &a, spec.clone());
        net.store.append(block).expect("the operator admits");
    }
    let r = Registry::of(&net.store).unwrap();
    assert!(r.has(&[1; 32], Role::Host));
    assert!(r.has(&[1; 32], Role::Validator));
    assert!(!r.has(&[2; 32], Role::Validator));
    assert_eq!(
        r.members.len(),
        1,
        "a key with no role left is not a member"
    );
    // The spec is still found behind the admissions.
    let (hash, _) = net.store.meta().unwrap().expect("spec");
    assert_eq!(hash, net.spec_hash);
}

#[test]
fn only_the_operator_admits_and_a_refusal_changes_nothing() {
    let net = tiny_net();
    let spec = vec![net.spec_hash];
    let refuse = |block: Block, code: &str| {
        let before = net.store.head(ChainId::Meta).unwrap();
        let err = net.store.append(block).expect_err("refused");
        assert_eq!(err.block_error().map(|e| e.code()), Some(code), "{err}");
        assert_eq!(net.store.head(ChainId::Meta).unwrap(), before);
        assert!(Registry::of(&net.store).unwrap().members.is_empty());
    };
    let a = admit(3, Role::Host, true);
    refuse(
        admission(&net, &author_key(), &a, spec.clone()),
        "not_operator",
    );
    refuse(admission(&net, &operator_key(), &a, vec![]), "missing_spec");
    // A payload that is not an admission.
    let mut bad = admission(&net, &operator_key(), &a, spec.clone());
    bad.payload.push(0);
    bad.header.payload_len += 1;
    bad.header.payload_hash = blyan_primitives::Hash::of(&bad.payload);
    bad.sign(&operator_key());
    refuse(bad, "malformed_payload");
    // A role byte that names no role.
    let mut bytes = a.encode();
    bytes[32] = 9;
    let mut bad = admission(&net, &operator_key(), &a, spec.clone());
    bad.header.payload_hash = blyan_primitives::Hash::of(&bytes);
    bad.payload = bytes;
    bad.sign(&operator_key());
    refuse(bad, "malformed_payload");
    // An admission is a meta-chain block only.
    let mut wrong = admission(&net, &operator_key(), &a, spec);
    wrong.header.chain = ChainId::Proof;
    wrong.sign(&operator_key());
    refuse(wrong, "wrong_chain");
}
