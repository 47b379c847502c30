//! Layer streaming: Gemma-3 run layer by layer on a ggml backend whose memory budget is smaller
//! than the model (`jq-run --stream-layers`).
//!
//! Data flow per step (a prompt batch or one decoded token): token ids -> embedding rows (read
//! on the host from the memory map, as llama.cpp's input layer always runs on the CPU) -> for
//! every layer: a resident layer computes from its own buffers, a streamed layer from the ring
//! slot the reader thread filled while the previous layers computed -> output head (the tied
//! embedding) -> logits. Pieces:
//! - [`backend`]: the device, and the buffer type llama.cpp would give each weight on it;
//! - [`graph`]: hyper-parameters, tensor descriptors, the per-layer ggml graphs;
//! - [`plan`]: what stays resident and what streams under the budget, or why nothing fits;
//! - [`ring`]: the slots and the reader thread (mmap or `O_DIRECT`), slot hand-over;
//! - [`profile`]: the event log and per-step statistics;
//! - `host`: `--host-layers`, streamed layers computed on the CPU instead;
//! - [`upload`]: the staged, event-ordered upload path for device memory the host cannot write.
//!
//! Layers need not be alike: K-quant mixtures give some layers more bits, and each tensor
//! lives in the buffer type llama.cpp would choose for it (AMX, CPU_REPACK or plain on the CPU),
//! so a layer is a set of per-buffer-type regions and a ring slot has, per buffer type, room for
//! the largest streamed layer's region. Device memory is every backend buffer this executor
//! allocates (weights, KV cache, state, ring, the allocator's compute buffer); it is summed
//! from the buffers' real sizes and checked against the budget; on a GPU the driver's own
//! free-memory figure is checked too. Buffers are allocated once: eviction is slot reuse.

mod backend;
mod cli;
pub mod graph;
mod host;
pub mod plan;
pub mod profile;
mod ring;
mod upload;

use crate::arch::{self, Batch, Hparams};
use crate::gguf::GgufModel;
use crate::quant::GgmlType;
use anyhow::{anyhow, bail, Context, Result};
use backend::Backend;
pub use cli::{run, RunArgs};
use graph::{Ctx, State, WTensor, Weights};
use half::f16;
use llama_cpp_sys_2 as sys;
use plan::{HostCalibration, Sizes};
pub use plan::{HostLayers, Plan};
use profile::{EvKind, Event, Events, LayerTime, StepStats};
use ring::{HostSlots, LayerCopy, Piece, Ring, Seg, Sink, Source};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Device memory the executor may allocate (default: the GPU's free memory minus 512 MiB,
    /// or available host memory minus 1 GiB when the CPU backend plays the device).
    pub budget: Option<u64>,
    /// Ring slots (`--prefetch`), at least 1; 2 overlaps the read of layer i+1 with the
    /// compute of layer i.
    pub n_slots: usize,
    /// Read streamed layers with `O_DIRECT` instead of through the memory map.
    pub direct_io: bool,
    /// Context length (KV cache positions).
    pub n_ctx: u32,
    /// Most tokens per graph (prompts are split into micro-batches of this size).
    pub n_ubatch: u32,
    /// Halve `n_ubatch` until the plan fits the budget (the compute buffer grows with it);
    /// off when the user chose `-b`.
    pub n_ubatch_auto: bool,
    /// Size the output buffer for every position's logits (`--dump-logits`, tests); else only
    /// the last position's are computed and [`Streamer::eval`] refuses `all_logits`.
    pub all_logits: bool,
    /// CPU compute threads for one-token steps (decode), where the reader thread needs a core
    /// of its own.
    pub threads: usize,
    /// CPU compute threads for batches of more than one token (prompts: compute-bound, the
    /// ring is mostly full and the reader mostly waits).
    pub threads_batch: usize,
    /// Test hook: the reader sleeps this long after each layer it reads.
    pub read_delay: Duration,
    /// Test hook: each layer's compute is followed by this much sleep before it ends (and
    /// releases its slot), so the overlap test does not depend on scheduling luck.
    pub compute_delay: Duration,
    /// Run on the CPU backend even when a GPU is present (`jq-run -g 0`).
    pub cpu: bool,
    /// CPU device: place each weight in the buffer type llama.cpp's CPU backend would (ggml's
    /// extra buffer types first: AMX, CPU_REPACK; packed layouts for faster kernels); off:
    /// every weight in the file's layout (plain kernels, unlike llama.cpp's defaults).
    pub repack: bool,
    /// Streamed layers to compute on the CPU instead (`--host-layers`).
    pub host_layers: HostLayers,
    /// Bytes per staging chunk of the staged upload path (4 chunks are in flight).
    pub staging_chunk: usize,
    /// Test hook: use the staged upload path (staging chunks, an upload backend, events)
    /// even when the slots are host memory, as it is used for GPU memory (the weights are
    /// then kept in the file's layout: staged bytes are not repacked).
    pub staged: bool,
    /// Benchmark hook: the reader hands slots over without reading (the compute floor of the
    /// same plan; the logits are meaningless).
    pub skip_reads: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            budget: None,
            n_slots: 2,
            direct_io: false,
            n_ctx: 512,
            n_ubatch: 512,
            n_ubatch_auto: false,
            all_logits: false,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads_batch: std::thread::available_parallelism().map_or(1, |n| n.get()),
            read_delay: Duration::ZERO,
            compute_delay: Duration::ZERO,
            cpu: false,
            repack: true,
            host_layers: HostLayers::Off,
            staging_chunk: 16 << 20,
            staged: false,
            skip_reads: false,
        }
    }
}

/// The default budget: the GPU's free memory minus a 512 MiB margin, or for the CPU device
/// available host memory minus 1 GiB.
fn default_budget(backend: &Backend) -> u64 {
    if backend.gpu {
        return backend.memory().0.saturating_sub(512 << 20);
    }
    crate::engine::mem_available()
        .unwrap_or(8 << 30)
        .saturating_sub(1 << 30)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Headroom kept free on a GPU for what its backend allocates outside our buffers (the CUDA
/// backend's memory pool and cuBLAS workspace); checked against the driver's figure.
const GPU_SCRATCH: u64 = 256 << 20;

/// Tensors packed into per-buffer-type regions: each present tensor's buffer type (an index
/// into the device's `weight_bufts`) and offset in its region, and each region's bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Packing {
    pub at: Vec<Option<(usize, u64)>>,
    pub bytes: Vec<u64>,
}

impl Packing {
    /// Packs the present ones of `ts`, tensor `i` going to buffer type `bufts[i]`, each at its
    /// alloc size in that buffer type.
    fn new(backend: &Backend, ts: &[Option<WTensor>], bufts: &[Option<usize>]) -> Packing {
        let mut bytes = vec![0u64; backend.weight_bufts.len()];
        let at = ts
            .iter()
            .zip(bufts)
            .map(|(t, b)| {
                let (t, &b) = (t.as_ref()?, b.as_ref()?);
                let off = bytes[b];
                bytes[b] += backend.alloc_size_in(backend.weight_bufts[b].ptr, t.t);
                Some((b, off))
            })
            .collect();
        Packing { at, bytes }
    }
}

/// The buffer type llama.cpp would choose for each present one of `ts` on `backend` (see
/// `backend`).
fn choose_bufts(
    backend: &Backend,
    ts: &[Option<WTensor>],
    names: &[String],
) -> Result<Vec<Option<usize>>> {
    ts.iter()
        .zip(names)
        .map(|(t, name)| {
            let Some(t) = t else { return Ok(None) };
            // SAFETY: `t.t` is a live descriptor with no buffer (placement comes later).
            unsafe { backend::select(&backend.weight_bufts, t.t, t.op, name) }.map(Some)
        })
        .collect()
}

/// Allocates `gf`'s intermediate tensors in `galloc`'s buffer (which must not grow past
/// `expected` bytes: the reserved worst case) and computes it on `backend`.
fn run_graph(
    backend: sys::ggml_backend_t,
    galloc: sys::ggml_gallocr_t,
    expected: u64,
    gf: *mut sys::ggml_cgraph,
) -> Result<()> {
    // SAFETY: `gf` is a graph of live tensors built in a graph context; the allocator places
    // its intermediate tensors in the compute buffer reserved for this backend.
    unsafe {
        if !sys::ggml_gallocr_alloc_graph(galloc, gf) {
            bail!("ggml could not allocate a graph");
        }
        let now = sys::ggml_gallocr_get_buffer_size(galloc, 0) as u64;
        if now != expected {
            bail!(
                "the compute buffer grew from {expected} to {now} bytes (planned worst case exceeded)"
            );
        }
        let st = sys::ggml_backend_graph_compute(backend, gf);
        if st != sys::GGML_STATUS_SUCCESS {
            bail!("ggml graph compute failed (status {st})");
        }
    }
    Ok(())
}

/// (KV cache, the rest of the state) bytes of `st` on `backend`'s buffer type.
fn state_sizes(st: &State, backend: &Backend) -> (u64, u64) {
    let kv: u64 =
        st.k.iter()
            .chain(&st.v)
            .filter(|t| !t.is_null())
            .map(|&t| {
                // SAFETY: live descriptors of the state context.
                align_up(unsafe { sys::ggml_nbytes(t) } as u64, backend.align)
            })
            .sum();
    // SAFETY: the state context and the backend's buffer type are live.
    let all =
        unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft_size(st.ctx.ptr, backend.buft) }
            as u64;
    (kv, all.saturating_sub(kv))
}

/// Everything known before any device memory is allocated: the model, the descriptors, where
/// each weight goes, the measured compute buffer and the plan.
struct Prepared {
    file: Arc<GgufModel>,
    hp: Hparams,
    backend: Backend,
    w: Weights,
    st: State,
    gctx: Ctx,
    galloc: sys::ggml_gallocr_t,
    plan: Plan,
    /// Per layer: each tensor's buffer type and offset in that layer's region of it.
    layouts: Vec<Packing>,
    /// The globals on the device ([`Weights::globals`]: the output head, its norm, the RoPE
    /// factors), packed likewise.
    out_layout: Packing,
    n_ctx: i64,
    /// KV cells, as llama.cpp allocates them for `n_ctx` (padded to 256).
    n_cells: i64,
    n_ub: i64,
    /// Logit rows the output graph is sized for.
    n_outputs: i64,
}

/// A fake, never dereferenced address given to already-placed tensors while ggml's allocator
/// only measures (so it does not count them as activations).
const PLACEHOLDER: usize = 4096;

/// Graph shapes whose compute buffers bound every step's: one layer (sliding, global) and the
/// output, each at the largest batch.
#[derive(Clone, Copy)]
enum Kind {
    Layer(usize),
    Output,
}

impl Prepared {
    fn new(path: &Path, o: &StreamOptions) -> Result<Prepared> {
        // llama.cpp's and ggml's logs (repack notices and the like) stay silent unless asked.
        crate::engine::llama::backend()?;
        let file = Arc::new(
            GgufModel::open(path)
                .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?,
        );
        crate::validate::check(&*file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let hp = Hparams::from_gguf(&file).with_context(|| path.display().to_string())?;
        let n_ctx = i64::from(o.n_ctx.max(1));
        let backend = Backend::new(o.threads, o.cpu, !o.repack || o.staged)?;
        let w = Weights::new(&file, &hp)?;
        let gctx = Ctx::new(graph::GRAPH_NODES * 2, graph::GRAPH_NODES)?;
        // SAFETY: `buft` is the live backend's buffer type.
        let galloc = unsafe { sys::ggml_gallocr_new(backend.buft) };
        if galloc.is_null() {
            bail!("ggml_gallocr_new failed");
        }
        let mut layouts = Vec::with_capacity(hp.n_layer);
        for (il, lw) in w.layers.iter().enumerate() {
            let b = choose_bufts(&backend, lw, &w.layer_names(il))?;
            layouts.push(Packing::new(&backend, lw, &b));
        }
        let out: Vec<Option<WTensor>> = w.globals().into_iter().map(Some).collect();
        let ob = choose_bufts(&backend, &out, &w.global_names())?;
        let out_layout = Packing::new(&backend, &out, &ob);
        let n_ub_req = o.n_ubatch.clamp(1, o.n_ctx.max(1));
        let mut p = Prepared {
            file,
            st: State::new(&hp, graph::kv_cells(n_ctx), i64::from(n_ub_req))?,
            hp,
            backend,
            w,
            gctx,
            galloc,
            plan: plan::plan(
                u64::MAX,
                1,
                Sizes {
                    layers: vec![],
                    layer_file_bytes: vec![],
                    bufts: vec![],
                    output: 0,
                    kv: 0,
                    state: 0,
                    compute: 0,
                    scratch: 0,
                },
            )
            .map_err(|e| anyhow!("{e}"))?,
            layouts,
            out_layout,
            n_ctx,
            n_cells: graph::kv_cells(n_ctx),
            n_ub: i64::from(n_ub_req),
            n_outputs: 1,
        };
        let budget = o.budget.unwrap_or_else(|| default_budget(&p.backend));
        // The compute buffer grows with the micro-batch (and, with every position's logits,
        // the output buffer too): halve it until the plan fits, when allowed.
        let mut n_ub = n_ub_req;
        loop {
            let r = p.plan_at(n_ub, budget, o);
            match r {
                Ok(plan) => {
                    p.plan = plan;
                    break;
                }
                Err(e) if o.n_ubatch_auto && n_ub > 1 => {
                    let _ = e;
                    n_ub /= 2;
                }
                Err(e) => {
                    let hint = if n_ub > 1 {
                        format!(
                            "; a smaller micro-batch (-b, now {n_ub}) shrinks the compute buffer"
                        )
                    } else {
                        String::new()
                    };
                    bail!(
                        "{e}{hint}; a shorter context (-c) shrinks the KV cache, --prefetch 1 the ring, or raise --vram-budget"
                    );
                }
            }
        }
        p.plan.n_ubatch_requested = n_ub_req;
        if let HostLayers::N(n) = o.host_layers {
            p.plan.move_to_host(n);
            if !p.plan.host.is_empty() {
                // Their KV cache lives on the host: the device state goes without it.
                let host = p.plan.host.clone();
                p.st = State::with_kv(&p.hp, p.n_cells, p.n_ub, |l| !host.contains(&l))?;
                let (kv, state) = state_sizes(&p.st, &p.backend);
                p.plan.sizes.kv = kv;
                p.plan.sizes.state = state;
            }
        }
        Ok(p)
    }

    /// Sizes the state and compute buffer for micro-batches of `n_ub` and plans.
    fn plan_at(&mut self, n_ub: u32, budget: u64, o: &StreamOptions) -> Result<Plan> {
        self.n_ub = i64::from(n_ub);
        self.n_outputs = if o.all_logits { self.n_ub } else { 1 };
        self.st = State::new(&self.hp, self.n_cells, self.n_ub)?;
        let compute = self.measure_compute()?;
        let (kv, state) = state_sizes(&self.st, &self.backend);
        let sizes = Sizes {
            layers: self.layouts.iter().map(|l| l.bytes.clone()).collect(),
            layer_file_bytes: self
                .w
                .layers
                .iter()
                .map(|l| l.iter().flatten().map(|t| t.size).sum())
                .collect(),
            bufts: self
                .backend
                .weight_bufts
                .iter()
                .map(|b| b.name.clone())
                .collect(),
            output: self.out_layout.bytes.iter().sum(),
            kv,
            state,
            compute,
            scratch: if self.backend.gpu { GPU_SCRATCH } else { 0 },
        };
        let mut plan = plan::plan(budget, o.n_slots, sizes).map_err(|e| anyhow!("{e}"))?;
        plan.n_ubatch = n_ub;
        plan.n_outputs = self.n_outputs as u32;
        Ok(plan)
    }

    fn all_tensors(&self) -> Vec<*mut sys::ggml_tensor> {
        let mut v: Vec<_> = self
            .w
            .layers
            .iter()
            .flatten()
            .flatten()
            .map(|t| t.t)
            .collect();
        v.extend(self.w.globals().iter().map(|t| t.t));
        v.extend(self.st.k.iter().chain(&self.st.v).filter(|t| !t.is_null()));
        v.extend([
            self.st.x,
            self.st.pos,
            self.st.out_ids,
            self.st.mask_g,
            self.st.mask_s,
        ]);
        v
    }

    /// The RoPE factors' descriptor on the device, if the model has them.
    fn rope_freqs(&self) -> *mut sys::ggml_tensor {
        self.w.rope_freqs.map_or(std::ptr::null_mut(), |t| t.t)
    }

    /// Builds layer `il`'s graph for batch `b` in the graph context.
    fn layer_graph(&mut self, il: usize, b: Batch) -> Result<*mut sys::ggml_cgraph> {
        self.gctx.reset();
        let io = self.st.io(&self.hp, il, self.rope_freqs())?;
        // SAFETY: the graph context was just reset; the layer's weights and the state have
        // memory (or placeholders while measuring); `b` fits the state (the executor checks
        // n_past + n_tokens against the context and n_tokens against the micro-batch).
        Ok(unsafe { arch::build_layer(self.gctx.ptr, &self.w.roles(il), &io, &self.hp, il, b) })
    }

    /// Builds the output graph over the first `n_out` rows; returns it and the logits.
    fn output_graph(&mut self, n_out: i64) -> (*mut sys::ggml_cgraph, *mut sys::ggml_tensor) {
        self.gctx.reset();
        // SAFETY: the graph context was just reset; n_out <= n_outputs <= n_ubatch rows of x.
        unsafe {
            arch::build_output(
                self.gctx.ptr,
                self.st.x,
                self.w.output_norm.t,
                self.w.head().t,
                &self.hp,
                n_out,
            )
        }
    }

    /// Builds the graph of `kind` at the worst-case batch: a full micro-batch at the end of
    /// the context over every KV cell, or every logit row asked for.
    fn worst_graph(&mut self, kind: Kind) -> Result<*mut sys::ggml_cgraph> {
        match kind {
            Kind::Layer(il) => self.layer_graph(
                il,
                Batch {
                    n_tokens: self.n_ub,
                    n_past: self.n_ctx - self.n_ub,
                    n_kv: self.n_cells,
                    n_out: None,
                },
            ),
            Kind::Output => Ok(self.output_graph(self.n_outputs).0),
        }
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k = vec![Kind::Output];
        // One sliding and one global layer on the device (their graphs differ only in the
        // mask and RoPE; host layers have their own compute buffer).
        for swa in [true, false] {
            let on_device = |l: &usize| self.hp.swa[*l] == swa && !self.plan.host.contains(l);
            if let Some(l) = (0..self.hp.n_layer).find(on_device) {
                k.push(Kind::Layer(l));
            }
        }
        k
    }

    /// The compute buffer the largest graph needs, measured by ggml's allocator with every
    /// weight and state tensor given a placeholder address (nothing is allocated).
    fn measure_compute(&mut self) -> Result<u64> {
        let tensors = self.all_tensors();
        for &t in &tensors {
            // SAFETY: live descriptors with no memory yet; the placeholder is never read by
            // a size-only reservation and is reset to null below.
            unsafe { (*t).data = PLACEHOLDER as *mut _ };
        }
        let mut best = 0u64;
        for kind in self.kinds() {
            let gf = self.worst_graph(kind)?;
            let mut size = 0usize;
            // SAFETY: `gf` is a graph of live tensors; one buffer type, so one size.
            unsafe {
                sys::ggml_gallocr_reserve_n_size(
                    self.galloc,
                    gf,
                    std::ptr::null(),
                    std::ptr::null(),
                    &mut size,
                )
            };
            best = best.max(size as u64);
        }
        for &t in &tensors {
            // SAFETY: as above; restores the descriptors to "no memory".
            unsafe { (*t).data = std::ptr::null_mut() };
        }
        Ok(align_up(best, self.backend.align))
    }

    /// Copies the first streamed layer from its source to host memory, twice, and records
    /// the bandwidths (first read, then cached).
    fn measure_read(&mut self, direct: bool) -> Result<()> {
        let Some(&l) = self.plan.streamed.first() else {
            return Ok(());
        };
        let lc = self.layer_copy(l);
        let mut source = Source::open(self.file.clone(), direct)?;
        let mut buf = vec![0u8; lc.bytes() as usize];
        let mut bw = [None; 2];
        for b in &mut bw {
            let t = Instant::now();
            let mut at = 0usize;
            for p in &lc.pieces {
                source.read(*p, &mut buf[at..at + p.len as usize])?;
                at += p.len as usize;
            }
            let s = t.elapsed().as_secs_f64();
            *b = (s > 0.0).then(|| lc.bytes() as f64 / s);
        }
        [self.plan.read_bw, self.plan.read_bw_again] = bw;
        Ok(())
    }

    /// What the reader copies for layer `l`: each tensor's bytes to its buffer type's region
    /// of a slot, at the tensor's offset there.
    fn layer_copy(&self, l: usize) -> LayerCopy {
        LayerCopy {
            layer: l,
            pieces: self.w.layers[l]
                .iter()
                .zip(&self.layouts[l].at)
                .enumerate()
                .filter_map(|(i, (t, at))| {
                    let (t, &(seg, off)) = (t.as_ref()?, at.as_ref()?);
                    Some(Piece {
                        part: t.part,
                        src: t.file_off,
                        len: t.size,
                        seg,
                        dst: off,
                        tensor: i,
                    })
                })
                .collect(),
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: created in `Prepared::new`, freed once, before the backend (a field, dropped
        // after this).
        unsafe { sys::ggml_gallocr_free(self.galloc) };
    }
}

/// Plans without allocating or loading anything (`--plan-only`); measures the copy bandwidth
/// of one streamed layer, twice (first read, then cached), for the predicted floors. The
/// checks are the run's: a plan that prints is a plan that runs.
pub fn plan_only(path: &Path, o: &StreamOptions) -> Result<Plan> {
    let mut p = Prepared::new(path, o)?;
    p.measure_read(o.direct_io)?;
    Ok(p.plan.clone())
}

/// The executor: buffers allocated, resident weights uploaded, the reader running.
pub struct Streamer {
    p: Prepared,
    buffers: Vec<sys::ggml_backend_buffer_t>,
    /// Per slot, per buffer type: its region (None where no streamed layer has tensors).
    slots: Vec<Vec<Option<Seg>>>,
    ring: Option<Ring>,
    compute_bytes: u64,
    device_bytes: u64,
    n_past: usize,
    events: Events,
    steps: Vec<StepStats>,
    mask_g: Vec<f16>,
    mask_s: Vec<f16>,
    compute_delay: Duration,
    /// Per slot: the event the staged upload records when the slot is filled (empty when the
    /// reader writes the slots directly).
    ready: Option<Arc<upload::ReadyEvents>>,
    /// GPU only: the driver's free memory before this executor allocated anything, and the
    /// largest drop from it seen after a step.
    driver_free0: Option<u64>,
    driver_peak: u64,
    upload_path: String,
    /// Compute threads for one-token steps and for batches (CPU backends).
    threads: (usize, usize),
    /// Set when a step failed part way: later steps are refused.
    failed: Option<String>,
    /// `--host-layers`: the CPU side, when any layer computes there.
    host: Option<host::HostSide>,
    /// Activation rows in transit between the device and the host state.
    xbuf: Vec<u8>,
    /// Token embeddings looked up on the host.
    embd: Vec<f32>,
}

impl std::fmt::Debug for Streamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamer")
            .field("plan", &self.p.plan)
            .field("device_bytes", &self.device_bytes)
            .field("n_past", &self.n_past)
            .finish()
    }
}

impl Streamer {
    /// Plans (refusing a budget that cannot work before anything is allocated), allocates the
    /// device buffers once, uploads the resident weights and starts the reader.
    pub fn open(path: &Path, o: &StreamOptions) -> Result<Streamer> {
        let mut p = Prepared::new(path, o)?;
        p.measure_read(o.direct_io)?;
        let mut s = Streamer {
            p,
            buffers: Vec::new(),
            slots: Vec::new(),
            ring: None,
            compute_bytes: 0,
            device_bytes: 0,
            n_past: 0,
            events: Events::new(),
            steps: Vec::new(),
            mask_g: Vec::new(),
            mask_s: Vec::new(),
            compute_delay: o.compute_delay,
            ready: None,
            driver_free0: None,
            driver_peak: 0,
            upload_path: "none".into(),
            host: None,
            failed: None,
            threads: (o.threads.max(1), o.threads_batch.max(1)),
            xbuf: Vec::new(),
            embd: Vec::new(),
        };
        if s.p.backend.gpu {
            s.driver_free0 = Some(s.p.backend.memory().0);
        }
        s.allocate(o)?;
        Ok(s)
    }

    fn alloc_buffer_of(
        &mut self,
        buft: sys::ggml_backend_buffer_type_t,
        size: u64,
        what: &str,
    ) -> Result<sys::ggml_backend_buffer_t> {
        // SAFETY: `buft` is a live buffer type of the device; null is checked.
        let b = unsafe { sys::ggml_backend_buft_alloc_buffer(buft, size.max(1) as usize) };
        if b.is_null() {
            bail!(
                "could not allocate {} for {what}",
                crate::engine::plan::fmt_size(size)
            );
        }
        self.buffers.push(b);
        // SAFETY: `b` is a live buffer.
        self.device_bytes += unsafe { sys::ggml_backend_buffer_get_size(b) } as u64;
        self.check_budget(what)?;
        Ok(b)
    }

    /// One buffer per buffer type with a non-zero size in `bytes` (a region set: a layer
    /// group, the output head or a ring slot).
    fn alloc_regions(&mut self, bytes: &[u64], what: &str) -> Result<Vec<Option<Seg>>> {
        let mut v = Vec::with_capacity(bytes.len());
        for (b, &n) in bytes.iter().enumerate() {
            if n == 0 {
                v.push(None);
                continue;
            }
            let buft = &self.p.backend.weight_bufts[b];
            let (ptr, name) = (buft.ptr, buft.name.clone());
            let buf = self.alloc_buffer_of(ptr, n, &format!("{what} ({name})"))?;
            // SAFETY: `buf` is live.
            let base = unsafe { sys::ggml_backend_buffer_get_base(buf) } as usize;
            v.push(Some(Seg { buf, base, size: n }));
        }
        Ok(v)
    }

    fn check_budget(&self, what: &str) -> Result<()> {
        let scratch = self.p.plan.sizes.scratch;
        if self.device_bytes + scratch > self.p.plan.budget {
            bail!(
                "device memory {}{} would exceed the budget {} (allocating {what})",
                crate::engine::plan::fmt_size(self.device_bytes),
                if scratch > 0 {
                    format!(
                        " + backend scratch {}",
                        crate::engine::plan::fmt_size(scratch)
                    )
                } else {
                    String::new()
                },
                crate::engine::plan::fmt_size(self.p.plan.budget)
            );
        }
        Ok(())
    }

    /// GPU only: what the driver says this run uses (free memory before allocating minus free
    /// memory now) must stay within the budget too; it also sees the backend's own pool.
    fn check_driver(&mut self) -> Result<()> {
        let Some(free0) = self.driver_free0 else {
            return Ok(());
        };
        let used = free0.saturating_sub(self.p.backend.memory().0);
        self.driver_peak = self.driver_peak.max(used);
        if used > self.p.plan.budget {
            bail!(
                "the driver reports {} of device memory in use by this run, over the budget {} (our buffers: {})",
                crate::engine::plan::fmt_size(used),
                crate::engine::plan::fmt_size(self.p.plan.budget),
                crate::engine::plan::fmt_size(self.device_bytes)
            );
        }
        Ok(())
    }

    /// Places `ts` in the regions `segs` (tensor i at its packing's buffer type and offset,
    /// plus `shift[buft]`) and, with `upload`, copies their bytes from the file (through the
    /// buffer's `set_tensor`, which repacks where the buffer type lays tensors out its way).
    fn place(
        &self,
        segs: &[Option<Seg>],
        ts: &[Option<WTensor>],
        layout: &Packing,
        shift: Option<&[u64]>,
        upload: bool,
    ) -> Result<()> {
        for (t, at) in ts.iter().zip(&layout.at) {
            let (Some(t), Some((b, off))) = (t, *at) else {
                continue;
            };
            let seg = segs[b].context("a tensor's buffer type has no region")?;
            let off = off + shift.map_or(0, |s| s[b]);
            // SAFETY: `t.t` is a live descriptor no graph uses now; the offsets were packed
            // from the buffer type's own sizes, so it lands inside the region.
            unsafe { graph::place_tensor(seg.buf, t.t, seg.base + off as usize)? };
            if upload {
                let src = self.p.file.parts()[t.part]
                    .bytes()
                    .get(t.file_off as usize..(t.file_off + t.size) as usize)
                    .context("tensor data outside the file")?;
                // SAFETY: `t.t` now has `t.size` bytes of memory in `seg.buf`; `src` is that
                // many.
                unsafe { ring::set_tensor(seg.buf, t.t, src) };
            }
        }
        Ok(())
    }

    /// Places streamed layer `l` in slot `slot` (descriptors only: the reader fills it).
    fn place_in_slot(&self, l: usize, slot: usize) -> Result<()> {
        self.place(
            &self.slots[slot],
            &self.p.w.layers[l],
            &self.p.layouts[l],
            None,
            false,
        )
    }

    fn allocate(&mut self, o: &StreamOptions) -> Result<()> {
        let plan = self.p.plan.clone();
        // Output head (and its norm, the RoPE factors).
        let out_regions =
            self.alloc_regions(&self.p.out_layout.bytes.clone(), "the output head")?;
        let out: Vec<Option<WTensor>> = self.p.w.globals().into_iter().map(Some).collect();
        self.place(&out_regions, &out, &self.p.out_layout, None, true)?;
        // The embedding lookup runs on the host (see `embed_on_host`).
        self.embd = vec![0f32; (self.p.hp.n_embd * self.p.n_ub) as usize];
        // KV cache and state.
        // SAFETY: the state context and buffer type are live; null is checked.
        let sb = unsafe {
            sys::ggml_backend_alloc_ctx_tensors_from_buft(self.p.st.ctx.ptr, self.p.backend.buft)
        };
        if sb.is_null() {
            bail!("could not allocate the KV cache and state");
        }
        // SAFETY: `sb` is live; zeroing the KV cache keeps never-written cells finite.
        unsafe { sys::ggml_backend_buffer_clear(sb, 0) };
        self.buffers.push(sb);
        // SAFETY: `sb` is live.
        self.device_bytes += unsafe { sys::ggml_backend_buffer_get_size(sb) } as u64;
        self.check_budget("the KV cache and state")?;
        // Resident layers: one region per buffer type for all of them.
        if !plan.resident.is_empty() {
            let n_b = self.p.backend.weight_bufts.len();
            let mut total = vec![0u64; n_b];
            for &l in &plan.resident {
                for (t, n) in total.iter_mut().zip(&self.p.layouts[l].bytes) {
                    *t += n;
                }
            }
            let regions = self.alloc_regions(&total, "the resident layers")?;
            let mut shift = vec![0u64; n_b];
            for &l in &plan.resident {
                let ts = self.p.w.layers[l].clone();
                self.place(&regions, &ts, &self.p.layouts[l], Some(&shift), true)?;
                for (s, n) in shift.iter_mut().zip(&self.p.layouts[l].bytes) {
                    *s += n;
                }
            }
        }
        // Ring slots.
        if !plan.streamed.is_empty() {
            for i in 0..plan.n_slots {
                let slot = self.alloc_regions(&plan.slot_segments, &format!("ring slot {i}"))?;
                for seg in slot.iter().flatten() {
                    // Zeroed once, synchronously: the padding a GPU buffer type adds after
                    // quantized rows is never written by uploads, and the per-step placement's
                    // own zeroing (CUDA init_tensor) runs on another stream than the compute.
                    // SAFETY: `seg.buf` is live.
                    unsafe { sys::ggml_backend_buffer_clear(seg.buf, 0) };
                }
                self.slots.push(slot);
            }
        }
        // Compute buffer: reserve the worst-case graphs (streamed layers placed in slot 0).
        for &l in &plan.streamed {
            self.place_in_slot(l, 0)?;
        }
        for kind in self.p.kinds() {
            let gf = self.p.worst_graph(kind)?;
            // SAFETY: every weight and state tensor has memory; `gf` is a live graph.
            if !unsafe { sys::ggml_gallocr_reserve(self.p.galloc, gf) } {
                bail!("could not allocate the compute buffer");
            }
        }
        // SAFETY: the allocator is live; buffer 0 is its only buffer.
        self.compute_bytes = unsafe { sys::ggml_gallocr_get_buffer_size(self.p.galloc, 0) } as u64;
        self.device_bytes += self.compute_bytes;
        self.check_budget("the compute buffer")?;
        let n = (self.p.n_cells * self.p.n_ub) as usize;
        self.mask_g = vec![f16::ZERO; n];
        self.mask_s = vec![f16::ZERO; n];
        if plan.streamed.is_empty() {
            return self.start_host(o);
        }
        let mut source = Source::open(self.p.file.clone(), o.direct_io)?;
        let mut sink = self.make_sink(o)?;
        if o.skip_reads {
            self.upload_path = "skipped (benchmark hook)".into();
            sink = Sink::Skip {
                inner: Box::new(sink),
                filled: vec![false; self.slots.len()],
            };
        }
        if o.host_layers == HostLayers::Auto {
            let c = self.calibrate(&mut sink, &mut source, o)?;
            self.p.plan.move_to_host(c.chosen);
            self.p.plan.calibration = Some(c);
        }
        self.start_host(o)?;
        if self.p.plan.streamed.is_empty() {
            // Everything moved to the host: no ring (the upload side goes first, it holds
            // targets in the slots).
            drop(sink);
            self.ready = None;
            self.upload_path = "none".into();
            for seg in std::mem::take(&mut self.slots)
                .into_iter()
                .flatten()
                .flatten()
            {
                self.buffers.retain(|&x| x != seg.buf);
                // SAFETY: `seg.buf` is a live slot buffer no tensor or uploader uses any more
                // (the streamed layers were placed on the host by `start_host`); freed once.
                unsafe {
                    self.device_bytes -= sys::ggml_backend_buffer_get_size(seg.buf) as u64;
                    sys::ggml_backend_buffer_free(seg.buf);
                }
            }
        } else {
            let cycle = self
                .p
                .plan
                .streamed
                .iter()
                .map(|&l| self.p.layer_copy(l))
                .collect();
            self.ring = Some(Ring::start(
                source,
                sink,
                self.slots.len(),
                cycle,
                self.events.clone(),
                o.read_delay,
            ));
        }
        Ok(())
    }

    /// How the reader fills the slots: straight into host memory (the CPU device: bytes
    /// copied in, or written through `set_tensor` where the buffer type repacks), or staged
    /// through an upload stream (device memory the host cannot write, or the test hook).
    fn make_sink(&mut self, o: &StreamOptions) -> Result<Sink> {
        let bufts = &self.p.backend.weight_bufts;
        if !self.p.backend.gpu && !o.staged {
            let used: Vec<usize> = (0..bufts.len())
                .filter(|&b| self.p.plan.slot_segments[b] > 0)
                .collect();
            let repacking: Vec<&str> = used
                .iter()
                .filter(|&&b| !bufts[b].plain_host)
                .map(|&b| bufts[b].name.as_str())
                .collect();
            self.upload_path = if repacking.is_empty() {
                "direct into host-visible slots".into()
            } else {
                format!(
                    "repacked into {} slots by the reader",
                    used.iter()
                        .map(|&b| bufts[b].name.as_str())
                        .collect::<Vec<_>>()
                        .join("+")
                )
            };
            let plain: Vec<bool> = bufts.iter().map(|b| b.plain_host).collect();
            let streamed = self.p.plan.streamed.clone();
            let layers: Vec<(usize, Vec<*mut sys::ggml_tensor>)> = streamed
                .iter()
                .map(|&l| {
                    let ts = self.p.w.layers[l].iter();
                    (
                        l,
                        ts.map(|t| t.map_or(std::ptr::null_mut(), |t| t.t))
                            .collect(),
                    )
                })
                .collect();
            let largest = streamed
                .iter()
                .flat_map(|&l| self.p.w.present(l).map(|t| t.size))
                .max()
                .unwrap_or(0);
            return Ok(Sink::Host(HostSlots::new(
                self.slots.clone(),
                plain,
                &layers,
                self.p.hp.n_layer,
                o.direct_io.then_some(largest as usize),
            )?));
        }
        let st = upload::Staged::new(self.p.backend.dev, &self.slots, o.staging_chunk)?;
        let ready = st.ready_events();
        self.upload_path = match (st.pinned(), ready.real()) {
            (true, true) => "staged: pinned chunks, upload stream, events",
            (true, false) => "staged: pinned chunks, synchronous",
            (false, true) => "staged: chunks, upload stream, events",
            (false, false) => "staged: chunks, synchronous",
        }
        .into();
        self.ready = Some(ready);
        Ok(Sink::Staged(st))
    }

    /// Sets up the CPU side for the plan's host layers, if any.
    fn start_host(&mut self, o: &StreamOptions) -> Result<()> {
        if self.p.plan.host.is_empty() {
            return Ok(());
        }
        self.xbuf = vec![0u8; (self.p.hp.n_embd * self.p.n_ub) as usize * 4];
        self.host = Some(host::HostSide::new(
            &self.p.file,
            &self.p.w,
            &self.p.hp,
            &self.p.plan.host,
            self.p.n_ctx,
            self.p.n_cells,
            self.p.n_ub,
            o.threads,
            o.repack,
        )?);
        Ok(())
    }

    /// `--host-layers auto`: times, on the first streamed layer and a one-token step, filling
    /// a slot through `sink` (best of 2), computing on the device, and computing on the CPU
    /// (best of 3), and chooses how many layers move.
    fn calibrate(
        &mut self,
        sink: &mut Sink,
        source: &mut Source,
        o: &StreamOptions,
    ) -> Result<HostCalibration> {
        let l = self.p.plan.streamed[0];
        let lc = self.p.layer_copy(l);
        // Best of 2: the first fill also pays the memory map's first-touch page faults.
        let mut fill_s = f64::MAX;
        for _ in 0..2 {
            let t0 = Instant::now();
            sink.fill(source, 0, &lc)?;
            sink.finish();
            // The slowed-reader test hook slows this read too.
            std::thread::sleep(o.read_delay);
            fill_s = fill_s.min(t0.elapsed().as_secs_f64());
        }
        // A file the page cache cannot hold is read from disk at every step: no faster than
        // the first (cold) read measured at open.
        let file_bytes = self.p.file.total_bytes();
        if o.direct_io || crate::engine::mem_available().is_some_and(|m| file_bytes > m) {
            if let Some(bw) = self.p.plan.read_bw.filter(|&b| b > 0.0) {
                fill_s = fill_s.max(lc.bytes() as f64 / bw);
            }
        }
        self.place_in_slot(l, 0)?;
        if let Some(ev) = self.ready.as_ref().map(|r| r.get(0)) {
            // SAFETY: the event belongs to this device; `fill` recorded it.
            unsafe { upload::order_before(self.p.backend.ptr, ev) };
        }
        // A token at position 0: its KV cell is rewritten by the first real step.
        self.set_inputs(&[0], 0)?;
        let sh = Batch {
            n_tokens: 1,
            n_past: 0,
            n_kv: graph::n_kv_cells(1, self.p.n_cells),
            n_out: None,
        };
        let mut device_s = f64::MAX;
        for _ in 0..3 {
            // The layer is placed in slot 0, filled.
            let gf = self.p.layer_graph(l, sh)?;
            let t = Instant::now();
            self.compute(gf)?;
            device_s = device_s.min(t.elapsed().as_secs_f64());
        }
        self.host = Some(host::HostSide::new(
            &self.p.file,
            &self.p.w,
            &self.p.hp,
            &[l],
            self.p.n_ctx,
            self.p.n_cells,
            self.p.n_ub,
            o.threads,
            o.repack,
        )?);
        self.set_inputs(&[0], 0)?;
        let mut h = self.host.take().context("host side")?;
        let mut host_s = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            h.compute_layer(&self.p.w, &self.p.hp, l, sh)?;
            host_s = host_s.min(t.elapsed().as_secs_f64());
        }
        drop(h);
        for t in self.p.w.present(l) {
            // SAFETY: a live descriptor; it pointed into host memory just freed and is placed
            // again before its next use.
            unsafe { graph::detach(t.t) };
        }
        Ok(HostCalibration {
            fill_s,
            device_s,
            host_s,
            chosen: plan::host_split(&self.p.plan, fill_s, device_s, host_s),
        })
    }

    /// x[0..n] = token_embd[tokens] (times the family's embedding scale): llama.cpp's input layer, which always runs
    /// on the CPU (`dev_input` in `src/llama-model.cpp`) with `token_embd` in a plain CPU
    /// buffer (no extra buffer type takes GET_ROWS): the rows read from the memory map and
    /// turned to f32 by ggml's own `to_float` (what its CPU `get_rows` uses), scaled in f32 as
    /// `ggml_scale` does.
    fn embed_on_host(&mut self, tokens: &[u32]) -> Result<()> {
        let te = self.p.w.tok_embd;
        let n = self.p.hp.n_embd as usize;
        // SAFETY: a live descriptor; ggml's type table is static.
        let (ty, row) = unsafe {
            let ty = (*te.t).type_;
            (ty, sys::ggml_row_size(ty, n as i64))
        };
        // SAFETY: ggml's static type table.
        let to_float = unsafe { (*sys::ggml_get_type_traits(ty)).to_float };
        let bytes = self.p.file.parts()[te.part].bytes();
        let scale = self.p.hp.embd_scale;
        for (j, &id) in tokens.iter().enumerate() {
            let at = te.file_off as usize + id as usize * row;
            let src = bytes
                .get(at..at + row)
                .context("token_embd row outside the file")?;
            let dst = &mut self.embd[j * n..(j + 1) * n];
            if ty == GgmlType::F32.id() as sys::ggml_type {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            } else {
                let f = to_float.context("token_embd's type has no ggml to_float")?;
                // SAFETY: `src` is one row of `n` values of this type, `dst` has `n` floats.
                unsafe { f(src.as_ptr().cast(), dst.as_mut_ptr(), n as i64) };
            }
            if scale != 1.0 {
                for d in dst.iter_mut() {
                    *d *= scale;
                }
            }
        }
        // SAFETY: x is [n_embd, n_ubatch] f32 in the state buffer; tokens.len() <= n_ubatch.
        unsafe {
            sys::ggml_backend_tensor_set(
                self.p.st.x,
                self.embd.as_ptr().cast(),
                0,
                4 * n * tokens.len(),
            )
        };
        Ok(())
    }

    /// Copies the first `rows` activation rows to the host state (`to_host`) or back.
    fn move_x(&mut self, rows: i64, to_host: bool) -> Result<()> {
        let h = self.host.as_ref().context("no host side")?;
        let (from, to) = if to_host {
            (self.p.st.x, h.st.x)
        } else {
            (h.st.x, self.p.st.x)
        };
        let n = (self.p.hp.n_embd * rows) as usize * 4;
        // SAFETY: both x tensors are [n_embd, n_ubatch] f32 with memory, rows <= n_ubatch, and
        // `xbuf` holds n_embd * n_ubatch floats.
        unsafe {
            sys::ggml_backend_tensor_get(from, self.xbuf.as_mut_ptr().cast(), 0, n);
            sys::ggml_backend_tensor_set(to, self.xbuf.as_ptr().cast(), 0, n);
        }
        Ok(())
    }

    pub fn plan(&self) -> &Plan {
        &self.p.plan
    }

    pub fn hparams(&self) -> &Hparams {
        &self.p.hp
    }

    /// Sum of the sizes of every device buffer allocated (weights, KV, state, ring, compute).
    pub fn device_bytes(&self) -> u64 {
        self.device_bytes
    }

    /// Host memory of `--host-layers` (their state, KV cache, compute buffer and the weights
    /// llama.cpp would repack; the others stay in the memory map).
    pub fn host_bytes(&self) -> u64 {
        self.host.as_ref().map_or(0, |h| h.bytes())
    }

    /// The ggml device this executor runs on (e.g. `CPU`, `CUDA0`).
    pub fn device_name(&self) -> &str {
        &self.p.backend.name
    }

    /// Each weight's buffer type, `(tensor name, buffer type)` in layer order then the output
    /// head: where llama.cpp would put it on this device.
    pub fn placement(&self) -> Vec<(String, String)> {
        let bufts = &self.p.backend.weight_bufts;
        let mut v = Vec::new();
        for (il, lay) in self.p.layouts.iter().enumerate() {
            for (n, at) in self.p.w.layer_names(il).into_iter().zip(&lay.at) {
                if let Some((b, _)) = at {
                    v.push((n, bufts[*b].name.clone()));
                }
            }
        }
        for (n, at) in self
            .p
            .w
            .global_names()
            .into_iter()
            .zip(&self.p.out_layout.at)
        {
            if let Some((b, _)) = at {
                v.push((n, bufts[*b].name.clone()));
            }
        }
        v
    }

    /// GPU only: the largest device memory use the driver reported after a step (free memory
    /// before allocating minus free memory then).
    pub fn driver_peak(&self) -> Option<u64> {
        self.driver_free0.map(|_| self.driver_peak)
    }

    /// The driver's (free, total) memory of the device (host memory for the CPU device).
    pub fn device_memory(&self) -> (u64, u64) {
        self.p.backend.memory()
    }

    /// How streamed layers reach the slots.
    pub fn upload_path(&self) -> &str {
        &self.upload_path
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn steps(&self) -> &[StepStats] {
        &self.steps
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.snapshot()
    }

    /// Forgets the context (KV cells are overwritten by the next tokens).
    pub fn clear(&mut self) {
        self.n_past = 0;
    }

    fn compute(&mut self, gf: *mut sys::ggml_cgraph) -> Result<()> {
        run_graph(self.p.backend.ptr, self.p.galloc, self.compute_bytes, gf)
    }

    fn set_inputs(&mut self, tokens: &[u32], n_out: usize) -> Result<()> {
        let t = tokens.len();
        let n_kv = graph::n_kv_cells((self.n_past + t) as i64, self.p.n_cells) as usize;
        let pos: Vec<i32> = (self.n_past..self.n_past + t).map(|p| p as i32).collect();
        let out: Vec<i32> = ((t - n_out)..t).map(|i| i as i32).collect();
        let n_swa = self.p.hp.n_swa as usize;
        for j in 0..t {
            let p1 = self.n_past + j;
            for i in 0..n_kv {
                let causal = i > p1;
                self.mask_g[j * n_kv + i] = if causal { f16::NEG_INFINITY } else { f16::ZERO };
                let sw = causal || (n_swa > 0 && p1 - i >= n_swa);
                self.mask_s[j * n_kv + i] = if sw { f16::NEG_INFINITY } else { f16::ZERO };
            }
        }
        let m = n_kv * t;
        let host = self.host.as_ref().map(|h| &h.st);
        for st in std::iter::once(&self.p.st).chain(host) {
            // SAFETY: each source slice fits its destination tensor (t <= n_ubatch,
            // n_kv * t <= cells * n_ubatch), all tensors live in their state buffer.
            unsafe {
                sys::ggml_backend_tensor_set(st.pos, pos.as_ptr().cast(), 0, 4 * t);
                if n_out > 0 {
                    sys::ggml_backend_tensor_set(st.out_ids, out.as_ptr().cast(), 0, 4 * n_out);
                }
                sys::ggml_backend_tensor_set(st.mask_g, self.mask_g.as_ptr().cast(), 0, 2 * m);
                sys::ggml_backend_tensor_set(st.mask_s, self.mask_s.as_ptr().cast(), 0, 2 * m);
            }
        }
        Ok(())
    }

    /// Evaluates `tokens` after the cached context. Returns the logits of every token
    /// (`all_logits`, which the executor must have been opened for) or of the last one,
    /// row-major `[n, n_vocab]`.
    pub fn eval(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        if let Some(e) = &self.failed {
            bail!("an earlier step failed, the ring is out of step ({e}); open the model again");
        }
        if tokens.is_empty() {
            bail!("nothing to evaluate");
        }
        if all_logits && self.p.n_outputs < self.p.n_ub.min(tokens.len() as i64) {
            bail!("every position's logits were asked for, but the output buffer was sized for the last one (StreamOptions::all_logits)");
        }
        if self.n_past + tokens.len() > self.p.n_ctx as usize {
            bail!(
                "the context of {} positions is full ({} cached + {} new)",
                self.p.n_ctx,
                self.n_past,
                tokens.len()
            );
        }
        let n_vocab = self.p.hp.n_vocab as usize;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            bail!("token id {bad} is outside the vocabulary of {n_vocab}");
        }
        let t_step = Instant::now();
        let mut stats = StepStats {
            n_tokens: tokens.len(),
            bytes_streamed: 0,
            read_s: 0.0,
            wait_s: 0.0,
            compute_s: 0.0,
            total_s: 0.0,
            layers: Vec::with_capacity(self.p.hp.n_layer),
            peak_rss: None,
        };
        let mut logits = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.p.n_ub as usize).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let last = ci + 1 == chunks.len();
            let n_out = match (all_logits, last) {
                (true, _) => chunk.len(),
                (false, true) => 1,
                (false, false) => 0,
            };
            if let Err(e) = self.step(chunk, n_out, &mut stats, &mut logits) {
                // A step that stopped half way may hold slots or have consumed layers the
                // reader has moved past: nothing after it can be trusted.
                self.failed = Some(format!("{e:#}"));
                return Err(e);
            }
        }
        stats.total_s = t_step.elapsed().as_secs_f64();
        stats.peak_rss = crate::engine::peak_rss();
        self.steps.push(stats);
        self.check_driver()?;
        Ok(logits)
    }

    fn step(
        &mut self,
        tokens: &[u32],
        n_out: usize,
        stats: &mut StepStats,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let t = tokens.len() as i64;
        let n_threads = if t > 1 {
            self.threads.1
        } else {
            self.threads.0
        } as i32;
        let host = self.host.as_ref().map(|h| &h.backend);
        for b in std::iter::once(&self.p.backend).chain(host) {
            if !b.gpu {
                // SAFETY: a live CPU backend.
                unsafe { sys::ggml_backend_cpu_set_n_threads(b.ptr, n_threads) };
            }
        }
        self.set_inputs(tokens, n_out)?;
        self.embed_on_host(tokens)?;
        let n_layer = self.p.hp.n_layer;
        let mut x_on_host = false;
        for il in 0..n_layer {
            let streamed = self.p.plan.streamed.binary_search(&il).is_ok();
            let on_host = self.p.plan.host.binary_search(&il).is_ok();
            let mut lt = LayerTime {
                layer: il,
                streamed,
                host: on_host,
                wait_s: 0.0,
                compute_s: 0.0,
            };
            let n_out_l =
                (il + 1 == n_layer && (n_out as i64) < t && n_out > 0).then_some(n_out as i64);
            let sh = Batch {
                n_tokens: t,
                n_past: self.n_past as i64,
                n_kv: graph::n_kv_cells(self.n_past as i64 + t, self.p.n_cells),
                n_out: n_out_l,
            };
            if on_host != x_on_host {
                self.move_x(t, on_host)?;
                x_on_host = on_host;
            }
            if on_host {
                let c0 = self.events.now();
                self.events.push(EvKind::ComputeStart, il);
                let (w, hp) = (&self.p.w, &self.p.hp);
                self.host
                    .as_mut()
                    .context("no host side")?
                    .compute_layer(w, hp, il, sh)?;
                self.events.push(EvKind::ComputeEnd, il);
                lt.compute_s = self.events.now() - c0;
                stats.compute_s += lt.compute_s;
                stats.layers.push(lt);
                continue;
            }
            let mut slot = None;
            if streamed {
                let ring = self.ring.as_ref().context("no ring")?;
                let w0 = self.events.now();
                self.events.push(EvKind::WaitStart, il);
                let f = ring.next()?;
                self.events.push(EvKind::WaitEnd, il);
                lt.wait_s = self.events.now() - w0;
                if f.layer != il {
                    bail!(
                        "the reader delivered layer {} where layer {il} was due",
                        f.layer
                    );
                }
                stats.bytes_streamed += f.bytes;
                stats.read_s += f.read_s;
                self.place_in_slot(il, f.slot)?;
                if let Some(ev) = self.ready.as_ref().map(|r| r.get(f.slot)) {
                    // SAFETY: the event belongs to this device and was recorded by the reader
                    // before it handed the slot over.
                    unsafe { upload::order_before(self.p.backend.ptr, ev) };
                }
                slot = Some(f.slot);
            }
            // The layer's weights have memory (resident buffers or the slot just filled);
            // shapes fit the state (checked in `eval`).
            let gf = self.p.layer_graph(il, sh)?;
            let c0 = self.events.now();
            self.events.push(EvKind::ComputeStart, il);
            self.compute(gf)?;
            if !self.compute_delay.is_zero() {
                std::thread::sleep(self.compute_delay);
            }
            self.events.push(EvKind::ComputeEnd, il);
            lt.compute_s = self.events.now() - c0;
            if let (Some(s), Some(ring)) = (slot, &self.ring) {
                ring.release(s);
            }
            stats.wait_s += lt.wait_s;
            stats.compute_s += lt.compute_s;
            stats.layers.push(lt);
        }
        if x_on_host {
            self.move_x(t, false)?;
        }
        if n_out > 0 {
            let n = n_out * self.p.hp.n_vocab as usize;
            let at = logits.len();
            logits.resize(at + n, 0.0);
            // n_out <= n_outputs (checked in `eval`).
            let (gf, out) = self.p.output_graph(n_out as i64);
            let c0 = self.events.now();
            self.events.push(EvKind::ComputeStart, n_layer);
            self.compute(gf)?;
            self.events.push(EvKind::ComputeEnd, n_layer);
            stats.compute_s += self.events.now() - c0;
            // SAFETY: `out` is the graph's f32 output of exactly n elements, computed above.
            unsafe {
                sys::ggml_backend_tensor_get(out, logits[at..].as_mut_ptr().cast(), 0, 4 * n)
            };
        }
        self.n_past += tokens.len();
        Ok(())
    }

    /// The copy floor: the streamed layers of `cycles` steps pass through the ring with no
    /// compute (same reader, same slots). Returns (bytes, seconds).
    pub fn copy_floor(&mut self, cycles: usize) -> Result<(u64, f64)> {
        let Some(ring) = &self.ring else {
            return Ok((0, 0.0));
        };
        let t = Instant::now();
        let mut bytes = 0;
        for _ in 0..cycles * self.p.plan.streamed.len() {
            let f = ring.next()?;
            bytes += f.bytes;
            ring.release(f.slot);
        }
        Ok((bytes, t.elapsed().as_secs_f64()))
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        // The reader writes into the slots: stop it first.
        self.ring = None;
        self.host = None;
        // SAFETY: the buffers were created by this executor and are freed once, after the
        // reader stopped and before the allocator and the backend (dropped with `p` after).
        unsafe {
            for &b in &self.buffers {
                sys::ggml_backend_buffer_free(b);
            }
        }
    }
}
