//! Matrix-vector products straight from stored blocks: a weight matrix stays in its GGUF type
//! (F32, F16, BF16, Q8_0, Q4_0). Float types decode one block at a time in registers; for
//! Q8_0 and Q4_0 the input vector is quantized to Q8_0 once per product and each block's dot
//! product is done in integers, as ggml does (`ggml_vec_dot_q8_0_q8_0`, `..._q4_0_q8_0`).
//! Nothing is dequantized into a second copy.

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use super::{CodecError, GgmlType};
use bytemuck::Zeroable;
use half::{bf16, f16};

/// A row-major matrix of `rows` rows of `cols` elements, borrowed in its stored type.
/// (A GGUF weight with `ne = [cols, rows]`.)
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: &'a [u8],
    row_bytes: usize,
}

/// Products smaller than this stay on one member of a team.
const TEAM_MIN_WEIGHTS: usize = 1 << 14;

/// The input vector as a matrix type wants it.
#[derive(Clone, Copy)]
enum Input<'x> {
    F32(&'x [f32]),
    /// Quantized to Q8_0, and the integer kernels this CPU runs.
    Q8(Q8<'x>, Int8),
}

/// An input quantized to Q8_0 (one block per 32 elements) and, for the VNNI kernels, the
/// same blocks in the form they read ([`VnniBlock`], empty at other levels).
#[derive(Clone, Copy)]
struct Q8<'x> {
    blocks: &'x [BlockQ8_0],
    vnni: &'x [VnniBlock],
}

impl<'x> Q8<'x> {
    fn range(&self, r: std::ops::Range<usize>) -> Q8<'x> {
        Q8 {
            blocks: &self.blocks[r.clone()],
            vnni: if self.vnni.is_empty() {
                &[]
            } else {
                &self.vnni[r]
            },
        }
    }
}

/// One input block as the VNNI kernels read it, computed once per input instead of once per
/// weight row. `vpdpbusd` multiplies unsigned bytes by signed ones, so those kernels feed it
/// weights shifted to unsigned (Q4_0: the nibble q itself instead of q - 8; Q8_0: w + 128)
/// and start each i32 lane's sum at `start` = `-offset * (sum of the lane's four input
/// bytes)`, which makes every lane's integer exactly the signed product sum of the AVX2
/// kernel, so the results are bit-identical. `d` is the block's f16 scale as f32.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct VnniBlock {
    start: [i32; 8],
    qs: [i8; 32],
    d: f32,
}

/// The storage behind [`Q8`].
#[derive(Default)]
struct Q8Buf {
    blocks: Vec<BlockQ8_0>,
    vnni: Vec<VnniBlock>,
}

impl Q8Buf {
    fn view(&self) -> Q8<'_> {
        Q8 {
            blocks: &self.blocks,
            vnni: &self.vnni,
        }
    }
}

/// Dot product of two f32 slices with independent accumulators (vectorises).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the compiler can vectorise without reassociating.
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = hsum16(&acc);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// The sum of 16 accumulators as a tree (8 + 8, 4 + 4, 2 + 2, 1 + 1: four dependent vector
/// adds rather than fifteen scalar ones, which dominated short products such as attention
/// scores over a 32-wide head).
#[inline(always)]
fn hsum16(acc: &[f32; 16]) -> f32 {
    let mut h = [0f32; 8];
    for k in 0..8 {
        h[k] = acc[k] + acc[k + 8];
    }
    let mut q = [0f32; 4];
    for k in 0..4 {
        q[k] = h[k] + h[k + 4];
    }
    (q[0] + q[2]) + (q[1] + q[3])
}

/// [`dot_f32`] of one row with four inputs at once: each weight chunk is loaded once for all
/// four. Every output is computed with exactly `dot_f32`'s operations in `dot_f32`'s order, so
/// it equals `dot_f32(a, b[j])` bit for bit.
#[inline]
pub fn dot_f32_x4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let [b0, b1, b2, b3] = b;
    let (mut a0, mut a1, mut a2, mut a3) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    let chunks = a
        .chunks_exact(16)
        .zip(b0.chunks_exact(16))
        .zip(b1.chunks_exact(16))
        .zip(b2.chunks_exact(16))
        .zip(b3.chunks_exact(16));
    for ((((x, y0), y1), y2), y3) in chunks {
        for k in 0..16 {
            a0[k] += x[k] * y0[k];
            a1[k] += x[k] * y1[k];
            a2[k] += x[k] * y2[k];
            a3[k] += x[k] * y3[k];
        }
    }
    let n = a.len() - a.len() % 16;
    let tail = |acc: &[f32; 16], y: &[f32]| {
        let mut s = hsum16(acc);
        for (x, y) in a[n..].iter().zip(&y[n..]) {
            s += x * y;
        }
        s
    };
    [tail(&a0, b0), tail(&a1, b1), tail(&a2, b2), tail(&a3, b3)]
}

/// Scalar reference of ggml's `vec_dot_q8_0_q8_0`: integer sums per block, scaled by both
/// block scales.
#[inline]
fn dot_q8_0_q8_0_ref(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut s = 0f32;
    for (a, b) in w.iter().zip(x) {
        let sum: i32 =
            a.qs.iter()
                .zip(&b.qs)
                .map(|(&p, &q)| i32::from(p) * i32::from(q))
                .sum();
        s += sum as f32 * (a.d.to_f32() * b.d.to_f32());
    }
    s
}

/// Scalar reference of ggml's `vec_dot_q4_0_q8_0`.
#[inline]
fn dot_q4_0_q8_0_ref(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut s = 0f32;
    for (a, b) in w.iter().zip(x) {
        let mut sum = 0i32;
        for k in 0..QK / 2 {
            sum += (i32::from(a.qs[k] & 0x0F) - 8) * i32::from(b.qs[k]);
            sum += (i32::from(a.qs[k] >> 4) - 8) * i32::from(b.qs[k + QK / 2]);
        }
        s += sum as f32 * (a.d.to_f32() * b.d.to_f32());
    }
    s
}

/// Which Q8_0/Q4_0 dot-product kernels run: all give the same integers per block, so the
/// same results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Int8 {
    Scalar,
    Avx2,
    /// AVX2 with AVX-512 VNNI's `vpdpbusd` on 256-bit vectors.
    Vnni,
}

#[inline]
fn int8_level() -> Int8 {
    #[cfg(target_arch = "x86_64")]
    {
        if !has_avx2_fma() {
            return Int8::Scalar;
        }
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            return Int8::Vnni;
        }
        Int8::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    Int8::Scalar
}

#[inline]
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::fast::has_avx2() && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// f16 weights times f32 inputs: convert 8 at a time with F16C, four accumulators.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_f32(w: &[half::f16], x: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (wc, xc) in w.chunks_exact(32).zip(x.chunks_exact(32)) {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: each chunk holds 32 elements; reads 8 at offset 8k.
                unsafe {
                    let h = _mm_loadu_si128(wc.as_ptr().add(8 * k).cast());
                    let xv = _mm256_loadu_ps(xc.as_ptr().add(8 * k));
                    *a = _mm256_fmadd_ps(_mm256_cvtph_ps(h), xv, *a);
                }
            }
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }

    /// [`dot_f16_f32`] of one row with two inputs: each f16 chunk converted once. Same
    /// operations in the same order per input, so bit-identical to two single calls.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_f32_x2(w: &[half::f16], x: [&[f32]; 2]) -> [f32; 2] {
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        for (c, wc) in w.chunks_exact(32).enumerate() {
            for k in 0..4 {
                // SAFETY: each chunk holds 32 elements; the inputs have w.len() elements
                // (asserted by the caller); reads 8 at offset 32c + 8k.
                unsafe {
                    let h = _mm256_cvtph_ps(_mm_loadu_si128(wc.as_ptr().add(8 * k).cast()));
                    for (a, xs) in acc.iter_mut().zip(x) {
                        let xv = _mm256_loadu_ps(xs.as_ptr().add(32 * c + 8 * k));
                        a[k] = _mm256_fmadd_ps(h, xv, a[k]);
                    }
                }
            }
        }
        let [a, b] = acc;
        [
            hsum(_mm256_add_ps(
                _mm256_add_ps(a[0], a[1]),
                _mm256_add_ps(a[2], a[3]),
            )),
            hsum(_mm256_add_ps(
                _mm256_add_ps(b[0], b[1]),
                _mm256_add_ps(b[2], b[3]),
            )),
        ]
    }

    /// Sum of products of 32 signed bytes `w` and `x`, as 8 i32 lanes: |w| (unsigned) times
    /// x with w's sign, pairwise into i16 (no overflow: 2 * 128 * 127 < 2^15), then into i32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn mul_sum_i8(w: __m256i, x: __m256i) -> __m256 {
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        let d16 = _mm256_maddubs_epi16(aw, sx);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(d16, _mm256_set1_epi16(1)))
    }

    /// The AVX2 Q8_0/Q4_0 kernels (`maddubs` + `madd` on |w| and x with w's sign).
    macro_rules! int8_kernels {
        ($name:ident, $feat:literal, $mul_sum_i8:ident) => {
            pub mod $name {
                use super::super::super::blocks::{BlockQ4_0, BlockQ8_0};
                use super::{hsum, $mul_sum_i8 as mul_sum_i8};
                use std::arch::x86_64::*;

                /// One weight block (`qa` as signed bytes, scale `da`) against block `i` of four Q8_0
                /// inputs, into their accumulators: the single-input kernels' step, once per input.
                #[inline]
                #[target_feature(enable = $feat)]
                fn accumulate4(
                    acc: &mut [__m256; 4],
                    qa: __m256i,
                    da: f32,
                    x: [&[BlockQ8_0]; 4],
                    i: usize,
                ) {
                    for (acc, xs) in acc.iter_mut().zip(x) {
                        let b = &xs[i];
                        // SAFETY: qs of Q8_0 is exactly 32 bytes.
                        let qb = unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) };
                        let d = _mm256_set1_ps(da * b.d.to_f32());
                        *acc = _mm256_fmadd_ps(d, mul_sum_i8(qa, qb), *acc);
                    }
                }

                /// [`dot_q8_0_q8_0`] of one row with four inputs: each weight block loaded once; per
                /// input the same operations in the same order (bit-identical to four single calls).
                #[target_feature(enable = $feat)]
                pub unsafe fn dot_q8_0_q8_0_x4(w: &[BlockQ8_0], x: [&[BlockQ8_0]; 4]) -> [f32; 4] {
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for (i, a) in w.iter().enumerate() {
                        // SAFETY: each qs is exactly 32 bytes.
                        let qa = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
                        let da = a.d.to_f32();
                        accumulate4(&mut acc, qa, da, x, i);
                    }
                    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
                }

                /// [`dot_q4_0_q8_0`] of one row with four inputs: each Q4_0 block unpacked once; per
                /// input the same operations in the same order (bit-identical to four single calls).
                #[target_feature(enable = $feat)]
                pub unsafe fn dot_q4_0_q8_0_x4(w: &[BlockQ4_0], x: [&[BlockQ8_0]; 4]) -> [f32; 4] {
                    let mut acc = [_mm256_setzero_ps(); 4];
                    let low = _mm_set1_epi8(0x0F);
                    let eight = _mm256_set1_epi8(8);
                    for (i, a) in w.iter().enumerate() {
                        // SAFETY: qs of Q4_0 is 16 bytes.
                        let q4 = unsafe { _mm_loadu_si128(a.qs.as_ptr().cast()) };
                        let lo = _mm_and_si128(q4, low);
                        let hi = _mm_and_si128(_mm_srli_epi16(q4, 4), low);
                        let qa = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
                        let da = a.d.to_f32();
                        accumulate4(&mut acc, qa, da, x, i);
                    }
                    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
                }

                #[target_feature(enable = $feat)]
                pub unsafe fn dot_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
                    let mut acc = _mm256_setzero_ps();
                    for (a, b) in w.iter().zip(x) {
                        // SAFETY: each qs is exactly 32 bytes.
                        let (qa, qb) = unsafe {
                            (
                                _mm256_loadu_si256(a.qs.as_ptr().cast()),
                                _mm256_loadu_si256(b.qs.as_ptr().cast()),
                            )
                        };
                        let d = _mm256_set1_ps(a.d.to_f32() * b.d.to_f32());
                        acc = _mm256_fmadd_ps(d, mul_sum_i8(qa, qb), acc);
                    }
                    hsum(acc)
                }

                #[target_feature(enable = $feat)]
                pub unsafe fn dot_q4_0_q8_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
                    let mut acc = _mm256_setzero_ps();
                    let low = _mm_set1_epi8(0x0F);
                    let eight = _mm256_set1_epi8(8);
                    for (a, b) in w.iter().zip(x) {
                        // SAFETY: qs of Q4_0 is 16 bytes, of Q8_0 32 bytes.
                        let (q4, qb) = unsafe {
                            (
                                _mm_loadu_si128(a.qs.as_ptr().cast()),
                                _mm256_loadu_si256(b.qs.as_ptr().cast()),
                            )
                        };
                        let lo = _mm_and_si128(q4, low);
                        let hi = _mm_and_si128(_mm_srli_epi16(q4, 4), low);
                        let qa = _mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight);
                        let d = _mm256_set1_ps(a.d.to_f32() * b.d.to_f32());
                        acc = _mm256_fmadd_ps(d, mul_sum_i8(qa, qb), acc);
                    }
                    hsum(acc)
                }
            }
        };
    }
    int8_kernels!(avx2, "avx2,fma", mul_sum_i8);

    /// The Q8_0/Q4_0 kernels with AVX-512 VNNI's `vpdpbusd` (unsigned weight bytes times
    /// signed input bytes, four products into each i32 lane, added to the lane's start value):
    /// weights enter unsigned (Q4_0 nibbles as stored, Q8_0 bytes + 128) and each lane starts
    /// at the input's precomputed offset correction, so every lane holds exactly the integer
    /// of the AVX2 kernel; the block scales are the same f32 products, accumulated in the same
    /// order, so the results are bit-identical to [`super::avx2`]'s. The input block's f32
    /// scale and lane offsets are computed once per input ([`VnniBlock`]), not once per row.
    pub mod vnni {
        use super::super::super::blocks::{BlockQ4_0, BlockQ8_0};
        use super::super::VnniBlock;
        use super::hsum;
        use std::arch::x86_64::*;

        /// Q4_0 block `a` as 32 unsigned bytes: the 16 low nibbles, then the 16 high ones.
        #[inline]
        #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
        fn nibbles(a: &BlockQ4_0) -> __m256i {
            // SAFETY: qs of Q4_0 is 16 bytes.
            let q4 = unsafe { _mm_loadu_si128(a.qs.as_ptr().cast()) };
            let low = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(q4, low);
            let hi = _mm_and_si128(_mm_srli_epi16(q4, 4), low);
            _mm256_set_m128i(hi, lo)
        }

        /// Q8_0 block `a` as 32 unsigned bytes `w + 128`.
        #[inline]
        #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
        fn offset_bytes(a: &BlockQ8_0) -> __m256i {
            // SAFETY: qs of Q8_0 is 32 bytes.
            let q = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
            _mm256_xor_si256(q, _mm256_set1_epi8(i8::MIN))
        }

        /// `acc += (da * x.d) * lanes(qa . x)` for input block `x`.
        ///
        /// # Safety
        /// AVX2, FMA, AVX-512 VNNI and VL present.
        #[inline(always)]
        unsafe fn step(acc: &mut __m256, qa: __m256i, da: __m256, x: &VnniBlock) {
            // SAFETY: the caller guarantees the features; qs is 32 bytes, start 8 i32.
            unsafe {
                let qb = _mm256_loadu_si256(x.qs.as_ptr().cast());
                let start = _mm256_loadu_si256(x.start.as_ptr().cast());
                let lanes = _mm256_dpbusd_epi32(start, qa, qb);
                let d = _mm256_mul_ps(da, _mm256_set1_ps(x.d));
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), *acc);
            }
        }

        macro_rules! kernels {
            ($single:ident, $x4:ident, $block:ty, $unpack:ident) => {
                /// # Safety
                /// AVX2, FMA, AVX-512 VNNI and VL present.
                #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
                pub unsafe fn $single(w: &[$block], x: &[VnniBlock]) -> f32 {
                    assert_eq!(x.len(), w.len());
                    let mut acc = _mm256_setzero_ps();
                    for (a, x) in w.iter().zip(x) {
                        let qa = $unpack(a);
                        let da = _mm256_set1_ps(a.d.to_f32());
                        // SAFETY: the features are present (this function's contract).
                        unsafe { step(&mut acc, qa, da, x) };
                    }
                    hsum(acc)
                }

                /// The single-input kernel for four inputs, each weight block unpacked once;
                /// per input the same operations in the same order.
                ///
                /// # Safety
                /// As the single-input kernel.
                #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
                pub unsafe fn $x4(w: &[$block], x: [&[VnniBlock]; 4]) -> [f32; 4] {
                    let [x0, x1, x2, x3] = x;
                    let n = w.len();
                    assert!(x0.len() == n && x1.len() == n && x2.len() == n && x3.len() == n);
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for (i, a) in w.iter().enumerate() {
                        let qa = $unpack(a);
                        let da = _mm256_set1_ps(a.d.to_f32());
                        // SAFETY: the features are present; i < n = every input's length.
                        unsafe {
                            step(&mut acc[0], qa, da, x0.get_unchecked(i));
                            step(&mut acc[1], qa, da, x1.get_unchecked(i));
                            step(&mut acc[2], qa, da, x2.get_unchecked(i));
                            step(&mut acc[3], qa, da, x3.get_unchecked(i));
                        }
                    }
                    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
                }
            };
        }
        kernels!(dot_q4_0_q8_0, dot_q4_0_q8_0_x4, BlockQ4_0, nibbles);
        kernels!(dot_q8_0_q8_0, dot_q8_0_q8_0_x4, BlockQ8_0, offset_bytes);
    }
}

#[inline]
fn dot_q8_0(w: &[BlockQ8_0], x: &Q8<'_>, level: Int8) -> f32 {
    match level {
        // SAFETY: the level is what `int8_level` detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Int8::Avx2 => unsafe { x86::avx2::dot_q8_0_q8_0(w, x.blocks) },
        // SAFETY: as above; a VNNI-level input carries its scales and offsets (`q8_input`).
        #[cfg(target_arch = "x86_64")]
        Int8::Vnni => unsafe { x86::vnni::dot_q8_0_q8_0(w, x.vnni) },
        _ => dot_q8_0_q8_0_ref(w, x.blocks),
    }
}

#[inline]
fn dot_q4_0(w: &[BlockQ4_0], x: &Q8<'_>, level: Int8) -> f32 {
    match level {
        // SAFETY: the level is what `int8_level` detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Int8::Avx2 => unsafe { x86::avx2::dot_q4_0_q8_0(w, x.blocks) },
        // SAFETY: as above; a VNNI-level input carries its scales and offsets (`q8_input`).
        #[cfg(target_arch = "x86_64")]
        Int8::Vnni => unsafe { x86::vnni::dot_q4_0_q8_0(w, x.vnni) },
        _ => dot_q4_0_q8_0_ref(w, x.blocks),
    }
}

#[inline]
fn dot_f16(row: &[f16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && row.len().is_multiple_of(32) {
        // SAFETY: AVX2, F16C and FMA were detected; lengths are equal multiples of 32.
        return unsafe { x86::dot_f16_f32(row, x) };
    }
    dot_f16_chunked(row, x)
}

#[inline]
fn dot_f16_chunked(row: &[f16], x: &[f32]) -> f32 {
    let mut buf = [0f32; 64];
    let mut s = 0f32;
    for (h, xs) in row.chunks(64).zip(x.chunks(64)) {
        let b = &mut buf[..h.len()];
        super::fast::f16_to_f32(h, b);
        s += dot_f32(b, xs);
    }
    s
}

#[inline]
fn dot_bf16(row: &[bf16], x: &[f32]) -> f32 {
    let mut buf = [0f32; 64];
    let mut s = 0f32;
    for (h, xs) in row.chunks(64).zip(x.chunks(64)) {
        for (o, v) in buf.iter_mut().zip(h) {
            *o = v.to_f32();
        }
        s += dot_f32(&buf[..h.len()], xs);
    }
    s
}

impl<'a> Matrix<'a> {
    /// Wraps stored bytes. The buffer must hold exactly `rows` rows and be aligned for the
    /// type's blocks (GGUF data is, at any alignment >= 4).
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, CodecError> {
        let row_bytes = ty.row_bytes(cols as u64).ok_or(CodecError::PartialBlock {
            ty,
            n: cols,
            block: ty.block_size(),
        })? as usize;
        if !ty.has_codec() {
            return Err(CodecError::Unsupported(ty));
        }
        if row_bytes.checked_mul(rows) != Some(data.len()) {
            return Err(CodecError::SizeMismatch {
                ty,
                n: rows * cols,
                expected: row_bytes * rows,
                actual: data.len(),
            });
        }
        let align = if ty == GgmlType::F32 { 4 } else { 2 };
        if data.as_ptr().align_offset(align) != 0 {
            return Err(CodecError::SizeMismatch {
                ty,
                n: rows * cols,
                expected: row_bytes * rows,
                actual: data.len(),
            });
        }
        Ok(Matrix {
            ty,
            rows,
            cols,
            data,
            row_bytes,
        })
    }

    pub fn row_bytes(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dot product of row `r` with the prepared input.
    #[inline]
    fn row_dot(&self, r: usize, x: &Input<'_>) -> f32 {
        let b = self.row_bytes(r);
        match (self.ty, x) {
            (GgmlType::F32, Input::F32(x)) => dot_f32(bytemuck::cast_slice(b), x),
            (GgmlType::F16, Input::F32(x)) => dot_f16(bytemuck::cast_slice(b), x),
            (GgmlType::BF16, Input::F32(x)) => dot_bf16(bytemuck::cast_slice(b), x),
            (GgmlType::Q8_0, Input::Q8(x, simd)) => dot_q8_0(bytemuck::cast_slice(b), x, *simd),
            (GgmlType::Q4_0, Input::Q8(x, simd)) => dot_q4_0(bytemuck::cast_slice(b), x, *simd),
            _ => unreachable!("input prepared for the matrix type"),
        }
    }

    /// `row_dot` of row `r` with four inputs at once where a kernel shares the weight loads
    /// between them (bit-identical to four `row_dot` calls in every case).
    #[inline]
    fn row_dot4(&self, r: usize, x: [&Input<'_>; 4]) -> [f32; 4] {
        let b = self.row_bytes(r);
        #[cfg(target_arch = "x86_64")]
        if let [Input::Q8(x0, l), Input::Q8(x1, _), Input::Q8(x2, _), Input::Q8(x3, _)] = x {
            let n = self.cols / QK;
            assert!([x0, x1, x2, x3].iter().all(|x| x.blocks.len() == n));
            let w = b;
            let blocks = [x0.blocks, x1.blocks, x2.blocks, x3.blocks];
            let full = [x0.vnni, x1.vnni, x2.vnni, x3.vnni];
            // SAFETY (every call below): the level is what `int8_level` detected on this CPU
            // (all inputs of one product share it; VNNI-level inputs carry their scales and
            // offsets); lengths checked above and by the kernels.
            match (self.ty, l) {
                (GgmlType::Q8_0, Int8::Avx2) => {
                    // SAFETY: see above.
                    return unsafe { x86::avx2::dot_q8_0_q8_0_x4(bytemuck::cast_slice(w), blocks) };
                }
                (GgmlType::Q8_0, Int8::Vnni) => {
                    // SAFETY: see above.
                    return unsafe { x86::vnni::dot_q8_0_q8_0_x4(bytemuck::cast_slice(w), full) };
                }
                (GgmlType::Q4_0, Int8::Avx2) => {
                    // SAFETY: see above.
                    return unsafe { x86::avx2::dot_q4_0_q8_0_x4(bytemuck::cast_slice(w), blocks) };
                }
                (GgmlType::Q4_0, Int8::Vnni) => {
                    // SAFETY: see above.
                    return unsafe { x86::vnni::dot_q4_0_q8_0_x4(bytemuck::cast_slice(w), full) };
                }
                _ => {}
            }
        }
        if let (GgmlType::F32, [Input::F32(x0), Input::F32(x1), Input::F32(x2), Input::F32(x3)]) =
            (self.ty, x)
        {
            return dot_f32_x4(bytemuck::cast_slice(b), [x0, x1, x2, x3]);
        }
        #[cfg(target_arch = "x86_64")]
        if let (GgmlType::F16, [Input::F32(x0), Input::F32(x1), Input::F32(x2), Input::F32(x3)]) =
            (self.ty, x)
        {
            if has_avx2_fma() && self.cols.is_multiple_of(32) {
                let w: &[f16] = bytemuck::cast_slice(b);
                assert!([x0, x1, x2, x3].iter().all(|x| x.len() == self.cols));
                // SAFETY: AVX2, F16C and FMA were detected; lengths are equal multiples of 32.
                let ([a, b], [c, d]) = unsafe {
                    (
                        x86::dot_f16_f32_x2(w, [x0, x1]),
                        x86::dot_f16_f32_x2(w, [x2, x3]),
                    )
                };
                return [a, b, c, d];
            }
        }
        x.map(|x| self.row_dot(r, x))
    }

    /// Row `r` decoded into `out` (`out.len() == cols`).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        super::dequantize_with(super::Path::Fast, self.ty, self.row_bytes(r), out)
            .expect("sizes checked in Matrix::new");
    }

    fn quantized(&self) -> bool {
        matches!(self.ty, GgmlType::Q8_0 | GgmlType::Q4_0)
    }

    /// `x` quantized to Q8_0 when this matrix's dot products want it (ggml's scheme for Q8_0
    /// and Q4_0 weights), with the VNNI kernels' per-block scales and lane offsets where those
    /// kernels run; else nothing.
    fn q8_input(&self, x: &[f32]) -> Q8Buf {
        if !self.quantized() {
            return Q8Buf::default();
        }
        let mut blocks = vec![BlockQ8_0::zeroed(); x.len() / QK];
        for (xr, b) in x
            .chunks_exact(self.cols)
            .zip(blocks.chunks_exact_mut(self.cols / QK))
        {
            super::Q8_0Codec::quantize_row_fast(xr, b);
        }
        let mut vnni = Vec::new();
        if int8_level() == Int8::Vnni {
            let offset = if self.ty == GgmlType::Q4_0 { 8 } else { 128 };
            vnni = blocks
                .iter()
                .map(|b| {
                    let mut start = [0i32; 8];
                    for (l, q) in start.iter_mut().zip(b.qs.chunks_exact(4)) {
                        *l = -offset * q.iter().map(|&v| i32::from(v)).sum::<i32>();
                    }
                    VnniBlock {
                        start,
                        qs: b.qs,
                        d: b.d.to_f32(),
                    }
                })
                .collect();
        }
        Q8Buf { blocks, vnni }
    }

    fn input<'x>(&self, x: &'x [f32], q8: Q8<'x>) -> Input<'x> {
        if self.quantized() {
            Input::Q8(q8, int8_level())
        } else {
            Input::F32(x)
        }
    }

    /// `y = M x` with the rows split across a spinning [`Team`] (see there for why).
    pub fn matvec_team(&self, x: &[f32], y: &mut [f32], team: &super::Team) {
        if team.threads() == 1 || self.rows * self.cols < TEAM_MIN_WEIGHTS {
            return self.matvec(x, y);
        }
        assert_eq!(x.len(), self.cols);
        assert_eq!(y.len(), self.rows);
        let q8 = self.q8_input(x);
        let x = &self.input(x, q8.view());
        let out = y.as_mut_ptr() as usize;
        team.for_ranges(self.rows, &|r| {
            // SAFETY: `for_ranges` hands each member a disjoint range of 0..rows, and `y` has
            // `rows` elements (asserted above) and outlives the call (run waits for all).
            let ys =
                unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(r.start), r.len()) };
            for (o, row) in ys.iter_mut().zip(r) {
                *o = self.row_dot(row, x);
            }
        });
    }

    /// `Y = X M^T` for `n` input rows (`xs` is `n x cols`, `ys` is `n x rows`): each weight
    /// row is read once and used for every input, which is what makes prompt processing
    /// cheaper per token than decoding. Rows are split across the team.
    pub fn matmul_team(&self, xs: &[f32], n: usize, ys: &mut [f32], team: &super::Team) {
        assert_eq!(xs.len(), n * self.cols);
        assert_eq!(ys.len(), n * self.rows);
        let per_row = self.cols / QK;
        let q8 = self.q8_input(xs);
        let q8 = q8.view();
        let input = |t: usize| {
            let x = &xs[t * self.cols..(t + 1) * self.cols];
            if self.quantized() {
                self.input(x, q8.range(t * per_row..(t + 1) * per_row))
            } else {
                Input::F32(x)
            }
        };
        let out = ys.as_mut_ptr() as usize;
        let rows = self.rows;
        let inputs: Vec<Input<'_>> = (0..n).map(input).collect();
        // Inputs in tiles of about 16 KiB, each tile against every row, so a tile stays in L1
        // while the rows stream past (the weights of one product are small enough for L2).
        let input_bytes = if self.quantized() {
            per_row * std::mem::size_of::<VnniBlock>()
        } else {
            self.cols * 4
        };
        let tile = (16384 / input_bytes.max(1)).clamp(4, 64) / 4 * 4;
        team.for_ranges(self.rows, &|r| {
            let put = |t: usize, row: usize, v: f32| {
                // SAFETY: members own disjoint row ranges, so each (t, row) element is
                // written by exactly one thread; the index is < n * rows = ys.len().
                unsafe { *(out as *mut f32).add(t * rows + row) = v };
            };
            for (k, inputs) in inputs.chunks(tile).enumerate() {
                let t0 = k * tile;
                for row in r.clone() {
                    let mut groups = inputs.chunks_exact(4);
                    for (g, x) in (&mut groups).enumerate() {
                        let v = self.row_dot4(row, [&x[0], &x[1], &x[2], &x[3]]);
                        for (j, v) in v.into_iter().enumerate() {
                            put(t0 + 4 * g + j, row, v);
                        }
                    }
                    let done = inputs.len() - groups.remainder().len();
                    for (j, x) in groups.remainder().iter().enumerate() {
                        put(t0 + done + j, row, self.row_dot(row, x));
                    }
                }
            }
        });
    }

    /// `y = M x` on the calling thread. For Q8_0/Q4_0 matrices `x` is first quantized to
    /// Q8_0, as ggml does.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols);
        assert_eq!(y.len(), self.rows);
        let q8 = self.q8_input(x);
        let x = self.input(x, q8.view());
        for (r, o) in y.iter_mut().enumerate() {
            *o = self.row_dot(r, &x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dots_equal_scalar_reference() {
        if !has_avx2_fma() {
            return;
        }
        for seed in 0..20u64 {
            let n = 32 * (1 + seed as usize % 9);
            let w = crate::synth::weights(seed, n, 3.0);
            let x = crate::synth::weights(seed + 100, n, 1.0);
            let w8b = super::super::quantize_to_vec(GgmlType::Q8_0, &w).unwrap();
            let w4b = super::super::quantize_to_vec(GgmlType::Q4_0, &w).unwrap();
            let w8: &[BlockQ8_0] = bytemuck::cast_slice(&w8b);
            let w4: &[BlockQ4_0] = bytemuck::cast_slice(&w4b);
            // The input as each matrix type prepares it (with the VNNI offsets where they run).
            let x8 = Matrix::new(GgmlType::Q8_0, 1, n, &w8b)
                .unwrap()
                .q8_input(&x);
            let x4 = Matrix::new(GgmlType::Q4_0, 1, n, &w4b)
                .unwrap()
                .q8_input(&x);
            let (x8, x4) = (x8.view(), x4.view());
            let xq: Vec<BlockQ8_0> =
                bytemuck::cast_slice(&super::super::quantize_to_vec(GgmlType::Q8_0, &x).unwrap())
                    .to_vec();
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(x8.blocks),
                bytemuck::cast_slice::<_, u8>(&xq)
            );
            let (a, b) = (dot_q8_0(w8, &x8, Int8::Avx2), dot_q8_0_q8_0_ref(w8, &xq));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "q8: {a} vs {b}");
            let (a, b) = (dot_q4_0(w4, &x4, Int8::Avx2), dot_q4_0_q8_0_ref(w4, &xq));
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "q4: {a} vs {b}");
            // The VNNI kernels compute the same integers, so the same floats, bit for bit,
            // one input or four.
            if int8_level() == Int8::Vnni {
                for (x, y) in [
                    (dot_q8_0(w8, &x8, Int8::Vnni), dot_q8_0(w8, &x8, Int8::Avx2)),
                    (dot_q4_0(w4, &x4, Int8::Vnni), dot_q4_0(w4, &x4, Int8::Avx2)),
                ] {
                    assert_eq!(x.to_bits(), y.to_bits());
                }
                // SAFETY: VNNI detected; the inputs have the weights' length and offsets.
                let (q8x4, q4x4) = unsafe {
                    (
                        x86::vnni::dot_q8_0_q8_0_x4(w8, [x8.vnni; 4]),
                        x86::vnni::dot_q4_0_q8_0_x4(w4, [x4.vnni; 4]),
                    )
                };
                let (a8, a4) = (dot_q8_0(w8, &x8, Int8::Avx2), dot_q4_0(w4, &x4, Int8::Avx2));
                assert!(q8x4.iter().all(|v| v.to_bits() == a8.to_bits()));
                assert!(q4x4.iter().all(|v| v.to_bits() == a4.to_bits()));
            }
        }
    }

    /// The batched product (four inputs per weight load, then single ones for the remainder)
    /// equals one `matvec` per input bit for bit, for every type and with 1 or 2 threads.
    #[test]
    fn matmul_equals_matvec_bit_for_bit() {
        // 70 inputs: several input tiles, each ending in a group of fewer than four.
        let (rows, cols, n) = (67, 128, 70);
        let w = crate::synth::weights(11, rows * cols, 1.0);
        let xs = crate::synth::weights(12, n * cols, 1.0);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
        ] {
            let q = super::super::quantize_to_vec(ty, &w).unwrap();
            let m = Matrix::new(ty, rows, cols, &q).unwrap();
            for threads in [1, 2] {
                let team = super::super::Team::new(threads);
                let mut ys = vec![0f32; n * rows];
                m.matmul_team(&xs, n, &mut ys, &team);
                for t in 0..n {
                    let mut y = vec![0f32; rows];
                    m.matvec(&xs[t * cols..(t + 1) * cols], &mut y);
                    let got = &ys[t * rows..(t + 1) * rows];
                    assert!(
                        got.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty}, {threads} threads, input {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn matvec_matches_dequantized_product() {
        let (rows, cols) = (70, 96);
        let w = crate::synth::weights(3, rows * cols, 1.0);
        let x = crate::synth::weights(4, cols, 1.0);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
        ] {
            let q = super::super::quantize_to_vec(ty, &w).unwrap();
            let deq = super::super::dequantize_to_vec(ty, &q, w.len()).unwrap();
            let m = Matrix::new(ty, rows, cols, &q).unwrap();
            let mut y = vec![0f32; rows];
            m.matvec(&x, &mut y);
            // Quantized matrices multiply a Q8_0-quantized input, as ggml does.
            let xq = match ty {
                GgmlType::Q8_0 | GgmlType::Q4_0 => super::super::dequantize_to_vec(
                    GgmlType::Q8_0,
                    &super::super::quantize_to_vec(GgmlType::Q8_0, &x).unwrap(),
                    cols,
                )
                .unwrap(),
                _ => x.clone(),
            };
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| f64::from(deq[r * cols + c]) * f64::from(xq[c]))
                    .sum();
                assert!(
                    (f64::from(y[r]) - want).abs() < 1e-4,
                    "{ty} row {r}: {} vs {want}",
                    y[r]
                );
            }
            let mut row = vec![0f32; cols];
            m.row_to_f32(5, &mut row);
            assert_eq!(&row[..], &deq[5 * cols..6 * cols]);
        }
    }
}
