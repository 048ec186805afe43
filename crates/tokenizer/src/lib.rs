//! Text to token ids and back, with the tokenizer the meta block carries.
//!
//! The meta chain's spec block carries a Hugging Face `tokenizer.json` document; this crate
//! wraps the `tokenizers` library around it and adds what generation needs on top: an
//! incremental decoder that turns a stream of token ids into text without splitting a UTF-8
//! character or a merged piece across two chunks.

#![warn(missing_docs)]

use std::fmt;

/// A token of the language model's vocabulary.
pub type TokenId = u32;

/// Longest text [`Tokenizer::encode`] accepts, in bytes; longer input is refused before any
/// work is done.
pub const TEXT_LEN_MAX: usize = 1 << 20;

/// Why text could not be tokenized or a tokenizer not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer document is not a valid `tokenizer.json`.
    #[error("tokenizer document is invalid: {reason}")]
    InvalidDocument {
        /// What the parser said.
        reason: String,
    },
    /// The text is longer than [`TEXT_LEN_MAX`].
    #[error("text is {len} bytes; the limit is {TEXT_LEN_MAX}")]
    TextTooLong {
        /// Length of the refused text.
        len: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownToken {
        /// The id.
        id: TokenId,
        /// Vocabulary size.
        vocab_size: u32,
    },
    /// The library failed on valid input.
    #[error("tokenizer failed: {reason}")]
    Internal {
        /// What the library said.
        reason: String,
    },
}

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: u32,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` document.
    pub fn from_json(json: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| {
            TokenizerError::InvalidDocument {
                reason: e.to_string(),
            }
        })?;
        let vocab_size = inner.get_vocab_size(true) as u32;
        Ok(Tokenizer { inner, vocab_size })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// The id of a token given by its text (e.g. `</s>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<TokenId> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>, TokenizerError> {
        if text.len() > TEXT_LEN_MAX {
            return Err(TokenizerError::TextTooLong { len: text.len() });
        }
        let encoding =
            self.inner
                .encode_fast(text, false)
                .map_err(|e| TokenizerError::Internal {
                    reason: e.to_string(),
                })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens skipped. Bytes that do not form valid UTF-8 become
    /// U+FFFD.
    pub fn decode(&self, ids: &[TokenId]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(TokenizerError::UnknownToken {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Internal {
                reason: e.to_string(),
            })
    }
}

/// Turns generated ids into text chunks as they arrive.
///
/// Decoding ids one at a time is wrong for byte-level tokenizers: a character may span two
/// tokens, and decoders may treat a sequence's first token specially. The stream decodes a
/// short window ending at the new token and emits only what that window adds over its prefix,
/// and nothing while the window ends inside a UTF-8 character.
/// The stream does not hold the tokenizer, so a long-lived owner (a batching engine) can keep
/// both side by side.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<TokenId>,
    /// Start of the window whose text has already been emitted.
    prefix_start: usize,
    /// Ids from here on have not been emitted yet.
    read_start: usize,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> TextStream {
        TextStream::default()
    }

    /// Adds one id; returns the text it completes, if any.
    pub fn push(
        &mut self,
        tokenizer: &Tokenizer,
        id: TokenId,
    ) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_start..self.read_start])?;
        let full = tokenizer.decode(&self.ids[self.prefix_start..])?;
        if full.ends_with('\u{FFFD}') || full.len() <= prefix.len() {
            return Ok(None);
        }
        let Some(new) = full.get(prefix.len()..) else {
            return Ok(None);
        };
        let new = new.to_owned();
        self.prefix_start = self.read_start;
        self.read_start = self.ids.len();
        Ok(Some(new))
    }

    /// Text still held back at the end of the stream (an incomplete character, as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, TokenizerError> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_start..self.read_start])?;
        let full = tokenizer.decode(&self.ids[self.prefix_start..])?;
        self.prefix_start = self.ids.len();
        self.read_start = self.ids.len();
        Ok(full
            .get(prefix.len()..)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blyan_chain::spec::byte_level_tokenizer_json;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_json(&byte_level_tokenizer_json()).unwrap()
    }

    #[test]
    fn byte_level_round_trips_any_text() {
        let t = tokenizer();
        assert_eq!(t.vocab_size(), 258);
        assert_eq!(t.token_id("</s>"), Some(257));
        for text in ["hello world", "  two  spaces\n\ttab", "héllo — 世界 🦀", ""] {
            let ids = t.encode(text).unwrap();
            assert_eq!(ids.len(), text.len(), "one id per byte");
            assert_eq!(t.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn stream_never_splits_a_character() {
        let t = tokenizer();
        let text = "a é 世界 🦀!";
        let mut stream = TextStream::new();
        let mut chunks = Vec::new();
        for id in t.encode(text).unwrap() {
            if let Some(chunk) = stream.push(&t, id).unwrap() {
                assert!(!chunk.contains('\u{FFFD}'), "{chunk:?}");
                chunks.push(chunk);
            }
        }
        assert_eq!(stream.finish(&t).unwrap(), None);
        assert_eq!(chunks.concat(), text);
        assert!(chunks.len() >= 8);
    }

    #[test]
    fn stream_flushes_an_incomplete_character_at_the_end() {
        let t = tokenizer();
        let mut stream = TextStream::new();
        // 0xE4 0xB8 opens a three-byte character that never completes.
        let e4 = t.encode("世").unwrap();
        assert_eq!(stream.push(&t, e4[0]).unwrap(), None);
        assert_eq!(stream.push(&t, e4[1]).unwrap(), None);
        assert_eq!(stream.finish(&t).unwrap().as_deref(), Some("\u{FFFD}"));
    }

    #[test]
    fn hostile_input_gets_errors() {
        let t = tokenizer();
        assert!(matches!(
            t.decode(&[9999]),
            Err(TokenizerError::UnknownToken { id: 9999, .. })
        ));
        assert!(matches!(
            Tokenizer::from_json(b"{not json"),
            Err(TokenizerError::InvalidDocument { .. })
        ));
        let long = "x".repeat(TEXT_LEN_MAX + 1);
        assert!(matches!(
            t.encode(&long),
            Err(TokenizerError::TextTooLong { .. })
        ));
    }
}
