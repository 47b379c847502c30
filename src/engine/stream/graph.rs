//! Gemma-3 as per-layer ggml graphs: the hyper-parameters read the way llama.cpp reads them,
//! the weight and state tensors (descriptors only; their memory is placed by the executor), and
//! the three graph kinds a step runs: input (embedding rows), one layer, output (norm, tied
//! head, soft-cap). The op sequence mirrors llama.cpp's `src/models/gemma3.cpp` with flash
//! attention and an F16 KV cache (what a default llama.cpp context resolves to on the CPU), so a
//! streamed run and llama.cpp fully resident compute the same floats.

use super::backend::WeightOp;
use crate::gguf::GgufModel;
use crate::quant::GgmlType;
use anyhow::{anyhow, bail, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::null_mut;

/// `GGML_ROPE_TYPE_NEOX` (a `#define` in ggml.h, not in the generated bindings).
const ROPE_TYPE_NEOX: i32 = 2;
/// Largest width or count taken from metadata (far above any real model's, low enough that
/// products of two stay far from overflow).
const MAX_DIM: i64 = 1 << 24;
/// Most nodes one layer graph holds (about 45 are used).
pub(crate) const GRAPH_NODES: usize = 256;

/// The 13 tensors of a Gemma-3 block, in the order the arrays below use.
pub(crate) const LAYER_TENSORS: [&str; 13] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "attn_q_norm",
    "attn_k_norm",
    "post_attention_norm",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "post_ffw_norm",
];
const ATTN_NORM: usize = 0;
const WQ: usize = 1;
const WK: usize = 2;
const WV: usize = 3;
const WO: usize = 4;
const Q_NORM: usize = 5;
const K_NORM: usize = 6;
const POST_ATTN_NORM: usize = 7;
const FFN_NORM: usize = 8;
const FFN_GATE: usize = 9;
const FFN_UP: usize = 10;
const FFN_DOWN: usize = 11;
const POST_FFW_NORM: usize = 12;

/// Gemma-3 hyper-parameters, with llama.cpp's defaults and rules (`llama-model.cpp`,
/// `models/gemma3.cpp`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
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
    /// RoPE base and scale of global layers (`rope.freq_base`, 1/`rope.scaling.factor`).
    pub rope_base: f32,
    pub rope_scale: f32,
    /// RoPE base of sliding layers (`rope.freq_base_swa`, default 1e4; never scaled).
    pub rope_base_swa: f32,
    /// Q is multiplied by this before attention.
    pub attn_scale: f32,
    /// `final_logit_softcapping` (0: none).
    pub softcap: f32,
}

impl Hparams {
    pub fn from_gguf(f: &GgufModel) -> Result<Hparams> {
        let arch = f.get_str("general.architecture")?;
        if arch != "gemma3" {
            bail!("--stream-layers runs gemma3 models; this one is '{arch}'");
        }
        let u = |k: &str| -> Result<u64> {
            f.get(&format!("gemma3.{k}"))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| anyhow!("metadata key 'gemma3.{k}' is missing or not an integer"))
        };
        let fl = |k: &str| -> Option<f32> {
            f.get(&format!("gemma3.{k}"))
                .and_then(|v| v.as_f64())
                .map(|x| x as f32)
        };
        let n_layer = u("block_count")? as usize;
        let n_embd = u("embedding_length")? as i64;
        let n_head = u("attention.head_count")? as i64;
        let n_head_kv = u("attention.head_count_kv").unwrap_or(n_head as u64) as i64;
        let head_dim = u("attention.key_length").unwrap_or((n_embd / n_head.max(1)) as u64) as i64;
        let head_dim_v = u("attention.value_length").unwrap_or(head_dim as u64) as i64;
        if head_dim_v != head_dim {
            bail!(
                "gemma3 with key_length {head_dim} != value_length {head_dim_v} is not supported"
            );
        }
        let n_ff = u("feed_forward_length")? as i64;
        let n_ctx_train = u("context_length")?;
        let eps = fl("attention.layer_norm_rms_epsilon").ok_or_else(|| {
            anyhow!("metadata key 'gemma3.attention.layer_norm_rms_epsilon' is missing")
        })?;
        // Bounds before anything is sized from them: every count must be positive, and the
        // layers must exist in the file (13 tensors each).
        let max_layers = f.n_tensors() / LAYER_TENSORS.len();
        if n_layer == 0 || n_layer > max_layers {
            bail!(
                "metadata key 'gemma3.block_count' is {n_layer}, but the file holds tensors for at most {max_layers} layers"
            );
        }
        for (k, v) in [
            ("embedding_length", n_embd),
            ("attention.head_count", n_head),
            ("attention.head_count_kv", n_head_kv),
            ("attention.key_length", head_dim),
            ("feed_forward_length", n_ff),
        ] {
            if !(1..=MAX_DIM).contains(&v) {
                bail!("metadata key 'gemma3.{k}' is {v}, outside 1..={MAX_DIM}");
            }
        }
        if n_head % n_head_kv != 0 {
            bail!("metadata: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}");
        }
        let n_ctx_train = u32::try_from(n_ctx_train)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| {
                anyhow!("metadata key 'gemma3.context_length' is {n_ctx_train}, outside 1..=2^32-1")
            })?;
        if !(eps.is_finite() && eps > 0.0) {
            bail!("metadata key 'gemma3.attention.layer_norm_rms_epsilon' is {eps}, not a positive number");
        }
        let n_swa = u("attention.sliding_window").unwrap_or(0) as u32;
        // llama.cpp: a bool array per layer, or a period (default 6): layer il is sliding iff
        // il % n < n - 1 (n == 0: every layer sliding).
        let key = "gemma3.attention.sliding_window_pattern";
        let swa: Vec<bool> = if n_swa == 0 {
            vec![false; n_layer]
        } else if let Some(arr) = f.get(key).and_then(|v| v.as_array()) {
            let v = arr
                .to_u64_vec()
                .ok_or_else(|| anyhow!("metadata key '{key}' is not a bool array"))?;
            if v.len() != n_layer {
                bail!(
                    "metadata key '{key}' has {} entries for {n_layer} layers",
                    v.len()
                );
            }
            v.into_iter().map(|x| x != 0).collect()
        } else {
            let p = f.get(key).and_then(|v| v.as_u64()).unwrap_or(6) as usize;
            (0..n_layer).map(|il| p == 0 || il % p < p - 1).collect()
        };
        let rope_base = fl("rope.freq_base").unwrap_or(10_000.0);
        let factor = fl("rope.scaling.factor").unwrap_or(0.0);
        let scaling_none = f
            .get("gemma3.rope.scaling.type")
            .and_then(|v| v.as_str())
            .is_some_and(|s| s == "none");
        let rope_scale = if scaling_none || factor == 0.0 {
            1.0
        } else {
            1.0 / factor
        };
        let rope_base_swa = fl("rope.freq_base_swa").unwrap_or(10_000.0);
        // llama.cpp keys the 27B rule on the layer count (LLM_TYPE_27B <=> 62 layers).
        let attn_scale = if n_layer == 62 {
            1.0 / ((n_embd / n_head) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        let softcap = fl("final_logit_softcapping").unwrap_or(0.0);
        let embd = f.tensor("token_embd.weight")?;
        let n_vocab = embd.info.ne.get(1).copied().unwrap_or(0) as i64;
        if n_vocab < 1 {
            bail!(
                "tensor 'token_embd.weight' has no rows (shape {:?})",
                embd.info.ne
            );
        }
        Ok(Hparams {
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_vocab,
            n_ctx_train,
            eps,
            n_swa,
            swa,
            rope_base,
            rope_scale,
            rope_base_swa,
            attn_scale,
            softcap,
        })
    }
}

/// A ggml context over memory this struct owns (so ggml never allocates for it).
pub(crate) struct Ctx {
    pub ptr: *mut sys::ggml_context,
    _mem: Vec<u8>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("bytes", &self._mem.len())
            .finish()
    }
}

impl Ctx {
    /// A context for `n_tensors` tensor descriptors (no data) and optionally one graph.
    pub fn new(n_tensors: usize, graph_nodes: usize) -> Result<Ctx> {
        // SAFETY: pure size computations on ggml's static layout constants.
        let size = unsafe {
            sys::ggml_tensor_overhead() * n_tensors
                + if graph_nodes > 0 {
                    sys::ggml_graph_overhead_custom(graph_nodes, false)
                } else {
                    0
                }
        } + 1024;
        let mut mem = vec![0u8; size];
        let params = sys::ggml_init_params {
            mem_size: size,
            mem_buffer: mem.as_mut_ptr().cast(),
            no_alloc: true,
        };
        // SAFETY: `mem` is `size` bytes, lives as long as the context (both owned by `Ctx`,
        // freed context first in Drop), and is not touched by Rust while ggml uses it.
        let ptr = unsafe { sys::ggml_init(params) };
        if ptr.is_null() {
            bail!("ggml_init failed for a context of {size} bytes");
        }
        Ok(Ctx { ptr, _mem: mem })
    }

    /// Forgets every tensor and graph (no memory is freed or allocated).
    pub fn reset(&mut self) {
        // SAFETY: `ptr` is a live context; tensors from it are not used after this call (the
        // graph builders rebuild everything they need after a reset).
        unsafe { sys::ggml_reset(self.ptr) }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from ggml_init and is freed once; the memory it used is ours and
        // is dropped after this.
        unsafe { sys::ggml_free(self.ptr) }
    }
}

/// Forgets where `t`'s data was (memory, buffer, the buffer type's per-tensor extra).
///
/// # Safety
/// `t` is a live descriptor no graph in flight uses.
pub(crate) unsafe fn detach(t: *mut sys::ggml_tensor) {
    // SAFETY: the caller's contract.
    unsafe {
        (*t).data = null_mut();
        (*t).buffer = null_mut();
        (*t).extra = null_mut();
    }
}

/// Places `t` at `addr` in `buf` (detached first; ggml checks the bound and runs the buffer
/// type's `init_tensor`).
///
/// # Safety
/// `t` is a live descriptor no graph in flight uses, `buf` a live buffer, `addr` inside it.
pub(crate) unsafe fn place_tensor(
    buf: sys::ggml_backend_buffer_t,
    t: *mut sys::ggml_tensor,
    addr: usize,
) -> Result<()> {
    // SAFETY: the caller's contract.
    let st = unsafe {
        detach(t);
        sys::ggml_backend_tensor_alloc(buf, t, addr as *mut _)
    };
    if st != sys::GGML_STATUS_SUCCESS {
        bail!("placing a tensor in a backend buffer failed (status {st})");
    }
    Ok(())
}

/// A weight tensor: its ggml descriptor, where its bytes are (which file of a split set, the
/// absolute offset there) and the op it feeds (what its placement is decided on).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WTensor {
    pub t: *mut sys::ggml_tensor,
    pub part: usize,
    pub file_off: u64,
    pub size: u64,
    pub op: WeightOp,
}

/// Descriptors of every weight tensor (the executor gives them memory).
#[derive(Debug)]
pub(crate) struct Weights {
    pub _ctx: Ctx,
    /// Per layer, the tensors of [`LAYER_TENSORS`] in that order.
    pub layers: Vec<Vec<WTensor>>,
    pub tok_embd: WTensor,
    pub output_norm: WTensor,
}

impl Weights {
    /// Describes every weight, checking each tensor's type and shape against the
    /// hyper-parameters (as llama.cpp's `create_tensor` does) before ggml sees it.
    pub fn new(f: &GgufModel, hp: &Hparams) -> Result<Weights> {
        let ctx = Ctx::new(hp.n_layer * LAYER_TENSORS.len() + 4, 0)?;
        let mk = |name: &str, want: &[i64], op: WeightOp| -> Result<WTensor> {
            let v = f.tensor(name)?;
            let info = v.info;
            let ne: Vec<i64> = info.ne.iter().map(|&x| x as i64).collect();
            if ne != want {
                bail!("tensor '{name}' has shape {ne:?}, the metadata says {want:?}");
            }
            if op == WeightOp::Mul && info.ty != GgmlType::F32 {
                bail!("tensor '{name}' is {}, norms must be F32", info.ty.name());
            }
            // SAFETY: `ctx` is a live no-alloc context with room for every tensor created
            // here; `ne` holds 1 or 2 dimensions (checked against `want` above).
            let t = unsafe {
                sys::ggml_new_tensor(
                    ctx.ptr,
                    info.ty.id() as sys::ggml_type,
                    ne.len() as i32,
                    ne.as_ptr(),
                )
            };
            if t.is_null() {
                bail!("ggml could not describe tensor '{name}'");
            }
            // SAFETY: `t` was just created and is valid.
            let nbytes = unsafe { sys::ggml_nbytes(t) } as u64;
            if nbytes != info.size {
                bail!(
                    "tensor '{name}': ggml computes {nbytes} bytes, the file holds {}",
                    info.size
                );
            }
            let loc = f.location(name)?;
            Ok(WTensor {
                t,
                part: loc.part,
                file_off: loc.offset,
                size: info.size,
                op,
            })
        };
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let mut v = Vec::with_capacity(LAYER_TENSORS.len());
            for (i, n) in LAYER_TENSORS.iter().enumerate() {
                let (shape, op) = layer_tensor_shape(hp, i);
                v.push(mk(&format!("blk.{il}.{n}.weight"), &shape, op)?);
            }
            layers.push(v);
        }
        let tok_embd = mk(
            "token_embd.weight",
            &[hp.n_embd, hp.n_vocab],
            WeightOp::MulMat,
        )?;
        let output_norm = mk("output_norm.weight", &[hp.n_embd], WeightOp::Mul)?;
        if f.tensor("output.weight").is_ok() {
            bail!("gemma3 with a separate output.weight is not supported by --stream-layers (tied embeddings expected)");
        }
        Ok(Weights {
            _ctx: ctx,
            layers,
            tok_embd,
            output_norm,
        })
    }
}

/// The shape llama.cpp's gemma3 loader expects for layer tensor `i` of [`LAYER_TENSORS`], and
/// the op it feeds (`src/llama-model.cpp`, `LLM_ARCH_GEMMA3`).
fn layer_tensor_shape(hp: &Hparams, i: usize) -> (Vec<i64>, WeightOp) {
    let (e, hd) = (hp.n_embd, hp.head_dim);
    let (q, kv) = (hp.n_head * hd, hp.n_head_kv * hd);
    match i {
        WQ => (vec![e, q], WeightOp::MulMat),
        WK | WV => (vec![e, kv], WeightOp::MulMat),
        WO => (vec![q, e], WeightOp::MulMat),
        Q_NORM | K_NORM => (vec![hd], WeightOp::Mul),
        FFN_GATE | FFN_UP => (vec![e, hp.n_ff], WeightOp::MulMat),
        FFN_DOWN => (vec![hp.n_ff, e], WeightOp::MulMat),
        _ => (vec![e], WeightOp::Mul),
    }
}

/// KV cells llama.cpp allocates for a context of `n_ctx` (`cparams.n_ctx = GGML_PAD(n_ctx,
/// 256)` in `src/llama-context.cpp`; with the default `swa_full`, sliding-window layers get as
/// many).
pub(crate) fn kv_cells(n_ctx: i64) -> i64 {
    (n_ctx.max(1) + KV_PAD - 1) / KV_PAD * KV_PAD
}

/// KV cells a graph attends over after `used` positions are filled, as llama.cpp counts them
/// (`llama_kv_cache::get_n_kv`: the used cells padded to 256, at least 256, at most the
/// cache). The count matters beyond the masked cells: ggml's CPU flash attention splits a
/// one-token query's KV cells into one chunk per thread once there are 512 or more, so the
/// chunk bounds, and with them the rounding, follow this count.
pub(crate) fn n_kv_cells(used: i64, cells: i64) -> i64 {
    cells.min(KV_PAD.max((used + KV_PAD - 1) / KV_PAD * KV_PAD))
}

/// llama.cpp's KV padding (`n_pad_cur = max(n_pad, 256)`).
const KV_PAD: i64 = 256;

/// Device-resident state: KV cache per layer (F16), the activations, the inputs.
#[derive(Debug)]
pub(crate) struct State {
    pub ctx: Ctx,
    pub k: Vec<*mut sys::ggml_tensor>,
    pub v: Vec<*mut sys::ggml_tensor>,
    /// Activations [n_embd, n_ubatch], f32, read and overwritten by every layer.
    pub x: *mut sys::ggml_tensor,
    pub pos: *mut sys::ggml_tensor,
    pub out_ids: *mut sys::ggml_tensor,
    /// Masks [n_ctx, n_ubatch] f16: causal (global layers) and causal + window (sliding).
    pub mask_g: *mut sys::ggml_tensor,
    pub mask_s: *mut sys::ggml_tensor,
}

impl State {
    pub fn new(hp: &Hparams, n_ctx: i64, n_ub: i64) -> Result<State> {
        State::with_kv(hp, n_ctx, n_ub, |_| true)
    }

    /// A state whose KV cache covers only the layers `kv` selects (null for the others: their
    /// graphs must not be built on this state).
    pub fn with_kv(
        hp: &Hparams,
        n_ctx: i64,
        n_ub: i64,
        kv: impl Fn(usize) -> bool,
    ) -> Result<State> {
        let ctx = Ctx::new(2 * hp.n_layer + 8, 0)?;
        let row = hp.head_dim * hp.n_head_kv;
        // SAFETY: `ctx` is a live no-alloc context with room for 2*n_layer + 8 tensors.
        let st = unsafe {
            let nt =
                |ty: sys::ggml_type, a: i64, b: i64| sys::ggml_new_tensor_2d(ctx.ptr, ty, a, b);
            let f16 = GgmlType::F16.id() as sys::ggml_type;
            let f32 = GgmlType::F32.id() as sys::ggml_type;
            let i32t = GgmlType::I32.id() as sys::ggml_type;
            let cache = |il: usize| {
                if kv(il) {
                    nt(f16, row, n_ctx)
                } else {
                    null_mut()
                }
            };
            let k = (0..hp.n_layer).map(cache).collect();
            let v = (0..hp.n_layer).map(cache).collect();
            State {
                k,
                v,
                x: nt(f32, hp.n_embd, n_ub),
                pos: sys::ggml_new_tensor_1d(ctx.ptr, i32t, n_ub),
                out_ids: sys::ggml_new_tensor_1d(ctx.ptr, i32t, n_ub),
                mask_g: nt(f16, n_ctx, n_ub),
                mask_s: nt(f16, n_ctx, n_ub),
                ctx,
            }
        };
        Ok(st)
    }
}

/// What a layer graph computes: `n_tokens` new tokens after `n_past` cached ones, attending
/// over the first `n_kv` KV cells (llama.cpp's padded count, see [`n_kv_cells`]: cells past
/// `n_past + n_tokens` are masked); with
/// `n_out`, the last layer keeps only the rows listed in `out_ids` (llama.cpp's
/// `inp_out_ids`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub n_tokens: i64,
    pub n_past: i64,
    pub n_kv: i64,
    pub n_out: Option<i64>,
}

/// One Gemma-3 block over x, written back into x.
///
/// # Safety
/// `g` is a live, freshly reset graph context; `w` and `s` describe live tensors; the layer's
/// weight tensors have memory (data set).
pub(crate) unsafe fn build_layer(
    g: *mut sys::ggml_context,
    w: &Weights,
    s: &State,
    hp: &Hparams,
    il: usize,
    sh: Shape,
) -> *mut sys::ggml_cgraph {
    let lw = &w.layers[il];
    let (t, hd) = (sh.n_tokens, hp.head_dim);
    let n_kv = sh.n_kv;
    let swa = hp.swa[il];
    let (base, scale) = if swa {
        (hp.rope_base_swa, 1.0)
    } else {
        (hp.rope_base, hp.rope_scale)
    };
    // SAFETY: the caller's contract; views stay inside the state tensors because
    // n_past + n_tokens <= n_kv <= the KV cells and n_tokens <= n_ubatch (checked by the
    // executor).
    unsafe {
        let gf = sys::ggml_new_graph_custom(g, GRAPH_NODES, false);
        let norm = |x: *mut sys::ggml_tensor, wt: usize| {
            sys::ggml_mul(g, sys::ggml_rms_norm(g, x, hp.eps), lw[wt].t)
        };
        let x = sys::ggml_view_2d(g, s.x, hp.n_embd, t, (*s.x).nb[1], 0);
        let pos = sys::ggml_view_1d(g, s.pos, t, 0);
        let cur = norm(x, ATTN_NORM);
        let q = sys::ggml_reshape_3d(g, sys::ggml_mul_mat(g, lw[WQ].t, cur), hd, hp.n_head, t);
        let k = sys::ggml_reshape_3d(g, sys::ggml_mul_mat(g, lw[WK].t, cur), hd, hp.n_head_kv, t);
        let v = sys::ggml_reshape_3d(g, sys::ggml_mul_mat(g, lw[WV].t, cur), hd, hp.n_head_kv, t);
        let rope = |x| {
            sys::ggml_rope_ext(
                g,
                x,
                pos,
                null_mut(),
                hd as i32,
                ROPE_TYPE_NEOX,
                hp.n_ctx_train as i32,
                base,
                scale,
                0.0,
                1.0,
                32.0,
                1.0,
            )
        };
        let q = rope(norm(q, Q_NORM));
        let k = rope(norm(k, K_NORM));
        let q = sys::ggml_scale(g, q, hp.attn_scale);
        // Store this step's K and V (f32 -> f16, as llama.cpp's cache copy), then attend over
        // every cached position; the mask hides the future and, on sliding layers, the old.
        let (kc, vc) = (s.k[il], s.v[il]);
        assert!(!kc.is_null(), "layer {il} has no KV cache in this state");
        let row = (*kc).nb[1];
        let kdst = sys::ggml_view_2d(g, kc, hd * hp.n_head_kv, t, row, row * sh.n_past as usize);
        let vdst = sys::ggml_view_2d(g, vc, hd * hp.n_head_kv, t, row, row * sh.n_past as usize);
        sys::ggml_build_forward_expand(gf, sys::ggml_cpy(g, k, kdst));
        sys::ggml_build_forward_expand(gf, sys::ggml_cpy(g, v, vdst));
        let es = (*kc).nb[0];
        let kall = sys::ggml_view_3d(g, kc, hd, hp.n_head_kv, n_kv, es * hd as usize, row, 0);
        let vall = sys::ggml_view_3d(g, vc, hd, hp.n_head_kv, n_kv, es * hd as usize, row, 0);
        let mask_t = if swa { s.mask_s } else { s.mask_g };
        let mask = sys::ggml_view_2d(g, mask_t, n_kv, t, es * n_kv as usize, 0);
        let fa = sys::ggml_flash_attn_ext(
            g,
            sys::ggml_permute(g, q, 0, 2, 1, 3),
            sys::ggml_permute(g, kall, 0, 2, 1, 3),
            sys::ggml_permute(g, vall, 0, 2, 1, 3),
            mask,
            1.0,
            0.0,
            0.0,
        );
        sys::ggml_flash_attn_ext_set_prec(fa, sys::GGML_PREC_F32);
        let attn = sys::ggml_reshape_2d(g, fa, hd * hp.n_head, t);
        let mut cur = sys::ggml_mul_mat(g, lw[WO].t, attn);
        let mut inp = x;
        let mut n_rows = t;
        if let Some(n_out) = sh.n_out {
            let oi = sys::ggml_view_1d(g, s.out_ids, n_out, 0);
            cur = sys::ggml_get_rows(g, cur, oi);
            inp = sys::ggml_get_rows(g, inp, oi);
            n_rows = n_out;
        }
        let cur = norm(cur, POST_ATTN_NORM);
        let sa = sys::ggml_add(g, cur, inp);
        let h = norm(sa, FFN_NORM);
        let up = sys::ggml_mul_mat(g, lw[FFN_UP].t, h);
        let gate = sys::ggml_mul_mat(g, lw[FFN_GATE].t, h);
        let f = sys::ggml_geglu_split(g, gate, up);
        let f = sys::ggml_mul_mat(g, lw[FFN_DOWN].t, f);
        let f = norm(f, POST_FFW_NORM);
        let out = sys::ggml_add(g, f, sa);
        let dst = sys::ggml_view_2d(g, s.x, hp.n_embd, n_rows, (*s.x).nb[1], 0);
        sys::ggml_build_forward_expand(gf, sys::ggml_cpy(g, out, dst));
        gf
    }
}

/// logits[0..n_out] = softcap(rmsnorm(x) * output_norm @ token_embd^T).
///
/// # Safety
/// As [`build_layer`].
pub(crate) unsafe fn build_output(
    g: *mut sys::ggml_context,
    w: &Weights,
    s: &State,
    hp: &Hparams,
    n_out: i64,
) -> (*mut sys::ggml_cgraph, *mut sys::ggml_tensor) {
    // SAFETY: the caller's contract.
    unsafe {
        let gf = sys::ggml_new_graph_custom(g, GRAPH_NODES, false);
        let x = sys::ggml_view_2d(g, s.x, hp.n_embd, n_out, (*s.x).nb[1], 0);
        let cur = sys::ggml_mul(g, sys::ggml_rms_norm(g, x, hp.eps), w.output_norm.t);
        let mut cur = sys::ggml_mul_mat(g, w.tok_embd.t, cur);
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
