//! Token streams and the batches drawn from them.

use blyan_primitives::Hash;
use blyan_tokenizer::{TokenId, Tokenizer};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::TrainError;

/// Documents tokenized and concatenated, each as `<s> text </s>`.
#[derive(Clone, Debug, Default)]
pub struct TokenStream {
    tokens: Vec<TokenId>,
}

impl TokenStream {
    /// Tokenizes `docs` in order.
    pub fn from_documents<S: AsRef<str>>(
        tokenizer: &Tokenizer,
        docs: impl IntoIterator<Item = S>,
        bos: TokenId,
        eos: TokenId,
    ) -> Result<TokenStream, TrainError> {
        let mut tokens = Vec::new();
        for doc in docs {
            tokens.push(bos);
            tokens.extend(
                tokenizer
                    .encode(doc.as_ref())
                    .map_err(|e| TrainError::Tokenizer(e.to_string()))?,
            );
            tokens.push(eos);
        }
        Ok(TokenStream { tokens })
    }

    /// A stream over existing token ids.
    pub fn from_tokens(tokens: Vec<TokenId>) -> TokenStream {
        TokenStream { tokens }
    }

    /// The tokens.
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The batch of step `step`: `batch` windows of `seq + 1` tokens at offsets drawn
    /// uniformly from a ChaCha8 stream keyed by `(seed, step)`, so a run resumed at any step
    /// sees the same batches as one that never stopped. Returns (inputs, targets), each
    /// `[batch, seq]`.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
        seq: usize,
    ) -> Result<(Tensor, Tensor), TrainError> {
        if self.tokens.len() < seq + 1 {
            return Err(TrainError::DataTooSmall {
                detail: format!("{} tokens; one window needs {}", self.tokens.len(), seq + 1),
            });
        }
        let key = Hash::of(format!("blyan-batch:{seed}:{step}").as_bytes());
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(key.0);
        let last = self.tokens.len() - seq - 1;
        let offsets: Vec<usize> = (0..batch).map(|_| rng.random_range(0..=last)).collect();
        self.gather(&offsets, seq)
    }

    /// Non-overlapping windows of `seq + 1` tokens covering the stream in order (each
    /// window's last token is the next one's first), as batches of at most `batch`.
    pub fn eval_batches(
        &self,
        batch: usize,
        seq: usize,
    ) -> Result<Vec<(Tensor, Tensor)>, TrainError> {
        self.eval_offsets(seq)
            .chunks(batch.max(1))
            .map(|c| self.gather(c, seq))
            .collect()
    }

    /// The (previous token, target) pairs that [`TokenStream::eval_batches`] scores, in order.
    pub fn eval_pairs(&self, seq: usize) -> Vec<(TokenId, TokenId)> {
        self.eval_offsets(seq)
            .into_iter()
            .flat_map(|o| (o..o + seq).map(move |i| (self.tokens[i], self.tokens[i + 1])))
            .collect()
    }

    /// Starts of the non-overlapping evaluation windows of `seq + 1` tokens.
    fn eval_offsets(&self, seq: usize) -> Vec<usize> {
        (0..)
            .map(|i| i * seq)
            .take_while(|&o| o + seq < self.tokens.len())
            .collect()
    }

    fn gather(&self, offsets: &[usize], seq: usize) -> Result<(Tensor, Tensor), TrainError> {
        let mut x = Vec::with_capacity(offsets.len() * seq);
        let mut y = Vec::with_capacity(offsets.len() * seq);
        for &o in offsets {
            x.extend_from_slice(&self.tokens[o..o + seq]);
            y.extend_from_slice(&self.tokens[o + 1..o + seq + 1]);
        }
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(x, (offsets.len(), seq), &dev)?,
            Tensor::from_vec(y, offsets.len() * seq, &dev)?,
        ))
    }
}
