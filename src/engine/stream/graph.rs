//! The executor's tensors: weight descriptors (their memory is placed by the executor), the
//! device state (KV cache per layer, activations, inputs, masks) and the small ggml context
//! they live in. What the graphs compute is the family's (`crate::arch`).

use super::backend::WeightOp;
use crate::arch::{self, Family, Hparams, LayerIo, LayerWeights, TensorSpec};
use crate::gguf::GgufModel;
use crate::quant::GgmlType;
use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::null_mut;

pub(crate) use arch::GRAPH_NODES;

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
    pub family: Family,
    /// Per layer, the tensors of the family's table in its order (`None`: an optional one the
    /// file does not have).
    pub layers: Vec<Vec<Option<WTensor>>>,
    /// The embedding (looked up on the host; the output head too when tied).
    pub tok_embd: WTensor,
    pub output_norm: WTensor,
    /// An untied output head.
    pub output: Option<WTensor>,
    /// llama3's RoPE frequency factors.
    pub rope_freqs: Option<WTensor>,
}

impl Weights {
    /// Describes every weight, checking each tensor's type and shape against the
    /// hyper-parameters (as llama.cpp's `create_tensor` does) before ggml sees it.
    pub fn new(f: &GgufModel, hp: &Hparams) -> Result<Weights> {
        let table = hp.family.layer_tensors();
        let ctx = Ctx::new(hp.n_layer * table.len() + 8, 0)?;
        let mk = |spec: &TensorSpec, il: Option<usize>| -> Result<Option<WTensor>> {
            let name = spec.name_in(il);
            let Ok(v) = f.tensor(&name) else {
                if spec.required {
                    bail!("tensor '{name}' is missing");
                }
                return Ok(None);
            };
            let info = v.info;
            let want = spec.shape(hp);
            let ne: Vec<i64> = info.ne.iter().map(|&x| x as i64).collect();
            if ne != want {
                bail!("tensor '{name}' has shape {ne:?}, the metadata says {want:?}");
            }
            let op = WeightOp::from(spec.op, hp);
            if spec.op != arch::Op::MulMat && info.ty != GgmlType::F32 {
                bail!("tensor '{name}' is {}, it must be F32", info.ty.name());
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
            let loc = f.location(&name)?;
            Ok(Some(WTensor {
                t,
                part: loc.part,
                file_off: loc.offset,
                size: info.size,
                op,
            }))
        };
        if f.tensor("blk.0.attn_qkv.weight").is_ok() {
            bail!("fused Q/K/V weights (attn_qkv) are not supported by --stream-layers");
        }
        let mut layers = Vec::with_capacity(hp.n_layer);
        for il in 0..hp.n_layer {
            let v: Vec<Option<WTensor>> = table
                .iter()
                .map(|spec| mk(spec, Some(il)))
                .collect::<Result<_>>()?;
            layers.push(v);
        }
        let req = |t: Option<WTensor>, s: &TensorSpec| {
            t.ok_or_else(|| anyhow::anyhow!("tensor '{}' is missing", s.name))
        };
        let tok_embd = req(mk(&arch::TOKEN_EMBD, None)?, &arch::TOKEN_EMBD)?;
        let output_norm = req(mk(&arch::OUTPUT_NORM, None)?, &arch::OUTPUT_NORM)?;
        let globals = hp.family.global_tensors();
        let has = |s: &TensorSpec| globals.iter().any(|g| g.name == s.name);
        let output = if has(&arch::OUTPUT) {
            mk(&arch::OUTPUT, None)?
        } else {
            None
        };
        let rope_freqs = if has(&arch::ROPE_FREQS) {
            mk(&arch::ROPE_FREQS, None)?
        } else {
            None
        };
        // A tensor the family's graph does not use (qwen2's optional `output.bias`, a
        // longrope factor, ...) would be silently left out of the computation: refuse.
        let known = |name: &str| {
            if let Some(rest) = name.strip_prefix("blk.") {
                let mut it = rest.splitn(2, '.');
                let (il, t) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                il.parse::<usize>().is_ok_and(|l| l < hp.n_layer)
                    && table.iter().any(|s| s.name == t)
            } else {
                name == arch::TOKEN_EMBD.name || globals.iter().any(|g| g.name == name)
            }
        };
        if let Some(t) = f.tensor_infos().find(|t| !known(&t.name)) {
            bail!(
                "tensor '{}' is not part of the {} graph --stream-layers builds (it would be left out of the computation)",
                t.name,
                hp.family.arch()
            );
        }
        Ok(Weights {
            _ctx: ctx,
            family: hp.family,
            layers,
            tok_embd,
            output_norm,
            output,
            rope_freqs,
        })
    }

    /// The output head: `output.weight`, or the embedding when tied.
    pub fn head(&self) -> WTensor {
        self.output.unwrap_or(self.tok_embd)
    }

    /// The tensors on the device besides the layers: the head, the output norm, the RoPE
    /// factors.
    pub fn globals(&self) -> Vec<WTensor> {
        let mut v = vec![self.head(), self.output_norm];
        v.extend(self.rope_freqs);
        v
    }

    /// Names of [`Weights::globals`], in that order.
    pub fn global_names(&self) -> Vec<String> {
        let mut v = vec![
            if self.output.is_some() {
                arch::OUTPUT.name.to_string()
            } else {
                format!("{} (the tied output head)", arch::TOKEN_EMBD.name)
            },
            arch::OUTPUT_NORM.name.to_string(),
        ];
        if self.rope_freqs.is_some() {
            v.push(arch::ROPE_FREQS.name.to_string());
        }
        v
    }

    /// Layer `il`'s tensor names, in table order (absent ones included).
    pub fn layer_names(&self, il: usize) -> Vec<String> {
        self.family
            .layer_tensors()
            .iter()
            .map(|s| s.name_in(Some(il)))
            .collect()
    }

    /// Layer `il`'s present tensors, in table order.
    pub fn present(&self, il: usize) -> impl Iterator<Item = &WTensor> + '_ {
        self.layers[il].iter().flatten()
    }

    /// Layer `il`'s weights by role, for its graph.
    pub fn roles(&self, il: usize) -> LayerWeights {
        let mut w = LayerWeights::default();
        for (spec, t) in self.family.layer_tensors().iter().zip(&self.layers[il]) {
            if let Some(t) = t {
                w[spec.role] = t.t;
            }
        }
        w
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
    /// Per layer (None: this state holds no KV cache for that layer).
    pub k: Vec<Option<*mut sys::ggml_tensor>>,
    pub v: Vec<Option<*mut sys::ggml_tensor>>,
    /// Activations [n_embd, n_ubatch], f32, read and overwritten by every layer.
    pub x: *mut sys::ggml_tensor,
    pub pos: *mut sys::ggml_tensor,
    pub out_ids: *mut sys::ggml_tensor,
    /// I64 [n_ubatch]: each token's KV cell.
    pub kv_idx: *mut sys::ggml_tensor,
    /// Masks [cells, n_ubatch] f16: causal (global layers) and causal + window (sliding).
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
        let ctx = Ctx::new(2 * hp.n_layer + 9, 0)?;
        let row = hp.head_dim * hp.n_head_kv;
        // SAFETY: `ctx` is a live no-alloc context with room for 2*n_layer + 9 tensors.
        let st = unsafe {
            let nt =
                |ty: sys::ggml_type, a: i64, b: i64| sys::ggml_new_tensor_2d(ctx.ptr, ty, a, b);
            let f16 = GgmlType::F16.id() as sys::ggml_type;
            let f32 = GgmlType::F32.id() as sys::ggml_type;
            let i32t = GgmlType::I32.id() as sys::ggml_type;
            let i64t = GgmlType::I64.id() as sys::ggml_type;
            let cache = |il: usize| kv(il).then(|| nt(f16, row, n_ctx));
            let k = (0..hp.n_layer).map(cache).collect();
            let v = (0..hp.n_layer).map(cache).collect();
            State {
                k,
                v,
                x: nt(f32, hp.n_embd, n_ub),
                pos: sys::ggml_new_tensor_1d(ctx.ptr, i32t, n_ub),
                out_ids: sys::ggml_new_tensor_1d(ctx.ptr, i32t, n_ub),
                kv_idx: sys::ggml_new_tensor_1d(ctx.ptr, i64t, n_ub),
                mask_g: nt(f16, n_ctx, n_ub),
                mask_s: nt(f16, n_ctx, n_ub),
                ctx,
            }
        };
        Ok(st)
    }
}

impl State {
    /// What layer `il`'s graph reads and writes (its mask, its KV cache).
    pub fn io(
        &self,
        hp: &Hparams,
        il: usize,
        rope_freqs: *mut sys::ggml_tensor,
    ) -> Result<LayerIo> {
        let (Some(k), Some(v)) = (self.k[il], self.v[il]) else {
            bail!("layer {il} has no KV cache in this state");
        };
        Ok(LayerIo {
            x: self.x,
            pos: self.pos,
            out_ids: self.out_ids,
            kv_idx: self.kv_idx,
            mask: if hp.swa[il] { self.mask_s } else { self.mask_g },
            k,
            v,
            rope_freqs,
        })
    }
}
