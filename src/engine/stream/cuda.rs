//! The GPU upload path (`--features cuda`): staging in pinned host memory (the device's host
//! buffer type) and uploads on a backend instance of their own (its own CUDA stream), ordered
//! against compute with an event pair: the upload of layer i+1 is recorded on the upload
//! stream while layer i computes on the compute stream, and the compute of layer i+1 waits on
//! that event, not on the host.
//!
//! Status: a building block that compiles (and, without a GPU, finds none); the executor in
//! `mod.rs` runs on the CPU backend and does not use it yet.

use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;

/// Pinned staging memory and an upload stream on the first GPU.
#[derive(Debug)]
pub struct PinnedUploader {
    upload: sys::ggml_backend_t,
    staging: sys::ggml_backend_buffer_t,
    base: *mut u8,
    size: usize,
    done: sys::ggml_backend_event_t,
}

impl PinnedUploader {
    /// `None` when no GPU backend is present.
    pub fn new(staging_bytes: usize) -> Result<Option<PinnedUploader>> {
        // SAFETY: device discovery has no preconditions; every returned handle is checked
        // for null before use.
        unsafe {
            sys::ggml_backend_load_all();
            let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU);
            if dev.is_null() {
                return Ok(None);
            }
            let upload = sys::ggml_backend_dev_init(dev, std::ptr::null());
            if upload.is_null() {
                bail!("could not start an upload stream on the GPU");
            }
            let host = sys::ggml_backend_dev_host_buffer_type(dev);
            if host.is_null() {
                sys::ggml_backend_free(upload);
                bail!("the GPU backend has no pinned host buffer type");
            }
            let staging = sys::ggml_backend_buft_alloc_buffer(host, staging_bytes);
            if staging.is_null() {
                sys::ggml_backend_free(upload);
                bail!("could not pin {staging_bytes} bytes of staging memory");
            }
            let done = sys::ggml_backend_event_new(dev);
            Ok(Some(PinnedUploader {
                upload,
                staging,
                base: sys::ggml_backend_buffer_get_base(staging).cast(),
                size: staging_bytes,
                done,
            }))
        }
    }

    /// The pinned staging memory the reader fills.
    pub fn staging(&mut self) -> &mut [u8] {
        // SAFETY: `base` points to `size` bytes of pinned host memory owned by `staging`,
        // exclusively borrowed through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.size) }
    }

    /// Queues the upload of `len` staged bytes into `dst` at `offset` and records the event.
    ///
    /// # Safety
    /// `dst` is a live tensor in a buffer of this GPU with `offset + len` bytes; the staging
    /// bytes are not overwritten before [`PinnedUploader::wait`] returns.
    pub unsafe fn upload(&mut self, dst: *mut sys::ggml_tensor, offset: usize, len: usize) {
        assert!(len <= self.size);
        // SAFETY: the caller's contract; the source is our pinned staging memory.
        unsafe {
            sys::ggml_backend_tensor_set_async(self.upload, dst, self.base.cast(), offset, len);
            if !self.done.is_null() {
                sys::ggml_backend_event_record(self.done, self.upload);
            }
        }
    }

    /// Makes `compute` wait (on the device) for the queued uploads.
    ///
    /// # Safety
    /// `compute` is a live backend of the same device.
    pub unsafe fn order_before(&self, compute: sys::ggml_backend_t) {
        // SAFETY: the caller's contract; the event belongs to this device.
        unsafe {
            if self.done.is_null() {
                sys::ggml_backend_synchronize(self.upload);
            } else {
                sys::ggml_backend_event_wait(compute, self.done);
            }
        }
    }

    /// Blocks the host until the queued uploads finished (the staging may be refilled).
    pub fn wait(&self) {
        // SAFETY: live handles owned by `self`.
        unsafe {
            if self.done.is_null() {
                sys::ggml_backend_synchronize(self.upload);
            } else {
                sys::ggml_backend_event_synchronize(self.done);
            }
        }
    }
}

impl Drop for PinnedUploader {
    fn drop(&mut self) {
        self.wait();
        // SAFETY: handles created in `new`, freed once, uploads finished (waited above).
        unsafe {
            if !self.done.is_null() {
                sys::ggml_backend_event_free(self.done);
            }
            sys::ggml_backend_buffer_free(self.staging);
            sys::ggml_backend_free(self.upload);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_gpu_no_uploader() {
        // A CPU-only build finds no GPU; a CUDA build on a GPU machine gets pinned staging.
        let u = super::PinnedUploader::new(1 << 20).unwrap();
        if let Some(mut u) = u {
            assert_eq!(u.staging().len(), 1 << 20);
        }
    }
}
