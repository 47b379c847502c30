//! The ring: N layer-sized device buffers ("slots") and a reader thread that fills them.
//!
//! A slot is owned by exactly one side at a time and handed over through two channels: the
//! reader takes a free slot, copies the next streamed layer into it and sends it as filled;
//! the executor computes the layer from it and sends it back as free. The channel hand-over
//! orders the reader's writes before the executor's reads (and the compute before the next
//! overwrite), so a slot is never reused while the compute reading it is running. The reader
//! runs ahead by up to N layers, across token boundaries: it cycles through the streamed layers
//! for as long as the ring lives.

use super::graph::{self, Ctx};
use super::profile::{EvKind, Events};
use super::upload::Staged;
use anyhow::{bail, Context, Result};
use llama_cpp_sys_2 as sys;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::gguf::GgufModel;

/// One piece of a layer: tensor `tensor` of the layer, `len` bytes at absolute offset `src` of
/// file `part` (of a split set), goes to offset `dst` of the slot's region of buffer type `seg`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub part: usize,
    pub src: u64,
    pub len: u64,
    pub seg: usize,
    pub dst: u64,
    pub tensor: usize,
}

/// A region of a slot (or of the resident layers): a backend buffer of one buffer type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg {
    pub buf: sys::ggml_backend_buffer_t,
    pub base: usize,
    pub size: u64,
}

// SAFETY: a handle and an address; who may touch the memory behind them is decided by the
// ring's slot hand-over.
unsafe impl Send for Seg {}

/// What the reader copies for one streamed layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerCopy {
    pub layer: usize,
    pub pieces: Vec<Piece>,
}

impl LayerCopy {
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.len).sum()
    }
}

/// Where the reader gets bytes from.
#[derive(Debug)]
pub(crate) enum Source {
    /// The memory-mapped GGUF (page cache, or disk on first touch); every part of a split set.
    Mmap(Arc<GgufModel>),
    /// `O_DIRECT` preads (one file per part) into an aligned staging buffer of bounded size,
    /// bypassing the page cache.
    Direct {
        files: Vec<File>,
        staging: AlignedBuf,
    },
    /// `O_DIRECT` reads done ahead on a thread of their own, in the order the reader takes
    /// the pieces (see [`Prefetch`]).
    Prefetch(Prefetch),
}

/// A piece read ahead: its bytes start `skip` bytes into the buffer.
type Fetched = Result<(Piece, AlignedBuf, usize), String>;

/// `O_DIRECT` reads of the ring's cycle, piece after piece in the order the reader consumes
/// them, on a thread of their own into a pool of two aligned buffers: the disk reads the next
/// piece while the reader copies or repacks this one (CPU work on the CPU device: read, then
/// repack, one after the other on the reader alone left the disk idle for the repack), and
/// each piece is one read of its whole aligned span (larger requests read faster).
#[derive(Debug)]
pub(crate) struct Prefetch {
    fetched: Option<Receiver<Fetched>>,
    pool: Option<Sender<AlignedBuf>>,
    thread: Option<JoinHandle<()>>,
}

/// Buffers the prefetch thread reads into (one being consumed, one being read).
const PREFETCH_BUFFERS: usize = 2;

impl Prefetch {
    /// Starts reading `cycle`'s pieces (over and over, as the reader cycles) from `files`.
    fn start(files: Vec<File>, cycle: Vec<LayerCopy>) -> Prefetch {
        let largest = cycle
            .iter()
            .flat_map(|lc| lc.pieces.iter().map(|p| p.len))
            .max()
            .unwrap_or(0);
        // The aligned span of any piece: its length plus up to one block either side.
        let cap = (largest.div_ceil(DIO_ALIGN) + 2) * DIO_ALIGN;
        let (pool_tx, pool_rx) = channel::<AlignedBuf>();
        for _ in 0..PREFETCH_BUFFERS {
            pool_tx
                .send(AlignedBuf::new(cap as usize))
                .expect("receiver alive");
        }
        let (tx, rx) = channel::<Fetched>();
        let thread = std::thread::Builder::new()
            .name("jq-stream-prefetch".into())
            .spawn(move || {
                for p in cycle.iter().cycle().flat_map(|lc| lc.pieces.iter()) {
                    // The reader gone (the ring dropped): stop.
                    let Ok(mut buf) = pool_rx.recv() else { return };
                    let got = files
                        .get(p.part)
                        .context("no such part of the split set")
                        .and_then(|f| read_span(f, buf.as_mut(), p.src, p.len));
                    let stop = got.is_err();
                    let msg = got
                        .map(|skip| (*p, buf, skip))
                        .map_err(|e| format!("{e:#}"));
                    if tx.send(msg).is_err() || stop {
                        return;
                    }
                }
            })
            .expect("spawning the prefetch thread");
        Prefetch {
            fetched: Some(rx),
            pool: Some(pool_tx),
            thread: Some(thread),
        }
    }

    /// Hands `p`'s bytes (the next piece read) to `f`, then gives the buffer back.
    fn with_piece<T>(&mut self, p: Piece, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        let rx = self
            .fetched
            .as_ref()
            .context("the prefetch thread stopped")?;
        let (q, mut buf, skip) = match rx.recv() {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("the prefetch thread stopped"),
        };
        if (q.part, q.src, q.len) != (p.part, p.src, p.len) {
            bail!(
                "the prefetch thread read {} bytes at {} where {} at {} were due",
                q.len,
                q.src,
                p.len,
                p.src
            );
        }
        let r = f(&buf.as_mut()[skip..skip + p.len as usize]);
        if let Some(pool) = &self.pool {
            let _ = pool.send(buf);
        }
        r
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Closing both channels ends the thread after its current read.
        self.pool = None;
        self.fetched = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the aligned span covering [src, src+len) of `file` into `buf` with as few requests
/// as the kernel allows; returns where the wanted bytes start in `buf`.
fn read_span(file: &File, buf: &mut [u8], src: u64, len: u64) -> Result<usize> {
    let start = src / DIO_ALIGN * DIO_ALIGN;
    let skip = (src - start) as usize;
    let span = (skip as u64 + len).div_ceil(DIO_ALIGN) * DIO_ALIGN;
    if !(buf.as_ptr() as u64).is_multiple_of(DIO_ALIGN) || (buf.len() as u64) < span {
        bail!("direct read: the prefetch buffer is not aligned or too small");
    }
    let buf = &mut buf[..span as usize];
    let mut got = 0usize;
    while got < skip + len as usize {
        let n = file
            .read_at(&mut buf[got..], start + got as u64)
            .context("direct read")?;
        if n == 0 {
            bail!(
                "direct read: unexpected end of file at offset {}",
                start + got as u64
            );
        }
        got += n;
    }
    Ok(skip)
}

/// Direct-I/O alignment (logical block size of every disk we meet; 4 KiB covers 512 too).
const DIO_ALIGN: u64 = 4096;
/// Staging buffer for direct I/O: host memory stays bounded by this.
pub(crate) const STAGING_BYTES: usize = 16 << 20;

/// A heap buffer aligned for `O_DIRECT`.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is plain owned memory; only the thread that owns the struct touches it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let layout =
            std::alloc::Layout::from_size_align(len.max(1), DIO_ALIGN as usize).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf {
            ptr,
            len: len.max(1),
        }
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` bytes we own, exclusively borrowed through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.len, DIO_ALIGN as usize).expect("layout");
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

impl Source {
    pub fn open(file: Arc<GgufModel>, direct: bool) -> Result<Source> {
        if !direct {
            return Ok(Source::Mmap(file));
        }
        Ok(Source::Direct {
            files: file
                .parts()
                .iter()
                .map(|p| open_direct(p.path()))
                .collect::<Result<_>>()?,
            staging: AlignedBuf::new(STAGING_BYTES),
        })
    }

    /// `p`'s bytes in place, when the source is the memory map.
    pub fn mapped(&self, p: Piece) -> Option<&[u8]> {
        match self {
            Source::Mmap(f) => f
                .parts()
                .get(p.part)?
                .bytes()
                .get(p.src as usize..(p.src + p.len) as usize),
            Source::Direct { .. } | Source::Prefetch(_) => None,
        }
    }

    /// Hands `p`'s bytes to `f`: in place from the map, else read (ahead, when prefetching).
    pub fn with_piece<T>(
        &mut self,
        p: Piece,
        staging: Option<&mut AlignedBuf>,
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        if let Source::Prefetch(pf) = self {
            return pf.with_piece(p, f);
        }
        if let Some(src) = self.mapped(p) {
            return f(src);
        }
        let st = staging.context("no staging buffer for direct reads")?;
        let dst = st
            .as_mut()
            .get_mut(..p.len as usize)
            .context("a tensor is larger than the staging buffer")?;
        self.read(p, dst)?;
        f(dst)
    }

    /// Copies `p` into `dst` (which is `p.len` bytes).
    pub fn read(&mut self, p: Piece, dst: &mut [u8]) -> Result<()> {
        match self {
            Source::Mmap(_) => {
                let src = self.mapped(p).context("tensor data outside the file")?;
                dst.copy_from_slice(src);
            }
            Source::Prefetch(pf) => pf.with_piece(p, |b| {
                dst.copy_from_slice(b);
                Ok(())
            })?,
            Source::Direct { files, staging } => {
                let file = files.get(p.part).context("no such part of the split set")?;
                // Aligned chunks covering [src, src+len); each chunk's useful part is copied.
                let mut done = 0u64;
                while done < p.len {
                    let (skip, useful) =
                        read_aligned(file, staging.as_mut(), p.src + done, p.len - done)?;
                    dst[done as usize..(done + useful) as usize]
                        .copy_from_slice(&staging.as_mut()[skip..skip + useful as usize]);
                    done += useful;
                }
            }
        }
        Ok(())
    }

    /// `O_DIRECT` only: reads the aligned blocks covering the start of `p`'s bytes from
    /// `p.src + at` (at most `len`) straight into `buf` (4 KiB-aligned), as many as fit, and
    /// returns where the wanted bytes start in it and how many arrived; `None` for the map.
    pub fn read_into_aligned(
        &mut self,
        p: Piece,
        at: u64,
        len: u64,
        buf: &mut [u8],
    ) -> Result<Option<(usize, u64)>> {
        match self {
            Source::Mmap(_) => Ok(None),
            Source::Direct { files, .. } => {
                let file = files.get(p.part).context("no such part of the split set")?;
                read_aligned(file, buf, p.src + at, len).map(Some)
            }
            Source::Prefetch(_) => bail!("a prefetching source serves whole pieces only"),
        }
    }
}

/// Writes `src` into tensor `t` of `buf`: through the buffer's `set_tensor` (which repacks in
/// a CPU_REPACK buffer, uploads on a GPU), except for a tensor in a CPU_REPACK buffer that ggml
/// does not repack (no traits in `extra`: norms, shapes its kernels do not take), whose bytes
/// are copied as they are (that buffer's `set_tensor` only knows repacking).
///
/// # Safety
/// `t` is a live tensor placed in the live buffer `buf` with `src.len()` == its size.
pub(crate) unsafe fn set_tensor(
    buf: sys::ggml_backend_buffer_t,
    t: *mut sys::ggml_tensor,
    src: &[u8],
) {
    // SAFETY: the caller's contract; a CPU_REPACK buffer is host memory.
    unsafe {
        if super::handles::is_unrepacked_in_repack_buffer(buf, t) {
            std::ptr::copy_nonoverlapping(src.as_ptr(), (*t).data.cast::<u8>(), src.len());
        } else {
            sys::ggml_backend_tensor_set(t, src.as_ptr().cast(), 0, src.len());
        }
    }
}

/// Slots in host memory (the CPU device). Per tensor: where its buffer type stores tensors as
/// the file has them, the bytes are copied (or read with `O_DIRECT`) straight into the slot;
/// where it lays them out its own way (AMX, CPU_REPACK), the reader places a descriptor of its
/// own at the tensor's offset and writes through the buffer's `set_tensor`, which repacks.
pub(crate) struct HostSlots {
    /// Per slot, per buffer type: its region.
    slots: Vec<Vec<Option<Seg>>>,
    /// Per buffer type: bytes may be copied straight in.
    plain: Vec<bool>,
    /// The reader's own descriptors (duplicates of the weights'), per layer (empty for layers
    /// that do not stream), per tensor.
    _ctx: Ctx,
    descs: Vec<Vec<*mut sys::ggml_tensor>>,
    /// For `O_DIRECT` sources: room for the largest repacked tensor (set_tensor takes a whole
    /// tensor).
    staging: Option<AlignedBuf>,
}

impl std::fmt::Debug for HostSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSlots")
            .field("slots", &self.slots.len())
            .field("plain", &self.plain)
            .finish()
    }
}

// SAFETY: the descriptors and buffers are only touched by the reader thread while it owns the
// slot (channel hand-over), and they outlive it (the ring is joined before they are freed).
unsafe impl Send for HostSlots {}

impl HostSlots {
    /// `layers`: every streamed layer with its weights' descriptors in table order (duplicated
    /// here; null for a tensor the file lacks);
    /// `direct_staging`: the largest tensor's bytes, when the source is `O_DIRECT`.
    pub fn new(
        slots: Vec<Vec<Option<Seg>>>,
        plain: Vec<bool>,
        layers: &[(usize, Vec<*mut sys::ggml_tensor>)],
        n_layer: usize,
        direct_staging: Option<usize>,
    ) -> Result<HostSlots> {
        let n: usize = layers.iter().map(|(_, ts)| ts.len()).sum();
        let ctx = Ctx::new(n.max(1), 0)?;
        let mut descs = vec![Vec::new(); n_layer];
        for (l, ts) in layers {
            for &t in ts {
                if t.is_null() {
                    // An optional tensor the file lacks: no piece refers to it.
                    descs[*l].push(t);
                    continue;
                }
                // SAFETY: `ctx` has room for one descriptor per weight passed; `t` is live.
                let d = unsafe { sys::ggml_dup_tensor(ctx.ptr, t) };
                if d.is_null() {
                    bail!("ggml could not duplicate a weight descriptor");
                }
                descs[*l].push(d);
            }
        }
        Ok(HostSlots {
            slots,
            plain,
            _ctx: ctx,
            descs,
            staging: direct_staging.map(AlignedBuf::new),
        })
    }

    fn fill(&mut self, source: &mut Source, slot: usize, lc: &LayerCopy) -> Result<()> {
        for p in &lc.pieces {
            let seg = self.slots[slot]
                .get(p.seg)
                .copied()
                .flatten()
                .context("a tensor's buffer type has no region in the slot")?;
            if p.dst + p.len > seg.size {
                bail!("a tensor of layer {} does not fit its slot", lc.layer);
            }
            if self.plain[p.seg] {
                // SAFETY: the region is `seg.size` bytes of host memory that outlives the
                // reader thread (the ring is joined before the slots are freed), the range is
                // inside it (checked above), and the reader owns the slot until it sends it as
                // filled.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        (seg.base as *mut u8).add(p.dst as usize),
                        p.len as usize,
                    )
                };
                source.read(*p, dst)?;
                continue;
            }
            let t = *self
                .descs
                .get(lc.layer)
                .and_then(|d| d.get(p.tensor))
                .context("no descriptor for a streamed tensor")?;
            // SAFETY: `t` is the reader's own live descriptor, used by no graph; the address
            // lies inside the region (checked above).
            unsafe { graph::place_tensor(seg.buf, t, seg.base + p.dst as usize)? };
            // SAFETY: `t` is placed in `seg.buf`.
            let n = unsafe { sys::ggml_nbytes(t) } as u64;
            if n != p.len {
                bail!("layer {}: a tensor's size differs from its piece", lc.layer);
            }
            source.with_piece(*p, self.staging.as_mut(), |src| {
                // SAFETY: `t` is placed in `seg.buf`, `src` is its size (checked above).
                unsafe { set_tensor(seg.buf, t, src) };
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Direct-I/O alignment, public to the staging code.
pub(crate) const DIRECT_ALIGN: usize = DIO_ALIGN as usize;

/// Reads with `O_DIRECT` the aligned blocks covering [want, want+len) into `buf` (4 KiB-aligned
/// memory), as many as fit; returns (offset of `want` in `buf`, useful bytes read).
fn read_aligned(file: &File, buf: &mut [u8], want: u64, len: u64) -> Result<(usize, u64)> {
    if !(buf.as_ptr() as u64).is_multiple_of(DIO_ALIGN) || (buf.len() as u64) < 2 * DIO_ALIGN {
        bail!("direct read: the staging buffer is not aligned or too small");
    }
    let start = want / DIO_ALIGN * DIO_ALIGN;
    let skip = want - start;
    let room = buf.len() as u64 / DIO_ALIGN * DIO_ALIGN;
    let chunk = room.min((skip + len).div_ceil(DIO_ALIGN) * DIO_ALIGN);
    let buf = &mut buf[..chunk as usize];
    let mut got = 0usize;
    while got < buf.len() {
        let n = file
            .read_at(&mut buf[got..], start + got as u64)
            .context("direct read")?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let useful = (got as u64).saturating_sub(skip).min(len);
    if useful == 0 {
        bail!("direct read: unexpected end of file at offset {want}");
    }
    Ok((skip as usize, useful))
}

/// `O_DIRECT` from Linux's `fcntl.h` (it differs by architecture; no libc dependency for one
/// constant).
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const O_DIRECT: i32 = 0o200000;
#[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
const O_DIRECT: i32 = 0o40000;

fn open_direct(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(path)
        .with_context(|| format!("opening {} with O_DIRECT", path.display()))
}

/// A filled slot handed to the executor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filled {
    pub slot: usize,
    pub layer: usize,
    pub bytes: u64,
    /// Seconds the reader spent on this layer.
    pub read_s: f64,
}

/// The reader thread and its two channels.
#[derive(Debug)]
pub(crate) struct Ring {
    free_tx: Option<Sender<usize>>,
    filled_rx: Receiver<Result<Filled, String>>,
    thread: Option<JoinHandle<()>>,
}

/// Where the reader puts a layer.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Slots in host memory (see [`HostSlots`]).
    Host(HostSlots),
    /// Slots behind a staged, asynchronous upload (see `upload.rs`).
    Staged(Staged),
    /// Benchmark hook: each slot is filled once through the inner sink (so the compute reads
    /// real, distinct memory: an untouched slot would read the kernel's shared zero page from
    /// cache), then handed over without reading: the compute of the same plan with no copy.
    Skip { inner: Box<Sink>, filled: Vec<bool> },
}

impl Sink {
    /// Puts `lc` into `slot` (the caller owns the slot).
    pub fn fill(&mut self, source: &mut Source, slot: usize, lc: &LayerCopy) -> Result<()> {
        match self {
            Sink::Host(h) => h.fill(source, slot, lc),
            Sink::Staged(s) => s.fill(source, slot, &lc.pieces),
            Sink::Skip { inner, filled } => {
                if filled[slot] {
                    return Ok(());
                }
                filled[slot] = true;
                inner.fill(source, slot, lc)?;
                inner.finish();
                Ok(())
            }
        }
    }

    /// Waits until every queued upload has landed.
    pub fn finish(&mut self) {
        match self {
            Sink::Staged(s) => s.finish(),
            Sink::Skip { inner, .. } => inner.finish(),
            Sink::Host(_) => {}
        }
    }
}

impl Ring {
    /// Starts the reader over `cycle` (the streamed layers in execution order) with every
    /// slot free. `delay` slows each layer's read (test hook for the overlap test).
    pub fn start(
        mut source: Source,
        mut sink: Sink,
        n_slots: usize,
        cycle: Vec<LayerCopy>,
        events: Events,
        delay: Duration,
    ) -> Ring {
        // Host slots from an O_DIRECT source: the reads go ahead on their own thread while
        // the reader copies and repacks (the staged sink reads its own way, in chunks). If
        // the file handles cannot be duplicated, the reader reads them itself as before.
        let dup = match (&source, &sink) {
            (Source::Direct { files, .. }, Sink::Host(_)) => files
                .iter()
                .map(File::try_clone)
                .collect::<std::io::Result<Vec<_>>>()
                .ok(),
            _ => None,
        };
        if let Some(files) = dup {
            source = Source::Prefetch(Prefetch::start(files, cycle.clone()));
            if let Sink::Host(h) = &mut sink {
                h.staging = None;
            }
        }
        let (free_tx, free_rx) = channel::<usize>();
        let (filled_tx, filled_rx) = channel();
        for i in 0..n_slots {
            free_tx.send(i).expect("receiver alive");
        }
        let thread = std::thread::Builder::new()
            .name("jq-stream-reader".into())
            .spawn(move || {
                let mut k = 0usize;
                while let Ok(slot) = free_rx.recv() {
                    let lc = &cycle[k % cycle.len()];
                    k += 1;
                    events.push(EvKind::ReadStart, lc.layer);
                    let t0 = std::time::Instant::now();
                    let res = sink
                        .fill(&mut source, slot, lc)
                        .map_err(|e| format!("reading layer {}: {e:#}", lc.layer));
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    events.push(EvKind::ReadEnd, lc.layer);
                    let bytes = if matches!(sink, Sink::Skip { .. }) {
                        0
                    } else {
                        lc.bytes()
                    };
                    let msg = res.map(|()| Filled {
                        slot,
                        layer: lc.layer,
                        bytes,
                        read_s: t0.elapsed().as_secs_f64(),
                    });
                    let stop = msg.is_err();
                    if filled_tx.send(msg).is_err() || stop {
                        return;
                    }
                }
            })
            .expect("spawning the reader thread");
        Ring {
            free_tx: Some(free_tx),
            filled_rx,
            thread: Some(thread),
        }
    }

    /// Waits for the next filled slot.
    pub fn next(&self) -> Result<Filled> {
        match self.filled_rx.recv() {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("the reader thread stopped"),
        }
    }

    /// Gives a slot back once the compute reading it has finished.
    pub fn release(&self, slot: usize) {
        if let Some(tx) = &self.free_tx {
            // The reader may have stopped on an error, reported by the next `next()`.
            let _ = tx.send(slot);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.free_tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
