//! `jq-convert quantize`: re-encode a GGUF's weights the way `llama_model_quantize` does, for
//! every llama-quantize file type this crate can encode, any architecture.
//!
//! Which tensors are re-encoded follows llama.cpp's `tensor_allows_quantization`: tensors with
//! at least two non-trivial dimensions whose name ends in `weight`, except norms, position and
//! token-type embeddings and the architecture-specific exceptions listed in `KEEP_SUBSTRINGS`.
//! Everything else is copied byte for byte. The type of each re-encoded tensor follows
//! `llama_tensor_get_type` in the pinned `src/llama-quant.cpp` (`mixture_type` below, branch for
//! branch: output/token-embedding rules, the attn_v/ffn_down "more bits" layers counted in
//! llama.cpp's loader order (layer number, then name), the fallback when a row is not a whole number of blocks);
//! `--pure` skips the mixture like llama-quantize's. Metadata is copied in order; split keys are
//! dropped and `general.quantization_version` and `general.file_type` are (re)written last,
//! which is exactly what llama.cpp does. One intended difference: tensors keep the input's
//! order (llama.cpp sorts them by name).

use anyhow::{bail, Context, Result};
use jq::gguf::{GgufModel, GgufWriter, TensorInfo, TensorView, Value};
use jq::quant::{self, GgmlType};
use std::io::Write;
use std::path::Path;

/// `GGML_QNT_VERSION`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// Substrings that keep a `*weight` tensor in its original type (llama.cpp's list).
const KEEP_SUBSTRINGS: &[&str] = &[
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
];

/// Exact names that are never quantized.
const KEEP_NAMES: &[&str] = &["position_embd.weight", "token_types.weight"];

/// Keys llama.cpp removes from a quantized output.
const DROP_KEYS: &[&str] = &[
    "split.no",
    "split.count",
    "split.tensors.count",
    "general.quantization_version",
    "general.file_type",
];

/// `ggml_n_dims`: dimensions up to the last one larger than 1.
fn effective_dims(t: &TensorInfo) -> usize {
    t.ne.iter().rposition(|&n| n > 1).map_or(1, |i| i + 1)
}

/// Whether llama.cpp's pure mode would re-encode this tensor.
pub fn allows_quantization(t: &TensorInfo) -> bool {
    effective_dims(t) >= 2
        && t.name.ends_with("weight")
        && !KEEP_NAMES.contains(&t.name.as_str())
        && !KEEP_SUBSTRINGS.iter().any(|s| t.name.contains(s))
}

/// A llama-quantize file type (`enum llama_ftype`) and the tensor type it defaults to
/// (`llama_ftype_get_default_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType {
    pub name: &'static str,
    pub ftype: u32,
    pub default: GgmlType,
}

/// Every file type this tool writes, with llama-quantize's names.
pub const FILE_TYPES: &[FileType] = &[
    FileType {
        name: "f32",
        ftype: 0,
        default: GgmlType::F32,
    },
    FileType {
        name: "f16",
        ftype: 1,
        default: GgmlType::F16,
    },
    FileType {
        name: "q4_0",
        ftype: 2,
        default: GgmlType::Q4_0,
    },
    FileType {
        name: "q4_1",
        ftype: 3,
        default: GgmlType::Q4_1,
    },
    FileType {
        name: "q8_0",
        ftype: 7,
        default: GgmlType::Q8_0,
    },
    FileType {
        name: "q5_0",
        ftype: 8,
        default: GgmlType::Q5_0,
    },
    FileType {
        name: "q5_1",
        ftype: 9,
        default: GgmlType::Q5_1,
    },
    FileType {
        name: "q2_k",
        ftype: 10,
        default: GgmlType::Q2_K,
    },
    FileType {
        name: "q3_k_s",
        ftype: 11,
        default: GgmlType::Q3_K,
    },
    FileType {
        name: "q3_k_m",
        ftype: 12,
        default: GgmlType::Q3_K,
    },
    FileType {
        name: "q3_k_l",
        ftype: 13,
        default: GgmlType::Q3_K,
    },
    FileType {
        name: "q4_k_s",
        ftype: 14,
        default: GgmlType::Q4_K,
    },
    FileType {
        name: "q4_k_m",
        ftype: 15,
        default: GgmlType::Q4_K,
    },
    FileType {
        name: "q5_k_s",
        ftype: 16,
        default: GgmlType::Q5_K,
    },
    FileType {
        name: "q5_k_m",
        ftype: 17,
        default: GgmlType::Q5_K,
    },
    FileType {
        name: "q6_k",
        ftype: 18,
        default: GgmlType::Q6_K,
    },
    FileType {
        name: "q2_k_s",
        ftype: 21,
        default: GgmlType::Q2_K,
    },
    FileType {
        name: "iq4_nl",
        ftype: 25,
        default: GgmlType::IQ4_NL,
    },
    FileType {
        name: "iq4_xs",
        ftype: 30,
        default: GgmlType::IQ4_XS,
    },
    FileType {
        name: "bf16",
        ftype: 32,
        default: GgmlType::BF16,
    },
    FileType {
        name: "tq1_0",
        ftype: 36,
        default: GgmlType::TQ1_0,
    },
    FileType {
        name: "tq2_0",
        ftype: 37,
        default: GgmlType::TQ2_0,
    },
    FileType {
        name: "mxfp4_moe",
        ftype: 38,
        default: GgmlType::MXFP4,
    },
    FileType {
        name: "q1_0",
        ftype: 40,
        default: GgmlType::Q1_0,
    },
    FileType {
        name: "q2_0",
        ftype: 41,
        default: GgmlType::Q2_0,
    },
];

/// llama-quantize's aliases.
const ALIASES: &[(&str, &str)] = &[("q3_k", "q3_k_m"), ("q4_k", "q4_k_m"), ("q5_k", "q5_k_m")];

/// Parses a file type name in any case (`q4_k_m`, `Q4_K_M`, `q4_k`).
pub fn parse_file_type(s: &str) -> Result<FileType, String> {
    let lower = s.to_ascii_lowercase();
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == lower)
        .map_or(lower.as_str(), |(_, t)| t);
    if name == "nvfp4" {
        return Err("nvfp4: the pinned llama.cpp has no default tensor type for this file type (llama_model_quantize rejects it), so there is no mixture to follow; use a per-tensor type instead".into());
    }
    FILE_TYPES
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            let names: Vec<_> = FILE_TYPES.iter().map(|f| f.name).collect();
            format!(
                "unknown type '{s}' (one of: {}; aliases q3_k, q4_k, q5_k)",
                names.join(", ")
            )
        })
}

/// Parses a tensor type for `--output-tensor-type` / `--token-embedding-type`.
pub fn parse_tensor_type(s: &str) -> Result<GgmlType, String> {
    let t = GgmlType::from_name(s).ok_or_else(|| format!("unknown tensor type '{s}'"))?;
    if !t.can_encode() {
        return Err(format!("tensor type {t} cannot be encoded here"));
    }
    Ok(t)
}

#[derive(Debug, Clone)]
pub struct Options {
    pub file_type: FileType,
    pub allow_requantize: bool,
    pub pure: bool,
    pub output_tensor_type: Option<GgmlType>,
    pub token_embedding_type: Option<GgmlType>,
    /// `--tensor-type PATTERN=TYPE`, in order; the first regex that matches a name wins.
    pub tensor_types: Vec<(regex::Regex, GgmlType)>,
    /// `--imatrix FILE`: the weights and the path as given (recorded in the metadata).
    pub imatrix: Option<(crate::imatrix::Imatrix, String)>,
    pub progress: bool,
}

/// Keys llama-quantize records when it was given an importance matrix.
const IMATRIX_FILE: &str = "quantize.imatrix.file";
const IMATRIX_DATASET: &str = "quantize.imatrix.dataset";
const IMATRIX_N_ENTRIES: &str = "quantize.imatrix.entries_count";
const IMATRIX_N_CHUNKS: &str = "quantize.imatrix.chunks_count";

/// The metadata llama-quantize adds for `--imatrix` (as its `--override-kv` entries: strings
/// cut to 127 bytes, counts as u32).
fn imatrix_keys(
    m: &crate::imatrix::Imatrix,
    file: &str,
) -> Vec<(&'static str, jq::gguf::MetaValue)> {
    use jq::gguf::MetaValue;
    let cut = |s: &str| {
        let b = s.as_bytes();
        MetaValue::String(b[..b.len().min(127)].to_vec())
    };
    let mut v = vec![(IMATRIX_FILE, cut(file))];
    if let Some(d) = m.datasets.first() {
        v.push((IMATRIX_DATASET, cut(d)));
    }
    v.push((IMATRIX_N_ENTRIES, MetaValue::U32(m.weights.len() as u32)));
    if m.chunk_count > 0 {
        v.push((IMATRIX_N_CHUNKS, MetaValue::U32(m.chunk_count as u32)));
    }
    v
}

/// What happened to each tensor.
#[derive(Debug, Default)]
pub struct Summary {
    pub converted: usize,
    pub copied: usize,
    pub fallbacks: Vec<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `tensor_category` of llama-quant.cpp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    use Category::*;
    if name == "output.weight" {
        return Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return TokenEmbd;
    }
    for (pat, c) in [
        ("attn_qkv.weight", AttnQkv),
        ("attn_kv_b.weight", AttnKvB),
        ("attn_v.weight", AttnV),
        ("attn_k.weight", AttnK),
        ("attn_q.weight", AttnQ),
        ("attn_output.weight", AttnOutput),
        ("ffn_up", FfnUp),
        ("ffn_gate", FfnGate),
        ("ffn_down", FfnDown),
    ] {
        if name.contains(pat) {
            return c;
        }
    }
    Other
}

fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// `ggml_is_quantized`.
pub fn is_quantized(t: GgmlType) -> bool {
    t.block_size() > 1
}

/// The hyper-parameters `llama_tensor_get_type` reads, as llama.cpp's loader reads them.
#[derive(Debug, Default, Clone)]
pub struct Hparams {
    pub arch: String,
    pub n_layer: i32,
    /// head_count / head_count_kv of the first layer.
    pub n_gqa: u32,
    pub n_expert: u32,
    /// llama.cpp's loader gives the model `LLM_TYPE_70B` (the only model type
    /// `llama_tensor_get_type` looks at): see [`is_type_70b`].
    pub type_70b: bool,
}

/// Whether llama.cpp's `load_arch_hparams` of the pinned version types this model
/// `LLM_TYPE_70B`: llama with 80 layers and grouped-query attention (80 layers with as many
/// KV heads as heads is the 65B) unless it has 8 experts (then 8x7B / 8x22B by layer count),
/// qwen2, deci and olmo with 80 layers, jais2 with 68 (src/models/<arch>.cpp).
fn is_type_70b(arch: &str, n_layer: i32, n_head: u32, n_head_kv: u32, n_expert: u32) -> bool {
    match arch {
        "llama" => n_expert != 8 && n_layer == 80 && n_head != n_head_kv,
        "qwen2" | "deci" | "olmo" => n_layer == 80,
        "jais2" => n_layer == 68,
        _ => false,
    }
}

fn meta_u32(file: &GgufModel, key: &str) -> Option<u32> {
    match file.get(key)? {
        // Per-layer arrays: llama.cpp's n_head(0) / n_head_kv(0) read the first layer.
        Value::Array(a) => a.get(0).and_then(|v| v.as_u64()).map(|v| v as u32),
        v => v.as_u64().map(|v| v as u32),
    }
}

fn hparams(file: &GgufModel) -> Result<Hparams> {
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str().map(str::to_owned))
        .context("general.architecture is missing")?;
    let n_layer = meta_u32(file, &format!("{arch}.block_count"))
        .with_context(|| format!("{arch}.block_count is missing"))? as i32;
    let n_head = meta_u32(file, &format!("{arch}.attention.head_count")).unwrap_or(0);
    let n_head_kv = meta_u32(file, &format!("{arch}.attention.head_count_kv")).unwrap_or(n_head);
    let n_gqa = n_head.checked_div(n_head_kv).unwrap_or(0);
    let n_expert = meta_u32(file, &format!("{arch}.expert_count")).unwrap_or(0);
    let type_70b = is_type_70b(&arch, n_layer, n_head, n_head_kv, n_expert);
    Ok(Hparams {
        arch,
        n_layer,
        n_gqa,
        n_expert,
        type_70b,
    })
}

/// `quantize_state_impl`: the counters `llama_tensor_get_type_impl` advances.
#[derive(Debug, Default)]
struct State {
    n_attention_wv: i32,
    i_attention_wv: i32,
    i_ffn_down: i32,
    i_ffn_gate: i32,
    i_ffn_up: i32,
    has_tied_embeddings: bool,
}

fn use_more_bits(i_layer: i32, n_layers: i32) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// `layer_info`: the counter, or with experts the layer parsed from the name.
fn layer_info(hp: &Hparams, counter: i32, name: &str) -> Result<(i32, i32)> {
    if hp.n_expert.max(1) > 1 {
        let il = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<i32>().ok())
            .with_context(|| format!("failed to determine the layer of tensor '{name}'"))?;
        if il < 0 || il >= hp.n_layer {
            bail!(
                "bad layer {il} for tensor '{name}' (block_count {})",
                hp.n_layer
            );
        }
        return Ok((il, hp.n_layer));
    }
    Ok((counter, hp.n_layer))
}

/// `llama_tensor_get_type_impl` for the file types this tool writes (the IQ1/IQ2/IQ3 file
/// types' branches are left out: those file types are refused before this runs).
fn mixture_type(
    qs: &mut State,
    hp: &Hparams,
    opts: &Options,
    mut new_type: GgmlType,
    t: &TensorInfo,
    cat: Category,
) -> Result<GgmlType> {
    use GgmlType as G;
    let ft = opts.file_type.name;
    let has_imatrix = opts.imatrix.is_some();
    let falcon = hp.arch == "falcon";
    let name = t.name.as_str();
    let ne0 = t.ne.first().copied().unwrap_or(1);
    if cat == Category::Output || (qs.has_tied_embeddings && cat == Category::TokenEmbd) {
        if let Some(o) = opts.output_tensor_type {
            new_type = o;
        } else if ft == "mxfp4_moe" || falcon || !ne0.is_multiple_of(new_type.block_size()) {
            new_type = G::Q8_0;
        } else if new_type != G::Q8_0 {
            new_type = G::Q6_K;
        }
    } else if ft == "mxfp4_moe" {
        // MoE tensors (3-D) -> MXFP4, the rest Q8_0; on bailingmoe3 only the expert FFNs.
        let experts = t.ne.get(2).copied().unwrap_or(1) > 1;
        let bailing_expert = matches!(cat, Category::FfnUp | Category::FfnGate | Category::FfnDown);
        new_type = if experts && (hp.arch != "bailingmoe3" || bailing_expert) {
            G::MXFP4
        } else {
            G::Q8_0
        };
    } else if cat == Category::TokenEmbd {
        if let Some(e) = opts.token_embedding_type {
            new_type = e;
        } else if matches!(ft, "tq1_0" | "tq2_0" | "q2_0") {
            new_type = G::Q4_K;
        }
    } else if is_attn_v(cat) {
        match ft {
            "q2_k" => new_type = if hp.n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
            "q2_k_s" if hp.n_gqa >= 4 => new_type = G::Q4_K,
            "q3_k_m" => {
                new_type = if qs.i_attention_wv < 2 {
                    G::Q5_K
                } else {
                    G::Q4_K
                }
            }
            "q3_k_l" => new_type = G::Q5_K,
            "iq4_nl" | "iq4_xs" if hp.n_gqa >= 4 => new_type = G::Q5_K,
            "q4_k_m" | "q5_k_m" if use_more_bits(qs.i_attention_wv, qs.n_attention_wv) => {
                new_type = G::Q6_K
            }
            "q4_k_s" if qs.i_attention_wv < 4 => new_type = G::Q5_K,
            _ => {}
        }
        // The 70B's eight heads share one attn_v, which is therefore small: more bits.
        if hp.type_70b && matches!(new_type, G::Q3_K | G::Q4_K) {
            new_type = G::Q5_K;
        }
        if hp.n_expert == 8 {
            new_type = G::Q8_0;
        }
        qs.i_attention_wv += 1;
    } else if cat == Category::AttnK {
        if hp.n_expert == 8 {
            new_type = G::Q8_0;
        }
    } else if cat == Category::AttnQ {
        // Only the IQ3 file types change attn_q.
    } else if cat == Category::FfnDown {
        let (i_layer, n_layer) = layer_info(hp, qs.i_ffn_down, name)?;
        match ft {
            "q2_k" => new_type = G::Q3_K,
            "q2_k_s" if i_layer < n_layer / 8 => new_type = G::Q4_K,
            "q3_k_m" => {
                new_type = if i_layer < n_layer / 16 {
                    G::Q5_K
                } else if !falcon || use_more_bits(i_layer, n_layer) {
                    G::Q4_K
                } else {
                    G::Q3_K
                }
            }
            "q3_k_l" => new_type = if falcon { G::Q4_K } else { G::Q5_K },
            "q4_k_m" => {
                if falcon {
                    new_type = if i_layer < n_layer / 16 {
                        G::Q6_K
                    } else if use_more_bits(i_layer, n_layer) {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    };
                } else if use_more_bits(i_layer, n_layer) {
                    new_type = G::Q6_K;
                }
            }
            "iq4_nl" | "iq4_xs" if i_layer < n_layer / 8 && !has_imatrix => new_type = G::Q5_K,
            "q5_k_m" if use_more_bits(i_layer, n_layer) => new_type = G::Q6_K,
            "q4_k_s" if !falcon && i_layer < n_layer / 8 => new_type = G::Q5_K,
            // Only with an imatrix (so that a run without one stays as it always was).
            "q4_0" if has_imatrix && i_layer < n_layer / 8 => new_type = G::Q4_1,
            "q5_0" if has_imatrix && i_layer < n_layer / 8 => new_type = G::Q5_1,
            _ => {}
        }
        qs.i_ffn_down += 1;
    } else if cat == Category::AttnOutput {
        if !falcon {
            if hp.n_expert == 8 {
                if matches!(
                    ft,
                    "q2_k" | "q3_k_s" | "q3_k_m" | "iq4_nl" | "q4_k_s" | "q4_k_m" | "iq4_xs"
                ) {
                    new_type = G::Q5_K;
                }
            } else {
                match ft {
                    "q2_k" => new_type = G::Q3_K,
                    "q3_k_m" => new_type = G::Q4_K,
                    "q3_k_l" => new_type = G::Q5_K,
                    _ => {}
                }
            }
        } else if ft == "q3_k_l" {
            new_type = G::Q4_K;
        }
    } else if cat == Category::AttnQkv {
        // Unreachable: attn_qkv is an attn_v-like category, handled above (as in llama.cpp,
        // whose ATTENTION_QKV branch is shadowed the same way).
    } else if cat == Category::FfnGate {
        layer_info(hp, qs.i_ffn_gate, name)?;
        qs.i_ffn_gate += 1;
    } else if cat == Category::FfnUp {
        layer_info(hp, qs.i_ffn_up, name)?;
        qs.i_ffn_up += 1;
    }
    Ok(new_type)
}

/// `tensor_type_fallback`: a row that is not a whole number of blocks gets a smaller block.
fn fallback(t: &TensorInfo, target: GgmlType, fallbacks: &mut Vec<String>) -> Result<GgmlType> {
    use GgmlType as G;
    let ncols = t.ne.first().copied().unwrap_or(1);
    if ncols.is_multiple_of(target.block_size()) {
        return Ok(target);
    }
    let mut ty = match target {
        G::IQ1_S
        | G::IQ1_M
        | G::IQ2_XXS
        | G::IQ2_XS
        | G::IQ2_S
        | G::IQ3_XXS
        | G::IQ3_S
        | G::IQ4_XS => G::IQ4_NL,
        G::Q2_0 | G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        other if other.block_size() <= 32 => other,
        other => bail!(
            "no tensor type fallback is defined for type {other} (tensor '{}')",
            t.name
        ),
    };
    if !ncols.is_multiple_of(ty.block_size()) {
        ty = G::F16;
    }
    fallbacks.push(format!(
        "{}: {} columns is not a multiple of {} ({}); stored as {}",
        t.name,
        ncols,
        target.block_size(),
        target,
        ty
    ));
    Ok(ty)
}

/// `llama_tensor_get_type`.
fn tensor_type(
    qs: &mut State,
    hp: &Hparams,
    opts: &Options,
    t: &TensorInfo,
    fallbacks: &mut Vec<String>,
) -> Result<GgmlType> {
    if !allows_quantization(t) {
        return Ok(t.ty);
    }
    let cat = category(&t.name);
    if let (Some(e), Category::TokenEmbd) = (opts.token_embedding_type, cat) {
        let named = t.name == "per_layer_token_embd.weight"
            && opts.tensor_types.iter().any(|(re, _)| re.is_match(&t.name));
        if !named {
            return Ok(e);
        }
    }
    if let (Some(o), Category::Output) = (opts.output_tensor_type, cat) {
        return Ok(o);
    }
    let mut new_type = opts.file_type.default;
    if is_quantized(new_type) {
        let manual = opts
            .tensor_types
            .iter()
            .find(|(re, _)| re.is_match(&t.name));
        if let Some((_, ty)) = manual {
            new_type = *ty;
        } else if !opts.pure {
            new_type = mixture_type(qs, hp, opts, new_type, t, cat)?;
        }
        new_type = fallback(t, new_type, fallbacks)?;
    }
    Ok(new_type)
}

/// Refuses a conversion this tool cannot do or that needs `--allow-requantize`.
fn check_conversion(t: &TensorInfo, ty: GgmlType, opts: &Options) -> Result<()> {
    if ty == t.ty {
        return Ok(());
    }
    if !t.ty.can_decode() {
        bail!(
            "tensor '{}' is {}, which has no decoder; it can only be copied",
            t.name,
            t.ty
        );
    }
    if !ty.can_encode() {
        bail!(
            "tensor '{}' would be {}, which this tool cannot encode",
            t.name,
            ty
        );
    }
    if is_quantized(t.ty) && is_quantized(ty) && !opts.allow_requantize {
        bail!(
            "tensor '{}' is already {}: re-quantizing it as {} compounds both rounding errors; pass --allow-requantize to do it anyway",
            t.name,
            t.ty,
            ty
        );
    }
    Ok(())
}

/// The importance weights llama_model_quantize passes for tensor `t` (re-encoded as `ty`):
/// the entry of the same name when it holds `ne0 x ne2` values; a size mismatch is an error
/// except on token_embd; a Q2_K tensor of a Q2_K_S file must have one.
fn tensor_weights<'a>(
    t: &TensorInfo,
    ty: GgmlType,
    opts: &'a Options,
) -> Result<Option<&'a [f32]>> {
    let cat = category(&t.name);
    let requires = opts.file_type.name == "q2_k_s"
        && ty == GgmlType::Q2_K
        && !matches!(cat, Category::TokenEmbd | Category::Output);
    let mut found = None;
    if let Some((m, file)) = &opts.imatrix {
        if let Some(w) = m.weights.get(&t.name) {
            let want = t.ne.first().copied().unwrap_or(1) * t.ne.get(2).copied().unwrap_or(1);
            if w.len() as u64 == want {
                found = Some(w.as_slice());
            } else if cat != Category::TokenEmbd {
                bail!(
                    "--imatrix {file}: the entry for '{}' holds {} values, the tensor needs {want}",
                    t.name,
                    w.len()
                );
            }
        }
    }
    if found.is_none() && requires {
        match &opts.imatrix {
            Some((_, file)) => bail!(
                "--imatrix {file}: no importance data for tensor '{}', which q2_k_s stores as Q2_K (llama.cpp refuses: the result would be garbage)",
                t.name
            ),
            None => bail!(
                "--type q2_k_s needs an importance matrix (--imatrix FILE), as in llama.cpp: tensor '{}' would be Q2_K",
                t.name
            ),
        }
    }
    Ok(found)
}

/// Elements decoded and encoded per slab: buffers are reused, so memory stays bounded and
/// no page is touched twice.
const SLAB_ELEMENTS: usize = 1 << 20;

/// Re-encodes a tensor slab by slab (whole rows). F32 sources are read in place. With
/// importance weights (`ne0` per expert), a slab never crosses an expert's rows.
fn encode(
    view: TensorView<'_>,
    ty: GgmlType,
    weights: Option<&[f32]>,
    out: &mut dyn Write,
    release: &dyn Fn(&[u8]),
) -> Result<()> {
    let ne0 = view.info.ne.first().copied().unwrap_or(1) as usize;
    let nrows = (view.info.n_elements() as usize) / ne0.max(1);
    let src_row = view.ty().row_bytes(ne0 as u64).context("source row size")? as usize;
    let dst_row = ty.row_bytes(ne0 as u64).context("target row size")? as usize;
    let rows_per_slab = (SLAB_ELEMENTS / ne0.max(1)).max(1);
    let mut f32buf = Vec::new();
    let mut outbuf = vec![0u8; rows_per_slab.min(nrows) * dst_row];
    let ctx = || format!("re-encoding tensor '{}' as {ty}", view.name());
    let rows_per_expert = view.info.ne.get(1).copied().unwrap_or(1).max(1) as usize;
    let mut r0 = 0;
    while r0 < nrows {
        let mut r1 = (r0 + rows_per_slab).min(nrows);
        let expert = r0 / rows_per_expert;
        if weights.is_some() {
            r1 = r1.min((expert + 1) * rows_per_expert);
        }
        let n = (r1 - r0) * ne0;
        let src = &view.data[r0 * src_row..r1 * src_row];
        let x: &[f32] = match bytemuck::try_cast_slice(src) {
            Ok(x) if view.ty() == GgmlType::F32 => x,
            _ => {
                f32buf.resize(n, 0.0);
                quant::dequantize(view.ty(), src, &mut f32buf).with_context(ctx)?;
                &f32buf
            }
        };
        let dst = &mut outbuf[..(r1 - r0) * dst_row];
        match weights {
            Some(w) => {
                let w = &w[expert * ne0..(expert + 1) * ne0];
                quant::imatrix::quantize_weighted(ty, x, ne0, w, dst).with_context(ctx)?
            }
            None => quant::quantize(ty, x, dst).with_context(ctx)?,
        }
        out.write_all(dst)?;
        // The slab's input pages are done with: drop them so the mapped input does not stay
        // resident (peak memory is a few slabs, not the input file).
        release(src);
        r0 = r1;
    }
    Ok(())
}

/// Copies a tensor's bytes as they are, releasing the input pages as it goes.
fn copy(data: &[u8], out: &mut dyn Write, release: &dyn Fn(&[u8])) -> Result<()> {
    for part in data.chunks(SLAB_ELEMENTS * 4) {
        out.write_all(part)?;
        release(part);
    }
    Ok(())
}

/// llama.cpp's `weight_name_comparer` key: the layer number that `sscanf(name, "blk.%d.")`
/// reads (-1 without one), then the name byte-wise.
fn loader_order_key(name: &str) -> (i64, &[u8]) {
    let layer = name.strip_prefix("blk.").and_then(|rest| {
        let rest = rest.trim_start();
        let (sign, digits) = match rest.as_bytes().first() {
            Some(b'-') => (-1i64, &rest[1..]),
            Some(b'+') => (1, &rest[1..]),
            _ => (1, rest),
        };
        let end = digits.bytes().take_while(u8::is_ascii_digit).count();
        digits[..end].parse::<i64>().ok().map(|v| sign * v)
    });
    (layer.unwrap_or(-1), name.as_bytes())
}

/// The output type of every tensor, in the input's order. The mixture's counters advance in
/// llama.cpp's order: its loader keeps the tensors in a `std::map` ordered by layer number,
/// then name (`weight_name_comparer`).
fn plan_types(
    file: &GgufModel,
    opts: &Options,
    fallbacks: &mut Vec<String>,
) -> Result<Vec<GgmlType>> {
    let infos: Vec<&TensorInfo> = file.tensor_infos().collect();
    let hp = if opts.pure || !is_quantized(opts.file_type.default) {
        Hparams::default()
    } else {
        hparams(file)?
    };
    plan_tensor_types(&infos, &hp, opts, fallbacks)
}

/// The output type of each of `infos` (a model's tensors, any order) under `opts`, with the
/// model's hyper-parameters `hp`: what `llama_model_quantize` would give them.
pub fn plan_tensor_types(
    infos: &[&TensorInfo],
    hp: &Hparams,
    opts: &Options,
    fallbacks: &mut Vec<String>,
) -> Result<Vec<GgmlType>> {
    let mut qs = State {
        has_tied_embeddings: !infos.iter().any(|t| category(&t.name) == Category::Output),
        n_attention_wv: infos
            .iter()
            .filter(|t| is_attn_v(category(&t.name)))
            .count() as i32,
        ..State::default()
    };
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by(|&a, &b| loader_order_key(&infos[a].name).cmp(&loader_order_key(&infos[b].name)));
    let mut types = vec![GgmlType::F32; infos.len()];
    let mut fb = vec![Vec::new(); infos.len()];
    for i in order {
        types[i] = tensor_type(&mut qs, hp, opts, infos[i], &mut fb[i])?;
    }
    fallbacks.extend(fb.into_iter().flatten());
    Ok(types)
}

pub fn run(input: &Path, output: &Path, opts: &Options) -> Result<Summary> {
    // A split set is read as one model; the output is one file (no split keys).
    let file = GgufModel::open(input).with_context(|| format!("reading {}", input.display()))?;
    let mut w = GgufWriter::new();
    // Set after the copy, as llama.cpp's gguf_set_val (remove the key, append it) leaves them.
    let extra = match &opts.imatrix {
        Some((m, f)) => imatrix_keys(m, f),
        None => Vec::new(),
    };
    for (k, v) in file.metadata() {
        if !DROP_KEYS.contains(&k) && !extra.iter().any(|(e, _)| *e == k) {
            w.add(k, v.to_owned_value())
                .with_context(|| format!("copying metadata key '{k}'"))?;
        }
    }
    w.add("general.quantization_version", QUANTIZATION_VERSION)?;
    w.add("general.file_type", opts.file_type.ftype)?;
    for (k, v) in extra {
        w.add(k, v)?;
    }

    let mut summary = Summary::default();
    let plan = plan_types(&file, opts, &mut summary.fallbacks)?;
    let mut weights: Vec<Option<&[f32]>> = Vec::with_capacity(plan.len());
    for (t, &ty) in file.tensor_infos().zip(&plan) {
        check_conversion(t, ty, opts)?;
        weights.push(if ty == t.ty {
            None
        } else {
            tensor_weights(t, ty, opts)?
        });
        w.add_tensor(&t.name, ty, &t.ne)
            .with_context(|| format!("planning tensor '{}'", t.name))?;
        if ty == t.ty {
            summary.copied += 1;
        } else {
            summary.converted += 1;
        }
        summary.bytes_in += t.size;
    }
    for f in &summary.fallbacks {
        eprintln!("warning: {f}");
    }
    summary.bytes_out = w.tensors().iter().map(|t| t.size).sum();

    let pb = crate::progress::byte_bar(summary.bytes_in, opts.progress);
    w.write_file(output, |i, t, out| {
        let view = file.tensor_at(i);
        pb.set_message(t.name.clone());
        let release = |b: &[u8]| file.release(b);
        let res = if plan[i] == view.ty() {
            copy(view.data, out, &release)
        } else {
            encode(view, plan[i], weights[i], out, &release)
        };
        pb.inc(view.info.size);
        res.map_err(|e| jq::gguf::GgufError::Plan(format!("{e:#}")))
    })
    .with_context(|| format!("writing {}", output.display()))?;
    pb.finish_and_clear();
    Ok(summary)
}
