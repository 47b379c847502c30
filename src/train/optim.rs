//! Adam with bias correction, global-norm gradient clipping, weight decay (decoupled as in
//! AdamW, or L2 added to the gradient as in plain Adam), and the learning-rate schedule
//! (linear warm-up, then constant or cosine). The arithmetic follows `torch.optim.AdamW` /
//! `torch.optim.Adam` and `torch.nn.utils.clip_grad_norm_` so that PyTorch is a reference.

use super::ops::sum_squares;
use super::params::Params;
use rayon::prelude::*;

/// How weight decay enters the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecayMode {
    /// AdamW: `p <- p * (1 - lr * wd)` before the Adam step (the moments never see it).
    Decoupled,
    /// Adam with L2: `g <- g + wd * p` after clipping, before the moments.
    L2,
}

impl DecayMode {
    pub fn name(self) -> &'static str {
        match self {
            DecayMode::Decoupled => "decoupled",
            DecayMode::L2 => "l2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Linear warm-up from `lr/warmup` to `lr`, then `lr`.
    Constant,
    /// Linear warm-up, then cosine from `lr` to `lr_min` at the last step.
    Cosine,
}

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub lr_min: f64,
    pub warmup: u64,
    pub schedule: Schedule,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm bound; `0` disables clipping.
    pub clip: f64,
    pub weight_decay: f64,
    pub decay_mode: DecayMode,
}

impl AdamConfig {
    /// The learning rate of step `step` (1-based) of a run of `total` steps.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if self.warmup > 0 && step <= self.warmup {
            return self.lr * step as f64 / self.warmup as f64;
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let span = total.saturating_sub(self.warmup).max(1) as f64;
                let frac = ((step - self.warmup) as f64 / span).min(1.0);
                self.lr_min
                    + 0.5 * (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * frac).cos())
            }
        }
    }
}

/// Adam's moment estimates and step count (what `--resume` needs besides the weights).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    pub m: Params,
    pub v: Params,
    /// Updates applied so far.
    pub step: u64,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
    /// Factor the gradient was multiplied by (1 when not clipped).
    pub clip_scale: f64,
    pub lr: f64,
}

impl AdamState {
    pub fn new(p: &Params) -> AdamState {
        let mut m = p.clone();
        m.fill_zero();
        AdamState {
            v: m.clone(),
            m,
            step: 0,
        }
    }

    /// One update of `p` with gradient `g` at learning rate `lr`. Weight decay applies to the
    /// matrices only (embedding, output projection, q/k/v, ffn1/ffn2), never to LayerNorm
    /// gains and biases.
    pub fn update(&mut self, p: &mut Params, g: &Params, cfg: &AdamConfig, lr: f64) -> Update {
        let grad_norm = g
            .tensors
            .iter()
            .map(|t| sum_squares(&t.data))
            .sum::<f64>()
            .sqrt();
        let clip_scale = if cfg.clip > 0.0 {
            (cfg.clip / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let c1 = 1.0 - cfg.beta1.powi(t);
        let c2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt();
        let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let step_size = (lr / c1) as f32;
        let scale = clip_scale as f32;
        let eps = cfg.eps as f32;
        let c2s = c2_sqrt as f32;
        for (((pt, gt), mt), vt) in p
            .tensors
            .iter_mut()
            .zip(&g.tensors)
            .zip(&mut self.m.tensors)
            .zip(&mut self.v.tensors)
        {
            let wd = if pt.is_matrix() {
                cfg.weight_decay
            } else {
                0.0
            };
            let decay = (1.0 - lr * wd) as f32;
            let l2 = (cfg.decay_mode == DecayMode::L2) as u8 as f32 * wd as f32;
            let decoupled = cfg.decay_mode == DecayMode::Decoupled && wd != 0.0;
            pt.data
                .par_chunks_mut(4096)
                .zip(gt.data.par_chunks(4096))
                .zip(mt.data.par_chunks_mut(4096))
                .zip(vt.data.par_chunks_mut(4096))
                .for_each(|(((pc, gc), mc), vc)| {
                    for i in 0..pc.len() {
                        let mut gi = gc[i] * scale;
                        if l2 != 0.0 {
                            gi += l2 * pc[i];
                        }
                        if decoupled {
                            pc[i] *= decay;
                        }
                        mc[i] = b1 * mc[i] + (1.0 - b1) * gi;
                        vc[i] = b2 * vc[i] + (1.0 - b2) * gi * gi;
                        let denom = vc[i].sqrt() / c2s + eps;
                        pc[i] -= step_size * mc[i] / denom;
                    }
                });
        }
        Update {
            grad_norm,
            clip_scale,
            lr,
        }
    }
}
