//! Small GGUF models built by the tests themselves.

use jq::gguf::{GgufWriter, MetaValue, ValueType};
use jq::quant::{quantize_to_vec, GgmlType};
use std::path::Path;

/// Deterministic pseudo-random weights (a fixed LCG, so the files are the same everywhere).
pub fn weights(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// A tiny GPT-2 shaped GGUF that llama.cpp's loader accepts. `ffn_down` has 80 columns (not a
/// multiple of 32) to exercise the F16 fallback; `attn_output` is stored F16 and `ffn_up`
/// BF16 to exercise every source codec.
pub fn write_tiny_gpt2(path: &Path) {
    let (n_embd, n_ff, n_vocab, n_ctx, n_layer) = (64u64, 80u64, 100u64, 32u64, 2u64);
    let mut w = GgufWriter::new();
    w.add("general.architecture", "gpt2").unwrap();
    w.add("general.name", "tiny gpt2 for tests").unwrap();
    w.add("gpt2.context_length", n_ctx as u32).unwrap();
    w.add("gpt2.embedding_length", n_embd as u32).unwrap();
    w.add("gpt2.feed_forward_length", n_ff as u32).unwrap();
    w.add("gpt2.block_count", n_layer as u32).unwrap();
    w.add("gpt2.attention.head_count", 4u32).unwrap();
    w.add("gpt2.attention.layer_norm_epsilon", 1e-5f32).unwrap();
    w.add("general.file_type", 0u32).unwrap();
    w.add("tokenizer.ggml.model", "gpt2").unwrap();
    let tokens: Vec<String> = (0..n_vocab).map(|i| format!("t{i}")).collect();
    w.add("tokenizer.ggml.tokens", MetaValue::strings(&tokens)).unwrap();
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::array(ValueType::I32, (0..n_vocab).map(|_| 1i32)),
    )
    .unwrap();
    w.add("tokenizer.ggml.merges", MetaValue::strings(["t 1", "t 2"])).unwrap();

    let mut tensors: Vec<(String, GgmlType, Vec<u64>)> = vec![
        ("token_embd.weight".into(), GgmlType::F32, vec![n_embd, n_vocab]),
        ("position_embd.weight".into(), GgmlType::F32, vec![n_embd, n_ctx]),
    ];
    for l in 0..n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.extend([
            (b("attn_norm.weight"), GgmlType::F32, vec![n_embd]),
            (b("attn_norm.bias"), GgmlType::F32, vec![n_embd]),
            (b("attn_qkv.weight"), GgmlType::F32, vec![n_embd, 3 * n_embd]),
            (b("attn_qkv.bias"), GgmlType::F32, vec![3 * n_embd]),
            (b("attn_output.weight"), GgmlType::F16, vec![n_embd, n_embd]),
            (b("attn_output.bias"), GgmlType::F32, vec![n_embd]),
            (b("ffn_norm.weight"), GgmlType::F32, vec![n_embd]),
            (b("ffn_norm.bias"), GgmlType::F32, vec![n_embd]),
            (b("ffn_up.weight"), GgmlType::BF16, vec![n_embd, n_ff]),
            (b("ffn_up.bias"), GgmlType::F32, vec![n_ff]),
            (b("ffn_down.weight"), GgmlType::F32, vec![n_ff, n_embd]),
            (b("ffn_down.bias"), GgmlType::F32, vec![n_embd]),
        ]);
    }
    tensors.extend([
        ("output_norm.weight".into(), GgmlType::F32, vec![n_embd]),
        ("output_norm.bias".into(), GgmlType::F32, vec![n_embd]),
        ("output.weight".into(), GgmlType::F32, vec![n_embd, n_vocab]),
    ]);
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, (_, ty, ne))| {
            let n: u64 = ne.iter().product();
            quantize_to_vec(*ty, &weights(i as u64, n as usize, 0.5)).unwrap()
        })
        .collect();
    for (name, ty, ne) in &tensors {
        w.add_tensor(name, *ty, ne).unwrap();
    }
    w.write_file(path, |i, _, out| {
        out.write_all(&data[i])
            .map_err(|e| jq::gguf::GgufError::Plan(e.to_string()))
    })
    .unwrap();
}
