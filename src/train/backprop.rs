//! The training forward pass over a batch and its hand-written backward pass, for exactly the
//! architecture of `shared/spec/jarvis.md`: `x = E[t] + PE`; per layer (pre-LN, no biases, no
//! attention output projection) `x += concat_h(softmax(Q K^T / sqrt(dh) + causal) V)` with
//! `Q, K, V = LN1(x) @ Wq, Wk, Wv`, then `x += gelu_tanh(LN2(x) @ ffn1) @ ffn2`; optional final
//! LN; `logits = x @ output_projection`; loss = mean cross-entropy over the target positions
//! whose mask is set (padding is masked out; with causal attention and padding at the end a
//! padded position never influences a real one).

use super::ops::{self, gelu, gelu_backward, layer_norm, layer_norm_backward, matmul, LnCache, Op};
use super::params::{LayerTensor as LT, Params};
use crate::fastmath::exp_f32;
use crate::models::jarvis::{sinusoidal_table, Config};
use rayon::prelude::*;

/// A batch of `b` sequences of `t` positions (row-major `[b, t]`), with the next-token target
/// of every position and whether it counts in the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub mask: Vec<bool>,
}

impl Batch {
    pub fn n_targets(&self) -> usize {
        self.mask.iter().filter(|&&m| m).count()
    }
}

/// Result of one forward (and backward) pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pass {
    /// Sum of the per-target losses (f64).
    pub loss_sum: f64,
    /// Number of targets counted.
    pub n_targets: usize,
}

impl Pass {
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.n_targets.max(1) as f64
    }
}

/// The quantum metrics of `shared/spec/jarvis.md`, summed over (sequence, layer) pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricSums {
    pub coherence: f64,
    pub entanglement: f64,
    pub interference: f64,
    pub fidelity: f64,
    pub count: usize,
}

impl MetricSums {
    pub fn add(&mut self, o: &MetricSums) {
        self.coherence += o.coherence;
        self.entanglement += o.entanglement;
        self.interference += o.interference;
        self.fidelity += o.fidelity;
        self.count += o.count;
    }

    /// Means over every (sequence, layer) pair: coherence, entanglement, interference, fidelity.
    pub fn means(&self) -> [f64; 4] {
        let n = self.count.max(1) as f64;
        [
            self.coherence / n,
            self.entanglement / n,
            self.interference / n,
            self.fidelity / n,
        ]
    }
}

struct LayerCache {
    h: Vec<f32>,
    ln1: LnCache,
    /// Head-major `[b, heads, t, dh]`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[b, heads, t, t]`, zero above the diagonal.
    a: Vec<f32>,
    h2: Vec<f32>,
    ln2: LnCache,
    u: Vec<f32>,
    sig: Vec<f32>,
    gl: Vec<f32>,
}

/// `[b*t, d]` -> head-major `[b, heads, t, dh]`.
fn to_heads(z: &[f32], t: usize, heads: usize, dh: usize) -> Vec<f32> {
    let d = heads * dh;
    let mut out = vec![0f32; z.len()];
    out.par_chunks_mut(t * dh).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / heads, bh % heads);
        for p in 0..t {
            let src = &z[(bi * t + p) * d + hi * dh..][..dh];
            o[p * dh..(p + 1) * dh].copy_from_slice(src);
        }
    });
    out
}

/// Head-major `[b, heads, t, dh]` -> `[b*t, d]`.
fn from_heads(z: &[f32], t: usize, heads: usize, dh: usize) -> Vec<f32> {
    let d = heads * dh;
    let mut out = vec![0f32; z.len()];
    out.par_chunks_mut(t * d).enumerate().for_each(|(bi, o)| {
        for p in 0..t {
            for hi in 0..heads {
                let src = &z[((bi * heads + hi) * t + p) * dh..][..dh];
                o[p * d + hi * dh..][..dh].copy_from_slice(src);
            }
        }
    });
    out
}

/// Causal attention of one (sequence, head): fills `a` (`t x t`) and `o` (`t x dh`).
fn attend(q: &[f32], k: &[f32], v: &[f32], t: usize, dh: usize, a: &mut [f32], o: &mut [f32]) {
    ops::matmul_serial(t, dh, t, q, Op::N, k, Op::T, a, false);
    let scale = 1.0 / (dh as f32).sqrt();
    for i in 0..t {
        let row = &mut a[i * t..(i + 1) * t];
        let mut mx = f32::NEG_INFINITY;
        for s in &mut row[..=i] {
            *s *= scale;
            mx = mx.max(*s);
        }
        let mut sum = 0f32;
        for s in &mut row[..=i] {
            *s = exp_f32(*s - mx);
            sum += *s;
        }
        for s in &mut row[..=i] {
            *s /= sum;
        }
        row[i + 1..].fill(0.0);
    }
    ops::matmul_serial(t, t, dh, a, Op::N, v, Op::N, o, false);
}

/// The spec's per-layer metrics for sequence `bi` over its first `len` positions.
#[allow(clippy::too_many_arguments)]
fn layer_metrics(
    a: &[f32],
    o: &[f32],
    x_in: &[f32],
    x_out: &[f32],
    bi: usize,
    len: usize,
    t: usize,
    heads: usize,
    d: usize,
) -> MetricSums {
    let (mut s, mut s2, mut ent, mut cnt) = (0f64, 0f64, 0f64, 0usize);
    for hi in 0..heads {
        let ab = &a[(bi * heads + hi) * t * t..][..t * t];
        for i in 0..len {
            for &p in &ab[i * t..i * t + i + 1] {
                let p = f64::from(p);
                s += p;
                s2 += p * p;
                ent += (p - 1.0 / (i + 1) as f64).abs();
                cnt += 1;
            }
        }
    }
    let mean = s / cnt as f64;
    let coherence = 1.0 - (s2 / cnt as f64 - mean * mean);
    let ob = &o[bi * t * d..][..len * d];
    let om = ob.iter().map(|&v| f64::from(v)).sum::<f64>() / ob.len() as f64;
    let ov = ob
        .iter()
        .map(|&v| (f64::from(v) - om) * (f64::from(v) - om))
        .sum::<f64>()
        / ob.len() as f64;
    let mut fid = 0f64;
    for i in 0..len {
        let xi = &x_in[(bi * t + i) * d..][..d];
        let xo = &x_out[(bi * t + i) * d..][..d];
        let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
        for j in 0..d {
            dot += f64::from(xi[j]) * f64::from(xo[j]);
            na += f64::from(xi[j]) * f64::from(xi[j]);
            nb += f64::from(xo[j]) * f64::from(xo[j]);
        }
        fid += dot / (na.sqrt() * nb.sqrt()).max(1e-30);
    }
    MetricSums {
        coherence,
        entanglement: ent / cnt as f64,
        interference: ov.sqrt(),
        fidelity: fid / len as f64,
        count: 1,
    }
}

/// Forward only (evaluation): the loss and, when asked, the metrics of every sequence of the
/// batch over its real (masked-in) positions.
pub fn evaluate(p: &Params, cfg: &Config, batch: &Batch, metrics: Option<&mut MetricSums>) -> Pass {
    run(p, cfg, batch, None, metrics)
}

/// Forward and backward: writes the gradient of the mean loss into `grads` (same layout as
/// `p`; overwritten, not accumulated).
pub fn loss_and_grads(p: &Params, cfg: &Config, batch: &Batch, grads: &mut Params) -> Pass {
    run(p, cfg, batch, Some(grads), None)
}

fn run(
    p: &Params,
    cfg: &Config,
    batch: &Batch,
    grads: Option<&mut Params>,
    mut metrics: Option<&mut MetricSums>,
) -> Pass {
    let (b, t) = (batch.b, batch.t);
    let (d, heads, ff, vocab) = (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.vocab);
    let dh = d / heads;
    let n = b * t;
    let eps = cfg.eps;
    let pe = sinusoidal_table(t, d);
    let emb = &p.embedding().data;

    let mut x = vec![0f32; n * d];
    x.par_chunks_mut(d).enumerate().for_each(|(row, xr)| {
        let tok = batch.inputs[row] as usize;
        let pos = row % t;
        for j in 0..d {
            xr[j] = emb[tok * d + j] + pe[pos * d + j];
        }
    });
    let lens: Vec<usize> = (0..b)
        .map(|bi| {
            batch.mask[bi * t..(bi + 1) * t]
                .iter()
                .rposition(|&m| m)
                .map_or(0, |i| i + 1)
        })
        .collect();

    let mut caches = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let w = |k: LT| &p.layer(l, k).data;
        let mut h = vec![0f32; n * d];
        let ln1 = layer_norm(&x, w(LT::G1), w(LT::B1), eps, &mut h);
        let proj = |wm: &[f32]| {
            let mut z = vec![0f32; n * d];
            matmul(n, d, d, &h, Op::N, wm, Op::N, &mut z, false);
            to_heads(&z, t, heads, dh)
        };
        let (q, k, v) = (proj(w(LT::Q)), proj(w(LT::K)), proj(w(LT::V)));
        let mut a = vec![0f32; b * heads * t * t];
        let mut o_h = vec![0f32; n * d];
        a.par_chunks_mut(t * t)
            .zip(o_h.par_chunks_mut(t * dh))
            .enumerate()
            .for_each(|(bh, (ab, ob))| {
                let s = bh * t * dh;
                attend(
                    &q[s..s + t * dh],
                    &k[s..s + t * dh],
                    &v[s..s + t * dh],
                    t,
                    dh,
                    ab,
                    ob,
                );
            });
        let o = from_heads(&o_h, t, heads, dh);
        let x_in = metrics.is_some().then(|| x.clone());
        x.par_iter_mut()
            .zip(o.par_iter())
            .for_each(|(x, o)| *x += o);
        let mut h2 = vec![0f32; n * d];
        let ln2 = layer_norm(&x, w(LT::G2), w(LT::B2), eps, &mut h2);
        let mut u = vec![0f32; n * ff];
        matmul(n, d, ff, &h2, Op::N, w(LT::Ffn1), Op::N, &mut u, false);
        let mut gl = vec![0f32; n * ff];
        let sig = gelu(&u, &mut gl);
        matmul(n, ff, d, &gl, Op::N, w(LT::Ffn2), Op::N, &mut x, true);
        if let (Some(m), Some(x_in)) = (metrics.as_deref_mut(), x_in) {
            for (bi, &len) in lens.iter().enumerate() {
                if len > 0 {
                    m.add(&layer_metrics(&a, &o, &x_in, &x, bi, len, t, heads, d));
                }
            }
        }
        caches.push(LayerCache {
            h,
            ln1,
            q,
            k,
            v,
            a,
            h2,
            ln2,
            u,
            sig,
            gl,
        });
    }
    let (xf, lnf) = match p.final_norm() {
        Some((g, bb)) => {
            let mut y = vec![0f32; n * d];
            let c = layer_norm(&x, &g.data, &bb.data, eps, &mut y);
            (y, Some(c))
        }
        None => (x, None),
    };
    let mut logits = vec![0f32; n * vocab];
    matmul(
        n,
        d,
        vocab,
        &xf,
        Op::N,
        &p.output().data,
        Op::N,
        &mut logits,
        false,
    );

    let n_targets = batch.n_targets();
    let inv = 1.0 / n_targets.max(1) as f32;
    // Each row: the loss of its target; the logits become d(mean loss)/d(logits).
    let row_loss: Vec<f64> = logits
        .par_chunks_mut(vocab)
        .enumerate()
        .map(|(row, z)| {
            if !batch.mask[row] {
                z.fill(0.0);
                return 0.0;
            }
            let y = batch.targets[row] as usize;
            let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let zy = f64::from(z[y] - mx);
            for v in z.iter_mut() {
                *v = exp_f32(*v - mx);
            }
            let sum = sum_f64(z);
            let loss = sum.ln() - zy;
            let inv_sum = (1.0 / sum) as f32;
            for v in z.iter_mut() {
                *v *= inv_sum * inv;
            }
            z[y] -= inv;
            loss
        })
        .collect();
    let pass = Pass {
        loss_sum: row_loss.iter().sum(),
        n_targets,
    };
    let Some(g) = grads else {
        return pass;
    };
    g.fill_zero();
    let dlog = logits;
    matmul(
        d,
        n,
        vocab,
        &xf,
        Op::T,
        &dlog,
        Op::N,
        &mut g.tensors[1].data,
        false,
    );
    let mut dx = vec![0f32; n * d];
    matmul(
        n,
        vocab,
        d,
        &dlog,
        Op::N,
        &p.output().data,
        Op::T,
        &mut dx,
        false,
    );
    drop(dlog);
    if let (Some(fi), Some(c)) = (p.final_index(), lnf.as_ref()) {
        let mut dxn = vec![0f32; n * d];
        let (gf, rest) = g.tensors.split_at_mut(fi + 1);
        layer_norm_backward(
            &dx,
            &p.tensors[fi].data,
            c,
            &mut dxn,
            &mut gf[fi].data,
            &mut rest[0].data,
        );
        dx = dxn;
    }
    for l in (0..cfg.n_layers).rev() {
        let c = &caches[l];
        let w = |k: LT| &p.layer(l, k).data;
        let gi = |k: LT| Params::layer_index(l, k);
        // FFN: x += gelu(h2 @ W1) @ W2
        matmul(
            ff,
            n,
            d,
            &c.gl,
            Op::T,
            &dx,
            Op::N,
            &mut g.tensors[gi(LT::Ffn2)].data,
            false,
        );
        let mut du = vec![0f32; n * ff];
        matmul(n, d, ff, &dx, Op::N, w(LT::Ffn2), Op::T, &mut du, false);
        gelu_backward(&mut du, &c.u, &c.sig);
        matmul(
            d,
            n,
            ff,
            &c.h2,
            Op::T,
            &du,
            Op::N,
            &mut g.tensors[gi(LT::Ffn1)].data,
            false,
        );
        let mut dh2 = vec![0f32; n * d];
        matmul(n, ff, d, &du, Op::N, w(LT::Ffn1), Op::T, &mut dh2, false);
        drop(du);
        let mut dxn = vec![0f32; n * d];
        {
            let (lo, hi) = g.tensors.split_at_mut(gi(LT::B2));
            layer_norm_backward(
                &dh2,
                w(LT::G2),
                &c.ln2,
                &mut dxn,
                &mut lo[gi(LT::G2)].data,
                &mut hi[0].data,
            );
        }
        dx.par_iter_mut()
            .zip(dxn.par_iter())
            .for_each(|(a, b)| *a += b);
        // Attention: x += concat(A V)
        let do_h = to_heads(&dx, t, heads, dh);
        let mut dq = vec![0f32; n * d];
        let mut dk = vec![0f32; n * d];
        let mut dv = vec![0f32; n * d];
        dq.par_chunks_mut(t * dh)
            .zip(dk.par_chunks_mut(t * dh))
            .zip(dv.par_chunks_mut(t * dh))
            .enumerate()
            .for_each(|(bh, ((dqb, dkb), dvb))| {
                let s = bh * t * dh;
                let r = s..s + t * dh;
                let ab = &c.a[bh * t * t..(bh + 1) * t * t];
                let dob = &do_h[r.clone()];
                let mut da = vec![0f32; t * t];
                ops::matmul_serial(t, dh, t, dob, Op::N, &c.v[r.clone()], Op::T, &mut da, false);
                ops::matmul_serial(t, t, dh, ab, Op::T, dob, Op::N, dvb, false);
                let scale = 1.0 / (dh as f32).sqrt();
                for i in 0..t {
                    let ar = &ab[i * t..i * t + i + 1];
                    let dr = &mut da[i * t..(i + 1) * t];
                    let dot: f32 = ar.iter().zip(dr.iter()).map(|(a, d)| a * d).sum();
                    for j in 0..=i {
                        dr[j] = ar[j] * (dr[j] - dot) * scale;
                    }
                    dr[i + 1..].fill(0.0);
                }
                ops::matmul_serial(t, t, dh, &da, Op::N, &c.k[r.clone()], Op::N, dqb, false);
                ops::matmul_serial(t, t, dh, &da, Op::T, &c.q[r], Op::N, dkb, false);
            });
        drop(do_h);
        let mut dh1 = vec![0f32; n * d];
        for (name, gh) in [(LT::Q, dq), (LT::K, dk), (LT::V, dv)] {
            let gflat = from_heads(&gh, t, heads, dh);
            matmul(
                d,
                n,
                d,
                &c.h,
                Op::T,
                &gflat,
                Op::N,
                &mut g.tensors[gi(name)].data,
                false,
            );
            matmul(n, d, d, &gflat, Op::N, w(name), Op::T, &mut dh1, true);
        }
        {
            let (lo, hi) = g.tensors.split_at_mut(gi(LT::B1));
            layer_norm_backward(
                &dh1,
                w(LT::G1),
                &c.ln1,
                &mut dxn,
                &mut lo[gi(LT::G1)].data,
                &mut hi[0].data,
            );
        }
        dx.par_iter_mut()
            .zip(dxn.par_iter())
            .for_each(|(a, b)| *a += b);
    }
    // Embedding rows: added in position order on one thread (a fixed order).
    let de = &mut g.tensors[0].data;
    for (row, &tok) in batch.inputs.iter().enumerate() {
        let dst = &mut de[tok as usize * d..][..d];
        for (a, b) in dst.iter_mut().zip(&dx[row * d..(row + 1) * d]) {
            *a += b;
        }
    }
    pass
}

/// The sum of `x` in f64, in eight interleaved partial sums (so it vectorises) added in order.
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += f64::from(c[l]);
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] += f64::from(v);
    }
    acc.iter().sum()
}
