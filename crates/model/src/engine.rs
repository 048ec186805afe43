//! The batching engine: each *lane* (a thread) decodes its active requests together, one
//! forward pass per step, so the weights read for a step serve all of them.
//!
//! New requests go to the lane with the fewest requests, join it between steps (their prompts
//! ride in the same forward pass as the other requests' decode tokens) and leave when they
//! finish, are cancelled, or their receiver is dropped. Requests beyond a lane's share of
//! `max_batch` wait in its submission queue.
//!
//! By default there is one lane per available core: independent batches that share only the
//! read-only weights and never wait for each other. A model with a parallel pass
//! ([`Model::parallel`]: int8 with our Q8_0 kernel) can instead spread each lane's passes over
//! a [`Team`] of threads ([`EngineConfig::threads`]): attention split by sequence and every
//! expert's rows split among the threads, so each expert is read once per step for the whole
//! batch. On the 2-core machine this was measured slower than two lanes from 2 to 16 streams
//! (docs/BENCHMARKS.md), so it is not the default. A sequence's output does not depend on
//! its lane, batch or threads.
//!
//! A lane whose thread dies (a panic in a pass) is noticed: it stops receiving requests, and
//! the next submission or [`Engine::heal`] starts a fresh thread in its place. The requests
//! it held end without a `Done` (their receivers see the stream end), and restarts are
//! counted ([`Engine::lane_restarts`]).

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
};

use blyan_tokenizer::{TokenId, Tokenizer};

use crate::{
    CancelToken, GenerateRequest, Model, ModelError, Sequence, Step, Summary, generate::Decoder,
    team::Team,
};

/// Most sequences one engine decodes together by default.
pub const MAX_BATCH_DEFAULT: usize = 16;

/// What a request's receiver gets.
#[derive(Debug)]
pub enum Event {
    /// A decoded token and the text it releases.
    Step(Step),
    /// The request finished; nothing follows.
    Done(Summary),
    /// The request failed; nothing follows. A failed forward pass fails every request in
    /// it, and they all receive the same error.
    Failed(Arc<ModelError>),
}

/// Engine settings.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Most sequences decoded at once, over all lanes.
    pub max_batch: usize,
    /// Lanes: batching threads, each with its own batch; `0` means one per available core.
    pub lanes: usize,
    /// Threads each lane's forward pass is spread over, for a model with a parallel pass
    /// (others always use one); `0` means one.
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            max_batch: MAX_BATCH_DEFAULT,
            lanes: 0,
            threads: 0,
        }
    }
}

fn cores() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

impl EngineConfig {
    /// The number of lanes these settings give on this machine (at least one, at most
    /// `max_batch`).
    pub fn lanes_here(&self) -> usize {
        let lanes = if self.lanes == 0 { cores() } else { self.lanes };
        lanes.clamp(1, self.max_batch.max(1))
    }

    /// The number of threads each lane's pass uses for a model whose pass is parallel or
    /// not (at least one).
    pub fn threads_here(&self, parallel: bool) -> usize {
        if parallel { self.threads.max(1) } else { 1 }
    }
}

/// A running batching engine. Dropping it lets the active requests finish, then stops it.
#[derive(Debug)]
pub struct Engine {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    lanes: Vec<Lane>,
    threads: usize,
    /// Sequences per lane.
    per_lane: usize,
    /// Lane threads started again after they died.
    restarts: AtomicU64,
    /// Lane threads that ended in a panic.
    panics: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Lane {
    /// The lane's queue and thread; replaced when the thread dies.
    run: Mutex<LaneRun>,
    /// Requests queued for or decoding in this lane.
    load: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct LaneRun {
    jobs: Option<mpsc::Sender<Message>>,
    thread: Option<thread::JoinHandle<()>>,
    /// False once the thread has ended (a panic, or the engine stopping).
    alive: Arc<AtomicBool>,
}

impl LaneRun {
    /// Whether the thread runs and takes jobs.
    fn is_alive(&self) -> bool {
        self.jobs.is_some() && self.alive.load(Ordering::SeqCst)
    }
}

impl Lane {
    fn run(&self) -> MutexGuard<'_, LaneRun> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_alive(&self) -> bool {
        self.run().is_alive()
    }
}

/// What a lane's queue carries.
#[derive(Debug)]
enum Message {
    Job(Job),
    /// Makes the lane's thread panic at its next step (tests of the supervision).
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Marks its lane dead when the lane's thread ends, however it ends.
struct LaneExit {
    alive: Arc<AtomicBool>,
    panics: Arc<AtomicU64>,
}

impl Drop for LaneExit {
    fn drop(&mut self) {
        if thread::panicking() {
            self.panics.fetch_add(1, Ordering::SeqCst);
        }
        self.alive.store(false, Ordering::SeqCst);
    }
}

/// One request's place in a lane's load; given back when the request leaves.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A submitted request's stream of events.
#[derive(Debug)]
pub struct Receiver {
    events: mpsc::Receiver<Event>,
    cancel: CancelToken,
}

impl Receiver {
    /// Cancels the request; its stream ends with a `Done` whose reason is `cancelled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the request from elsewhere.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// The next event, blocking; `None` after the last one.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// The next event, waiting at most `timeout`: `Err(Timeout)` if none came in time,
    /// `Ok(None)` after the last one.
    pub fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Option<Event>, mpsc::RecvTimeoutError> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => Ok(Some(event)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Iterator for Receiver {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

#[derive(Debug)]
struct Job {
    decoder: Decoder,
    prompt: Vec<TokenId>,
    events: mpsc::Sender<Event>,
    cancel: CancelToken,
    /// Its place in its lane's load, taken when it is sent to the lane.
    slot: Option<Slot>,
    /// Whether its hidden states must stay on this machine.
    local_only: bool,
}

struct Active {
    seq: Sequence,
    decoder: Decoder,
    /// Tokens to feed in the next step: the prompt, then one generated token at a time.
    input: Vec<TokenId>,
    events: mpsc::Sender<Event>,
    cancel: CancelToken,
    _slot: Option<Slot>,
}

impl Engine {
    /// Starts the engine's lane threads.
    pub fn start(model: Arc<Model>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Engine {
        let count = config.lanes_here();
        let threads = config.threads_here(model.parallel());
        let per_lane = config.max_batch.max(1).div_ceil(count);
        let mut engine = Engine {
            model,
            tokenizer,
            lanes: Vec::with_capacity(count),
            threads,
            per_lane,
            restarts: AtomicU64::new(0),
            panics: Arc::new(AtomicU64::new(0)),
        };
        for i in 0..count {
            let run = engine.spawn_lane(i);
            engine.lanes.push(Lane {
                run: Mutex::new(run),
                load: Arc::new(AtomicUsize::new(0)),
            });
        }
        engine
    }

    /// Starts lane `i`'s thread and queue.
    fn spawn_lane(&self, i: usize) -> LaneRun {
        let (jobs, queue) = mpsc::channel();
        let worker = Worker {
            model: self.model.clone(),
            tokenizer: self.tokenizer.clone(),
            max_batch: self.per_lane,
        };
        let alive = Arc::new(AtomicBool::new(true));
        let exit = LaneExit {
            alive: alive.clone(),
            panics: self.panics.clone(),
        };
        let threads = self.threads;
        // The lane's thread is the first of its team; a team of one has no helpers.
        let thread = thread::Builder::new()
            .name(format!("blyan-engine-{i}"))
            .spawn(move || {
                let _exit = exit;
                let team = Team::new(threads, &format!("blyan-engine-{i}"));
                worker.run(queue, (team.size() > 1).then_some(&team));
            })
            .ok();
        if thread.is_none() {
            alive.store(false, Ordering::SeqCst);
        }
        LaneRun {
            jobs: thread.as_ref().map(|_| jobs),
            thread,
            alive,
        }
    }

    /// Starts a fresh thread for every lane whose thread has died; returns how many.
    pub fn heal(&self) -> usize {
        let mut started = 0;
        for (i, lane) in self.lanes.iter().enumerate() {
            let mut run = lane.run();
            if run.is_alive() {
                continue;
            }
            run.jobs.take();
            if let Some(thread) = run.thread.take() {
                // The thread has ended or is unwinding its last frames; its panic was
                // reported by the panic hook.
                let _ = thread.join();
            }
            *run = self.spawn_lane(i);
            if run.jobs.is_some() {
                started += 1;
                self.restarts.fetch_add(1, Ordering::SeqCst);
            }
        }
        started
    }

    /// Lane threads started again after they died, since the engine started.
    pub fn lane_restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Lane threads that ended in a panic, since the engine started.
    pub fn lane_panics(&self) -> u64 {
        self.panics.load(Ordering::SeqCst)
    }

    /// Lanes whose thread is running now.
    pub fn lanes_alive(&self) -> usize {
        self.lanes.iter().filter(|l| l.is_alive()).count()
    }

    /// Makes one lane's thread panic at its next step, to test that the engine notices and
    /// recovers. Only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub fn inject_lane_panic(&self) {
        if let Some(lane) = self.lanes.iter().find(|l| l.is_alive())
            && let Some(jobs) = &lane.run().jobs
        {
            let _ = jobs.send(Message::Panic);
        }
    }

    /// The number of lanes.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The number of threads each lane's forward pass is spread over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The model the engine serves.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Validates and queues a request. Invalid requests are refused here, before queueing.
    pub fn submit(&self, request: &GenerateRequest) -> Result<Receiver, ModelError> {
        let ids = self.tokenizer.encode(&request.prompt)?;
        self.submit_encoded(request, ids)
    }

    /// As [`Engine::submit`], for a caller that has already encoded `request.prompt` with
    /// this engine's tokenizer (`ids`, without BOS), so that it is not tokenized twice.
    pub fn submit_encoded(
        &self,
        request: &GenerateRequest,
        ids: Vec<TokenId>,
    ) -> Result<Receiver, ModelError> {
        self.submit_encoded_with(request, ids, false)
    }

    /// As [`Engine::submit_encoded`]; with `local_only`, every expert a step needs for this
    /// request is computed on this machine, so its hidden states never leave it.
    pub fn submit_encoded_with(
        &self,
        request: &GenerateRequest,
        ids: Vec<TokenId>,
        local_only: bool,
    ) -> Result<Receiver, ModelError> {
        let (decoder, prompt) =
            Decoder::with_prompt_ids(&self.model, &self.tokenizer, request, ids)?;
        let (events, rx) = mpsc::channel();
        let cancel = CancelToken::new();
        let mut job = Job {
            decoder,
            prompt,
            events,
            cancel: cancel.clone(),
            slot: None,
            local_only,
        };
        // A lane that died since the last request is replaced before choosing; one that dies
        // between the choice and the send hands the job back, and the next lane is tried.
        for _ in 0..=self.lanes.len() {
            self.heal();
            // The least loaded running lane; ties go to the first.
            let Some(lane) = self
                .lanes
                .iter()
                .filter(|l| l.is_alive())
                .min_by_key(|l| l.load.load(Ordering::SeqCst))
            else {
                break;
            };
            lane.load.fetch_add(1, Ordering::SeqCst);
            job.slot = Some(Slot(lane.load.clone()));
            let run = lane.run();
            let Some(jobs) = &run.jobs else {
                continue;
            };
            match jobs.send(Message::Job(job)) {
                Ok(()) => return Ok(Receiver { events: rx, cancel }),
                Err(mpsc::SendError(Message::Job(back))) => {
                    run.alive.store(false, Ordering::SeqCst);
                    job = back;
                    job.slot = None;
                }
                #[cfg(feature = "fault-injection")]
                Err(mpsc::SendError(Message::Panic)) => return Err(ModelError::EngineStopped),
            }
        }
        Err(ModelError::EngineStopped)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.run().jobs.take();
        }
        for lane in &self.lanes {
            let thread = lane.run().thread.take();
            if let Some(thread) = thread {
                // A panic in a lane thread has already been reported by the panic hook.
                let _ = thread.join();
            }
        }
    }
}

struct Worker {
    model: Arc<Model>,
    tokenizer: Arc<Tokenizer>,
    max_batch: usize,
}

impl Worker {
    fn run(self, queue: mpsc::Receiver<Message>, team: Option<&Team>) {
        let mut active: Vec<Active> = Vec::new();
        let mut open = true;
        loop {
            if active.is_empty() {
                if !open {
                    return;
                }
                match queue.recv() {
                    Ok(message) => self.receive(&mut active, message),
                    Err(_) => return,
                }
            }
            while open && active.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(message) => self.receive(&mut active, message),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            active.retain_mut(|a| {
                if a.cancel.is_cancelled() {
                    a.decoder.cancel();
                    let _ = a.events.send(Event::Done(a.decoder.summary(&a.seq)));
                    return false;
                }
                true
            });
            if active.is_empty() {
                continue;
            }
            self.step(&mut active, team);
        }
    }

    fn receive(&self, active: &mut Vec<Active>, message: Message) {
        match message {
            Message::Job(job) => self.admit(active, job),
            #[cfg(feature = "fault-injection")]
            Message::Panic => panic!("fault injection: a lane thread panics"),
        }
    }

    fn admit(&self, active: &mut Vec<Active>, job: Job) {
        match self.model.new_sequence() {
            Ok(mut seq) => active.push(Active {
                seq: {
                    seq.set_local_only(job.local_only);
                    seq
                },
                decoder: job.decoder,
                input: job.prompt,
                events: job.events,
                cancel: job.cancel,
                _slot: job.slot,
            }),
            Err(e) => {
                let _ = job.events.send(Event::Failed(Arc::new(e)));
            }
        }
    }

    /// One forward pass over every active request, then one token for each.
    fn step(&self, active: &mut Vec<Active>, team: Option<&Team>) {
        let inputs: Vec<Vec<TokenId>> = active
            .iter_mut()
            .map(|a| std::mem::take(&mut a.input))
            .collect();
        let mut batch: Vec<(&mut Sequence, &[TokenId])> = active
            .iter_mut()
            .zip(&inputs)
            .map(|(a, input)| (&mut a.seq, input.as_slice()))
            .collect();
        let result = match team {
            Some(team) => self.model.forward_in(&mut batch, team),
            None => self.model.forward(&mut batch),
        };
        let logits = match result {
            Ok(logits) => logits,
            Err(e) => {
                // A failed pass (a corrupt expert block, say) fails every request in it.
                let e = Arc::new(e);
                for a in active.drain(..) {
                    let _ = a.events.send(Event::Failed(e.clone()));
                }
                return;
            }
        };
        let mut rows = logits.into_iter();
        active.retain_mut(|a| {
            let Some(mut row) = rows.next() else {
                return false;
            };
            let step = match a.decoder.advance(&self.tokenizer, &mut row) {
                Ok(step) => step,
                Err(e) => {
                    let _ = a.events.send(Event::Failed(Arc::new(e)));
                    return false;
                }
            };
            let finished = step.finish.is_some();
            if let Some(t) = step.token.filter(|_| !finished) {
                a.input.push(t);
            }
            if a.events.send(Event::Step(step)).is_err() {
                return false;
            }
            if finished {
                let _ = a.events.send(Event::Done(a.decoder.summary(&a.seq)));
                return false;
            }
            true
        });
    }
}
