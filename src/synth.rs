//! Synthetic GGUF models for tests and benchmarks: deterministic weights, real layouts that
//! llama.cpp's loader accepts. Nothing here is a trained model.

use crate::gguf::{GgufError, GgufWriter, MetaValue, Result, ValueType};
use crate::quant::{quantize_to_vec, GgmlType};
use std::path::Path;

/// Deterministic pseudo-random weights in `[-scale, scale)` (a fixed LCG, the same everywhere).
pub fn weights(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// Dimensions of a GPT-2 shaped model.
#[derive(Debug, Clone, Copy)]
pub struct Gpt2Dims {
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    pub n_ctx: u64,
    pub n_layer: u64,
    pub n_head: u32,
}

impl Gpt2Dims {
    /// The tiny test model: `ffn_down` has 80 columns, not a multiple of 32, to exercise the
    /// F16 fallback of the quantizer.
    pub const TINY: Gpt2Dims = Gpt2Dims {
        n_embd: 64,
        n_ff: 80,
        n_vocab: 100,
        n_ctx: 32,
        n_layer: 2,
        n_head: 4,
    };
}

/// Writes a GPT-2 shaped GGUF. With `mixed_sources`, `attn_output` is stored F16 and `ffn_up`
/// BF16 (every source codec); otherwise every tensor is F32.
pub fn write_gpt2(path: &Path, d: Gpt2Dims, mixed_sources: bool) -> Result<()> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "gpt2")?;
    w.add("general.name", "synthetic gpt2")?;
    w.add("gpt2.context_length", d.n_ctx as u32)?;
    w.add("gpt2.embedding_length", d.n_embd as u32)?;
    w.add("gpt2.feed_forward_length", d.n_ff as u32)?;
    w.add("gpt2.block_count", d.n_layer as u32)?;
    w.add("gpt2.attention.head_count", d.n_head)?;
    w.add("gpt2.attention.layer_norm_epsilon", 1e-5f32)?;
    w.add("general.file_type", 0u32)?;
    w.add("tokenizer.ggml.model", "gpt2")?;
    let tokens: Vec<String> = (0..d.n_vocab).map(|i| format!("t{i}")).collect();
    w.add("tokenizer.ggml.tokens", MetaValue::strings(&tokens))?;
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::array(ValueType::I32, (0..d.n_vocab).map(|_| 1i32)),
    )?;
    w.add("tokenizer.ggml.merges", MetaValue::strings(["t 1", "t 2"]))?;

    let (e, f) = (d.n_embd, d.n_ff);
    let (f16, bf16) = if mixed_sources {
        (GgmlType::F16, GgmlType::BF16)
    } else {
        (GgmlType::F32, GgmlType::F32)
    };
    let mut tensors: Vec<(String, GgmlType, Vec<u64>)> = vec![
        (
            "token_embd.weight".into(),
            GgmlType::F32,
            vec![e, d.n_vocab],
        ),
        (
            "position_embd.weight".into(),
            GgmlType::F32,
            vec![e, d.n_ctx],
        ),
    ];
    for l in 0..d.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.extend([
            (b("attn_norm.weight"), GgmlType::F32, vec![e]),
            (b("attn_norm.bias"), GgmlType::F32, vec![e]),
            (b("attn_qkv.weight"), GgmlType::F32, vec![e, 3 * e]),
            (b("attn_qkv.bias"), GgmlType::F32, vec![3 * e]),
            (b("attn_output.weight"), f16, vec![e, e]),
            (b("attn_output.bias"), GgmlType::F32, vec![e]),
            (b("ffn_norm.weight"), GgmlType::F32, vec![e]),
            (b("ffn_norm.bias"), GgmlType::F32, vec![e]),
            (b("ffn_up.weight"), bf16, vec![e, f]),
            (b("ffn_up.bias"), GgmlType::F32, vec![f]),
            (b("ffn_down.weight"), GgmlType::F32, vec![f, e]),
            (b("ffn_down.bias"), GgmlType::F32, vec![e]),
        ]);
    }
    tensors.extend([
        ("output_norm.weight".into(), GgmlType::F32, vec![e]),
        ("output_norm.bias".into(), GgmlType::F32, vec![e]),
        ("output.weight".into(), GgmlType::F32, vec![e, d.n_vocab]),
    ]);
    for (name, ty, ne) in &tensors {
        w.add_tensor(name, *ty, ne)?;
    }
    // Tensors are generated one at a time while writing, so large models never sit in memory.
    w.write_file(path, |i, t, out| {
        let n: u64 = t.ne.iter().product();
        let bytes =
            quantize_to_vec(t.ty, &weights(i as u64, n as usize, 0.5)).map_err(|source| {
                GgufError::Codec {
                    name: t.name.clone(),
                    source,
                }
            })?;
        out.write_all(&bytes)
            .map_err(|e| GgufError::io("<output>", e))
    })
}
