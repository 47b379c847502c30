//! Placement and allocation: the executor's device buffers (output head, KV cache and state,
//! resident layers, ring slots, compute buffer), each checked against the budget as it is
//! allocated; the resident weights uploaded; the reader's sink; the host side.

use super::graph::{self, WTensor};
use super::handles::Buffer;
use super::plan::HostLayers;
use super::prepared::Packing;
use super::ring::{self, HostSlots, Ring, Seg, Sink, Source};
use super::{host, upload, StreamOptions, Streamer};
use anyhow::{bail, Context, Result};
use half::f16;
use llama_cpp_sys_2 as sys;

impl Streamer {
    fn alloc_buffer_of(
        &mut self,
        buft: sys::ggml_backend_buffer_type_t,
        size: u64,
        what: &str,
    ) -> Result<(sys::ggml_backend_buffer_t, usize)> {
        // SAFETY: `buft` is a live buffer type of the device, which outlives the buffer.
        let Some(b) = (unsafe { Buffer::alloc(buft, size) }) else {
            bail!(
                "could not allocate {} for {what}",
                crate::engine::plan::fmt_size(size)
            );
        };
        let (ptr, base) = (b.ptr(), b.base());
        self.device_bytes += b.size();
        self.buffers.push(b);
        self.check_budget(what)?;
        Ok((ptr, base))
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
            let (buf, base) = self.alloc_buffer_of(ptr, n, &format!("{what} ({name})"))?;
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
    pub(super) fn check_driver(&mut self) -> Result<()> {
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
    pub(super) fn place_in_slot(&self, l: usize, slot: usize) -> Result<()> {
        self.place(
            &self.slots[slot],
            &self.p.w.layers[l],
            &self.p.layouts[l],
            None,
            false,
        )
    }

    pub(super) fn allocate(&mut self, o: &StreamOptions) -> Result<()> {
        let plan = self.p.plan.clone();
        // Output head (and its norm, the RoPE factors).
        let out_regions =
            self.alloc_regions(&self.p.out_layout.bytes.clone(), "the output head")?;
        let out: Vec<Option<WTensor>> = self.p.w.globals().into_iter().map(Some).collect();
        self.place(&out_regions, &out, &self.p.out_layout, None, true)?;
        // The embedding lookup runs on the host (see `embed_on_host`).
        self.embd = vec![0f32; (self.p.hp.n_embd * self.p.n_ub) as usize];
        // KV cache and state.
        // SAFETY: the state context and buffer type are live; the buffer is owned by
        // `buffers`, dropped before the backend.
        let Some(sb) = (unsafe { Buffer::for_ctx(self.p.st.ctx.ptr, self.p.backend.buft) }) else {
            bail!("could not allocate the KV cache and state");
        };
        // Zeroing the KV cache keeps never-written cells finite.
        sb.clear(0);
        self.device_bytes += sb.size();
        self.buffers.push(sb);
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
            unsafe { self.p.galloc.reserve(gf)? };
        }
        self.compute_bytes = self.p.galloc.buffer_size();
        self.device_bytes += self.compute_bytes;
        self.check_budget("the compute buffer")?;
        let n = (self.p.cells() * self.p.n_ub) as usize;
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
                // No tensor or uploader uses the slot buffers any more (the streamed layers
                // were placed on the host by `start_host`): dropping them frees them.
                if let Some(i) = self.buffers.iter().position(|b| b.ptr() == seg.buf) {
                    self.device_bytes -= self.buffers.swap_remove(i).size();
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
            self.p.cells(),
            self.p.n_ub,
            o.threads,
            o.repack,
        )?);
        Ok(())
    }
}
