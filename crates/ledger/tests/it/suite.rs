//! The ledger suite. Each function takes the backend name and runs against a fresh store.

use blyan_chain::genesis;
use blyan_ledger::{
    AccountKind, Begin, IdempotencyKey, IdempotentReply, Keystore, Ledger, LedgerError,
    PostingKind, Refusal, Served, SystemAccount, Tokenomics, parse_amount,
};
use blyan_primitives::{Address, Amount, NANO_PER_BLY};
use proptest::prelude::*;

use crate::{Place, econ};

const T0: u64 = 1_800_000_000_000;

fn bly(n: u64) -> Amount {
    Amount::from_bly(n).unwrap()
}

fn addr(n: u8) -> Address {
    Address([n; 20])
}

/// The key that signs the test chain's blocks.
fn node_key() -> blyan_primitives::SigningKey {
    blyan_primitives::SigningKey::from_slice(&[0xee; 32]).unwrap()
}

fn refusal<T: std::fmt::Debug>(r: Result<T, LedgerError>) -> Refusal {
    match r {
        Err(e) => e.refusal().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// A fresh ledger with the operator and two funded users: 0x11… (500 BLY), 0x22… (0 BLY).
fn setup(place: &Place) -> Ledger {
    let l = place.ledger(econ());
    assert!(l.init(T0).unwrap());
    l.create_operator(addr(0xee), T0).unwrap();
    l.create_account(addr(0x11), AccountKind::User, T0).unwrap();
    l.create_account(addr(0x22), AccountKind::User, T0).unwrap();
    l.transfer(
        SystemAccount::Treasury.address(),
        addr(0x11),
        bly(500),
        "seed",
        None,
        T0,
    )
    .unwrap();
    l
}

fn assert_balanced(l: &Ledger) {
    let report = l.audit(None).unwrap();
    assert!(report.ok, "{:?}", report.discrepancies);
}

pub(crate) fn init_is_idempotent_and_balanced(backend: &str) {
    let place = Place::new(backend);
    let l = place.ledger(econ());
    assert_eq!(refusal(l.balance(addr(1))), Refusal::UnknownAccount);
    assert_eq!(
        refusal(l.create_account(addr(1), AccountKind::User, T0)),
        Refusal::NotInitialized
    );
    assert!(l.init(T0).unwrap());
    assert!(!l.init(T0 + 1).unwrap(), "the second init changes nothing");
    let s = l.supply().unwrap();
    assert_eq!(s.cap, bly(1_000_000_000));
    assert_eq!(s.circulating, bly(1_000_000));
    assert_eq!(s.unminted, bly(999_000_000));
    assert_eq!(s.postings, 1);
    assert_eq!(
        l.balance(SystemAccount::Treasury.address())
            .unwrap()
            .available,
        bly(1_000_000)
    );
    let op = l.create_operator(addr(0xee), T0).unwrap();
    assert_eq!(
        l.create_operator(addr(0xef), T0).unwrap(),
        op,
        "one operator"
    );
    assert_eq!(l.resolve("operator").unwrap(), op);
    assert_eq!(l.balance(op).unwrap().available, bly(1000));
    // A second connection with a different supply cap is refused.
    let other = Tokenomics {
        supply_cap: "2000000000".into(),
        ..Tokenomics::default()
    }
    .check()
    .unwrap();
    assert_eq!(
        refusal(place.ledger(other).init(T0)),
        Refusal::TokenomicsMismatch
    );
    assert_balanced(&l);
}

pub(crate) fn transfers_move_exact_amounts(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let r = l
        .transfer(
            addr(0x11),
            addr(0x22),
            Amount::from_nano(1),
            "one nano",
            None,
            T0,
        )
        .unwrap();
    assert_eq!(r.amount, Amount::from_nano(1));
    assert_eq!(
        l.balance(addr(0x22)).unwrap().available,
        Amount::from_nano(1)
    );
    assert_eq!(
        l.balance(addr(0x11)).unwrap().available,
        Amount::from_nano(500 * NANO_PER_BLY - 1)
    );
    // Everything that is left, exactly.
    l.transfer(
        addr(0x11),
        addr(0x22),
        Amount::from_nano(500 * NANO_PER_BLY - 1),
        "",
        None,
        T0,
    )
    .unwrap();
    assert_eq!(l.balance(addr(0x11)).unwrap().available, Amount::ZERO);
    assert_eq!(
        refusal(l.transfer(addr(0x11), addr(0x22), Amount::from_nano(1), "", None, T0)),
        Refusal::InsufficientFunds
    );
    // Paying the burn account burns.
    let r = l
        .transfer(
            addr(0x22),
            SystemAccount::Burn.address(),
            bly(1),
            "",
            None,
            T0,
        )
        .unwrap();
    let p = l.postings(r.seq, 1).unwrap();
    assert_eq!(p[0].kind, PostingKind::Burn);
    assert_eq!(l.supply().unwrap().burned, bly(1));
    assert_balanced(&l);
}

pub(crate) fn bad_input_is_refused_and_posts_nothing(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let before = l.posting_count().unwrap();
    let a = addr(0x11);
    let b = addr(0x22);
    assert_eq!(
        refusal(l.transfer(a, b, Amount::ZERO, "", None, T0)),
        Refusal::ZeroAmount
    );
    assert_eq!(
        refusal(l.transfer(a, a, bly(1), "", None, T0)),
        Refusal::SelfTransfer
    );
    assert_eq!(
        refusal(l.transfer(a, addr(0x33), bly(1), "", None, T0)),
        Refusal::UnknownAccount
    );
    assert_eq!(
        refusal(l.transfer(addr(0x33), a, bly(1), "", None, T0)),
        Refusal::UnknownAccount
    );
    assert_eq!(
        refusal(l.transfer(a, b, bly(501), "", None, T0)),
        Refusal::InsufficientFunds
    );
    assert_eq!(
        refusal(l.transfer(a, b, Amount::from_nano(u64::MAX), "", None, T0)),
        Refusal::AmountOverflow,
        "more than any balance can hold"
    );
    assert_eq!(
        refusal(l.transfer(SystemAccount::Burn.address(), a, bly(1), "", None, T0)),
        Refusal::SystemAccount
    );
    assert_eq!(
        refusal(l.transfer(SystemAccount::Emission.address(), a, bly(1), "", None, T0)),
        Refusal::SystemAccount
    );
    assert_eq!(
        refusal(l.transfer(a, SystemAccount::FeePool.address(), bly(1), "", None, T0)),
        Refusal::SystemAccount
    );
    assert_eq!(
        refusal(l.transfer(a, b, bly(1), "bad\nref", None, T0)),
        Refusal::InvalidReference
    );
    assert_eq!(
        refusal(l.transfer(a, b, bly(1), &"x".repeat(129), None, T0)),
        Refusal::InvalidReference
    );
    for s in [
        "0",
        "-1",
        "1e3",
        "0.0000000001",
        "NaN",
        "",
        "99999999999999999999",
    ] {
        let r = refusal(parse_amount(s));
        assert!(
            matches!(
                r,
                Refusal::ZeroAmount | Refusal::MalformedAmount | Refusal::AmountOverflow
            ),
            "{s}: {r:?}"
        );
    }
    assert_eq!(
        refusal(parse_amount("18446744074")),
        Refusal::AmountOverflow
    );
    for s in [
        "0x12",
        "0xZZ11111111111111111111111111111111111111",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",
    ] {
        assert_eq!(refusal(l.resolve(s)), Refusal::MalformedAddress, "{s}");
    }
    assert_eq!(refusal(l.resolve("nobody")), Refusal::UnknownAccount);
    assert_eq!(
        refusal(l.create_account(a, AccountKind::User, T0)),
        Refusal::AccountExists
    );
    assert_eq!(
        l.posting_count().unwrap(),
        before,
        "no refusal posted anything"
    );
    assert_eq!(l.balance(a).unwrap().available, bly(500));
    assert_balanced(&l);
}

pub(crate) fn idempotent_transfers_post_once(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let (a, b) = (addr(0x11), addr(0x22));
    let first = l
        .transfer(a, b, bly(5), "invoice 1", Some("k-1"), T0)
        .unwrap();
    let again = l
        .transfer(a, b, bly(5), "invoice 1", Some("k-1"), T0 + 5)
        .unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(
        (first.tx, first.seq, first.amount),
        (again.tx, again.seq, again.amount)
    );
    assert_eq!(l.balance(b).unwrap().available, bly(5));
    let before = l.posting_count().unwrap();
    assert_eq!(
        refusal(l.transfer(a, b, bly(6), "invoice 1", Some("k-1"), T0)),
        Refusal::IdempotencyKeyReused
    );
    assert_eq!(
        refusal(l.transfer(a, b, bly(5), "invoice 1", Some(""), T0)),
        Refusal::InvalidReference
    );
    assert_eq!(l.posting_count().unwrap(), before);
    // Keys are scoped by payer: b may use the same key for its own request.
    l.transfer(b, a, bly(1), "", Some("k-1"), T0).unwrap();
    assert_balanced(&l);
}

pub(crate) fn billing_captures_exactly_and_splits(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let payer = addr(0x11);
    let op = l.resolve("operator").unwrap();
    let op_before = l.balance(op).unwrap().available;
    // 100 prompt + 900 max tokens: 1 BLY held.
    let q = l.quote(payer, 1000, T0).unwrap();
    assert_eq!(q.amount, bly(1));
    assert_eq!(q.expires_ms, T0 + 300_000);
    let h = l.authorize(&q.id, T0 + 1).unwrap();
    assert_eq!(
        refusal(l.authorize(&q.id, T0 + 2)),
        Refusal::UnknownQuote,
        "a quote authorizes once"
    );
    let bal = l.balance(payer).unwrap();
    assert_eq!((bal.available, bal.pending), (bly(499), bly(1)));
    // 250 tokens used, served by two contributors 3:1 and one genesis expert.
    let c1 = addr(0xc1);
    let c2 = addr(0xc2);
    let routing = Served::locally(
        [(c1, 300), (c2, 100), (Address::ZERO, 0)]
            .into_iter()
            .collect(),
    );
    let cap = l.capture(&h.id, 250, &routing, op, None, T0 + 2).unwrap();
    let fee = Amount::from_nano(250_000_000);
    assert_eq!(cap.fee, fee);
    assert_eq!(cap.released, Amount::from_nano(750_000_000));
    let royalty: u64 = cap.royalties.iter().map(|(_, a)| a.nano()).sum();
    assert_eq!(royalty, 125_000_000, "50% royalties");
    assert_eq!(
        cap.royalties,
        vec![(c1, Amount(93_750_000)), (c2, Amount(31_250_000))]
    );
    assert_eq!(cap.operator_share, Amount(75_000_000));
    assert_eq!(cap.burned, Amount(50_000_000));
    let bal = l.balance(payer).unwrap();
    assert_eq!(
        bal.available,
        Amount::from_nano(500 * NANO_PER_BLY - 250_000_000)
    );
    assert_eq!(bal.pending, Amount::ZERO);
    assert_eq!(l.balance(c1).unwrap().available, Amount(93_750_000));
    assert_eq!(
        l.balance(op).unwrap().available.nano(),
        op_before.nano() + 75_000_000
    );
    assert_eq!(
        l.balance(SystemAccount::FeePool.address())
            .unwrap()
            .available,
        Amount::ZERO
    );
    assert_eq!(
        refusal(l.capture(&h.id, 1, &routing, op, None, T0)),
        Refusal::HoldNotActive
    );
    // Expired quotes cannot be authorized.
    let q = l.quote(payer, 10, T0).unwrap();
    assert_eq!(
        refusal(l.authorize(&q.id, T0 + 300_001)),
        Refusal::QuoteExpired
    );
    // A capture beyond the hold is refused and posts nothing.
    let h = l.hold(payer, 10, T0).unwrap();
    let before = l.posting_count().unwrap();
    assert_eq!(
        refusal(l.capture(&h.id, 11, &routing, op, None, T0)),
        Refusal::CaptureExceedsHold
    );
    assert_eq!(l.posting_count().unwrap(), before);
    // No routing at all: royalties go to the royalty pool.
    let cap = l
        .capture(&h.id, 10, &Served::default(), op, None, T0)
        .unwrap();
    assert_eq!(
        cap.royalties,
        vec![(SystemAccount::RoyaltyPool.address(), Amount(5_000_000))]
    );
    // Insufficient funds at authorize: 402's refusal, nothing held.
    let poor = addr(0x22);
    assert_eq!(refusal(l.hold(poor, 1000, T0)), Refusal::InsufficientFunds);
    assert_eq!(Refusal::InsufficientFunds.http_status(), 402);
    assert_eq!(l.open_holds().unwrap(), 0);
    assert_balanced(&l);
}

pub(crate) fn expert_hosts_are_paid_from_the_operators_share(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let payer = addr(0x11);
    let op = l.resolve("operator").unwrap();
    let op_before = l.balance(op).unwrap().available;
    let (c1, h1, h2) = (addr(0xc1), addr(0xa1), addr(0xa2));
    // 1000 tokens (1 BLY); 8000 token-expert computations, of which host 1 answered 3000
    // and host 2 answered 1000: half of all of them, so half of host_bps (20%) of the fee.
    let served = Served {
        contributors: [(c1, 8000)].into_iter().collect(),
        hosts: [(h1, 3000), (h2, 1000)].into_iter().collect(),
    };
    let h = l.hold(payer, 1000, T0).unwrap();
    let before = l.posting_count().unwrap();
    let cap = l.capture(&h.id, 1000, &served, op, None, T0).unwrap();
    assert_eq!(cap.fee, bly(1));
    assert_eq!(
        cap.host_shares,
        vec![(h1, Amount(75_000_000)), (h2, Amount(25_000_000))]
    );
    assert_eq!(cap.royalties, vec![(c1, Amount(500_000_000))]);
    assert_eq!(
        cap.operator_share,
        Amount(200_000_000),
        "30% less the hosts' 10%"
    );
    assert_eq!(cap.burned, Amount(200_000_000));
    assert_eq!(l.balance(h1).unwrap().available, Amount(75_000_000));
    assert_eq!(l.balance(h2).unwrap().available, Amount(25_000_000));
    assert_eq!(
        l.balance(op).unwrap().available.nano(),
        op_before.nano() + 200_000_000
    );
    let kinds: Vec<PostingKind> = l
        .history(h1, None, 10)
        .unwrap()
        .iter()
        .map(|p| p.kind)
        .collect();
    assert_eq!(kinds, vec![PostingKind::HostShare]);
    // Fee, royalty, two host shares, operator share, burn (the hold is used up: nothing
    // is released).
    assert_eq!(l.posting_count().unwrap(), before + 6);

    // Hosts claiming more computations than the request made get at most host_bps; a
    // system account or the zero address as a host is paid nothing.
    let h = l.hold(payer, 1000, T0).unwrap();
    let greedy = Served {
        contributors: [(c1, 10)].into_iter().collect(),
        hosts: [
            (h1, 1_000_000),
            (Address::ZERO, 5),
            (SystemAccount::Treasury.address(), 5),
        ]
        .into_iter()
        .collect(),
    };
    let cap = l.capture(&h.id, 1000, &greedy, op, None, T0).unwrap();
    assert_eq!(cap.host_shares, vec![(h1, Amount(200_000_000))]);
    assert_eq!(cap.operator_share, Amount(100_000_000));
    // Computed all locally: the operator keeps its whole share.
    let h = l.hold(payer, 1000, T0).unwrap();
    let cap = l
        .capture(
            &h.id,
            1000,
            &Served::locally(served.contributors.clone()),
            op,
            None,
            T0,
        )
        .unwrap();
    assert!(cap.host_shares.is_empty());
    assert_eq!(cap.operator_share, Amount(300_000_000));
    assert_balanced(&l);
}

pub(crate) fn void_and_expiry_release_everything(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let payer = addr(0x11);
    let h = l.hold(payer, 5000, T0).unwrap();
    assert_eq!(l.balance(payer).unwrap().pending, bly(5));
    assert_eq!(l.void(&h.id, None, T0).unwrap(), bly(5));
    assert_eq!(l.balance(payer).unwrap().available, bly(500));
    assert_eq!(refusal(l.void(&h.id, None, T0)), Refusal::HoldNotActive);
    assert_eq!(refusal(l.void("h_nope", None, T0)), Refusal::UnknownHold);
    let h1 = l.hold(payer, 1000, T0).unwrap();
    let _h2 = l.hold(payer, 1000, T0 + 10_000).unwrap();
    assert_eq!(
        l.expire_holds(h1.expires_ms + 1).unwrap(),
        1,
        "only the first has lapsed"
    );
    assert_eq!(l.balance(payer).unwrap().pending, bly(1));
    assert_eq!(l.open_holds().unwrap(), 1);
    assert_eq!(
        refusal(l.capture(&h1.id, 1, &Served::default(), addr(0xee), None, T0)),
        Refusal::HoldNotActive
    );
    assert_balanced(&l);
}

pub(crate) fn idempotency_of_requests(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let payer = addr(0x11);
    let key = IdempotencyKey::new(payer, "req-1", b"{\"prompt\":\"hi\"}").unwrap();
    assert_eq!(l.idempotency_begin(&key, T0).unwrap(), Begin::Fresh);
    assert_eq!(l.idempotency_begin(&key, T0 + 1).unwrap(), Begin::InFlight);
    let other = IdempotencyKey::new(payer, "req-1", b"{\"prompt\":\"bye\"}").unwrap();
    assert_eq!(
        refusal(l.idempotency_begin(&other, T0)),
        Refusal::IdempotencyKeyReused
    );
    let h = l.hold(payer, 100, T0).unwrap();
    let reply = IdempotentReply {
        status: 200,
        body: "{\"text\":\"hello\"}".into(),
    };
    l.capture(
        &h.id,
        40,
        &Served::default(),
        addr(0xee),
        Some((&key, &reply)),
        T0,
    )
    .unwrap();
    assert_eq!(
        l.idempotency_begin(&key, T0 + 2).unwrap(),
        Begin::Done(reply)
    );
    // A failed attempt forgets its key, so the retry runs afresh.
    let key2 = IdempotencyKey::new(payer, "req-2", b"x").unwrap();
    assert_eq!(l.idempotency_begin(&key2, T0).unwrap(), Begin::Fresh);
    let h = l.hold(payer, 100, T0).unwrap();
    l.void(&h.id, Some(&key2), T0).unwrap();
    assert_eq!(l.idempotency_begin(&key2, T0).unwrap(), Begin::Fresh);
    // A pending record whose process died is taken over after the hold TTL.
    assert_eq!(
        l.idempotency_begin(&key2, T0 + 900_001).unwrap(),
        Begin::Fresh
    );
    assert!(IdempotencyKey::new(payer, "bad key", b"").is_err());
    assert!(IdempotencyKey::new(payer, &"k".repeat(256), b"").is_err());
    assert_balanced(&l);
}

pub(crate) fn mint_respects_inflation_and_supply_caps(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let e = econ();
    // 1,000,000 BLY circulating: one day may mint 10%/365.25 of it, about 273.79 BLY.
    let budget = e.epoch_budget(bly(1_000_000));
    assert_eq!(budget.nano(), 273_785_078_713);
    let day = T0 - T0 % e.epoch_ms;
    let r = l
        .mint(addr(0x77), bly(200), "validation reward", day)
        .unwrap();
    assert_eq!(l.balance(addr(0x77)).unwrap().available, bly(200));
    assert_eq!(r.from, SystemAccount::Emission.address());
    assert_eq!(
        refusal(l.mint(addr(0x77), bly(74), "", day + 1)),
        Refusal::InflationCapReached
    );
    l.mint(
        addr(0x77),
        Amount(budget.nano() - 200 * NANO_PER_BLY),
        "",
        day + 2,
    )
    .unwrap();
    assert_eq!(
        refusal(l.mint(addr(0x77), Amount(1), "", day + 3)),
        Refusal::InflationCapReached
    );
    // Rewards are never refused for the cap: what the epoch's budget does not allow is owed
    // and paid, oldest first, from later epochs' budgets.
    let next = day + e.epoch_ms;
    let r = l
        .reward(addr(0x78), bly(60), false, "3 batches", next)
        .unwrap();
    assert_eq!((r.minted, r.owed), (bly(60), Amount::ZERO));
    let learn = e.learning_reward(100).unwrap();
    assert_eq!(learn, bly(20_000), "20,000 BLY for 1%");
    let r = l.reward(addr(0x79), learn, false, "1%", next).unwrap();
    assert!(r.owed > Amount::ZERO && r.minted > Amount::ZERO);
    assert_eq!(r.minted.nano() + r.owed.nano(), learn.nano());
    assert_eq!(l.balance(addr(0x79)).unwrap().owed, r.owed);
    assert_eq!(
        refusal(l.mint(addr(0x77), Amount(1), "", next + 1)),
        Refusal::InflationCapReached,
        "the reward took the rest of the epoch's budget"
    );
    let paid = l.pay_owed(next + e.epoch_ms).unwrap();
    assert!(paid > Amount::ZERO);
    assert_eq!(
        l.balance(addr(0x79)).unwrap().owed.nano(),
        r.owed.nano() - paid.nano()
    );
    // A later epoch has a fresh budget.
    l.mint(addr(0x77), bly(1), "", day + 3 * e.epoch_ms)
        .unwrap();
    assert_eq!(
        refusal(l.mint(SystemAccount::Burn.address(), bly(1), "", day + e.epoch_ms)),
        Refusal::SystemAccount
    );
    assert_balanced(&l);
    // Never beyond the supply cap, whatever the inflation cap says.
    let place = Place::new(backend);
    let tiny = Tokenomics {
        supply_cap: "100".into(),
        genesis_allocation: "90".into(),
        operator_grant: "0".into(),
        inflation_cap_bps: 10_000,
        epoch_seconds: 31_557_600,
        ..Tokenomics::default()
    }
    .check()
    .unwrap();
    let l = place.ledger(tiny);
    l.init(T0).unwrap();
    assert_eq!(
        refusal(l.mint(addr(1), bly(11), "", T0)),
        Refusal::SupplyCapReached
    );
    l.mint(addr(1), bly(9), "", T0).unwrap();
    assert_eq!(l.supply().unwrap().unminted, bly(1));
    assert_balanced(&l);
}

pub(crate) fn history_pages_newest_first(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    for i in 1..=5 {
        l.transfer(
            addr(0x11),
            addr(0x22),
            bly(i),
            &format!("t{i}"),
            None,
            T0 + i,
        )
        .unwrap();
    }
    let page = l.history(addr(0x22), None, 3).unwrap();
    let refs: Vec<_> = page.iter().map(|p| p.reference.as_str()).collect();
    assert_eq!(refs, ["t5", "t4", "t3"]);
    let next = l.history(addr(0x22), Some(page[2].seq), 3).unwrap();
    let refs: Vec<_> = next.iter().map(|p| p.reference.as_str()).collect();
    assert_eq!(refs, ["t2", "t1"]);
    let payer = l.history(addr(0x11), None, 10).unwrap();
    assert_eq!(payer.len(), 6, "five payments and the seed");
    assert_eq!(
        refusal(l.history(addr(0x99), None, 10)),
        Refusal::UnknownAccount
    );
}

pub(crate) fn api_keys_bind_accounts(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let dir = tempfile::tempdir().unwrap();
    let ks = Keystore::new(dir.path().join("keystore"), "pw").with_scrypt_log_n(10);
    let (a, key) = l.new_user(&ks, T0).unwrap();
    assert!(key.starts_with("bly_"));
    assert_eq!(l.account_for_api_key(&key).unwrap(), a);
    assert_eq!(l.balance(a).unwrap().available, Amount::ZERO);
    assert_eq!(
        refusal(l.account_for_api_key("bly_0000")),
        Refusal::UnknownApiKey
    );
    assert_eq!(
        refusal(l.account_for_api_key("nonsense")),
        Refusal::UnknownApiKey
    );
    let k2 = l.issue_api_key(a, T0).unwrap();
    assert_ne!(k2, key);
    assert_eq!(l.account_for_api_key(&k2).unwrap(), a);
    assert_eq!(blyan_ledger::address_of(&ks.load(&a).unwrap()), a);
}

fn new_chain() -> (tempfile::TempDir, blyan_chain::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = blyan_chain::Store::open(dir.path()).unwrap();
    let blocks = genesis::random_genesis(1, &node_key()).unwrap();
    genesis::init(&store, blocks).unwrap();
    (dir, store)
}

pub(crate) fn anchoring_and_audit_agree(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let (_dir, chain) = new_chain();
    let report = l.audit(Some(&chain)).unwrap();
    assert!(report.ok);
    assert_eq!((report.anchored, report.unanchored), (0, 3));
    let first = l.anchor(&chain, &node_key(), 2, T0).unwrap();
    assert_eq!(first.len(), 2, "3 postings in batches of 2");
    assert_eq!((first[0].first_seq, first[0].count), (0, 2));
    assert_eq!((first[1].first_seq, first[1].count), (2, 1));
    for i in 0..5 {
        l.transfer(addr(0x11), addr(0x22), bly(1), &format!("{i}"), None, T0)
            .unwrap();
    }
    let report = l.audit(Some(&chain)).unwrap();
    assert!(report.ok, "{:?}", report.discrepancies);
    assert_eq!(
        (report.anchored, report.unanchored, report.batches),
        (3, 5, 2)
    );
    let more = l.anchor(&chain, &node_key(), 100, T0 + 1).unwrap();
    assert_eq!(more.len(), 1);
    assert!(
        l.anchor(&chain, &node_key(), 100, T0 + 2)
            .unwrap()
            .is_empty(),
        "nothing new"
    );
    let report = l.audit(Some(&chain)).unwrap();
    assert!(report.ok, "{:?}", report.discrepancies);
    assert_eq!((report.anchored, report.unanchored), (8, 0));
    // The batches verify as chain blocks too.
    let v = chain.verify(blyan_chain::VerifyMode::Full, |_| {}).unwrap();
    assert!(v.is_ok(), "{v:?}");
}

pub(crate) fn audit_names_tampering(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let (_dir, chain) = new_chain();
    l.anchor(&chain, &node_key(), 100, T0).unwrap();
    // Someone edits a balance behind the ledger's back.
    let store = place.open();
    store
        .write(&mut |tx| {
            tx.exec(
                "UPDATE balances SET amount = amount + 7 WHERE address = $1 AND book = 0",
                &[addr(0x22).to_hex_lower().into()],
            )?;
            Ok(())
        })
        .unwrap();
    let report = l.audit(Some(&chain)).unwrap();
    assert!(!report.ok);
    assert!(
        report.discrepancies[0].contains("balance is 7"),
        "{:?}",
        report.discrepancies
    );
    // Someone rewrites an anchored posting (and the balances to match).
    let place = Place::new(backend);
    let l = setup(&place);
    let (_dir, chain) = new_chain();
    l.anchor(&chain, &node_key(), 100, T0).unwrap();
    let store = place.open();
    store
        .write(&mut |tx| {
            tx.exec(
                "UPDATE postings SET reference = 'edited' WHERE seq = 2",
                &[],
            )?;
            Ok(())
        })
        .unwrap();
    let report = l.audit(Some(&chain)).unwrap();
    assert!(!report.ok);
    assert!(
        report.discrepancies[0].contains("posting 2 in the SQL store differs"),
        "{:?}",
        report.discrepancies
    );
}

pub(crate) fn concurrent_transfers_never_overdraw(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let accounts: Vec<Address> = (0x40..0x44).map(addr).collect();
    for a in &accounts {
        l.create_account(*a, AccountKind::User, T0).unwrap();
        l.transfer(addr(0x11), *a, bly(10), "", None, T0).unwrap();
    }
    let before = l.posting_count().unwrap();
    // Four threads, each with its own connection, each trying to move 1 BLY 30 times from
    // its account around the ring: far more than 10 BLY of attempts meet each account.
    let ok = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for (i, a) in accounts.iter().enumerate() {
            let to = accounts[(i + 1) % accounts.len()];
            let l = Ledger::new(place.open(), econ());
            let ok = &ok;
            s.spawn(move || {
                for n in 0..30 {
                    match l.transfer(*a, to, bly(1 + n % 3), "", None, T0) {
                        Ok(_) => {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => assert_eq!(e.refusal(), Some(Refusal::InsufficientFunds), "{e}"),
                    }
                }
            });
        }
    });
    let ok = ok.into_inner();
    assert!(ok > 0);
    assert_eq!(
        l.posting_count().unwrap(),
        before + ok,
        "one posting per success, no lost update"
    );
    let total: u64 = accounts
        .iter()
        .map(|a| l.balance(*a).unwrap().available.nano())
        .sum();
    assert_eq!(total, 40 * NANO_PER_BLY);
    assert_balanced(&l);
}

pub(crate) fn concurrent_idempotent_retries_charge_once(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let before = l.balance(addr(0x11)).unwrap().available;
    std::thread::scope(|s| {
        for _ in 0..6 {
            let l = Ledger::new(place.open(), econ());
            s.spawn(move || {
                let r = l
                    .transfer(addr(0x11), addr(0x22), bly(3), "once", Some("same"), T0)
                    .unwrap();
                assert_eq!(r.amount, bly(3));
            });
        }
    });
    assert_eq!(
        l.balance(addr(0x11)).unwrap().available.nano(),
        before.nano() - 3 * NANO_PER_BLY
    );
    assert_eq!(l.balance(addr(0x22)).unwrap().available, bly(3));
    assert_balanced(&l);
}

#[derive(Clone, Debug)]
enum Op {
    Transfer(u8, u8, u64),
    Hold(u8, u64),
    Capture(usize, u64, u8),
    Void(usize),
    Mint(u8, u64),
    Burn(u8, u64),
    Expire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..5, 0u8..5, 0u64..200_000_000_000).prop_map(|(a, b, n)| Op::Transfer(a, b, n)),
        (0u8..5, 1u64..200_000).prop_map(|(a, t)| Op::Hold(a, t)),
        (0usize..8, 0u64..200_000, 0u8..5).prop_map(|(h, t, c)| Op::Capture(h, t, c)),
        (0usize..8).prop_map(Op::Void),
        (0u8..5, 0u64..100_000_000_000).prop_map(|(a, n)| Op::Mint(a, n)),
        (0u8..5, 0u64..10_000_000_000).prop_map(|(a, n)| Op::Burn(a, n)),
        (0u64..2_000_000).prop_map(Op::Expire),
    ]
}

pub(crate) fn random_operation_sequences_keep_the_books(backend: &str) {
    let cases = if backend == "sqlite" { 24 } else { 8 };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            let place = Place::new(backend);
            let l = setup(&place);
            let users: Vec<Address> = (0..5).map(|i| addr(0x11 + i * 0x11)).collect();
            for u in &users[2..] {
                l.create_account(*u, AccountKind::User, T0).unwrap();
                l.transfer(
                    SystemAccount::Treasury.address(),
                    *u,
                    bly(100),
                    "",
                    None,
                    T0,
                )
                .unwrap();
            }
            let op_addr = l.resolve("operator").unwrap();
            let mut holds = Vec::new();
            let mut now = T0;
            for op in ops {
                now += 1000;
                let before = l.posting_count().unwrap();
                let result: Result<(), LedgerError> = match op {
                    Op::Transfer(a, b, n) => l
                        .transfer(
                            users[a as usize],
                            users[b as usize],
                            Amount(n),
                            "",
                            None,
                            now,
                        )
                        .map(drop),
                    Op::Hold(a, t) => l.hold(users[a as usize], t, now).map(|h| holds.push(h.id)),
                    Op::Capture(h, t, c) => match holds.get(h) {
                        Some(id) => {
                            // Some of the work done by a host (another user).
                            let routing = Served {
                                contributors: [(users[c as usize], t), (addr(0xc0), 7)]
                                    .into_iter()
                                    .collect(),
                                hosts: [(users[(c as usize + 1) % users.len()], t / 2)]
                                    .into_iter()
                                    .collect(),
                            };
                            l.capture(id, t, &routing, op_addr, None, now).map(drop)
                        }
                        None => Ok(()),
                    },
                    Op::Void(h) => match holds.get(h) {
                        Some(id) => l.void(id, None, now).map(drop),
                        None => Ok(()),
                    },
                    Op::Mint(a, n) => l.mint(users[a as usize], Amount(n), "", now).map(drop),
                    Op::Burn(a, n) => l
                        .transfer(
                            users[a as usize],
                            SystemAccount::Burn.address(),
                            Amount(n),
                            "",
                            None,
                            now,
                        )
                        .map(drop),
                    Op::Expire(dt) => l.expire_holds(now + dt * 1000).map(drop),
                };
                if let Err(e) = result {
                    prop_assert!(e.refusal().is_some(), "{e}");
                    prop_assert_eq!(l.posting_count().unwrap(), before, "a refusal posted");
                }
                let report = l.audit(None).unwrap();
                prop_assert!(report.ok, "{:?}", report.discrepancies);
            }
            Ok(())
        })
        .unwrap();
}

pub(crate) fn killed_writer_leaves_no_partial_transfer(backend: &str) {
    crate::crash::run(backend);
}

pub(crate) fn batches_are_all_or_nothing(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let (a, b) = (addr(0x11), addr(0x22));
    let receipts = l
        .transfer_batch(
            &[(a, b, bly(100)), (b, a, bly(40)), (a, b, bly(1))],
            "batch",
            T0,
        )
        .unwrap();
    assert_eq!(receipts.len(), 3);
    assert_eq!(l.balance(b).unwrap().available, bly(61));
    let before = l.posting_count().unwrap();
    // The third leg overdraws b: nothing of the batch is posted.
    assert_eq!(
        refusal(l.transfer_batch(&[(a, b, bly(1)), (b, a, bly(1)), (b, a, bly(100))], "", T0)),
        Refusal::InsufficientFunds
    );
    assert_eq!(
        refusal(l.transfer_batch(&[(a, b, bly(1)), (a, a, bly(1))], "", T0)),
        Refusal::SelfTransfer
    );
    assert_eq!(l.posting_count().unwrap(), before);
    assert_eq!(l.balance(b).unwrap().available, bly(61));
    assert_balanced(&l);
}

#[derive(Clone, Debug)]
enum RewardOp {
    /// Earn `bly` BLY (to vesting with the flag).
    Reward(u8, u64, bool),
    /// Move the clock on by whole epochs.
    Advance(u64),
    /// Settle the n-th vesting reward: its replication passed or failed.
    Settle(usize, bool),
    /// A payment round (the node runs one every probe).
    PayOwed,
}

fn reward_op() -> impl Strategy<Value = RewardOp> {
    prop_oneof![
        4 => (0u8..3, 1u64..20_000, any::<bool>()).prop_map(|(a, n, v)| RewardOp::Reward(a, n, v)),
        3 => (0u64..4).prop_map(RewardOp::Advance),
        2 => (0usize..6, any::<bool>()).prop_map(|(i, p)| RewardOp::Settle(i, p)),
        1 => Just(RewardOp::PayOwed),
    ]
}

/// Every epoch's row: (base, minted).
fn epoch_rows(place: &Place) -> Vec<(Amount, Amount)> {
    let store = place.open();
    let mut rows = Vec::new();
    store
        .read(&mut |tx| {
            rows = tx
                .query(
                    "SELECT base, minted FROM emission_epochs ORDER BY epoch",
                    &[],
                )?
                .iter()
                .map(|r| Ok((Amount(r.int(0)? as u64), Amount(r.int(1)? as u64))))
                .collect::<Result<_, LedgerError>>()?;
            Ok(())
        })
        .unwrap();
    rows
}

pub(crate) fn rewards_beyond_the_caps_are_owed_and_never_lost(backend: &str) {
    let cases = if backend == "sqlite" { 16 } else { 6 };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let e = econ();
    runner
        .run(&proptest::collection::vec(reward_op(), 1..20), |ops| {
            let place = Place::new(backend);
            let l = setup(&place);
            let users: Vec<Address> = (0..3).map(|i| addr(0x31 + i)).collect();
            let minted_at_start = l.supply().unwrap().circulating;
            let mut now = T0 - T0 % e.epoch_ms;
            let mut earned = Amount::ZERO;
            let mut cancelled = Amount::ZERO;
            // (reference, who, amount, settled) of each vesting reward.
            let mut vests: Vec<(String, Address, Amount, bool)> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                now += 1;
                match op {
                    RewardOp::Reward(a, n, vesting) => {
                        let amount = bly(n);
                        let reference = format!("r{i}");
                        let r = l
                            .reward(users[a as usize], amount, vesting, &reference, now)
                            .unwrap();
                        prop_assert_eq!(r.minted.nano() + r.owed.nano(), amount.nano());
                        earned = earned.checked_add(amount).unwrap();
                        if vesting {
                            vests.push((reference, users[a as usize], amount, false));
                        }
                    }
                    RewardOp::Advance(days) => now += days * e.epoch_ms,
                    RewardOp::Settle(k, pass) => {
                        if let Some(v) = vests.get_mut(k).filter(|v| !v.3) {
                            v.3 = true;
                            let to = pass.then_some(v.1);
                            let s = l
                                .settle_vested(&v.0, to, v.2, &format!("{}:settle", v.0), now)
                                .unwrap();
                            prop_assert_eq!(
                                s.moved.nano() + s.converted.nano() + s.cancelled.nano(),
                                v.2.nano()
                            );
                            cancelled = cancelled.checked_add(s.cancelled).unwrap();
                        }
                    }
                    RewardOp::PayOwed => {
                        l.pay_owed(now).unwrap();
                    }
                }
                // Never beyond the caps: each epoch mints at most its budget.
                for (base, minted) in epoch_rows(&place) {
                    prop_assert!(
                        minted <= e.epoch_budget(base),
                        "{minted:?} > budget of {base:?}"
                    );
                }
                // Nothing earned is lost: minted, still owed, or taken back by a failed
                // replication (what was minted of it is burned; what was not, cancelled).
                let minted = l
                    .supply()
                    .unwrap()
                    .circulating
                    .checked_add(l.supply().unwrap().burned)
                    .unwrap()
                    .checked_sub(minted_at_start)
                    .unwrap();
                let owed = l.owed_totals().unwrap().outstanding;
                prop_assert_eq!(
                    minted.nano() + owed.nano() + cancelled.nano(),
                    earned.nano(),
                    "minted {:?} + owed {:?} + cancelled {:?}",
                    minted,
                    owed,
                    cancelled
                );
                // Each account's third figure is its open entries.
                for u in &users {
                    let entries: u64 = l
                        .owed_entries(Some(*u))
                        .unwrap()
                        .iter()
                        .map(|o| o.outstanding().nano())
                        .sum();
                    let shown = l.balance(*u).map_or(0, |b| b.owed.nano());
                    prop_assert_eq!(shown, entries);
                }
                let report = l.audit(None).unwrap();
                prop_assert!(report.ok, "{:?}", report.discrepancies);
            }
            // Given enough epochs, everything still owed is paid (at most 20 rewards of under
            // 20,000 BLY against a budget of about 274 BLY a day: under 1,500 epochs).
            for _ in 0..2000 {
                if l.owed_totals().unwrap().entries == 0 {
                    break;
                }
                now += e.epoch_ms;
                l.pay_owed(now).unwrap();
            }
            prop_assert_eq!(
                l.owed_totals().unwrap(),
                blyan_ledger::OwedTotals::default()
            );
            Ok(())
        })
        .unwrap();
}

pub(crate) fn wallets_manage_their_keys_and_revoked_sessions_persist(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let w = addr(0x33);
    assert!(l.open_wallet(w, T0).unwrap(), "opened at the first login");
    assert!(!l.open_wallet(w, T0 + 1).unwrap(), "found at the second");
    assert_eq!(
        refusal(l.open_wallet(SystemAccount::Treasury.address(), T0)),
        Refusal::SystemAccount
    );
    let (key, info) = l.issue_own_api_key(w, T0).unwrap();
    assert_eq!(l.account_for_api_key(&key).unwrap(), w);
    assert_eq!(l.api_keys(w).unwrap(), vec![info.clone()]);
    // Another account cannot revoke it, nor can a malformed id.
    assert_eq!(
        refusal(l.revoke_api_key(addr(0x11), &info.id)),
        Refusal::UnknownApiKey
    );
    assert_eq!(refusal(l.revoke_api_key(w, "zz")), Refusal::UnknownApiKey);
    assert_eq!(l.account_for_api_key(&key).unwrap(), w);
    l.revoke_api_key(w, &info.id.to_uppercase()).unwrap();
    assert_eq!(refusal(l.account_for_api_key(&key)), Refusal::UnknownApiKey);
    assert!(l.api_keys(w).unwrap().is_empty());
    assert_eq!(
        refusal(l.revoke_api_key(w, &info.id)),
        Refusal::UnknownApiKey
    );
    for _ in 0..blyan_ledger::API_KEYS_PER_ACCOUNT_MAX {
        l.issue_own_api_key(w, T0).unwrap();
    }
    assert_eq!(refusal(l.issue_own_api_key(w, T0)), Refusal::ApiKeyLimit);
    assert_eq!(
        refusal(l.issue_own_api_key(addr(0x44), T0)),
        Refusal::UnknownAccount
    );

    l.revoke_session("a1", T0 + 1_000, T0).unwrap();
    l.revoke_session("a1", T0 + 1_000, T0).unwrap();
    l.revoke_session("b2", T0 + 5_000, T0).unwrap();
    // A second connection sees them: they are stored, not held in memory.
    let again = place.ledger(econ());
    let mut live = again.revoked_sessions(T0 + 2_000).unwrap();
    live.sort();
    assert_eq!(live, vec![("b2".to_owned(), T0 + 5_000)]);
    l.revoke_session("c3", T0 + 9_000, T0 + 6_000).unwrap();
    assert_eq!(
        again.revoked_sessions(T0).unwrap(),
        vec![("c3".to_owned(), T0 + 9_000)],
        "revocations that ran out are forgotten"
    );
    assert_balanced(&l);
}

pub(crate) fn topups_credit_once_and_refunds_take_back_what_is_unspent(backend: &str) {
    let place = Place::new(backend);
    let l = setup(&place);
    let w = addr(0x55);
    let treasury = SystemAccount::Treasury.address();
    let before = l.balance(treasury).unwrap().available;
    let topup = |event: &str, payment: &str| blyan_ledger::TopUp {
        event: event.to_owned(),
        payment: payment.to_owned(),
        address: w,
        amount: bly(5_000),
        paid_minor: 500,
        currency: "usd".to_owned(),
    };
    let first = l.credit_topup(&topup("evt_1", "pi_1"), T0).unwrap();
    assert!(matches!(first, blyan_ledger::Credited::Credited { .. }));
    assert_eq!(
        l.balance(w).unwrap().available,
        bly(5_000),
        "account opened"
    );
    // The same event retried, or another event of the same payment: nothing more.
    for (e, p) in [("evt_1", "pi_1"), ("evt_2", "pi_1"), ("evt_1", "pi_2")] {
        assert_eq!(
            l.credit_topup(&topup(e, p), T0).unwrap(),
            blyan_ledger::Credited::AlreadyCredited
        );
    }
    assert_eq!(l.balance(w).unwrap().available, bly(5_000));
    assert_eq!(
        l.balance(treasury).unwrap().available,
        before.checked_sub(bly(5_000)).unwrap()
    );
    assert_eq!(
        refusal(l.credit_topup(&topup("evt 3", "pi_3"), T0)),
        Refusal::InvalidReference
    );

    // The wallet spends 4,000; a refund of 40% takes back 2,000 (it is there).
    l.transfer(w, addr(0x22), bly(4_000), "spent", None, T0)
        .unwrap();
    let r = l.reverse_topup("evt_r1", "pi_1", 200, T0).unwrap();
    assert_eq!(
        (r.reversed, r.flagged, r.replayed),
        (bly(1_000), bly(1_000), false)
    );
    assert_eq!(l.balance(w).unwrap().available, Amount::ZERO);
    // Retried: nothing more.
    let again = l.reverse_topup("evt_r1", "pi_1", 200, T0).unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.reversed, again.flagged),
        (Amount::ZERO, Amount::ZERO)
    );
    // The wallet is paid 1,500 more; the refund grows to the whole payment: the 3,000
    // still due is taken as far as 1,500 goes and the rest flagged.
    l.transfer(treasury, w, bly(1_500), "more", None, T0)
        .unwrap();
    let full = l.reverse_topup("evt_r2", "pi_1", 500, T0).unwrap();
    assert_eq!((full.reversed, full.flagged), (bly(1_500), bly(1_500)));
    let rec = &l.topups(w).unwrap()[0];
    assert_eq!((rec.reversed, rec.flagged), (bly(2_500), bly(2_500)));
    // Nothing is ever taken beyond what was credited, however large the reported refund.
    let over = l.reverse_topup("evt_r3", "pi_1", 9_999, T0).unwrap();
    assert_eq!((over.reversed, over.flagged), (Amount::ZERO, Amount::ZERO));
    assert_eq!(
        refusal(l.reverse_topup("evt_r4", "pi_unknown", 500, T0)),
        Refusal::UnknownPayment
    );
    assert!(
        l.note_payment_event("evt_x", "customer.created", T0)
            .unwrap()
    );
    assert!(
        !l.note_payment_event("evt_x", "customer.created", T0)
            .unwrap()
    );
    assert_balanced(&l);
}
