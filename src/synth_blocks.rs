//! Large synthetic GGUFs written block by block: random Q4_0 blocks with sane f16 scales
//! instead of quantizing billions of random floats (a 27B-shaped file in about a minute, bounded
//! memory). Same names, shapes and metadata as [`crate::synth::write_gemma3`]; nothing here is
//! a trained model. For benchmarks; never committed.

use crate::gguf::{GgufError, GgufWriter, MetaValue, Result, ValueType};
use crate::quant::GgmlType;
use crate::synth::{gemma3_vocab, Gemma3Dims, GEMMA3_CHAT_TEMPLATE};
use half::f16;
use std::path::Path;

/// xorshift64*: fast, deterministic bytes.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fills `out` (a whole number of 18-byte Q4_0 blocks) with random nibbles and the scale `d`
/// (so weights span about +-8d).
fn q4_0_blocks(rng: &mut Bytes, d: f32, out: &mut [u8]) {
    let scale = f16::from_f32(d).to_le_bytes();
    for b in out.chunks_exact_mut(18) {
        b[..2].copy_from_slice(&scale);
        b[2..10].copy_from_slice(&rng.next().to_le_bytes());
        b[10..18].copy_from_slice(&rng.next().to_le_bytes());
    }
}

/// Writes a Gemma-3 shaped GGUF with every 2-D weight (the tied embedding included) as random
/// Q4_0 blocks; norms are F32 near 1. `dims.n_embd` and `dims.n_ff` must be multiples of 32.
pub fn write_gemma3_q4_0_random(path: &Path, d: Gemma3Dims, n_vocab: u64, seed: u64) -> Result<()> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "gemma3")?;
    w.add("general.name", "synthetic gemma3 (random q4_0 blocks)")?;
    w.add("general.file_type", 2u32)?;
    w.add("gemma3.context_length", d.n_ctx as u32)?;
    w.add("gemma3.embedding_length", d.n_embd as u32)?;
    w.add("gemma3.block_count", d.n_layer as u32)?;
    w.add("gemma3.feed_forward_length", d.n_ff as u32)?;
    w.add("gemma3.attention.head_count", d.n_head as u32)?;
    w.add("gemma3.attention.head_count_kv", d.n_head_kv as u32)?;
    w.add("gemma3.attention.layer_norm_rms_epsilon", 1e-6f32)?;
    w.add("gemma3.attention.key_length", d.head_dim as u32)?;
    w.add("gemma3.attention.value_length", d.head_dim as u32)?;
    w.add("gemma3.rope.freq_base", 1_000_000f32)?;
    w.add("gemma3.rope.freq_base_swa", 10_000f32)?;
    w.add("gemma3.rope.scaling.type", "linear")?;
    w.add("gemma3.rope.scaling.factor", 8.0f32)?;
    w.add("gemma3.attention.sliding_window", d.sliding_window)?;
    w.add("gemma3.attention.sliding_window_pattern", d.swa_pattern)?;
    if let Some(c) = d.final_logit_softcapping {
        w.add("gemma3.final_logit_softcapping", c)?;
    }
    let (tokens, scores, types) = gemma3_vocab(n_vocab as usize);
    w.add("tokenizer.ggml.model", "llama")?;
    w.add("tokenizer.ggml.tokens", MetaValue::strings(&tokens))?;
    w.add(
        "tokenizer.ggml.scores",
        MetaValue::array(ValueType::F32, scores.iter().copied()),
    )?;
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::array(ValueType::I32, types.iter().copied()),
    )?;
    w.add("tokenizer.ggml.bos_token_id", 2u32)?;
    w.add("tokenizer.ggml.eos_token_id", 1u32)?;
    w.add("tokenizer.ggml.unknown_token_id", 3u32)?;
    w.add("tokenizer.ggml.padding_token_id", 0u32)?;
    w.add("tokenizer.ggml.add_bos_token", true)?;
    w.add("tokenizer.ggml.add_space_prefix", false)?;
    w.add("tokenizer.chat_template", GEMMA3_CHAT_TEMPLATE)?;
    let (e, f, hd) = (d.n_embd, d.n_ff, d.head_dim);
    let (q, kv) = (d.n_head * hd, d.n_head_kv * hd);
    let q4 = GgmlType::Q4_0;
    let f32t = GgmlType::F32;
    let mut tensors: Vec<(String, GgmlType, Vec<u64>)> =
        vec![("token_embd.weight".into(), q4, vec![e, n_vocab])];
    for l in 0..d.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.extend([
            (b("attn_norm.weight"), f32t, vec![e]),
            (b("attn_q.weight"), q4, vec![e, q]),
            (b("attn_k.weight"), q4, vec![e, kv]),
            (b("attn_v.weight"), q4, vec![e, kv]),
            (b("attn_output.weight"), q4, vec![q, e]),
            (b("attn_q_norm.weight"), f32t, vec![hd]),
            (b("attn_k_norm.weight"), f32t, vec![hd]),
            (b("post_attention_norm.weight"), f32t, vec![e]),
            (b("ffn_norm.weight"), f32t, vec![e]),
            (b("ffn_gate.weight"), q4, vec![e, f]),
            (b("ffn_up.weight"), q4, vec![e, f]),
            (b("ffn_down.weight"), q4, vec![f, e]),
            (b("post_ffw_norm.weight"), f32t, vec![e]),
        ]);
    }
    tensors.push(("output_norm.weight".into(), f32t, vec![e]));
    for (name, ty, ne) in &tensors {
        w.add_tensor(name, *ty, ne)?;
    }
    let mut rng = Bytes(seed | 1);
    let mut buf = vec![0u8; 18 << 20];
    w.write_file(path, |_, t, out| {
        let n: u64 = t.ne.iter().product();
        let io = |e| GgufError::io("<output>", e);
        if t.ty == GgmlType::F32 {
            let v: Vec<u8> = (0..n)
                .flat_map(|_| {
                    let x = 1.0 + ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
                    x.to_le_bytes()
                })
                .collect();
            return out.write_all(&v).map_err(io);
        }
        let mut left = (n / 32) * 18;
        let d = 0.35 / (t.ne[0] as f32).sqrt();
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            q4_0_blocks(&mut rng, d, &mut buf[..k]);
            out.write_all(&buf[..k]).map_err(io)?;
            left -= k as u64;
        }
        Ok(())
    })
}
