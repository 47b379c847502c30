//! 32-element block types beside Q4_0/Q8_0 (Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4) and the
//! small-block ones (Q1_0, Q2_0, NVFP4): ggml's `ggml-quants.c` reference kernels ported rule
//! for rule, operation for operation (ggml-base is built for baseline x86-64, so no FMA
//! contraction and no reassociation: the same sequence of f32 operations gives the same bits).
//!
//! Encoders follow what `ggml_quantize_chunk` runs without an importance matrix (for IQ4_NL that
//! is `quantize_iq4_nl` with 7 scale tries, not `quantize_row_iq4_nl_ref`).

// The loops index like ggml's C, element for element, so that a port can be checked against
// the source line by line.
#![allow(clippy::needless_range_loop)]

use super::blocks::{
    BlockIq4Nl, BlockMxfp4, BlockNvfp4, BlockQ1_0, BlockQ2_0, BlockQ4_1, BlockQ5_0, BlockQ5_1,
};
use super::grids::{KVALUES_FP4, KVALUES_IQ4NL};
use super::kquants::{best_index_int8, nearest_int, GROUP_MAX_EPS};
use super::reference::{f16_bits_to_f32, f32_to_f16_bits, x86_f32_to_i8};
use half::f16;

#[inline]
pub(crate) fn h2f(h: f16) -> f32 {
    f16_bits_to_f32(h.to_bits())
}

#[inline]
pub(crate) fn f2h(x: f32) -> f16 {
    f16::from_bits(f32_to_f16_bits(x))
}

/// C's `(uint8_t)f` on x86: the low byte of `cvttss2si`'s 32-bit result.
#[inline]
fn x86_f32_to_u8(f: f32) -> u8 {
    x86_f32_to_i8(f) as u8
}

/// min and max of a block as ggml scans them (`if (v < min) min = v`, NaN never wins).
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The first element of largest magnitude, with its sign (`if (amax < fabsf(v))`).
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

// ---------------------------------------------------------------- Q4_1

pub fn quantize_q4_1(x: &[f32], y: &mut BlockQ4_1) {
    let x: &[f32; 32] = x.try_into().expect("a 32-element block");
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f2h(d);
    y.m = f2h(min);
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[j + 16] - min) * id;
        let xi0 = i32::from(x86_f32_to_i8(x0 + 0.5)).min(15) as u8;
        let xi1 = i32::from(x86_f32_to_i8(x1 + 0.5)).min(15) as u8;
        y.qs[j] = xi0 | (xi1 << 4);
    }
}

pub fn dequantize_q4_1(b: &BlockQ4_1, y: &mut [f32]) {
    let y: &mut [f32; 32] = y.try_into().expect("a 32-element block");
    let d = h2f(b.d);
    let m = h2f(b.m);
    for j in 0..16 {
        y[j] = f32::from(b.qs[j] & 0x0F) * d + m;
        y[j + 16] = f32::from(b.qs[j] >> 4) * d + m;
    }
}

// ---------------------------------------------------------------- Q5_0

pub fn quantize_q5_0(x: &[f32], y: &mut BlockQ5_0) {
    let x: &[f32; 32] = x.try_into().expect("a 32-element block");
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f2h(d);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = x[j] * id;
        let x1 = x[j + 16] * id;
        let xi0 = i32::from(x86_f32_to_i8(x0 + 16.5)).min(31) as u8;
        let xi1 = i32::from(x86_f32_to_i8(x1 + 16.5)).min(31) as u8;
        y.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (u32::from(xi0 & 0x10) >> 4) << j;
        qh |= (u32::from(xi1 & 0x10) >> 4) << (j + 16);
    }
    y.qh = qh.to_le_bytes();
}

pub fn dequantize_q5_0(b: &BlockQ5_0, y: &mut [f32]) {
    let y: &mut [f32; 32] = y.try_into().expect("a 32-element block");
    let d = h2f(b.d);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = i32::from((b.qs[j] & 0x0F) | xh0) - 16;
        let x1 = i32::from((b.qs[j] >> 4) | xh1) - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

// ---------------------------------------------------------------- Q5_1

pub fn quantize_q5_1(x: &[f32], y: &mut BlockQ5_1) {
    let x: &[f32; 32] = x.try_into().expect("a 32-element block");
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = f2h(d);
    y.m = f2h(min);
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[j + 16] - min) * id;
        let xi0 = x86_f32_to_u8(x0 + 0.5);
        let xi1 = x86_f32_to_u8(x1 + 0.5);
        y.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= (u32::from(xi0 & 0x10) >> 4) << j;
        qh |= (u32::from(xi1 & 0x10) >> 4) << (j + 16);
    }
    y.qh = qh.to_le_bytes();
}

pub fn dequantize_q5_1(b: &BlockQ5_1, y: &mut [f32]) {
    let y: &mut [f32; 32] = y.try_into().expect("a 32-element block");
    let d = h2f(b.d);
    let m = h2f(b.m);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = (b.qs[j] & 0x0F) | xh0;
        let x1 = (b.qs[j] >> 4) | xh1;
        y[j] = f32::from(x0) * d + m;
        y[j + 16] = f32::from(x1) * d + m;
    }
}

// ---------------------------------------------------------------- Q1_0 (128 elements)

pub fn quantize_q1_0(x: &[f32], y: &mut BlockQ1_0) {
    let x: &[f32; 128] = x.try_into().expect("a 128-element block");
    let mut sum_abs = 0.0f32;
    for &v in x {
        sum_abs += v.abs();
    }
    let d = sum_abs / 128.0;
    y.d = f2h(d);
    y.qs = [0; 16];
    for (j, &v) in x.iter().enumerate() {
        if v >= 0.0 {
            y.qs[j / 8] |= 1 << (j % 8);
        }
    }
}

pub fn dequantize_q1_0(b: &BlockQ1_0, y: &mut [f32]) {
    let y: &mut [f32; 128] = y.try_into().expect("a 128-element block");
    let d = h2f(b.d);
    let neg_d = -d;
    for (j, o) in y.iter_mut().enumerate() {
        *o = if (b.qs[j / 8] >> (j % 8)) & 1 != 0 {
            d
        } else {
            neg_d
        };
    }
}

// ---------------------------------------------------------------- Q2_0 (64 elements)

pub fn quantize_q2_0(x: &[f32], y: &mut BlockQ2_0) {
    let x: &[f32; 64] = x.try_into().expect("a 64-element block");
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
        }
    }
    let d = amax;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    y.d = f2h(d);
    y.qs = [0; 16];
    for (j, &w) in x.iter().enumerate() {
        // (int)roundf(w * id): cvttss2si of an already integral value.
        let q = (x86_cvt_i32((w * id).round()) + 1).clamp(0, 3);
        y.qs[j / 4] |= (q as u8) << ((j % 4) * 2);
    }
}

pub fn dequantize_q2_0(b: &BlockQ2_0, y: &mut [f32]) {
    let y: &mut [f32; 64] = y.try_into().expect("a 64-element block");
    let d = h2f(b.d);
    for (j, o) in y.iter_mut().enumerate() {
        let q = (b.qs[j / 4] >> ((j % 4) * 2)) & 3;
        *o = (i32::from(q) - 1) as f32 * d;
    }
}

/// C's `(int)f` on x86 (`cvttss2si`).
#[inline]
pub(crate) fn x86_cvt_i32(f: f32) -> i32 {
    super::reference::x86_f32_to_i32(f)
}

// ---------------------------------------------------------------- MXFP4 / NVFP4

fn best_index_fp4(x: f32, e: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (f32::from(KVALUES_FP4[0]) * e - x).abs();
    for (i, &k) in KVALUES_FP4.iter().enumerate().skip(1) {
        let err = (f32::from(k) * e - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// `ggml_e8m0_to_fp32_half`.
#[inline]
pub fn e8m0_to_fp32_half(x: u8) -> f32 {
    let bits = if x < 2 {
        0x0020_0000u32 << x
    } else {
        u32::from(x - 1) << 23
    };
    f32::from_bits(bits)
}

pub fn quantize_mxfp4(x: &[f32], y: &mut BlockMxfp4) {
    let x: &[f32; 32] = x.try_into().expect("a 32-element block");
    let mut amax = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    // (uint8_t)(floorf(log2f(amax)) - 2 + 127): float -> int conversion, low byte kept.
    let e = if amax > 0.0 {
        x86_f32_to_u8(amax.log2().floor() - 2.0 + 127.0)
    } else {
        0
    };
    let d = e8m0_to_fp32_half(e);
    y.e = e;
    for j in 0..16 {
        let x0 = best_index_fp4(x[j], d);
        let x1 = best_index_fp4(x[j + 16], d);
        y.qs[j] = x0 | (x1 << 4);
    }
}

pub fn dequantize_mxfp4(b: &BlockMxfp4, y: &mut [f32]) {
    let y: &mut [f32; 32] = y.try_into().expect("a 32-element block");
    let d = e8m0_to_fp32_half(b.e);
    for j in 0..16 {
        y[j] = f32::from(KVALUES_FP4[usize::from(b.qs[j] & 0x0F)]) * d;
        y[j + 16] = f32::from(KVALUES_FP4[usize::from(b.qs[j] >> 4)]) * d;
    }
}

/// `ggml_ue4m3_to_fp32` (the value times 0.5, like the doubled E2M1 table).
pub fn ue4m3_to_fp32(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = i32::from((x >> 3) & 0xF);
    let man = f32::from(x & 7);
    // ldexpf by a power of two in the normal range is an exact multiplication.
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let raw = if exp == 0 {
        man * pow2(-9)
    } else {
        (1.0 + man / 8.0) * pow2(exp - 7)
    };
    raw * 0.5
}

/// `ggml_fp32_to_ue4m3`.
pub fn fp32_to_ue4m3(mut x: f32) -> u8 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    if x > 448.0 {
        x = 448.0;
    }
    let bits = x.to_bits();
    let fp32_exp = ((bits >> 23) & 0xFF) as i32 - 127;
    let fp32_man = ((bits >> 20) & 7) as i32;
    let mut e = fp32_exp + 7;
    if e <= 0 {
        let man = x86_cvt_i32(x * 512.0 + 0.5).min(7);
        if man < 1 {
            return 0;
        }
        return man as u8;
    }
    if e >= 15 {
        return 0x7E;
    }
    let round_bit = ((bits >> 19) & 1) as i32;
    let mut m = fp32_man + round_bit;
    if m > 7 {
        m = 0;
        e += 1;
        if e >= 15 {
            return 0x7E;
        }
    }
    ((e << 3) | m) as u8
}

pub fn quantize_nvfp4(x: &[f32], y: &mut BlockNvfp4) {
    let x: &[f32; 64] = x.try_into().expect("a 64-element block");
    for s in 0..4 {
        let xb = &x[16 * s..16 * s + 16];
        let mut amax = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        let ue = fp32_to_ue4m3(amax / 6.0);
        y.d[s] = ue;
        let d = ue4m3_to_fp32(ue);
        for j in 0..8 {
            let x0 = best_index_fp4(xb[j], d);
            let x1 = best_index_fp4(xb[8 + j], d);
            y.qs[s * 8 + j] = x0 | (x1 << 4);
        }
    }
}

pub fn dequantize_nvfp4(b: &BlockNvfp4, y: &mut [f32]) {
    let y: &mut [f32; 64] = y.try_into().expect("a 64-element block");
    for s in 0..4 {
        let d = ue4m3_to_fp32(b.d[s]);
        let yb = &mut y[16 * s..16 * s + 16];
        for j in 0..8 {
            let q = b.qs[s * 8 + j];
            yb[j] = f32::from(KVALUES_FP4[usize::from(q & 0x0F)]) * d;
            yb[j + 8] = f32::from(KVALUES_FP4[usize::from(q >> 4)]) * d;
        }
    }
}

// ---------------------------------------------------------------- IQ4_NL / IQ4_XS

/// `quantize_row_iq4_nl_impl` without an importance matrix, for a super-block of `x.len()`
/// elements in 32-element blocks. Writes the scale, the codes and (IQ4_XS) the 6-bit block
/// scales; returns nothing else.
pub(crate) fn quantize_iq4_impl(
    x: &[f32],
    qw: Option<&[f32]>,
    dh: &mut f16,
    q4: &mut [u8],
    scales_h: &mut u16,
    scales_l: &mut [u8],
    ntry: i32,
) {
    let sbs = x.len();
    let values = &KVALUES_IQ4NL;
    let v0 = f32::from(values[0]);
    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / sbs as f32;
    q4.fill(0);
    *dh = f2h(0.0);
    let nblk = sbs / 32;
    let mut scales = [0.0f32; 8];
    let mut l_all = [0u8; 256];
    let mut weight = [0.0f32; 32];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for ib in 0..nblk {
        let xb = &x[32 * ib..32 * ib + 32];
        let lb = &mut l_all[32 * ib..32 * ib + 32];
        match qw {
            Some(qw) => {
                for j in 0..32 {
                    weight[j] = qw[32 * ib + j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let mut id = 1.0 / d;
        #[cfg(target_arch = "x86_64")]
        if ntry == 7 && super::kquants::search_avx512() {
            // The first guess and the 15 tries side by side. The first guess's codes are not
            // kept: with tries, every code is recomputed from the final scale below.
            let mut ids = [0f32; 16];
            ids[0] = id;
            for (k, itry) in (-ntry..=ntry).enumerate() {
                ids[k + 1] = (itry as f32 + v0) / max;
            }
            // SAFETY: AVX-512F was just detected.
            let (sqx, sq2) = unsafe { super::kquants::avx512::iq4_sums(values, xb, &weight, &ids) };
            d = if sq2[0] > 0.0 { sqx[0] / sq2[0] } else { 0.0 };
            let mut best = d * sqx[0];
            for k in 1..16 {
                if sq2[k] > 0.0 && sqx[k] * sqx[k] > best * sq2[k] {
                    d = sqx[k] / sq2[k];
                    best = d * sqx[k];
                }
            }
            scales[ib] = d;
            let abs_d = d.abs();
            if abs_d > amax_scale {
                amax_scale = abs_d;
                max_scale = d;
            }
            continue;
        }
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for j in 0..32 {
            let al = id * xb[j];
            let l = best_index_int8(values, al);
            lb[j] = l as u8;
            let q = f32::from(values[l]);
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry as f32 + v0) / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let al = id * xb[j];
                let l = best_index_int8(values, al);
                let q = f32::from(values[l]);
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    if nblk > 1 {
        *scales_h = 0;
        let d = -max_scale / 32.0;
        *dh = f2h(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nblk {
            let mut l = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[32 * ib..32 * ib + 32];
            for j in 0..32 {
                l_all[32 * ib + j] = best_index_int8(values, idl * xb[j]) as u8;
            }
            l += 32;
            let l_l = (l & 0xF) as u8;
            let l_h = (l >> 4) as u16;
            if ib % 2 == 0 {
                scales_l[ib / 2] = l_l;
            } else {
                scales_l[ib / 2] |= l_l << 4;
            }
            *scales_h |= l_h << (2 * (ib % 8));
        }
    } else {
        *dh = f2h(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 {
                1.0 / scales[0]
            } else {
                0.0
            };
            for j in 0..sbs {
                l_all[j] = best_index_int8(values, id * x[j]) as u8;
            }
        }
    }
    for i in 0..sbs / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l_all[32 * i + j] | (l_all[32 * i + 16 + j] << 4);
        }
    }
}

pub fn quantize_iq4_nl(x: &[f32], y: &mut BlockIq4Nl) {
    let x: &[f32; 32] = x.try_into().expect("a 32-element block");
    let mut sh = 0u16;
    quantize_iq4_impl(x, None, &mut y.d, &mut y.qs, &mut sh, &mut [], 7);
}

pub fn dequantize_iq4_nl(b: &BlockIq4Nl, y: &mut [f32]) {
    let y: &mut [f32; 32] = y.try_into().expect("a 32-element block");
    let d = h2f(b.d);
    for j in 0..16 {
        y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(b.qs[j] & 0xF)]);
        y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(b.qs[j] >> 4)]);
    }
}
