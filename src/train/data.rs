//! Corpus -> vocabulary -> documents -> batches.
//!
//! The vocabulary is built as `fixtures/jarvis/make_jarvis.py` builds it: paragraphs are the
//! pieces of the text between `"\n\n"` that are not blank; every paragraph is split by the
//! spec's tokenizer ([`pre_tokenize`], lowercase, accents stripped); the vocabulary is `<pad>`,
//! `<unk>`, `<eos>`, then the words by descending count, ties by the word (code-point order),
//! cut to `vocab_size` entries including the three special tokens. A document is a paragraph's
//! ids followed by `<eos>`.

use super::backprop::Batch;
use crate::models::jarvis::{pre_tokenize, WordTokenizer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

pub const PAD: u32 = 0;
pub const UNK: u32 = 1;
pub const EOS: u32 = 2;
pub const SPECIAL: [&str; 3] = ["<pad>", "<unk>", "<eos>"];

/// Streams of the per-purpose random generators (all seeded with `--seed`).
const STREAM_SPLIT: u64 = 1;
const STREAM_SHUFFLE: u64 = 2 << 32;
const STREAM_STEP: u64 = 3 << 32;

pub fn paragraphs(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub tokens: Vec<String>,
    /// Distinct words in the corpus (the vocabulary holds `min(this, vocab_size - 3)`).
    pub distinct_words: usize,
}

pub fn build_vocab(paragraphs: &[&str], vocab_size: usize) -> Vocabulary {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in paragraphs {
        for w in pre_tokenize(p, true, true) {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(String, usize)> = counts.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let distinct_words = words.len();
    let mut tokens: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    tokens.extend(
        words
            .into_iter()
            .take(vocab_size.saturating_sub(SPECIAL.len()))
            .map(|(w, _)| w),
    );
    Vocabulary {
        tokens,
        distinct_words,
    }
}

/// Each paragraph's ids followed by `<eos>` (words outside the vocabulary become `<unk>`).
pub fn documents(paragraphs: &[&str], tok: &WordTokenizer) -> Vec<Vec<u32>> {
    paragraphs
        .iter()
        .map(|p| {
            let mut ids = tok.encode(p).expect("the vocabulary has <unk>");
            ids.push(EOS);
            ids
        })
        .collect()
}

/// Splits documents into (train, eval): `round(frac * n)` documents, at least one when `frac >
/// 0` and at most `n - 1`, chosen by a seeded shuffle; the rest train, in corpus order.
pub fn split(docs: Vec<Vec<u32>>, frac: f64, seed: u64) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let n = docs.len();
    let n_eval = if frac <= 0.0 || n < 2 {
        0
    } else {
        ((frac * n as f64).round() as usize).clamp(1, n - 1)
    };
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rng(seed, STREAM_SPLIT);
    idx.shuffle(&mut rng);
    let mut is_eval = vec![false; n];
    for &i in &idx[..n_eval] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if is_eval[i] {
            eval.push(d);
        } else {
            train.push(d);
        }
    }
    (train, eval)
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// Training sequences of at most `ctx + 1` tokens: each document cut into windows that start
/// every `ctx` tokens, so every next-token target of the document appears exactly once.
pub fn sequences(docs: &[Vec<u32>], ctx: usize) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for d in docs {
        let mut s = 0;
        while s + 1 < d.len() {
            out.push(d[s..(s + ctx + 1).min(d.len())].to_vec());
            s += ctx;
        }
    }
    out
}

/// Teacher forcing over padded sequences: inputs `w[..len-1]`, targets `w[1..]`, padded with
/// `<pad>` to the longest sequence of the batch; padded targets are masked out.
pub fn padded_batch(seqs: &[&[u32]]) -> Batch {
    let t = seqs.iter().map(|s| s.len() - 1).max().unwrap_or(0);
    let b = seqs.len();
    let mut batch = Batch {
        b,
        t,
        inputs: vec![PAD; b * t],
        targets: vec![PAD; b * t],
        mask: vec![false; b * t],
    };
    for (i, s) in seqs.iter().enumerate() {
        for p in 0..s.len() - 1 {
            batch.inputs[i * t + p] = s[p];
            batch.targets[i * t + p] = s[p + 1];
            batch.mask[i * t + p] = true;
        }
    }
    batch
}

/// How the training batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The seed's way: each epoch, the document windows in a seeded random order, `batch` at a
    /// time, padded.
    Documents,
    /// `make_jarvis.py`'s way: `batch` random windows of `ctx + 1` tokens of the concatenated
    /// documents (read circularly), every position a target.
    Packed,
}

/// The training set and the rule that turns a global step number into its batch. Every batch
/// is a pure function of (seed, step), so a resumed run draws what the uninterrupted one drew.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub sampling: Sampling,
    pub seqs: Vec<Vec<u32>>,
    pub stream: Vec<u32>,
    pub batch: usize,
    pub ctx: usize,
    pub seed: u64,
    pub unk_dropout: f64,
}

impl Sampler {
    pub fn new(
        sampling: Sampling,
        train: &[Vec<u32>],
        batch: usize,
        ctx: usize,
        seed: u64,
        unk_dropout: f64,
    ) -> Sampler {
        Sampler {
            sampling,
            seqs: sequences(train, ctx),
            stream: train.concat(),
            batch,
            ctx,
            seed,
            unk_dropout,
        }
    }

    /// Steps in one pass over the training tokens.
    pub fn steps_per_epoch(&self) -> u64 {
        let n = match self.sampling {
            Sampling::Documents => self.seqs.len(),
            Sampling::Packed => self.stream.len().div_ceil(self.ctx),
        };
        n.div_ceil(self.batch).max(1) as u64
    }

    /// The batch of global step `step` (0-based).
    pub fn batch(&self, step: u64) -> Batch {
        let spe = self.steps_per_epoch();
        let mut b = match self.sampling {
            Sampling::Documents => {
                let epoch = step / spe;
                let i = (step % spe) as usize;
                let mut order: Vec<usize> = (0..self.seqs.len()).collect();
                order.shuffle(&mut rng(self.seed, STREAM_SHUFFLE + epoch));
                let pick: Vec<&[u32]> = order
                    .iter()
                    .skip(i * self.batch)
                    .take(self.batch)
                    .map(|&k| self.seqs[k].as_slice())
                    .collect();
                padded_batch(&pick)
            }
            Sampling::Packed => {
                let mut r = rng(self.seed, STREAM_STEP + step);
                let len = self.stream.len();
                let t = self.ctx;
                let mut wins: Vec<Vec<u32>> = Vec::with_capacity(self.batch);
                for _ in 0..self.batch {
                    let s = r.gen_range(0..len);
                    wins.push((0..=t).map(|j| self.stream[(s + j) % len]).collect());
                }
                let refs: Vec<&[u32]> = wins.iter().map(Vec::as_slice).collect();
                padded_batch(&refs)
            }
        };
        if self.unk_dropout > 0.0 {
            let mut r = rng(self.seed ^ 0x5EED, STREAM_STEP + step);
            for (x, &m) in b.inputs.iter_mut().zip(&b.mask) {
                if m && r.gen_bool(self.unk_dropout) {
                    *x = UNK;
                }
            }
        }
        b
    }

    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch()
    }
}

/// Evaluation batches: the eval documents' windows in order, `batch` at a time.
pub fn eval_batches(eval: &[Vec<u32>], batch: usize, ctx: usize) -> Vec<Batch> {
    let seqs = sequences(eval, ctx);
    seqs.chunks(batch)
        .map(|c| padded_batch(&c.iter().map(Vec::as_slice).collect::<Vec<_>>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_target_once() {
        let doc: Vec<u32> = (10..20).collect();
        let s = sequences(std::slice::from_ref(&doc), 4);
        assert_eq!(
            s,
            vec![
                vec![10, 11, 12, 13, 14],
                vec![14, 15, 16, 17, 18],
                vec![18, 19]
            ]
        );
        let b = padded_batch(&[&s[0], &s[2]]);
        assert_eq!((b.b, b.t), (2, 4));
        assert_eq!(b.inputs, [10, 11, 12, 13, 18, PAD, PAD, PAD]);
        assert_eq!(b.targets, [11, 12, 13, 14, 19, PAD, PAD, PAD]);
        assert_eq!(b.n_targets(), 5);
    }

    #[test]
    fn vocabulary_order_and_cut() {
        let v = build_vocab(&["b a b. c", "a b"], 5);
        assert_eq!(v.tokens, ["<pad>", "<unk>", "<eos>", "b", "a"]);
        assert_eq!(v.distinct_words, 4);
    }
}
