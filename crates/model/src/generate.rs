//! Generation: a request's prompt, limits and stop sequences, the per-request decoding state,
//! and a single-stream iterator over generated text.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use blyan_primitives::{Address, ExpertId};
use blyan_tokenizer::{TextStream, TokenId, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::{Model, ModelError, Sampler, SamplingParams, Sequence};

/// Most stop sequences per request.
pub const STOP_SEQUENCES_MAX: usize = 4;
/// Longest stop sequence, in bytes.
pub const STOP_LEN_MAX: usize = 256;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt text; a BOS token is put in front of its tokens.
    pub prompt: String,
    /// Most tokens to generate (at least 1).
    pub max_tokens: u32,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these in the output.
    pub stop: Vec<String>,
}

impl GenerateRequest {
    /// Checks everything about the request that does not need the prompt's tokens:
    /// sampling parameters for a vocabulary of `vocab_size`, `max_tokens` and the stop
    /// sequences. A caller that reserves resources for a request (a billing hold) calls this
    /// first, so that a request refused here never reserves anything.
    pub fn check(&self, vocab_size: usize) -> Result<(), ModelError> {
        self.sampling.check(vocab_size)?;
        if self.max_tokens == 0 {
            return Err(ModelError::InvalidParameter {
                name: "max_tokens",
                reason: "must be at least 1".into(),
            });
        }
        if self.stop.len() > STOP_SEQUENCES_MAX {
            return Err(ModelError::InvalidParameter {
                name: "stop",
                reason: format!("at most {STOP_SEQUENCES_MAX} stop sequences"),
            });
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > STOP_LEN_MAX)
        {
            return Err(ModelError::InvalidParameter {
                name: "stop",
                reason: format!("stop sequences must be 1..={STOP_LEN_MAX} bytes"),
            });
        }
        Ok(())
    }

    /// A request with default sampling and no stop sequences.
    pub fn new(prompt: impl Into<String>, max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced end-of-sequence or the output reached a stop sequence.
    Stop,
    /// `max_tokens` were generated or the context window is full.
    Length,
    /// The caller cancelled.
    Cancelled,
}

/// One generated token and the text it releases.
///
/// Text can lag tokens: a token may end inside a UTF-8 character or inside what might become a
/// stop sequence, and then its text arrives with a later step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The token, or `None` for the final flush of held-back text.
    pub token: Option<TokenId>,
    /// Text released by this step (possibly empty).
    pub text: String,
    /// Set on the last step.
    pub finish: Option<FinishReason>,
}

/// What a finished generation did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Prompt tokens, BOS included.
    pub prompt_tokens: usize,
    /// Generated tokens (an end-of-sequence token is not counted).
    pub completion_tokens: usize,
    /// Time from the start to the first generated token.
    pub time_to_first_token: Duration,
    /// Time from the first generated token to the last.
    pub decode_time: Duration,
    /// Tokens each expert processed for this request, prompt included.
    pub experts_used: BTreeMap<ExpertId, u64>,
    /// The other machines that were sent this request's hidden states, with the layers.
    pub remote_layers: BTreeMap<String, Vec<u16>>,
    /// Token-expert computations of this request whose outputs came from other machines.
    pub remote_rows: u64,
    /// Those per host account: what the hosts are paid for.
    pub remote_answered: BTreeMap<Address, u64>,
    /// Per expert that no machine could compute, how many of this request's tokens went
    /// without it, their router weights renormalised over the experts that answered. Empty
    /// unless the model's answer is degraded.
    pub missing_experts: BTreeMap<ExpertId, u64>,
}

impl Summary {
    /// Decode speed after the first token, in tokens per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        let secs = self.decode_time.as_secs_f64();
        if self.completion_tokens > 1 && secs > 0.0 {
            (self.completion_tokens - 1) as f64 / secs
        } else {
            0.0
        }
    }
}

/// Lets another thread stop a generation between tokens.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request's decoding state between forward passes: sampling, text assembly and stopping.
#[derive(Debug)]
pub(crate) struct Decoder {
    sampler: Sampler,
    eos: TokenId,
    /// Mask `eos` before sampling (the request's `ignore_eos`).
    ignore_eos: bool,
    /// Ids at or above this have no text (the model's vocabulary can be padded past the
    /// tokenizer's), so they are never sampled.
    vocab_limit: usize,
    context_len: usize,
    /// Prompt and generated tokens, for the repetition penalty.
    history: Vec<TokenId>,
    prompt_len: usize,
    generated: usize,
    max_tokens: usize,
    stream: TextStream,
    /// Output text so far (never containing a stop sequence).
    text: String,
    /// Bytes of `text` already released.
    emitted: usize,
    stop: Vec<String>,
    pub(crate) finish: Option<FinishReason>,
    started: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl Decoder {
    /// Validates a request and tokenizes its prompt; returns the state and the prompt ids.
    pub(crate) fn new(
        model: &Model,
        tokenizer: &Tokenizer,
        request: &GenerateRequest,
    ) -> Result<(Decoder, Vec<TokenId>), ModelError> {
        let ids = tokenizer.encode(&request.prompt)?;
        Decoder::with_prompt_ids(model, tokenizer, request, ids)
    }

    /// As [`Decoder::new`], with the prompt already encoded by `tokenizer` (no BOS).
    pub(crate) fn with_prompt_ids(
        model: &Model,
        tokenizer: &Tokenizer,
        request: &GenerateRequest,
        ids: Vec<TokenId>,
    ) -> Result<(Decoder, Vec<TokenId>), ModelError> {
        let c = model.config();
        request.check(c.vocab_size)?;
        let mut prompt = Vec::with_capacity(ids.len() + 1);
        prompt.push(c.bos_token_id);
        prompt.extend(ids);
        // Policy: a prompt that leaves no room for one generated token is refused, never
        // truncated; a generation that fills the window ends with `length`.
        if prompt.len() >= c.context_len {
            return Err(ModelError::PromptTooLong {
                tokens: prompt.len(),
                context_len: c.context_len,
            });
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Unsupported {
                reason: format!(
                    "the tokenizer produced id {bad}, outside the model's vocabulary of {}",
                    c.vocab_size
                ),
            });
        }
        let decoder = Decoder {
            sampler: Sampler::new(request.sampling.clone()),
            eos: c.eos_token_id,
            ignore_eos: request.sampling.ignore_eos,
            vocab_limit: c.vocab_size.min(tokenizer.vocab_size() as usize),
            context_len: c.context_len,
            history: prompt.clone(),
            prompt_len: prompt.len(),
            generated: 0,
            max_tokens: request.max_tokens as usize,
            stream: TextStream::new(),
            text: String::new(),
            emitted: 0,
            stop: request.stop.clone(),
            finish: None,
            started: Instant::now(),
            first_token_at: None,
            last_token_at: None,
        };
        Ok((decoder, prompt))
    }

    /// The last generated token, to feed into the next forward pass.
    pub(crate) fn last_token(&self) -> Option<TokenId> {
        self.history.last().copied()
    }

    /// Picks the next token from `logits` and works out what text it releases.
    pub(crate) fn advance(
        &mut self,
        tokenizer: &Tokenizer,
        logits: &mut [f32],
    ) -> Result<Step, ModelError> {
        let now = Instant::now();
        self.first_token_at.get_or_insert(now);
        self.last_token_at = Some(now);
        let usable = self.vocab_limit.min(logits.len());
        if self.ignore_eos
            && let Some(x) = logits[..usable].get_mut(self.eos as usize)
        {
            *x = f32::NEG_INFINITY;
        }
        let token = self.sampler.sample(&mut logits[..usable], &self.history);
        if token == self.eos {
            return self.finish(tokenizer, None, FinishReason::Stop);
        }
        self.generated += 1;
        self.history.push(token);
        if let Some(chunk) = self.stream.push(tokenizer, token)? {
            self.text.push_str(&chunk);
        }
        if let Some(at) = self.find_stop() {
            self.text.truncate(at);
            let text = self.release(self.text.len());
            self.finish = Some(FinishReason::Stop);
            return Ok(Step {
                token: Some(token),
                text,
                finish: self.finish,
            });
        }
        if self.generated >= self.max_tokens || self.prompt_len + self.generated >= self.context_len
        {
            return self.finish(tokenizer, Some(token), FinishReason::Length);
        }
        let safe = self.text.len() - self.stop_prefix_len();
        Ok(Step {
            token: Some(token),
            text: self.release(safe),
            finish: None,
        })
    }

    /// Ends the generation, releasing everything held back.
    fn finish(
        &mut self,
        tokenizer: &Tokenizer,
        token: Option<TokenId>,
        reason: FinishReason,
    ) -> Result<Step, ModelError> {
        if let Some(tail) = self.stream.finish(tokenizer)? {
            self.text.push_str(&tail);
        }
        let mut end = self.text.len();
        if let Some(at) = self.find_stop() {
            end = at;
        }
        self.text.truncate(end);
        self.finish = Some(reason);
        Ok(Step {
            token,
            text: self.release(end),
            finish: Some(reason),
        })
    }

    /// Ends the generation because the caller cancelled.
    pub(crate) fn cancel(&mut self) {
        self.finish = Some(FinishReason::Cancelled);
    }

    fn release(&mut self, upto: usize) -> String {
        let upto = upto.max(self.emitted);
        let out = self.text[self.emitted..upto].to_owned();
        self.emitted = upto;
        out
    }

    /// Byte offset of the earliest stop sequence in the text, looking only where a new one
    /// can be.
    fn find_stop(&self) -> Option<usize> {
        let longest = self.stop.iter().map(String::len).max()?;
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
    }

    /// Length of the longest end of the text that could still grow into a stop sequence.
    fn stop_prefix_len(&self) -> usize {
        let mut best = 0;
        for s in &self.stop {
            for (i, _) in s.char_indices().skip(1) {
                if i > best && self.text.ends_with(&s[..i]) {
                    best = i;
                }
            }
        }
        best
    }

    pub(crate) fn summary(&self, seq: &Sequence) -> Summary {
        Summary {
            finish_reason: self.finish.unwrap_or(FinishReason::Cancelled),
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            time_to_first_token: self
                .first_token_at
                .map_or(Duration::ZERO, |t| t - self.started),
            decode_time: match (self.first_token_at, self.last_token_at) {
                (Some(a), Some(b)) => b - a,
                _ => Duration::ZERO,
            },
            experts_used: seq.experts_used().clone(),
            remote_layers: seq
                .remote_layers()
                .iter()
                .map(|(h, l)| (h.clone(), l.iter().copied().collect()))
                .collect(),
            remote_rows: seq.remote_rows(),
            remote_answered: seq.remote_answered().clone(),
            missing_experts: seq.missing().clone(),
        }
    }
}

/// A single-stream generation: iterate to receive [`Step`]s as tokens are decoded.
///
/// The prompt is processed on the first call to `next`. Iteration ends after the step whose
/// `finish` is set, or when the cancel token fires; a forward-pass error is yielded once and
/// ends the iteration.
#[derive(Debug)]
pub struct Generation<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    seq: Sequence,
    decoder: Decoder,
    prompt: Option<Vec<TokenId>>,
    cancel: CancelToken,
    done: bool,
}

impl<'a> Generation<'a> {
    /// Validates the request and prepares the generation; no model work happens yet.
    pub fn new(
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        request: &GenerateRequest,
    ) -> Result<Generation<'a>, ModelError> {
        let (decoder, prompt) = Decoder::new(model, tokenizer, request)?;
        Ok(Generation {
            model,
            tokenizer,
            seq: model.new_sequence()?,
            decoder,
            prompt: Some(prompt),
            cancel: CancelToken::new(),
            done: false,
        })
    }

    /// A token that stops this generation from another thread.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// What the generation did so far (complete once iteration has ended).
    pub fn summary(&self) -> Summary {
        self.decoder.summary(&self.seq)
    }

    fn step(&mut self) -> Result<Step, ModelError> {
        let input = match self.prompt.take() {
            Some(prompt) => prompt,
            None => vec![
                self.decoder
                    .last_token()
                    .unwrap_or(self.model.config().bos_token_id),
            ],
        };
        let mut logits = self.model.forward(&mut [(&mut self.seq, &input)])?;
        let row = logits
            .first_mut()
            .expect("forward returns one row per sequence");
        self.decoder.advance(self.tokenizer, row)
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Step, ModelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.cancel.is_cancelled() {
            self.decoder.cancel();
            self.done = true;
            return None;
        }
        let step = self.step();
        match &step {
            Ok(s) => self.done = s.finish.is_some(),
            Err(_) => self.done = true,
        }
        Some(step)
    }
}
