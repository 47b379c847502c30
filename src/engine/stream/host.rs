//! `--host-layers`: streamed layers computed by the CPU backend with their weights used in place
//! from the memory-mapped GGUF (no copy, no device memory), as llama.cpp's static split does for
//! the layers it keeps off the GPU. The activations cross between the device state and a host
//! state of their own (`n_embd x n_tokens` floats each way), and these layers' KV cache lives
//! in host memory.

use super::graph::{self, Ctx, Hparams, Shape, State, Weights};
use super::{run_graph, Backend};
use crate::gguf::GgufFile;
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
    map_buf: sys::ggml_backend_buffer_t,
}

impl HostSide {
    /// Places `layers`' weights in place in `file`'s mapping and reserves their compute buffer
    /// for batches of `n_ub` tokens in a context of `n_ctx`.
    pub fn new(
        file: &GgufFile,
        w: &Weights,
        hp: &Hparams,
        layers: &[usize],
        n_ctx: i64,
        n_ub: i64,
        threads: usize,
    ) -> Result<HostSide> {
        let backend = Backend::new(threads, true)?;
        let st = State::with_kv(hp, n_ctx, n_ub, |il| layers.contains(&il))?;
        let gctx = Ctx::new(graph::GRAPH_NODES * 2, graph::GRAPH_NODES)?;
        let bytes = file.bytes();
        // SAFETY: the backend's buffer type is live; the mapping is page-aligned, read-only
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
                map_buf: std::ptr::null_mut(),
            };
            h.state_buf =
                sys::ggml_backend_alloc_ctx_tensors_from_buft(h.st.ctx.ptr, h.backend.buft);
            if h.state_buf.is_null() {
                bail!("could not allocate the host layers' KV cache and state");
            }
            sys::ggml_backend_buffer_clear(h.state_buf, 0);
            h.map_buf =
                sys::ggml_backend_cpu_buffer_from_ptr(bytes.as_ptr() as *mut _, bytes.len());
            if h.map_buf.is_null() {
                bail!("ggml_backend_cpu_buffer_from_ptr failed on the memory map");
            }
            let base = bytes.as_ptr() as usize;
            for &l in layers {
                for t in &w.layers[l] {
                    graph::place_tensor(h.map_buf, t.t, base + t.file_off as usize)
                        .with_context(|| format!("layer {l}'s weights in the memory map"))?;
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

    /// Host memory this side allocated (state, KV cache, compute buffer).
    pub fn bytes(&self) -> u64 {
        // SAFETY: the state buffer is live.
        (unsafe { sys::ggml_backend_buffer_get_size(self.state_buf) }) as u64 + self.compute_bytes
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
            if !self.map_buf.is_null() {
                sys::ggml_backend_buffer_free(self.map_buf);
            }
        }
    }
}
