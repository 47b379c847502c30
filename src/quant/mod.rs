//! Tensor types and codecs: every weight type of ggml decodes here, bit-identical to ggml's
//! `to_float`; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS,
//! TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0 and Q2_0 also encode, bit-identical to
//! `ggml_quantize_chunk` without an importance matrix.
//!
//! Knows nothing about files. Every codec has a scalar reference (`reference`, `legacy`,
//! `kquants`, `iquants`: ggml's kernels rule for rule) and a fast path (`fast`: AVX2/F16C for
//! Q4_0/Q8_0/F16, plus rayon across blocks for every type) that must give the same bytes.
//! The grid i-quants (IQ1_*, IQ2_*, IQ3_*) and the activation types without a `to_float`
//! (Q8_1, Q8_K) are the exceptions: the former decode only, the latter not at all.

pub mod blocks;
pub mod fast;
pub mod grids;
pub mod imatrix;
pub mod iquants;
pub mod kquants;
pub mod legacy;
mod matrix;
pub mod reference;
mod team;
mod types;

pub use blocks::{BlockQ4_0, BlockQ8_0, QK, QK_K};
pub use matrix::{dot_f32, dot_f32_x4, Matrix};
pub use team::Team;
pub use types::{FileType, GgmlType, GGML_TYPE_COUNT};

use bytemuck::Pod;
use half::{bf16, f16};
use rayon::prelude::*;

/// Errors from the codecs: wrong buffer sizes or a type without a codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("type {0} has no decoder: {reason}", reason = no_decoder_reason(*.0))]
    Unsupported(GgmlType),
    #[error("type {0} cannot be encoded here: {reason}", reason = no_encoder_reason(*.0))]
    NoEncoder(GgmlType),
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

fn no_decoder_reason(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::Q8_1 | GgmlType::Q8_K => "an activation-only type, ggml has no to_float for it",
        _ => "an integer or f64 tensor, copied as it is",
    }
}

fn no_encoder_reason(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::IQ1_S | GgmlType::IQ2_XXS | GgmlType::IQ2_XS => {
            "ggml needs an importance matrix for it, and its grid search is not ported (decode only)"
        }
        GgmlType::IQ1_M | GgmlType::IQ2_S | GgmlType::IQ3_XXS | GgmlType::IQ3_S => {
            "its grid-search encoder is not ported (decode only)"
        }
        _ => no_decoder_reason(ty),
    }
}

/// The decoding half of a codec: a scalar reference and a fast row path over the same blocks.
pub trait Decode {
    /// The tensor type this codec handles.
    const TYPE: GgmlType;
    /// One block as stored on disk.
    type Block: Pod + Send + Sync;
    /// Reference decoder (ggml's `dequantize_row_*`). `y.len() == x.len() * block size`.
    fn dequantize_row_ref(x: &[Self::Block], y: &mut [f32]);
    /// Fast single-threaded decoder, bit-identical to the reference.
    fn dequantize_row(x: &[Self::Block], y: &mut [f32]) {
        Self::dequantize_row_ref(x, y)
    }
}

/// One codec per encodable tensor type: the decoder plus a reference and a fast encoder.
pub trait Codec: Decode {
    /// Reference encoder (what `ggml_quantize_chunk` runs without an importance matrix).
    /// `x.len() == y.len() * block size`.
    fn quantize_row_ref(x: &[f32], y: &mut [Self::Block]);
    /// Fast single-threaded encoder, bit-identical to the reference.
    fn quantize_row(x: &[f32], y: &mut [Self::Block]) {
        Self::quantize_row_ref(x, y)
    }
}

/// A codec whose every block is encoded and decoded on its own by a block function.
macro_rules! block_codec {
    ($name:ident, $ty:ident, $block:ty, $n:expr, dec = $dec:path $(, enc = $enc:path)?) => {
        #[derive(Debug)]
        pub struct $name;
        impl Decode for $name {
            const TYPE: GgmlType = GgmlType::$ty;
            type Block = $block;
            fn dequantize_row_ref(x: &[$block], y: &mut [f32]) {
                for (xb, yb) in x.iter().zip(y.chunks_exact_mut($n)) {
                    $dec(xb, yb);
                }
            }
        }
        $(
            impl Codec for $name {
                fn quantize_row_ref(x: &[f32], y: &mut [$block]) {
                    for (xb, yb) in x.chunks_exact($n).zip(y.iter_mut()) {
                        $enc(xb, yb);
                    }
                }
            }
        )?
    };
}

use blocks as b;
block_codec!(
    Q4_1Codec,
    Q4_1,
    b::BlockQ4_1,
    32,
    dec = legacy::dequantize_q4_1,
    enc = legacy::quantize_q4_1
);
block_codec!(
    Q5_0Codec,
    Q5_0,
    b::BlockQ5_0,
    32,
    dec = legacy::dequantize_q5_0,
    enc = legacy::quantize_q5_0
);
block_codec!(
    Q5_1Codec,
    Q5_1,
    b::BlockQ5_1,
    32,
    dec = legacy::dequantize_q5_1,
    enc = legacy::quantize_q5_1
);
block_codec!(
    Q1_0Codec,
    Q1_0,
    b::BlockQ1_0,
    128,
    dec = legacy::dequantize_q1_0,
    enc = legacy::quantize_q1_0
);
block_codec!(
    Q2_0Codec,
    Q2_0,
    b::BlockQ2_0,
    64,
    dec = legacy::dequantize_q2_0,
    enc = legacy::quantize_q2_0
);
block_codec!(
    Mxfp4Codec,
    MXFP4,
    b::BlockMxfp4,
    32,
    dec = legacy::dequantize_mxfp4,
    enc = legacy::quantize_mxfp4
);
block_codec!(
    Nvfp4Codec,
    NVFP4,
    b::BlockNvfp4,
    64,
    dec = legacy::dequantize_nvfp4,
    enc = legacy::quantize_nvfp4
);
block_codec!(
    Iq4NlCodec,
    IQ4_NL,
    b::BlockIq4Nl,
    32,
    dec = legacy::dequantize_iq4_nl,
    enc = legacy::quantize_iq4_nl
);
block_codec!(
    Q2KCodec,
    Q2_K,
    b::BlockQ2K,
    QK_K,
    dec = kquants::dequantize_q2_k,
    enc = kquants::quantize_q2_k
);
block_codec!(
    Q3KCodec,
    Q3_K,
    b::BlockQ3K,
    QK_K,
    dec = kquants::dequantize_q3_k,
    enc = kquants::quantize_q3_k
);
block_codec!(
    Q4KCodec,
    Q4_K,
    b::BlockQ4K,
    QK_K,
    dec = kquants::dequantize_q4_k,
    enc = kquants::quantize_q4_k
);
block_codec!(
    Q5KCodec,
    Q5_K,
    b::BlockQ5K,
    QK_K,
    dec = kquants::dequantize_q5_k,
    enc = kquants::quantize_q5_k
);
block_codec!(
    Q6KCodec,
    Q6_K,
    b::BlockQ6K,
    QK_K,
    dec = kquants::dequantize_q6_k,
    enc = kquants::quantize_q6_k
);
block_codec!(
    Tq1_0Codec,
    TQ1_0,
    b::BlockTq1_0,
    QK_K,
    dec = kquants::dequantize_tq1_0,
    enc = kquants::quantize_tq1_0
);
block_codec!(
    Tq2_0Codec,
    TQ2_0,
    b::BlockTq2_0,
    QK_K,
    dec = kquants::dequantize_tq2_0,
    enc = kquants::quantize_tq2_0
);
block_codec!(
    Iq4XsCodec,
    IQ4_XS,
    b::BlockIq4Xs,
    QK_K,
    dec = kquants::dequantize_iq4_xs,
    enc = kquants::quantize_iq4_xs
);
block_codec!(
    Iq2XxsCodec,
    IQ2_XXS,
    b::BlockIq2Xxs,
    QK_K,
    dec = iquants::dequantize_iq2_xxs
);
block_codec!(
    Iq2XsCodec,
    IQ2_XS,
    b::BlockIq2Xs,
    QK_K,
    dec = iquants::dequantize_iq2_xs
);
block_codec!(
    Iq2SCodec,
    IQ2_S,
    b::BlockIq2S,
    QK_K,
    dec = iquants::dequantize_iq2_s
);
block_codec!(
    Iq3XxsCodec,
    IQ3_XXS,
    b::BlockIq3Xxs,
    QK_K,
    dec = iquants::dequantize_iq3_xxs
);
block_codec!(
    Iq3SCodec,
    IQ3_S,
    b::BlockIq3S,
    QK_K,
    dec = iquants::dequantize_iq3_s
);
block_codec!(
    Iq1SCodec,
    IQ1_S,
    b::BlockIq1S,
    QK_K,
    dec = iquants::dequantize_iq1_s
);
block_codec!(
    Iq1MCodec,
    IQ1_M,
    b::BlockIq1M,
    QK_K,
    dec = iquants::dequantize_iq1_m
);

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

impl Decode for F32Codec {
    const TYPE: GgmlType = GgmlType::F32;
    type Block = f32;
    fn dequantize_row_ref(x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
    }
}

impl Codec for F32Codec {
    fn quantize_row_ref(x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
    }
}

impl Decode for F16Codec {
    const TYPE: GgmlType = GgmlType::F16;
    type Block = f16;
    fn dequantize_row_ref(x: &[f16], y: &mut [f32]) {
        for (o, &h) in y.iter_mut().zip(x) {
            *o = reference::f16_bits_to_f32(h.to_bits());
        }
    }
    fn dequantize_row(x: &[f16], y: &mut [f32]) {
        fast::f16_to_f32(x, y);
    }
}

impl Codec for F16Codec {
    fn quantize_row_ref(x: &[f32], y: &mut [f16]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = f16::from_bits(reference::f32_to_f16_bits(v));
        }
    }
    fn quantize_row(x: &[f32], y: &mut [f16]) {
        fast::f32_to_f16(x, y);
    }
}

impl Codec for Bf16Codec {
    fn quantize_row_ref(x: &[f32], y: &mut [bf16]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = bf16::from_bits(reference::f32_to_bf16_bits(v));
        }
    }
}

impl Decode for Bf16Codec {
    const TYPE: GgmlType = GgmlType::BF16;
    type Block = bf16;
    fn dequantize_row_ref(x: &[bf16], y: &mut [f32]) {
        // A shift per element; the compiler vectorises this loop.
        for (o, &h) in y.iter_mut().zip(x) {
            *o = reference::bf16_bits_to_f32(h.to_bits());
        }
    }
}

impl Decode for Q8_0Codec {
    const TYPE: GgmlType = GgmlType::Q8_0;
    type Block = BlockQ8_0;
    fn dequantize_row_ref(x: &[BlockQ8_0], y: &mut [f32]) {
        for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
            reference::dequantize_q8_0_block(xb, fast::block_mut(yb));
        }
    }
    fn dequantize_row(x: &[BlockQ8_0], y: &mut [f32]) {
        fast::dequantize_q8_0(x, y);
    }
}

impl Codec for Q8_0Codec {
    fn quantize_row_ref(x: &[f32], y: &mut [BlockQ8_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(y) {
            *yb = reference::quantize_q8_0_block(fast::block(xb));
        }
    }
    fn quantize_row(x: &[f32], y: &mut [BlockQ8_0]) {
        fast::quantize_q8_0(x, y);
    }
}

impl Decode for Q4_0Codec {
    const TYPE: GgmlType = GgmlType::Q4_0;
    type Block = BlockQ4_0;
    fn dequantize_row_ref(x: &[BlockQ4_0], y: &mut [f32]) {
        for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
            reference::dequantize_q4_0_block(xb, fast::block_mut(yb));
        }
    }
    fn dequantize_row(x: &[BlockQ4_0], y: &mut [f32]) {
        fast::dequantize_q4_0(x, y);
    }
}

impl Codec for Q4_0Codec {
    fn quantize_row_ref(x: &[f32], y: &mut [BlockQ4_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(y) {
            *yb = reference::quantize_q4_0_block(fast::block(xb));
        }
    }
    fn quantize_row(x: &[f32], y: &mut [BlockQ4_0]) {
        fast::quantize_q4_0(x, y);
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

fn check_sizes(ty: GgmlType, n: usize, bytes: usize, encode: bool) -> Result<(), CodecError> {
    if !ty.can_decode() {
        return Err(CodecError::Unsupported(ty));
    }
    if encode && !ty.can_encode() {
        return Err(CodecError::NoEncoder(ty));
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

fn decode<C: Decode>(path: Path, x: &[u8], y: &mut [f32]) {
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
    check_sizes(ty, src.len(), dst.len(), true)?;
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
        GgmlType::Q4_1 => encode::<Q4_1Codec>(path, src, dst),
        GgmlType::Q5_0 => encode::<Q5_0Codec>(path, src, dst),
        GgmlType::Q5_1 => encode::<Q5_1Codec>(path, src, dst),
        GgmlType::Q1_0 => encode::<Q1_0Codec>(path, src, dst),
        GgmlType::Q2_0 => encode::<Q2_0Codec>(path, src, dst),
        GgmlType::MXFP4 => encode::<Mxfp4Codec>(path, src, dst),
        GgmlType::NVFP4 => encode::<Nvfp4Codec>(path, src, dst),
        GgmlType::IQ4_NL => encode::<Iq4NlCodec>(path, src, dst),
        GgmlType::Q2_K => encode::<Q2KCodec>(path, src, dst),
        GgmlType::Q3_K => encode::<Q3KCodec>(path, src, dst),
        GgmlType::Q4_K => encode::<Q4KCodec>(path, src, dst),
        GgmlType::Q5_K => encode::<Q5KCodec>(path, src, dst),
        GgmlType::Q6_K => encode::<Q6KCodec>(path, src, dst),
        GgmlType::TQ1_0 => encode::<Tq1_0Codec>(path, src, dst),
        GgmlType::TQ2_0 => encode::<Tq2_0Codec>(path, src, dst),
        GgmlType::IQ4_XS => encode::<Iq4XsCodec>(path, src, dst),
        other => return Err(CodecError::NoEncoder(other)),
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
    check_sizes(ty, dst.len(), src.len(), false)?;
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
        GgmlType::Q4_1 => decode::<Q4_1Codec>(path, src, dst),
        GgmlType::Q5_0 => decode::<Q5_0Codec>(path, src, dst),
        GgmlType::Q5_1 => decode::<Q5_1Codec>(path, src, dst),
        GgmlType::Q1_0 => decode::<Q1_0Codec>(path, src, dst),
        GgmlType::Q2_0 => decode::<Q2_0Codec>(path, src, dst),
        GgmlType::MXFP4 => decode::<Mxfp4Codec>(path, src, dst),
        GgmlType::NVFP4 => decode::<Nvfp4Codec>(path, src, dst),
        GgmlType::IQ4_NL => decode::<Iq4NlCodec>(path, src, dst),
        GgmlType::Q2_K => decode::<Q2KCodec>(path, src, dst),
        GgmlType::Q3_K => decode::<Q3KCodec>(path, src, dst),
        GgmlType::Q4_K => decode::<Q4KCodec>(path, src, dst),
        GgmlType::Q5_K => decode::<Q5KCodec>(path, src, dst),
        GgmlType::Q6_K => decode::<Q6KCodec>(path, src, dst),
        GgmlType::TQ1_0 => decode::<Tq1_0Codec>(path, src, dst),
        GgmlType::TQ2_0 => decode::<Tq2_0Codec>(path, src, dst),
        GgmlType::IQ4_XS => decode::<Iq4XsCodec>(path, src, dst),
        GgmlType::IQ2_XXS => decode::<Iq2XxsCodec>(path, src, dst),
        GgmlType::IQ2_XS => decode::<Iq2XsCodec>(path, src, dst),
        GgmlType::IQ2_S => decode::<Iq2SCodec>(path, src, dst),
        GgmlType::IQ3_XXS => decode::<Iq3XxsCodec>(path, src, dst),
        GgmlType::IQ3_S => decode::<Iq3SCodec>(path, src, dst),
        GgmlType::IQ1_S => decode::<Iq1SCodec>(path, src, dst),
        GgmlType::IQ1_M => decode::<Iq1MCodec>(path, src, dst),
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
            quantize(GgmlType::Q8_K, &[0.0; 256], &mut out),
            Err(CodecError::Unsupported(GgmlType::Q8_K))
        );
        assert_eq!(
            quantize(GgmlType::IQ2_S, &[0.0; 256], &mut out),
            Err(CodecError::NoEncoder(GgmlType::IQ2_S))
        );
    }
}
