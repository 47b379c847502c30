//! FFI to ggml and llama.cpp (through `llama-cpp-sys-2`), used as the independent reference:
//! the parity tests and benchmarks compare our codecs, reader and quantizer against these.
//! Each `unsafe` block states the invariant that makes it sound.

use crate::gguf::{MetaValue, ValueType};
use crate::quant::GgmlType;
use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;

unsafe extern "C" fn quiet_log(
    _level: sys::ggml_log_level,
    _text: *const c_char,
    _user: *mut c_void,
) {
}

/// Silences ggml's and llama.cpp's log output (it goes to stderr by default).
pub fn silence_logs() {
    // SAFETY: installing a callback that ignores its arguments; the pointers are never read.
    unsafe {
        sys::ggml_log_set(Some(quiet_log), std::ptr::null_mut());
        sys::llama_log_set(Some(quiet_log), std::ptr::null_mut());
    }
}

/// `ggml_type_size` and `ggml_blck_size` for a raw type id below `GGML_TYPE_COUNT`.
pub fn type_geometry(id: u32) -> (u64, u64) {
    assert!(id < crate::quant::GGML_TYPE_COUNT);
    // SAFETY: both functions index ggml's static type table, valid for every id below
    // GGML_TYPE_COUNT (checked above); removed ids have zeroed entries.
    unsafe {
        (
            sys::ggml_type_size(id) as u64,
            sys::ggml_blck_size(id) as u64,
        )
    }
}

/// `ggml_quantize_chunk` over `src` (rows of `n_per_row`), no importance matrix.
pub fn quantize_chunk(ty: GgmlType, src: &[f32], n_per_row: usize) -> Vec<u8> {
    let bytes = ty.row_bytes(src.len() as u64).expect("whole blocks") as usize;
    let mut dst = vec![0u8; bytes];
    quantize_chunk_into(ty, src, n_per_row, &mut dst);
    dst
}

/// `ggml_quantize_chunk` into a caller's buffer of exactly the encoded size.
pub fn quantize_chunk_into(ty: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) {
    assert!(n_per_row > 0 && src.len().is_multiple_of(n_per_row));
    assert_eq!(ty.row_bytes(src.len() as u64), Some(dst.len() as u64));
    let nrows = (src.len() / n_per_row) as i64;
    // SAFETY: src holds nrows * n_per_row floats; dst holds exactly the bytes ggml writes for
    // that many elements of `ty` (asserted above; our sizes are checked against ggml's in the
    // parity tests); no imatrix is passed, which every type used here accepts.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty.id(),
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            nrows,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(written, dst.len(), "ggml wrote a different size");
}

/// `ggml_quantize_chunk` with an importance matrix (one weight per column).
pub fn quantize_chunk_imatrix(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: &[f32],
) -> Vec<u8> {
    assert!(n_per_row > 0 && src.len().is_multiple_of(n_per_row));
    assert_eq!(imatrix.len(), n_per_row);
    let bytes = ty.row_bytes(src.len() as u64).expect("whole blocks") as usize;
    let mut dst = vec![0u8; bytes];
    let nrows = (src.len() / n_per_row) as i64;
    // SAFETY: as in quantize_chunk_into; ggml reads n_per_row importance weights (asserted).
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty.id(),
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            nrows,
            n_per_row as i64,
            imatrix.as_ptr(),
        )
    };
    assert_eq!(written, dst.len(), "ggml wrote a different size");
    dst
}

/// ggml's reference decoder (`type_traits[ty].to_float`).
pub fn dequantize(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_into(ty, src, &mut out);
    out
}

/// ggml's reference decoder into a caller's buffer.
pub fn dequantize_into(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    assert_eq!(ty.row_bytes(out.len() as u64), Some(src.len() as u64));
    // SAFETY: the traits table is static; to_float reads the blocks of out.len() elements
    // (sizes asserted above) and writes out.len() floats.
    unsafe {
        let traits = sys::ggml_get_type_traits(ty.id());
        let f = (*traits).to_float.expect("type has a decoder");
        f(src.as_ptr().cast(), out.as_mut_ptr(), out.len() as i64);
    }
}

/// `ggml_fp32_to_fp16_row`.
pub fn fp32_to_fp16_row(src: &[f32]) -> Vec<u16> {
    let mut out = vec![0u16; src.len()];
    // SAFETY: reads and writes src.len() elements of buffers that long.
    unsafe { sys::ggml_fp32_to_fp16_row(src.as_ptr(), out.as_mut_ptr(), src.len() as i64) };
    out
}

/// `ggml_bf16_to_fp32_row`.
pub fn bf16_to_fp32_row(src: &[u16]) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    // SAFETY: ggml_bf16_t is a repr(C) struct of one u16; reads and writes src.len() elements.
    unsafe { sys::ggml_bf16_to_fp32_row(src.as_ptr().cast(), out.as_mut_ptr(), src.len() as i64) };
    out
}

/// What ggml's `gguf_init_from_file` reports about a file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgmlGguf {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub kvs: Vec<(String, MetaValue)>,
    /// name, type id, ne (4 dims), offset, size.
    pub tensors: Vec<(String, u32, [u64; 4], u64, u64)>,
}

/// Reads a GGUF header with ggml's own reader; `None` if ggml rejects the file.
pub fn read_gguf(path: &Path) -> Option<GgmlGguf> {
    let c_path = CString::new(path.to_str()?).ok()?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: c_path is a valid NUL-terminated string; with no_alloc and a null ctx ggml only
    // parses the header. The context is freed below and nothing borrowed from it escapes: every
    // string and array is copied out first.
    unsafe {
        let ctx = sys::gguf_init_from_file(c_path.as_ptr(), params);
        if ctx.is_null() {
            return None;
        }
        let cstr = |p: *const c_char| CStr::from_ptr(p).to_bytes().to_vec();
        let mut kvs = Vec::new();
        for i in 0..sys::gguf_get_n_kv(ctx) {
            let key = String::from_utf8_lossy(&cstr(sys::gguf_get_key(ctx, i))).into_owned();
            let ty = ValueType::from_id(sys::gguf_get_kv_type(ctx, i))?;
            let v = if ty == ValueType::Array {
                let elem = ValueType::from_id(sys::gguf_get_arr_type(ctx, i))?;
                let n = sys::gguf_get_arr_n(ctx, i);
                let items = if elem == ValueType::String {
                    (0..n)
                        .map(|j| MetaValue::String(cstr(sys::gguf_get_arr_str(ctx, i, j))))
                        .collect()
                } else {
                    let sz = elem.fixed_size()?;
                    let data = sys::gguf_get_arr_data(ctx, i) as *const u8;
                    let bytes = if n == 0 {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(data, n * sz)
                    };
                    bytes
                        .chunks_exact(sz)
                        .map(|b| crate::gguf::scalar_from_le(elem, b))
                        .collect::<Option<Vec<_>>>()?
                };
                MetaValue::Array { elem, items }
            } else if ty == ValueType::String {
                MetaValue::String(cstr(sys::gguf_get_val_str(ctx, i)))
            } else {
                let sz = ty.fixed_size()?;
                let p = sys::gguf_get_val_data(ctx, i) as *const u8;
                crate::gguf::scalar_from_le(ty, std::slice::from_raw_parts(p, sz))?
            };
            kvs.push((key, v));
        }
        let mut tensors = Vec::new();
        for i in 0..sys::gguf_get_n_tensors(ctx) {
            let name =
                String::from_utf8_lossy(&cstr(sys::gguf_get_tensor_name(ctx, i))).into_owned();
            let ne_p = sys::gguf_get_tensor_ne(ctx, i);
            let ne: [u64; 4] = std::array::from_fn(|j| *ne_p.add(j) as u64);
            tensors.push((
                name,
                sys::gguf_get_tensor_type(ctx, i),
                ne,
                sys::gguf_get_tensor_offset(ctx, i) as u64,
                sys::gguf_get_tensor_size(ctx, i) as u64,
            ));
        }
        let out = GgmlGguf {
            version: sys::gguf_get_version(ctx),
            alignment: sys::gguf_get_alignment(ctx) as u64,
            data_offset: sys::gguf_get_data_offset(ctx) as u64,
            kvs,
            tensors,
        };
        sys::gguf_free(ctx);
        Some(out)
    }
}

/// Runs `llama_model_quantize` in `pure` mode (every eligible tensor to `ftype`'s type).
/// Returns llama.cpp's status (0 = success).
pub fn llama_quantize_pure(input: &Path, output: &Path, ftype: u32, nthread: i32) -> u32 {
    llama_quantize(input, output, ftype, true, nthread)
}

/// Runs `llama_model_quantize` for the file type `ftype` (`LLAMA_FTYPE_*`: 15 is Q4_K_M);
/// without `pure`, llama.cpp's own per-tensor mixture rules (`llama_tensor_get_type`) apply.
/// Returns llama.cpp's status (0 = success).
pub fn llama_quantize(input: &Path, output: &Path, ftype: u32, pure: bool, nthread: i32) -> u32 {
    llama_quantize_opts(input, output, ftype, pure, false, nthread)
}

/// [`llama_quantize`] with llama.cpp's `allow_requantize` (needed to re-encode, or decode to
/// F16/F32, a quantized input).
pub fn llama_quantize_opts(
    input: &Path,
    output: &Path,
    ftype: u32,
    pure: bool,
    allow_requantize: bool,
    nthread: i32,
) -> u32 {
    let i = CString::new(input.to_str().expect("utf-8 path")).expect("no NUL");
    let o = CString::new(output.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: default params come from llama.cpp; both paths are valid C strings that outlive
    // the call; no imatrix, overrides or pruning pointers are set (they stay null).
    unsafe {
        sys::llama_backend_init();
        let mut p = sys::llama_model_quantize_default_params();
        p.ftype = ftype;
        p.pure_ = pure;
        p.allow_requantize = allow_requantize;
        p.nthread = nthread;
        sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &p)
    }
}

/// A value `llama-quantize --override-kv` (and its `--imatrix` bookkeeping) sets.
#[derive(Debug, Clone)]
pub enum KvOverride {
    Int(i64),
    Str(String),
}

/// `llama_model_quantize` with importance weights per tensor name (`params.imatrix`, what
/// llama-quantize builds from an imatrix file) and metadata overrides (`params.kv_overrides`).
pub fn llama_quantize_imatrix(
    input: &Path,
    output: &Path,
    ftype: u32,
    imatrix: &[(String, Vec<f32>)],
    kv: &[(String, KvOverride)],
    nthread: i32,
) -> u32 {
    let i = CString::new(input.to_str().expect("utf-8 path")).expect("no NUL");
    let o = CString::new(output.to_str().expect("utf-8 path")).expect("no NUL");
    let names: Vec<CString> = imatrix
        .iter()
        .map(|(n, _)| CString::new(n.as_str()).expect("no NUL"))
        .collect();
    let mut data: Vec<sys::llama_model_imatrix_data> = names
        .iter()
        .zip(imatrix)
        .map(|(n, (_, w))| sys::llama_model_imatrix_data {
            name: n.as_ptr(),
            data: w.as_ptr(),
            size: w.len(),
        })
        .collect();
    data.push(sys::llama_model_imatrix_data {
        name: std::ptr::null(),
        data: std::ptr::null(),
        size: 0,
    });
    let fill = |dst: &mut [c_char; 128], s: &str| {
        for (d, &b) in dst.iter_mut().zip(s.as_bytes().iter().take(127)) {
            *d = b as c_char;
        }
    };
    // SAFETY: an all-zero override is llama.cpp's terminator (empty key), and every field is
    // plain data for which zero is valid.
    let mut ovr: Vec<sys::llama_model_kv_override> =
        vec![unsafe { std::mem::zeroed() }; kv.len() + 1];
    for (o, (k, v)) in ovr.iter_mut().zip(kv) {
        fill(&mut o.key, k);
        match v {
            KvOverride::Int(x) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_INT;
                o.__bindgen_anon_1.val_i64 = *x;
            }
            KvOverride::Str(s) => {
                o.tag = sys::LLAMA_KV_OVERRIDE_TYPE_STR;
                // SAFETY: writing the string member of a zeroed plain-data union.
                fill(unsafe { &mut o.__bindgen_anon_1.val_str }, s);
            }
        }
    }
    // SAFETY: the paths, the imatrix array (null-name terminated, its names and data owned by
    // `names` / `imatrix`) and the override array (empty-key terminated) all outlive the call.
    unsafe {
        sys::llama_backend_init();
        let mut p = sys::llama_model_quantize_default_params();
        p.ftype = ftype;
        p.nthread = nthread;
        p.imatrix = data.as_ptr();
        if !kv.is_empty() {
            p.kv_overrides = ovr.as_ptr();
        }
        sys::llama_model_quantize(i.as_ptr(), o.as_ptr(), &p)
    }
}
