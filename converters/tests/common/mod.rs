//! What the converter tests share: the tiny model, and the logit comparisons.
#![allow(dead_code)]

use jq::synth::{write_gpt2, Gpt2Dims};
use std::path::{Path, PathBuf};

/// The tiny GPT-2 shaped GGUF with F32, F16 and BF16 source tensors.
pub fn write_tiny_gpt2(path: &Path) {
    write_gpt2(path, Gpt2Dims::TINY, true).unwrap();
}

/// max |diff| / max |reference|.
pub fn rel_err(ours: &[f32], theirs: &[f32]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let max_ref = theirs.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let max_diff = ours.iter().zip(theirs).fold(0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    max_diff / max_ref
}

pub fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b })
}

/// (top-1 agreement, mean KL(reference || ours)) over positions.
pub fn agreement(ours: &[f32], theirs: &[f32], vocab: usize) -> (f64, f64) {
    let mut same = 0usize;
    let mut kl = 0f64;
    let n = ours.len() / vocab;
    for (a, b) in ours.chunks(vocab).zip(theirs.chunks(vocab)) {
        same += usize::from(argmax(a) == argmax(b));
        let lsm = |x: &[f32]| {
            let m = x.iter().fold(f64::MIN, |m, &v| m.max(f64::from(v)));
            let z: f64 = x.iter().map(|&v| (f64::from(v) - m).exp()).sum();
            x.iter()
                .map(|&v| f64::from(v) - m - z.ln())
                .collect::<Vec<_>>()
        };
        let (la, lb) = (lsm(a), lsm(b));
        kl += la
            .iter()
            .zip(&lb)
            .map(|(p, q)| q.exp() * (q - p))
            .sum::<f64>();
    }
    (same as f64 / n as f64, kl / n as f64)
}

/// A fixture's `reference.npz` prompts, numbered from 0 while `ids_{k}` exists: (k, token
/// ids, logits [n x vocab]).
pub fn reference_prompts(
    a: &std::collections::BTreeMap<String, jq::npy::NpyArray>,
) -> Vec<(usize, Vec<u32>, Vec<f32>)> {
    (0..)
        .map_while(|k| {
            let ids = a.get(&format!("ids_{k}"))?;
            Some((
                k,
                ids.data.iter().map(|&x| x as u32).collect(),
                a[&format!("logits_{k}")].data.clone(),
            ))
        })
        .collect()
}

/// The repository root (the workspace's top level).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
