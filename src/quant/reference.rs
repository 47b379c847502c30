//! Scalar reference codecs: ggml's `*_ref` routines ported rule for rule.
//!
//! These are the definition of "correct" inside this crate; the fast paths in `fast.rs` are
//! tested against them, and they are tested against ggml itself (`tests/ggml_parity.rs`).

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use half::f16;

/// f32 -> f16 exactly as ggml's software `ggml_compute_fp32_to_fp16` (the path used by
/// `ggml_fp32_to_fp16_row` in every build): round to nearest even, overflow to inf, and every
/// NaN becomes the canonical quiet NaN `sign | 0x7E00` (the `half` crate would keep payload bits).
#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    if x.is_nan() {
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        return sign | 0x7E00;
    }
    f16::from_f32(x).to_bits()
}

/// f16 -> f32 as ggml's `ggml_compute_fp16_to_fp32`: exact, NaNs quieted with their payload.
#[inline]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// bf16 -> f32: the 16 bits are the high half of the f32.
#[inline]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// f32 -> bf16 as ggml's `ggml_compute_fp32_to_bf16`: NaN forced quiet, otherwise round to
/// nearest even (no flush of subnormals).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// What ggml's x86 build stores for `(int8_t)f` (C's float -> int8 conversion): `cvttss2si`
/// truncates toward zero and answers the "integer indefinite" 0x80000000 for NaN, inf and
/// out-of-range values; the store then keeps the low byte (0x00). Rust's `as i8` would saturate
/// instead, so the reference spells the x86 behaviour out. Only reachable for non-finite input
/// or a block whose scale underflows (its inverse is inf).
#[inline]
pub fn x86_f32_to_i8(f: f32) -> i8 {
    x86_f32_to_i32(f) as i8
}

/// C's `(int)f` on x86 (`cvttss2si`): truncation toward zero, and 0x80000000 ("integer
/// indefinite") for NaN, inf and out-of-range values.
#[inline]
pub fn x86_f32_to_i32(f: f32) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE is part of the x86-64 baseline; the intrinsic only converts a register.
        unsafe { std::arch::x86_64::_mm_cvttss_si32(std::arch::x86_64::_mm_set_ss(f)) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        if f.is_finite() && f > -2_147_483_648.0 && f < 2_147_483_648.0 {
            f as i32
        } else {
            i32::MIN
        }
    }
}

/// `quantize_row_q8_0_ref`.
pub fn quantize_q8_0_block(x: &[f32; QK]) -> BlockQ8_0 {
    let mut amax = 0.0f32;
    for &v in x {
        // C: amax = MAX(amax, fabsf(v)), MAX(a, b) = a > b ? a : b. With NaN the comparison is
        // false and the right-hand side wins, which this keeps.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        // roundf: half away from zero, which is Rust's f32::round.
        *q = x86_f32_to_i8((v * id).round());
    }
    BlockQ8_0 {
        d: f16::from_bits(f32_to_f16_bits(d)),
        qs,
    }
}

/// `quantize_row_q4_0_ref`.
pub fn quantize_q4_0_block(x: &[f32; QK]) -> BlockQ4_0 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        // The first element of largest magnitude wins (strict <), and its sign is kept.
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0u8; QK / 2];
    for (j, q) in qs.iter_mut().enumerate() {
        // Multiply, then add: ggml is compiled without FMA contraction of this expression.
        let x0 = x[j] * id;
        let x1 = x[j + QK / 2] * id;
        let xi0 = x86_f32_to_i8(x0 + 8.5).min(15) as u8;
        let xi1 = x86_f32_to_i8(x1 + 8.5).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
    BlockQ4_0 {
        d: f16::from_bits(f32_to_f16_bits(d)),
        qs,
    }
}

/// `dequantize_row_q8_0`.
pub fn dequantize_q8_0_block(b: &BlockQ8_0, y: &mut [f32; QK]) {
    let d = f16_bits_to_f32(b.d.to_bits());
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = f32::from(q) * d;
    }
}

/// `dequantize_row_q4_0`.
pub fn dequantize_q4_0_block(b: &BlockQ4_0, y: &mut [f32; QK]) {
    let d = f16_bits_to_f32(b.d.to_bits());
    for (j, &q) in b.qs.iter().enumerate() {
        let x0 = i32::from(q & 0x0F) - 8;
        let x1 = i32::from(q >> 4) - 8;
        y[j] = x0 as f32 * d;
        y[j + QK / 2] = x1 as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_nan_is_canonical() {
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7FFF_FFFF)), 0x7E00);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0xFFC0_0001)), 0xFE00);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7C00);
        assert_eq!(f32_to_f16_bits(65519.0), 0x7BFF);
        assert_eq!(f32_to_f16_bits(-0.0), 0x8000);
    }

    #[test]
    fn q4_0_zero_block_has_negative_zero_scale() {
        let b = quantize_q4_0_block(&[-0.0; QK]);
        assert_eq!(b.d.to_bits(), 0x8000);
        assert!(b.qs.iter().all(|&q| q == 0x88));
    }

    #[test]
    fn q4_0_first_max_wins() {
        let mut x = [0.0f32; QK];
        x[3] = -2.0;
        x[7] = 2.0;
        let b = quantize_q4_0_block(&x);
        // max = -2 -> d = 0.25 (positive), so x[3] = -2 codes to 0 and x[7] = 2 to 15 (clamped)
        assert_eq!(b.d.to_f32(), 0.25);
        assert_eq!(b.qs[3] & 0xF, 0);
        assert_eq!(b.qs[7] & 0xF, 15);
    }

    #[test]
    fn bf16_round_trip() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits_to_f32(0x3F80), 1.0);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7F80_0001)), 0x7FC0);
    }
}
