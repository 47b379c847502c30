//! Architectures as data: per family, the GGUF tensor table (names, shapes from the
//! hyper-parameters, which tensors each layer has, which are optional), the hyper-parameters
//! read from GGUF metadata with the defaults and rules llama.cpp applies, and the per-layer ggml
//! graph (the only code part). The streaming executor knows no architecture: it asks a
//! [`Family`] for these.
//!
//! Families: `gemma3`; `llama` (Llama 2/3, Mistral: GQA, RoPE with llama3 frequency factors,
//! SwiGLU, RMSNorm, tied or untied output); `qwen2` (Q/K/V biases); `qwen3` (Q/K norms).
//! Mixture-of-experts files are refused by name.

mod decoder;
mod gemma3;
pub mod keys;
pub mod swa;

use crate::gguf::GgufModel;
use anyhow::{anyhow, bail, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::null_mut;

/// Largest width or count taken from metadata (far above any real model's, low enough that
/// products of two stay far from overflow).
pub const MAX_DIM: i64 = 1 << 24;
/// Most nodes one layer graph holds (about 50 are used).
pub const GRAPH_NODES: usize = 256;
/// `GGML_ROPE_TYPE_NEOX` (a `#define` in ggml.h, not in the generated bindings); 0 is the
/// "normal" RoPE on pairs of consecutive values.
pub const ROPE_TYPE_NEOX: i32 = 2;
pub const ROPE_TYPE_NORM: i32 = 0;
/// llama.cpp's RoPE defaults (`llama_context_default_params`): no YaRN extrapolation, attention
/// factor 1, beta_fast 32, beta_slow 1.
const YARN_EXT_FACTOR: f32 = 0.0;
const YARN_ATTN_FACTOR: f32 = 1.0;
const YARN_BETA_FAST: f32 = 32.0;
const YARN_BETA_SLOW: f32 = 1.0;
/// `rope.freq_base` when absent (`rope_freq_base_train` in `llama_model::load_hparams`).
const ROPE_FREQ_BASE_DEFAULT: f32 = 10_000.0;

/// A model family the streaming executor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gemma3,
    Llama,
    Qwen2,
    Qwen3,
}

/// The op a weight feeds (llama.cpp's `llm_tensor_info_for`): what its placement is tested on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A matrix: `ggml_mul_mat(w, x)`.
    MulMat,
    /// A norm's scale: `ggml_mul(x, w)`.
    Mul,
    /// A bias: `ggml_add(x, w)`.
    Add,
    /// RoPE frequency factors: `ggml_rope_ext(x, pos, w, ...)`.
    Rope,
}

/// One dimension of a tensor, named by the hyper-parameter it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Embd,
    /// `n_head * head_dim`.
    Q,
    /// `n_head_kv * head_dim`.
    Kv,
    HeadDim,
    Ff,
    Vocab,
    /// `n_rot / 2` (RoPE frequency factors).
    HalfRot,
}

/// What a layer tensor is for: graphs find their weights by role, whatever the family's
/// table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    Bq,
    Bk,
    Bv,
    Wo,
    Bo,
    QNorm,
    KNorm,
    PostAttnNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
    BGate,
    BUp,
    BDown,
    PostFfwNorm,
    /// A global tensor (not in a layer).
    Global,
}

/// How many layer roles there are (the size of a [`LayerWeights`] map).
pub const N_ROLES: usize = Role::Global as usize;

/// A tensor of the family's table: its GGUF name (`blk.N.` is prepended for layer tensors),
/// role, shape, op and whether a file may lack it.
#[derive(Debug, Clone, Copy)]
pub struct TensorSpec {
    pub name: &'static str,
    pub role: Role,
    pub dims: &'static [Dim],
    pub op: Op,
    pub required: bool,
}

const fn t(name: &'static str, role: Role, dims: &'static [Dim], op: Op) -> TensorSpec {
    TensorSpec {
        name,
        role,
        dims,
        op,
        required: true,
    }
}

/// An optional tensor (llama.cpp's `TENSOR_NOT_REQUIRED`): used when the file has it.
const fn opt(name: &'static str, role: Role, dims: &'static [Dim], op: Op) -> TensorSpec {
    TensorSpec {
        required: false,
        ..t(name, role, dims, op)
    }
}

impl TensorSpec {
    /// The shape llama.cpp's loader checks (`create_tensor`), in ggml order.
    pub fn shape(&self, hp: &Hparams) -> Vec<i64> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Embd => hp.n_embd,
                Dim::Q => hp.n_head * hp.head_dim,
                Dim::Kv => hp.n_head_kv * hp.head_dim,
                Dim::HeadDim => hp.head_dim,
                Dim::Ff => hp.n_ff,
                Dim::Vocab => hp.n_vocab,
                Dim::HalfRot => hp.rope.n_rot / 2,
            })
            .collect()
    }

    /// The GGUF name of this tensor in layer `il` (or, for a global one, as is).
    pub fn name_in(&self, il: Option<usize>) -> String {
        match il {
            Some(l) => format!("blk.{l}.{}", self.name),
            None => self.name.to_string(),
        }
    }
}

use Dim::*;

/// Where the output head and the embedding come from.
pub const TOKEN_EMBD: TensorSpec = t(
    "token_embd.weight",
    Role::Global,
    &[Embd, Vocab],
    Op::MulMat,
);
pub const OUTPUT_NORM: TensorSpec = t("output_norm.weight", Role::Global, &[Embd], Op::Mul);
/// Absent: the output head is `token_embd` (tied embeddings).
pub const OUTPUT: TensorSpec = opt("output.weight", Role::Global, &[Embd, Vocab], Op::MulMat);
/// llama3's RoPE frequency factors, one tensor shared by every layer.
pub const ROPE_FREQS: TensorSpec = opt("rope_freqs.weight", Role::Global, &[HalfRot], Op::Rope);

impl Family {
    /// The family of a GGUF `general.architecture`, or `None` when not streamed.
    pub fn from_arch(arch: &str) -> Option<Family> {
        Some(match arch {
            "gemma3" => Family::Gemma3,
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            _ => return None,
        })
    }

    /// The architecture name in GGUF metadata (the key prefix).
    pub const fn arch(self) -> &'static str {
        match self {
            Family::Gemma3 => "gemma3",
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    /// Every tensor a layer may hold, in the order graphs and weights index them.
    pub fn layer_tensors(self) -> &'static [TensorSpec] {
        match self {
            Family::Gemma3 => gemma3::LAYER,
            Family::Llama => decoder::LLAMA_LAYER,
            Family::Qwen2 => decoder::QWEN2_LAYER,
            Family::Qwen3 => decoder::QWEN3_LAYER,
        }
    }

    /// Global tensors besides `token_embd`: the output norm, an untied output head, RoPE
    /// frequency factors (as the family's loader creates them).
    pub fn global_tensors(self) -> &'static [TensorSpec] {
        match self {
            // Gemma-3 checkpoints tie the output to the embedding, but llama.cpp's gemma3 loader
            // takes an untied `output.weight` when a file has one (TENSOR_NOT_REQUIRED in
            // `llama_model_gemma3::load_arch_tensors`), as the others do.
            Family::Gemma3 | Family::Qwen2 | Family::Qwen3 => &[OUTPUT_NORM, OUTPUT],
            Family::Llama => &[OUTPUT_NORM, OUTPUT, ROPE_FREQS],
        }
    }
}

/// RoPE of a family's layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `ROPE_TYPE_NORM` or `ROPE_TYPE_NEOX` (`llama_model_rope_type`).
    pub kind: i32,
    pub n_rot: i64,
    pub base: f32,
    /// 1 / `rope.scaling.factor` (`rope_freq_scale_train`).
    pub scale: f32,
    /// Sliding-window layers' base and scale (Gemma-3: 1e4 and 1, never scaled).
    pub base_swa: f32,
    pub scale_swa: f32,
    /// `rope.scaling.original_context_length`, else the trained context.
    pub n_ctx_orig: u32,
}

/// Hyper-parameters, read the way llama.cpp reads them (`llama_model::load_hparams` and the
/// family's `load_arch_hparams`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub family: Family,
    pub n_layer: usize,
    pub n_embd: i64,
    pub n_head: i64,
    pub n_head_kv: i64,
    pub head_dim: i64,
    pub n_ff: i64,
    pub n_vocab: i64,
    pub n_ctx_train: u32,
    pub eps: f32,
    /// Sliding window (0: no sliding-window layers).
    pub n_swa: u32,
    /// Per layer: is it a sliding-window layer.
    pub swa: Vec<bool>,
    pub rope: Rope,
    /// Q is multiplied by this before attention (Gemma-3's `f_attention_scale`; 1 elsewhere).
    pub q_scale: f32,
    /// The attention's own scale (`kq_scale` of `build_attn`).
    pub kq_scale: f32,
    /// `final_logit_softcapping` (0: none).
    pub softcap: f32,
    /// The embedding rows are multiplied by this (Gemma: sqrt(n_embd); 1 elsewhere).
    pub embd_scale: f32,
    /// `output.weight` is absent: the output head is `token_embd`.
    pub tied: bool,
    /// `rope_freqs.weight` is present (llama3 frequency factors).
    pub rope_freqs: bool,
}

/// Metadata of one family, as `ARCH.KEY`.
struct Meta<'a> {
    f: &'a GgufModel,
    arch: &'static str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn uint(&self, k: &str) -> Result<Option<u64>> {
        match self.f.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| anyhow!("metadata key '{}' is not an integer", self.key(k))),
        }
    }

    fn req(&self, k: &str) -> Result<u64> {
        self.uint(k)?
            .ok_or_else(|| anyhow!("metadata key '{}' is missing", self.key(k)))
    }

    fn float(&self, k: &str) -> Result<Option<f32>> {
        match self.f.get(&self.key(k)) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| anyhow!("metadata key '{}' is not a number", self.key(k))),
        }
    }

    fn str(&self, k: &str) -> Option<&str> {
        self.f.get(&self.key(k)).and_then(|v| v.as_str())
    }

    /// A positive width or count, bounded by [`MAX_DIM`].
    fn dim(&self, k: &str, v: u64) -> Result<i64> {
        i64::try_from(v)
            .ok()
            .filter(|x| (1..=MAX_DIM).contains(x))
            .ok_or_else(|| {
                anyhow!(
                    "metadata key '{}' is {v}, outside 1..={MAX_DIM}",
                    self.key(k)
                )
            })
    }
}

impl Hparams {
    /// Reads and checks the hyper-parameters of a streamed family: every count positive and
    /// bounded, the layers present in the file, before anything is sized from them.
    pub fn from_gguf(f: &GgufModel) -> Result<Hparams> {
        let arch = f.get_str("general.architecture")?;
        let family = Family::from_arch(arch).ok_or_else(|| {
            anyhow!("--stream-layers runs gemma3, llama (Llama, Mistral), qwen2 and qwen3 models; this one is '{arch}'")
        })?;
        let m = Meta {
            f,
            arch: family.arch(),
        };
        if m.uint(keys::EXPERT_COUNT)?.is_some_and(|n| n > 1) {
            bail!("'{arch}' with experts (a mixture-of-experts model) is not supported by --stream-layers");
        }
        let n_layer = m.req(keys::BLOCK_COUNT)? as usize;
        let required = family.layer_tensors().iter().filter(|t| t.required).count();
        let max_layers = f.n_tensors() / required.max(1);
        if n_layer == 0 || n_layer > max_layers {
            bail!(
                "metadata key '{}' is {n_layer}, but the file holds tensors for at most {max_layers} layers",
                m.key(keys::BLOCK_COUNT)
            );
        }
        let n_embd = m.dim(keys::EMBEDDING_LENGTH, m.req(keys::EMBEDDING_LENGTH)?)?;
        let n_head = m.dim(keys::HEAD_COUNT, m.req(keys::HEAD_COUNT)?)?;
        let n_head_kv = m.dim(
            keys::HEAD_COUNT_KV,
            m.uint(keys::HEAD_COUNT_KV)?.unwrap_or(n_head as u64),
        )?;
        if n_head % n_head_kv != 0 {
            bail!("metadata: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}");
        }
        let head_dim = m.dim(
            keys::KEY_LENGTH,
            m.uint(keys::KEY_LENGTH)?
                .unwrap_or((n_embd / n_head) as u64),
        )?;
        let head_dim_v = m.uint(keys::VALUE_LENGTH)?.unwrap_or(head_dim as u64);
        if head_dim_v != head_dim as u64 {
            bail!(
                "{arch} with key_length {head_dim} != value_length {head_dim_v} is not supported"
            );
        }
        let n_ff = m.dim(keys::FEED_FORWARD_LENGTH, m.req(keys::FEED_FORWARD_LENGTH)?)?;
        let ctx = m.req(keys::CONTEXT_LENGTH)?;
        let n_ctx_train = u32::try_from(ctx).ok().filter(|&c| c > 0).ok_or_else(|| {
            anyhow!(
                "metadata key '{}' is {ctx}, outside 1..=2^32-1",
                m.key(keys::CONTEXT_LENGTH)
            )
        })?;
        let eps_key = keys::RMS_EPS;
        let eps = m
            .float(eps_key)?
            .ok_or_else(|| anyhow!("metadata key '{}' is missing", m.key(eps_key)))?;
        if !(eps.is_finite() && eps > 0.0) {
            bail!(
                "metadata key '{}' is {eps}, not a positive number",
                m.key(eps_key)
            );
        }
        let n_rot = m.dim(
            keys::ROPE_DIMENSION_COUNT,
            m.uint(keys::ROPE_DIMENSION_COUNT)?
                .unwrap_or(head_dim as u64),
        )?;
        if n_rot != head_dim {
            // llama.cpp refuses it for llama and asserts it in every graph streamed here.
            bail!("metadata: rope.dimension_count {n_rot} differs from the head size {head_dim}");
        }
        let base = m
            .float(keys::ROPE_FREQ_BASE)?
            .unwrap_or(ROPE_FREQ_BASE_DEFAULT);
        let scaling = m.str(keys::ROPE_SCALING_TYPE).unwrap_or("linear");
        let factor = match m.float(keys::ROPE_SCALING_FACTOR)? {
            Some(x) => x,
            None => m.float(keys::ROPE_SCALE_LINEAR)?.unwrap_or(0.0),
        };
        let scale = match scaling {
            "none" => 1.0,
            "linear" if factor == 0.0 => 1.0,
            "linear" => 1.0 / factor,
            other => bail!(
                "RoPE scaling '{other}' ({arch}.rope.scaling.type) is not supported by --stream-layers"
            ),
        };
        if !(base.is_finite() && base > 0.0 && scale.is_finite() && scale > 0.0) {
            bail!("metadata: RoPE base {base} / scale {scale} are not positive numbers");
        }
        let n_ctx_orig = match m.uint(keys::ROPE_SCALING_ORIG_CTX)? {
            Some(v) => u32::try_from(v).unwrap_or(n_ctx_train),
            None => n_ctx_train,
        };
        let embd = f.tensor(TOKEN_EMBD.name)?;
        let n_vocab = embd.info.ne.get(1).copied().unwrap_or(0) as i64;
        if !(1..=MAX_DIM).contains(&n_vocab) {
            bail!(
                "tensor '{}' has shape {:?}: no vocabulary rows",
                TOKEN_EMBD.name,
                embd.info.ne
            );
        }
        let tied = f.tensor(OUTPUT.name).is_err();
        let rope_freqs = f.tensor(ROPE_FREQS.name).is_ok();
        let mut hp = Hparams {
            family,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            n_ctx_train,
            eps,
            n_swa: 0,
            swa: vec![false; n_layer],
            rope: Rope {
                kind: ROPE_TYPE_NEOX,
                n_rot,
                base,
                scale,
                base_swa: base,
                scale_swa: scale,
                n_ctx_orig,
            },
            q_scale: 1.0,
            kq_scale: 1.0 / (head_dim as f32).sqrt(),
            softcap: 0.0,
            embd_scale: 1.0,
            tied,
            rope_freqs,
        };
        match family {
            Family::Gemma3 => gemma3::hparams(&m, &mut hp)?,
            Family::Llama => {
                hp.rope.kind = ROPE_TYPE_NORM;
                if let Some(s) = m.float(keys::ATTN_SCALE)?.filter(|&s| s != 0.0) {
                    hp.kq_scale = s;
                }
            }
            Family::Qwen2 | Family::Qwen3 => {}
        }
        if !family
            .global_tensors()
            .iter()
            .any(|t| t.name == OUTPUT.name)
            && !tied
        {
            bail!("{arch} with a separate output.weight is not supported (its output is the tied embedding)");
        }
        Ok(hp)
    }

    /// The rows of a family's tensors this file holds, checked (shape and type) as llama.cpp's
    /// `create_tensor` checks them.
    pub fn spec_shape(&self, s: &TensorSpec) -> Vec<i64> {
        s.shape(self)
    }
}

/// What a layer graph computes: `n_tokens` new tokens, each written to the KV cell the
/// executor's `kv_idx` input names (llama.cpp's `set_rows` into the cache), attending over the
/// `n_kv` cells from `kv_base` (one sequence's cells, padded as llama.cpp pads them, or every
/// sequence's cells for a step that decodes several sequences at once: the mask keeps each
/// token to its own); with `n_out`, the last layer keeps only the rows listed in `out_ids`
/// (llama.cpp's `inp_out_ids`).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub n_tokens: i64,
    pub kv_base: i64,
    pub n_kv: i64,
    pub n_out: Option<i64>,
}

/// The tensors a layer graph reads and writes besides its weights, owned by the executor.
#[derive(Debug, Clone, Copy)]
pub struct LayerIo {
    /// Activations `[n_embd, n_ubatch]` f32, read and overwritten.
    pub x: *mut sys::ggml_tensor,
    pub pos: *mut sys::ggml_tensor,
    pub out_ids: *mut sys::ggml_tensor,
    /// I64 `[n_ubatch]`: the KV cell each token of the batch is written to.
    pub kv_idx: *mut sys::ggml_tensor,
    /// This layer's mask `[cells, n_ubatch]` f16 (causal, and the window on sliding layers).
    pub mask: *mut sys::ggml_tensor,
    /// This layer's KV cache `[n_head_kv * head_dim, cells]` f16.
    pub k: *mut sys::ggml_tensor,
    pub v: *mut sys::ggml_tensor,
    /// `rope_freqs.weight`, when the model has it.
    pub rope_freqs: *mut sys::ggml_tensor,
}

/// A layer's weights by [`Role`] (null: the file or the family has none).
#[derive(Debug, Clone, Copy)]
pub struct LayerWeights(pub [*mut sys::ggml_tensor; N_ROLES]);

impl Default for LayerWeights {
    fn default() -> Self {
        LayerWeights([null_mut(); N_ROLES])
    }
}

impl std::ops::Index<Role> for LayerWeights {
    type Output = *mut sys::ggml_tensor;
    fn index(&self, r: Role) -> &Self::Output {
        &self.0[r as usize]
    }
}

impl std::ops::IndexMut<Role> for LayerWeights {
    fn index_mut(&mut self, r: Role) -> &mut Self::Output {
        &mut self.0[r as usize]
    }
}

/// One layer over `io.x`, written back into `io.x`.
///
/// # Safety
/// `g` is a live, freshly reset graph context; every tensor is live and has memory (the
/// weights placed); `b` fits the state (kv_base + n_kv <= cells, every kv_idx < cells, n_tokens <=
/// n_ubatch, n_out <= n_tokens).
pub unsafe fn build_layer(
    g: *mut sys::ggml_context,
    w: &LayerWeights,
    io: &LayerIo,
    hp: &Hparams,
    il: usize,
    b: Batch,
) -> *mut sys::ggml_cgraph {
    // SAFETY: the caller's contract.
    unsafe {
        let gf = sys::ggml_new_graph_custom(g, GRAPH_NODES, false);
        let out = match hp.family {
            Family::Gemma3 => gemma3::layer(g, gf, w, io, hp, il, b),
            _ => decoder::layer(g, gf, w, io, hp, il, b),
        };
        let n_rows = b.n_out.unwrap_or(b.n_tokens);
        let dst = sys::ggml_view_2d(g, io.x, hp.n_embd, n_rows, (*io.x).nb[1], 0);
        sys::ggml_build_forward_expand(gf, sys::ggml_cpy(g, out, dst));
        gf
    }
}

/// `logits[0..n_out] = head(rmsnorm(x) * output_norm)`, soft-capped where the family caps.
///
/// # Safety
/// As [`build_layer`]; `head` and `norm` have memory.
pub unsafe fn build_output(
    g: *mut sys::ggml_context,
    x: *mut sys::ggml_tensor,
    norm: *mut sys::ggml_tensor,
    head: *mut sys::ggml_tensor,
    hp: &Hparams,
    n_out: i64,
) -> (*mut sys::ggml_cgraph, *mut sys::ggml_tensor) {
    // SAFETY: the caller's contract.
    unsafe {
        let gf = sys::ggml_new_graph_custom(g, GRAPH_NODES, false);
        let x = sys::ggml_view_2d(g, x, hp.n_embd, n_out, (*x).nb[1], 0);
        let cur = sys::ggml_mul(g, sys::ggml_rms_norm(g, x, hp.eps), norm);
        let mut cur = sys::ggml_mul_mat(g, head, cur);
        if hp.softcap != 0.0 {
            cur = sys::ggml_scale(g, cur, 1.0 / hp.softcap);
            cur = sys::ggml_tanh(g, cur);
            cur = sys::ggml_scale(g, cur, hp.softcap);
        }
        sys::ggml_set_output(cur);
        sys::ggml_build_forward_expand(gf, cur);
        (gf, cur)
    }
}

/// The attention block every family shares (llama.cpp's `build_attn` with a KV cache and
/// flash attention, F16 cache): store this step's K and V (f32 -> f16, as the cache copy),
/// attend over the first `n_kv` cells under the mask, project with `wo` (+ its bias).
///
/// # Safety
/// As [`build_layer`]; `q` `[head_dim, n_head, t]`, `k`/`v` `[head_dim, n_head_kv, t]`.
#[allow(clippy::too_many_arguments)]
unsafe fn attention(
    g: *mut sys::ggml_context,
    gf: *mut sys::ggml_cgraph,
    io: &LayerIo,
    hp: &Hparams,
    b: Batch,
    q: *mut sys::ggml_tensor,
    k: *mut sys::ggml_tensor,
    v: *mut sys::ggml_tensor,
    wo: *mut sys::ggml_tensor,
    wo_b: *mut sys::ggml_tensor,
) -> *mut sys::ggml_tensor {
    let (t, hd) = (b.n_tokens, hp.head_dim);
    // SAFETY: the caller's contract; views stay inside the cache and mask tensors.
    unsafe {
        let (kc, vc) = (io.k, io.v);
        let row = (*kc).nb[1];
        // Each token's K and V row into its cell (f32 -> f16 as ggml's copy converts).
        let idx = sys::ggml_view_1d(g, io.kv_idx, t, 0);
        let k2 = sys::ggml_reshape_2d(g, k, hd * hp.n_head_kv, t);
        let v2 = sys::ggml_reshape_2d(g, v, hd * hp.n_head_kv, t);
        sys::ggml_build_forward_expand(gf, sys::ggml_set_rows(g, kc, k2, idx));
        sys::ggml_build_forward_expand(gf, sys::ggml_set_rows(g, vc, v2, idx));
        let es = (*kc).nb[0];
        let base = row * b.kv_base as usize;
        let kall = sys::ggml_view_3d(g, kc, hd, hp.n_head_kv, b.n_kv, es * hd as usize, row, base);
        let vall = sys::ggml_view_3d(g, vc, hd, hp.n_head_kv, b.n_kv, es * hd as usize, row, base);
        let mask = sys::ggml_view_2d(g, io.mask, b.n_kv, t, es * b.n_kv as usize, 0);
        let fa = sys::ggml_flash_attn_ext(
            g,
            sys::ggml_permute(g, q, 0, 2, 1, 3),
            sys::ggml_permute(g, kall, 0, 2, 1, 3),
            sys::ggml_permute(g, vall, 0, 2, 1, 3),
            mask,
            hp.kq_scale,
            0.0,
            0.0,
        );
        sys::ggml_flash_attn_ext_set_prec(fa, sys::GGML_PREC_F32);
        let attn = sys::ggml_reshape_2d(g, fa, hd * hp.n_head, t);
        let mut cur = sys::ggml_mul_mat(g, wo, attn);
        if !wo_b.is_null() {
            cur = sys::ggml_add(g, cur, wo_b);
        }
        cur
    }
}

/// RoPE of one layer (`ggml_rope_ext` with llama.cpp's context defaults).
///
/// # Safety
/// As [`build_layer`].
unsafe fn rope(
    g: *mut sys::ggml_context,
    x: *mut sys::ggml_tensor,
    io: &LayerIo,
    hp: &Hparams,
    il: usize,
    n_tokens: i64,
) -> *mut sys::ggml_tensor {
    let (base, scale) = if hp.swa[il] {
        (hp.rope.base_swa, hp.rope.scale_swa)
    } else {
        (hp.rope.base, hp.rope.scale)
    };
    // SAFETY: the caller's contract.
    unsafe {
        let pos = sys::ggml_view_1d(g, io.pos, n_tokens, 0);
        let factors = if io.rope_freqs.is_null() {
            null_mut()
        } else {
            io.rope_freqs
        };
        sys::ggml_rope_ext(
            g,
            x,
            pos,
            factors,
            hp.rope.n_rot as i32,
            hp.rope.kind,
            hp.rope.n_ctx_orig as i32,
            base,
            scale,
            YARN_EXT_FACTOR,
            YARN_ATTN_FACTOR,
            YARN_BETA_FAST,
            YARN_BETA_SLOW,
        )
    }
}

/// `rmsnorm(x) * w`.
///
/// # Safety
/// As [`build_layer`].
unsafe fn norm(
    g: *mut sys::ggml_context,
    x: *mut sys::ggml_tensor,
    w: *mut sys::ggml_tensor,
    eps: f32,
) -> *mut sys::ggml_tensor {
    // SAFETY: the caller's contract.
    unsafe { sys::ggml_mul(g, sys::ggml_rms_norm(g, x, eps), w) }
}

/// With `n_out`, keeps only the `out_ids` rows of `a` and `b` (the last layer when only some
/// positions' logits are wanted).
///
/// # Safety
/// As [`build_layer`].
unsafe fn keep_out_rows(
    g: *mut sys::ggml_context,
    io: &LayerIo,
    b: Batch,
    x: *mut sys::ggml_tensor,
    y: *mut sys::ggml_tensor,
) -> (*mut sys::ggml_tensor, *mut sys::ggml_tensor) {
    match b.n_out {
        // SAFETY: the caller's contract; n_out <= n_tokens rows.
        Some(n) => unsafe {
            let oi = sys::ggml_view_1d(g, io.out_ids, n, 0);
            (sys::ggml_get_rows(g, x, oi), sys::ggml_get_rows(g, y, oi))
        },
        None => (x, y),
    }
}
