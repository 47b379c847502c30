//! `jq-convert quantize` against llama.cpp's own `llama_model_quantize` (pure mode).

mod common;

use jq::ggml;
use jq::gguf::GgufFile;
use std::process::Command;

fn jq_convert() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jq-convert"))
}

#[test]
fn matches_llama_model_quantize_pure() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tiny-f32.gguf");
    common::write_tiny_gpt2(&input);
    ggml::silence_logs();
    for (ty, ftype) in [("q4_0", 2u32), ("q8_0", 7), ("f16", 1), ("f32", 0)] {
        let ours = dir.path().join(format!("ours-{ty}.gguf"));
        let theirs = dir.path().join(format!("llama-{ty}.gguf"));
        let out = jq_convert()
            .args([
                "quantize",
                input.to_str().unwrap(),
                ours.to_str().unwrap(),
                "--type",
                ty,
                "--pure",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        if ty.starts_with('q') {
            assert!(
                stderr.contains("warning: blk.0.ffn_down.weight: 80 columns"),
                "fallback warning missing: {stderr}"
            );
        }
        assert_eq!(
            ggml::llama_quantize_pure(&input, &theirs, ftype, 1),
            0,
            "llama.cpp failed"
        );

        let a = GgufFile::open(&ours).unwrap();
        let b = GgufFile::open(&theirs).unwrap();
        // Same metadata, same order, same values.
        let ka: Vec<_> = a
            .metadata()
            .map(|(k, v)| (k.to_string(), v.to_owned_value()))
            .collect();
        let kb: Vec<_> = b
            .metadata()
            .map(|(k, v)| (k.to_string(), v.to_owned_value()))
            .collect();
        assert_eq!(ka, kb, "{ty}: metadata differs");
        // Same tensors (llama.cpp sorts by name; we keep the input order), same types and bytes.
        assert_eq!(a.tensor_infos().len(), b.tensor_infos().len());
        for t in a.tensors() {
            let u = b.tensor(t.name()).unwrap();
            assert_eq!(
                (t.ty(), &t.info.ne),
                (u.ty(), &u.info.ne),
                "{ty}: {}",
                t.name()
            );
            assert!(t.data == u.data, "{ty}: bytes of {} differ", t.name());
        }
        if ty == "q4_0" {
            let types = |n: &str| a.tensor(n).unwrap().ty().name();
            assert_eq!(types("blk.0.attn_qkv.weight"), "q4_0");
            assert_eq!(types("blk.0.ffn_down.weight"), "f16");
            assert_eq!(types("position_embd.weight"), "f32");
            assert_eq!(types("blk.1.ffn_norm.weight"), "f32");
            assert_eq!(types("output.weight"), "q4_0");
        }
    }
}

#[test]
fn refuses_requantize_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tiny-f32.gguf");
    common::write_tiny_gpt2(&input);
    let q8 = dir.path().join("q8.gguf");
    let st = jq_convert()
        .args([
            "quantize",
            input.to_str().unwrap(),
            q8.to_str().unwrap(),
            "--type",
            "q8_0",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let q4 = dir.path().join("q4.gguf");
    let out = jq_convert()
        .args([
            "quantize",
            q8.to_str().unwrap(),
            q4.to_str().unwrap(),
            "--type",
            "q4_0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is already Q8_0") && err.contains("--allow-requantize"),
        "{err}"
    );
    assert!(!q4.exists(), "a failed run must not leave an output file");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // With the flag it works, and re-encodes from the dequantized Q8_0 values.
    let st = jq_convert()
        .args([
            "quantize",
            q8.to_str().unwrap(),
            q4.to_str().unwrap(),
            "--type",
            "q4_0",
            "--allow-requantize",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let f = GgufFile::open(&q4).unwrap();
    let src = GgufFile::open(&q8).unwrap();
    let t = src.tensor("blk.1.attn_qkv.weight").unwrap();
    let want = jq::quant::quantize_to_vec(jq::quant::GgmlType::Q4_0, &t.to_f32().unwrap()).unwrap();
    assert_eq!(f.tensor("blk.1.attn_qkv.weight").unwrap().data, &want[..]);
    assert_eq!(f.get_u32("general.file_type").unwrap(), 2);
}

#[test]
fn missing_and_non_gguf_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not.gguf");
    std::fs::write(&bogus, b"PK\x03\x04 this is a zip").unwrap();
    for (path, needle) in [
        (dir.path().join("missing.gguf"), "missing.gguf"),
        (bogus.clone(), "not a GGUF file"),
    ] {
        let out = jq_convert()
            .args(["inspect", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
    }
}
