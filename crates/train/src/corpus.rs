//! The training corpus and its deterministic splits.
//!
//! The corpus file (`data/corpus/kjv.tsv`, written by `scripts/fetch-corpus.sh`) holds one
//! passage per line as `REFERENCE<TAB>TEXT`, where the reference is `Book C:V`. Passages are
//! grouped into documents by everything before the last `:` (a chapter), and each document
//! falls into one split by a hash of its key, so adjacent verses never straddle two splits and
//! the assignment does not depend on the file's order or on any other document.
//!
//! Two splitters exist ([`Splitter`]). The genesis split hashes the key alone: it is the fixed,
//! public split the bundled genesis model was trained on. A node's split keys the hash with
//! the secret its pool was made with, so which documents its hidden pool holds cannot be
//! derived from the (public) corpus.

use std::fmt;
use std::str::FromStr;

use blyan_primitives::Hash;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Largest corpus file accepted, in bytes.
pub const CORPUS_LEN_MAX: usize = 64 << 20;

/// Share of documents, in thousandths, in the train split; then validation, then hidden.
const TRAIN_PER_MILLE: u64 = 880;
const VALIDATION_PER_MILLE: u64 = 20;

/// One of the corpus's three disjoint parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Public training text (88% of documents).
    Train,
    /// Public held-out text for measuring progress (2%).
    Validation,
    /// Held back for Proof of Learning (10%); never exported.
    Hidden,
}

/// How documents are assigned to splits.
#[derive(Clone, Copy)]
pub enum Splitter<'a> {
    /// By SHA-256 of the document key: the public split the bundled genesis was trained with.
    Genesis,
    /// By HMAC-SHA-256 of the document key under a node's pool secret: without the secret,
    /// nobody can tell which documents are hidden.
    Keyed(&'a [u8; 32]),
}

impl fmt::Debug for Splitter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Splitter::Genesis => "Genesis",
            Splitter::Keyed(_) => "Keyed(…)",
        })
    }
}

/// Domain of the keyed split's hash.
const SPLIT_DOMAIN: &[u8] = b"blyan-split-v1";

impl Splitter<'_> {
    /// The split a document key falls into.
    pub fn of(&self, key: &str) -> Split {
        match self {
            Splitter::Genesis => Split::of(key),
            Splitter::Keyed(secret) => Split::of_hash(&blyan_primitives::keyed_hash(
                &secret[..],
                SPLIT_DOMAIN,
                key.as_bytes(),
            )),
        }
    }
}

impl Split {
    /// The split a document key falls into under the genesis (unkeyed) splitter.
    pub fn of(key: &str) -> Split {
        Split::of_hash(&Hash::of(key.as_bytes()))
    }

    fn of_hash(h: &Hash) -> Split {
        let mut first = [0u8; 8];
        first.copy_from_slice(&h.0[..8]);
        match u64::from_be_bytes(first) % 1000 {
            x if x < TRAIN_PER_MILLE => Split::Train,
            x if x < TRAIN_PER_MILLE + VALIDATION_PER_MILLE => Split::Validation,
            _ => Split::Hidden,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Hidden => "hidden",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Split, String> {
        match s {
            "train" => Ok(Split::Train),
            "validation" => Ok(Split::Validation),
            "hidden" => Ok(Split::Hidden),
            _ => Err(format!(
                "unknown split {s:?}; expected train, validation or hidden"
            )),
        }
    }
}

/// A document: consecutive passages sharing a key (a chapter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// The key, e.g. `Genesis 1`.
    pub key: String,
    /// The passages in file order, each with its reference.
    pub passages: Vec<(String, String)>,
}

impl Document {
    /// The document as training text: its passages, one per line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, (_, text)) in self.passages.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(text);
        }
        out
    }
}

impl Document {
    /// The document as one line of text, its passages joined by spaces: the form
    /// `blyan corpus export` writes and `blyan train expert` reads (one document per line),
    /// and the form the Proof-of-Learning pool is tokenized from, so contributors train on
    /// exactly the distribution they are judged on.
    pub fn line(&self) -> String {
        let mut out = String::new();
        for (i, (_, text)) in self.passages.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(text.trim());
        }
        out
    }
}

/// A parsed corpus.
#[derive(Clone, Debug)]
pub struct Corpus {
    documents: Vec<Document>,
    hash: Hash,
}

impl Corpus {
    /// Parses a corpus file. Every line must be `REFERENCE<TAB>TEXT` with a non-empty
    /// reference containing `:` and non-empty text.
    pub fn parse(bytes: &[u8]) -> Result<Corpus, TrainError> {
        if bytes.len() > CORPUS_LEN_MAX {
            return Err(TrainError::DataTooLarge {
                len: bytes.len() as u64,
                limit: CORPUS_LEN_MAX as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| TrainError::BinaryData {
            reason: e.to_string(),
        })?;
        let mut documents: Vec<Document> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |detail: &str| TrainError::Corpus {
                line: i + 1,
                detail: detail.into(),
            };
            if line.is_empty() {
                continue;
            }
            let (reference, passage) = line
                .split_once('\t')
                .ok_or_else(|| bad("expected REFERENCE<TAB>TEXT"))?;
            let (key, _) = reference
                .rsplit_once(':')
                .ok_or_else(|| bad("the reference has no ':'"))?;
            if key.is_empty() || passage.trim().is_empty() || passage.contains('\0') {
                return Err(bad("empty key or text"));
            }
            match documents.last_mut() {
                Some(doc) if doc.key == key => {
                    doc.passages.push((reference.into(), passage.into()));
                }
                _ => documents.push(Document {
                    key: key.into(),
                    passages: vec![(reference.into(), passage.into())],
                }),
            }
        }
        if documents.is_empty() {
            return Err(TrainError::EmptyData);
        }
        Ok(Corpus {
            documents,
            hash: Hash::of(bytes),
        })
    }

    /// Reads and parses a corpus file.
    pub fn read(path: &std::path::Path) -> Result<Corpus, TrainError> {
        let len = std::fs::metadata(path).map_err(TrainError::io(path))?.len();
        if len > CORPUS_LEN_MAX as u64 {
            return Err(TrainError::DataTooLarge {
                len,
                limit: CORPUS_LEN_MAX as u64,
            });
        }
        Corpus::parse(&std::fs::read(path).map_err(TrainError::io(path))?)
    }

    /// SHA-256 of the corpus file.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The documents of one split under `splitter`, in file order.
    pub fn documents<'a>(
        &'a self,
        split: Split,
        splitter: Splitter<'a>,
    ) -> impl Iterator<Item = &'a Document> {
        self.documents
            .iter()
            .filter(move |d| splitter.of(&d.key) == split)
    }

    /// All documents, in file order.
    pub fn all_documents(&self) -> &[Document] {
        &self.documents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_groups_by_chapter() {
        let text = "Gen 1:1\tIn the beginning.\nGen 1:2\tAnd the earth.\nGen 2:1\tThus.\n";
        let corpus = Corpus::parse(text.as_bytes()).expect("parses");
        let docs = corpus.all_documents();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].key, "Gen 1");
        assert_eq!(docs[0].text(), "In the beginning.\nAnd the earth.");
        let total: usize = [Split::Train, Split::Validation, Split::Hidden]
            .iter()
            .map(|&s| corpus.documents(s, Splitter::Genesis).count())
            .sum();
        assert_eq!(total, 2);
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in [
            &b"no tab here\n"[..],
            b"Gen 1\tno colon\n",
            b"Gen 1:1\t   \n",
            b"",
            b"\xff\xfe",
        ] {
            assert!(Corpus::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splits_are_stable() {
        // Pinned: changing the split function would silently move hidden items into the
        // public splits.
        assert_eq!(Split::of("Genesis 1"), Split::of("Genesis 1"));
        let keys: Vec<Split> = (1..=400).map(|c| Split::of(&format!("Book {c}"))).collect();
        let hidden = keys.iter().filter(|&&s| s == Split::Hidden).count();
        let train = keys.iter().filter(|&&s| s == Split::Train).count();
        assert!((20..=60).contains(&hidden), "{hidden}");
        assert!((320..=380).contains(&train), "{train}");
    }

    #[test]
    fn a_keyed_split_is_its_own_and_keeps_the_shares() {
        let keys: Vec<String> = (1..=2000).map(|c| format!("Book {c}")).collect();
        let hidden = |splitter: Splitter<'_>| -> Vec<&String> {
            keys.iter()
                .filter(|k| splitter.of(k) == Split::Hidden)
                .collect()
        };
        let genesis = hidden(Splitter::Genesis);
        let a = hidden(Splitter::Keyed(&[1; 32]));
        let b = hidden(Splitter::Keyed(&[2; 32]));
        assert_eq!(
            a,
            hidden(Splitter::Keyed(&[1; 32])),
            "deterministic under one key"
        );
        for h in [&genesis, &a, &b] {
            assert!((140..=260).contains(&h.len()), "{}", h.len());
        }
        // Independent choices of 10%: about 10% of one key's hidden keys are another's.
        let overlap = |x: &[&String], y: &[&String]| x.iter().filter(|k| y.contains(k)).count();
        assert!(
            overlap(&a, &b) < a.len() / 3,
            "{} of {}",
            overlap(&a, &b),
            a.len()
        );
        assert!(overlap(&a, &genesis) < a.len() / 3);
    }
}
