//! Everything known before any device memory is allocated: the model, the tensor
//! descriptors, the buffer type llama.cpp would give each weight and where it sits in its
//! layer's regions, the measured compute buffer, and the plan under the budget.

use super::backend::{self, Backend};
use super::graph::{self, Ctx, State, WTensor, Weights};
use super::handles::{with_placeholders, Gallocr};
use super::plan::{self, HostLayers, Plan, Sizes};
use super::ring::{LayerCopy, Piece, Source};
use super::{align_up, default_budget, StreamOptions, GPU_SCRATCH};
use crate::arch::{self, Batch, Hparams};
use crate::gguf::GgufModel;
use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_sys_2 as sys;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

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
    pub(super) fn new(
        backend: &Backend,
        ts: &[Option<WTensor>],
        bufts: &[Option<usize>],
    ) -> Packing {
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
pub(super) fn choose_bufts(
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

/// (KV cache, the rest of the state) bytes of `st` on `backend`'s buffer type.
pub(super) fn state_sizes(st: &State, backend: &Backend) -> (u64, u64) {
    let kv: u64 =
        st.k.iter()
            .chain(&st.v)
            .flatten()
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
pub(super) struct Prepared {
    pub(super) file: Arc<GgufModel>,
    pub(super) hp: Hparams,
    pub(super) backend: Backend,
    pub(super) w: Weights,
    pub(super) st: State,
    pub(super) gctx: Ctx,
    pub(super) galloc: Gallocr,
    pub(super) plan: Plan,
    /// Per layer: each tensor's buffer type and offset in that layer's region of it.
    pub(super) layouts: Vec<Packing>,
    /// The globals on the device ([`Weights::globals`]: the output head, its norm, the RoPE
    /// factors), packed likewise.
    pub(super) out_layout: Packing,
    pub(super) n_ctx: i64,
    /// KV cells of one sequence, as llama.cpp allocates them for `n_ctx` (padded to 256).
    pub(super) n_cells: i64,
    /// Sequences decoded together (`StreamOptions::n_seq`): sequence `s` owns cells
    /// `s * n_cells ..`.
    pub(super) n_seq: i64,
    pub(super) n_ub: i64,
    /// Logit rows the output graph is sized for.
    pub(super) n_outputs: i64,
}

/// Graph shapes whose compute buffers bound every step's: one layer (sliding, global) and the
/// output, each at the largest batch.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Layer(usize),
    Multi(usize),
    Output,
}

/// Most sequences one executor decodes together.
pub const MAX_SEQ: usize = 64;

impl Prepared {
    /// KV cells of every sequence.
    pub(super) fn cells(&self) -> i64 {
        self.n_cells * self.n_seq
    }

    pub(super) fn new(path: &Path, o: &StreamOptions) -> Result<Prepared> {
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
        // SAFETY: `buft` is the live backend's buffer type; the allocator is a field dropped
        // before the backend.
        let galloc = unsafe { Gallocr::new(backend.buft)? };
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
            st: State::new(
                &hp,
                graph::kv_cells(n_ctx) * o.n_seq.clamp(1, MAX_SEQ) as i64,
                i64::from(n_ub_req),
            )?,
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
            n_seq: o.n_seq.clamp(1, MAX_SEQ) as i64,
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
                p.st = State::with_kv(&p.hp, p.cells(), p.n_ub, |l| !host.contains(&l))?;
                let (kv, state) = state_sizes(&p.st, &p.backend);
                p.plan.sizes.kv = kv;
                p.plan.sizes.state = state;
            }
        }
        Ok(p)
    }

    /// Sizes the state and compute buffer for micro-batches of `n_ub` and plans.
    pub(super) fn plan_at(&mut self, n_ub: u32, budget: u64, o: &StreamOptions) -> Result<Plan> {
        self.n_ub = i64::from(n_ub);
        // Every row of a prompt batch, or one per sequence decoded together.
        self.n_outputs = if o.all_logits {
            self.n_ub
        } else {
            self.n_seq.min(self.n_ub)
        };
        self.st = State::new(&self.hp, self.cells(), self.n_ub)?;
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

    pub(super) fn all_tensors(&self) -> Vec<*mut sys::ggml_tensor> {
        let mut v: Vec<_> = self
            .w
            .layers
            .iter()
            .flatten()
            .flatten()
            .map(|t| t.t)
            .collect();
        v.extend(self.w.globals().iter().map(|t| t.t));
        v.extend(self.st.k.iter().chain(&self.st.v).flatten());
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
    pub(super) fn rope_freqs(&self) -> *mut sys::ggml_tensor {
        self.w.rope_freqs.map_or(std::ptr::null_mut(), |t| t.t)
    }

    /// Builds layer `il`'s graph for batch `b` in the graph context.
    pub(super) fn layer_graph(&mut self, il: usize, b: Batch) -> Result<*mut sys::ggml_cgraph> {
        self.gctx.reset();
        let io = self.st.io(&self.hp, il, self.rope_freqs())?;
        // SAFETY: the graph context was just reset; the layer's weights and the state have
        // memory (or placeholders while measuring); `b` fits the state (the executor checks
        // n_past + n_tokens against the context and n_tokens against the micro-batch).
        Ok(unsafe { arch::build_layer(self.gctx.ptr, &self.w.roles(il), &io, &self.hp, il, b) })
    }

    /// Builds the output graph over the first `n_out` rows; returns it and the logits.
    pub(super) fn output_graph(
        &mut self,
        n_out: i64,
    ) -> (*mut sys::ggml_cgraph, *mut sys::ggml_tensor) {
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
    pub(super) fn worst_graph(&mut self, kind: Kind) -> Result<*mut sys::ggml_cgraph> {
        match kind {
            Kind::Layer(il) => self.layer_graph(
                il,
                Batch {
                    n_tokens: self.n_ub,
                    kv_base: 0,
                    n_kv: self.n_cells,
                    n_out: None,
                },
            ),
            // One token of every sequence over every sequence's cells.
            Kind::Multi(il) => self.layer_graph(
                il,
                Batch {
                    n_tokens: self.n_seq.min(self.n_ub),
                    kv_base: 0,
                    n_kv: self.cells(),
                    n_out: None,
                },
            ),
            Kind::Output => Ok(self.output_graph(self.n_outputs).0),
        }
    }

    pub(super) fn kinds(&self) -> Vec<Kind> {
        let mut k = vec![Kind::Output];
        // One sliding and one global layer on the device (their graphs differ only in the
        // mask and RoPE; host layers have their own compute buffer).
        for swa in [true, false] {
            let on_device = |l: &usize| self.hp.swa[*l] == swa && !self.plan.host.contains(l);
            if let Some(l) = (0..self.hp.n_layer).find(on_device) {
                k.push(Kind::Layer(l));
                if self.n_seq > 1 {
                    k.push(Kind::Multi(l));
                }
            }
        }
        k
    }

    /// The compute buffer the largest graph needs, measured by ggml's allocator with every
    /// weight and state tensor given a placeholder address (nothing is allocated).
    pub(super) fn measure_compute(&mut self) -> Result<u64> {
        let tensors = self.all_tensors();
        let kinds = self.kinds();
        // SAFETY: live descriptors with no memory yet; the reservations only measure.
        let best = unsafe {
            with_placeholders(&tensors, || -> Result<u64> {
                let mut best = 0u64;
                for kind in kinds {
                    let gf = self.worst_graph(kind)?;
                    // `gf` is a graph of live tensors (inside this unsafe block).
                    best = best.max(self.galloc.measure(gf));
                }
                Ok(best)
            })?
        };
        Ok(align_up(best, self.backend.align))
    }

    /// Copies the first streamed layer from its source to host memory, twice, and records
    /// the bandwidths (first read, then cached).
    pub(super) fn measure_read(&mut self, direct: bool) -> Result<()> {
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
    pub(super) fn layer_copy(&self, l: usize) -> LayerCopy {
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

/// Plans without allocating or loading anything (`--plan-only`); measures the copy bandwidth
/// of one streamed layer, twice (first read, then cached), for the predicted floors. The
/// checks are the run's: a plan that prints is a plan that runs.
pub fn plan_only(path: &Path, o: &StreamOptions) -> Result<Plan> {
    let mut p = Prepared::new(path, o)?;
    p.measure_read(o.direct_io)?;
    Ok(p.plan.clone())
}
