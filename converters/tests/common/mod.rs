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

/// Writes an 11-layer llama with 256-wide rows, 4 query heads sharing one KV head.
pub fn write_wide_llama(path: &Path) {
    write_wide_llama_layers(path, 11);
}

/// [`write_wide_llama`] with `n_layer` layers.
pub fn write_wide_llama_layers(path: &Path, n_layer: u32) {
    let (embd, ff, vocab) = (256u64, 256u64, 320u64);
    let mut w = jq::gguf::GgufWriter::new();
    w.add("general.architecture", "llama").unwrap();
    w.add("general.name", "wide llama").unwrap();
    w.add("llama.block_count", n_layer).unwrap();
    w.add("llama.context_length", 64u32).unwrap();
    w.add("llama.embedding_length", embd as u32).unwrap();
    w.add("llama.feed_forward_length", ff as u32).unwrap();
    w.add("llama.attention.head_count", 4u32).unwrap();
    w.add("llama.attention.head_count_kv", 1u32).unwrap();
    w.add("llama.rope.freq_base", 10000.0f32).unwrap();
    w.add("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .unwrap();
    w.add("llama.vocab_size", vocab as u32).unwrap();
    w.add("llama.rope.dimension_count", 64u32).unwrap();
    w.add("general.file_type", 0u32).unwrap();
    let mut shapes: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![embd, vocab]),
        ("output_norm.weight".into(), vec![embd]),
        ("output.weight".into(), vec![embd, vocab]),
    ];
    for i in 0..n_layer {
        for (n, ne) in [
            ("attn_norm.weight", vec![embd]),
            ("attn_q.weight", vec![embd, embd]),
            ("attn_k.weight", vec![embd, 64]),
            ("attn_v.weight", vec![embd, 64]),
            ("attn_output.weight", vec![embd, embd]),
            ("ffn_norm.weight", vec![embd]),
            ("ffn_gate.weight", vec![embd, ff]),
            ("ffn_up.weight", vec![embd, ff]),
            ("ffn_down.weight", vec![ff, embd]),
        ] {
            shapes.push((format!("blk.{i}.{n}"), ne));
        }
    }
    for (n, ne) in &shapes {
        w.add_tensor(n, jq::quant::GgmlType::F32, ne).unwrap();
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(14);
    let normal = rand_distr::Normal::new(0.0f32, 0.02).unwrap();
    w.write_file(path, |i, _, out| {
        let n: u64 = shapes[i].1.iter().product();
        let v: Vec<f32> = if shapes[i].1.len() == 1 {
            (0..n)
                .map(|_| 1.0 + rand_distr::Distribution::sample(&normal, &mut rng))
                .collect()
        } else {
            (0..n)
                .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                .collect()
        };
        out.write_all(bytemuck::cast_slice(&v))
            .map_err(|e| jq::gguf::GgufError::Plan(e.to_string()))
    })
    .unwrap();
}

/// Same metadata (order and values) and the same tensors by name: type, shape, bytes.
pub fn assert_same(ours: &Path, theirs: &Path, label: &str) {
    let a = jq::gguf::GgufFile::open(ours).unwrap();
    let b = jq::gguf::GgufFile::open(theirs).unwrap();
    let ka: Vec<_> = a
        .metadata()
        .map(|(k, v)| (k.to_string(), v.to_owned_value()))
        .collect();
    let kb: Vec<_> = b
        .metadata()
        .map(|(k, v)| (k.to_string(), v.to_owned_value()))
        .collect();
    assert_eq!(ka, kb, "{label}: metadata differs");
    assert_eq!(a.tensor_infos().len(), b.tensor_infos().len(), "{label}");
    for t in a.tensors() {
        let u = b.tensor(t.name()).unwrap();
        assert_eq!(
            (t.ty(), &t.info.ne),
            (u.ty(), &u.info.ne),
            "{label}: type or shape of {}",
            t.name()
        );
        assert!(
            t.data == u.data,
            "{label}: bytes of {} ({}) differ",
            t.name(),
            t.ty()
        );
    }
}

/// stdout of a successful run of `what` (a program); a failed one fails the test with its
/// stderr.
pub fn stdout_ok_as(o: &std::process::Output, what: &str) -> Vec<u8> {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout.clone()
}
