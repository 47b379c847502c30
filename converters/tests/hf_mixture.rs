//! `hf-to-gguf --type q4_k_m` (and other llama-quantize file types) in one pass, against the
//! two-pass reference: llama.cpp's own converter output in the checkpoint's dtype (the
//! committed fixtures/gemma3/llama-cpp/tiny-causal-bf16.gguf) followed by
//! `llama_model_quantize`. Same tensors (types, shapes, bytes) and the same metadata (as a
//! map: key order aside).

mod common;

use jq::ggml;
use jq::gguf::{GgufFile, MetaValue};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn metadata(f: &GgufFile) -> BTreeMap<String, MetaValue> {
    f.metadata()
        .map(|(k, v)| (k.to_string(), v.to_owned_value()))
        .collect()
}

fn hf_to_gguf(dir: &Path, ty: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .arg("hf-to-gguf")
        .arg(dir)
        .args(["--type", ty, "-o"])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn one_pass_equals_converter_then_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let ck = common::root().join("fixtures/gemma3/tiny-causal");
    let converted = common::root().join("fixtures/gemma3/llama-cpp/tiny-causal-bf16.gguf");
    ggml::silence_logs();
    for (ty, ftype) in [
        ("q4_k_m", 15),
        ("Q5_K_M", 17),
        ("q6_k", 18),
        ("q3_k_l", 13),
        ("q2_k", 10),
        ("iq4_xs", 30),
        ("q5_0", 8),
        ("q4_1", 3),
        ("tq2_0", 37),
    ] {
        let ours = dir.path().join(format!("ours-{ty}.gguf"));
        let theirs = dir.path().join(format!("llama-{ty}.gguf"));
        let o = hf_to_gguf(&ck, ty, &ours);
        assert!(
            o.status.success(),
            "{ty}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            ggml::llama_quantize(&converted, &theirs, ftype, false, 2),
            0
        );
        let (a, b) = (
            GgufFile::open(&ours).unwrap(),
            GgufFile::open(&theirs).unwrap(),
        );
        let (ma, mb) = (metadata(&a), metadata(&b));
        for k in ma.keys().chain(mb.keys()) {
            assert_eq!(ma.get(k), mb.get(k), "{ty}: metadata '{k}'");
        }
        assert_eq!(a.tensor_infos().len(), b.tensor_infos().len(), "{ty}");
        let mut types = Vec::new();
        for t in a.tensors() {
            let u = b.tensor(t.name()).unwrap();
            assert_eq!(
                (t.ty(), &t.info.ne),
                (u.ty(), &u.info.ne),
                "{ty}: type or shape of {}",
                t.name()
            );
            assert!(t.data == u.data, "{ty}: bytes of {} ({})", t.name(), t.ty());
            types.push(t.ty());
        }
        types.sort_by_key(|t| t.name());
        types.dedup();
        // Q4_K_M is a mixture here too (64-wide rows: Q4_K falls back to Q5_0, its Q6_K
        // layers to Q8_0): more than the norms' F32 and one weight type.
        if ty == "q4_k_m" {
            assert!(types.len() >= 3, "{ty}: {types:?}");
        }
    }
}

#[test]
fn f32_checkpoints_are_refused_for_mixtures() {
    let dir = tempfile::tempdir().unwrap();
    let o = hf_to_gguf(
        &common::root().join("fixtures/gemma3/tiny-mm"),
        "q4_k_m",
        &dir.path().join("o.gguf"),
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bf16 or f16 checkpoint"), "{err}");
    assert!(!dir.path().join("o.gguf").exists());
}
