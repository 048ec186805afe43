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

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
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
}

#[derive(Debug)]
struct Lane {
    jobs: Option<mpsc::Sender<Job>>,
    /// Requests queued for or decoding in this lane.
    load: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
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
    slot: Slot,
}

struct Active {
    seq: Sequence,
    decoder: Decoder,
    /// Tokens to feed in the next step: the prompt, then one generated token at a time.
    input: Vec<TokenId>,
    events: mpsc::Sender<Event>,
    cancel: CancelToken,
    _slot: Slot,
}

impl Engine {
    /// Starts the engine's lane threads.
    pub fn start(model: Arc<Model>, tokenizer: Arc<Tokenizer>, config: EngineConfig) -> Engine {
        let count = config.lanes_here();
        let threads = config.threads_here(model.parallel());
        let per_lane = config.max_batch.max(1).div_ceil(count);
        let lanes = (0..count)
            .map(|i| {
                let (jobs, queue) = mpsc::channel();
                let worker = Worker {
                    model: model.clone(),
                    tokenizer: tokenizer.clone(),
                    max_batch: per_lane,
                };
                // The lane's thread is the first of its team; a team of one has no helpers.
                let thread = thread::Builder::new()
                    .name(format!("blyan-engine-{i}"))
                    .spawn(move || {
                        let team = Team::new(threads, &format!("blyan-engine-{i}"));
                        worker.run(queue, (team.size() > 1).then_some(&team));
                    })
                    .ok();
                Lane {
                    jobs: thread.as_ref().map(|_| jobs),
                    load: Arc::new(AtomicUsize::new(0)),
                    thread,
                }
            })
            .collect();
        Engine {
            model,
            tokenizer,
            lanes,
            threads,
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
        let (decoder, prompt) =
            Decoder::with_prompt_ids(&self.model, &self.tokenizer, request, ids)?;
        let (events, rx) = mpsc::channel();
        let cancel = CancelToken::new();
        // The least loaded running lane; ties go to the first.
        let lane = self
            .lanes
            .iter()
            .filter(|l| l.jobs.is_some())
            .min_by_key(|l| l.load.load(Ordering::SeqCst))
            .ok_or(ModelError::EngineStopped)?;
        lane.load.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            decoder,
            prompt,
            events,
            cancel: cancel.clone(),
            slot: Slot(lane.load.clone()),
        };
        lane.jobs
            .as_ref()
            .ok_or(ModelError::EngineStopped)?
            .send(job)
            .map_err(|_| ModelError::EngineStopped)?;
        Ok(Receiver { events: rx, cancel })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for lane in &mut self.lanes {
            lane.jobs.take();
        }
        for lane in &mut self.lanes {
            if let Some(thread) = lane.thread.take() {
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
    fn run(self, queue: mpsc::Receiver<Job>, team: Option<&Team>) {
        let mut active: Vec<Active> = Vec::new();
        let mut open = true;
        loop {
            if active.is_empty() {
                if !open {
                    return;
                }
                match queue.recv() {
                    Ok(job) => self.admit(&mut active, job),
                    Err(_) => return,
                }
            }
            while open && active.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(job) => self.admit(&mut active, job),
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

    fn admit(&self, active: &mut Vec<Active>, job: Job) {
        match self.model.new_sequence() {
            Ok(seq) => active.push(Active {
                seq,
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
