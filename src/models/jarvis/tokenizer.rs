//! The Jarvis word-level tokenizer. Pre-tokenization follows llama.cpp's WPM (`bert`)
//! pre-tokenizer exactly, so that the native tokenizer and the `gpt2`/`bert` export produce
//! the same ids: NFD + drop accent marks (when stripping accents), lowercase, split on
//! whitespace, drop NUL, U+FFFD and control characters, and make every punctuation character
//! (Unicode P*), every ASCII symbol (S* below 0x7F) and every CJK ideograph a word of its own.

use crate::gguf::{GgufError, GgufModel};
use std::collections::HashMap;
use unicode_general_category::{get_general_category, GeneralCategory as G};
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone)]
pub struct WordTokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    pub unk: Option<u32>,
    pub eos: Option<u32>,
    pub bos: Option<u32>,
    pub pad: Option<u32>,
    pub lowercase: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizeError {
    #[error("word '{0}' is not in the vocabulary and the vocabulary has no <unk>")]
    Unknown(String),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadId { id: u32, vocab: usize },
}

fn is_punct(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::ConnectorPunctuation
            | G::DashPunctuation
            | G::OpenPunctuation
            | G::ClosePunctuation
            | G::InitialPunctuation
            | G::FinalPunctuation
            | G::OtherPunctuation
    )
}

fn is_ascii_symbol(c: char) -> bool {
    (c as u32) < 0x7F
        && matches!(
            get_general_category(c),
            G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol
        )
}

/// Whether the decoder writes this vocabulary word without a space before it: one punctuation
/// or ASCII symbol character (every such character is a word of its own, see [`pre_tokenize`]).
pub fn attaches_left(word: &str) -> bool {
    let mut cs = word.chars();
    matches!((cs.next(), cs.next()), (Some(c), None) if is_punct(c) || is_ascii_symbol(c))
}

fn is_accent_mark(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark
    )
}

fn is_chinese(c: char) -> bool {
    let c = c as u32;
    (0x4E00..=0x9FFF).contains(&c)
        || (0x3400..=0x4DBF).contains(&c)
        || (0x20000..=0x2A6DF).contains(&c)
        || (0x2A700..=0x2B73F).contains(&c)
        || (0x2B740..=0x2B81F).contains(&c)
        || (0x2B920..=0x2CEAF).contains(&c)
        || (0xF900..=0xFAFF).contains(&c)
        || (0x2F800..=0x2FA1F).contains(&c)
}

/// Splits text into words the way llama.cpp's WPM pre-tokenizer does.
pub fn pre_tokenize(text: &str, lowercase: bool, strip_accents: bool) -> Vec<String> {
    let chars: Vec<char> = if strip_accents {
        text.nfd().collect()
    } else {
        text.chars().collect()
    };
    let mut words = vec![String::new()];
    for c in chars {
        if c.is_whitespace() {
            if !words.last().is_some_and(String::is_empty) {
                words.push(String::new());
            }
            continue;
        }
        if c == '\0' || c == '\u{FFFD}' || c.is_control() {
            continue;
        }
        if strip_accents && is_accent_mark(c) {
            continue;
        }
        let lower: String = if lowercase {
            c.to_lowercase().collect()
        } else {
            c.to_string()
        };
        if is_punct(c) || is_ascii_symbol(c) || is_chinese(c) {
            if !words.last().is_some_and(String::is_empty) {
                words.push(String::new());
            }
            *words.last_mut().expect("never empty") = lower;
            words.push(String::new());
        } else {
            words.last_mut().expect("never empty").push_str(&lower);
        }
    }
    if words.last().is_some_and(String::is_empty) {
        words.pop();
    }
    words
}

impl WordTokenizer {
    pub fn new(tokens: Vec<String>, lowercase: bool) -> WordTokenizer {
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect::<HashMap<_, _>>();
        let find = |s: &str| ids.get(s).copied();
        WordTokenizer {
            unk: find("<unk>"),
            eos: find("<eos>"),
            bos: find("<bos>"),
            pad: find("<pad>"),
            tokens,
            ids,
            lowercase,
        }
    }

    /// The tokenizer stored in a GGUF (`tokenizer.ggml.tokens`, special ids, and
    /// `tokenizer.ggml.normalizer.lowercase`).
    pub fn from_gguf(f: &GgufModel) -> Result<WordTokenizer, GgufError> {
        let arr = f.get_array("tokenizer.ggml.tokens")?;
        let tokens: Vec<String> = arr
            .strings()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let lowercase = f
            .get_bool("tokenizer.ggml.normalizer.lowercase")
            .unwrap_or(true);
        let mut t = WordTokenizer::new(tokens, lowercase);
        let id = |k: &str| f.get_u32(k).ok();
        t.unk = id("tokenizer.ggml.unknown_token_id").or(t.unk);
        t.eos = id("tokenizer.ggml.eos_token_id").or(t.eos);
        t.bos = id("tokenizer.ggml.bos_token_id").or(t.bos);
        t.pad = id("tokenizer.ggml.padding_token_id").or(t.pad);
        Ok(t)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    pub fn id(&self, word: &str) -> Option<u32> {
        self.ids.get(word).copied()
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        pre_tokenize(text, self.lowercase, self.lowercase)
            .into_iter()
            .map(|w| self.id(&w).or(self.unk).ok_or(TokenizeError::Unknown(w)))
            .collect()
    }

    /// The text of one token as it should follow `prev_text` in running output: words are
    /// separated by one space, punctuation attaches without one; `<pad>`, `<bos>` and `<eos>`
    /// print nothing.
    pub fn piece(&self, id: u32, first: bool) -> Result<String, TokenizeError> {
        let t = self.tokens.get(id as usize).ok_or(TokenizeError::BadId {
            id,
            vocab: self.tokens.len(),
        })?;
        if Some(id) == self.pad || Some(id) == self.bos || Some(id) == self.eos {
            return Ok(String::new());
        }
        Ok(if first || attaches_left(t) {
            t.clone()
        } else {
            format!(" {t}")
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizeError> {
        let mut s = String::new();
        for &id in ids {
            let p = self.piece(id, s.is_empty())?;
            s.push_str(&p);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_tokenizes_like_wpm() {
        assert_eq!(
            pre_tokenize("Hello, Café  world!It's $5 (ok)", true, true),
            ["hello", ",", "cafe", "world", "!", "it", "'", "s", "$", "5", "(", "ok", ")"]
        );
        assert_eq!(pre_tokenize("a\tb\u{7}c\n", true, true), ["a", "bc"]);
        assert_eq!(pre_tokenize("中文x", true, true), ["中", "文", "x"]);
        assert_eq!(pre_tokenize("Café", false, false), ["Café"]);
    }

    #[test]
    fn encodes_and_decodes() {
        let toks: Vec<String> = ["<pad>", "<unk>", "<eos>", "the", "cat", ".", ","]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t = WordTokenizer::new(toks, true);
        let ids = t.encode("The cat, the DOG.").unwrap();
        assert_eq!(ids, vec![3, 4, 6, 3, 1, 5]);
        assert_eq!(t.decode(&ids).unwrap(), "the cat, the <unk>.");
        assert_eq!(t.decode(&[3, 2]).unwrap(), "the");
        let no_unk = WordTokenizer::new(vec!["a".into()], true);
        assert_eq!(no_unk.encode("b"), Err(TokenizeError::Unknown("b".into())));
    }
}
