//! Owned ggml handles and the executor's assumptions about ggml internals, in one place.
//!
//! One owner per C handle, freed in `Drop` (the `llama-cpp-2` style): [`Buffer`] (a backend
//! buffer), [`Gallocr`] (a graph allocator and its compute buffer). The backend and graph
//! contexts are [`super::backend::Backend`] and [`super::graph::Ctx`]; the upload events are
//! owned by [`super::upload::ReadyEvents`]. Views that other threads use (`ring::Seg`: a region
//! of a slot buffer) borrow a raw pointer from a `Buffer` the executor owns and outlives them.
//!
//! The assumptions about ggml that are not part of its documented API, each with its reason
//! and the code of the pinned llama.cpp (0.1.161) it relies on:
//! - [`with_placeholders`]: a tensor whose `data` is non-null is treated by ggml's allocator
//!   as already allocated (`ggml_gallocr_is_allocated` / `ggml_gallocr_allocate_node` in
//!   `ggml/src/ggml-alloc.c` skip it), so a size-only reservation can be made before any
//!   weight has memory by giving every weight and state tensor a fake address, never read.
//! - [`cpu_extra_bufts`]: the CPU backend's extra buffer types (AMX, KleidiAI, CPU_REPACK)
//!   are only reachable through the registry's `ggml_backend_dev_get_extra_bufts` proc
//!   address, a function of the type `ggml_backend_dev_get_extra_bufts_t` in `ggml-backend.h`
//!   (`make_cpu_buft_list` in `src/llama-model.cpp` gets them the same way).
//! - [`set_n_threads`]: a CPU backend's threads are set through its registry's proc address
//!   (`ggml_backend_set_n_threads`), which also works when ggml's backends are loadable modules.
//! - [`is_unrepacked_in_repack_buffer`]: a tensor placed in a `CPU_REPACK` buffer that ggml
//!   does not repack (its `extra` is null: `ggml_backend_cpu_repack_buffer_init_tensor` in
//!   `ggml/src/ggml-cpu/repack.cpp` sets it only for the shapes its kernels take) must have
//!   its bytes copied as they are: that buffer type's `set_tensor` only knows repacking.

use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;
use std::ptr::NonNull;

/// An owned backend buffer (`ggml_backend_buffer_free` on drop).
#[derive(Debug)]
pub(crate) struct Buffer(NonNull<sys::ggml_backend_buffer>);

impl Buffer {
    /// `size` bytes (at least 1) of buffer type `buft`; None when the backend refuses.
    ///
    /// # Safety
    /// `buft` is a live buffer type, which outlives the buffer.
    pub unsafe fn alloc(buft: sys::ggml_backend_buffer_type_t, size: u64) -> Option<Buffer> {
        // SAFETY: the caller's contract; null is checked.
        NonNull::new(unsafe { sys::ggml_backend_buft_alloc_buffer(buft, size.max(1) as usize) })
            .map(Buffer)
    }

    /// One buffer of `buft` holding every tensor of the no-alloc context `ctx`, placed.
    ///
    /// # Safety
    /// `ctx` and `buft` are live; the tensors' memory is this buffer's from now on.
    pub unsafe fn for_ctx(
        ctx: *mut sys::ggml_context,
        buft: sys::ggml_backend_buffer_type_t,
    ) -> Option<Buffer> {
        // SAFETY: the caller's contract; null is checked.
        NonNull::new(unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft) })
            .map(Buffer)
    }

    /// A CPU buffer over host memory we own (`bytes`), which must outlive the buffer.
    ///
    /// # Safety
    /// `bytes` stays mapped and unmodified while the buffer and any tensor in it live.
    pub unsafe fn cpu_from_host(bytes: &[u8]) -> Option<Buffer> {
        // SAFETY: the caller's contract; ggml only reads weights.
        NonNull::new(unsafe {
            sys::ggml_backend_cpu_buffer_from_ptr(bytes.as_ptr() as *mut _, bytes.len())
        })
        .map(Buffer)
    }

    pub fn ptr(&self) -> sys::ggml_backend_buffer_t {
        self.0.as_ptr()
    }

    /// Its size as the backend allocated it.
    pub fn size(&self) -> u64 {
        // SAFETY: a live buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.ptr()) as u64 }
    }

    /// The address of its first byte (host or device address space).
    pub fn base(&self) -> usize {
        // SAFETY: a live buffer.
        unsafe { sys::ggml_backend_buffer_get_base(self.ptr()) as usize }
    }

    /// Sets every byte to `v` (synchronously).
    pub fn clear(&self, v: u8) {
        // SAFETY: a live buffer; no graph is computing on it (callers clear before use).
        unsafe { sys::ggml_backend_buffer_clear(self.ptr(), v) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: owned, freed once; the owners drop buffers before their backend and after
        // every thread writing into them stopped (see `Streamer`'s Drop).
        unsafe { sys::ggml_backend_buffer_free(self.ptr()) }
    }
}

/// An owned graph allocator with one buffer type (`ggml_gallocr_free` on drop, which frees
/// its compute buffer).
#[derive(Debug)]
pub(crate) struct Gallocr(NonNull<sys::ggml_gallocr>);

impl Gallocr {
    /// # Safety
    /// `buft` is a live buffer type that outlives the allocator.
    pub unsafe fn new(buft: sys::ggml_backend_buffer_type_t) -> Result<Gallocr> {
        // SAFETY: the caller's contract; null is checked.
        match NonNull::new(unsafe { sys::ggml_gallocr_new(buft) }) {
            Some(p) => Ok(Gallocr(p)),
            None => bail!("ggml_gallocr_new failed"),
        }
    }

    /// Bytes the compute buffer needs for `gf`, measured without allocating it.
    ///
    /// # Safety
    /// `gf` is a graph of live tensors.
    pub unsafe fn measure(&self, gf: *mut sys::ggml_cgraph) -> u64 {
        let mut size = 0usize;
        // SAFETY: the caller's contract; one buffer type, so one size.
        unsafe {
            sys::ggml_gallocr_reserve_n_size(
                self.0.as_ptr(),
                gf,
                std::ptr::null(),
                std::ptr::null(),
                &mut size,
            )
        };
        size as u64
    }

    /// Grows the compute buffer to fit `gf` (allocated).
    ///
    /// # Safety
    /// `gf` is a graph of live tensors, every leaf with memory.
    pub unsafe fn reserve(&self, gf: *mut sys::ggml_cgraph) -> Result<()> {
        // SAFETY: the caller's contract.
        if !unsafe { sys::ggml_gallocr_reserve(self.0.as_ptr(), gf) } {
            bail!("could not allocate the compute buffer");
        }
        Ok(())
    }

    /// Places `gf`'s intermediate tensors in the compute buffer.
    ///
    /// # Safety
    /// As [`Gallocr::reserve`].
    pub unsafe fn alloc_graph(&self, gf: *mut sys::ggml_cgraph) -> Result<()> {
        // SAFETY: the caller's contract.
        if !unsafe { sys::ggml_gallocr_alloc_graph(self.0.as_ptr(), gf) } {
            bail!("ggml could not allocate a graph");
        }
        Ok(())
    }

    /// The compute buffer's size now.
    pub fn buffer_size(&self) -> u64 {
        // SAFETY: a live allocator; buffer 0 is its only buffer.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.0.as_ptr(), 0) as u64 }
    }
}

impl Drop for Gallocr {
    fn drop(&mut self) {
        // SAFETY: owned, freed once, before the backend whose buffer type it uses.
        unsafe { sys::ggml_gallocr_free(self.0.as_ptr()) }
    }
}

/// Allocates `gf`'s intermediate tensors in `galloc`'s buffer (which must not grow past
/// `expected` bytes: the reserved worst case) and computes it on `backend`.
///
/// # Safety
/// `backend` is live; `gf` is a graph of live tensors built in a graph context, every weight
/// and state tensor with memory.
pub(crate) unsafe fn run_graph(
    backend: sys::ggml_backend_t,
    galloc: &Gallocr,
    expected: u64,
    gf: *mut sys::ggml_cgraph,
) -> Result<()> {
    // SAFETY: the caller's contract.
    unsafe { galloc.alloc_graph(gf)? };
    let now = galloc.buffer_size();
    if now != expected {
        bail!(
            "the compute buffer grew from {expected} to {now} bytes (planned worst case exceeded)"
        );
    }
    // SAFETY: the caller's contract; the graph's intermediates were just placed.
    let st = unsafe { sys::ggml_backend_graph_compute(backend, gf) };
    if st != sys::GGML_STATUS_SUCCESS {
        bail!("ggml graph compute failed (status {st})");
    }
    Ok(())
}

/// A fake, never dereferenced address given to tensors while ggml's allocator only measures.
const PLACEHOLDER: usize = 4096;

/// Runs `f` (size-only reservations) with every tensor of `tensors` given a placeholder data
/// address, so ggml's allocator counts them as already allocated (see the module docs), then
/// restores them to "no memory".
///
/// # Safety
/// `tensors` are live descriptors with no memory; `f` only measures (nothing reads or writes
/// the tensors' data).
pub(crate) unsafe fn with_placeholders<R>(
    tensors: &[*mut sys::ggml_tensor],
    f: impl FnOnce() -> R,
) -> R {
    for &t in tensors {
        // SAFETY: the caller's contract.
        unsafe { (*t).data = PLACEHOLDER as *mut _ };
    }
    let r = f();
    for &t in tensors {
        // SAFETY: as above.
        unsafe { (*t).data = std::ptr::null_mut() };
    }
    r
}

/// The CPU device's extra buffer types in ggml's order of preference (AMX, KleidiAI,
/// CPU_REPACK: whichever this build and CPU have), through the registry's
/// `ggml_backend_dev_get_extra_bufts` (see the module docs).
///
/// # Safety
/// `dev` is a registered CPU device.
pub(crate) unsafe fn cpu_extra_bufts(
    dev: sys::ggml_backend_dev_t,
) -> Vec<sys::ggml_backend_buffer_type_t> {
    let mut v = Vec::new();
    // SAFETY: the caller's contract; the registry returns a function of the documented type
    // (ggml-backend.h: ggml_backend_dev_get_extra_bufts_t) and a null-terminated array.
    unsafe {
        let Some(f) = proc_address(dev, c"ggml_backend_dev_get_extra_bufts") else {
            return v;
        };
        let f: unsafe extern "C" fn(
            sys::ggml_backend_dev_t,
        ) -> *mut sys::ggml_backend_buffer_type_t = std::mem::transmute(f);
        let mut p = f(dev);
        while !p.is_null() && !(*p).is_null() {
            v.push(*p);
            p = p.add(1);
        }
    }
    v
}

/// The function `name` of the registry `dev` belongs to, if it exports one.
///
/// # Safety
/// `dev` is a registered device.
unsafe fn proc_address(
    dev: sys::ggml_backend_dev_t,
    name: &std::ffi::CStr,
) -> Option<*mut std::ffi::c_void> {
    // SAFETY: the caller's contract; null is checked.
    unsafe {
        let reg = sys::ggml_backend_dev_backend_reg(dev);
        if reg.is_null() {
            return None;
        }
        let f = sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
        (!f.is_null()).then_some(f)
    }
}

/// Whether `t`, placed in `buf`, sits in a `CPU_REPACK` buffer without ggml's repack traits
/// (see the module docs): its bytes are then copied as they are.
///
/// # Safety
/// `t` is a live tensor placed in the live buffer `buf`.
pub(crate) unsafe fn is_unrepacked_in_repack_buffer(
    buf: sys::ggml_backend_buffer_t,
    t: *mut sys::ggml_tensor,
) -> bool {
    // SAFETY: the caller's contract; buffer type names are static strings.
    unsafe {
        let name = std::ffi::CStr::from_ptr(sys::ggml_backend_buft_name(
            sys::ggml_backend_buffer_get_type(buf),
        ));
        (*t).extra.is_null() && name.to_bytes() == b"CPU_REPACK"
    }
}

/// Sets a CPU backend's thread count through its registry's `ggml_backend_set_n_threads`
/// proc address (`ggml_backend_set_n_threads_t` in `ggml-backend.h`, as llama.cpp's context
/// sets threads on every backend), not `ggml_backend_cpu_set_n_threads`: with ggml's backends
/// as loadable modules (`GGML_BACKEND_DL`, the portable GPU-check build) that symbol lives in a
/// module the binary does not link. False when the backend has no such function.
///
/// # Safety
/// `backend` is live.
pub(crate) unsafe fn set_n_threads(backend: sys::ggml_backend_t, n: i32) -> bool {
    // SAFETY: the caller's contract; the registry returns a function of the documented type.
    unsafe {
        let dev = sys::ggml_backend_get_device(backend);
        if dev.is_null() {
            return false;
        }
        let Some(f) = proc_address(dev, c"ggml_backend_set_n_threads") else {
            return false;
        };
        let f: unsafe extern "C" fn(sys::ggml_backend_t, i32) = std::mem::transmute(f);
        f(backend, n.max(1));
        true
    }
}
