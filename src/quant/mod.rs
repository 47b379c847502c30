//! Tensor types and codecs: F32, F16, BF16, Q8_0, Q4_0.
//!
//! Knows nothing about files. Every codec has a scalar reference (`reference`, ggml's `*_ref`
//! rule for rule) and a fast path (`fast`: AVX2/F16C, plus rayon across blocks) that must give
//! the same bytes.

pub mod blocks;
pub mod fast;
mod matrix;
pub mod reference;
mod team;
mod types;

pub use blocks::{BlockQ4_0, BlockQ8_0, QK};
pub use matrix::{dot_f32, Matrix};
pub use team::Team;
pub use types::{FileType, GgmlType, GGML_TYPE_COUNT};

use bytemuck::Pod;
use half::{bf16, f16};
use rayon::prelude::*;

/// Errors from the codecs: wrong buffer sizes or a type without a codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("type {0} has no codec here (supported: F32, F16, BF16, Q8_0, Q4_0)")]
    Unsupported(GgmlType),
    #[error("{ty}: {n} elements is not a whole number of {block}-element blocks")]
    PartialBlock { ty: GgmlType, n: usize, block: u64 },
    #[error("{ty}: {n} elements need {expected} bytes, buffer has {actual}")]
    SizeMismatch {
        ty: GgmlType,
        n: usize,
        expected: usize,
        actual: usize,
    },
}

/// One codec per tensor type: a scalar reference and a fast row path over the same blocks.
pub trait Codec {
    /// The tensor type this codec encodes.
    const TYPE: GgmlType;
    /// One block as stored on disk.
    type Block: Pod + Send + Sync;
    /// Reference encoder (ggml's `quantize_row_*_ref`). `x.len() == y.len() * block size`.
    fn quantize_row_ref(x: &[f32], y: &mut [Self::Block]);
    /// Reference decoder (ggml's `dequantize_row_*`).
    fn dequantize_row_ref(x: &[Self::Block], y: &mut [f32]);
    /// Fast single-threaded encoder, bit-identical to the reference.
    fn quantize_row(x: &[f32], y: &mut [Self::Block]) {
        Self::quantize_row_ref(x, y)
    }
    /// Fast single-threaded decoder, bit-identical to the reference.
    fn dequantize_row(x: &[Self::Block], y: &mut [f32]) {
        Self::dequantize_row_ref(x, y)
    }
}

#[derive(Debug)]
pub struct F32Codec;
#[derive(Debug)]
pub struct F16Codec;
#[derive(Debug)]
pub struct Bf16Codec;
#[derive(Debug)]
pub struct Q8_0Codec;
#[derive(Debug)]
pub struct Q4_0Codec;

impl Codec for F32Codec {
    const TYPE: GgmlType = GgmlType::F32;
    type Block = f32;
    fn quantize_row_ref(x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
    }
    fn dequantize_row_ref(x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
    }
}

impl Codec for F16Codec {
    const TYPE: GgmlType = GgmlType::F16;
    type Block = f16;
    fn quantize_row_ref(x: &[f32], y: &mut [f16]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = f16::from_bits(reference::f32_to_f16_bits(v));
        }
    }
    fn dequantize_row_ref(x: &[f16], y: &mut [f32]) {
        for (o, &h) in y.iter_mut().zip(x) {
            *o = reference::f16_bits_to_f32(h.to_bits());
        }
    }
    fn quantize_row(x: &[f32], y: &mut [f16]) {
        fast::f32_to_f16(x, y);
    }
    fn dequantize_row(x: &[f16], y: &mut [f32]) {
        fast::f16_to_f32(x, y);
    }
}

impl Codec for Bf16Codec {
    const TYPE: GgmlType = GgmlType::BF16;
    type Block = bf16;
    fn quantize_row_ref(x: &[f32], y: &mut [bf16]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = bf16::from_bits(reference::f32_to_bf16_bits(v));
        }
    }
    fn dequantize_row_ref(x: &[bf16], y: &mut [f32]) {
        // A shift per element; the compiler vectorises this loop.
        for (o, &h) in y.iter_mut().zip(x) {
            *o = reference::bf16_bits_to_f32(h.to_bits());
        }
    }
}

impl Codec for Q8_0Codec {
    const TYPE: GgmlType = GgmlType::Q8_0;
    type Block = BlockQ8_0;
    fn quantize_row_ref(x: &[f32], y: &mut [BlockQ8_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(y) {
            *yb = reference::quantize_q8_0_block(fast::block(xb));
        }
    }
    fn dequantize_row_ref(x: &[BlockQ8_0], y: &mut [f32]) {
        for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
            reference::dequantize_q8_0_block(xb, fast::block_mut(yb));
        }
    }
    fn quantize_row(x: &[f32], y: &mut [BlockQ8_0]) {
        fast::quantize_q8_0(x, y);
    }
    fn dequantize_row(x: &[BlockQ8_0], y: &mut [f32]) {
        fast::dequantize_q8_0(x, y);
    }
}

impl Codec for Q4_0Codec {
    const TYPE: GgmlType = GgmlType::Q4_0;
    type Block = BlockQ4_0;
    fn quantize_row_ref(x: &[f32], y: &mut [BlockQ4_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(y) {
            *yb = reference::quantize_q4_0_block(fast::block(xb));
        }
    }
    fn dequantize_row_ref(x: &[BlockQ4_0], y: &mut [f32]) {
        for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
            reference::dequantize_q4_0_block(xb, fast::block_mut(yb));
        }
    }
    fn quantize_row(x: &[f32], y: &mut [BlockQ4_0]) {
        fast::quantize_q4_0(x, y);
    }
    fn dequantize_row(x: &[BlockQ4_0], y: &mut [f32]) {
        fast::dequantize_q4_0(x, y);
    }
}

impl Q8_0Codec {
    /// The fast single-threaded Q8_0 encoder (used to quantize activations).
    pub fn quantize_row_fast(x: &[f32], y: &mut [BlockQ8_0]) {
        fast::quantize_q8_0(x, y);
    }
}

/// Which implementation to run: the scalar reference, the fast path on the calling thread, or
/// the fast path spread over rayon's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Reference,
    Fast,
    Parallel,
}

/// Elements per parallel work item: large enough to amortise scheduling, a multiple of 32.
const PAR_CHUNK: usize = 1 << 16;

fn check_sizes(ty: GgmlType, n: usize, bytes: usize) -> Result<(), CodecError> {
    if !ty.has_codec() {
        return Err(CodecError::Unsupported(ty));
    }
    let block = ty.block_size();
    if !(n as u64).is_multiple_of(block) {
        return Err(CodecError::PartialBlock { ty, n, block });
    }
    let expected = ty.row_bytes(n as u64).map(|b| b as usize);
    if expected != Some(bytes) {
        return Err(CodecError::SizeMismatch {
            ty,
            n,
            expected: expected.unwrap_or(usize::MAX),
            actual: bytes,
        });
    }
    Ok(())
}

fn encode<C: Codec>(path: Path, x: &[f32], y: &mut [u8]) {
    let y: &mut [C::Block] = bytemuck::cast_slice_mut(y);
    match path {
        Path::Reference => C::quantize_row_ref(x, y),
        Path::Fast => C::quantize_row(x, y),
        Path::Parallel => {
            let per = PAR_CHUNK / C::TYPE.block_size() as usize;
            x.par_chunks(PAR_CHUNK)
                .zip(y.par_chunks_mut(per))
                .for_each(|(xs, ys)| C::quantize_row(xs, ys));
        }
    }
}

fn decode<C: Codec>(path: Path, x: &[u8], y: &mut [f32]) {
    let x: &[C::Block] = bytemuck::cast_slice(x);
    match path {
        Path::Reference => C::dequantize_row_ref(x, y),
        Path::Fast => C::dequantize_row(x, y),
        Path::Parallel => {
            let per = PAR_CHUNK / C::TYPE.block_size() as usize;
            x.par_chunks(per)
                .zip(y.par_chunks_mut(PAR_CHUNK))
                .for_each(|(xs, ys)| C::dequantize_row(xs, ys));
        }
    }
}

/// Encodes `src` as `ty` into `dst` (exactly `ty.row_bytes(src.len())` bytes) along `path`.
///
/// `dst` may have any alignment: blocks are cast only when the buffer allows it, otherwise the
/// work goes through an aligned scratch buffer.
pub fn quantize_with(
    path: Path,
    ty: GgmlType,
    src: &[f32],
    dst: &mut [u8],
) -> Result<(), CodecError> {
    check_sizes(ty, src.len(), dst.len())?;
    let align = match ty {
        GgmlType::F32 => 4,
        _ => 2,
    };
    if dst.as_ptr().align_offset(align) != 0 {
        let mut tmp = vec![0u32; dst.len().div_ceil(4)];
        let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut tmp)[..dst.len()];
        quantize_with(path, ty, src, bytes)?;
        dst.copy_from_slice(bytes);
        return Ok(());
    }
    match ty {
        GgmlType::F32 => encode::<F32Codec>(path, src, dst),
        GgmlType::F16 => encode::<F16Codec>(path, src, dst),
        GgmlType::BF16 => encode::<Bf16Codec>(path, src, dst),
        GgmlType::Q8_0 => encode::<Q8_0Codec>(path, src, dst),
        GgmlType::Q4_0 => encode::<Q4_0Codec>(path, src, dst),
        other => return Err(CodecError::Unsupported(other)),
    }
    Ok(())
}

/// Decodes `src` (of type `ty`) into `dst` along `path`. `src` may have any alignment.
pub fn dequantize_with(
    path: Path,
    ty: GgmlType,
    src: &[u8],
    dst: &mut [f32],
) -> Result<(), CodecError> {
    check_sizes(ty, dst.len(), src.len())?;
    let align = match ty {
        GgmlType::F32 => 4,
        _ => 2,
    };
    if src.as_ptr().align_offset(align) != 0 {
        let mut tmp = vec![0u32; src.len().div_ceil(4)];
        let bytes = &mut bytemuck::cast_slice_mut::<u32, u8>(&mut tmp)[..src.len()];
        bytes.copy_from_slice(src);
        return dequantize_with(path, ty, bytes, dst);
    }
    match ty {
        GgmlType::F32 => decode::<F32Codec>(path, src, dst),
        GgmlType::F16 => decode::<F16Codec>(path, src, dst),
        GgmlType::BF16 => decode::<Bf16Codec>(path, src, dst),
        GgmlType::Q8_0 => decode::<Q8_0Codec>(path, src, dst),
        GgmlType::Q4_0 => decode::<Q4_0Codec>(path, src, dst),
        other => return Err(CodecError::Unsupported(other)),
    }
    Ok(())
}

/// Encodes with the fastest path (SIMD, all cores).
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), CodecError> {
    quantize_with(Path::Parallel, ty, src, dst)
}

/// Decodes with the fastest path (SIMD, all cores).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), CodecError> {
    dequantize_with(Path::Parallel, ty, src, dst)
}

/// Encodes into a new buffer.
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, CodecError> {
    let n = ty
        .row_bytes(src.len() as u64)
        .ok_or(CodecError::PartialBlock {
            ty,
            n: src.len(),
            block: ty.block_size(),
        })?;
    let mut out = vec![0u8; n as usize];
    quantize(ty, src, &mut out)?;
    Ok(out)
}

/// Decodes into a new buffer of `n` floats.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, CodecError> {
    let mut out = vec![0f32; n];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TYPES: [GgmlType; 5] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ];

    fn all_paths_agree(x: &[f32]) {
        for ty in TYPES {
            let n = ty.row_bytes(x.len() as u64).unwrap() as usize;
            let mut r = vec![0u8; n];
            quantize_with(Path::Reference, ty, x, &mut r).unwrap();
            for path in [Path::Fast, Path::Parallel] {
                let mut f = vec![0u8; n];
                quantize_with(path, ty, x, &mut f).unwrap();
                assert_eq!(r, f, "{ty} {path:?} encode differs from the reference");
                let mut dr = vec![0f32; x.len()];
                let mut df = vec![0f32; x.len()];
                dequantize_with(Path::Reference, ty, &r, &mut dr).unwrap();
                dequantize_with(path, ty, &r, &mut df).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dr), bits(&df), "{ty} {path:?} decode differs");
            }
        }
    }

    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -1000.0f32..1000.0,
            2 => -1e-3f32..1e-3,
            1 => any::<u32>().prop_map(f32::from_bits),
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-38, 65504.0, 65520.0]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn fast_matches_reference(x in prop::collection::vec(any_f32(), 32..=32 * 9)) {
            let n = x.len() / 32 * 32;
            all_paths_agree(&x[..n]);
        }
    }

    #[test]
    fn parallel_matches_on_large_input() {
        let x: Vec<f32> = (0..(PAR_CHUNK * 3 + 96))
            .map(|i| ((i as f32) * 0.37).sin() * 3.0)
            .collect();
        all_paths_agree(&x);
    }

    #[test]
    fn unaligned_buffers() {
        let x: Vec<f32> = (0..64).map(|i| i as f32 - 30.5).collect();
        let mut a = [0u8; 2 * 34 + 1];
        quantize(GgmlType::Q8_0, &x, &mut a[1..]).unwrap();
        let aligned = quantize_to_vec(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(&a[1..], &aligned[..]);
        let mut y = vec![0f32; 64];
        dequantize(GgmlType::Q8_0, &a[1..], &mut y).unwrap();
        assert_eq!(y, dequantize_to_vec(GgmlType::Q8_0, &aligned, 64).unwrap());
    }

    #[test]
    fn size_errors() {
        let mut out = vec![0u8; 10];
        assert!(matches!(
            quantize(GgmlType::Q4_0, &[0.0; 31], &mut out),
            Err(CodecError::PartialBlock { .. })
        ));
        assert!(matches!(
            quantize(GgmlType::Q4_0, &[0.0; 32], &mut out),
            Err(CodecError::SizeMismatch { expected: 18, .. })
        ));
        assert_eq!(
            quantize(GgmlType::Q4_K, &[0.0; 256], &mut out),
            Err(CodecError::Unsupported(GgmlType::Q4_K))
        );
    }
}
