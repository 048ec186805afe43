//! Byte-level BPE tokenizer training.

use std::collections::HashSet;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::TrainError;

/// Beginning-of-sequence token; id 0 in a trained tokenizer.
pub const BOS: &str = "<s>";
/// End-of-sequence token; id 1 in a trained tokenizer.
pub const EOS: &str = "</s>";

/// Smallest and largest vocabulary `train_tokenizer` accepts.
pub const VOCAB_RANGE: std::ops::RangeInclusive<usize> = 512..=65_536;

/// Trains a byte-level BPE tokenizer on `texts` and returns its `tokenizer.json`.
///
/// The vocabulary holds `<s>` (id 0) and `</s>` (id 1), the 256 byte symbols, then merges
/// until `vocab_size` tokens or no pair occurs twice. Every string round-trips exactly,
/// since every byte has a token. Training is deterministic: ties between pairs of equal
/// count are broken by pair ids, which follow the sorted byte alphabet.
pub fn train_tokenizer<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<Vec<u8>, TrainError> {
    if !VOCAB_RANGE.contains(&vocab_size) {
        return Err(TrainError::invalid(
            "vocab_size",
            format!("must be in {}..={}", VOCAB_RANGE.start(), VOCAB_RANGE.end()),
        ));
    }
    let err = |e: tokenizers::Error| TrainError::Tokenizer(e.to_string());
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(BOS, true),
            AddedToken::from(EOS, true),
        ])
        .initial_alphabet(alphabet)
        .build();
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        ByteLevel,
        PostProcessorWrapper,
        ByteLevelDecoder,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
    .with_post_processor(None)
    .with_decoder(Some(ByteLevelDecoder::default()))
    .build()
    .map_err(err)?;
    tokenizer.train(&mut trainer, texts).map_err(err)?;
    let json = tokenizer.to_string(false).map_err(err)?;
    // The tokenizer Blyan serves from must read it back, with the special ids promised.
    let back = blyan_tokenizer::Tokenizer::from_json(json.as_bytes())
        .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
    if back.token_id(BOS) != Some(0) || back.token_id(EOS) != Some(1) {
        return Err(TrainError::Tokenizer(
            "special tokens did not get ids 0 and 1".into(),
        ));
    }
    Ok(json.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_a_round_tripping_deterministic_tokenizer() {
        let text = "In the beginning God created the heaven and the earth. ".repeat(50)
            + "And the earth was without form, and void; café ✓ \u{1F600}\n";
        let a = train_tokenizer(std::iter::once(text.as_str()), 600).expect("trains");
        let b = train_tokenizer(std::iter::once(text.as_str()), 600).expect("trains");
        assert_eq!(a, b, "training is deterministic");
        let tok = blyan_tokenizer::Tokenizer::from_json(&a).expect("loads");
        assert!(tok.vocab_size() > 258, "learned merges");
        for s in [
            text.as_str(),
            "",
            " leading and trailing  ",
            "zebra quartz ¿ ₿",
        ] {
            let ids = tok.encode(s).expect("encodes");
            assert_eq!(tok.decode(&ids).expect("decodes"), s);
        }
        // Learned merges make the training text much shorter than its bytes.
        let ids = tok.encode(&text).expect("encodes");
        assert!(ids.len() * 3 < text.len(), "{} tokens", ids.len());
    }

    #[test]
    fn refuses_vocab_out_of_range() {
        let err = train_tokenizer(std::iter::once("abc"), 10).expect_err("refused");
        assert_eq!(err.code(), "invalid_parameter");
    }
}
