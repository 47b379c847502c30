//! `--host-layers`: streamed layers computed by the CPU backend instead of crossing into the
//! device, placed as llama.cpp places the layers it keeps on the CPU (`-ngl` below the layer
//! count): each weight in the buffer type llama.cpp's CPU list gives it; those in the plain CPU
//! buffer type are used in place from the memory map (llama.cpp's mmap), those in AMX or
//! CPU_REPACK are repacked once into host buffers of that type (what llama.cpp does with them
//! too), so the same kernels run. The activations cross between the device state and a host
//! state of their own (`n_embd x n_tokens` floats each way), and these layers' KV cache lives
//! in host memory.

use super::graph::{self, Ctx, State, WTensor, Weights};
use super::handles::{run_graph, Buffer, Gallocr};
use super::prepared::{choose_bufts, Packing};
use super::ring::Seg;
use super::Backend;
use crate::arch::{self, Batch, Hparams};
use crate::gguf::GgufModel;
use anyhow::{bail, Context, Result};
use llama_cpp_sys_2 as sys;

/// The CPU backend, the host state and the compute buffer for the host layers. Fields drop
/// in order: the allocator and the buffers before the backend.
pub(crate) struct HostSide {
    pub galloc: Gallocr,
    state_buf: Option<Buffer>,
    /// One CPU buffer over each part's memory map (the weights used in place).
    map_bufs: Vec<Buffer>,
    /// The repacked weights' buffers.
    packed: Vec<Buffer>,
    pub backend: Backend,
    pub st: State,
    pub gctx: Ctx,
    pub compute_bytes: u64,
    packed_bytes: u64,
    /// This side's own descriptor of the RoPE factors (in the memory map), when the model has
    /// them: the device side's is placed in device memory.
    _ctx: Ctx,
    rope_freqs: *mut sys::ggml_tensor,
}

impl HostSide {
    /// Places `layers`' weights and reserves their compute buffer for batches of `n_ub`
    /// tokens with `n_cells` KV cells (every sequence's); `repack`: use the extra buffer
    /// types as llama.cpp does.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        file: &GgufModel,
        w: &Weights,
        hp: &Hparams,
        layers: &[usize],
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
            let galloc = Gallocr::new(backend.buft)?;
            let mut h = HostSide {
                backend,
                st,
                gctx,
                galloc,
                compute_bytes: 0,
                state_buf: None,
                map_bufs: Vec::new(),
                packed: Vec::new(),
                packed_bytes: 0,
                _ctx: Ctx::new(1, 0)?,
                rope_freqs: std::ptr::null_mut(),
            };
            let sb = Buffer::for_ctx(h.st.ctx.ptr, h.backend.buft)
                .context("could not allocate the host layers' KV cache and state")?;
            sb.clear(0);
            h.state_buf = Some(sb);
            for part in file.parts() {
                let b = Buffer::cpu_from_host(part.bytes())
                    .context("ggml_backend_cpu_buffer_from_ptr failed on the memory map")?;
                h.map_bufs.push(b);
            }
            let bufts = h.backend.weight_bufts.clone();
            // Which weights llama.cpp repacks, per layer; packed together per buffer type.
            let mut chosen = Vec::with_capacity(layers.len());
            let mut total = vec![0u64; bufts.len()];
            for &l in layers {
                for t in w.present(l) {
                    // The device side may have placed it (calibration); it is placed here now.
                    graph::detach(t.t);
                }
                let b = choose_bufts(&h.backend, &w.layers[l], &w.layer_names(l))?;
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
                let Some(buf) = Buffer::alloc(bufts[i].ptr, n) else {
                    bail!("could not allocate {n} bytes of host memory for repacked host layers");
                };
                h.packed_bytes += buf.size();
                regions.push(Some(Seg {
                    buf: buf.ptr(),
                    base: buf.base(),
                    size: n,
                }));
                h.packed.push(buf);
            }
            let mut shift = vec![0u64; bufts.len()];
            for (&l, pk) in layers.iter().zip(&chosen) {
                for (t, at) in w.layers[l].iter().zip(&pk.at) {
                    let (Some(t), Some((b, off))) = (t, *at) else {
                        continue;
                    };
                    let bytes = file.parts()[t.part].bytes();
                    if bufts[b].plain_host {
                        let base = bytes.as_ptr() as usize;
                        graph::place_tensor(
                            h.map_bufs[t.part].ptr(),
                            t.t,
                            base + t.file_off as usize,
                        )
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
            if let Some(rf) = w.rope_freqs {
                h.rope_freqs = h.place_in_map(file, &rf)?;
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
                let sh = Batch {
                    n_tokens: n_ub,
                    kv_base: 0,
                    n_kv: n_cells,
                    n_out: None,
                };
                let gf = h.graph(w, hp, l, sh)?;
                h.galloc
                    .reserve(gf)
                    .context("could not allocate the host layers' compute buffer")?;
            }
            h.compute_bytes = h.galloc.buffer_size();
            Ok(h)
        }
    }

    /// Computes layer `il` (one of ours) over the host state's activations.
    pub fn compute_layer(&mut self, w: &Weights, hp: &Hparams, il: usize, sh: Batch) -> Result<()> {
        let gf = self.graph(w, hp, il, sh)?;
        // SAFETY: the graph's weights are placed and its state is ours (see `graph`).
        unsafe { run_graph(self.backend.ptr, &self.galloc, self.compute_bytes, gf) }
    }

    /// Layer `il`'s graph (one of ours) over this side's state.
    fn graph(
        &mut self,
        w: &Weights,
        hp: &Hparams,
        il: usize,
        sh: Batch,
    ) -> Result<*mut sys::ggml_cgraph> {
        self.gctx.reset();
        let io = self.st.io(hp, il, self.rope_freqs)?;
        // SAFETY: the graph context was reset; the layer's weights are placed (memory map or
        // repacked host buffers) and its KV cache is in our state (it is one of `layers`);
        // shapes were checked by the executor against the same n_ctx / n_ubatch.
        Ok(unsafe { arch::build_layer(self.gctx.ptr, &w.roles(il), &io, hp, il, sh) })
    }

    /// A descriptor of `t` of this side's own, in place in the memory map.
    fn place_in_map(&mut self, file: &GgufModel, t: &WTensor) -> Result<*mut sys::ggml_tensor> {
        let bytes = file.parts()[t.part].bytes();
        // SAFETY: `_ctx` has room for one descriptor; the mapping buffer of that part is live
        // and holds the tensor's bytes at their file offset.
        unsafe {
            let d = sys::ggml_dup_tensor(self._ctx.ptr, t.t);
            if d.is_null() {
                bail!("ggml could not duplicate a descriptor");
            }
            graph::place_tensor(
                self.map_bufs[t.part].ptr(),
                d,
                bytes.as_ptr() as usize + t.file_off as usize,
            )?;
            Ok(d)
        }
    }

    /// Host memory this side allocated (state, KV cache, compute buffer, repacked weights).
    pub fn bytes(&self) -> u64 {
        self.state_buf.as_ref().map_or(0, Buffer::size) + self.compute_bytes + self.packed_bytes
    }
}
