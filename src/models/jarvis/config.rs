//! Jarvis hyper-parameters, read from (and written to) GGUF metadata under `jarvis.`.

use crate::gguf::{GgufError, GgufModel};

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gelu {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, the seed's form.
    Tanh,
    /// `0.5 x (1 + erf(x / sqrt 2))`.
    Erf,
}

impl Gelu {
    pub fn name(self) -> &'static str {
        match self {
            Gelu::Tanh => "tanh",
            Gelu::Erf => "erf",
        }
    }

    pub fn from_name(s: &str) -> Option<Gelu> {
        match s {
            "tanh" => Some(Gelu::Tanh),
            "erf" => Some(Gelu::Erf),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_ff: usize,
    pub ctx: usize,
    pub eps: f32,
    pub gelu: Gelu,
    pub final_norm: bool,
}

/// GGUF metadata keys (all under the `jarvis.` prefix).
pub mod keys {
    pub const ARCH: &str = "jarvis";
    pub const CONTEXT_LENGTH: &str = "jarvis.context_length";
    pub const EMBEDDING_LENGTH: &str = "jarvis.embedding_length";
    pub const BLOCK_COUNT: &str = "jarvis.block_count";
    pub const FEED_FORWARD_LENGTH: &str = "jarvis.feed_forward_length";
    pub const HEAD_COUNT: &str = "jarvis.attention.head_count";
    pub const LAYER_NORM_EPS: &str = "jarvis.attention.layer_norm_epsilon";
    pub const GELU: &str = "jarvis.gelu";
    pub const POSITIONAL: &str = "jarvis.positional_encoding";
    pub const CONTEXT_SHIFT: &str = "jarvis.context_shift";
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Reads the configuration of a `jarvis` GGUF; the vocabulary size is the number of rows
    /// of `token_embd.weight`, the final norm is present iff `output_norm.weight` is.
    pub fn from_gguf(f: &GgufModel) -> Result<Config, GgufError> {
        let arch = f.get_str("general.architecture")?;
        if arch != keys::ARCH {
            return Err(GgufError::WrongType {
                key: "general.architecture".into(),
                expected: "\"jarvis\"".into(),
                found: format!("\"{arch}\""),
            });
        }
        let u = |k: &str| f.get_u32(k).map(|v| v as usize);
        let emb = f.tensor("token_embd.weight")?;
        let gelu_name = f.get_str(keys::GELU)?;
        let gelu = Gelu::from_name(gelu_name).ok_or_else(|| GgufError::WrongType {
            key: keys::GELU.into(),
            expected: "\"tanh\" or \"erf\"".into(),
            found: format!("\"{gelu_name}\""),
        })?;
        let cfg = Config {
            vocab: emb.info.ne.get(1).copied().unwrap_or(1) as usize,
            d_model: u(keys::EMBEDDING_LENGTH)?,
            n_layers: u(keys::BLOCK_COUNT)?,
            n_heads: u(keys::HEAD_COUNT)?,
            d_ff: u(keys::FEED_FORWARD_LENGTH)?,
            ctx: u(keys::CONTEXT_LENGTH)?,
            eps: f.get_f32(keys::LAYER_NORM_EPS)?,
            gelu,
            final_norm: f.tensor("output_norm.weight").is_ok(),
        };
        if cfg.n_heads == 0 || !cfg.d_model.is_multiple_of(cfg.n_heads) {
            return Err(GgufError::WrongType {
                key: keys::HEAD_COUNT.into(),
                expected: format!("a divisor of embedding_length {}", cfg.d_model),
                found: cfg.n_heads.to_string(),
            });
        }
        if cfg.ctx < 2 {
            return Err(GgufError::WrongType {
                key: keys::CONTEXT_LENGTH.into(),
                expected: "at least 2".into(),
                found: cfg.ctx.to_string(),
            });
        }
        Ok(cfg)
    }
}
