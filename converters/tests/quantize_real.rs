//! `jq-convert quantize` on the real Gemma 3 270M Q4_K_M against `llama_model_quantize`
//! (needs scripts/setup's models; fails, not skips, without them).

mod common;

use jq::ggml;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run_ours(input: &Path, output: &Path, ty: &str, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
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

/// The real Gemma 3 270M Q4_K_M (a Hugging Face file: Q5_0/Q8_0/Q4_K/Q6_K tensors, 640-wide
/// rows that fall back): decoded to F16 as llama.cpp decodes it, then that F16 re-made into
/// Q4_K_M as llama.cpp makes it.
#[test]
fn real_gemma3_270m_q4_k_m() {
    let model = dirs_model("gemma-3-270m-q4_k_m.gguf");
    let dir = tempfile::tempdir().unwrap();
    ggml::silence_logs();
    let ours = dir.path().join("f16-ours.gguf");
    run_ours(&model, &ours, "f16", &[]);
    let theirs = dir.path().join("f16-llama.gguf");
    assert_eq!(
        ggml::llama_quantize_opts(&model, &theirs, 1, false, true, 2),
        0
    );
    common::assert_same(&ours, &theirs, "gemma3 270m Q4_K_M -> f16");
    std::fs::remove_file(&theirs).unwrap();
    let f16 = ours;
    let ours = dir.path().join("q4km-ours.gguf");
    run_ours(&f16, &ours, "q4_k_m", &[]);
    let theirs = dir.path().join("q4km-llama.gguf");
    assert_eq!(ggml::llama_quantize(&f16, &theirs, 15, false, 2), 0);
    common::assert_same(&ours, &theirs, "gemma3 270m f16 -> Q4_K_M");
}

fn dirs_model(name: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/jq/models")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup to download the real models",
        p.display()
    );
    p
}
