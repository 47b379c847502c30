//! Fast paths: AVX2/F16C kernels, chosen at run time, each bit-identical to `reference`.
//!
//! A block that holds NaN or inf, or whose scale underflows so that its inverse is inf, goes to
//! the scalar reference: those are the cases where ggml's result depends on how x86 converts a
//! non-finite float to an integer, and the reference spells that out once.

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use super::reference as r;
use half::f16;

/// Whether the AVX2 + F16C kernels can run on this CPU (checked once, cached by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked just above).
        unsafe { x86::quantize_q8_0(x, y) };
        return;
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y) {
        *yb = r::quantize_q8_0_block(block(xb));
    }
}

pub fn quantize_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked just above).
        unsafe { x86::quantize_q4_0(x, y) };
        return;
    }
    for (xb, yb) in x.chunks_exact(QK).zip(y) {
        *yb = r::quantize_q4_0_block(block(xb));
    }
}

pub fn dequantize_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    // Built for AVX-512 (target-cpu=native here), the compiler's vectorisation of the plain
    // loop beats the hand-written kernels (measured: 47 vs 36 GiB/s in cache).
    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx512f")))]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked just above).
        unsafe { x86::dequantize_q8_0(x, y) };
        return;
    }
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        r::dequantize_q8_0_block(xb, block_mut(yb));
    }
}

pub fn dequantize_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked just above).
        unsafe { x86::dequantize_q4_0(x, y) };
        return;
    }
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
        r::dequantize_q4_0_block(xb, block_mut(yb));
    }
}

pub fn f32_to_f16(x: &[f32], y: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked just above).
        unsafe { x86::f32_to_f16(x, y) };
        return;
    }
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f16::from_bits(r::f32_to_f16_bits(v));
    }
}

pub fn f16_to_f32(x: &[f16], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and F16C (checked just above).
        unsafe { x86::f16_to_f32(x, y) };
        return;
    }
    for (o, &v) in y.iter_mut().zip(x) {
        *o = r::f16_bits_to_f32(v.to_bits());
    }
}

/// A 32-element block of a slice produced by `chunks_exact(QK)`.
#[inline]
pub(crate) fn block(x: &[f32]) -> &[f32; QK] {
    x.try_into().expect("chunks_exact(QK) yields QK elements")
}

#[inline]
pub(crate) fn block_mut(x: &mut [f32]) -> &mut [f32; QK] {
    x.try_into()
        .expect("chunks_exact_mut(QK) yields QK elements")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::blocks::{BlockQ4_0, BlockQ8_0, QK};
    use super::super::reference as r;
    use super::{block, block_mut};
    use half::f16;
    use std::arch::x86_64::*;

    /// Loads one block as four vectors. `x` has exactly 32 elements.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn load4(x: &[f32; QK]) -> [__m256; 4] {
        // SAFETY: each load reads 8 floats inside the 32-float array.
        unsafe {
            let p = x.as_ptr();
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        }
    }

    /// |v| for each lane and whether any lane is NaN or inf.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn abs_and_nonfinite(v: &[__m256; 4]) -> ([__m256; 4], bool) {
        let sign = _mm256_set1_ps(-0.0);
        let exp = _mm256_set1_epi32(0x7F80_0000);
        let mut a = [_mm256_setzero_ps(); 4];
        let mut bad = _mm256_setzero_si256();
        for k in 0..4 {
            a[k] = _mm256_andnot_ps(sign, v[k]);
            let e = _mm256_and_si256(_mm256_castps_si256(v[k]), exp);
            bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, exp));
        }
        (a, _mm256_testz_si256(bad, bad) == 0)
    }

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn hmax(a: &[__m256; 4]) -> f32 {
        let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }

    /// roundf (half away from zero) of each lane: truncate, then step away from zero when the
    /// dropped fraction is at least one half. `v - trunc(v)` is exact for every float.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn round_away(v: __m256) -> __m256 {
        let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(v, t));
        let step = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0)), _mm256_set1_ps(1.0));
        let need = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5), _CMP_GE_OQ);
        _mm256_add_ps(t, _mm256_and_ps(need, step))
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn quantize_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
            let xb = block(xb);
            let v = load4(xb);
            let (a, bad) = abs_and_nonfinite(&v);
            let amax = hmax(&a);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            if bad || !id.is_finite() {
                *yb = r::quantize_q8_0_block(xb);
                continue;
            }
            let m = _mm256_set1_ps(id);
            let q: [__m256i; 4] =
                std::array::from_fn(|k| _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[k], m))));
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let p = _mm256_packs_epi16(p01, p23);
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            yb.d = f16::from_bits(r::f32_to_f16_bits(d));
            // SAFETY: qs is 32 bytes; an unaligned 32-byte store fits exactly.
            unsafe { _mm256_storeu_si256(yb.qs.as_mut_ptr().cast(), p) };
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn quantize_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
        for (xb, yb) in x.chunks_exact(QK).zip(y.iter_mut()) {
            let xb = block(xb);
            let v = load4(xb);
            let (a, bad) = abs_and_nonfinite(&v);
            if bad {
                *yb = r::quantize_q4_0_block(xb);
                continue;
            }
            let amax = hmax(&a);
            // ggml keeps the first element of largest magnitude, with its sign; an all-zero
            // block keeps the initial +0.0.
            let max = if amax == 0.0 {
                0.0
            } else {
                let t = _mm256_set1_ps(amax);
                let mut mask = 0u32;
                for (k, ak) in a.iter().enumerate() {
                    let mk = _mm256_movemask_ps(_mm256_cmp_ps(*ak, t, _CMP_EQ_OQ)) as u32;
                    mask |= mk << (8 * k);
                }
                xb[mask.trailing_zeros() as usize]
            };
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            if !id.is_finite() {
                *yb = r::quantize_q4_0_block(xb);
                continue;
            }
            let m = _mm256_set1_ps(id);
            let half = _mm256_set1_ps(8.5);
            let fifteen = _mm256_set1_epi32(15);
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let t = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v[k], m), half));
                _mm256_min_epi32(t, fifteen)
            });
            // Element j (0..16) in the low nibble, j + 16 in the high nibble.
            let lo = _mm256_or_si256(q[0], _mm256_slli_epi32(q[2], 4));
            let hi = _mm256_or_si256(q[1], _mm256_slli_epi32(q[3], 4));
            let w = _mm256_packus_epi32(lo, hi);
            let w = _mm256_permute4x64_epi64(w, 0b11_01_10_00);
            let b = _mm256_packus_epi16(w, w);
            let bytes =
                _mm_unpacklo_epi64(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
            yb.d = f16::from_bits(r::f32_to_f16_bits(d));
            // SAFETY: qs is 16 bytes; an unaligned 16-byte store fits exactly.
            unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr().cast(), bytes) };
        }
    }

    #[cfg(not(target_feature = "avx512f"))]
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dequantize_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
        for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
            let yb = block_mut(yb);
            let d = _mm256_set1_ps(r::f16_bits_to_f32(xb.d.to_bits()));
            for k in 0..4 {
                // SAFETY: reads 8 of the 32 codes at offset 8k; writes 8 of the 32 outputs.
                unsafe {
                    let q = _mm_loadl_epi64(xb.qs.as_ptr().add(8 * k).cast());
                    let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    _mm256_storeu_ps(yb.as_mut_ptr().add(8 * k), _mm256_mul_ps(f, d));
                }
            }
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dequantize_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
        for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK)) {
            let yb = block_mut(yb);
            let d = _mm256_set1_ps(r::f16_bits_to_f32(xb.d.to_bits()));
            // SAFETY: qs is exactly 16 bytes.
            let q = unsafe { _mm_loadu_si128(xb.qs.as_ptr().cast()) };
            let lo = _mm_and_si128(q, _mm_set1_epi8(0x0F));
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0F));
            let eight = _mm256_set1_epi32(8);
            let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
            for (k, p) in parts.into_iter().enumerate() {
                let i = _mm256_sub_epi32(_mm256_cvtepu8_epi32(p), eight);
                // SAFETY: writes 8 of the 32 outputs at offset 8k.
                unsafe {
                    _mm256_storeu_ps(
                        yb.as_mut_ptr().add(8 * k),
                        _mm256_mul_ps(_mm256_cvtepi32_ps(i), d),
                    )
                };
            }
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f32_to_f16(x: &[f32], y: &mut [f16]) {
        let mut xc = x.chunks_exact(8);
        let mut yc = y.chunks_exact_mut(8);
        for (xs, ys) in (&mut xc).zip(&mut yc) {
            // SAFETY: both chunks hold exactly 8 elements.
            unsafe {
                let v = _mm256_loadu_ps(xs.as_ptr());
                if _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0 {
                    for (o, &f) in ys.iter_mut().zip(xs) {
                        *o = f16::from_bits(r::f32_to_f16_bits(f));
                    }
                    continue;
                }
                let h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
                _mm_storeu_si128(ys.as_mut_ptr().cast(), h);
            }
        }
        for (o, &f) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
            *o = f16::from_bits(r::f32_to_f16_bits(f));
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_to_f32(x: &[f16], y: &mut [f32]) {
        let mut xc = x.chunks_exact(8);
        let mut yc = y.chunks_exact_mut(8);
        for (xs, ys) in (&mut xc).zip(&mut yc) {
            // SAFETY: both chunks hold exactly 8 elements.
            unsafe {
                let h = _mm_loadu_si128(xs.as_ptr().cast());
                _mm256_storeu_ps(ys.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        for (o, &h) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
            *o = r::f16_bits_to_f32(h.to_bits());
        }
    }
}
