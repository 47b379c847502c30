//! The device and where each weight lives on it.
//!
//! The device is the first GPU ggml has registered (a `cuda` build on a machine with one), else
//! the CPU backend, which then plays the device. Each weight tensor is placed in the buffer
//! type llama.cpp would give it on that device: llama.cpp walks a list of buffer types and takes
//! the first whose device accepts the tensor's op (`select_weight_buft` and
//! `weight_buft_supported` in `src/llama-model-loader.cpp`, the lists from `make_cpu_buft_list` /
//! `make_gpu_buft_list` in `src/llama-model.cpp`). On the CPU that list is ggml's extra buffer
//! types (AMX, CPU_REPACK, ... in ggml's order), then the plain CPU buffer type; the op test is
//! the same: the tensor's op (MUL_MAT for matrices, MUL for norms) against a batch of 512 rows,
//! with the weight given a dummy buffer of the candidate type, asked of
//! `ggml_backend_dev_supports_op`. On a GPU every weight goes to the device's own buffer type.
//! Different buffer types run different kernels (AMX, repacked AVX-512, plain), and activations
//! are re-quantized before each quantized matmul, so placing a tensor elsewhere than llama.cpp
//! does changes the logits in their last bits and, through the KV cache, well beyond.

use anyhow::{bail, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::CStr;

/// The op a weight feeds (llama.cpp's `llm_tensor_info_for`), with what `weight_buft_supported`
/// builds to test it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightOp {
    /// A matrix: `ggml_mul_mat(w, x)`.
    MulMat,
    /// A norm's scale: `ggml_mul(x, w)`.
    Mul,
    /// A bias: `ggml_add(x, w)`.
    Add,
    /// RoPE frequency factors: `ggml_rope_ext(x, pos, w, ...)` on `[head_dim, n_head, 512]`.
    Rope { head_dim: i64, n_head: i64 },
}

impl WeightOp {
    pub fn from(op: crate::arch::Op, hp: &crate::arch::Hparams) -> WeightOp {
        use crate::arch::Op;
        match op {
            Op::MulMat => WeightOp::MulMat,
            Op::Mul => WeightOp::Mul,
            Op::Add => WeightOp::Add,
            Op::Rope => WeightOp::Rope {
                head_dim: hp.head_dim,
                n_head: hp.n_head,
            },
        }
    }
}

/// A buffer type of the device, with the device that runs ops on its tensors.
#[derive(Debug, Clone)]
pub(crate) struct Buft {
    pub name: String,
    pub ptr: sys::ggml_backend_buffer_type_t,
    pub dev: sys::ggml_backend_dev_t,
    /// Tensors are stored as the file has them (the plain CPU buffer type): the reader may copy
    /// bytes straight in. Other CPU buffer types (AMX, CPU_REPACK) lay tensors out their own
    /// way and are written through their `set_tensor`.
    pub plain_host: bool,
}

/// The device: the first registered GPU, or the CPU backend playing one.
#[derive(Debug)]
pub(crate) struct Backend {
    pub ptr: sys::ggml_backend_t,
    pub dev: sys::ggml_backend_dev_t,
    /// The device's default buffer type (KV cache, state, compute buffer; weights on a GPU).
    pub buft: sys::ggml_backend_buffer_type_t,
    pub align: u64,
    pub gpu: bool,
    pub name: String,
    /// llama.cpp's list of buffer types for weights on this device, in its order.
    pub weight_bufts: Vec<Buft>,
}

fn buft_name(b: sys::ggml_backend_buffer_type_t) -> String {
    // SAFETY: a live buffer type; ggml returns a static NUL-terminated name.
    unsafe { CStr::from_ptr(sys::ggml_backend_buft_name(b)) }
        .to_string_lossy()
        .into_owned()
}

/// llama.cpp's weight list for the CPU (`make_cpu_buft_list` with no GPU in the device list):
/// the extra buffer types (unless `plain`), then the CPU's own.
///
/// # Safety
/// `cpu` is the registered CPU device.
pub(crate) unsafe fn cpu_weight_bufts(cpu: sys::ggml_backend_dev_t, plain: bool) -> Vec<Buft> {
    let mut v: Vec<Buft> = Vec::new();
    if !plain {
        // SAFETY: the caller's contract.
        for b in unsafe { super::handles::cpu_extra_bufts(cpu) } {
            v.push(Buft {
                name: buft_name(b),
                ptr: b,
                dev: cpu,
                plain_host: false,
            });
        }
    }
    // SAFETY: a registered device has a default buffer type.
    let b = unsafe { sys::ggml_backend_dev_buffer_type(cpu) };
    v.push(Buft {
        name: buft_name(b),
        ptr: b,
        dev: cpu,
        plain_host: true,
    });
    v
}

/// Whether weight `w` used by `op` may live in `b` (`weight_buft_supported`: the op built
/// against a batch of 512 rows, the weight given an empty buffer of that type, asked of the
/// buffer type's device).
///
/// # Safety
/// `w` is a live descriptor with no buffer (it is given one only for the question).
unsafe fn supports(b: &Buft, w: *mut sys::ggml_tensor, op: WeightOp) -> Result<bool> {
    let ctx = super::graph::Ctx::new(8, 0)?;
    // SAFETY: the caller's contract; `ctx` is a live no-alloc context; the dummy buffer is
    // freed and the weight's buffer reset before returning, as llama.cpp does.
    unsafe {
        let ne = (*w).ne;
        let f32t = sys::GGML_TYPE_F32;
        let op_tensor = match op {
            WeightOp::MulMat => {
                let x = sys::ggml_new_tensor_4d(ctx.ptr, f32t, ne[0], 512, ne[2], ne[3]);
                sys::ggml_mul_mat(ctx.ptr, w, x)
            }
            WeightOp::Mul => {
                let a = sys::ggml_new_tensor_4d(ctx.ptr, f32t, ne[0], ne[1], ne[2], ne[3]);
                sys::ggml_mul(ctx.ptr, a, w)
            }
            WeightOp::Add => {
                let a = sys::ggml_new_tensor_4d(ctx.ptr, f32t, ne[0], ne[1], ne[2], ne[3]);
                sys::ggml_add(ctx.ptr, a, w)
            }
            WeightOp::Rope { head_dim, n_head } => {
                let a = sys::ggml_new_tensor_3d(ctx.ptr, f32t, head_dim, n_head, 512);
                let b = sys::ggml_new_tensor_1d(ctx.ptr, sys::GGML_TYPE_I32, 512);
                sys::ggml_rope_ext(ctx.ptr, a, b, w, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            }
        };
        if !(*w).buffer.is_null() {
            bail!("a weight descriptor already has a buffer while its placement is chosen");
        }
        (*w).buffer = sys::ggml_backend_buft_alloc_buffer(b.ptr, 0);
        let ok = sys::ggml_backend_dev_supports_op(b.dev, op_tensor);
        sys::ggml_backend_buffer_free((*w).buffer);
        (*w).buffer = std::ptr::null_mut();
        Ok(ok)
    }
}

/// The first buffer type of `list` that takes `w` for `op` (`select_weight_buft`); `name`
/// is for the error.
///
/// # Safety
/// As [`supports`].
pub(crate) unsafe fn select(
    list: &[Buft],
    w: *mut sys::ggml_tensor,
    op: WeightOp,
    name: &str,
) -> Result<usize> {
    for (i, b) in list.iter().enumerate() {
        // SAFETY: the caller's contract.
        if unsafe { supports(b, w, op)? } {
            return Ok(i);
        }
    }
    bail!(
        "no buffer type of the device runs tensor '{name}' ({})",
        list.iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl Backend {
    /// The first GPU (unless `cpu`), else the CPU; `plain`: no extra CPU buffer types.
    pub fn new(threads: usize, cpu: bool, plain: bool) -> Result<Backend> {
        // SAFETY: device discovery and backend creation have no preconditions; every handle
        // is checked for null before use.
        unsafe {
            let mut dev = if cpu {
                std::ptr::null_mut()
            } else {
                sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU)
            };
            let gpu = !dev.is_null();
            if !gpu {
                dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
            }
            if dev.is_null() {
                bail!("ggml has no CPU device");
            }
            let name = CStr::from_ptr(sys::ggml_backend_dev_name(dev))
                .to_string_lossy()
                .into_owned();
            let ptr = sys::ggml_backend_dev_init(dev, std::ptr::null());
            if ptr.is_null() {
                bail!("could not start the ggml backend of device {name}");
            }
            if !gpu {
                super::handles::set_n_threads(ptr, threads.max(1) as i32);
            }
            // On a GPU this creates the stream (and the driver context) before any memory
            // figure is taken.
            sys::ggml_backend_synchronize(ptr);
            let buft = sys::ggml_backend_get_default_buffer_type(ptr);
            let weight_bufts = if gpu {
                vec![Buft {
                    name: buft_name(buft),
                    ptr: buft,
                    dev,
                    plain_host: false,
                }]
            } else {
                cpu_weight_bufts(dev, plain)
            };
            // One alignment for every buffer type we place tensors in, so offsets packed from
            // alloc sizes rounded up to it are valid in each.
            let align = weight_bufts
                .iter()
                .map(|b| sys::ggml_backend_buft_get_alignment(b.ptr) as u64)
                .chain([sys::ggml_backend_buft_get_alignment(buft) as u64])
                .max()
                .unwrap_or(64);
            Ok(Backend {
                ptr,
                dev,
                buft,
                align: align.max(64),
                gpu,
                name,
                weight_bufts,
            })
        }
    }

    /// The driver's (free, total) device memory; host memory for the CPU device.
    pub fn memory(&self) -> (u64, u64) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: `dev` is a registered device; the outputs are plain integers.
        unsafe { sys::ggml_backend_dev_memory(self.dev, &mut free, &mut total) };
        (free as u64, total as u64)
    }

    /// Bytes `t` takes in `buft` (its own alloc size: padded rows on CUDA, packed layouts on
    /// AMX), rounded up to the device's alignment.
    pub fn alloc_size_in(
        &self,
        buft: sys::ggml_backend_buffer_type_t,
        t: *mut sys::ggml_tensor,
    ) -> u64 {
        // SAFETY: `buft` is a live buffer type of this device, `t` a live descriptor.
        let n = unsafe { sys::ggml_backend_buft_get_alloc_size(buft, t) } as u64;
        n.div_ceil(self.align) * self.align
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: freed once, after every buffer and allocator using it (see Streamer's Drop).
        unsafe { sys::ggml_backend_free(self.ptr) }
    }
}
