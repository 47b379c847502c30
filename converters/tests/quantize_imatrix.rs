//! `jq-convert quantize --imatrix FILE` against `llama_model_quantize` given the same
//! importance weights (`params.imatrix`) and the metadata llama-quantize adds for them
//! (`params.kv_overrides`): same tensor types, bytes and metadata.
//!
//! The imatrix files (GGUF and legacy .dat) are written with gguf-py by
//! fixtures/imatrix/make_imatrix.py, which also stores, computed with numpy, the weights
//! llama-quantize derives from each file (`*.weights.npz`): those, not our reader, feed
//! llama.cpp here.

mod common;

use jq::ggml::{self, KvOverride};
use jq::gguf::GgufFile;
use jq::quant::GgmlType;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DATASET: &str = "fixtures/gemma3/corpus.txt";

fn fixture(name: &str) -> PathBuf {
    common::root().join("fixtures/imatrix").join(name)
}

fn weights(imatrix: &Path) -> Vec<(String, Vec<f32>)> {
    let npz = PathBuf::from(format!("{}.weights.npz", imatrix.display()));
    jq::npz::read(&npz)
        .unwrap()
        .into_iter()
        .map(|(k, a)| {
            assert_eq!(a.dtype, "<f4", "{k}");
            (k, a.data)
        })
        .collect()
}

fn ours(input: &Path, output: &Path, ty: &str, imatrix: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .args([
            "quantize",
            input.to_str().unwrap(),
            output.to_str().unwrap(),
        ])
        .args(["--type", ty, "--imatrix", imatrix.to_str().unwrap()])
        .output()
        .unwrap()
}

/// The overrides llama-quantize passes with an imatrix (file as given, first dataset, entry
/// count, chunk count).
fn overrides(imatrix: &Path, n_entries: usize, chunks: i64) -> Vec<(String, KvOverride)> {
    vec![
        (
            "quantize.imatrix.file".into(),
            KvOverride::Str(imatrix.to_str().unwrap().into()),
        ),
        (
            "quantize.imatrix.dataset".into(),
            KvOverride::Str(DATASET.into()),
        ),
        (
            "quantize.imatrix.entries_count".into(),
            KvOverride::Int(n_entries as i64),
        ),
        (
            "quantize.imatrix.chunks_count".into(),
            KvOverride::Int(chunks),
        ),
    ]
}

fn compare(input: &Path, imatrix: &Path, chunks: i64, types: &[(&str, u32)], dir: &Path) {
    ggml::silence_logs();
    let w = weights(imatrix);
    let kv = overrides(imatrix, w.len(), chunks);
    for &(ty, ftype) in types {
        let label = format!("{} {ty}", imatrix.file_name().unwrap().to_string_lossy());
        let a = dir.join(format!("ours-{ty}.gguf"));
        let b = dir.join(format!("llama-{ty}.gguf"));
        let out = ours(input, &a, ty, imatrix);
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            ggml::llama_quantize_imatrix(input, &b, ftype, &w, &kv, 2),
            0,
            "{label}: llama.cpp failed"
        );
        common::assert_same(&a, &b, &label);
        std::fs::remove_file(&a).unwrap();
        std::fs::remove_file(&b).unwrap();
    }
}

#[test]
fn gguf_imatrix_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide-llama.gguf");
    common::write_wide_llama(&input);
    let im = fixture("wide-llama.imatrix.gguf");
    compare(
        &input,
        &im,
        17,
        &[
            ("q4_k_m", 15),
            ("q2_k_s", 21),
            ("q2_k", 10),
            ("q3_k_s", 11),
            ("q5_k_s", 16),
            ("q6_k", 18),
            ("q4_0", 2),
            ("q5_0", 8),
            ("q4_1", 3),
            ("iq4_xs", 30),
            ("iq4_nl", 25),
        ],
        dir.path(),
    );
    // The weights changed the bytes (a run without them differs) and the imatrix-only rules
    // fired: Q4_0's first ffn_down layer becomes Q4_1, IQ4_XS keeps its ffn_down.
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    assert!(ours(&input, &a, "q4_0", &im).status.success());
    ggml::silence_logs();
    assert_eq!(ggml::llama_quantize(&input, &b, 2, false, 2), 0);
    let (fa, fb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(
        fa.tensor("blk.0.ffn_down.weight").unwrap().ty(),
        GgmlType::Q4_1
    );
    assert_eq!(
        fb.tensor("blk.0.ffn_down.weight").unwrap().ty(),
        GgmlType::Q4_0
    );
    let q = |f: &GgufFile| f.tensor("blk.5.attn_q.weight").unwrap().data.to_vec();
    assert_ne!(q(&fa), q(&fb), "the importance weights changed nothing");
    // blk.3.attn_v has no entry: quantized as without an imatrix.
    let q3 = |f: &GgufFile| f.tensor("blk.3.attn_v.weight").unwrap().data.to_vec();
    assert_eq!(q3(&fa), q3(&fb));
    assert_eq!(
        fa.get_u32("quantize.imatrix.entries_count").unwrap(),
        weights(&im).len() as u32
    );
}

#[test]
fn legacy_dat_matches_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide-llama.gguf");
    common::write_wide_llama(&input);
    compare(
        &input,
        &fixture("wide-llama.imatrix.dat"),
        17,
        &[("q4_k_m", 15), ("q2_k_s", 21), ("q5_0", 8), ("iq4_nl", 25)],
        dir.path(),
    );
}

#[test]
fn committed_gemma3_with_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::root().join("fixtures/gemma3/llama-cpp/tiny-causal-f16.gguf");
    compare(
        &input,
        &fixture("gemma3-tiny.imatrix.gguf"),
        9,
        &[("q4_k_m", 15), ("q4_0", 2), ("q5_1", 9), ("iq4_nl", 25)],
        dir.path(),
    );
}

#[track_caller]
fn refused(out: Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err} lacks {needle}");
}

/// A legacy .dat with one entry.
fn dat(path: &Path, name: &str, values: &[f32]) {
    let mut b = 1i32.to_le_bytes().to_vec();
    b.extend((name.len() as i32).to_le_bytes());
    b.extend(name.as_bytes());
    b.extend(1i32.to_le_bytes());
    b.extend((values.len() as i32).to_le_bytes());
    for v in values {
        b.extend(v.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn bad_imatrix_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide-llama.gguf");
    common::write_wide_llama(&input);
    let out = dir.path().join("o.gguf");
    let im = dir.path().join("im.dat");
    dat(&im, "blk.0.attn_q.weight", &[1.0; 100]);
    refused(ours(&input, &out, "q4_k_m", &im), "holds 100 values");
    dat(&im, "blk.0.attn_q.weight", &[f32::NAN; 256]);
    refused(ours(&input, &out, "q4_k_m", &im), "non-finite");
    // q2_k_s needs an entry for every Q2_K tensor.
    dat(&im, "blk.0.attn_q.weight", &[1.0; 256]);
    refused(
        ours(&input, &out, "q2_k_s", &im),
        "no importance data for tensor",
    );
    // Without any imatrix, as llama.cpp (which refuses too).
    let plain = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .args(["quantize", input.to_str().unwrap(), out.to_str().unwrap()])
        .args(["--type", "q2_k_s"])
        .output()
        .unwrap();
    refused(plain, "needs an importance matrix");
    ggml::silence_logs();
    assert_ne!(ggml::llama_quantize(&input, &out, 21, false, 2), 0);
    let _ = std::fs::remove_file(&out);
    std::fs::write(&im, [1u8, 0, 0]).unwrap();
    refused(ours(&input, &out, "q4_k_m", &im), "im.dat");
    refused(
        ours(&input, &out, "q4_k_m", &dir.path().join("none.dat")),
        "none.dat",
    );
    assert!(!out.exists());
}
