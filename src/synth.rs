//! Synthetic GGUF models for tests and benchmarks: deterministic weights, real layouts that
//! llama.cpp's loader accepts. Nothing here is a trained model.

use crate::arch::{keys, Dim, Family, TensorSpec, OUTPUT, TOKEN_EMBD};
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

/// Dimensions of a Gemma-3 shaped model (`general.architecture = "gemma3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemma3Dims {
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    /// Trained context (`gemma3.context_length`).
    pub n_ctx: u64,
    pub sliding_window: u32,
    /// Every `swa_pattern`-th layer is global.
    pub swa_pattern: u32,
    pub final_logit_softcapping: Option<f32>,
}

impl Gemma3Dims {
    /// The tiny test model: 6 layers (5 sliding, 1 global), a sliding window of 8, GQA 4/2.
    pub const TINY: Gemma3Dims = Gemma3Dims {
        n_embd: 64,
        n_ff: 128,
        n_layer: 6,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
        n_ctx: 256,
        sliding_window: 8,
        swa_pattern: 6,
        final_logit_softcapping: Some(30.0),
    };

    /// Gemma 3 270M's shapes (18 layers, hidden 640, 4/1 heads of 256, FFN 2048; with a
    /// 262144-token vocabulary).
    pub const G270M: Gemma3Dims = Gemma3Dims {
        n_embd: 640,
        n_ff: 2048,
        n_layer: 18,
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        n_ctx: 32768,
        sliding_window: 512,
        swa_pattern: 6,
        final_logit_softcapping: None,
    };

    /// Gemma-3-27B's shapes (62 layers, hidden 5376, 32/16 heads of 128, FFN 21504).
    pub const G27B: Gemma3Dims = Gemma3Dims {
        n_embd: 5376,
        n_ff: 21504,
        n_layer: 62,
        n_head: 32,
        n_head_kv: 16,
        head_dim: 128,
        n_ctx: 131072,
        sliding_window: 1024,
        swa_pattern: 6,
        final_logit_softcapping: None,
    };
}

/// Gemma-3's chat template (the Jinja text of the published checkpoints, shortened; llama.cpp
/// recognises it by `<start_of_turn>` and applies its built-in Gemma format).
pub const GEMMA3_CHAT_TEMPLATE: &str = "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}";

/// A small SentencePiece-style vocabulary in Gemma's layout: `<pad>` 0, `<eos>` 1, `<bos>` 2,
/// `<unk>` 3, the two turn markers, the 256 byte tokens, then word pieces (scores favour
/// longer pieces). Returns (tokens, scores, token types).
pub fn gemma3_vocab(n_vocab: usize) -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut toks: Vec<(String, f32, i32)> = vec![
        ("<pad>".into(), 0.0, 3),
        ("<eos>".into(), 0.0, 3),
        ("<bos>".into(), 0.0, 3),
        ("<unk>".into(), 0.0, 2),
        ("<start_of_turn>".into(), 0.0, 3),
        ("<end_of_turn>".into(), 0.0, 3),
    ];
    toks.extend((0..=255u32).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    let words = [
        "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park", "hello", "world", "how",
        "are", "you", "i", "am", "fine", "thank", "what", "is", "your", "name", "my", "and", "it",
        "was", "in", "of", "model", "user", "good", "day", "night", "sun", "moon",
    ];
    let mut pieces: Vec<String> = vec!["▁".into()];
    pieces.extend(('a'..='z').map(|c| c.to_string()));
    pieces.extend(('a'..='z').map(|c| format!("▁{c}")));
    pieces.extend(words.iter().map(|w| format!("▁{w}")));
    pieces.extend([".", ",", "?", "!", "▁."].iter().map(|s| s.to_string()));
    for p in pieces {
        if !toks.iter().any(|t| t.0 == p) {
            let score = -(1000.0 / p.chars().count() as f32) - toks.len() as f32 * 1e-3;
            toks.push((p, score, 1));
        }
    }
    while toks.len() < n_vocab {
        let id = toks.len();
        toks.push((format!("[PAD{id}]"), -10000.0, 5));
    }
    toks.truncate(n_vocab);
    let mut t = Vec::new();
    let mut s = Vec::new();
    let mut ty = Vec::new();
    for (a, b, c) in toks {
        t.push(a);
        s.push(b);
        ty.push(c);
    }
    (t, s, ty)
}

/// The header of a Gemma-3 shaped GGUF: the metadata and tensor names llama.cpp's `gemma3`
/// loader expects, a [`gemma3_vocab`] of `n_vocab` entries, [`GEMMA3_CHAT_TEMPLATE`], 2-D
/// weights (the tied token embedding included) of type `ty`, norms F32. `rope_scaling`: the
/// linear RoPE factor of the global layers (8 for 4B/12B/27B), if any.
pub fn gemma3_header(
    name: &str,
    d: Gemma3Dims,
    n_vocab: u64,
    ty: GgmlType,
    rope_scaling: Option<f32>,
) -> Result<GgufWriter> {
    let file_type: u32 = match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        _ => 0,
    };
    gemma3_header_with(name, d, n_vocab, file_type, rope_scaling, |_| ty)
}

/// A 2-D weight of a Gemma-3 shaped model, for choosing its type.
#[derive(Debug, Clone, Copy)]
pub struct WeightSlot<'a> {
    /// `token_embd`, or a layer tensor's short name (`attn_v`, `ffn_down`, ...).
    pub kind: &'a str,
    /// The layer, for layer tensors.
    pub layer: Option<u64>,
    pub n_layer: u64,
    /// Row length (`ne[0]`).
    pub ne0: u64,
}

/// [`gemma3_header`] with each 2-D weight's type chosen by `ty_of` and `general.file_type` as
/// given (`LLAMA_FTYPE_*`).
pub fn gemma3_header_with(
    name: &str,
    d: Gemma3Dims,
    n_vocab: u64,
    file_type: u32,
    rope_scaling: Option<f32>,
    ty_of: impl Fn(WeightSlot<'_>) -> GgmlType,
) -> Result<GgufWriter> {
    let a = Family::Gemma3.arch();
    let mut w = GgufWriter::new();
    add_hparams(
        &mut w,
        a,
        name,
        file_type,
        [d.n_ctx, d.n_embd, d.n_layer, d.n_ff, d.n_head, d.n_head_kv],
    )?;
    w.add(keys::of(a, keys::RMS_EPS), 1e-6f32)?;
    w.add(keys::of(a, keys::KEY_LENGTH), d.head_dim as u32)?;
    w.add(keys::of(a, keys::VALUE_LENGTH), d.head_dim as u32)?;
    w.add(keys::of(a, keys::ROPE_FREQ_BASE), 1_000_000f32)?;
    w.add(keys::of(a, keys::ROPE_FREQ_BASE_SWA), 10_000f32)?;
    if let Some(f) = rope_scaling {
        w.add(keys::of(a, keys::ROPE_SCALING_TYPE), "linear")?;
        w.add(keys::of(a, keys::ROPE_SCALING_FACTOR), f)?;
    }
    w.add(keys::of(a, keys::SLIDING_WINDOW), d.sliding_window)?;
    w.add(keys::of(a, keys::SLIDING_WINDOW_PATTERN), d.swa_pattern)?;
    if let Some(c) = d.final_logit_softcapping {
        w.add(keys::of(a, keys::FINAL_LOGIT_SOFTCAPPING), c)?;
    }
    add_spm_vocab(&mut w, n_vocab)?;
    w.add("tokenizer.ggml.padding_token_id", 0u32)?;
    w.add("tokenizer.ggml.add_bos_token", true)?;
    w.add("tokenizer.ggml.add_eos_token", false)?;
    w.add("tokenizer.ggml.add_space_prefix", false)?;
    w.add("tokenizer.chat_template", GEMMA3_CHAT_TEMPLATE)?;

    let sizes = [d.n_embd, d.n_head, d.n_head_kv, d.head_dim, d.n_ff, n_vocab];
    // Tied: no `output.weight` (the head is the embedding).
    add_family_tensors(&mut w, Family::Gemma3, d.n_layer, false, sizes, ty_of)?;
    Ok(w)
}

/// The header keys both synthetic families write first: architecture, name, file type and
/// `[context, embedding, blocks, FFN, heads, KV heads]`.
fn add_hparams(
    w: &mut GgufWriter,
    a: &str,
    name: &str,
    file_type: u32,
    [ctx, embd, blocks, ff, heads, heads_kv]: [u64; 6],
) -> Result<()> {
    w.add("general.architecture", a)?;
    w.add("general.name", name)?;
    w.add("general.file_type", file_type)?;
    for (key, v) in [
        (keys::CONTEXT_LENGTH, ctx),
        (keys::EMBEDDING_LENGTH, embd),
        (keys::BLOCK_COUNT, blocks),
        (keys::FEED_FORWARD_LENGTH, ff),
        (keys::HEAD_COUNT, heads),
        (keys::HEAD_COUNT_KV, heads_kv),
    ] {
        w.add(keys::of(a, key), v as u32)?;
    }
    Ok(())
}

/// A table dimension's size from `[n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab]`.
fn dim_size(x: Dim, [embd, head, head_kv, head_dim, ff, vocab]: [u64; 6]) -> u64 {
    match x {
        Dim::Embd => embd,
        Dim::Q => head * head_dim,
        Dim::Kv => head_kv * head_dim,
        Dim::HeadDim => head_dim,
        Dim::Ff => ff,
        Dim::Vocab => vocab,
        Dim::HalfRot => head_dim / 2,
    }
}

/// Adds the tensors of a `family` file from `jq::arch`'s tables to `w`, in their order: the
/// embedding, every required layer tensor, the required globals and, when `untied`,
/// `output.weight`; shapes from `sizes` (as [`dim_size`] reads them), 2-D weights typed by
/// `ty_of`, 1-D ones F32.
fn add_family_tensors(
    w: &mut GgufWriter,
    family: Family,
    n_layer: u64,
    untied: bool,
    sizes: [u64; 6],
    ty_of: impl Fn(WeightSlot<'_>) -> GgmlType,
) -> Result<()> {
    let typed = |s: &TensorSpec, layer: Option<u64>| {
        let ne: Vec<u64> = s.dims.iter().map(|&x| dim_size(x, sizes)).collect();
        let ty = if ne.len() == 1 {
            GgmlType::F32
        } else {
            ty_of(WeightSlot {
                kind: s.name.trim_end_matches(".weight"),
                layer,
                n_layer,
                ne0: ne[0],
            })
        };
        (s.name_in(layer.map(|l| l as usize)), ty, ne)
    };
    let mut tensors = vec![typed(&TOKEN_EMBD, None)];
    for l in 0..n_layer {
        for s in family.layer_tensors().iter().filter(|s| s.required) {
            tensors.push(typed(s, Some(l)));
        }
    }
    for s in family.global_tensors() {
        if s.required || (untied && s.name == OUTPUT.name) {
            tensors.push(typed(s, None));
        }
    }
    for (name, ty, ne) in &tensors {
        w.add_tensor(name, *ty, ne)?;
    }
    Ok(())
}

/// Writes a Gemma-3 shaped GGUF ([`gemma3_header`]) with deterministic random weights: norm
/// weights near 1 (llama.cpp multiplies by them; Gemma's `1 + w` is folded in, as the
/// converter does), 2-D weights scaled by 1/sqrt(fan-in) and encoded as `ty`.
pub fn write_gemma3(path: &Path, d: Gemma3Dims, n_vocab: u64, ty: GgmlType) -> Result<()> {
    let w = gemma3_header("synthetic gemma3", d, n_vocab, ty, None)?;
    w.write_file(path, |i, t, out| {
        let n: u64 = t.ne.iter().product();
        let vals: Vec<f32> = if t.ne.len() == 1 {
            weights(i as u64, n as usize, 0.2)
                .into_iter()
                .map(|x| 1.0 + x)
                .collect()
        } else {
            weights(i as u64, n as usize, 1.0 / (t.ne[0] as f32).sqrt())
        };
        let bytes = quantize_to_vec(t.ty, &vals).map_err(|source| GgufError::Codec {
            name: t.name.clone(),
            source,
        })?;
        out.write_all(&bytes)
            .map_err(|e| GgufError::io("<output>", e))
    })
}

/// A SentencePiece (`llama` tokenizer model) vocabulary of `n_vocab` entries in the
/// [`gemma3_vocab`] layout, with its BOS/EOS/UNK ids.
fn add_spm_vocab(w: &mut GgufWriter, n_vocab: u64) -> Result<()> {
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
    Ok(())
}

/// Dimensions of a Llama-shaped model (`general.architecture = "llama"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaDims {
    pub n_embd: u64,
    pub n_ff: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_ctx: u64,
    pub rope_base: f32,
}

impl LlamaDims {
    /// Llama-3-8B's shapes (32 layers, hidden 4096, 32/8 heads of 128, FFN 14336; with its
    /// 128256-token vocabulary and untied head, ~4.7 GB in Q4_0).
    pub const L8B: LlamaDims = LlamaDims {
        n_embd: 4096,
        n_ff: 14336,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        n_ctx: 8192,
        rope_base: 500_000.0,
    };
}

/// The header of a Llama-shaped GGUF built from `jq::arch`'s `llama` table: every required
/// layer tensor and global (the untied `output.weight` included; no biases, no RoPE factors),
/// shapes from the dimensions, 2-D weights typed by `ty_of`, 1-D ones F32; a SentencePiece
/// vocabulary of `n_vocab` entries in the [`gemma3_vocab`] layout.
pub fn llama_header_with(
    name: &str,
    d: LlamaDims,
    n_vocab: u64,
    file_type: u32,
    ty_of: impl Fn(WeightSlot<'_>) -> GgmlType,
) -> Result<GgufWriter> {
    let a = Family::Llama.arch();
    let mut w = GgufWriter::new();
    add_hparams(
        &mut w,
        a,
        name,
        file_type,
        [d.n_ctx, d.n_embd, d.n_layer, d.n_ff, d.n_head, d.n_head_kv],
    )?;
    w.add(keys::of(a, keys::RMS_EPS), 1e-5f32)?;
    w.add(keys::of(a, keys::ROPE_DIMENSION_COUNT), d.head_dim as u32)?;
    w.add(keys::of(a, keys::ROPE_FREQ_BASE), d.rope_base)?;
    w.add(keys::of(a, keys::VOCAB_SIZE), n_vocab as u32)?;
    add_spm_vocab(&mut w, n_vocab)?;
    let sizes = [d.n_embd, d.n_head, d.n_head_kv, d.head_dim, d.n_ff, n_vocab];
    add_family_tensors(&mut w, Family::Llama, d.n_layer, true, sizes, ty_of)?;
    Ok(w)
}
