//! K-quants (Q2_K..Q6_K), the ternary types (TQ1_0, TQ2_0) and IQ4_XS: ggml's reference
//! kernels from `ggml-quants.c`, ported operation for operation (see `legacy.rs` on why the
//! same f32 operations in the same order give ggml's bits).
//!
//! The encoders are what `ggml_quantize_chunk` runs without an importance matrix:
//! `quantize_row_q*_K_ref`, `quantize_row_tq*_0_ref`, and `quantize_iq4_xs` (7 scale tries).

// The loops index like ggml's C, element for element, so that a port can be checked against
// the source line by line.
#![allow(clippy::needless_range_loop)]

use super::blocks::{
    BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockTq1_0, BlockTq2_0, QK_K,
};
use super::grids::KVALUES_IQ4NL;
use super::legacy::{f2h, h2f, quantize_iq4_impl};

pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

thread_local! {
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the scale searches on the calling thread use their portable (non-intrinsic) form, so
/// that tests check the fallback a CPU without AVX2 runs against ggml too. Other threads
/// (rayon's) are not affected.
#[doc(hidden)]
pub fn portable_search_on_this_thread(on: bool) {
    PORTABLE_ONLY.with(|p| p.set(on));
}

/// Whether the AVX-512 search kernels may run.
#[inline]
pub(crate) fn search_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && !PORTABLE_ONLY.with(|p| p.get())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the explicit AVX2 search kernels may run.
#[inline]
pub(crate) fn search_avx2() -> bool {
    super::fast::has_avx2() && !PORTABLE_ONLY.with(|p| p.get())
}

/// `nearest_int`: round to nearest even through the 1.5 * 2^23 trick. Out of its range
/// (|x| > 4194303, NaN, inf) ggml's assert is compiled out and the bit trick answers garbage;
/// this answers the same garbage.
#[inline]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `best_index_int8` over a sorted table.
#[inline]
pub(crate) fn best_index_int8(val: &[i8; 16], x: f32) -> usize {
    let n = val.len();
    if x <= f32::from(val[0]) {
        return 0;
    }
    if x >= f32::from(val[n - 1]) {
        return n - 1;
    }
    let (mut ml, mut mu) = (0usize, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(val[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
        mu - 1
    } else {
        mu
    }
}

/// `make_qx_quants` (rmse_type 1, the only one the K-quant reference encoders use) with
/// optional weights.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let l_out = &mut l_out[..n];
    let qw = qw.map(|w| &w[..n]);
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let weight = |i: usize| match qw {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    if n <= LANE_MAX_N {
        return make_qx_quants_lanes(nmax, max, x, l_out, weight);
    }
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(i);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Candidate scales of [`make_qx_quants`]: the first guess and the 18 tries, padded to a
/// whole number of AVX-512 / AVX2 registers.
const QX_LANES: usize = 24;

/// [`make_qx_quants`] with every candidate scale in its own SIMD lane. Unlike
/// `make_qkx2_quants`' search, no candidate depends on an earlier one (only the comparison with
/// `best` does), so all 19 are summed side by side, each lane in ggml's element order with
/// ggml's operations (`w*x*l`, `w*l*l` left to right), then compared in ggml's order: the same
/// bits, and the codes are computed once, for the scale that won.
#[inline]
fn make_qx_quants_lanes(
    nmax: i32,
    max: f32,
    x: &[f32],
    l_out: &mut [i8],
    weight: impl Fn(usize) -> f32,
) -> f32 {
    let n = x.len();
    let nmaxf = nmax as f32;
    let mut isc = [0f32; QX_LANES];
    isc[0] = -nmaxf / max;
    let mut k = 1;
    for is in -9i32..=9 {
        if is != 0 {
            isc[k] = -(nmaxf + 0.1 * is as f32) / max;
            k += 1;
        }
    }
    let (mut sumlx, mut suml2) = ([0f32; QX_LANES], [0f32; QX_LANES]);
    for i in 0..n {
        let xi = x[i];
        let w = weight(i);
        let wx = w * xi;
        for k in 0..QX_LANES {
            let lf = nearest_int(isc[k] * xi).clamp(-nmax, nmax - 1) as f32;
            sumlx[k] += wx * lf;
            suml2[k] += w * lf * lf;
        }
    }
    let mut scale = if suml2[0] != 0.0 {
        sumlx[0] / suml2[0]
    } else {
        0.0
    };
    let mut best = scale * sumlx[0];
    let mut won = 0;
    for k in 1..19 {
        if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best * suml2[k] {
            scale = sumlx[k] / suml2[k];
            best = scale * sumlx[k];
            won = k;
        }
    }
    for i in 0..n {
        l_out[i] = (nmax + nearest_int(isc[won] * x[i]).clamp(-nmax, nmax - 1)) as i8;
    }
    scale
}

/// `make_q3_quants` with `do_rmse`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1) as i8;
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let w = x[i] * x[i];
        let lf = f32::from(l_out[i]);
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    #[cfg(target_arch = "x86_64")]
    if n == 16 && search_avx512() {
        // SAFETY: AVX-512F was just detected.
        unsafe { avx512::q3_descent(nmax, x, l_out, &mut sumlx, &mut suml2) };
    } else {
        q3_descent(nmax, x, l_out, &mut sumlx, &mut suml2);
    }
    #[cfg(not(target_arch = "x86_64"))]
    q3_descent(nmax, x, l_out, &mut sumlx, &mut suml2);
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_q3_quants`' refinement: up to 5 passes of one-code-at-a-time improvements.
fn q3_descent(nmax: i32, x: &[f32], l_out: &mut [i8], sums_lx: &mut f32, sums_l2: &mut f32) {
    let n = x.len();
    let (mut sumlx, mut suml2) = (*sums_lx, *sums_l2);
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = f32::from(l_out[i]);
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(l_out[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
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
    *sums_lx = sumlx;
    *sums_l2 = suml2;
}

/// `make_qkx2_quants`. Returns (scale, the_min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (weights, l_out, laux) = (&weights[..n], &mut l_out[..n], &mut laux[..n]);
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
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * f32::from(l_out[i]) + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    #[cfg(target_arch = "x86_64")]
    if n <= LANE_MAX_N && search_avx2() {
        let mut st = SearchState {
            min,
            scale,
            best_error,
        };
        let (ax, aw) = (x, weights);
        let ctx = SearchInput {
            nmax,
            max,
            sum_w,
            sum_x,
            rmin,
            rdelta,
            nstep,
            use_mad,
            qkx3: false,
        };
        // SAFETY: AVX2 was just detected.
        unsafe { avx2_search(&ctx, ax, aw, l_out, &mut st) };
        return (st.scale, -st.min);
    }
    if n <= LANE_MAX_N {
        // LANES candidate scales at a time, one per SIMD lane, each lane summing over the
        // elements in ggml's order (bit-identical). A candidate depends on `min` as left by the
        // ones before it, so the group is speculative: lanes are accepted in ggml's order with
        // its strict `<`, and after an accepted one the search restarts at the next candidate
        // with the new `min` (improvements are few, so most groups run through).
        let mut is0 = 0;
        while is0 <= nstep {
            let base_min = min;
            let mut isc = [0f32; LANES];
            for (k, v) in isc.iter_mut().enumerate() {
                *v = (rmin + rdelta * (is0 + k as i32) as f32 + nmaxf) / (max - base_min);
            }
            let mut ls = [[0u8; LANES]; LANE_MAX_N];
            let (mut sc, mut mn, mut ok) = ([0f32; LANES], [0f32; LANES], [false; LANES]);
            let mut err = [0f32; LANES];
            let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
            for i in 0..n {
                let (xi, w) = (x[i], weights[i]);
                let xm = xi - base_min;
                for k in 0..LANES {
                    let l = nearest_int(isc[k] * xm).clamp(0, nmax);
                    ls[i][k] = l as u8;
                    let lf = l as f32;
                    sum_l[k] += w * lf;
                    sum_l2[k] += w * lf * lf;
                    sum_xl[k] += w * lf * xi;
                }
            }
            for k in 0..LANES {
                let d = sum_w * sum_l2[k] - sum_l[k] * sum_l[k];
                ok[k] = d > 0.0;
                sc[k] = (sum_w * sum_xl[k] - sum_x * sum_l[k]) / d;
                mn[k] = (sum_l2[k] * sum_x - sum_l[k] * sum_xl[k]) / d;
                if mn[k] > 0.0 {
                    mn[k] = 0.0;
                    sc[k] = sum_xl[k] / sum_l2[k];
                }
            }
            for i in 0..n {
                let (xi, w) = (x[i], weights[i]);
                for k in 0..LANES {
                    let diff = sc[k] * f32::from(ls[i][k]) + mn[k] - xi;
                    let diff = if use_mad { diff.abs() } else { diff * diff };
                    err[k] += w * diff;
                }
            }
            let mut next = is0 + LANES as i32;
            for k in 0..LANES {
                if is0 + k as i32 > nstep {
                    break;
                }
                if ok[k] && err[k] < best_error {
                    for i in 0..n {
                        l_out[i] = ls[i][k];
                    }
                    best_error = err[k];
                    scale = sc[k];
                    min = mn[k];
                    next = is0 + k as i32 + 1;
                    break;
                }
            }
            is0 = next;
        }
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
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
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * f32::from(laux[i]) + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Candidate scales searched side by side by [`make_qkx2_quants`] (one AVX2 register of f32).
pub(crate) const LANES: usize = 8;

/// The fixed inputs of a `make_qkx2_quants` / `make_qkx3_quants` candidate search.
pub(crate) struct SearchInput {
    pub nmax: i32,
    pub max: f32,
    pub sum_w: f32,
    pub sum_x: f32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Absolute instead of squared error (`make_qkx2_quants`' `use_mad`).
    pub use_mad: bool,
    /// `make_qkx3_quants`' codes: the scaled value is capped at `nmax` before rounding, and a
    /// value that is not above 0 is 0.
    pub qkx3: bool,
}

/// What the search improves: the current min, scale and error.
pub(crate) struct SearchState {
    pub min: f32,
    pub scale: f32,
    pub best_error: f32,
}

/// The candidate search for sub-blocks of up to `LANE_MAX_N` values, `LANES` candidates per AVX2
/// group, speculative as described in `make_qkx2_quants` (restart after an accepted candidate,
/// whose `min` the later ones use). `l_out` gets the codes of the last accepted candidate.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) fn avx2_search(
    c: &SearchInput,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    st: &mut SearchState,
) {
    let n = x.len();
    let nmaxf = c.nmax as f32;
    let mut is0 = 0;
    while is0 <= c.nstep {
        let base_min = st.min;
        let mut isc = [0f32; LANES];
        for (k, v) in isc.iter_mut().enumerate() {
            *v = (c.rmin + c.rdelta * (is0 + k as i32) as f32 + nmaxf) / (c.max - base_min);
        }
        let mut ls = [[0u8; LANES]; LANE_MAX_N];
        let (mut sc, mut mn, mut ok) = ([0f32; LANES], [0f32; LANES], [false; LANES]);
        let mut err = [0f32; LANES];
        avx2::qkx2_group(
            c, x, weights, base_min, &isc, &mut ls, &mut sc, &mut mn, &mut ok, &mut err,
        );
        let mut next = is0 + LANES as i32;
        for k in 0..LANES {
            if is0 + k as i32 > c.nstep {
                break;
            }
            if ok[k] && err[k] < st.best_error {
                for i in 0..n {
                    l_out[i] = ls[i][k];
                }
                st.best_error = err[k];
                st.scale = sc[k];
                st.min = mn[k];
                next = is0 + k as i32 + 1;
                break;
            }
        }
        is0 = next;
    }
}

/// Explicit AVX2 forms of the lane searches: the portable loops above vectorise poorly (LLVM
/// splits the accumulators into 128-bit halves and shuffles). Every lane does ggml's scalar
/// operations in ggml's order with no fused multiply-add, so the bits are the scalar ones:
/// `nearest_int` is the same add / mask / subtract on integer lanes.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, LANE_MAX_N};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn nearest_int(v: __m256) -> __m256i {
        let val = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
        _mm256_sub_epi32(
            _mm256_and_si256(val, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        )
    }

    /// One group of `make_qkx2_quants` candidates (inverse scales `isc`, all against
    /// `base_min`): the codes per element and lane, and each lane's scale, min, whether its
    /// determinant is positive, and its error.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2")]
    pub(super) fn qkx2_group(
        c: &super::SearchInput,
        x: &[f32],
        weights: &[f32],
        base_min: f32,
        isc: &[f32; LANES],
        ls: &mut [[u8; LANES]; LANE_MAX_N],
        sc_out: &mut [f32; LANES],
        mn_out: &mut [f32; LANES],
        ok_out: &mut [bool; LANES],
        err_out: &mut [f32; LANES],
    ) {
        let n = x.len();
        debug_assert!(n <= LANE_MAX_N && weights.len() >= n);
        // SAFETY: 8 floats.
        let isc = unsafe { _mm256_loadu_ps(isc.as_ptr()) };
        let (nmax, sum_w, sum_x, use_mad) = (c.nmax, c.sum_w, c.sum_x, c.use_mad);
        let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(nmax));
        let (nmaxf, fzero) = (_mm256_set1_ps(nmax as f32), _mm256_setzero_ps());
        let mut lf_all = [_mm256_setzero_ps(); LANE_MAX_N];
        let (mut sum_l, mut sum_l2, mut sum_xl) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        for i in 0..n {
            let xi = _mm256_set1_ps(x[i]);
            let w = _mm256_set1_ps(weights[i]);
            let xm = _mm256_set1_ps(x[i] - base_min);
            let v = _mm256_mul_ps(isc, xm);
            let l = if c.qkx3 {
                // `v > 0 ? nearest_int(v < nmax ? v : nmax) : 0` (min_ps(a, b) is `a < b ? a : b`).
                let r = nearest_int(_mm256_min_ps(v, nmaxf));
                let pos = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(v, fzero));
                _mm256_and_si256(r, pos)
            } else {
                _mm256_min_epi32(_mm256_max_epi32(nearest_int(v), zero), top)
            };
            // The codes as bytes, lane k at ls[i][k].
            let b = _mm256_packus_epi16(_mm256_packs_epi32(l, l), zero);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: ls[i] is 8 bytes, the low half of the register.
            unsafe {
                _mm_storel_epi64(
                    ls[i].as_mut_ptr() as *mut __m128i,
                    _mm256_castsi256_si128(b),
                )
            };
            let lf = _mm256_cvtepi32_ps(l);
            lf_all[i] = lf;
            let wl = _mm256_mul_ps(w, lf);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, lf));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, xi));
        }
        let (sw, sx) = (_mm256_set1_ps(sum_w), _mm256_set1_ps(sum_x));
        let d = _mm256_sub_ps(_mm256_mul_ps(sw, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        let ok = _mm256_cmp_ps::<_CMP_GT_OQ>(d, _mm256_setzero_ps());
        let sc = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sw, sum_xl), _mm256_mul_ps(sx, sum_l)),
            d,
        );
        let mn = _mm256_div_ps(
            _mm256_sub_ps(_mm256_mul_ps(sum_l2, sx), _mm256_mul_ps(sum_l, sum_xl)),
            d,
        );
        let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(mn, _mm256_setzero_ps());
        let mn = _mm256_andnot_ps(pos, mn);
        let sc = _mm256_blendv_ps(sc, _mm256_div_ps(sum_xl, sum_l2), pos);
        let mut err = _mm256_setzero_ps();
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        for i in 0..n {
            let xi = _mm256_set1_ps(x[i]);
            let w = _mm256_set1_ps(weights[i]);
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(sc, lf_all[i]), mn), xi);
            let diff = if use_mad {
                _mm256_and_ps(diff, abs_mask)
            } else {
                _mm256_mul_ps(diff, diff)
            };
            err = _mm256_add_ps(err, _mm256_mul_ps(w, diff));
        }
        // SAFETY: each is 8 floats.
        unsafe {
            _mm256_storeu_ps(sc_out.as_mut_ptr(), sc);
            _mm256_storeu_ps(mn_out.as_mut_ptr(), mn);
            _mm256_storeu_ps(err_out.as_mut_ptr(), err);
        }
        let okm = _mm256_movemask_ps(ok);
        for k in 0..LANES {
            ok_out[k] = okm >> k & 1 != 0;
        }
    }
}
/// The longest sub-block searched that way (Q4_K/Q5_K use 32).
pub(crate) const LANE_MAX_N: usize = 32;

/// `get_scale_min_k4`.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 256 two-bit codes the way Q2_K and Q3_K store them.
pub(crate) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; 64]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------- Q2_K

pub fn quantize_q2_k(x: &[f32], y: &mut BlockQ2K) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let q4scale = 15.0f32;
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        for k in 0..16 {
            weights[k] = xs[k].abs();
        }
        let (s, m) = make_qkx2_quants(
            3,
            xs,
            &weights,
            &mut l[16 * j..16 * j + 16],
            &mut laux,
            -0.5,
            0.1,
            15,
            true,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            y.scales[j] = nearest_int(iscale * scales[j]) as u8;
        }
        y.d = f2h(max_scale / q4scale);
    } else {
        y.scales = [0; 16];
        y.d = f2h(0.0);
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            let li = nearest_int(iscale * mins[j]);
            y.scales[j] |= (li << 4) as u8;
        }
        y.dmin = f2h(max_min / q4scale);
    } else {
        y.dmin = f2h(0.0);
    }
    for j in 0..16 {
        let d = h2f(y.d) * f32::from(y.scales[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let dm = h2f(y.dmin) * f32::from(y.scales[j] >> 4);
        for ii in 0..16 {
            let li = nearest_int((x[16 * j + ii] + dm) / d);
            l[16 * j + ii] = li.clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut y.qs);
}

pub fn dequantize_q2_k(b: &BlockQ2K, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let min = h2f(b.dmin);
    let mut o = 0;
    let mut is = 0;
    for n in 0..2 {
        let q = &b.qs[32 * n..32 * n + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let sc = b.scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0xF);
                let ml = min * f32::from(sc >> 4);
                for k in 0..16 {
                    y[o] = dl * f32::from((q[k + 16 * half] >> shift) & 3) - ml;
                    o += 1;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q3_K

pub fn quantize_q3_k(x: &[f32], y: &mut BlockQ3K) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    y.scales = [0; 12];
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // int8_t l = nearest_int(...): the int is truncated to a byte first.
            let li = i32::from(nearest_int(iscale * scales[j]) as i8);
            let li = (li.clamp(-32, 31) + 32) as u8;
            if j < 8 {
                y.scales[j] = li & 0xF;
            } else {
                y.scales[j - 8] |= (li & 0xF) << 4;
            }
            y.scales[j % 4 + 8] |= (li >> 4) << (2 * (j / 4));
        }
        y.d = f2h(1.0 / iscale);
    } else {
        y.d = f2h(0.0);
    }
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
    // Codes are 0..=7 here: the high bit of code j goes to bit j / 32 of hmask[j % 32] (ggml's
    // running m / hm counters), the low two bits stay. Branch-free so that it vectorises.
    let mut lu = [0u8; QK_K];
    for m in 0..QK_K / 8 {
        let mut h = 0u8;
        for b in 0..8 {
            let v = l[32 * b + m] as u8;
            h |= u8::from(v > 3) << b;
            lu[32 * b + m] = v & 3;
        }
        y.hmask[m] = h;
    }
    pack_2bit(&lu, &mut y.qs);
}

pub fn dequantize_q3_k(b: &BlockQ3K, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d_all = h2f(b.d);
    let mut aux = [0u32; 4];
    for (k, a) in aux.iter_mut().take(3).enumerate() {
        *a = u32::from_le_bytes(b.scales[4 * k..4 * k + 4].try_into().expect("4 bytes"));
    }
    let (kmask1, kmask2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | ((tmp & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    let mut scales = [0i8; 16];
    for (k, a) in aux.iter().enumerate() {
        for (i, byte) in a.to_le_bytes().into_iter().enumerate() {
            scales[4 * k + i] = byte as i8;
        }
    }
    let mut o = 0;
    let mut is = 0;
    let mut m = 1u8;
    for n in 0..2 {
        let q = &b.qs[32 * n..32 * n + 32];
        for shift in [0, 2, 4, 6] {
            for half in 0..2 {
                let dl = d_all * (i32::from(scales[is]) - 32) as f32;
                is += 1;
                for k in 0..16 {
                    let idx = k + 16 * half;
                    let v = i32::from((q[idx] >> shift) & 3)
                        - if b.hmask[idx] & m != 0 { 0 } else { 4 };
                    y[o] = dl * v as f32;
                    o += 1;
                }
            }
            m <<= 1;
        }
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K

/// The shared first half of the Q4_K and Q5_K reference encoders: per-32 scales and mins,
/// packed into `scales`, the super-block scales, then the codes (0..=nmax) in `l`.
#[allow(clippy::too_many_arguments)]
fn qk_scales_and_codes(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
    scales_out: &mut [u8; 12],
    d_out: &mut half::f16,
    dmin_out: &mut half::f16,
) {
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for k in 0..32 {
            weights[k] = av_x + xs[k].abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            scales_out[j] = ls;
            scales_out[j + 4] = lm;
        } else {
            scales_out[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            scales_out[j - 4] |= (ls >> 4) << 6;
            scales_out[j] |= (lm >> 4) << 6;
        }
    }
    *d_out = f2h(max_scale / 63.0);
    *dmin_out = f2h(max_min / 63.0);
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

pub fn quantize_q4_k(x: &[f32], y: &mut BlockQ4K) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let mut l = [0u8; QK_K];
    qk_scales_and_codes(
        x,
        15,
        -1.0,
        20,
        &mut l,
        &mut y.scales,
        &mut y.d,
        &mut y.dmin,
    );
    for (c, q) in y.qs.chunks_exact_mut(32).enumerate() {
        let j = 64 * c;
        for k in 0..32 {
            q[k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

pub fn dequantize_q4_k(b: &BlockQ4K, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let min = h2f(b.dmin);
    for c in 0..4 {
        let q = &b.qs[32 * c..32 * c + 32];
        let (sc, m) = scale_min_k4(2 * c, &b.scales);
        let d1 = d * f32::from(sc);
        let m1 = min * f32::from(m);
        let (sc, m) = scale_min_k4(2 * c + 1, &b.scales);
        let d2 = d * f32::from(sc);
        let m2 = min * f32::from(m);
        let o = &mut y[64 * c..64 * c + 64];
        for k in 0..32 {
            o[k] = d1 * f32::from(q[k] & 0xF) - m1;
        }
        for k in 0..32 {
            o[32 + k] = d2 * f32::from(q[k] >> 4) - m2;
        }
    }
}

pub fn quantize_q5_k(x: &[f32], y: &mut BlockQ5K) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let mut l = [0u8; QK_K];
    qk_scales_and_codes(
        x,
        31,
        -0.5,
        15,
        &mut l,
        &mut y.scales,
        &mut y.d,
        &mut y.dmin,
    );
    y.qh = [0; 32];
    let (mut m1, mut m2) = (1u8, 2u8);
    for c in 0..4 {
        let n = 64 * c;
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                y.qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
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

pub fn dequantize_q5_k(b: &BlockQ5K, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let min = h2f(b.dmin);
    let (mut u1, mut u2) = (1u8, 2u8);
    for c in 0..4 {
        let ql = &b.qs[32 * c..32 * c + 32];
        let (sc, m) = scale_min_k4(2 * c, &b.scales);
        let d1 = d * f32::from(sc);
        let m1 = min * f32::from(m);
        let (sc, m) = scale_min_k4(2 * c + 1, &b.scales);
        let d2 = d * f32::from(sc);
        let m2 = min * f32::from(m);
        let o = &mut y[64 * c..64 * c + 64];
        for k in 0..32 {
            let h = if b.qh[k] & u1 != 0 { 16 } else { 0 };
            o[k] = d1 * f32::from((ql[k] & 0xF) + h) - m1;
        }
        for k in 0..32 {
            let h = if b.qh[k] & u2 != 0 { 16 } else { 0 };
            o[32 + k] = d2 * f32::from((ql[k] >> 4) + h) - m2;
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

// ---------------------------------------------------------------- Q6_K

pub fn quantize_q6_k(x: &[f32], y: &mut BlockQ6K) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            None,
        );
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    finish_q6_k(x, &mut l, &scales, max_scale, max_abs_scale, y);
}

/// The part of Q6_K's encoders after the per-16 scales: super-block scale, codes, packing.
pub(crate) fn finish_q6_k(
    x: &[f32],
    l: &mut [i8; QK_K],
    scales: &[f32; 16],
    max_scale: f32,
    max_abs_scale: f32,
    y: &mut BlockQ6K,
) {
    if max_abs_scale < GROUP_MAX_EPS {
        *y = bytemuck::Zeroable::zeroed();
        y.d = f2h(0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    y.d = f2h(1.0 / iscale);
    for ib in 0..16 {
        y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    let dall = h2f(y.d);
    for j in 0..16 {
        let d = dall * f32::from(y.scales[j]);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let li = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (li + 32) as i8;
        }
    }
    let l: [u8; QK_K] = bytemuck::cast(*l);
    for h in 0..2 {
        let j = 128 * h;
        let ql = &mut y.ql[64 * h..64 * h + 64];
        let qh = &mut y.qh[32 * h..32 * h + 32];
        for k in 0..32 {
            let q1 = l[j + k] & 0xF;
            let q2 = l[j + k + 32] & 0xF;
            let q3 = l[j + k + 64] & 0xF;
            let q4 = l[j + k + 96] & 0xF;
            ql[k] = q1 | (q3 << 4);
            ql[k + 32] = q2 | (q4 << 4);
            qh[k] = (l[j + k] >> 4)
                | ((l[j + k + 32] >> 4) << 2)
                | ((l[j + k + 64] >> 4) << 4)
                | ((l[j + k + 96] >> 4) << 6);
        }
    }
}

pub fn dequantize_q6_k(b: &BlockQ6K, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    for h in 0..2 {
        let ql = &b.ql[64 * h..64 * h + 64];
        let qh = &b.qh[32 * h..32 * h + 32];
        let sc = &b.scales[8 * h..8 * h + 8];
        let o = &mut y[128 * h..128 * h + 128];
        for k in 0..32 {
            let is = k / 16;
            let q1 = i32::from((ql[k] & 0xF) | ((qh[k] & 3) << 4)) - 32;
            let q2 = i32::from((ql[k + 32] & 0xF) | (((qh[k] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[k] >> 4) | (((qh[k] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[k + 32] >> 4) | (((qh[k] >> 6) & 3) << 4)) - 32;
            o[k] = d * f32::from(sc[is]) * q1 as f32;
            o[k + 32] = d * f32::from(sc[is + 2]) * q2 as f32;
            o[k + 64] = d * f32::from(sc[is + 4]) * q3 as f32;
            o[k + 96] = d * f32::from(sc[is + 6]) * q4 as f32;
        }
    }
}

// ---------------------------------------------------------------- TQ1_0 / TQ2_0

/// `lroundf(v) + 1` as ggml computes it (lroundf: half away from zero; out of range or NaN
/// gives LONG_MIN, whose low bits are zero).
#[inline]
fn ternary(v: f32) -> i64 {
    let r = v.round();
    let l = if r.is_finite() && (-9.223_372e18..9.223_372e18).contains(&r) {
        r as i64
    } else {
        i64::MIN
    };
    l.wrapping_add(1)
}

fn absmax_d(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

pub fn quantize_tq1_0(x: &[f32], y: &mut BlockTq1_0) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let (d, id) = absmax_d(x);
    y.d = f2h(d);
    let mut xo = 0;
    // 5 elements per byte: 32 bytes, then 16.
    for (start, width) in [(0usize, 32usize), (32, 16)] {
        for m in 0..width {
            let mut q: u8 = 0;
            for n in 0..5 {
                let xi = ternary(x[xo + m + n * width] * id);
                q = q.wrapping_mul(3).wrapping_add(xi as u8);
            }
            y.qs[start + m] = (u32::from(q) * 256).div_ceil(243) as u8;
        }
        xo += 5 * width;
    }
    for j in 0..4 {
        let mut q: u8 = 0;
        for m in 0..4 {
            let xi = ternary(x[xo + j + m * 4] * id);
            q = q.wrapping_mul(3).wrapping_add(xi as u8);
        }
        q = q.wrapping_mul(3);
        y.qh[j] = (u32::from(q) * 256).div_ceil(243) as u8;
    }
}

pub fn dequantize_tq1_0(b: &BlockTq1_0, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];
    let d = h2f(b.d);
    let trit = |q: u8, n: usize| {
        let q = q.wrapping_mul(POW3[n]);
        let xi = ((u16::from(q) * 3) >> 8) as i16;
        f32::from(xi - 1) * d
    };
    let mut o = 0;
    for (start, width) in [(0usize, 32usize), (32, 16)] {
        for n in 0..5 {
            for m in 0..width {
                y[o] = trit(b.qs[start + m], n);
                o += 1;
            }
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            y[o] = trit(b.qh[j], n);
            o += 1;
        }
    }
}

pub fn quantize_tq2_0(x: &[f32], y: &mut BlockTq2_0) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    let (d, id) = absmax_d(x);
    y.d = f2h(d);
    for c in 0..2 {
        let xs = &x[128 * c..128 * c + 128];
        for m in 0..32 {
            let mut q: u8 = 0;
            for n in 0..4 {
                let xi = ternary(xs[m + n * 32] * id);
                q = q.wrapping_add(((xi & 3) as u8) << (2 * n));
            }
            y.qs[32 * c + m] = q;
        }
    }
}

pub fn dequantize_tq2_0(b: &BlockTq2_0, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for c in 0..2 {
        for l in 0..4 {
            for m in 0..32 {
                let q = i32::from((b.qs[32 * c + m] >> (2 * l)) & 3);
                y[o] = (q - 1) as f32 * d;
                o += 1;
            }
        }
    }
}

// ---------------------------------------------------------------- IQ4_XS

pub fn quantize_iq4_xs(x: &[f32], y: &mut BlockIq4Xs) {
    let x: &[f32; 256] = x.try_into().expect("a 256-element block");
    quantize_iq4_impl(
        x,
        None,
        &mut y.d,
        &mut y.qs,
        &mut y.scales_h,
        &mut y.scales_l,
        7,
    );
}

pub fn dequantize_iq4_xs(b: &BlockIq4Xs, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    for ib in 0..8 {
        let ls = i32::from((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF)
            | (i32::from((b.scales_h >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b.qs[16 * ib..16 * ib + 16];
        let o = &mut y[32 * ib..32 * ib + 32];
        for j in 0..16 {
            o[j] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xF)]);
            o[j + 16] = dl * f32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]);
        }
    }
}

/// The IQ4_NL / IQ4_XS scale search (`quantize_row_iq4_nl_impl`'s tries) with its 16
/// candidates (the first guess and the 15 tries) in the 16 lanes of one AVX-512 register.
/// `best_index_int8` becomes a branch-free binary search over the table held in a register;
/// the table is strictly increasing, so the largest `ml` with `values[ml] <= x` that ggml's
/// search finds is unique and any search finds the same one. A NaN makes every "less than"
/// false: ggml then ends at (14, 15) and picks 15, which the clamp to 14 and the ordered
/// comparison reproduce. Sums are ggml's `w*q*x` and `w*q*q`, left to right, per lane.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// `(sumqx, sumq2)` of each candidate inverse scale `ids[k]` over the 32 values of `xb`
    /// with weights `w`, the codes picked from the sorted table `values`.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn iq4_sums(
        values: &[i8; 16],
        xb: &[f32],
        w: &[f32],
        ids: &[f32; 16],
    ) -> ([f32; 16], [f32; 16]) {
        let n = xb.len().min(w.len());
        let table: [f32; 16] = std::array::from_fn(|k| f32::from(values[k]));
        // SAFETY: 16 floats each.
        let (vals, ids) = unsafe {
            (
                _mm512_loadu_ps(table.as_ptr()),
                _mm512_loadu_ps(ids.as_ptr()),
            )
        };
        let v0 = _mm512_set1_ps(table[0]);
        let v15 = _mm512_set1_ps(table[15]);
        let (mut sumqx, mut sumq2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for j in 0..n {
            let x = _mm512_set1_ps(xb[j]);
            let al = _mm512_mul_ps(ids, x);
            let mut ml = _mm512_setzero_si512();
            for step in [8, 4, 2, 1] {
                let cand = _mm512_add_epi32(ml, _mm512_set1_epi32(step));
                let v = _mm512_permutexvar_ps(cand, vals);
                let ge = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(al, v);
                ml = _mm512_mask_mov_epi32(ml, ge, cand);
            }
            let ml = _mm512_min_epi32(ml, _mm512_set1_epi32(14));
            let mu = _mm512_add_epi32(ml, _mm512_set1_epi32(1));
            let lower = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(
                _mm512_sub_ps(al, _mm512_permutexvar_ps(ml, vals)),
                _mm512_sub_ps(_mm512_permutexvar_ps(mu, vals), al),
            );
            let mut l = _mm512_mask_mov_epi32(mu, lower, ml);
            l = _mm512_mask_mov_epi32(
                l,
                _mm512_cmp_ps_mask::<_CMP_GE_OQ>(al, v15),
                _mm512_set1_epi32(15),
            );
            l = _mm512_mask_mov_epi32(
                l,
                _mm512_cmp_ps_mask::<_CMP_LE_OQ>(al, v0),
                _mm512_setzero_si512(),
            );
            let q = _mm512_permutexvar_ps(l, vals);
            let wq = _mm512_mul_ps(_mm512_set1_ps(w[j]), q);
            sumqx = _mm512_add_ps(sumqx, _mm512_mul_ps(wq, x));
            sumq2 = _mm512_add_ps(sumq2, _mm512_mul_ps(wq, q));
        }
        let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
        // SAFETY: 16 floats each.
        unsafe {
            _mm512_storeu_ps(a.as_mut_ptr(), sumqx);
            _mm512_storeu_ps(b.as_mut_ptr(), sumq2);
        }
        (a, b)
    }

    /// `make_q3_quants`' refinement on 16 codes (`l_out`, not yet offset by `nmax`), with the
    /// running sums. Within a pass ggml visits the codes in order and only a code that changes
    /// changes the state; so every remaining code is tried at once against the current state,
    /// the first one that ggml would accept is applied, and the scan resumes after it: the
    /// same changes in the same order, the same sums.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn q3_descent(
        nmax: i32,
        x: &[f32],
        l_out: &mut [i8],
        sums_lx: &mut f32,
        sums_l2: &mut f32,
    ) {
        let (mut sumlx, mut suml2) = (*sums_lx, *sums_l2);
        let mut l: [i32; 16] = std::array::from_fn(|i| i32::from(l_out[i]));
        let xa: [f32; 16] = std::array::from_fn(|i| x[i]);
        // SAFETY: 16 floats.
        let xv = unsafe { _mm512_loadu_ps(xa.as_ptr()) };
        let w = _mm512_mul_ps(xv, xv);
        let wx = _mm512_mul_ps(w, xv);
        let (lo, hi) = (_mm512_set1_epi32(-nmax), _mm512_set1_epi32(nmax - 1));
        let zero = _mm512_setzero_ps();
        for _ in 0..5 {
            let mut n_changed = 0;
            let mut from = 0u32;
            while from < 16 {
                // SAFETY: 16 integers.
                let lv = unsafe { _mm512_loadu_si512(l.as_ptr() as *const __m512i) };
                let li = _mm512_cvtepi32_ps(lv);
                let slx = _mm512_sub_ps(_mm512_set1_ps(sumlx), _mm512_mul_ps(wx, li));
                let sl2 = _mm512_sub_ps(
                    _mm512_set1_ps(suml2),
                    _mm512_mul_ps(_mm512_mul_ps(w, li), li),
                );
                let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(slx, zero);
                let q = _mm512_div_ps(_mm512_mul_ps(xv, sl2), slx);
                let val = _mm512_castps_si512(_mm512_add_ps(q, _mm512_set1_ps(12_582_912.0)));
                let nl = _mm512_sub_epi32(
                    _mm512_and_si512(val, _mm512_set1_epi32(0x007f_ffff)),
                    _mm512_set1_epi32(0x0040_0000),
                );
                let nl = _mm512_min_epi32(_mm512_max_epi32(nl, lo), hi);
                let changed = _mm512_cmpneq_epi32_mask(nl, lv);
                let nlf = _mm512_cvtepi32_ps(nl);
                let slx_n = _mm512_add_ps(slx, _mm512_mul_ps(wx, nlf));
                let sl2_n = _mm512_add_ps(sl2, _mm512_mul_ps(_mm512_mul_ps(w, nlf), nlf));
                let ok2 = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(sl2_n, zero);
                let better = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(
                    _mm512_mul_ps(_mm512_mul_ps(slx_n, slx_n), _mm512_set1_ps(suml2)),
                    _mm512_mul_ps(_mm512_set1_ps(sumlx * sumlx), sl2_n),
                );
                let take = positive & changed & ok2 & better & (0xffffu16 << from);
                if take == 0 {
                    break;
                }
                let i = take.trailing_zeros() as usize;
                let (mut a, mut b, mut c) = ([0f32; 16], [0f32; 16], [0i32; 16]);
                // SAFETY: 16 lanes each.
                unsafe {
                    _mm512_storeu_ps(a.as_mut_ptr(), slx_n);
                    _mm512_storeu_ps(b.as_mut_ptr(), sl2_n);
                    _mm512_storeu_si512(c.as_mut_ptr() as *mut __m512i, nl);
                }
                l[i] = c[i];
                sumlx = a[i];
                suml2 = b[i];
                n_changed += 1;
                from = i as u32 + 1;
            }
            if n_changed == 0 {
                break;
            }
        }
        for i in 0..16 {
            l_out[i] = l[i] as i8;
        }
        *sums_lx = sumlx;
        *sums_l2 = suml2;
    }
}
