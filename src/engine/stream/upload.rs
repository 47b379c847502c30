//! The staged upload path, for devices whose memory the host cannot write (CUDA): the reader
//! brings each streamed layer chunk by chunk into staging memory (pinned host memory, the
//! device's host buffer type, when it has one: copied from the memory map, or with
//! `--direct-io` read by `O_DIRECT` straight into the chunk) and queues each chunk's upload on a backend
//! instance of its own (on CUDA: its own stream), so uploads overlap the compute running on the
//! executor's backend (another stream). Ordering is by events, not by the host:
//! - a staging chunk is refilled only after the event recorded behind its upload completed;
//! - after a layer's last chunk, a per-slot "ready" event is recorded on the upload stream and
//!   the executor makes its compute stream wait on it (`ggml_backend_event_wait`) before the
//!   layer's graph runs;
//! - a slot is overwritten only after the compute that read it returned (the ring's slot
//!   hand-over, see `ring.rs`; `ggml_backend_graph_compute` returns after the device finished).
//!
//! The same code runs on every ggml backend: where the device has no events (the CPU backend),
//! uploads are synchronous and the ordering falls back to `ggml_backend_synchronize`; where it
//! has no host buffer type, staging is plain aligned memory. Tests run this path on the CPU
//! backend (`StreamOptions::staged`) to check offsets and chunking against the direct path.

use super::graph::Ctx;
use super::ring::{AlignedBuf, Piece, Seg, Source, DIRECT_ALIGN};
use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;
use std::sync::Arc;

/// Staging chunks in flight (host memory used for staging is `CHUNKS` x the chunk size,
/// `StreamOptions::staging_chunk`).
pub(crate) const CHUNKS: usize = 4;

/// The per-slot ready events, shared by the reader (which records them) and the executor
/// (which waits on them), freed when both are done with them: the reader may stop early on an
/// error while the executor still holds slots it handed over. Null entries: the device has no
/// events.
#[derive(Debug)]
pub(crate) struct ReadyEvents(Vec<sys::ggml_backend_event_t>);

// SAFETY: ggml/CUDA events are thread-safe handles; who records and who waits is ordered by the
// ring's channels; they are freed once, by the last owner.
unsafe impl Send for ReadyEvents {}
// SAFETY: as above; shared access only records or waits, in channel order.
unsafe impl Sync for ReadyEvents {}

impl ReadyEvents {
    /// Slot `i`'s event (null without events).
    pub fn get(&self, i: usize) -> sys::ggml_backend_event_t {
        self.0.get(i).copied().unwrap_or(std::ptr::null_mut())
    }

    /// Whether the device has events.
    pub fn real(&self) -> bool {
        self.0.iter().all(|e| !e.is_null())
    }
}

impl Drop for ReadyEvents {
    fn drop(&mut self) {
        for &e in &self.0 {
            if !e.is_null() {
                // SAFETY: created by ggml_backend_event_new, freed once, by the last owner,
                // after the upload backend synchronized (Staged's Drop runs before its Arc
                // releases this).
                unsafe { sys::ggml_backend_event_free(e) };
            }
        }
    }
}

enum Memory {
    /// Pinned host memory from the device's host buffer type.
    Pinned {
        buf: sys::ggml_backend_buffer_t,
        base: *mut u8,
        len: usize,
    },
    Plain(AlignedBuf),
}

struct Chunk {
    mem: Memory,
    done: sys::ggml_backend_event_t,
    pending: bool,
}

impl Chunk {
    fn bytes(&mut self) -> &mut [u8] {
        match &mut self.mem {
            // SAFETY: `base` points to CHUNK_BYTES of pinned memory owned by `buf`, exclusively
            // borrowed through `self` (its previous upload finished: see `Staged::fill`).
            Memory::Pinned { base, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(*base, *len)
            },
            Memory::Plain(b) => b.as_mut(),
        }
    }
}

/// Staging memory, the upload backend and the slot targets.
pub(crate) struct Staged {
    upload: sys::ggml_backend_t,
    /// Holds one byte tensor spanning each region of each slot (the upload targets).
    _ctx: Ctx,
    /// Per slot, per buffer type: the target and its size.
    slots: Vec<Vec<Option<(*mut sys::ggml_tensor, u64)>>>,
    ready: Arc<ReadyEvents>,
    chunks: Vec<Chunk>,
    chunk_bytes: usize,
    next: usize,
    pinned: bool,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("slots", &self.slots.len())
            .field("chunks", &self.chunks.len())
            .field("pinned", &self.pinned)
            .field("events", &self.ready.real())
            .finish()
    }
}

// SAFETY: every handle is owned by this struct; it is built on the executor's thread and then
// used by the reader thread only (the ready events are shared as described at ReadyEvents).
unsafe impl Send for Staged {}

impl Staged {
    /// Sets up uploads into `slots` (per slot, per buffer type, live buffers of `dev`)
    /// through `CHUNKS` staging chunks of `chunk_bytes`.
    pub fn new(
        dev: sys::ggml_backend_dev_t,
        slots: &[Vec<Option<Seg>>],
        chunk_bytes: usize,
    ) -> Result<Staged> {
        // Room for `chunk_bytes` of payload plus the alignment slack of an O_DIRECT read
        // straight into the chunk.
        let chunk_bytes = chunk_bytes.max(1);
        let alloc = chunk_bytes + 2 * DIRECT_ALIGN;
        let n_targets: usize = slots.iter().map(|s| s.iter().flatten().count()).sum();
        let ctx = Ctx::new(n_targets.max(1), 0)?;
        // SAFETY: `dev` is a registered device; every handle is checked for null and owned by
        // the returned struct (freed in Drop, also on the error paths below via Drop).
        unsafe {
            let upload = sys::ggml_backend_dev_init(dev, std::ptr::null());
            if upload.is_null() {
                bail!("could not start an upload backend on the device");
            }
            // Creates the upload stream now, on this thread.
            sys::ggml_backend_synchronize(upload);
            let mut s = Staged {
                upload,
                _ctx: ctx,
                slots: Vec::new(),
                ready: Arc::new(ReadyEvents(
                    (0..slots.len())
                        .map(|_| sys::ggml_backend_event_new(dev))
                        .collect(),
                )),
                chunks: Vec::new(),
                chunk_bytes,
                next: 0,
                pinned: false,
            };
            for slot in slots {
                let mut targets = Vec::with_capacity(slot.len());
                for seg in slot {
                    let Some(seg) = seg else {
                        targets.push(None);
                        continue;
                    };
                    let t = sys::ggml_new_tensor_1d(s._ctx.ptr, sys::GGML_TYPE_I8, seg.size as i64);
                    if t.is_null() {
                        bail!("ggml_new_tensor_1d failed for a slot target");
                    }
                    super::graph::place_tensor(seg.buf, t, seg.base)?;
                    targets.push(Some((t, seg.size)));
                }
                s.slots.push(targets);
            }
            let host = sys::ggml_backend_dev_host_buffer_type(dev);
            for _ in 0..CHUNKS {
                let mem = if host.is_null() {
                    Memory::Plain(AlignedBuf::new(alloc))
                } else {
                    let buf = sys::ggml_backend_buft_alloc_buffer(host, alloc);
                    if buf.is_null() {
                        bail!("could not pin {alloc} bytes of staging memory");
                    }
                    s.pinned = true;
                    Memory::Pinned {
                        buf,
                        base: sys::ggml_backend_buffer_get_base(buf).cast(),
                        len: alloc,
                    }
                };
                s.chunks.push(Chunk {
                    mem,
                    done: sys::ggml_backend_event_new(dev),
                    pending: false,
                });
            }
            Ok(s)
        }
    }

    /// The per-slot ready events (null where the device has no events).
    pub fn ready_events(&self) -> Arc<ReadyEvents> {
        self.ready.clone()
    }

    /// Whether staging is pinned host memory.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    fn wait_chunk(&mut self, i: usize) {
        let c = &mut self.chunks[i];
        if !c.pending {
            return;
        }
        // SAFETY: live handles owned by `self`.
        unsafe {
            if c.done.is_null() {
                sys::ggml_backend_synchronize(self.upload);
            } else {
                sys::ggml_backend_event_synchronize(c.done);
            }
        }
        c.pending = false;
    }

    /// Blocks until every queued upload finished.
    pub fn finish(&mut self) {
        // SAFETY: a live backend owned by `self`.
        unsafe { sys::ggml_backend_synchronize(self.upload) };
    }

    /// Reads `pieces` from `source` and queues their upload into `slot`; records the slot's
    /// ready event after the last one. The caller owns the slot (no compute reads it).
    pub fn fill(&mut self, source: &mut Source, slot: usize, pieces: &[Piece]) -> Result<()> {
        for p in pieces {
            let Some((target, size)) = self.slots[slot].get(p.seg).copied().flatten() else {
                bail!("a tensor's buffer type has no region in the slot");
            };
            if p.dst + p.len > size {
                bail!("a tensor does not fit its slot");
            }
            let mut done = 0u64;
            while done < p.len {
                let want = (self.chunk_bytes as u64).min(p.len - done);
                let i = self.next;
                self.next = (self.next + 1) % self.chunks.len();
                self.wait_chunk(i);
                let c = &mut self.chunks[i];
                let mem = c.bytes();
                // O_DIRECT reads land in the (page-aligned) chunk itself; the memory map is
                // copied in.
                let aligned = (mem.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
                let direct = if aligned {
                    source.read_into_aligned(*p, done, want, mem)?
                } else {
                    None
                };
                let (skip, n) = match direct {
                    Some(r) => r,
                    None => {
                        let part = Piece {
                            src: p.src + done,
                            len: want,
                            ..*p
                        };
                        source.read(part, &mut mem[..want as usize])?;
                        (0, want)
                    }
                };
                let staging = &mem[skip..skip + n as usize];
                // SAFETY: `target` spans the live slot buffer and the range is inside it
                // (checked above); the staging bytes stay untouched until the chunk's event
                // completes (`wait_chunk` before any refill, and in Drop).
                unsafe {
                    sys::ggml_backend_tensor_set_async(
                        self.upload,
                        target,
                        staging.as_ptr().cast(),
                        (p.dst + done) as usize,
                        n as usize,
                    );
                    if !c.done.is_null() {
                        sys::ggml_backend_event_record(c.done, self.upload);
                    }
                }
                c.pending = true;
                done += n;
            }
        }
        // SAFETY: live handles owned by `self`.
        unsafe {
            let ev = self.ready.get(slot);
            if ev.is_null() {
                // No events: the executor cannot wait on the device, so the host does.
                sys::ggml_backend_synchronize(self.upload);
            } else {
                sys::ggml_backend_event_record(ev, self.upload);
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // SAFETY: handles created in `new`, freed once, after every queued upload finished.
        unsafe {
            sys::ggml_backend_synchronize(self.upload);
            for c in &mut self.chunks {
                if !c.done.is_null() {
                    sys::ggml_backend_event_free(c.done);
                }
                if let Memory::Pinned { buf, .. } = c.mem {
                    sys::ggml_backend_buffer_free(buf);
                }
            }
            sys::ggml_backend_free(self.upload);
        }
    }
}

/// Makes `compute` wait on the device for `ev` (nothing to do for a null event: the reader
/// synchronized before handing the slot over).
///
/// # Safety
/// `compute` is a live backend of the device that created `ev`; `ev` was recorded before the
/// slot it belongs to was handed over.
pub(crate) unsafe fn order_before(compute: sys::ggml_backend_t, ev: sys::ggml_backend_event_t) {
    if !ev.is_null() {
        // SAFETY: the caller's contract.
        unsafe { sys::ggml_backend_event_wait(compute, ev) };
    }
}
