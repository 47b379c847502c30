//! The trainable tensors of a Jarvis model under the seed's `.npz` key names, in a fixed order
//! (`embedding`, `output_projection`, then per layer `q k v ffn1 ffn2 g1 b1 g2 b2`, then
//! `final_g final_b` when the model has a final norm). Matrices are stored `[in, out]` for
//! `x @ W`, as the checkpoint stores them.

use crate::models::jarvis::Config;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Tensors per layer, in [`Params`] order.
pub const PER_LAYER: usize = 9;

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    fn zeros(name: String, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            name,
            shape,
            data: vec![0.0; n],
        }
    }

    /// A weight matrix (decayed by weight decay); gains and biases (1-D) are not.
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }
}

/// Index of a tensor kind inside a layer's block of [`PER_LAYER`].
#[derive(Debug, Clone, Copy)]
pub enum LayerTensor {
    Q = 0,
    K,
    V,
    Ffn1,
    Ffn2,
    G1,
    B1,
    G2,
    B2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub tensors: Vec<Tensor>,
    pub n_layers: usize,
    pub final_norm: bool,
}

impl Params {
    /// Every tensor at zero, shaped for `cfg` (also the shape of gradients and Adam moments).
    pub fn zeros(cfg: &Config) -> Params {
        let (v, d, f) = (cfg.vocab, cfg.d_model, cfg.d_ff);
        let mut t = vec![
            Tensor::zeros("embedding".into(), vec![v, d]),
            Tensor::zeros("output_projection".into(), vec![d, v]),
        ];
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("layer_{l}_{s}");
            t.push(Tensor::zeros(n("q"), vec![d, d]));
            t.push(Tensor::zeros(n("k"), vec![d, d]));
            t.push(Tensor::zeros(n("v"), vec![d, d]));
            t.push(Tensor::zeros(n("ffn1"), vec![d, f]));
            t.push(Tensor::zeros(n("ffn2"), vec![f, d]));
            for s in ["g1", "b1", "g2", "b2"] {
                t.push(Tensor::zeros(n(s), vec![d]));
            }
        }
        if cfg.final_norm {
            t.push(Tensor::zeros("final_g".into(), vec![d]));
            t.push(Tensor::zeros("final_b".into(), vec![d]));
        }
        Params {
            tensors: t,
            n_layers: cfg.n_layers,
            final_norm: cfg.final_norm,
        }
    }

    /// The initialization `make_jarvis.py` uses (normal with these standard deviations):
    /// embedding 0.5, output projection 0.5/sqrt(d), q/k/v and ffn1 1/sqrt(d), ffn2
    /// 0.5/sqrt(d_ff); gains 1, biases 0. Drawn from ChaCha8 seeded with `seed`, tensor by
    /// tensor in [`Params`] order.
    pub fn init(cfg: &Config, seed: u64) -> Params {
        let mut p = Params::zeros(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (d, f) = (cfg.d_model as f64, cfg.d_ff as f64);
        for t in &mut p.tensors {
            let name = t.name.as_str();
            let std = if name == "embedding" {
                0.5
            } else if name == "output_projection" {
                0.5 / d.sqrt()
            } else if name.ends_with("_ffn2") {
                0.5 / f.sqrt()
            } else if t.is_matrix() {
                1.0 / d.sqrt()
            } else {
                if name.ends_with("g1") || name.ends_with("g2") || name == "final_g" {
                    t.data.fill(1.0);
                }
                continue;
            };
            let dist = Normal::new(0.0, std).expect("finite positive std");
            for v in &mut t.data {
                *v = dist.sample(&mut rng) as f32;
            }
        }
        p
    }

    pub fn embedding(&self) -> &Tensor {
        &self.tensors[0]
    }

    pub fn output(&self) -> &Tensor {
        &self.tensors[1]
    }

    pub fn layer(&self, l: usize, t: LayerTensor) -> &Tensor {
        &self.tensors[2 + PER_LAYER * l + t as usize]
    }

    pub fn layer_index(l: usize, t: LayerTensor) -> usize {
        2 + PER_LAYER * l + t as usize
    }

    /// `(final_g, final_b)` when the model has a final norm.
    pub fn final_norm(&self) -> Option<(&Tensor, &Tensor)> {
        self.final_index()
            .map(|i| (&self.tensors[i], &self.tensors[i + 1]))
    }

    pub fn final_index(&self) -> Option<usize> {
        self.final_norm.then_some(2 + PER_LAYER * self.n_layers)
    }

    pub fn n_elements(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    pub fn fill_zero(&mut self) {
        for t in &mut self.tensors {
            t.data.fill(0.0);
        }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
