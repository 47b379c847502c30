//! `jq-convert quantize --type T` for every llama-quantize file type we encode, against
//! `llama_model_quantize` (llama.cpp's own mixture rules, not pure) on the same input: same
//! tensor types, bytes and metadata (tensor order aside).
//!
//! Inputs: the committed 64-wide fixtures (gpt2, llama3, gemma3; every K-quant falls back to a
//! 32-block type there) and two 256-wide models written here so the K-quants and the "more
//! bits" layer rules are exercised: an 11-layer GPT-2 with F32/F16/BF16 sources and an 11-layer
//! llama (GQA 4, untied output). With 11 layers a plain name sort (blk.0, blk.1, blk.10,
//! blk.2, ...) would count layers differently from llama.cpp's loader (layer number first).

mod common;

use jq::ggml;
use jq::gguf::GgufFile;
use jq::quant::GgmlType;
use jq::synth::{write_gpt2, Gpt2Dims};
use std::path::{Path, PathBuf};
use std::process::Command;

/// (name, llama_ftype).
const TYPES: &[(&str, u32)] = &[
    ("q4_0", 2),
    ("q4_1", 3),
    ("q8_0", 7),
    ("q5_0", 8),
    ("q5_1", 9),
    ("q2_k", 10),
    ("q3_k_s", 11),
    ("q3_k_m", 12),
    ("q3_k_l", 13),
    ("q4_k_s", 14),
    ("q4_k_m", 15),
    ("q5_k_s", 16),
    ("q5_k_m", 17),
    ("q6_k", 18),
    ("iq4_nl", 25),
    ("iq4_xs", 30),
    ("tq1_0", 36),
    ("tq2_0", 37),
    ("mxfp4_moe", 38),
    ("q1_0", 40),
    ("q2_0", 41),
    ("f16", 1),
    ("bf16", 32),
    ("f32", 0),
];

fn jq_convert() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jq-convert"))
}

fn run_ours(input: &Path, output: &Path, ty: &str, extra: &[&str]) {
    let out = jq_convert()
        .args([
            "quantize",
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            "--type",
            ty,
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{ty}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn compare_all(input: &Path, dir: &Path, label: &str, types: &[(&str, u32)]) {
    ggml::silence_logs();
    for &(ty, ftype) in types {
        let ours = dir.join(format!("{label}-ours-{ty}.gguf"));
        let theirs = dir.join(format!("{label}-llama-{ty}.gguf"));
        run_ours(input, &ours, ty, &[]);
        assert_eq!(
            ggml::llama_quantize(input, &theirs, ftype, false, 2),
            0,
            "{label} {ty}: llama.cpp failed"
        );
        common::assert_same(&ours, &theirs, &format!("{label} {ty}"));
        std::fs::remove_file(&ours).unwrap();
        std::fs::remove_file(&theirs).unwrap();
    }
}

fn root() -> PathBuf {
    common::root()
}

#[test]
fn wide_llama_every_type() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide-llama.gguf");
    common::write_wide_llama(&input);
    compare_all(&input, dir.path(), "wide llama", TYPES);
    // Spot checks of the rules on llama.cpp's own output (so the comparison above cannot pass
    // on a file where every tensor got the same type).
    let ours = dir.path().join("q4_k_m.gguf");
    run_ours(&input, &ours, "Q4_K", &[]);
    let f = GgufFile::open(&ours).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().ty();
    assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_K);
    assert_eq!(ty("output_norm.weight"), GgmlType::F32);
    let mut v_types: Vec<GgmlType> = (0..11)
        .map(|i| ty(&format!("blk.{i}.attn_v.weight")))
        .collect();
    v_types.dedup();
    assert!(
        v_types.len() > 2,
        "attn_v should mix Q4_K and Q6_K: {v_types:?}"
    );
}

/// An 80-layer llama with grouped-query attention is llama.cpp's `LLM_TYPE_70B`, whose attn_v
/// gets Q5_K where the file type would give Q3_K or Q4_K.
#[test]
fn eighty_layer_llama_is_the_70b_case() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("llama-80.gguf");
    common::write_wide_llama_layers(&input, 80);
    compare_all(
        &input,
        dir.path(),
        "80-layer llama",
        &[("q4_k_m", 15), ("q3_k_s", 11)],
    );
    // On llama.cpp's own output: the bump happened (Q4_K_M's plain attn_v layers are Q5_K).
    let theirs = dir.path().join("theirs.gguf");
    assert_eq!(ggml::llama_quantize(&input, &theirs, 15, false, 2), 0);
    let f = GgufFile::open(&theirs).unwrap();
    let v: Vec<GgmlType> = (0..80)
        .map(|i| f.tensor(&format!("blk.{i}.attn_v.weight")).unwrap().ty())
        .collect();
    assert!(
        v.contains(&GgmlType::Q5_K) && !v.contains(&GgmlType::Q4_K),
        "{v:?}"
    );
}

#[test]
fn wide_gpt2_mixed_sources() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide-gpt2.gguf");
    let dims = Gpt2Dims {
        n_embd: 256,
        n_ff: 512,
        n_vocab: 300,
        n_ctx: 32,
        n_layer: 11,
        n_head: 4,
    };
    write_gpt2(&input, dims, true).unwrap();
    let picked: Vec<_> = TYPES
        .iter()
        .copied()
        .filter(|(t, _)| {
            [
                "q4_k_m", "q5_k_m", "q6_k", "q3_k_m", "q4_k_s", "q2_k", "iq4_xs", "q5_1", "f16",
            ]
            .contains(t)
        })
        .collect();
    compare_all(&input, dir.path(), "wide gpt2", &picked);
}

#[test]
fn committed_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = dir.path().join("tiny-gpt2.gguf");
    common::write_tiny_gpt2(&gpt2);
    let some: Vec<_> = TYPES
        .iter()
        .copied()
        .filter(|(t, _)| ["q4_k_m", "q6_k", "q3_k_l", "q5_k_s", "q4_0", "tq2_0"].contains(t))
        .collect();
    compare_all(&gpt2, dir.path(), "tiny gpt2", &some);
    let llama3 = root().join("fixtures/families/llama3/llama3-f32.gguf");
    compare_all(&llama3, dir.path(), "llama3", &some);
    let gemma3 = root().join("fixtures/gemma3/llama-cpp/tiny-causal-f16.gguf");
    compare_all(&gemma3, dir.path(), "gemma3 f16", &some);
}

#[test]
fn requantize_and_upcast() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide-llama.gguf");
    common::write_wide_llama(&input);
    let q4 = dir.path().join("q4_k_m.gguf");
    run_ours(&input, &q4, "q4_k_m", &[]);
    // Upcast needs no flag; its bytes equal llama.cpp's own upcast of the same file.
    let ours = dir.path().join("f16-ours.gguf");
    run_ours(&q4, &ours, "f16", &[]);
    let theirs = dir.path().join("f16-llama.gguf");
    ggml::silence_logs();
    assert_eq!(
        ggml::llama_quantize_opts(&q4, &theirs, 1, false, true, 2),
        0
    );
    common::assert_same(&ours, &theirs, "Q4_K_M -> f16");
    // So does a re-quantization with the flag (Q4_K_M -> Q5_K_M, every source type decoded).
    let ours = dir.path().join("q5-ours.gguf");
    run_ours(&q4, &ours, "q5_k_m", &["--allow-requantize"]);
    let theirs = dir.path().join("q5-llama.gguf");
    assert_eq!(
        ggml::llama_quantize_opts(&q4, &theirs, 17, false, true, 2),
        0
    );
    common::assert_same(&ours, &theirs, "Q4_K_M -> Q5_K_M");
    // Re-quantizing needs the flag, and then matches llama.cpp with allow_requantize.
    let out = jq_convert()
        .args([
            "quantize",
            q4.to_str().unwrap(),
            dir.path().join("x.gguf").to_str().unwrap(),
            "--type",
            "q6_k",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is already Q4_K") && err.contains("--allow-requantize"),
        "{err}"
    );
    assert!(!dir.path().join("x.gguf").exists());
}

#[test]
fn type_names_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = dir.path().join("tiny-gpt2.gguf");
    common::write_tiny_gpt2(&gpt2);
    for (ty, needle) in [("iq2_xxs", "unknown type 'iq2_xxs'"), ("nvfp4", "nvfp4")] {
        let out = jq_convert()
            .args([
                "quantize",
                gpt2.to_str().unwrap(),
                dir.path().join("o.gguf").to_str().unwrap(),
                "--type",
                ty,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{ty}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{ty}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{ty}: one line: {err}");
    }
    // Aliases and case: Q4_K is q4_k_m.
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    run_ours(&gpt2, &a, "Q4_K", &[]);
    run_ours(&gpt2, &b, "q4_k_m", &[]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
