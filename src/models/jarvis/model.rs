//! The Jarvis forward pass, llama2.c style: `Model` (weights as views into the GGUF), `State`
//! (KV cache and scratch), `Model::step` (one token in, logits out), and the quantum metrics
//! accumulated along the way.

use super::config::{Config, Gelu};
use crate::fastmath::exp_f32;
use crate::gguf::{GgufError, GgufModel};
use crate::quant::{dot_f32, Matrix, Team};

/// Attention work (positions x d_model) below which the heads run on one thread.
const PAR_MIN_ATTENTION: usize = 1 << 13;

#[derive(Debug, Clone)]
struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
}

#[derive(Debug)]
struct Layer<'a> {
    ln1: Norm,
    q: Matrix<'a>,
    k: Matrix<'a>,
    v: Matrix<'a>,
    ln2: Norm,
    up: Matrix<'a>,
    down: Matrix<'a>,
}

/// The weights of a `jarvis` GGUF, borrowed from its memory map.
#[derive(Debug)]
pub struct Model<'a> {
    pub cfg: Config,
    tok: Matrix<'a>,
    out: Matrix<'a>,
    out_norm: Option<Norm>,
    layers: Vec<Layer<'a>>,
    /// Sinusoidal position table, `ctx x d_model`.
    pe: Vec<f32>,
}

fn shape_err(name: &str, ne: &[u64], want: &[usize]) -> GgufError {
    GgufError::BadShape {
        name: name.to_string(),
        offset: 0,
        ne: ne.to_vec(),
        reason: format!("expected ne {want:?} for this configuration"),
    }
}

fn matrix<'a>(
    f: &'a GgufModel,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<Matrix<'a>, GgufError> {
    let t = f.tensor(name)?;
    if t.info.ne != [cols as u64, rows as u64] {
        return Err(shape_err(name, &t.info.ne, &[cols, rows]));
    }
    Matrix::new(t.ty(), rows, cols, t.data).map_err(|source| GgufError::Codec {
        name: name.to_string(),
        source,
    })
}

fn vector(f: &GgufModel, name: &str, n: usize) -> Result<Vec<f32>, GgufError> {
    let t = f.tensor(name)?;
    if t.info.ne != [n as u64] {
        return Err(shape_err(name, &t.info.ne, &[n]));
    }
    t.to_f32()
}

fn norm(f: &GgufModel, prefix: &str, n: usize) -> Result<Norm, GgufError> {
    Ok(Norm {
        g: vector(f, &format!("{prefix}.weight"), n)?,
        b: vector(f, &format!("{prefix}.bias"), n)?,
    })
}

/// `PE[p, 2i] = sin(p / 10000^(2i/d))`, `PE[p, 2i+1] = cos(...)`, computed in f64.
pub fn sinusoidal_table(ctx: usize, d: usize) -> Vec<f32> {
    let mut pe = vec![0f32; ctx * d];
    for p in 0..ctx {
        for i in (0..d).step_by(2) {
            let angle = p as f64 / 10000f64.powf(i as f64 / d as f64);
            pe[p * d + i] = angle.sin() as f32;
            if i + 1 < d {
                pe[p * d + i + 1] = angle.cos() as f32;
            }
        }
    }
    pe
}

impl<'a> Model<'a> {
    /// Maps the weights of a `jarvis` GGUF; every shape is checked against the configuration.
    pub fn load(f: &'a GgufModel) -> Result<Model<'a>, GgufError> {
        Self::load_with_ctx(f, usize::MAX)
    }

    /// [`Model::load`] for a context of at most `ctx` positions (the trained context is the
    /// upper bound): the position table and every later state are sized by it, never by a
    /// trained context the run does not use.
    pub fn load_with_ctx(f: &'a GgufModel, ctx: usize) -> Result<Model<'a>, GgufError> {
        let mut cfg = Config::from_gguf(f)?;
        cfg.ctx = cfg.ctx.min(ctx);
        // Every tensor is looked up before anything is sized by the layer count.
        let present = f
            .tensor_infos()
            .filter(|t| t.name.ends_with(".attn_q.weight") && t.name.starts_with("blk."))
            .count();
        if cfg.n_layers > present {
            return Err(GgufError::WrongType {
                key: super::config::keys::BLOCK_COUNT.into(),
                expected: format!("at most the {present} layers the file has tensors for"),
                found: cfg.n_layers.to_string(),
            });
        }
        let (d, ff, v) = (cfg.d_model, cfg.d_ff, cfg.vocab);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            layers.push(Layer {
                ln1: norm(f, &p("attn_norm"), d)?,
                q: matrix(f, &p("attn_q.weight"), d, d)?,
                k: matrix(f, &p("attn_k.weight"), d, d)?,
                v: matrix(f, &p("attn_v.weight"), d, d)?,
                ln2: norm(f, &p("ffn_norm"), d)?,
                up: matrix(f, &p("ffn_up.weight"), d, ff)?,
                down: matrix(f, &p("ffn_down.weight"), ff, d)?,
            });
        }
        Ok(Model {
            tok: matrix(f, "token_embd.weight", d, v)?,
            out: matrix(f, "output.weight", d, v)?,
            out_norm: if cfg.final_norm {
                Some(norm(f, "output_norm", d)?)
            } else {
                None
            },
            layers,
            pe: sinusoidal_table(cfg.ctx, d),
            cfg,
        })
    }

    /// A fresh sequence state with a team of `rayon::current_num_threads()` threads (what
    /// `-t` sets).
    pub fn new_state(&self) -> State {
        let c = &self.cfg;
        State {
            team: Team::new(rayon::current_num_threads()),
            pos: 0,
            k_cache: vec![vec![0f32; c.ctx * c.d_model]; c.n_layers],
            v_cache: vec![vec![0f32; c.ctx * c.d_model]; c.n_layers],
            x: vec![0f32; c.d_model],
            x_in: vec![0f32; c.d_model],
            h: vec![0f32; c.d_model],
            q: vec![0f32; c.d_model],
            k: vec![0f32; c.d_model],
            v: vec![0f32; c.d_model],
            o: vec![0f32; c.d_model],
            att: vec![0f32; c.ctx * c.n_heads],
            ff: vec![0f32; c.d_ff],
            logits: vec![0f32; c.vocab],
        }
    }

    /// Runs one token at the state's next position and returns the logits. Fails when the
    /// context is full (the caller applies the context policy) or the id is out of range.
    pub fn step<'s>(
        &self,
        st: &'s mut State,
        token: u32,
        metrics: Option<&mut MetricsAcc>,
    ) -> Result<&'s [f32], StepError> {
        self.step_inner(st, token, metrics, true)?;
        Ok(&st.logits)
    }

    /// Runs one token into the KV cache without the output projection (a prompt token whose
    /// logits nobody reads: the projection is the largest matrix of the model).
    pub fn step_no_logits(
        &self,
        st: &mut State,
        token: u32,
        metrics: Option<&mut MetricsAcc>,
    ) -> Result<(), StepError> {
        self.step_inner(st, token, metrics, false)
    }

    /// Runs `tokens` at the next positions in one pass: every projection is a matrix-matrix
    /// product, so each weight is read once for the whole prompt. Logits of every token are
    /// appended to `all_logits` when given, else only the last token's are computed (and left in
    /// the state, as `step` leaves them). Metrics, when asked for, are those `step` would
    /// accumulate.
    pub fn prefill(
        &self,
        st: &mut State,
        tokens: &[u32],
        mut metrics: Option<&mut MetricsAcc>,
        all_logits: Option<&mut Vec<f32>>,
    ) -> Result<(), StepError> {
        let c = &self.cfg;
        let (d, hd, n, pos0) = (c.d_model, c.head_dim(), tokens.len(), st.pos);
        if n == 0 {
            return Ok(());
        }
        if pos0 + n > c.ctx {
            return Err(StepError::ContextFull(c.ctx));
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(StepError::BadToken {
                token,
                vocab: c.vocab,
            });
        }
        let mut x = vec![0f32; n * d];
        for (t, (&tok, xr)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            self.tok.row_to_f32(tok as usize, xr);
            for (v, p) in xr
                .iter_mut()
                .zip(&self.pe[(pos0 + t) * d..(pos0 + t + 1) * d])
            {
                *v += p;
            }
        }
        let mut h = vec![0f32; n * d];
        let (mut q, mut k, mut v, mut o) = (
            vec![0f32; n * d],
            vec![0f32; n * d],
            vec![0f32; n * d],
            vec![0f32; n * d],
        );
        let mut ff = vec![0f32; n * c.d_ff];
        let mut x_in = vec![0f32; n * d];
        let scale = 1.0 / (hd as f32).sqrt();
        let team = &st.team;
        for (l, layer) in self.layers.iter().enumerate() {
            x_in.copy_from_slice(&x);
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                layer_norm(xr, &layer.ln1, c.eps, hr);
            }
            layer.q.matmul_team(&h, n, &mut q, team);
            layer.k.matmul_team(&h, n, &mut k, team);
            layer.v.matmul_team(&h, n, &mut v, team);
            st.k_cache[l][pos0 * d..(pos0 + n) * d].copy_from_slice(&k);
            st.v_cache[l][pos0 * d..(pos0 + n) * d].copy_from_slice(&v);
            let (kc, vc, ctx) = (&st.k_cache[l], &st.v_cache[l], c.ctx);
            // One head of one token: scores over the cache, softmax, weighted values.
            let head = |t: usize, hh: usize, oh: &mut [f32], att: &mut [f32]| {
                let qh = &q[t * d + hh * hd..t * d + (hh + 1) * hd];
                attend(qh, kc, vc, d, hh * hd, scale, &mut att[..=pos0 + t], oh);
            };
            if let Some(m) = metrics.as_deref_mut() {
                // Metrics need every attention row in turn: one thread.
                for t in 0..n {
                    for hh in 0..c.n_heads {
                        let att = &mut st.att[hh * ctx..(hh + 1) * ctx];
                        let oh = &mut o[t * d + hh * hd..t * d + (hh + 1) * hd];
                        head(t, hh, oh, att);
                        m.attention(l, hh, pos0 + t, &att[..=pos0 + t], oh);
                    }
                }
            } else {
                // Per head, the whole prompt at once: scores = Q_h K_h^T as one sgemm over the
                // strided head columns, a causal softmax per row, then O_h = P V_h.
                let op = o.as_mut_ptr() as usize;
                let m = pos0 + n;
                team.for_ranges(c.n_heads, &|r| {
                    let mut p = vec![0f32; n * m];
                    for hh in r {
                        // SAFETY: q, kc and vc hold n (resp. m) rows of d floats, and the head's
                        // hd columns at hh * hd are inside each row; `o` is n x d and a head
                        // writes only its own columns, while members get disjoint heads.
                        unsafe {
                            let col = hh * hd;
                            matrixmultiply::sgemm(
                                n,
                                hd,
                                m,
                                scale,
                                q.as_ptr().add(col),
                                d as isize,
                                1,
                                kc.as_ptr().add(col),
                                1,
                                d as isize,
                                0.0,
                                p.as_mut_ptr(),
                                m as isize,
                                1,
                            );
                            for (t, row) in p.chunks_exact_mut(m).enumerate() {
                                let (keep, masked) = row.split_at_mut(pos0 + t + 1);
                                softmax(keep);
                                masked.fill(0.0);
                            }
                            matrixmultiply::sgemm(
                                n,
                                m,
                                hd,
                                1.0,
                                p.as_ptr(),
                                m as isize,
                                1,
                                vc.as_ptr().add(col),
                                d as isize,
                                1,
                                0.0,
                                (op as *mut f32).add(col),
                                d as isize,
                                1,
                            );
                        }
                    }
                });
            }
            for (xv, ov) in x.iter_mut().zip(&o) {
                *xv += ov;
            }
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                layer_norm(xr, &layer.ln2, c.eps, hr);
            }
            layer.up.matmul_team(&h, n, &mut ff, team);
            gelu_in_place(&mut ff, c.gelu);
            layer.down.matmul_team(&ff, n, &mut h, team);
            for (xv, hv) in x.iter_mut().zip(&h) {
                *xv += hv;
            }
            if let Some(m) = metrics.as_deref_mut() {
                for (a, b) in x_in.chunks_exact(d).zip(x.chunks_exact(d)) {
                    m.fidelity(l, a, b);
                }
            }
        }
        st.pos += n;
        for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
            match &self.out_norm {
                Some(nm) => layer_norm(xr, nm, c.eps, hr),
                None => hr.copy_from_slice(xr),
            }
        }
        match all_logits {
            Some(out) => {
                let start = out.len();
                out.resize(start + n * c.vocab, 0.0);
                self.out.matmul_team(&h, n, &mut out[start..], team);
                st.logits.copy_from_slice(&out[out.len() - c.vocab..]);
            }
            None => self
                .out
                .matvec_team(&h[(n - 1) * d..], &mut st.logits, team),
        }
        Ok(())
    }

    /// The logits left by the last `step` or `prefill`.
    pub fn last_logits<'s>(&self, st: &'s State) -> &'s [f32] {
        &st.logits
    }

    fn step_inner(
        &self,
        st: &mut State,
        token: u32,
        mut metrics: Option<&mut MetricsAcc>,
        logits: bool,
    ) -> Result<(), StepError> {
        let c = &self.cfg;
        let (d, hd, pos) = (c.d_model, c.head_dim(), st.pos);
        if pos >= c.ctx {
            return Err(StepError::ContextFull(c.ctx));
        }
        if token as usize >= c.vocab {
            return Err(StepError::BadToken {
                token,
                vocab: c.vocab,
            });
        }
        self.tok.row_to_f32(token as usize, &mut st.x);
        for (x, p) in st.x.iter_mut().zip(&self.pe[pos * d..(pos + 1) * d]) {
            *x += p;
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            st.x_in.copy_from_slice(&st.x);
            layer_norm(&st.x, &layer.ln1, c.eps, &mut st.h);
            {
                let team = &st.team;
                layer.q.matvec_team(&st.h, &mut st.q, team);
                layer.k.matvec_team(&st.h, &mut st.k, team);
                layer.v.matvec_team(&st.h, &mut st.v, team);
            }
            st.k_cache[l][pos * d..(pos + 1) * d].copy_from_slice(&st.k);
            st.v_cache[l][pos * d..(pos + 1) * d].copy_from_slice(&st.v);
            {
                let (kc, vc, q, ctx) = (&st.k_cache[l], &st.v_cache[l], &st.q, c.ctx);
                let head = |h: usize, oh: &mut [f32], att: &mut [f32]| {
                    let qh = &q[h * hd..(h + 1) * hd];
                    attend(qh, kc, vc, d, h * hd, scale, &mut att[..=pos], oh);
                };
                // Heads run on the team once the context makes them worth splitting.
                if (pos + 1) * d >= PAR_MIN_ATTENTION && st.team.threads() > 1 {
                    let (o, a) = (st.o.as_mut_ptr() as usize, st.att.as_mut_ptr() as usize);
                    st.team.for_ranges(c.n_heads, &|r| {
                        for h in r {
                            // SAFETY: each head owns its `hd` outputs and its `ctx` scores;
                            // the ranges of heads given to the members are disjoint.
                            let (oh, att) = unsafe {
                                (
                                    std::slice::from_raw_parts_mut((o as *mut f32).add(h * hd), hd),
                                    std::slice::from_raw_parts_mut(
                                        (a as *mut f32).add(h * ctx),
                                        ctx,
                                    ),
                                )
                            };
                            head(h, oh, att);
                        }
                    });
                } else {
                    let heads = st.o.chunks_mut(hd).zip(st.att.chunks_mut(ctx)).enumerate();
                    heads.for_each(|(h, (oh, att))| head(h, oh, att));
                }
            }
            if let Some(m) = metrics.as_deref_mut() {
                for h in 0..c.n_heads {
                    let att = &st.att[h * c.ctx..h * c.ctx + pos + 1];
                    m.attention(l, h, pos, att, &st.o[h * hd..(h + 1) * hd]);
                }
            }
            for (x, o) in st.x.iter_mut().zip(&st.o) {
                *x += o;
            }
            layer_norm(&st.x, &layer.ln2, c.eps, &mut st.h);
            layer.up.matvec_team(&st.h, &mut st.ff, &st.team);
            gelu_in_place(&mut st.ff, c.gelu);
            layer.down.matvec_team(&st.ff, &mut st.h, &st.team);
            for (x, y) in st.x.iter_mut().zip(&st.h) {
                *x += y;
            }
            if let Some(m) = metrics.as_deref_mut() {
                m.fidelity(l, &st.x_in, &st.x);
            }
        }
        st.pos += 1;
        if logits {
            if let Some(n) = &self.out_norm {
                layer_norm(&st.x, n, c.eps, &mut st.h);
            } else {
                st.h.copy_from_slice(&st.x);
            }
            self.out.matvec_team(&st.h, &mut st.logits, &st.team);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    #[error("the context of {0} tokens is full")]
    ContextFull(usize),
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    BadToken { token: u32, vocab: usize },
}

/// The KV cache and scratch buffers of one sequence, and the threads that run it.
#[derive(Debug)]
pub struct State {
    team: Team,
    /// Number of positions already in the cache.
    pub pos: usize,
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    x: Vec<f32>,
    x_in: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    att: Vec<f32>,
    ff: Vec<f32>,
    logits: Vec<f32>,
}

impl State {
    /// Forgets every position (the cache is overwritten from position 0 on).
    pub fn reset(&mut self) {
        self.pos = 0;
    }
}

fn layer_norm(x: &[f32], n: &Norm, eps: f32, out: &mut [f32]) {
    let len = x.len() as f32;
    let mean = x.iter().sum::<f32>() / len;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / len;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, v), g), b) in out.iter_mut().zip(x).zip(&n.g).zip(&n.b) {
        *o = (v - mean) * inv * g + b;
    }
}

/// One head of one token: scores of `qh` against the cached keys `0..att.len()` (the head's
/// columns `col..col + qh.len()` of each `d`-wide cache row), scaled, softmax, and the
/// weighted sum of the cached values into `oh`. Shared by `step` and by `prefill` when it
/// accumulates metrics.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend(
    qh: &[f32],
    kc: &[f32],
    vc: &[f32],
    d: usize,
    col: usize,
    scale: f32,
    att: &mut [f32],
    oh: &mut [f32],
) {
    let hd = qh.len();
    for (j, a) in att.iter_mut().enumerate() {
        *a = dot_f32(qh, &kc[j * d + col..j * d + col + hd]) * scale;
    }
    softmax(att);
    oh.fill(0.0);
    for (j, &a) in att.iter().enumerate() {
        for (o, v) in oh.iter_mut().zip(&vc[j * d + col..j * d + col + hd]) {
            *o += a * v;
        }
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Two passes so the exponentials vectorise (the f32 sum stays in order).
    for v in x.iter_mut() {
        *v = exp_f32(*v - max);
    }
    let sum: f32 = x.iter().sum();
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// GELU of every element. The tanh form as `x * sigmoid(2u)`, u = sqrt(2/pi)(x + 0.044715x^3):
/// the same function as `0.5x(1 + tanh(u))` (1 + tanh(u) = 2 / (1 + e^-2u)) without tanh's
/// libm call per element or its cancellation near -1, so the loop vectorises.
fn gelu_in_place(xs: &mut [f32], form: Gelu) {
    match form {
        Gelu::Tanh => {
            const C2: f32 = 2.0 * 0.797_884_6; // 2 sqrt(2/pi)
            for x in xs.iter_mut() {
                let v = *x;
                *x = v / (1.0 + exp_f32(-C2 * (v + 0.044715 * v * v * v)));
            }
        }
        Gelu::Erf => {
            for x in xs.iter_mut() {
                *x = 0.5 * *x * (1.0 + libm::erff(*x / std::f32::consts::SQRT_2));
            }
        }
    }
}

/// The four "quantum" metrics of one layer or one head (see the spec).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Metrics {
    pub coherence: f64,
    pub entanglement: f64,
    pub interference: f64,
    pub fidelity: f64,
}

/// A layer's metrics and its heads'.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMetrics {
    pub layer: Metrics,
    pub heads: Vec<Metrics>,
}

#[derive(Debug, Clone, Default)]
struct Sums {
    n_att: f64,
    att: f64,
    att2: f64,
    ent: f64,
    n_o: f64,
    o: f64,
    o2: f64,
}

impl Sums {
    fn metrics(&self, fidelity: f64) -> Metrics {
        let var = |n: f64, s: f64, s2: f64| {
            if n == 0.0 {
                0.0
            } else {
                (s2 / n - (s / n).powi(2)).max(0.0)
            }
        };
        Metrics {
            coherence: 1.0 - var(self.n_att, self.att, self.att2),
            entanglement: if self.n_att == 0.0 {
                0.0
            } else {
                self.ent / self.n_att
            },
            interference: var(self.n_o, self.o, self.o2).sqrt(),
            fidelity,
        }
    }
}

/// Accumulates the metrics over the positions run since it was created.
#[derive(Debug, Clone)]
pub struct MetricsAcc {
    layers: Vec<Sums>,
    heads: Vec<Vec<Sums>>,
    /// Per layer: sum of cosines and count of positions.
    fid: Vec<(f64, f64)>,
    /// Per layer and head: sum of cosines of the head's slice.
    head_fid: Vec<Vec<f64>>,
}

impl MetricsAcc {
    pub fn new(cfg: &Config) -> MetricsAcc {
        MetricsAcc {
            layers: vec![Sums::default(); cfg.n_layers],
            heads: vec![vec![Sums::default(); cfg.n_heads]; cfg.n_layers],
            fid: vec![(0.0, 0.0); cfg.n_layers],
            head_fid: vec![vec![0.0; cfg.n_heads]; cfg.n_layers],
        }
    }

    fn attention(&mut self, l: usize, h: usize, pos: usize, att: &[f32], o: &[f32]) {
        let uniform = 1.0 / (pos as f64 + 1.0);
        for s in [&mut self.layers[l], &mut self.heads[l][h]] {
            for &a in att {
                let a = f64::from(a);
                s.n_att += 1.0;
                s.att += a;
                s.att2 += a * a;
                s.ent += (a - uniform).abs();
            }
            for &v in o {
                let v = f64::from(v);
                s.n_o += 1.0;
                s.o += v;
                s.o2 += v * v;
            }
        }
    }

    fn fidelity(&mut self, l: usize, a: &[f32], b: &[f32]) {
        fn cos(a: &[f32], b: &[f32]) -> f64 {
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if na == 0.0 || nb == 0.0 {
                0.0
            } else {
                dot / (na * nb)
            }
        }
        self.fid[l].0 += cos(a, b);
        self.fid[l].1 += 1.0;
        let hd = a.len() / self.heads[l].len();
        for (h, f) in self.head_fid[l].iter_mut().enumerate() {
            *f += cos(&a[h * hd..(h + 1) * hd], &b[h * hd..(h + 1) * hd]);
        }
    }

    /// The metrics of every layer. A head's fidelity is its layer's (the formula involves no
    /// head).
    pub fn finish(&self) -> Vec<LayerMetrics> {
        self.layers
            .iter()
            .enumerate()
            .map(|(l, s)| {
                let fid = if self.fid[l].1 == 0.0 {
                    0.0
                } else {
                    self.fid[l].0 / self.fid[l].1
                };
                LayerMetrics {
                    layer: s.metrics(fid),
                    heads: self.heads[l].iter().map(|h| h.metrics(fid)).collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod fast_math_tests {
    use super::*;

    /// The GELU forms within 1e-6 (relative, or absolute near 0) of the f64 formula.
    #[test]
    fn gelu_matches_f64() {
        let xs: Vec<f32> = (0..=40_000).map(|i| -20.0 + i as f32 / 1000.0).collect();
        let mut g = xs.clone();
        gelu_in_place(&mut g, Gelu::Tanh);
        for (&x, &y) in xs.iter().zip(&g) {
            let x = f64::from(x);
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let want = 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh());
            let err = (f64::from(y) - want).abs();
            assert!(
                err <= 1e-6 * want.abs().max(1e-3),
                "gelu({x}) = {y}, want {want}"
            );
        }
    }
}
