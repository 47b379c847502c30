//! Encoding with an importance matrix: what `ggml_quantize_chunk` does when given one weight
//! per column (`quantize_row_*_impl` in ggml-quants.c, ported operation for operation).
//!
//! The weights change Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL and IQ4_XS; the other
//! encodable types ignore them, as ggml does. The legacy types' weights depend on the whole
//! row (`sigma2` is the row's mean square), so this works row by row.

// The loops index like ggml's C, element for element, so that a port can be checked against
// the source line by line.
#![allow(clippy::needless_range_loop)]

use super::blocks::{
    BlockIq4Nl, BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, QK_K,
};
use super::kquants::{self, make_qx_quants, nearest_int, pack_2bit, scale_min_k4, GROUP_MAX_EPS};
use super::legacy::{f2h, h2f, quantize_iq4_impl};
use super::{quantize_with, CodecError, GgmlType, Path};
use rayon::prelude::*;

/// Whether ggml's encoder for `ty` reads an importance matrix.
pub const fn uses_imatrix(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ4_NL
            | GgmlType::IQ4_XS
    )
}

/// `make_qkx3_quants` with weights. Returns (scale, the_min).
#[allow(clippy::too_many_arguments)]
fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    // `max <= min`, written so that NaN takes the same branch as in C.
    if max <= min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let diff = scale * f32::from(l_out[i]) + min - x[i];
        best_mad += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    #[cfg(target_arch = "x86_64")]
    if n <= kquants::LANE_MAX_N && kquants::search_avx2() {
        let c = kquants::SearchInput {
            nmax,
            max,
            sum_w,
            sum_x,
            rmin,
            rdelta,
            nstep,
            use_mad: false,
            qkx3: true,
        };
        let mut st = kquants::SearchState {
            min,
            scale,
            best_error: best_mad,
        };
        // SAFETY: AVX2 was just detected.
        unsafe { kquants::avx2_search(&c, x, weights, l_out, &mut st) };
        return (st.scale, -st.min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let v = iscale * (x[i] - min);
            let l = if v > 0.0 {
                nearest_int(if v < nmaxf { v } else { nmaxf })
            } else {
                0
            };
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0.0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                mad += weights[i] * (diff * diff);
            }
            if mad < best_mad {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants`.
fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * f32::from(l_out[i]);
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = qw[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = f32::from(l_out[i]);
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(l_out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The row's `sigma2 = sum(x^2) / n`.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s / x.len() as f32
}

fn weights32(xb: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for j in 0..xb.len() {
        out[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
}

fn q4_0_row(x: &[f32], qw: &[f32], y: &mut [BlockQ4_0]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; 32];
    let mut l = [0i8; 32];
    for (ib, yb) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        weights32(xb, &qw[32 * ib..], sigma2, &mut weight);
        let d = make_qx_quants(8, xb, &mut l, Some(&weight));
        yb.d = f2h(d);
        for j in 0..16 {
            yb.qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    }
}

fn q5_0_row(x: &[f32], qw: &[f32], y: &mut [BlockQ5_0]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; 32];
    let mut l = [0i8; 32];
    for (ib, yb) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        weights32(xb, &qw[32 * ib..], sigma2, &mut weight);
        let d = make_qx_quants(16, xb, &mut l, Some(&weight));
        yb.d = f2h(d);
        let mut qh = 0u32;
        for j in 0..16 {
            let (xi0, xi1) = (l[j] as u8, l[j + 16] as u8);
            yb.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (u32::from(xi0 & 0x10) >> 4) << j;
            qh |= (u32::from(xi1 & 0x10) >> 4) << (j + 16);
        }
        yb.qh = qh.to_le_bytes();
    }
}

fn q4_1_row(x: &[f32], qw: &[f32], y: &mut [BlockQ4_1]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; 32];
    let (mut l, mut laux) = ([0u8; 32], [0u8; 32]);
    for (ib, yb) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        weights32(xb, &qw[32 * ib..], sigma2, &mut weight);
        let (d, min) = make_qkx3_quants(15, xb, &weight, &mut l, &mut laux, -0.9, 0.05, 36);
        yb.d = f2h(d);
        yb.m = f2h(-min);
        for j in 0..16 {
            yb.qs[j] = l[j] | (l[j + 16] << 4);
        }
    }
}

fn q5_1_row(x: &[f32], qw: &[f32], y: &mut [BlockQ5_1]) {
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; 32];
    let (mut l, mut laux) = ([0u8; 32], [0u8; 32]);
    for (ib, yb) in y.iter_mut().enumerate() {
        let xb = &x[32 * ib..32 * ib + 32];
        weights32(xb, &qw[32 * ib..], sigma2, &mut weight);
        let (d, min) = make_qkx3_quants(31, xb, &weight, &mut l, &mut laux, -0.9, 0.05, 36);
        yb.d = f2h(d);
        yb.m = f2h(-min);
        let mut qh = 0u32;
        for j in 0..16 {
            let (xi0, xi1) = (l[j], l[j + 16]);
            yb.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (u32::from(xi0 & 0x10) >> 4) << j;
            qh |= (u32::from(xi1 & 0x10) >> 4) << (j + 16);
        }
        yb.qh = qh.to_le_bytes();
    }
}

fn q2_k_block(x: &[f32], qw: &[f32], y: &mut BlockQ2K) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let mut weight = [0.0f32; 16];
    let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        for k in 0..16 {
            weight[k] = qw[16 * j + k] * (sigma2 + xs[k] * xs[k]).sqrt();
        }
        for &w in &weight {
            sw[j] += w;
        }
        let (s, m) = make_qkx3_quants(
            3,
            xs,
            &weight,
            &mut l[16 * j..16 * j + 16],
            &mut laux,
            -0.9,
            0.05,
            36,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    y.d = f2h(dm);
    y.dmin = f2h(mm);
    let (dm, mm) = (h2f(y.d), h2f(y.dmin));
    for j in 0..16 {
        y.scales[j] = ls[j] | (lm[j] << 4);
    }
    for j in 0..16 {
        let d = dm * f32::from(y.scales[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let m = mm * f32::from(y.scales[j] >> 4);
        for ii in 0..16 {
            let li = nearest_int((x[16 * j + ii] + m) / d);
            l[16 * j + ii] = li.clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y.qs);
}

fn q3_k_block(x: &[f32], qw: &[f32], y: &mut BlockQ3K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut weight = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let mut ls = [0i8; 16];
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        for k in 0..16 {
            weight[k] = qw[16 * j + k] * (sigma2 + xs[k] * xs[k]).sqrt();
        }
        let mut sumw = 0.0f32;
        for &w in &weight {
            sumw += w;
        }
        sw[j] = sumw;
        scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], Some(&weight));
    }
    y.scales = [0; 12];
    let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
    for j in 0..16 {
        let li = ls[j] as u8;
        if j < 8 {
            y.scales[j] = li & 0xF;
        } else {
            y.scales[j - 8] |= (li & 0xF) << 4;
        }
        y.scales[j % 4 + 8] |= (li >> 4) << (2 * (j / 4));
    }
    y.d = f2h(d_block);
    let dall = h2f(y.d);
    for j in 0..16 {
        let sc = if j < 8 {
            y.scales[j] & 0xF
        } else {
            y.scales[j - 8] >> 4
        };
        let sc = i32::from(sc | (((y.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        let d = dall * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let li = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (li + 4) as i8;
        }
    }
    y.hmask = [0; 32];
    let mut lu = [0u8; QK_K];
    let (mut m, mut hm) = (0usize, 1u8);
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            y.hmask[m] |= hm;
            v -= 4;
        }
        lu[j] = v as u8;
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm <<= 1;
        }
    }
    pack_2bit(&lu, &mut y.qs);
}

/// The shared part of Q4_K's and Q5_K's `_impl` encoders; the codes land in `l`.
#[allow(clippy::too_many_arguments)]
fn qk_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
    l: &mut [u8; QK_K],
    scales_out: &mut [u8; 12],
    d_out: &mut half::f16,
    dmin_out: &mut half::f16,
) {
    let mut laux = [0u8; 32];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let mut weights = [0.0f32; 32];
    let mut sw = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        weights32(xs, &qw[32 * j..], sigma2, &mut weights);
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let (s, m) = make_qkx3_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            -0.9,
            0.05,
            36,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    for j in 0..8 {
        // Q5_K's encoder clamps to 63, Q4_K's does not (a negative code wraps to 255 there).
        let (a, b) = if clamp63 {
            (ls[j].min(63), lm[j].min(63))
        } else {
            (ls[j], lm[j])
        };
        if j < 4 {
            scales_out[j] = a;
            scales_out[j + 4] = b;
        } else {
            scales_out[j + 4] = (a & 0xF) | ((b & 0xF) << 4);
            scales_out[j - 4] |= (a >> 4) << 6;
            scales_out[j] |= (b >> 4) << 6;
        }
    }
    *d_out = f2h(d_block);
    *dmin_out = f2h(m_block);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales_out);
        let d = h2f(*d_out) * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = h2f(*dmin_out) * f32::from(m);
        for ii in 0..32 {
            let li = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = li.clamp(0, nmax) as u8;
        }
    }
}

fn q4_k_block(x: &[f32], qw: &[f32], y: &mut BlockQ4K) {
    let mut l = [0u8; QK_K];
    qk_weighted(
        x,
        qw,
        15,
        false,
        &mut l,
        &mut y.scales,
        &mut y.d,
        &mut y.dmin,
    );
    for (c, q) in y.qs.chunks_exact_mut(32).enumerate() {
        for k in 0..32 {
            q[k] = l[64 * c + k] | (l[64 * c + k + 32] << 4);
        }
    }
}

fn q5_k_block(x: &[f32], qw: &[f32], y: &mut BlockQ5K) {
    let mut l = [0u8; QK_K];
    qk_weighted(
        x,
        qw,
        31,
        true,
        &mut l,
        &mut y.scales,
        &mut y.d,
        &mut y.dmin,
    );
    y.qh = [0; 32];
    let (mut m1, mut m2) = (1u8, 2u8);
    for c in 0..4 {
        for j in 0..32 {
            let mut l1 = l[64 * c + j];
            if l1 > 15 {
                l1 -= 16;
                y.qh[j] |= m1;
            }
            let mut l2 = l[64 * c + j + 32];
            if l2 > 15 {
                l2 -= 16;
                y.qh[j] |= m2;
            }
            y.qs[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

fn q6_k_block(x: &[f32], qw: &[f32], y: &mut BlockQ6K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let s = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            Some(&qw[16 * ib..16 * ib + 16]),
        );
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    super::kquants::finish_q6_k(x, &mut l, &scales, max_scale, max_abs_scale, y);
}

/// Encodes `src` (rows of `n_per_row`) as `ty` with one importance weight per column, exactly
/// as `ggml_quantize_chunk(ty, src, dst, 0, nrows, n_per_row, imatrix)`; rows run in parallel.
pub fn quantize_weighted(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: &[f32],
    dst: &mut [u8],
) -> Result<(), CodecError> {
    if !uses_imatrix(ty) {
        return quantize_with(Path::Parallel, ty, src, dst);
    }
    let row_bytes = ty
        .row_bytes(n_per_row as u64)
        .filter(|_| n_per_row > 0 && src.len().is_multiple_of(n_per_row))
        .ok_or(CodecError::PartialBlock {
            ty,
            n: n_per_row,
            block: ty.block_size(),
        })? as usize;
    let expected = src.len() / n_per_row * row_bytes;
    if dst.len() != expected || imatrix.len() != n_per_row {
        return Err(CodecError::SizeMismatch {
            ty,
            n: src.len(),
            expected,
            actual: dst.len(),
        });
    }
    if dst.as_ptr().align_offset(2) != 0 {
        let mut tmp = vec![0u16; dst.len().div_ceil(2)];
        let bytes = &mut bytemuck::cast_slice_mut::<u16, u8>(&mut tmp)[..dst.len()];
        quantize_weighted(ty, src, n_per_row, imatrix, bytes)?;
        dst.copy_from_slice(bytes);
        return Ok(());
    }
    fn rows<B: bytemuck::Pod + Send>(
        src: &[f32],
        n: usize,
        qw: &[f32],
        dst: &mut [u8],
        rb: usize,
        f: impl Fn(&[f32], &[f32], &mut [B]) + Sync,
    ) {
        src.par_chunks(n)
            .zip(dst.par_chunks_mut(rb))
            .for_each(|(x, y)| f(x, qw, bytemuck::cast_slice_mut(y)));
    }
    fn per_block<B>(
        bs: usize,
        f: impl Fn(&[f32], &[f32], &mut B),
    ) -> impl Fn(&[f32], &[f32], &mut [B]) {
        move |x, qw, y| {
            for (i, yb) in y.iter_mut().enumerate() {
                f(&x[bs * i..bs * (i + 1)], &qw[bs * i..bs * (i + 1)], yb);
            }
        }
    }
    let n = n_per_row;
    match ty {
        GgmlType::Q4_0 => rows(src, n, imatrix, dst, row_bytes, q4_0_row),
        GgmlType::Q4_1 => rows(src, n, imatrix, dst, row_bytes, q4_1_row),
        GgmlType::Q5_0 => rows(src, n, imatrix, dst, row_bytes, q5_0_row),
        GgmlType::Q5_1 => rows(src, n, imatrix, dst, row_bytes, q5_1_row),
        GgmlType::Q2_K => rows(src, n, imatrix, dst, row_bytes, per_block(QK_K, q2_k_block)),
        GgmlType::Q3_K => rows(src, n, imatrix, dst, row_bytes, per_block(QK_K, q3_k_block)),
        GgmlType::Q4_K => rows(src, n, imatrix, dst, row_bytes, per_block(QK_K, q4_k_block)),
        GgmlType::Q5_K => rows(src, n, imatrix, dst, row_bytes, per_block(QK_K, q5_k_block)),
        GgmlType::Q6_K => rows(src, n, imatrix, dst, row_bytes, per_block(QK_K, q6_k_block)),
        GgmlType::IQ4_NL => rows(
            src,
            n,
            imatrix,
            dst,
            row_bytes,
            per_block(32, |x, qw, y: &mut BlockIq4Nl| {
                let mut sh = 0u16;
                quantize_iq4_impl(x, Some(qw), &mut y.d, &mut y.qs, &mut sh, &mut [], 7);
            }),
        ),
        GgmlType::IQ4_XS => rows(
            src,
            n,
            imatrix,
            dst,
            row_bytes,
            per_block(QK_K, |x, qw, y: &mut BlockIq4Xs| {
                quantize_iq4_impl(
                    x,
                    Some(qw),
                    &mut y.d,
                    &mut y.qs,
                    &mut y.scales_h,
                    &mut y.scales_l,
                    7,
                );
            }),
        ),
        _ => unreachable!("uses_imatrix covers the types above"),
    }
    Ok(())
}
