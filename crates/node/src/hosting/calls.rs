//! The caller's side of expert calls, with no sockets, threads or clock of its own: the
//! table of hosts and what they announced, which host each call goes to, when a call is
//! hedged to a second host or given up, and whether an answer is the host's signed one.
//!
//! [`super::Hosting`] drives it with threads and HTTP on the wall clock. A simulation drives
//! the same code with its own network and clock (`crates/node/tests/remote_sim.rs`), so
//! what it checks (choice, hedging, timeouts, failover, bans) is what a node does.
//! Time here is a [`Duration`] since an epoch the driver picks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use blyan_model::{RemoteAnswer, RemoteCall, RemoteOutcome};
use blyan_primitives::{Address, ExpertId, Hash, Signature};
use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::{
    BATCH_BODY_MAX, BATCH_CALLS_MAX, CALL_TIMEOUT, HEDGE_DEFAULT, HOST_TTL, RECENT_CALLS,
    answer_digest, batch_answer_digest, bound_key, checked_announcement, put_call_head,
};

/// How long a host is not asked after one failed request; each further failure in a row
/// doubles it.
pub const BENCH_FIRST: Duration = Duration::from_millis(100);

/// What a peer said it hosts.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    /// Its address (its API address; a simulation's peer name).
    pub api: String,
    /// The account its answers are attributed to (and paid to).
    pub account: Address,
    /// The network key (Ed25519, shown in hex) that signs its answers, checked against its
    /// binding to `account`.
    #[serde(rename = "net_key", serialize_with = "key_hex")]
    pub key: VerifyingKey,
    /// The expert blocks it computes.
    pub blocks: BTreeSet<Hash>,
    /// Generations it had in flight when it last answered.
    pub queue: u64,
    /// Recent round trip of its calls, ms (exponentially weighted; its heartbeat's before any call).
    pub latency_ms: f64,
    /// Calls it answered, and calls that failed (timeout, error, bad signature).
    pub answered: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Milliseconds since its last announcement.
    pub seen_ms_ago: u64,
    /// Why it is banned, if it is (a spot check found its answer wrong).
    pub banned: Option<String>,
    /// Whether the registry lets it host (on a network that admits hosts); a host that it
    /// does not is never called.
    pub admitted: bool,
    /// Failed requests in a row (reset by an answered one, not by an announcement).
    pub strikes: u32,
    /// When its last announcement was heard.
    #[serde(skip)]
    seen: Option<Duration>,
    /// Until when it is not asked, after a failed request: [`BENCH_FIRST`], doubling with
    /// each failure in a row, at most [`HOST_TTL`]; or until its next announcement.
    #[serde(skip)]
    benched_until: Option<Duration>,
    /// The account's signature binding `key` to it.
    #[serde(skip)]
    binding: Signature,
    /// Round trips of its last calls, ms, newest last.
    #[serde(skip)]
    recent: VecDeque<f64>,
}

fn key_hex<S: serde::Serializer>(key: &VerifyingKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(key.as_bytes()))
}

impl HostInfo {
    /// A round trip of `ms` into its latency and its recent calls.
    fn round_trip(&mut self, ms: f64) {
        self.latency_ms = 0.8 * self.latency_ms + 0.2 * ms;
        if self.recent.len() == RECENT_CALLS {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
    }

    /// After how long a call to it is hedged to a second host: its recent p95 (at least
    /// 1 ms), or [`HEDGE_DEFAULT`] before it has answered enough calls.
    fn hedge_after(&self) -> Duration {
        if self.recent.len() < 8 {
            return HEDGE_DEFAULT;
        }
        let mut r: Vec<f64> = self.recent.iter().copied().collect();
        r.sort_by(f64::total_cmp);
        let p95 = r[(r.len() - 1) * 95 / 100];
        Duration::from_secs_f64((p95 / 1e3).max(0.001))
    }
}

/// Why an announcement counted for nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unheard {
    /// It names no account.
    NoAccount,
    /// Its network key is not bound to its account by the account's signature.
    Unbound,
    /// It is unsigned, signed by another key, altered, stale, or from a clock far ahead.
    BadAnnouncement,
}

/// The hosts a node knows: what each announced, how its calls went, and whether it is
/// banned.
#[derive(Debug, Default)]
pub struct HostTable {
    hosts: BTreeMap<String, HostInfo>,
}

impl HostTable {
    /// Takes `api`'s announcement (the JSON of `GET /experts/hosted`, pulled or pushed),
    /// heard at `now` (`now_ms` on the unix clock, against which it must be fresh) after a
    /// round trip of `rtt_ms`, if its key is bound to its account and it is signed by that
    /// key. `admitted` says whether the registry lets that key host. A ban outlives any
    /// announcement.
    pub fn heard(
        &mut self,
        api: &str,
        announcement: &serde_json::Value,
        rtt_ms: f64,
        now: Duration,
        now_ms: u64,
        admitted: impl FnOnce(&[u8; 32]) -> bool,
    ) -> Result<(), Unheard> {
        let account: Address = announcement["account"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or(Unheard::NoAccount)?;
        let (key, binding) = bound_key(announcement, &account).ok_or(Unheard::Unbound)?;
        let (blocks, queue, _) = checked_announcement(announcement, &account, &key, now_ms)
            .ok_or(Unheard::BadAnnouncement)?;
        let entry = self
            .hosts
            .entry(api.to_owned())
            .or_insert_with(|| HostInfo {
                api: api.to_owned(),
                account,
                key,
                blocks: BTreeSet::new(),
                queue: 0,
                latency_ms: rtt_ms,
                answered: 0,
                failed: 0,
                seen_ms_ago: 0,
                banned: None,
                admitted: false,
                strikes: 0,
                seen: None,
                benched_until: None,
                binding,
                recent: VecDeque::new(),
            });
        entry.account = account;
        entry.admitted = admitted(key.as_bytes());
        entry.key = key;
        entry.binding = binding;
        entry.blocks = blocks;
        entry.queue = queue;
        entry.seen = Some(now);
        // It is up: asked again now, though a failure soon after benches it longer.
        entry.benched_until = None;
        Ok(())
    }

    /// The hosts known at `now`, with how long ago each was heard.
    pub fn hosts(&self, now: Duration) -> Vec<HostInfo> {
        self.hosts
            .values()
            .map(|h| HostInfo {
                seen_ms_ago: h
                    .seen
                    .map_or(u64::MAX, |s| now.saturating_sub(s).as_millis() as u64),
                ..h.clone()
            })
            .collect()
    }

    /// Two live, unbanned, admitted hosts of `block` at `now`, the better first: of two
    /// picked at random, the one with the shorter queue, then the lower latency ("the power
    /// of two choices"); and after how long a call to the first is hedged to the second.
    pub fn pick<R: rand::Rng + ?Sized>(
        &self,
        block: &Hash,
        now: Duration,
        rng: &mut R,
    ) -> (Vec<Target>, Duration) {
        use rand::seq::SliceRandom;
        let mut live: Vec<&HostInfo> = self
            .hosts
            .values()
            .filter(|h| {
                h.banned.is_none()
                    && h.admitted
                    && h.seen.is_some_and(|s| now.saturating_sub(s) < HOST_TTL)
                    && h.benched_until.is_none_or(|t| now >= t)
                    && h.blocks.contains(block)
            })
            .collect();
        live.shuffle(rng);
        live.truncate(2);
        live.sort_by(|a, b| {
            a.queue
                .cmp(&b.queue)
                .then(a.latency_ms.total_cmp(&b.latency_ms))
        });
        let hedge = live.first().map_or(HEDGE_DEFAULT, |h| h.hedge_after());
        let targets = live
            .iter()
            .map(|h| Target {
                api: h.api.clone(),
                account: h.account,
                key: h.key,
                binding: h.binding,
            })
            .collect();
        (targets, hedge)
    }

    /// Bans the host at `api` for `reason`; whether it is known.
    pub fn ban(&mut self, api: &str, reason: String) -> bool {
        match self.hosts.get_mut(api) {
            Some(h) => {
                tracing::warn!(host = %api, account = %h.account, %reason, "expert host banned");
                h.banned = Some(reason);
                true
            }
            None => false,
        }
    }

    /// A request to `api` given up after `ms` because another host answered its calls
    /// first: its round trip is at least that. Neither an answer nor a failure.
    pub fn outrun(&mut self, api: &str, ms: f64) {
        if let Some(h) = self.hosts.get_mut(api) {
            h.round_trip(ms);
        }
    }

    /// A request to `api` that took `ms`, ending at `now`: answered whole (`ok`), or failed,
    /// after which the host is benched for a while, longer with each failure in a row (a
    /// lost message costs a host a moment; a dead one is tried ever more rarely until its
    /// announcements run out).
    pub fn record(&mut self, api: &str, ok: bool, ms: f64, now: Duration) {
        if let Some(h) = self.hosts.get_mut(api) {
            if ok {
                h.answered += 1;
                h.strikes = 0;
                h.benched_until = None;
                h.round_trip(ms);
            } else {
                h.failed += 1;
                let bench = BENCH_FIRST
                    .saturating_mul(1 << h.strikes.min(16))
                    .min(HOST_TTL);
                h.strikes = h.strikes.saturating_add(1);
                h.benched_until = Some(now + bench);
            }
        }
    }
}

/// A host a call may go to: where, whose, and the key its answers must be signed with.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its address.
    pub api: String,
    /// Its account, which is paid for its answers.
    pub account: Address,
    key: VerifyingKey,
    binding: Signature,
}

/// One request an [`Exchange`] wants sent: calls `calls` (indices into its calls) to host
/// `to`, all in one, as attempt `attempt`.
#[derive(Clone, Debug)]
pub struct Dispatch {
    /// Names the attempt in [`Exchange::answered`].
    pub attempt: u64,
    /// The host.
    pub to: Target,
    /// The calls it carries.
    pub calls: Vec<usize>,
}

struct Pending {
    hosts: std::vec::IntoIter<Target>,
    hedge_at: Duration,
    hedged: bool,
    outstanding: usize,
    outcome: RemoteOutcome,
    done: bool,
}

struct Attempt {
    give_up_at: Duration,
    calls: BTreeSet<usize>,
}

/// One layer's remote calls, from the first request to the last answer: each call goes to
/// the better of two hosts, the calls for one host in as few requests as the batch limits
/// allow; a call whose host has not answered within its recent p95, or failed, goes to the
/// other host too, as a request of its own; an attempt unanswered after [`CALL_TIMEOUT`]
/// has failed. The first good answer of a call wins; a call no host answered is left to the
/// caller to compute.
///
/// The driver sends what [`Exchange::start`], [`Exchange::answered`] and [`Exchange::tick`]
/// return, calls `tick` at [`Exchange::deadline`], and stops when [`Exchange::done`].
pub struct Exchange {
    pending: Vec<Pending>,
    /// Each call's bytes in a request body.
    sizes: Vec<usize>,
    attempts: BTreeMap<u64, Attempt>,
    next_attempt: u64,
    hedged: u64,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("calls", &self.pending.len())
            .field("attempts", &self.attempts.len())
            .field("hedged", &self.hedged)
            .finish()
    }
}

impl Exchange {
    /// The exchange of `calls` at `now`, its hosts picked from `table` with `rng`, and its
    /// first requests.
    pub fn start<R: rand::Rng + ?Sized>(
        calls: &[RemoteCall],
        table: &HostTable,
        now: Duration,
        rng: &mut R,
    ) -> (Exchange, Vec<Dispatch>) {
        let mut ex = Exchange {
            pending: calls
                .iter()
                .map(|call| {
                    let (hosts, hedge) = table.pick(&call.block, now, rng);
                    Pending {
                        hosts: hosts.into_iter(),
                        hedge_at: now + hedge,
                        hedged: false,
                        outstanding: 0,
                        outcome: RemoteOutcome::default(),
                        done: false,
                    }
                })
                .collect(),
            sizes: calls.iter().map(|c| 40 + c.rows.wire_len()).collect(),
            attempts: BTreeMap::new(),
            next_attempt: 0,
            hedged: 0,
        };
        let mut first = Vec::new();
        for i in 0..calls.len() {
            match ex.claim(i) {
                Some(to) => first.push((to, i)),
                None => ex.pending[i].done = true,
            }
        }
        let sends = ex.requests(first, now);
        (ex, sends)
    }

    /// `calls` (a host and a call each) as requests: the calls for one host in as few as
    /// the batch limits allow.
    fn requests(&mut self, calls: Vec<(Target, usize)>, now: Duration) -> Vec<Dispatch> {
        let mut by_host: BTreeMap<String, (Target, Vec<usize>)> = BTreeMap::new();
        for (to, i) in calls {
            by_host
                .entry(to.api.clone())
                .or_insert_with(|| (to, Vec::new()))
                .1
                .push(i);
        }
        let mut sends = Vec::new();
        for (to, all) in by_host.into_values() {
            let mut batch = Vec::new();
            let mut bytes = 4;
            for i in all {
                let size = self.sizes[i];
                if !batch.is_empty()
                    && (batch.len() == BATCH_CALLS_MAX || bytes + size > BATCH_BODY_MAX / 2)
                {
                    sends.push(self.attempt(to.clone(), std::mem::take(&mut batch), now));
                    bytes = 4;
                }
                batch.push(i);
                bytes += size;
            }
            if !batch.is_empty() {
                sends.push(self.attempt(to, batch, now));
            }
        }
        sends
    }

    /// The next host of call `i`, now counted as sent its rows.
    fn claim(&mut self, i: usize) -> Option<Target> {
        let p = &mut self.pending[i];
        let to = p.hosts.next()?;
        if !p.outcome.sent_to.is_empty() {
            self.hedged += 1;
        }
        p.outcome.sent_to.push(to.api.clone());
        p.outstanding += 1;
        Some(to)
    }

    fn attempt(&mut self, to: Target, calls: Vec<usize>, now: Duration) -> Dispatch {
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        self.attempts.insert(
            attempt,
            Attempt {
                give_up_at: now + CALL_TIMEOUT,
                calls: calls.iter().copied().collect(),
            },
        );
        Dispatch { attempt, to, calls }
    }

    /// Attempt `attempt`'s answer to call `call` (`None`: it failed, or its answer was not
    /// the host's signed one), at `now`; what to send next. Late answers, to calls already
    /// answered or attempts already given up, count for nothing.
    pub fn answered(
        &mut self,
        attempt: u64,
        call: usize,
        answer: Option<RemoteAnswer>,
        now: Duration,
    ) -> Vec<Dispatch> {
        self.answered_all(attempt, [(call, answer)], now)
    }

    /// [`Exchange::answered`] for several calls of one attempt at once: the calls that go
    /// to their second host now go to it together.
    pub fn answered_all(
        &mut self,
        attempt: u64,
        answers: impl IntoIterator<Item = (usize, Option<RemoteAnswer>)>,
        now: Duration,
    ) -> Vec<Dispatch> {
        let mut next = Vec::new();
        for (call, answer) in answers {
            self.settle(attempt, call, answer, &mut next);
        }
        self.requests(next, now)
    }

    /// Takes one answer; a failed call's second host, if it now has to be asked, goes to
    /// `next`.
    fn settle(
        &mut self,
        attempt: u64,
        call: usize,
        answer: Option<RemoteAnswer>,
        next: &mut Vec<(Target, usize)>,
    ) {
        let Some(a) = self.attempts.get_mut(&attempt) else {
            return;
        };
        if !a.calls.remove(&call) {
            return;
        }
        if a.calls.is_empty() {
            self.attempts.remove(&attempt);
        }
        let p = &mut self.pending[call];
        p.outstanding -= 1;
        if p.done {
            return;
        }
        match answer {
            Some(answer) => {
                p.outcome.answer = Some(answer);
                self.finish_call(call);
            }
            None => {
                // Failed at once: the second host now, if there is one.
                if !p.hedged {
                    p.hedged = true;
                    if let Some(to) = self.claim(call) {
                        next.push((to, call));
                    }
                }
                if self.pending[call].outstanding == 0 {
                    self.finish_call(call);
                }
            }
        }
    }

    /// Marks call `i` done and forgets it in every attempt still out.
    fn finish_call(&mut self, i: usize) {
        self.pending[i].done = true;
        self.attempts.retain(|_, a| {
            a.calls.remove(&i);
            !a.calls.is_empty()
        });
    }

    /// What is due at `now`: attempts past their timeout have failed, and calls slower than
    /// their host's recent p95 go to their second host as well (the calls for one host in
    /// one request).
    pub fn tick(&mut self, now: Duration) -> Vec<Dispatch> {
        let mut next = Vec::new();
        let expired: Vec<(u64, Vec<usize>)> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.give_up_at <= now)
            .map(|(&id, a)| (id, a.calls.iter().copied().collect()))
            .collect();
        for (id, calls) in expired {
            for i in calls {
                self.settle(id, i, None, &mut next);
            }
        }
        for i in 0..self.pending.len() {
            let p = &mut self.pending[i];
            if !p.done && !p.hedged && p.hedge_at <= now {
                p.hedged = true;
                if let Some(to) = self.claim(i) {
                    next.push((to, i));
                }
            }
        }
        self.requests(next, now)
    }

    /// When [`Exchange::tick`] has something to do next; none once done.
    pub fn deadline(&self) -> Option<Duration> {
        let hedges = self
            .pending
            .iter()
            .filter(|p| !p.done && !p.hedged)
            .map(|p| p.hedge_at);
        let timeouts = self.attempts.values().map(|a| a.give_up_at);
        hedges.chain(timeouts).min()
    }

    /// Whether every call has its answer or has run out of hosts.
    pub fn done(&self) -> bool {
        self.pending.iter().all(|p| p.done)
    }

    /// Calls sent to a second host so far.
    pub fn hedged(&self) -> u64 {
        self.hedged
    }

    /// What became of each call, in order.
    pub fn finish(self) -> Vec<RemoteOutcome> {
        self.pending.into_iter().map(|p| p.outcome).collect()
    }
}

/// A request of calls to one host, ready to go: its id, its body (the form
/// [`super::decode_batch`] reads; each call's rows written straight into it) and what each
/// answer must be.
#[derive(Debug)]
pub struct Outgoing {
    /// The request id; call `i` is answered as `{request}-{i}`.
    pub request: String,
    /// The body.
    pub body: Vec<u8>,
    inputs: Vec<Hash>,
    expected: Vec<usize>,
}

impl Outgoing {
    /// Request `request` of `calls`.
    pub fn new<'a>(
        request: String,
        calls: impl ExactSizeIterator<Item = &'a RemoteCall>,
    ) -> Outgoing {
        let mut body = Vec::new();
        body.extend_from_slice(&(calls.len() as u32).to_le_bytes());
        let (mut inputs, mut expected) = (Vec::new(), Vec::new());
        for c in calls {
            put_call_head(&mut body, c.expert, &c.block, c.rows.wire_len());
            let at = body.len();
            c.rows.write_to(&mut body);
            inputs.push(Hash::of(&body[at..]));
            // Its rows times the model's width, in f32.
            expected.push(c.rows.rows() * c.rows.cols() * 4);
        }
        Outgoing {
            request,
            body,
            inputs,
            expected,
        }
    }

    /// The most bytes a whole answer can have.
    pub fn answer_limit(&self) -> u64 {
        (self.expected.iter().map(|n| n + 4).sum::<usize>() + 64) as u64
    }

    /// Host `to`'s `answer` (none: no answer) to `calls`, the calls this request carries:
    /// per call, its outputs if the whole answer is complete and signed by the host's
    /// network key ([`super::batch_answer_digest`]: one signature over every call's request
    /// id, block, input and output); and whether it was. `check` says, per call of a signed
    /// answer, whether to spot-check it.
    pub fn read<'a>(
        &self,
        to: &Target,
        calls: impl Iterator<Item = &'a RemoteCall>,
        answer: Option<&[u8]>,
        mut check: impl FnMut() -> bool,
    ) -> (Vec<Option<RemoteAnswer>>, bool) {
        let n = self.inputs.len();
        let calls: Vec<&RemoteCall> = calls.take(n).collect();
        let parts = answer
            .and_then(|a| self.parts(a))
            .filter(|_| calls.len() == n);
        let Some((outputs, signature)) = parts else {
            return (vec![None; n], false);
        };
        let output_hashes: Vec<Hash> = outputs.iter().map(|o| Hash::of(o)).collect();
        let digests: Vec<Hash> = calls
            .iter()
            .zip(&output_hashes)
            .enumerate()
            .map(|(i, (call, output))| {
                answer_digest(
                    &format!("{}-{i}", self.request),
                    &call.block,
                    &self.inputs[i],
                    output,
                )
            })
            .collect();
        let digest = batch_answer_digest(&self.request, &digests);
        if to.key.verify_strict(digest.as_bytes(), &signature).is_err() {
            return (vec![None; n], false);
        }
        let answers = calls
            .iter()
            .zip(outputs)
            .enumerate()
            .map(|(i, (call, output))| {
                let check = check();
                // Only a spot-checked answer can be found wrong and need its statement.
                let evidence = check.then(|| {
                    let statement = AnswerStatement {
                        host: to.api.clone(),
                        signer: to.account,
                        net_key: hex::encode(to.key.as_bytes()),
                        binding: to.binding.to_string(),
                        request: self.request.clone(),
                        index: i,
                        expert: call.expert,
                        block: call.block,
                        input_hash: self.inputs[i],
                        output_hash: output_hashes[i],
                        answers: digests.clone(),
                        signature: hex::encode(signature.to_bytes()),
                    };
                    serde_json::to_string(&statement).unwrap_or_default()
                });
                Some(RemoteAnswer {
                    output: output
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                    host: to.api.clone(),
                    account: to.account,
                    check,
                    evidence: evidence.unwrap_or_default(),
                })
            })
            .collect();
        (answers, true)
    }

    /// A whole answer's outputs, each of the length its call needs, and its signature;
    /// none if anything is missing, of the wrong length or left over.
    fn parts<'b>(&self, answer: &'b [u8]) -> Option<(Vec<&'b [u8]>, ed25519_dalek::Signature)> {
        let mut at = 0usize;
        let mut outputs = Vec::with_capacity(self.expected.len());
        for &len in &self.expected {
            let head: [u8; 4] = answer.get(at..at.checked_add(4)?)?.try_into().ok()?;
            if u32::from_le_bytes(head) as usize != len {
                return None;
            }
            let end = (at + 4).checked_add(len)?;
            outputs.push(answer.get(at + 4..end)?);
            at = end;
        }
        let signature: [u8; 64] = answer.get(at..)?.try_into().ok()?;
        Some((outputs, ed25519_dalek::Signature::from_bytes(&signature)))
    }
}

/// A host's signed statement of one call's answer, as a spot check keeps it: enough for
/// anyone to check that the host's network key signed this output for this input of this
/// expert block (and, given the input rows, to recompute it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AnswerStatement {
    /// The host's address (its API address; a simulation's peer name).
    pub host: String,
    /// The account the host's network key is bound to.
    pub signer: Address,
    /// The host's network key (Ed25519, hex).
    pub net_key: String,
    /// The account's EIP-191 signature binding `net_key` to `signer`.
    pub binding: String,
    /// The batch's request id.
    pub request: String,
    /// The call's place in the batch: it was answered as request `{request}-{index}`.
    pub index: usize,
    /// The expert.
    pub expert: ExpertId,
    /// Its exact version.
    pub block: Hash,
    /// SHA-256 of the call's rows (their wire form).
    pub input_hash: Hash,
    /// SHA-256 of the output the host answered (f32 LE).
    pub output_hash: Hash,
    /// Every call's [`answer_digest`] in the batch, in order.
    pub answers: Vec<Hash>,
    /// The network key's Ed25519 signature (hex) of [`batch_answer_digest`] over `answers`.
    pub signature: String,
}

impl AnswerStatement {
    /// Whether the statement holds: this call's digest is the batch's `index`-th, the host's
    /// network key signed the batch, and `signer` bound that key to itself.
    pub fn verify(&self) -> bool {
        let own = answer_digest(
            &format!("{}-{}", self.request, self.index),
            &self.block,
            &self.input_hash,
            &self.output_hash,
        );
        let key = hex::decode(&self.net_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        let signature = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok());
        let binding: Option<Signature> = self.binding.parse().ok();
        let (Some(key), Some(signature), Some(binding)) = (key, signature, binding) else {
            return false;
        };
        self.answers.get(self.index) == Some(&own)
            && blyan_chain::admission::check_key_binding(&key, &self.signer, &binding)
            && VerifyingKey::from_bytes(&key).is_ok_and(|k| {
                k.verify_strict(
                    batch_answer_digest(&self.request, &self.answers).as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature),
                )
                .is_ok()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosting::{HOST_TTL, announcement_digest};
    use blyan_primitives::ExpertId;
    use ed25519_dalek::Signer as _;

    const T0: Duration = Duration::from_secs(100);
    const NOW_MS: u64 = 1_800_000_000_000;

    /// Host `api`'s signed announcement of `blocks` with `queue`, taken into `table` at `now`.
    fn hear(
        table: &mut HostTable,
        api: &str,
        seed: u8,
        blocks: &[Hash],
        queue: u64,
        now: Duration,
    ) {
        let account_key = blyan_primitives::SigningKey::from_slice(&[seed; 32]).expect("key");
        let account = blyan_primitives::address_of(&account_key);
        let net = ed25519_dalek::SigningKey::from_bytes(&[seed.wrapping_add(100); 32]);
        let public = net.verifying_key().to_bytes();
        let binding = Signature::sign(
            &account_key,
            &blyan_chain::admission::key_binding_message(&public),
        );
        let blocks: BTreeSet<Hash> = blocks.iter().copied().collect();
        let digest = announcement_digest(&account, &public, &blocks, queue, NOW_MS, 10_000);
        let announcement = serde_json::json!({
            "account": account,
            "net_key": hex::encode(public),
            "binding": binding.to_string(),
            "experts": blocks.iter().map(|b| serde_json::json!({"block": b})).collect::<Vec<_>>(),
            "queue": queue,
            "at_ms": NOW_MS,
            "ttl_ms": 10_000,
            "announcement_signature": hex::encode(net.sign(digest.as_bytes()).to_bytes()),
        });
        table
            .heard(api, &announcement, 5.0, now, NOW_MS, |_| true)
            .expect("heard");
    }

    fn call(block: Hash) -> RemoteCall {
        let mut wire = Vec::new();
        wire.extend_from_slice(&1u32.to_le_bytes());
        wire.extend_from_slice(&32u32.to_le_bytes());
        wire.extend_from_slice(&1.0f32.to_le_bytes());
        wire.extend_from_slice(&[1u8; 32]);
        RemoteCall {
            expert: ExpertId::new(1, 0),
            block,
            rows: blyan_model::ExpertRows::from_bytes(&wire, 32, 1).expect("rows"),
        }
    }

    fn answer(host: &str) -> RemoteAnswer {
        RemoteAnswer {
            output: vec![0.5; 32],
            host: host.into(),
            account: Address::ZERO,
            check: false,
            evidence: String::new(),
        }
    }

    /// Two hosts of block `x`: `a` with the shorter queue (so always asked first), `b`.
    fn two_hosts(x: Hash) -> HostTable {
        let mut table = HostTable::default();
        hear(&mut table, "a", 1, &[x], 0, T0);
        hear(&mut table, "b", 2, &[x], 5, T0);
        table
    }

    fn rng() -> rand::rngs::StdRng {
        rand::SeedableRng::seed_from_u64(7)
    }

    fn sent(d: &[Dispatch]) -> Vec<(&str, Vec<usize>)> {
        d.iter()
            .map(|d| (d.to.api.as_str(), d.calls.clone()))
            .collect()
    }

    #[test]
    fn a_layers_calls_go_to_the_better_host_in_one_request_and_failures_to_the_other_at_once() {
        let x = Hash::of(b"x");
        let table = two_hosts(x);
        let calls = vec![
            call(x),
            call(x),
            call(x),
            call(Hash::of(b"nobody hosts it")),
        ];
        let (mut ex, first) = Exchange::start(&calls, &table, T0, &mut rng());
        assert_eq!(sent(&first), [("a", vec![0, 1, 2])]);
        assert!(!ex.done());
        // Two of the three failed: both go to the other host, in one request.
        let next = ex.answered_all(
            first[0].attempt,
            [(0, None), (1, None), (2, Some(answer("a")))],
            T0 + Duration::from_millis(3),
        );
        assert_eq!(sent(&next), [("b", vec![0, 1])]);
        assert_eq!(ex.hedged(), 2);
        // A repeated or unknown answer counts for nothing.
        assert!(
            ex.answered(first[0].attempt, 0, Some(answer("a")), T0)
                .is_empty()
        );
        assert!(ex.answered(99, 0, Some(answer("a")), T0).is_empty());
        let last = ex.answered_all(next[0].attempt, [(0, Some(answer("b"))), (1, None)], T0);
        assert!(last.is_empty(), "no third host");
        assert!(ex.done());
        assert_eq!(ex.deadline(), None);
        let out = ex.finish();
        let who = |o: &RemoteOutcome| o.answer.as_ref().map(|a| a.host.clone());
        assert_eq!(who(&out[0]).as_deref(), Some("b"));
        assert_eq!(out[0].sent_to, ["a", "b"]);
        assert_eq!(
            who(&out[1]),
            None,
            "no host answered it: computed by the caller"
        );
        assert_eq!(out[1].sent_to, ["a", "b"]);
        assert_eq!(who(&out[2]).as_deref(), Some("a"));
        assert_eq!(out[2].sent_to, ["a"]);
        assert!(out[3].answer.is_none() && out[3].sent_to.is_empty());
    }

    #[test]
    fn slow_calls_are_hedged_together_at_the_deadline_and_given_up_after_the_timeout() {
        let x = Hash::of(b"x");
        let table = two_hosts(x);
        let calls = vec![call(x), call(x)];
        let (mut ex, first) = Exchange::start(&calls, &table, T0, &mut rng());
        // No history yet: hedged after the default.
        assert_eq!(ex.deadline(), Some(T0 + HEDGE_DEFAULT));
        assert!(
            ex.tick(T0 + HEDGE_DEFAULT - Duration::from_millis(1))
                .is_empty()
        );
        let hedge = ex.tick(T0 + HEDGE_DEFAULT);
        assert_eq!(sent(&hedge), [("b", vec![0, 1])]);
        // Then nothing is due until the first request times out.
        assert_eq!(ex.deadline(), Some(T0 + CALL_TIMEOUT));
        assert!(ex.tick(T0 + CALL_TIMEOUT).is_empty());
        assert!(!ex.done(), "the hedge is still out");
        // The first host's late answer is not taken; the second's is.
        assert!(
            ex.answered(first[0].attempt, 0, Some(answer("a")), T0 + CALL_TIMEOUT)
                .is_empty()
        );
        ex.answered(hedge[0].attempt, 0, Some(answer("b")), T0 + CALL_TIMEOUT);
        assert_eq!(ex.deadline(), Some(T0 + HEDGE_DEFAULT + CALL_TIMEOUT));
        ex.tick(T0 + HEDGE_DEFAULT + CALL_TIMEOUT);
        assert!(ex.done());
        let out = ex.finish();
        assert_eq!(out[0].answer.as_ref().map(|a| a.host.as_str()), Some("b"));
        assert!(out[1].answer.is_none());
    }

    #[test]
    fn a_request_outrun_by_another_hosts_answer_counts_as_slow_not_failed() {
        let x = Hash::of(b"x");
        let mut table = HostTable::default();
        hear(&mut table, "a", 1, &[x], 0, T0);
        for _ in 0..8 {
            table.record("a", true, 2.0, T0);
        }
        let before = table.hosts(T0)[0].clone();
        assert_eq!(before.hedge_after(), Duration::from_millis(2));
        // Given up twice after 40 ms, another host having answered first: slower (its p95
        // now that of the given-up requests), neither answered nor failed, still askable.
        table.outrun("a", 40.0);
        table.outrun("a", 40.0);
        let after = &table.hosts(T0)[0];
        assert!(after.latency_ms > before.latency_ms + 10.0, "{after:?}");
        assert_eq!((after.answered, after.failed, after.strikes), (8, 0, 0));
        assert_eq!(after.hedge_after(), Duration::from_millis(40));
        assert_eq!(table.pick(&x, T0, &mut rng()).0.len(), 1);
    }

    #[test]
    fn a_host_is_benched_longer_after_each_failure_and_back_after_an_answer() {
        let x = Hash::of(b"x");
        let mut table = HostTable::default();
        hear(&mut table, "a", 1, &[x], 0, T0);
        let picked = |table: &HostTable, at: Duration| table.pick(&x, at, &mut rng()).0.len();
        assert_eq!(picked(&table, T0), 1);
        table.record("a", false, 2000.0, T0);
        assert_eq!(
            picked(&table, T0 + BENCH_FIRST - Duration::from_millis(1)),
            0
        );
        assert_eq!(picked(&table, T0 + BENCH_FIRST), 1);
        // A second failure in a row: twice as long.
        let t1 = T0 + BENCH_FIRST;
        table.record("a", false, 2000.0, t1);
        assert_eq!(
            picked(&table, t1 + 2 * BENCH_FIRST - Duration::from_millis(1)),
            0
        );
        assert_eq!(picked(&table, t1 + 2 * BENCH_FIRST), 1);
        // Many: never longer than an announcement holds.
        for _ in 0..40 {
            table.record("a", false, 2000.0, t1);
        }
        assert_eq!(table.hosts(t1)[0].strikes, 42);
        assert_eq!(picked(&table, t1 + HOST_TTL - Duration::from_millis(1)), 0);
        // So does its next announcement, though the strikes stay.
        hear(&mut table, "a", 1, &[x], 0, t1);
        assert_eq!(picked(&table, t1), 1);
        assert_eq!(table.hosts(t1)[0].strikes, 42);
        table.record("a", false, 2000.0, t1);
        assert_eq!(picked(&table, t1 + HOST_TTL - Duration::from_millis(1)), 0);
        // An answer clears it.
        table.record("a", true, 4.0, t1);
        assert_eq!(picked(&table, t1), 1);
        assert_eq!(table.hosts(t1)[0].strikes, 0);
        assert_eq!(table.hosts(t1)[0].failed, 43);
        // A host not heard for longer than its announcements hold is not asked; nor is a
        // banned one, whatever it announces next.
        let t2 = t1 + HOST_TTL;
        assert_eq!(picked(&table, t2), 0);
        assert!(table.ban("a", "lied".into()));
        hear(&mut table, "a", 1, &[x], 0, t2);
        assert_eq!(picked(&table, t2), 0);
        assert!(!table.ban("nobody", "unknown".into()));
    }
}
