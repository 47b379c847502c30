//! Dense kernels of the trainer: matrix products (matrixmultiply's sgemm, parallel over one
//! block of rows or columns per thread), LayerNorm and tanh-GELU forward and backward.
//!
//! Determinism: every reduction runs in a fixed order that does not depend on the thread
//! count: the row-wise kernels split into blocks of constant size (partial sums of blocks are
//! added in block order), and a matrix product's split changes which thread computes an
//! output element, never the order of its sum (see [`matmul`]). So the result of every kernel
//! is the same bit for bit whatever `--threads` is.

use crate::fastmath::exp_f32;
use rayon::prelude::*;

/// Rows per task of the row-wise kernels (LayerNorm sums).
const SUM_BLOCK: usize = 64;
/// Below this many multiply-adds a product runs on the calling thread.
const SERIAL_WORK: usize = 1 << 18;

/// How a stored matrix is read: as stored (`[rows, cols]` row-major) or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// `c (m x n) = op(a) (m x k) @ op(b) (k x n)` (or `+=` with `accumulate`), row-major, each
/// operand contiguous: `a` is stored `[m, k]` for `Op::N` and `[k, m]` for `Op::T`, likewise
/// `b` is `[k, n]` or `[n, k]`. Parallel over one block of rows (tall outputs) or of columns
/// (wide ones) per thread: sgemm packs the shared operand once per call, so fewer, larger
/// blocks pack less. The split does not change a single bit of the result: sgemm sums each
/// output element over `k` in the same order whatever rows and columns it is given (the
/// unit test `matmul_is_the_same_for_every_split` checks it), so the determinism across
/// `--threads` holds although the blocks follow the thread count.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: Op,
    b: &[f32],
    tb: Op,
    c: &mut [f32],
    accumulate: bool,
) {
    matmul_split(
        m,
        k,
        n,
        a,
        ta,
        b,
        tb,
        c,
        accumulate,
        rayon::current_num_threads(),
    );
}

#[allow(clippy::too_many_arguments)]
fn matmul_split(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: Op,
    b: &[f32],
    tb: Op,
    c: &mut [f32],
    accumulate: bool,
    parts: usize,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if parts <= 1 || m * n * k.max(1) < SERIAL_WORK {
        matmul_serial(m, k, n, a, ta, b, tb, c, accumulate);
        return;
    }
    let (rsb, csb) = b_strides(tb, k, n);
    if m >= n {
        // Row blocks, a multiple of 16 rows (the sgemm kernel's tile height) each.
        let rows_per = m.div_ceil(parts).next_multiple_of(16);
        c[..m * n]
            .par_chunks_mut(rows_per * n)
            .enumerate()
            .for_each(|(blk, cb)| {
                let r0 = blk * rows_per;
                let rows = cb.len() / n;
                let a_off = match ta {
                    Op::N => r0 * k,
                    Op::T => r0,
                };
                gemm_raw(
                    rows,
                    k,
                    n,
                    &a[a_off..],
                    a_strides(ta, m, k),
                    b,
                    (rsb, csb),
                    Out {
                        ptr: cb.as_mut_ptr(),
                        len: cb.len(),
                        rs: n,
                    },
                    accumulate,
                );
            });
        return;
    }
    // Column blocks: each task writes a disjoint set of columns of `c`.
    let cols_per = n.div_ceil(parts).next_multiple_of(16);
    let out = SendPtr(c.as_mut_ptr());
    let len = c.len();
    (0..n.div_ceil(cols_per)).into_par_iter().for_each(|blk| {
        let c0 = blk * cols_per;
        let cols = cols_per.min(n - c0);
        let out = &out;
        gemm_raw(
            m,
            k,
            cols,
            a,
            a_strides(ta, m, k),
            &b[c0 * csb..],
            (rsb, csb),
            // SAFETY (of the later write): tasks cover disjoint column ranges c0..c0+cols.
            Out {
                ptr: out.0.wrapping_add(c0),
                len: len - c0,
                rs: n,
            },
            accumulate,
        );
    });
}

/// A raw output pointer shared by tasks that write disjoint elements.
struct SendPtr(*mut f32);
// SAFETY: only used by `matmul`, whose tasks write disjoint column ranges.
unsafe impl Sync for SendPtr {}

/// Where a block's result goes: `ptr[i * rs + j]` for its rows i and columns j; `len` elements
/// from `ptr` belong to the output.
struct Out {
    ptr: *mut f32,
    len: usize,
    rs: usize,
}

fn b_strides(tb: Op, k: usize, n: usize) -> (usize, usize) {
    match tb {
        Op::N => (n, 1),
        Op::T => (1, k),
    }
}

/// [`matmul`] on the calling thread only (for work that is already inside a parallel task).
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ta: Op,
    b: &[f32],
    tb: Op,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let out = Out {
        ptr: c.as_mut_ptr(),
        len: m * n,
        rs: n,
    };
    gemm_raw(
        m,
        k,
        n,
        a,
        a_strides(ta, m, k),
        b,
        b_strides(tb, k, n),
        out,
        accumulate,
    );
}

fn a_strides(ta: Op, m: usize, k: usize) -> (usize, usize) {
    match ta {
        Op::N => (k, 1),
        Op::T => (1, m),
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_raw(
    rows: usize,
    k: usize,
    cols: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: Out,
    accumulate: bool,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    // The furthest element touched: row rows-1, column k-1 of `a`; row k-1, column cols-1 of
    // `b`; row rows-1, column cols-1 of the output.
    if k > 0 {
        assert!((rows - 1) * rsa + (k - 1) * csa < a.len());
        assert!((k - 1) * rsb + (cols - 1) * csb < b.len());
    }
    assert!((rows - 1) * c.rs + cols - 1 < c.len);
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the asserts above bound every element the strides address inside `a`, `b` and
    // the output; the output is written by this call only (callers give each call disjoint
    // elements) and does not overlap the shared `a` and `b`.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            cols,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.ptr,
            c.rs as isize,
            1,
        );
    }
}

/// What the LayerNorm backward needs: the normalized input and `1/sqrt(var + eps)` per row.
#[derive(Debug, Default)]
pub struct LnCache {
    pub xhat: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// `y = (x - mean) / sqrt(var + eps) * g + b` per row of `d` (population variance).
pub fn layer_norm(x: &[f32], g: &[f32], b: &[f32], eps: f32, y: &mut [f32]) -> LnCache {
    let d = g.len();
    let rows = x.len() / d;
    let mut cache = LnCache {
        xhat: vec![0.0; x.len()],
        rstd: vec![0.0; rows],
    };
    y.par_chunks_mut(d)
        .zip(cache.xhat.par_chunks_mut(d))
        .zip(cache.rstd.par_iter_mut())
        .zip(x.par_chunks(d))
        .for_each(|(((yr, xh), rs), xr)| {
            let mean = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let r = 1.0 / (var + eps).sqrt();
            *rs = r;
            for i in 0..d {
                xh[i] = (xr[i] - mean) * r;
                yr[i] = xh[i] * g[i] + b[i];
            }
        });
    cache
}

/// LayerNorm backward: `dx` (written), `dg` and `db` (accumulated).
pub fn layer_norm_backward(
    dy: &[f32],
    g: &[f32],
    cache: &LnCache,
    dx: &mut [f32],
    dg: &mut [f32],
    db: &mut [f32],
) {
    let d = g.len();
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(cache.xhat.par_chunks(d))
        .zip(cache.rstd.par_iter())
        .for_each(|(((dxr, dyr), xh), &r)| {
            let mut mean_dxhat = 0.0f32;
            let mut mean_dxhat_xhat = 0.0f32;
            for i in 0..d {
                let t = dyr[i] * g[i];
                mean_dxhat += t;
                mean_dxhat_xhat += t * xh[i];
            }
            mean_dxhat /= d as f32;
            mean_dxhat_xhat /= d as f32;
            for i in 0..d {
                dxr[i] = r * (dyr[i] * g[i] - mean_dxhat - xh[i] * mean_dxhat_xhat);
            }
        });
    let (pg, pb) = column_sums2(dy, &cache.xhat, d);
    for i in 0..d {
        dg[i] += pg[i];
        db[i] += pb[i];
    }
}

/// Column sums of `dy * xhat` and of `dy`, over fixed row blocks added in order.
fn column_sums2(dy: &[f32], xhat: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dy
        .par_chunks(SUM_BLOCK * d)
        .zip(xhat.par_chunks(SUM_BLOCK * d))
        .map(|(dyb, xb)| {
            let mut sg = vec![0f32; d];
            let mut sb = vec![0f32; d];
            for (dyr, xr) in dyb.chunks(d).zip(xb.chunks(d)) {
                for i in 0..d {
                    sg[i] += dyr[i] * xr[i];
                    sb[i] += dyr[i];
                }
            }
            (sg, sb)
        })
        .collect();
    let mut sg = vec![0f32; d];
    let mut sb = vec![0f32; d];
    for (g, b) in parts {
        for i in 0..d {
            sg[i] += g[i];
            sb[i] += b[i];
        }
    }
    (sg, sb)
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044715;

/// `gelu(u) = 0.5 u (1 + tanh(c (u + a u^3)))`, computed as `u * sigmoid(2 c (u + a u^3))`
/// (the same function: 1 + tanh(z) = 2 sigmoid(2z)) with the libm-free exp, so the loop
/// vectorises; also returns the sigmoid values for the backward.
pub fn gelu(u: &[f32], out: &mut [f32]) -> Vec<f32> {
    let mut sig = vec![0f32; u.len()];
    out.par_chunks_mut(4096)
        .zip(sig.par_chunks_mut(4096))
        .zip(u.par_chunks(4096))
        .for_each(|((o, sg), u)| {
            for i in 0..u.len() {
                let x = u[i];
                let s = 1.0 / (1.0 + exp_f32(-2.0 * GELU_C * (x + GELU_A * x * x * x)));
                sg[i] = s;
                o[i] = x * s;
            }
        });
    sig
}

/// In place: `d <- d * gelu'(u)`, with `sig` from [`gelu`]:
/// `gelu'(u) = s + 2 u s (1 - s) c (1 + 3 a u^2)`, `s = sigmoid(2 c (u + a u^3))`.
pub fn gelu_backward(d: &mut [f32], u: &[f32], sig: &[f32]) {
    d.par_chunks_mut(4096)
        .zip(u.par_chunks(4096))
        .zip(sig.par_chunks(4096))
        .for_each(|((d, u), sg)| {
            for i in 0..d.len() {
                let x = u[i];
                let s = sg[i];
                d[i] *= s + 2.0 * x * s * (1.0 - s) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
            }
        });
}

/// Sum of squares in f64 over fixed blocks added in order.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(1 << 14)
        .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
        .collect::<Vec<f64>>()
        .iter()
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f32], ta: Op, b: &[f32], tb: Op) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let av = if ta == Op::N {
                        a[i * k + p]
                    } else {
                        a[p * m + i]
                    };
                    let bv = if tb == Op::N {
                        b[p * n + j]
                    } else {
                        b[j * k + p]
                    };
                    c[i * n + j] += f64::from(av) * f64::from(bv);
                }
            }
        }
        c
    }

    /// Every split (1 to 7 parts, rows and columns) gives the bits of one whole sgemm call.
    #[test]
    fn matmul_is_the_same_for_every_split() {
        for (m, k, n) in [(300, 70, 45), (37, 300, 290), (129, 257, 131)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1013) as f32).sin())
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104_729 % 997) as f32).cos())
                .collect();
            for ta in [Op::N, Op::T] {
                for tb in [Op::N, Op::T] {
                    for acc in [false, true] {
                        let init: Vec<f32> = (0..m * n).map(|i| (i as f32).sqrt()).collect();
                        let mut whole = init.clone();
                        matmul_serial(m, k, n, &a, ta, &b, tb, &mut whole, acc);
                        for parts in 1..=7 {
                            let mut c = init.clone();
                            matmul_split(m, k, n, &a, ta, &b, tb, &mut c, acc, parts);
                            let same = c
                                .iter()
                                .zip(&whole)
                                .all(|(x, y)| x.to_bits() == y.to_bits());
                            assert!(same, "{m}x{k}x{n} {ta:?} {tb:?} acc {acc} parts {parts}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_all_transposes_and_splits_match_naive() {
        // Row blocks (tall), column blocks (wide), and one block.
        for (m, k, n) in [(1100, 17, 9), (20, 13, 1100), (130, 7, 5)] {
            check(m, k, n);
        }
    }

    fn check(m: usize, k: usize, n: usize) {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        for ta in [Op::N, Op::T] {
            for tb in [Op::N, Op::T] {
                let mut c = vec![1f32; m * n];
                matmul(m, k, n, &a, ta, &b, tb, &mut c, true);
                let want = naive(m, k, n, &a, ta, &b, tb);
                for (x, w) in c.iter().zip(&want) {
                    assert!(
                        (f64::from(*x) - 1.0 - w).abs() < 1e-4,
                        "{m}x{k}x{n} {ta:?} {tb:?}"
                    );
                }
            }
        }
    }
}
