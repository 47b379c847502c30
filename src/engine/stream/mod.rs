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
//! - [`upload`]: the staged, event-ordered upload path for device memory the host cannot write;
//! - `prepared`: everything known before allocating (descriptors, buffer types, the plan);
//! - `alloc`: placement and allocation of the device buffers under the budget;
//! - `handles`: owned ggml handles and the executor's assumptions about ggml internals;
//! - this module: the options, the executor and its step loop.
//!
//! Layers need not be alike: K-quant mixtures give some layers more bits, and each tensor
//! lives in the buffer type llama.cpp would choose for it (AMX, CPU_REPACK or plain on the CPU),
//! so a layer is a set of per-buffer-type regions and a ring slot has, per buffer type, room for
//! the largest streamed layer's region. Device memory is every backend buffer this executor
//! allocates (weights, KV cache, state, ring, the allocator's compute buffer); it is summed
//! from the buffers' real sizes and checked against the budget; on a GPU the driver's own
//! free-memory figure is checked too. Buffers are allocated once: eviction is slot reuse.

mod alloc;
mod backend;
mod cli;
pub mod graph;
mod handles;
mod host;
pub mod plan;
mod prepared;
pub mod profile;
mod ring;
mod upload;

use crate::arch::{Batch, Hparams};
use crate::quant::GgmlType;
use anyhow::{bail, Context, Result};
use backend::Backend;
pub use cli::{run, RunArgs};
use half::f16;
use handles::{run_graph, Buffer};
use llama_cpp_sys_2 as sys;
use plan::HostCalibration;
pub use plan::{HostLayers, Plan};
pub use prepared::plan_only;
use prepared::Prepared;
use profile::{EvKind, Event, Events, LayerTime, StepStats};
use ring::{Ring, Seg, Sink, Source};
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
    /// Sequences with a context of `n_ctx` each (the KV cache holds all of them), decoded
    /// together by [`Streamer::decode`] and [`Streamer::eval_batch`]: one pass over the
    /// weights per step serves every sequence in it (`jq-run serve --parallel N --stream-layers`).
    pub n_seq: usize,
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
            n_seq: 1,
        }
    }
}

/// The default budget: the GPU's free memory minus a 512 MiB margin, or for the CPU device
/// available host memory minus 1 GiB.
pub(crate) fn default_budget(backend: &Backend) -> u64 {
    if backend.gpu {
        return backend.memory().0.saturating_sub(512 << 20);
    }
    crate::engine::mem_available()
        .unwrap_or(8 << 30)
        .saturating_sub(1 << 30)
}

pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Headroom kept free on a GPU for what its backend allocates outside our buffers (the CUDA
/// backend's memory pool and cuBLAS workspace); checked against the driver's figure.
pub(crate) const GPU_SCRATCH: u64 = 256 << 20;

/// One sequence's part of [`Streamer::eval_batch`]: tokens after its cached positions, and
/// whether its last token's logits are wanted (a prompt chunk that does not end the prompt
/// needs none).
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    pub seq: usize,
    pub tokens: &'a [u32],
    pub logits: bool,
}

/// The executor: buffers allocated, resident weights uploaded, the reader running.
pub struct Streamer {
    p: Prepared,
    /// Every device buffer this executor allocated (freed in Drop, before the backend).
    buffers: Vec<Buffer>,
    /// Per slot, per buffer type: its region (None where no streamed layer has tensors).
    slots: Vec<Vec<Option<Seg>>>,
    ring: Option<Ring>,
    compute_bytes: u64,
    device_bytes: u64,
    /// Per sequence: positions cached.
    n_past: Vec<usize>,
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
            n_past: Vec::new(),
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
        s.n_past = vec![0; s.p.n_seq as usize];
        if s.p.backend.gpu {
            s.driver_free0 = Some(s.p.backend.memory().0);
        }
        s.allocate(o)?;
        Ok(s)
    }
}

impl Streamer {
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
        let n_kv = graph::n_kv_cells(1, self.p.n_cells);
        self.set_inputs(&[(0, 0)], &[], 0, n_kv as usize)?;
        let sh = Batch {
            n_tokens: 1,
            kv_base: 0,
            n_kv,
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
            self.p.cells(),
            self.p.n_ub,
            o.threads,
            o.repack,
        )?);
        self.set_inputs(&[(0, 0)], &[], 0, n_kv as usize)?;
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

    /// Positions cached in sequence 0 (the one [`Streamer::eval`] uses).
    pub fn n_past(&self) -> usize {
        self.n_past[0]
    }

    /// Positions cached in sequence `seq`.
    pub fn n_past_of(&self, seq: usize) -> usize {
        self.n_past.get(seq).copied().unwrap_or(0)
    }

    /// Why an earlier step failed part way, after which every step is refused (None: the
    /// executor is usable; a step refused before it ran leaves it so).
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Most tokens one micro-batch (one sweep of the streamed layers) carries.
    pub fn n_ubatch(&self) -> usize {
        self.p.n_ub as usize
    }

    /// Sequences this executor holds a context for.
    pub fn n_seq(&self) -> usize {
        self.n_past.len()
    }

    pub fn steps(&self) -> &[StepStats] {
        &self.steps
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.snapshot()
    }

    /// Forgets every sequence's context (KV cells are overwritten by the next tokens).
    pub fn clear(&mut self) {
        self.n_past.iter_mut().for_each(|n| *n = 0);
    }

    /// Keeps the first `n` cached positions of sequence `seq` and forgets the rest (a
    /// continued conversation evaluates only what follows); returns how many it kept. The
    /// forgotten cells are masked until new tokens overwrite them.
    pub fn keep_seq(&mut self, seq: usize, n: usize) -> usize {
        match self.n_past.get_mut(seq) {
            Some(p) => {
                *p = (*p).min(n);
                *p
            }
            None => 0,
        }
    }

    /// Forgets sequence `seq`'s context.
    pub fn clear_seq(&mut self, seq: usize) {
        if let Some(n) = self.n_past.get_mut(seq) {
            *n = 0;
        }
    }

    fn compute(&mut self, gf: *mut sys::ggml_cgraph) -> Result<()> {
        // SAFETY: graphs are built by `Prepared` over tensors that have memory (resident
        // buffers, the slot the step placed the layer in, the state).
        unsafe { run_graph(self.p.backend.ptr, &self.p.galloc, self.compute_bytes, gf) }
    }

    /// The step's inputs: for each token its (sequence, position); the mask rows over the
    /// `n_kv` cells from `kv_base` (a token sees its own sequence's cells up to its position,
    /// within the window on sliding layers); each token's KV cell; the rows `outs` lists as
    /// outputs.
    fn set_inputs(
        &mut self,
        rows: &[(usize, usize)],
        outs: &[i32],
        kv_base: usize,
        n_kv: usize,
    ) -> Result<()> {
        let t = rows.len();
        let n_out = outs.len();
        let cells = self.p.n_cells as usize;
        let pos: Vec<i32> = rows.iter().map(|&(_, p)| p as i32).collect();
        let idx: Vec<i64> = rows.iter().map(|&(s, p)| (s * cells + p) as i64).collect();
        let out = outs;
        let n_swa = self.p.hp.n_swa as usize;
        for (j, &(seq, p1)) in rows.iter().enumerate() {
            for i in 0..n_kv {
                let c = kv_base + i;
                let (cs, local) = (c / cells, c % cells);
                let hidden = cs != seq || local > p1;
                self.mask_g[j * n_kv + i] = if hidden { f16::NEG_INFINITY } else { f16::ZERO };
                let sw = hidden || (n_swa > 0 && p1 - local >= n_swa);
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
                sys::ggml_backend_tensor_set(st.kv_idx, idx.as_ptr().cast(), 0, 8 * t);
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
        self.eval_seq(0, tokens, all_logits)
    }

    /// [`Streamer::eval`] for sequence `seq` (its own context; the others' are untouched).
    /// One sequence's step is the same graph as a single-sequence executor's, so its logits
    /// are the same bits.
    pub fn eval_seq(&mut self, seq: usize, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        if all_logits && self.p.n_outputs < self.p.n_ub.min(tokens.len() as i64) {
            bail!("every position's logits were asked for, but the output buffer was sized for the last one (StreamOptions::all_logits)");
        }
        let rows: Vec<(usize, u32)> = tokens.iter().map(|&t| (seq, t)).collect();
        let n = rows.len();
        let out: Vec<bool> = (0..n).map(|i| all_logits || i + 1 == n).collect();
        self.run_rows(&rows, &out)
    }

    /// One token for each of several sequences in one step: a single pass over the weights
    /// (one sweep of the streamed layers) serves them all. `items` are (sequence, token) with
    /// distinct sequences; returns each one's logits, in order. Batch composition changes
    /// which kernels run (rows of a matrix product), so the logits equal a lone sequence's
    /// within rounding, not bit for bit; one item is exactly [`Streamer::eval_seq`].
    pub fn decode(&mut self, items: &[(usize, u32)]) -> Result<Vec<Vec<f32>>> {
        let chunks: Vec<SeqChunk<'_>> = items
            .iter()
            .map(|(seq, tok)| SeqChunk {
                seq: *seq,
                tokens: std::slice::from_ref(tok),
                logits: true,
            })
            .collect();
        self.eval_batch(&chunks)
    }

    /// Tokens of several sequences evaluated together: each chunk's tokens follow its
    /// sequence's cached positions (distinct sequences). The rows, chunk after chunk, go
    /// through in micro-batches of up to `n_ubatch` tokens, and each micro-batch is one sweep
    /// of the streamed layers whatever sequences it holds: prompts that arrive together share
    /// their sweeps, and decode tokens ride with prompt chunks. Returns the last token's
    /// logits of every chunk that asks for them, in order. One chunk is exactly
    /// [`Streamer::eval_seq`]; otherwise the logits equal each sequence's alone within
    /// rounding (batch composition changes which kernels run).
    pub fn eval_batch(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>> {
        let mut seen = vec![false; self.n_past.len()];
        for c in chunks {
            if c.seq >= seen.len() {
                bail!(
                    "sequence {} does not exist (this executor holds {})",
                    c.seq,
                    seen.len()
                );
            }
            if std::mem::replace(&mut seen[c.seq], true) {
                bail!("sequence {} appears twice in one step", c.seq);
            }
            if c.tokens.is_empty() {
                bail!("sequence {}: nothing to evaluate", c.seq);
            }
        }
        let (mut rows, mut out) = (Vec::new(), Vec::new());
        for c in chunks {
            rows.extend(c.tokens.iter().map(|&t| (c.seq, t)));
            out.extend((0..c.tokens.len()).map(|i| c.logits && i + 1 == c.tokens.len()));
        }
        let logits = self.run_rows(&rows, &out)?;
        let v = self.p.hp.n_vocab as usize;
        Ok(logits.chunks(v).map(<[f32]>::to_vec).collect())
    }

    /// Runs `rows` ((sequence, token); each sequence's tokens take its next positions, in
    /// order) in micro-batches of up to `n_ubatch` rows; returns the logits of the rows `out`
    /// marks, row-major in row order.
    fn run_rows(&mut self, rows: &[(usize, u32)], out: &[bool]) -> Result<Vec<f32>> {
        let tokens: Vec<u32> = rows.iter().map(|&(_, t)| t).collect();
        self.check_step(&tokens)?;
        // Each row's (sequence, position), and the context each sequence ends with.
        let mut end = self.n_past.clone();
        let mut at = Vec::with_capacity(rows.len());
        for &(seq, _) in rows {
            let Some(e) = end.get_mut(seq) else {
                bail!(
                    "sequence {seq} does not exist (this executor holds {})",
                    self.n_past.len()
                );
            };
            at.push((seq, *e));
            *e += 1;
        }
        let n_ctx = self.p.n_ctx as usize;
        for (seq, (&e, &n)) in end.iter().zip(&self.n_past).enumerate() {
            if e > n_ctx {
                bail!(
                    "sequence {seq}: the context of {n_ctx} positions is full ({n} cached + {} new)",
                    e - n
                );
            }
        }
        let n_ub = self.p.n_ub as usize;
        for part in out.chunks(n_ub) {
            let n_out = part.iter().filter(|&&o| o).count() as i64;
            if n_out > self.p.n_outputs {
                bail!(
                    "{n_out} logit rows in one micro-batch, but the output buffer holds {} (StreamOptions::n_seq, all_logits)",
                    self.p.n_outputs
                );
            }
        }
        let t_step = Instant::now();
        let mut stats = StepStats::new(rows.len(), self.p.hp.n_layer);
        let mut logits = Vec::new();
        let cells = self.p.n_cells as usize;
        for (ci, part) in at.chunks(n_ub).enumerate() {
            let from = ci * n_ub;
            let outs: Vec<i32> = (0..part.len())
                .filter(|&i| out[from + i])
                .map(|i| i as i32)
                .collect();
            // The cells from the first sequence's to the last one's used (padded) ones (for
            // one sequence: its own, as a single-sequence executor's).
            let lo = part.iter().map(|r| r.0).min().context("no rows")?;
            let &(hi, hi_pos) = part.iter().max().context("no rows")?;
            let n_kv =
                (hi - lo) * cells + graph::n_kv_cells(hi_pos as i64 + 1, self.p.n_cells) as usize;
            // A batch holding a prompt (a sequence with several tokens) is compute-bound and
            // the reader mostly waits: every core. Otherwise the decode threads: the reader
            // streams the next layers during every step and needs its core (on 2 cores, two
            // compute threads and the reader took 4.6 s of compute for a 4-sequence step of
            // the 8B-shaped file, one thread 1.3-2.8 s; BENCHMARKS.md).
            let n_seqs = {
                let mut s: Vec<usize> = part.iter().map(|r| r.0).collect();
                s.dedup();
                s.len()
            };
            let n_threads = if part.len() > n_seqs {
                self.threads.1
            } else {
                self.threads.0
            };
            let r = self.step(
                n_threads,
                &tokens[from..from + part.len()],
                part,
                &outs,
                lo * cells,
                n_kv,
                &mut stats,
                &mut logits,
            );
            if let Err(e) = r {
                // A step that stopped half way may hold slots or have consumed layers the
                // reader has moved past: nothing after it can be trusted.
                self.failed = Some(format!("{e:#}"));
                return Err(e);
            }
            for &(seq, p) in part {
                self.n_past[seq] = p + 1;
            }
        }
        self.record_step(stats, t_step)?;
        Ok(logits)
    }

    /// Keeps a finished step's statistics and checks the driver's memory figure.
    fn record_step(&mut self, mut stats: StepStats, t_step: Instant) -> Result<()> {
        stats.total_s = t_step.elapsed().as_secs_f64();
        stats.peak_rss = crate::engine::peak_rss();
        self.steps.push(stats);
        self.check_driver()
    }

    /// What every step refuses: a failed executor, no tokens, ids outside the vocabulary.
    fn check_step(&self, tokens: &[u32]) -> Result<()> {
        if let Some(e) = &self.failed {
            bail!("an earlier step failed, the ring is out of step ({e}); open the model again");
        }
        if tokens.is_empty() {
            bail!("nothing to evaluate");
        }
        let n_vocab = self.p.hp.n_vocab as usize;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            bail!("token id {bad} is outside the vocabulary of {n_vocab}");
        }
        Ok(())
    }

    /// One micro-batch through every layer: `tokens` at `rows` (sequence, position), the
    /// attention over `n_kv` cells from `kv_base`, the logits of the rows `outs` lists
    /// (ascending) appended, computed by `n_threads` CPU threads.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        n_threads: usize,
        tokens: &[u32],
        rows: &[(usize, usize)],
        outs: &[i32],
        kv_base: usize,
        n_kv: usize,
        stats: &mut StepStats,
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        let t = tokens.len() as i64;
        let n_threads = n_threads as i32;
        let host = self.host.as_ref().map(|h| &h.backend);
        for b in std::iter::once(&self.p.backend).chain(host) {
            if !b.gpu {
                // SAFETY: a live CPU backend.
                unsafe { handles::set_n_threads(b.ptr, n_threads) };
            }
        }
        let n_out = outs.len();
        self.set_inputs(rows, outs, kv_base, n_kv)?;
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
                kv_base: kv_base as i64,
                n_kv: n_kv as i64,
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
        // The reader writes into the slots: stop it first; then the buffers go, before the
        // allocator and the backend (fields of `p`, which is dropped first otherwise).
        self.ring = None;
        self.host = None;
        self.buffers.clear();
    }
}
