//! What the binary carries so that it runs the same network from any directory: the trained
//! genesis model and the corpus whose hidden split becomes the Proof-of-Learning pool.

use std::path::Path;

use anyhow::Context;
use blyan_train::corpus::Corpus;

/// The trained genesis model `blyan init` writes (see genesis/recipe.json for how it was
/// made): its spec, tokenizer and Q8_0 weight bundle.
pub(crate) const GENESIS_SPEC: &[u8] = include_bytes!("../../../genesis/spec.json");
pub(crate) const GENESIS_TOKENIZER: &[u8] = include_bytes!("../../../genesis/tokenizer.json");
pub(crate) const GENESIS_WEIGHTS: &[u8] = include_bytes!("../../../genesis/weights.q8");

/// The King James corpus (`data/corpus/kjv.tsv`, 4.6 MB): the genesis model's training
/// text and, through its hidden split, the hidden pool `blyan init` commits. Carried in the
/// binary so that `init` in any working directory, or from `cargo install`, builds the same
/// pool as in the repository.
const CORPUS: &[u8] = include_bytes!("../../../data/corpus/kjv.tsv");

/// The corpus at `path`, or the bundled one when no path is given.
pub(crate) fn corpus(path: Option<&Path>) -> anyhow::Result<Corpus> {
    match path {
        Some(path) => {
            Corpus::read(path).with_context(|| format!("reading the corpus {}", path.display()))
        }
        None => Corpus::parse(CORPUS).context("reading the bundled corpus"),
    }
}
