//! `jq-convert hf-to-gguf`: a Hugging Face Gemma-3 checkpoint (`Gemma3ForCausalLM`, or the text
//! part of `Gemma3ForConditionalGeneration`) to GGUF `gemma3` as llama.cpp loads it
//! (`src/models/gemma3.cpp`). Facts: `shared/spec/gemma3.md`.
//!
//! The mapping is data (`LAYER_TENSORS`: HF suffix and role; GGUF names, shapes and the
//! `gemma3` metadata defaults come from the runtime's `jq::arch` tables); one driver
//! (`write`) validates every tensor against the config, then streams them one at a time, in
//! row chunks: source bytes (bf16/f16/f32, memory-mapped) -> f32 (+1 for norms) -> the target
//! codec, in parallel blocks on rayon's pool, written through the GGUF writer (atomic), the
//! source pages released behind it.

//!
//! Where `shared/spec/gemma3.md` and llama.cpp's sources (`src/models/gemma3.cpp`, the PyPI
//! converter's `conversion/gemma.py` + `base.py`, gguf-py's `vocab.py`) disagree, the sources win:
//! - Token types: the converter asks SentencePiece IsUnknown/IsControl/IsUnused/IsByte only, so
//!   a USER_DEFINED piece is written NORMAL (1), not 4; every `added_tokens_decoder` entry then
//!   overrides text, type (CONTROL when `special`, so `<unk>` ends up 3, not 2) and score
//!   (-1000). `[PAD<id>]` entries get -10000 and UNUSED, as the spec says.
//! - `attention.sliding_window_pattern`: the converter never writes it (llama.cpp then assumes
//!   6); we write it when the checkpoint's layer types differ from that (a u32 period, or a bool
//!   per layer), so such checkpoints run right. `rope.freq_base_swa` is always written (as the
//!   converter does), not only when it differs from 10000.
//! - Norm +1 is added in f32 after widening bf16, as here, so the bytes are identical.
//! - EOS: generation_config's list (1, 106) is not used; the converter writes
//!   tokenizer_config.json's `eos_token` (1), and llama.cpp treats `<end_of_turn>` as
//!   end-of-generation by its text.
//! - llama.cpp's built-in gemma chat template leaves BOS to the tokenizer (`add_bos_token`).
//! - `general.name`/`organization`/`basename`/`finetune`/`version`/`size_label` are settled as
//!   gguf-py's `Metadata.load` and the converter's fallbacks do (`crate::model_card::Names`):
//!   the model card's keys, then config.json's `_name_or_path` and the directory name split by
//!   `get_model_id_components`, then the directory name and the parameter count's label. The
//!   rest of the model card (license, tags, languages, base models, datasets, ...) is written
//!   as gguf-py's metadata code writes it (`crate::model_card`).
//! - A -0.0 weight stays -0.0 (no shift is added outside the norms).

use crate::sentencepiece::{ModelProto, PieceType};
use crate::shards::{TensorEntry, Weights};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use jq::arch::{self, keys, Dim, Family, Role, TensorSpec};
use jq::gguf::{GgufError, GgufWriter, MetaValue, ValueType};
use jq::output::AtomicFile;
use jq::quant::{quantize_with, FileType, GgmlType, Path as CodecPath};
use rayon::prelude::*;
use safetensors::Dtype;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const ARCH: &str = Family::Gemma3.arch();
const ARCHITECTURES: [&str; 2] = ["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"];
/// llama.cpp's default `sliding_window_pattern` for gemma3 (`load_swa_pattern(ml, 6)`), from
/// the runtime's table (`jq::arch::swa`).
fn llama_default_pattern() -> usize {
    jq::arch::swa::swa_default(ARCH).map_or(6, |(n, _)| n as usize)
}

/// The text model's hyper-parameters, with Gemma3TextConfig's defaults for omitted keys.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub query_pre_attn_scalar: f64,
    pub rms_eps: f64,
    pub max_positions: usize,
    pub rope_theta: f64,
    pub rope_local_theta: f64,
    /// `rope_type: linear` on the global layers: the factor.
    pub rope_linear_factor: Option<f64>,
    pub sliding_window: usize,
    /// Per layer: true for sliding-window (local) attention.
    pub sliding: Vec<bool>,
    pub final_logit_softcapping: Option<f64>,
}

impl TextConfig {
    /// The period p when layer i is global exactly when (i + 1) % p == 0.
    pub fn sliding_pattern(&self) -> Option<usize> {
        (1..=self.n_layers.max(1)).find(|&p| {
            self.sliding
                .iter()
                .enumerate()
                .all(|(i, &s)| s == ((i + 1) % p != 0))
        })
    }

    /// The query scale llama.cpp applies: 1/sqrt(hidden/heads) for 62-layer models (27B),
    /// 1/sqrt(head_dim) otherwise (`llama_model_gemma3::load_arch_hparams`).
    pub fn llama_cpp_scale_dim(&self) -> usize {
        if self.n_layers == 62 {
            self.hidden / self.n_heads.max(1)
        } else {
            self.head_dim
        }
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn read_json_if(path: &Path) -> Result<Option<Json>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Parses `config.json` (both the transformers-4.50 and the transformers-5 layouts).
pub fn parse_config(j: &Json, path: &Path) -> Result<TextConfig> {
    let top = j
        .as_object()
        .ok_or_else(|| anyhow!("{}: expected a JSON object", path.display()))?;
    let arch = top
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(Json::as_str)
        .ok_or_else(|| anyhow!("{}: no \"architectures\" list", path.display()))?;
    if !ARCHITECTURES.contains(&arch) {
        bail!(
            "{}: unknown architecture '{arch}' (supported: {})",
            path.display(),
            ARCHITECTURES.join(", ")
        );
    }
    let empty = Map::new();
    let o = match top.get("text_config") {
        Some(Json::Object(t)) => t,
        Some(_) => bail!("{}: \"text_config\" is not an object", path.display()),
        None if arch == "Gemma3ForConditionalGeneration" => &empty,
        None => top,
    };
    let int = |k: &str, d: usize| -> Result<usize> {
        match o.get(k) {
            None | Some(Json::Null) => Ok(d),
            // Every size is written as a u32: larger is an error, not a silent truncation.
            Some(v) => v
                .as_u64()
                .filter(|&x| x <= u64::from(u32::MAX))
                .map(|x| x as usize)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: '{k}' must be an integer in 0..={}, is {v}",
                        path.display(),
                        u32::MAX
                    )
                }),
        }
    };
    let float = |obj: &Map<String, Json>, k: &str| -> Result<Option<f64>> {
        match obj.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| anyhow!("{}: '{k}' must be a number, is {v}", path.display())),
        }
    };
    let n_layers = int("num_hidden_layers", 26)?;
    let hidden = int("hidden_size", 2304)?;
    let n_heads = int("num_attention_heads", 8)?;
    let head_dim = int("head_dim", 256)?;

    let sliding = match o.get("layer_types") {
        Some(Json::Array(a)) => {
            if a.len() != n_layers {
                bail!(
                    "{}: layer_types has {} entries for {n_layers} layers",
                    path.display(),
                    a.len()
                );
            }
            a.iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(anyhow!("{}: unknown layer type {t}", path.display())),
                })
                .collect::<Result<Vec<_>>>()?
        }
        _ => {
            let p = int("sliding_window_pattern", llama_default_pattern())?.max(1);
            (0..n_layers).map(|i| (i + 1) % p != 0).collect()
        }
    };

    // Rope: transformers 5 writes rope_parameters {full_attention, sliding_attention};
    // 4.50 writes rope_theta, rope_local_base_freq and rope_scaling {rope_type, factor}.
    let (mut theta, mut local, mut scaling) = (None, None, None);
    for key in ["rope_parameters", "rope_scaling"] {
        match o.get(key) {
            None | Some(Json::Null) | Some(Json::Object(_)) => {}
            Some(v) => bail!(
                "{}: '{key}' must be an object, is {v}: refusing to guess the RoPE scaling",
                path.display()
            ),
        }
    }
    if let Some(Json::Object(rp)) = o.get("rope_parameters") {
        if let Some(Json::Object(full)) = rp.get("full_attention") {
            theta = float(full, "rope_theta")?;
            scaling = Some(full.clone());
        } else {
            theta = float(rp, "rope_theta")?;
            scaling = Some(rp.clone());
        }
        if let Some(Json::Object(sl)) = rp.get("sliding_attention") {
            local = float(sl, "rope_theta")?;
        }
    }
    theta = theta.or(float(o, "rope_theta")?);
    local = local.or(float(o, "rope_local_base_freq")?);
    if let Some(Json::Object(rs)) = o.get("rope_scaling") {
        scaling = Some(rs.clone());
    }
    let rope_linear_factor = match scaling {
        None => None,
        Some(s) => {
            let ty = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Json::as_str)
                .unwrap_or("default");
            match ty {
                "default" => None,
                "linear" => Some(float(&s, "factor")?.ok_or_else(|| {
                    anyhow!("{}: linear rope scaling without a factor", path.display())
                })?),
                other => bail!(
                    "{}: rope type '{other}' is not supported for gemma3 (default or linear)",
                    path.display()
                ),
            }
        }
    };
    let cfg = TextConfig {
        architecture: arch.to_string(),
        vocab_size: int("vocab_size", 262_208)?,
        hidden,
        ffn: int("intermediate_size", 9216)?,
        n_layers,
        n_heads,
        n_kv_heads: int("num_key_value_heads", 4)?,
        head_dim,
        query_pre_attn_scalar: float(o, "query_pre_attn_scalar")?.unwrap_or(256.0),
        rms_eps: float(o, "rms_norm_eps")?.unwrap_or(1e-6),
        max_positions: int("max_position_embeddings", 131_072)?,
        rope_theta: theta.unwrap_or(1_000_000.0),
        rope_local_theta: local.unwrap_or(10_000.0),
        rope_linear_factor,
        sliding_window: int("sliding_window", 4096)?,
        sliding,
        final_logit_softcapping: float(o, "final_logit_softcapping")?,
    };
    // What llama.cpp (and our validator) refuses, refused before anything is written.
    for (key, v) in [
        ("num_hidden_layers", cfg.n_layers),
        ("hidden_size", cfg.hidden),
        ("intermediate_size", cfg.ffn),
        ("num_attention_heads", cfg.n_heads),
        ("num_key_value_heads", cfg.n_kv_heads),
        ("head_dim", cfg.head_dim),
        ("max_position_embeddings", cfg.max_positions),
        ("vocab_size", cfg.vocab_size),
    ] {
        if v == 0 {
            bail!("{}: '{key}' is 0", path.display());
        }
    }
    if cfg.n_layers as u64 > jq::validate::MAX_LAYERS {
        bail!(
            "{}: 'num_hidden_layers' is {}, llama.cpp loads at most {}",
            path.display(),
            cfg.n_layers,
            jq::validate::MAX_LAYERS
        );
    }
    if !cfg.n_heads.is_multiple_of(cfg.n_kv_heads) {
        bail!(
            "{}: 'num_key_value_heads' {} does not divide 'num_attention_heads' {}",
            path.display(),
            cfg.n_kv_heads,
            cfg.n_heads
        );
    }
    for (key, v) in [
        ("rms_norm_eps", cfg.rms_eps),
        ("rope_theta", cfg.rope_theta),
        ("rope_local_base_freq", cfg.rope_local_theta),
        ("query_pre_attn_scalar", cfg.query_pre_attn_scalar),
    ] {
        if !v.is_finite() || v <= 0.0 {
            bail!(
                "{}: '{key}' is {v}, must be a positive number",
                path.display()
            );
        }
    }
    if let Some(f) = cfg.rope_linear_factor {
        if !f.is_finite() || f <= 0.0 {
            bail!(
                "{}: the linear RoPE factor is {f}, must be a positive number",
                path.display()
            );
        }
    }
    Ok(cfg)
}

/// The size of one of the runtime table's dimensions (`jq::arch::Dim`), from the config.
fn dim_size(d: Dim, c: &TextConfig) -> usize {
    match d {
        Dim::Embd => c.hidden,
        Dim::Ff => c.ffn,
        Dim::HeadDim => c.head_dim,
        Dim::Q => c.n_heads * c.head_dim,
        Dim::Kv => c.n_kv_heads * c.head_dim,
        Dim::Vocab => c.vocab_size,
        // Not a Gemma-3 dimension (llama3's RoPE factors); the table has no such tensor.
        Dim::HalfRot => c.head_dim / 2,
    }
}

/// A tensor's PyTorch shape (slowest dimension first): the runtime table's ggml order reversed.
fn torch_shape(spec: &TensorSpec, c: &TextConfig) -> Vec<usize> {
    spec.dims.iter().rev().map(|&d| dim_size(d, c)).collect()
}

/// Per layer, in the order llama.cpp's converter writes them: the HF name after `layers.N.`
/// and the tensor's role; its GGUF name and shape come from the runtime's Gemma-3 table
/// (`jq::arch::gemma3::LAYER`), the one the loader, the planners and the executor use.
const LAYER_TENSORS: [(&str, Role); 13] = [
    ("input_layernorm.weight", Role::AttnNorm),
    ("self_attn.q_proj.weight", Role::Wq),
    ("self_attn.k_proj.weight", Role::Wk),
    ("self_attn.v_proj.weight", Role::Wv),
    ("self_attn.q_norm.weight", Role::QNorm),
    ("self_attn.k_norm.weight", Role::KNorm),
    ("self_attn.o_proj.weight", Role::Wo),
    ("post_attention_layernorm.weight", Role::PostAttnNorm),
    ("pre_feedforward_layernorm.weight", Role::FfnNorm),
    ("mlp.gate_proj.weight", Role::Gate),
    ("mlp.up_proj.weight", Role::Up),
    ("mlp.down_proj.weight", Role::Down),
    ("post_feedforward_layernorm.weight", Role::PostFfwNorm),
];

/// The runtime table's entry for a layer role.
fn layer_spec(role: Role) -> &'static TensorSpec {
    Family::Gemma3
        .layer_tensors()
        .iter()
        .find(|s| s.role == role)
        .expect("every converter role is in jq::arch's Gemma-3 table")
}

/// Text-weight prefixes: CausalLM, newer multimodal, older multimodal.
const PREFIXES: [&str; 3] = ["model.language_model.", "language_model.model.", "model."];
/// Dropped: the vision tower and projector (an mmproj file is out of scope) and the tied head.
const DROPPED: [&str; 5] = [
    "vision_tower.",
    "model.vision_tower.",
    "multi_modal_projector.",
    "model.multi_modal_projector.",
    "lm_head.",
];

/// One output tensor: where it comes from and how it is stored.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub gguf: String,
    pub hf: String,
    /// ggml order (fastest first).
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    /// Added to every value (Gemma's RMSNorm computes x * (1 + w), llama.cpp x * w).
    pub shift: f32,
}

/// A checkpoint directory, opened and validated.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub cfg: TextConfig,
    pub weights: Weights,
    /// Canonical name (`embed_tokens.weight`, `layers.0.…`) -> the checkpoint's name.
    pub names: BTreeMap<String, String>,
    pub embedding_rows: usize,
}

fn canonical(name: &str) -> Option<&str> {
    if DROPPED.iter().any(|p| name.starts_with(p)) || name == "language_model.lm_head.weight" {
        return None;
    }
    PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .or(Some(name))
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if dir.is_file() {
            let hint = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or(String::from("its directory"), |p| p.display().to_string());
            bail!(
                "{} is a file: hf-to-gguf takes the checkpoint directory (try {hint})",
                dir.display()
            );
        }
        if !dir.is_dir() {
            bail!("{}: no such directory", dir.display());
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            bail!("{}: no config.json in this directory", dir.display());
        }
        let cfg = parse_config(&read_json(&config_path)?, &config_path)?;
        let weights = Weights::open(dir)?;
        let mut names = BTreeMap::new();
        for n in weights.names() {
            if let Some(c) = canonical(n) {
                if let Some(prev) = names.insert(c.to_string(), n.to_string()) {
                    bail!("tensors '{prev}' and '{n}' are both '{c}' (two key layouts mixed)");
                }
            }
        }
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            cfg,
            weights,
            names,
            embedding_rows: 0,
        };
        ck.embedding_rows = ck.validate()?;
        Ok(ck)
    }

    /// Every file of the checkpoint that a conversion reads (for the output alias check).
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = [
            "config.json",
            "generation_config.json",
            "tokenizer_config.json",
            "tokenizer.json",
            "tokenizer.model",
            "chat_template.jinja",
            "chat_template.json",
            crate::shards::INDEX,
        ]
        .iter()
        .map(|n| self.dir.join(n))
        .filter(|p| p.exists())
        .collect();
        v.extend(self.weights.shard_paths().map(Path::to_path_buf));
        v
    }

    fn entry(&self, canonical: &str) -> Option<(&str, &TensorEntry)> {
        let hf = self.names.get(canonical)?;
        Some((hf.as_str(), self.weights.get(hf)?))
    }

    fn check(&self, canonical: &str, want: &[usize]) -> Result<()> {
        let (hf, t) = self.entry(canonical).ok_or_else(|| {
            if canonical.ends_with("norm.weight") {
                anyhow!("missing norm: the checkpoint has no '{canonical}' (any key prefix)")
            } else {
                anyhow!("missing tensor: the checkpoint has no '{canonical}' (any key prefix)")
            }
        })?;
        if !matches!(t.dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
            bail!(
                "unsupported dtype {:?} of tensor '{hf}' in {} (supported: BF16, F16, F32)",
                t.dtype,
                self.weights.shard_path(t).display()
            );
        }
        if t.shape != want {
            bail!(
                "shape mismatch: tensor '{hf}' is {:?}, config.json implies {want:?}",
                t.shape
            );
        }
        Ok(())
    }

    /// Every expected tensor present with the config's shape and a supported dtype, no unknown
    /// text tensor. Returns the embedding's row count.
    fn validate(&self) -> Result<usize> {
        let c = &self.cfg;
        let (hf, emb) = self.entry("embed_tokens.weight").ok_or_else(|| {
            anyhow!("missing tensor: the checkpoint has no 'embed_tokens.weight' (any key prefix)")
        })?;
        if emb.shape.len() != 2 || emb.shape[1] != c.hidden {
            bail!(
                "shape mismatch: tensor '{hf}' is {:?}, config.json implies [{}, {}]",
                emb.shape,
                c.vocab_size,
                c.hidden
            );
        }
        self.check("embed_tokens.weight", &torch_shape(&arch::TOKEN_EMBD, c))?;
        self.check("norm.weight", &torch_shape(&arch::OUTPUT_NORM, c))?;
        let mut known: Vec<String> = vec!["embed_tokens.weight".into(), "norm.weight".into()];
        for l in 0..c.n_layers {
            for (suffix, role) in LAYER_TENSORS {
                let name = format!("layers.{l}.{suffix}");
                self.check(&name, &torch_shape(layer_spec(role), c))?;
                known.push(name);
            }
        }
        if let Some(extra) = self.names.keys().find(|n| !known.contains(n)) {
            bail!(
                "unexpected tensor '{}' (not a Gemma-3 text weight for {} layers)",
                self.names[extra],
                c.n_layers
            );
        }
        Ok(emb.shape[0])
    }

    /// The output tensors in llama.cpp's loading order, typed for `target`.
    pub fn plan(&self, target: GgmlType) -> Vec<PlannedTensor> {
        let c = &self.cfg;
        let mut out = Vec::new();
        let mut push = |spec: &TensorSpec, il: Option<usize>, canonical: String| {
            let gguf = spec.name_in(il);
            let t = self
                .weights
                .get(&self.names[&canonical])
                .expect("validated");
            let ne: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
            // Gemma's checkpoints store RMS-norm weights as w - 1 (llama.cpp's converter adds 1).
            let is_norm = spec.op == arch::Op::Mul;
            let mut ty = if ne.len() < 2 || is_norm {
                GgmlType::F32
            } else if spec.name == arch::TOKEN_EMBD.name && target == GgmlType::Q4_0 {
                // Tied with the output projection: kept at Q8_0, in the spirit of
                // llama-quantize (which keeps it at Q6_K unless --pure).
                GgmlType::Q8_0
            } else {
                target
            };
            if ty.block_size() > 1 && !ne[0].is_multiple_of(ty.block_size()) {
                eprintln!(
                    "warning: {gguf}: {} columns is not a multiple of {}; stored as F16",
                    ne[0],
                    ty.block_size()
                );
                ty = GgmlType::F16;
            }
            out.push(PlannedTensor {
                hf: self.names[&canonical].clone(),
                gguf,
                ne,
                ty,
                shift: if is_norm { 1.0 } else { 0.0 },
            });
        };
        push(&arch::TOKEN_EMBD, None, "embed_tokens.weight".into());
        for l in 0..c.n_layers {
            for (hf, role) in LAYER_TENSORS {
                push(layer_spec(role), Some(l), format!("layers.{l}.{hf}"));
            }
        }
        push(&arch::OUTPUT_NORM, None, "norm.weight".into());
        out
    }
}

/// The vocabulary as llama.cpp's converter builds it (`_create_vocab_sentencepiece`): the
/// SentencePiece pieces, `added_tokens_decoder` (or tokenizer.json's `added_tokens`) on top,
/// padded with `[PAD<id>]` to the embedding's rows.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
const TYPE_BYTE: i32 = 6;

/// The converter's `does_token_look_special`: added tokens that some checkpoints leave
/// non-special but that ought to be control tokens (deepseek's full-width `<｜...｜>`, gemma's
/// `<unusedN>`).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `added_tokens_decoder` of tokenizer_config.json, or else `added_tokens` of tokenizer.json:
/// (id, content, special).
fn added_tokens(tok_config: Option<&Json>, tok_json: Option<&Json>) -> Vec<(usize, String, bool)> {
    if let Some(Json::Object(m)) = tok_config.and_then(|c| c.get("added_tokens_decoder")) {
        return m
            .iter()
            .filter_map(|(id, v)| {
                Some((
                    id.parse().ok()?,
                    v.get("content")?.as_str()?.to_string(),
                    v.get("special").and_then(Json::as_bool).unwrap_or(false),
                ))
            })
            .collect();
    }
    if let Some(Json::Array(a)) = tok_json.and_then(|t| t.get("added_tokens")) {
        return a
            .iter()
            .filter_map(|v| {
                Some((
                    v.get("id")?.as_u64()? as usize,
                    v.get("content")?.as_str()?.to_string(),
                    v.get("special").and_then(Json::as_bool).unwrap_or(false),
                ))
            })
            .collect();
    }
    Vec::new()
}

pub fn build_vocab(
    sp_path: &Path,
    rows: usize,
    tok_config: Option<&Json>,
    tok_json: Option<&Json>,
) -> Result<Vocab> {
    let sp = ModelProto::read(sp_path)?;
    let pieces = sp.vocabulary(&sp_path.display().to_string())?;
    if pieces.len() > rows {
        bail!(
            "vocabulary larger than the embedding: {} has {} pieces but embed_tokens has {rows} rows",
            sp_path.display(),
            pieces.len()
        );
    }
    let mut v = Vocab {
        tokens: (0..rows).map(|i| format!("[PAD{i}]")).collect(),
        scores: vec![-10000.0; rows],
        types: vec![TYPE_UNUSED; rows],
    };
    for (i, p) in pieces.into_iter().enumerate() {
        // llama.cpp's converter asks IsUnknown/IsControl/IsUnused/IsByte only, so a
        // USER_DEFINED piece stays NORMAL unless the added tokens say otherwise.
        v.types[i] = match p.kind {
            PieceType::Unknown => TYPE_UNKNOWN,
            PieceType::Control => TYPE_CONTROL,
            PieceType::Unused => TYPE_UNUSED,
            PieceType::Byte => TYPE_BYTE,
            PieceType::Normal | PieceType::UserDefined => TYPE_NORMAL,
        };
        v.tokens[i] = p.text;
        v.scores[i] = p.score;
    }
    for (id, content, special) in added_tokens(tok_config, tok_json) {
        if id >= rows {
            eprintln!("warning: added token {id} '{content}' is past the embedding's {rows} rows; ignored");
            continue;
        }
        if special || looks_special(&content) {
            v.types[id] = TYPE_CONTROL;
            v.tokens[id] = content;
        } else {
            v.types[id] = TYPE_USER_DEFINED;
            v.tokens[id] = content.replace('\u{2581}', " ");
        }
        v.scores[id] = -1000.0;
    }
    Ok(v)
}

/// The chat template: tokenizer_config.json's `chat_template`, else `chat_template.jinja`, else
/// `chat_template.json`'s `chat_template` (the order of gguf-py's SpecialVocab).
fn chat_template(dir: &Path, tok_config: Option<&Json>) -> Result<Option<String>> {
    if let Some(t) = tok_config
        .and_then(|c| c.get("chat_template"))
        .and_then(Json::as_str)
    {
        return Ok(Some(t.to_string()));
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(
            std::fs::read_to_string(&jinja)
                .with_context(|| format!("reading {}", jinja.display()))?,
        ));
    }
    Ok(
        read_json_if(&dir.join("chat_template.json"))?.and_then(|j| {
            j.get("chat_template")
                .and_then(Json::as_str)
                .map(str::to_string)
        }),
    )
}

/// gguf-py's `model_weight_count_rounded_notation(n, min_digits=2)`.
fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64)
        .trim_start_matches('0')
        .len();
    format!(
        "{scaled:.prec$}{suffix}",
        prec = 2usize.saturating_sub(digits)
    )
}

fn token_id(v: &Vocab, tok_config: Option<&Json>, key: &str) -> Option<u32> {
    let entry = tok_config?.get(key)?;
    let text = entry
        .as_str()
        .or_else(|| entry.get("content").and_then(Json::as_str))?;
    v.tokens.iter().position(|t| t == text).map(|i| i as u32)
}

/// The plan of `--type` FILE_TYPE: llama.cpp's converter in the checkpoint's own dtype, then
/// `llama_tensor_get_type` for every tensor (norms and other 1-D tensors stay F32).
fn mixture_plan(ck: &Checkpoint, ft: crate::quantize::FileType) -> Result<Vec<PlannedTensor>> {
    let mut own = None;
    for t in ck.plan(GgmlType::F32).iter().filter(|p| p.ne.len() >= 2) {
        let d = ck.weights.get(&t.hf).expect("validated").dtype;
        let ty = match d {
            Dtype::BF16 => GgmlType::BF16,
            Dtype::F16 => GgmlType::F16,
            other => bail!(
                "--type {}: tensor '{}' is {other:?}; a quantization mixture is made from a bf16 or f16 checkpoint (llama.cpp's converter in that dtype, then llama-quantize): convert with --type f16 and run `jq-convert quantize`",
                ft.name,
                t.hf
            ),
        };
        match own {
            None => own = Some(ty),
            Some(o) if o != ty => bail!(
                "--type {}: the checkpoint mixes {o} and {ty} weights ('{}'); a quantization mixture needs one dtype",
                ft.name,
                t.hf
            ),
            Some(_) => {}
        }
    }
    let mut plan = ck.plan(own.unwrap_or(GgmlType::F16));
    let infos: Vec<jq::gguf::TensorInfo> = plan
        .iter()
        .map(|p| jq::gguf::TensorInfo {
            name: p.gguf.clone(),
            ty: p.ty,
            ne: p.ne.clone(),
            offset: 0,
            size: 0,
        })
        .collect();
    let refs: Vec<&jq::gguf::TensorInfo> = infos.iter().collect();
    let c = &ck.cfg;
    let hp = crate::quantize::Hparams {
        arch: ARCH.into(),
        n_layer: c.n_layers as i32,
        n_gqa: c.n_heads.checked_div(c.n_kv_heads).unwrap_or(0) as u32,
        n_expert: 0,
        // llama.cpp types no gemma3 model LLM_TYPE_70B.
        type_70b: false,
    };
    let qopts = crate::quantize::Options {
        file_type: ft,
        allow_requantize: false,
        pure: false,
        output_tensor_type: None,
        token_embedding_type: None,
        tensor_types: Vec::new(),
        imatrix: None,
        progress: false,
    };
    let mut fallbacks = Vec::new();
    let types = crate::quantize::plan_tensor_types(&refs, &hp, &qopts, &mut fallbacks)?;
    for f in &fallbacks {
        eprintln!("warning: {f}");
    }
    for (p, t) in plan.iter_mut().zip(types) {
        p.ty = t;
    }
    Ok(plan)
}

/// Writes every metadata key llama.cpp reads for `gemma3`; `ftype` is `general.file_type`.
fn metadata(w: &mut GgufWriter, ck: &Checkpoint, ftype: u32, plan: &[PlannedTensor]) -> Result<()> {
    let c = &ck.cfg;
    let dir = &ck.dir;
    let gen = read_json_if(&dir.join("generation_config.json"))?;
    let tok_config = read_json_if(&dir.join("tokenizer_config.json"))?;
    let tok_json = read_json_if(&dir.join("tokenizer.json"))?;
    let config_json = read_json(&dir.join("config.json"))?;

    w.add("general.architecture", ARCH)?;
    w.add("general.type", "model")?;
    if let Some(g) = &gen {
        if let Some(k) = g.get("top_k").and_then(Json::as_i64) {
            w.add("general.sampling.top_k", k as i32)?;
        }
        for (key, gk) in [
            ("top_p", "top_p"),
            ("min_p", "min_p"),
            ("temp", "temperature"),
        ] {
            if let Some(x) = g.get(gk).and_then(Json::as_f64) {
                w.add(format!("general.sampling.{key}"), x as f32)?;
            }
        }
    }
    let card = crate::model_card::load(dir)?;
    let params: u64 = plan.iter().map(|t| t.ne.iter().product::<u64>()).sum();
    // As Python's `Path.name` of the directory given (convert_hf_to_gguf.py's `dir_model`).
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let names = crate::model_card::Names::settle(
        card.as_ref(),
        config_json.get("_name_or_path").and_then(Json::as_str),
        &dir_name,
        params as i64,
        || size_label(params),
    );
    for (key, v) in [
        ("general.name", &names.name),
        ("general.organization", &names.organization),
        ("general.basename", &names.basename),
        ("general.finetune", &names.finetune),
        ("general.version", &names.version),
        ("general.size_label", &names.size_label),
    ] {
        if let Some(v) = v {
            w.add(key, v.as_str())?;
        }
    }
    if let Some(c) = &card {
        crate::model_card::write(w, c, params as i64)?;
    }
    let k = |s: &str| format!("{ARCH}.{s}");
    w.add(k(keys::BLOCK_COUNT), c.n_layers as u32)?;
    w.add(k(keys::CONTEXT_LENGTH), c.max_positions as u32)?;
    w.add(k(keys::EMBEDDING_LENGTH), c.hidden as u32)?;
    w.add(k(keys::FEED_FORWARD_LENGTH), c.ffn as u32)?;
    w.add(k(keys::HEAD_COUNT), c.n_heads as u32)?;
    w.add(k(keys::HEAD_COUNT_KV), c.n_kv_heads as u32)?;
    if let Some(f) = c.rope_linear_factor {
        w.add(k(keys::ROPE_SCALING_TYPE), "linear")?;
        w.add(k(keys::ROPE_SCALING_FACTOR), f as f32)?;
    }
    w.add(k(keys::ROPE_FREQ_BASE), c.rope_theta as f32)?;
    w.add(k(keys::ROPE_FREQ_BASE_SWA), c.rope_local_theta as f32)?;
    w.add(k(keys::RMS_EPS), c.rms_eps as f32)?;
    w.add(k(keys::KEY_LENGTH), c.head_dim as u32)?;
    w.add(k(keys::VALUE_LENGTH), c.head_dim as u32)?;
    w.add("general.file_type", ftype)?;
    if let Some(s) = c.final_logit_softcapping {
        w.add(k(keys::FINAL_LOGIT_SOFTCAPPING), s as f32)?;
    }
    if c.sliding.iter().any(|&s| s) {
        w.add(k(keys::SLIDING_WINDOW), c.sliding_window as u32)?;
        match c.sliding_pattern() {
            Some(p) if p == llama_default_pattern() => {}
            Some(p) => w.add(k(keys::SLIDING_WINDOW_PATTERN), p as u32)?,
            None => w.add(
                k(keys::SLIDING_WINDOW_PATTERN),
                MetaValue::array(ValueType::Bool, c.sliding.iter().copied()),
            )?,
        }
    }
    w.add("general.quantization_version", 2u32)?;

    let sp_path = dir.join("tokenizer.model");
    if !sp_path.is_file() {
        bail!(
            "{}: no tokenizer.model (SentencePiece) to build the vocabulary from",
            dir.display()
        );
    }
    let v = build_vocab(
        &sp_path,
        ck.embedding_rows,
        tok_config.as_ref(),
        tok_json.as_ref(),
    )?;
    w.add("tokenizer.ggml.model", "llama")?;
    w.add("tokenizer.ggml.pre", "default")?;
    w.add("tokenizer.ggml.tokens", MetaValue::strings(&v.tokens))?;
    w.add(
        "tokenizer.ggml.scores",
        MetaValue::array(ValueType::F32, v.scores.iter().copied()),
    )?;
    w.add(
        "tokenizer.ggml.token_type",
        MetaValue::array(ValueType::I32, v.types.iter().copied()),
    )?;
    // Special ids: tokenizer_config.json's token strings, else config.json's *_token_id.
    let tc = tok_config.as_ref();
    for (typ, cfg_key) in [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unknown", "unk_token_id"),
        ("padding", "pad_token_id"),
        ("mask", "mask_token_id"),
    ] {
        let tc_key = match typ {
            "unknown" => "unk_token".to_string(),
            "padding" => "pad_token".to_string(),
            t => format!("{t}_token"),
        };
        let from_cfg = || {
            let o = config_json
                .get("text_config")
                .filter(|t| t.get(cfg_key).is_some())
                .unwrap_or(&config_json);
            match o.get(cfg_key) {
                Some(Json::Number(n)) => n.as_u64().map(|x| x as u32),
                Some(Json::Array(a)) => a.first().and_then(Json::as_u64).map(|x| x as u32),
                _ => None,
            }
        };
        if let Some(id) = token_id(&v, tc, &tc_key).or_else(from_cfg) {
            if (id as usize) < v.tokens.len() {
                w.add(format!("tokenizer.ggml.{typ}_token_id"), id)?;
            }
        }
    }
    let flag = |key: &str, default: bool| {
        tc.and_then(|c| c.get(key))
            .and_then(Json::as_bool)
            .unwrap_or(default)
    };
    w.add("tokenizer.ggml.add_bos_token", flag("add_bos_token", true))?;
    w.add("tokenizer.ggml.add_sep_token", flag("add_sep_token", false))?;
    w.add("tokenizer.ggml.add_eos_token", flag("add_eos_token", false))?;
    if let Some(t) = chat_template(dir, tc)? {
        w.add("tokenizer.chat_template", t)?;
    }
    w.add("tokenizer.ggml.add_space_prefix", false)?;
    Ok(())
}

/// The loud warning of the spec: llama.cpp has no key for `query_pre_attn_scalar`.
pub fn attention_scale_warning(c: &TextConfig) -> Option<String> {
    let used = c.llama_cpp_scale_dim();
    ((c.query_pre_attn_scalar - used as f64).abs() > 1e-9).then(|| {
        format!(
            "WARNING: this checkpoint scales queries by 1/sqrt(query_pre_attn_scalar = {}), but llama.cpp \
             will use 1/sqrt({used}) ({} for this model: {}); the GGUF cannot reproduce the checkpoint's logits exactly",
            c.query_pre_attn_scalar,
            if c.n_layers == 62 { "hidden_size / num_attention_heads" } else { "head_dim" },
            if c.n_layers == 62 { format!("{} / {}", c.hidden, c.n_heads) } else { c.head_dim.to_string() },
        )
    })
}

pub struct Options {
    pub ty: GgmlType,
    /// A llama-quantize file type (`q4_k_m`, ...): the checkpoint is converted in its own dtype
    /// (bf16 or f16, as llama.cpp's converter would write it) and every tensor then gets the
    /// type `llama_model_quantize` would give it, in the same single pass. `ty` is ignored.
    pub mixture: Option<crate::quantize::FileType>,
    pub progress: bool,
}

/// Elements converted per step of a tensor: bounds the working memory (f32 scratch + output)
/// independently of the tensor's size.
const CHUNK_ELEMS: usize = 1 << 22;
/// Elements per rayon work item inside a step.
const TASK_ELEMS: usize = 1 << 15;

/// Widens `src` to f32 (+ `shift`) into `dst`; returns whether any source value was NaN or
/// infinite (checked in the same pass, so the check costs almost nothing).
fn decode_into(dtype: Dtype, src: &[u8], shift: f32, dst: &mut [f32]) -> bool {
    let mut bad = false;
    // Without a shift the value is kept as it is: `-0.0 + 0.0` would be +0.0, and the
    // converter keeps every -0.0 of the checkpoint.
    let shifted = |v: f32| if shift == 0.0 { v } else { v + shift };
    match dtype {
        Dtype::BF16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                let v = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                bad |= !v.is_finite();
                *o = shifted(v);
            }
        }
        Dtype::F16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                let v = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                bad |= !v.is_finite();
                *o = shifted(v);
            }
        }
        _ => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                bad |= !v.is_finite();
                *o = shifted(v);
            }
        }
    }
    bad
}

/// The index of the first NaN or infinity among `src`'s elements (all-ones exponent bits).
/// Scanned in parallel blocks with a branch-free fold (which vectorises), so the check costs a
/// fraction of the conversion it guards; only a block that holds one is searched element by
/// element.
fn first_non_finite(dtype: Dtype, src: &[u8]) -> Option<usize> {
    match dtype {
        Dtype::BF16 => scan_exponents::<2>(src, 0x7f80),
        Dtype::F16 => scan_exponents::<2>(src, 0x7c00),
        _ => scan_exponents::<4>(src, 0x7f80_0000),
    }
}

/// [`first_non_finite`] for `N`-byte little-endian floats whose exponent bits are `mask`.
fn scan_exponents<const N: usize>(src: &[u8], mask: u32) -> Option<usize> {
    const BLOCK: usize = 1 << 14;
    let bad = |b: &[u8]| {
        let w = if N == 2 {
            u32::from(u16::from_le_bytes([b[0], b[1]]))
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        w & mask == mask
    };
    let block = src
        .par_chunks(BLOCK * N)
        .position_first(|c| c.chunks_exact(N).fold(false, |a, b| a | bad(b)))?;
    src[block * BLOCK * N..]
        .chunks_exact(N)
        .position(bad)
        .map(|i| block * BLOCK + i)
}

fn same_type(dtype: Dtype, ty: GgmlType) -> bool {
    matches!(
        (dtype, ty),
        (Dtype::F32, GgmlType::F32) | (Dtype::F16, GgmlType::F16) | (Dtype::BF16, GgmlType::BF16)
    )
}

/// Streams one tensor into `out`, a step of whole rows at a time.
fn convert_tensor(
    ck: &Checkpoint,
    p: &PlannedTensor,
    out: &mut dyn Write,
    pb: &ProgressBar,
) -> Result<(), GgufError> {
    let t = ck.weights.get(&p.hf).expect("validated");
    let cols = p.ne[0] as usize;
    let rows = p.ne.iter().skip(1).product::<u64>() as usize;
    let src_row = (t.dtype.bitsize() / 8) * cols;
    let dst_row = p.ty.row_bytes(p.ne[0]).expect("planned") as usize;
    let step_rows = (CHUNK_ELEMS / cols).max(1);
    let task_rows = (TASK_ELEMS / cols).max(1);
    let codec = |e| GgufError::Codec {
        name: p.gguf.clone(),
        source: e,
    };
    let mut buf = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let n = step_rows.min(rows - r0);
        let range = r0 * src_row..(r0 + n) * src_row;
        let src = ck.weights.bytes(t, range.clone());
        // NaN or infinite weights are refused, naming the first one.
        let refuse = |src: &[u8]| -> GgufError {
            let at = r0 * cols + first_non_finite(t.dtype, src).unwrap_or(0);
            GgufError::Plan(format!(
                "tensor '{}' holds a NaN or infinite value at flat index {at} (row {}, column {}); refusing to convert",
                p.hf,
                at / cols,
                at % cols
            ))
        };
        if p.shift == 0.0 && same_type(t.dtype, p.ty) {
            if first_non_finite(t.dtype, src).is_some() {
                return Err(refuse(src));
            }
            out.write_all(src)
                .map_err(|e| GgufError::io("<output>", e))?;
        } else {
            buf.resize(n * dst_row, 0u8);
            let any_bad = std::sync::atomic::AtomicBool::new(false);
            buf.par_chunks_mut(task_rows * dst_row)
                .zip(src.par_chunks(task_rows * src_row))
                .try_for_each(|(dst, src)| {
                    let mut f = vec![0f32; src.len() / (t.dtype.bitsize() / 8)];
                    if decode_into(t.dtype, src, p.shift, &mut f) {
                        any_bad.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    quantize_with(CodecPath::Fast, p.ty, &f, dst)
                })
                .map_err(codec)?;
            if any_bad.into_inner() {
                return Err(refuse(src));
            }
            out.write_all(&buf)
                .map_err(|e| GgufError::io("<output>", e))?;
        }
        ck.weights.release(t, range);
        pb.inc((n * dst_row) as u64);
        r0 += n;
    }
    Ok(())
}

/// A summary of what was written.
#[derive(Debug)]
pub struct Summary {
    pub tensors: usize,
    pub bytes: u64,
}

/// Converts `ck` into `out`'s temporary file; the caller renames it into place with
/// [`AtomicFile::commit`] (nothing appears under `out` unless everything succeeded).
pub fn write(ck: &Checkpoint, out: &Path, opts: &Options) -> Result<(Summary, AtomicFile)> {
    if let Some(wn) = attention_scale_warning(&ck.cfg) {
        eprintln!("\n{}\n{wn}\n{}\n", "!".repeat(78), "!".repeat(78));
    }
    let (plan, ftype) = match opts.mixture {
        None => {
            let ftype = FileType::for_type(opts.ty)
                .ok_or_else(|| anyhow!("unsupported type {}", opts.ty))?;
            (ck.plan(opts.ty), ftype as u32)
        }
        Some(ft) => (mixture_plan(ck, ft)?, ft.ftype),
    };
    let mut w = GgufWriter::new();
    metadata(&mut w, ck, ftype, &plan)?;
    for p in &plan {
        w.add_tensor(&p.gguf, p.ty, &p.ne)?;
    }
    let total: u64 = w.tensors().iter().map(|t| t.size).sum();
    let pb = crate::progress::byte_bar(total, opts.progress);
    let file = w
        .write_pending(out, |i, t, o| {
            pb.set_message(t.name.clone());
            convert_tensor(ck, &plan[i], o, &pb)
        })
        .with_context(|| format!("writing {}", out.display()))?;
    pb.finish_and_clear();
    Ok((
        Summary {
            tensors: plan.len(),
            bytes: total,
        },
        file,
    ))
}

/// The Ollama Modelfile: Gemma-3's turn format in Go template syntax (Gemma has no system
/// role: a system message is sent as a user turn), `<end_of_turn>` as stop. `{{-` trims the
/// template's own line breaks, so only the `\n`s of the turn format reach the prompt.
pub fn modelfile(from: &str, num_ctx: usize) -> crate::modelfile::Modelfile {
    let template = concat!(
        "{{- range $i, $_ := .Messages }}\n",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n",
        "{{- if or (eq .Role \"user\") (eq .Role \"system\") }}<start_of_turn>user\n",
        "{{ .Content }}<end_of_turn>\n",
        "{{ if $last }}<start_of_turn>model\n",
        "{{ end }}\n",
        "{{- else if eq .Role \"assistant\" }}<start_of_turn>model\n",
        "{{ .Content }}{{ if not $last }}<end_of_turn>\n",
        "{{ end }}\n",
        "{{- end }}\n",
        "{{- end }}"
    );
    crate::modelfile::Modelfile {
        from: if from.starts_with('/') {
            from.to_string()
        } else {
            format!("./{from}")
        },
        template: template.to_string(),
        system: None,
        parameters: vec![
            ("num_ctx".into(), num_ctx.to_string()),
            ("stop".into(), "\"<end_of_turn>\"".into()),
            ("temperature".into(), "1".into()),
            ("top_k".into(), "64".into()),
            ("top_p".into(), "0.95".into()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn size_labels_match_gguf_py() {
        assert_eq!(size_label(336_192), "336K");
        assert_eq!(size_label(999_885_952), "1000M");
        assert_eq!(size_label(27_009_002_240), "27B");
        assert_eq!(size_label(4_300_079_472), "4.3B");
    }

    #[test]
    fn config_defaults_and_both_layouts() {
        let p = Path::new("config.json");
        let c = parse_config(
            &json!({"architectures": ["Gemma3ForConditionalGeneration"],
                    "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504,
                    "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                    "query_pre_attn_scalar": 168, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024}}),
            p,
        )
        .unwrap();
        assert_eq!(c.vocab_size, 262_208);
        assert_eq!(c.rms_eps, 1e-6);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_local_theta, 1e4);
        assert_eq!(c.rope_linear_factor, Some(8.0));
        assert_eq!(c.sliding_pattern(), Some(6));
        assert!(!c.sliding[5] && c.sliding[4] && !c.sliding[11]);
        assert_eq!(c.llama_cpp_scale_dim(), 168);
        assert!(attention_scale_warning(&c).is_none());
        let d = parse_config(
            &json!({"architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 4, "head_dim": 16,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}}),
            p,
        )
        .unwrap();
        assert_eq!(
            (d.rope_theta, d.rope_local_theta, d.rope_linear_factor),
            (5e5, 2e4, None)
        );
        assert_eq!(d.sliding_pattern(), None);
        let w = attention_scale_warning(&d).unwrap();
        assert!(w.contains("256") && w.contains("1/sqrt(16)"), "{w}");
        let e = parse_config(&json!({"architectures": ["LlamaForCausalLM"]}), p).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown architecture 'LlamaForCausalLM'"),
            "{e}"
        );
    }

    #[test]
    fn prefixes_are_stripped_and_other_parts_dropped() {
        assert_eq!(
            canonical("model.layers.0.mlp.up_proj.weight"),
            Some("layers.0.mlp.up_proj.weight")
        );
        assert_eq!(
            canonical("language_model.model.norm.weight"),
            Some("norm.weight")
        );
        assert_eq!(
            canonical("model.language_model.embed_tokens.weight"),
            Some("embed_tokens.weight")
        );
        assert_eq!(canonical("vision_tower.vision_model.x"), None);
        assert_eq!(canonical("model.vision_tower.vision_model.x"), None);
        assert_eq!(
            canonical("multi_modal_projector.mm_input_projection_weight"),
            None
        );
        assert_eq!(canonical("lm_head.weight"), None);
        assert_eq!(canonical("language_model.lm_head.weight"), None);
    }

    #[test]
    fn chat_template_sources_in_gguf_py_order() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(chat_template(d.path(), None).unwrap(), None);
        std::fs::write(
            d.path().join("chat_template.json"),
            r#"{"chat_template": "from json"}"#,
        )
        .unwrap();
        assert_eq!(
            chat_template(d.path(), None).unwrap().as_deref(),
            Some("from json")
        );
        std::fs::write(d.path().join("chat_template.jinja"), "from jinja").unwrap();
        assert_eq!(
            chat_template(d.path(), None).unwrap().as_deref(),
            Some("from jinja")
        );
        let tc = json!({"chat_template": "from config"});
        assert_eq!(
            chat_template(d.path(), Some(&tc)).unwrap().as_deref(),
            Some("from config")
        );
    }

    #[test]
    fn vocabulary_padding_and_added_tokens() {
        let sp = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/gemma3/tokenizer/tokenizer.model");
        // tokenizer.json's added_tokens stand in when tokenizer_config.json has none.
        let tj = json!({"added_tokens": [{"id": 5, "content": "<start_of_turn>", "special": true},
                                         {"id": 601, "content": "\u{2581}extra", "special": false}]});
        let v = build_vocab(&sp, 608, None, Some(&tj)).unwrap();
        assert_eq!(v.tokens.len(), 608);
        assert_eq!(
            (v.tokens[5].as_str(), v.types[5], v.scores[5]),
            ("<start_of_turn>", TYPE_CONTROL, -1000.0)
        );
        // A user-defined piece not listed as added stays NORMAL, as in llama.cpp's converter.
        assert_eq!(
            (v.tokens[6].as_str(), v.types[6]),
            ("<end_of_turn>", TYPE_NORMAL)
        );
        assert_eq!(
            (v.tokens[601].as_str(), v.types[601], v.scores[601]),
            (" extra", TYPE_USER_DEFINED, -1000.0)
        );
        assert_eq!(
            (v.tokens[607].as_str(), v.types[607], v.scores[607]),
            ("[PAD607]", TYPE_UNUSED, -10000.0)
        );
        let e = build_vocab(&sp, 599, None, None).unwrap_err().to_string();
        assert!(
            e.contains("vocabulary larger than the embedding")
                && e.contains("600 pieces")
                && e.contains("599 rows"),
            "{e}"
        );
    }

    #[test]
    fn decoding_adds_the_norm_shift_exactly() {
        let mut f = [0f32; 3];
        let src: Vec<u8> = [0.5f32, -1.0, 3.0]
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
            .collect();
        decode_into(Dtype::BF16, &src, 1.0, &mut f);
        assert_eq!(f, [1.5, 0.0, 4.0]);
        let src: Vec<u8> = [0.25f32, 2.0, -8.0]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
            .collect();
        decode_into(Dtype::F16, &src, 0.0, &mut f);
        assert_eq!(f, [0.25, 2.0, -8.0]);
    }
}
