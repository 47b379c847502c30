//! `--host-layers`: streamed layers computed by the CPU backend instead of crossing into the
//! device, placed as llama.cpp places the layers it keeps on the CPU (`-ngl` below the layer
//! count): each weight in the buffer type llama.cpp's CPU list gives it; those in the plain CPU
//! buffer type are used in place from the memory map (llama.cpp's mmap), those in AMX or
//! CPU_REPACK are repacked once into host buffers of that type (what llama.cpp does with them
//! too), so the same kernels run. The activations cross between the device state and a host
//! state of their own (`n_embd x n_tokens` floats each way), and these layers' KV cache lives
//! in host memory.

use super::graph::{self, Ctx, Hparams, Shape, State, Weights};
use super::ring::Seg;
use super::{choose_bufts, run_graph, Backend, Packing};
use crate::gguf::GgufModel;
use anyhow::{bail, Context, Result};
use llama_cpp_sys_2 as sys;

/// The CPU backend, the host state and the compute buffer for the host layers.
pub(crate) struct HostSide {
    pub backend: Backend,
    pub st: State,
    pub gctx: Ctx,
    pub galloc: sys::ggml_gallocr_t,
    pub compute_bytes: u64,
    state_buf: sys::ggml_backend_buffer_t,
    /// One CPU buffer over each part's memory map (the weights used in place).
    map_bufs: Vec<sys::ggml_backend_buffer_t>,
    /// The repacked weights' buffers.
    packed: Vec<sys::ggml_backend_buffer_t>,
    packed_bytes: u64,
}

impl HostSide {
    /// Places `layers`' weights and reserves their compute buffer for batches of `n_ub`
    /// tokens in a context of `n_ctx` with `n_cells` KV cells; `repack`: use the extra buffer
    /// types as llama.cpp does.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        file: &GgufModel,
        w: &Weights,
        hp: &Hparams,
        layers: &[usize],
        n_ctx: i64,
        n_cells: i64,
        n_ub: i64,
        threads: usize,
        repack: bool,
    ) -> Result<HostSide> {
        let backend = Backend::new(threads, true, !repack)?;
        let st = State::with_kv(hp, n_cells, n_ub, |il| layers.contains(&il))?;
        let gctx = Ctx::new(graph::GRAPH_NODES * 2, graph::GRAPH_NODES)?;
        // SAFETY: the backend's buffer type is live; the mappings are page-aligned, read-only
        // memory that outlives this struct (the executor keeps the file open), and ggml only
        // reads weights. Every handle is checked for null and freed in Drop.
        unsafe {
            let galloc = sys::ggml_gallocr_new(backend.buft);
            if galloc.is_null() {
                bail!("ggml_gallocr_new failed");
            }
            let mut h = HostSide {
                backend,
                st,
                gctx,
                galloc,
                compute_bytes: 0,
                state_buf: std::ptr::null_mut(),
                map_bufs: Vec::new(),
                packed: Vec::new(),
                packed_bytes: 0,
            };
            h.state_buf =
                sys::ggml_backend_alloc_ctx_tensors_from_buft(h.st.ctx.ptr, h.backend.buft);
            if h.state_buf.is_null() {
                bail!("could not allocate the host layers' KV cache and state");
            }
            sys::ggml_backend_buffer_clear(h.state_buf, 0);
            for part in file.parts() {
                let bytes = part.bytes();
                let b =
                    sys::ggml_backend_cpu_buffer_from_ptr(bytes.as_ptr() as *mut _, bytes.len());
                if b.is_null() {
                    bail!("ggml_backend_cpu_buffer_from_ptr failed on the memory map");
                }
                h.map_bufs.push(b);
            }
            let bufts = h.backend.weight_bufts.clone();
            // Which weights llama.cpp repacks, per layer; packed together per buffer type.
            let mut chosen = Vec::with_capacity(layers.len());
            let mut total = vec![0u64; bufts.len()];
            for &l in layers {
                let names: Vec<String> = graph::LAYER_TENSORS
                    .iter()
                    .map(|n| format!("blk.{l}.{n}.weight"))
                    .collect();
                for t in &w.layers[l] {
                    // The device side may have placed it (calibration); it is placed here now.
                    graph::detach(t.t);
                }
                let b = choose_bufts(&h.backend, &w.layers[l], &names)?;
                let pk = Packing::new(&h.backend, &w.layers[l], &b);
                for (i, n) in pk.bytes.iter().enumerate() {
                    if !bufts[i].plain_host {
                        total[i] += n;
                    }
                }
                chosen.push(pk);
            }
            let mut regions: Vec<Option<Seg>> = Vec::with_capacity(bufts.len());
            for (i, &n) in total.iter().enumerate() {
                if n == 0 || bufts[i].plain_host {
                    regions.push(None);
                    continue;
                }
                let buf = sys::ggml_backend_buft_alloc_buffer(bufts[i].ptr, n as usize);
                if buf.is_null() {
                    bail!("could not allocate {n} bytes of host memory for repacked host layers");
                }
                h.packed.push(buf);
                h.packed_bytes += sys::ggml_backend_buffer_get_size(buf) as u64;
                regions.push(Some(Seg {
                    buf,
                    base: sys::ggml_backend_buffer_get_base(buf) as usize,
                    size: n,
                }));
            }
            let mut shift = vec![0u64; bufts.len()];
            for (&l, pk) in layers.iter().zip(&chosen) {
                for (t, &(b, off)) in w.layers[l].iter().zip(&pk.at) {
                    let bytes = file.parts()[t.part].bytes();
                    if bufts[b].plain_host {
                        let base = bytes.as_ptr() as usize;
                        graph::place_tensor(h.map_bufs[t.part], t.t, base + t.file_off as usize)
                            .with_context(|| format!("layer {l}'s weights in the memory map"))?;
                        continue;
                    }
                    let seg = regions[b].context("a repacked weight has no region")?;
                    graph::place_tensor(seg.buf, t.t, seg.base + (shift[b] + off) as usize)?;
                    let src = bytes
                        .get(t.file_off as usize..(t.file_off + t.size) as usize)
                        .context("tensor data outside the file")?;
                    super::ring::set_tensor(seg.buf, t.t, src);
                }
                for (s, (i, n)) in shift.iter_mut().zip(pk.bytes.iter().enumerate()) {
                    if !bufts[i].plain_host {
                        *s += n;
                    }
                }
            }
            // The worst case: a full batch at the end of the context, on one sliding and one
            // global layer among ours.
            let mut kinds: Vec<usize> = Vec::new();
            for swa in [true, false] {
                if let Some(&l) = layers.iter().find(|&&l| hp.swa[l] == swa) {
                    kinds.push(l);
                }
            }
            for l in kinds {
                h.gctx.reset();
                let sh = Shape {
                    n_tokens: n_ub,
                    n_past: n_ctx - n_ub,
                    n_kv: n_cells,
                    n_out: None,
                };
                let gf = graph::build_layer(h.gctx.ptr, w, &h.st, hp, l, sh);
                if !sys::ggml_gallocr_reserve(h.galloc, gf) {
                    bail!("could not allocate the host layers' compute buffer");
                }
            }
            h.compute_bytes = sys::ggml_gallocr_get_buffer_size(h.galloc, 0) as u64;
            Ok(h)
        }
    }

    /// Computes layer `il` (one of ours) over the host state's activations.
    pub fn compute_layer(&mut self, w: &Weights, hp: &Hparams, il: usize, sh: Shape) -> Result<()> {
        self.gctx.reset();
        // SAFETY: the graph context was reset; the layer's weights are placed in the mapping
        // and its KV cache is in our state (it is one of `layers`); shapes were checked by the
        // executor against the same n_ctx / n_ubatch.
        let gf = unsafe { graph::build_layer(self.gctx.ptr, w, &self.st, hp, il, sh) };
        run_graph(self.backend.ptr, self.galloc, self.compute_bytes, gf)
    }

    /// Host memory this side allocated (state, KV cache, compute buffer, repacked weights).
    pub fn bytes(&self) -> u64 {
        // SAFETY: the state buffer is live.
        (unsafe { sys::ggml_backend_buffer_get_size(self.state_buf) }) as u64
            + self.compute_bytes
            + self.packed_bytes
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once (null ones skipped), before the backend.
        unsafe {
            sys::ggml_gallocr_free(self.galloc);
            if !self.state_buf.is_null() {
                sys::ggml_backend_buffer_free(self.state_buf);
            }
            for &b in self.map_bufs.iter().chain(&self.packed) {
                sys::ggml_backend_buffer_free(b);
            }
        }
    }
}
