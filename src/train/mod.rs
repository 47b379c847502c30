//! Training a Jarvis model from a text corpus (`jq-train`): word vocabulary, batches, the
//! hand-written backward pass, Adam, checkpoints. See `docs/TRAINING.md` for the choices
//! (hand-written backward vs candle, weight decay, schedule) and how they were checked.

pub mod backprop;
pub mod checkpoint;
pub mod data;
pub mod ops;
pub mod optim;
pub mod params;

use crate::models::jarvis::{Config, Gelu};
use data::Sampling;
use optim::{AdamConfig, DecayMode, Schedule};
use serde_json::{json, Value};

/// Everything that decides the weights a run produces (besides the corpus and the step
/// count): compared field by field on `--resume`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub model: Config,
    pub adam: AdamConfig,
    pub sampling: Sampling,
    pub batch: usize,
    pub seed: u64,
    pub unk_dropout: f64,
    pub eval_split: f64,
}

impl Settings {
    /// `(name, value)` of every field, in a stable order, as JSON values (the checkpoint's
    /// `training` object and the resume comparison both use it).
    pub fn fields(&self) -> Vec<(&'static str, Value)> {
        let m = &self.model;
        let a = &self.adam;
        vec![
            ("vocab_size", json!(m.vocab)),
            ("d_model", json!(m.d_model)),
            ("n_layers", json!(m.n_layers)),
            ("n_heads", json!(m.n_heads)),
            ("d_ff", json!(m.d_ff)),
            ("max_seq_len", json!(m.ctx)),
            ("final_norm", json!(m.final_norm)),
            ("layer_norm_eps", json!(m.eps)),
            ("optimizer", json!("adam")),
            ("lr", json!(a.lr)),
            ("lr_min", json!(a.lr_min)),
            ("warmup", json!(a.warmup)),
            ("schedule", json!(a.schedule.name())),
            ("beta1", json!(a.beta1)),
            ("beta2", json!(a.beta2)),
            ("adam_eps", json!(a.eps)),
            ("clip", json!(a.clip)),
            ("weight_decay", json!(a.weight_decay)),
            ("weight_decay_mode", json!(a.decay_mode.name())),
            (
                "weight_decay_applies_to",
                json!("matrices: embedding, output_projection, q, k, v, ffn1, ffn2 (not LayerNorm gains or biases)"),
            ),
            (
                "sampling",
                json!(match self.sampling {
                    Sampling::Documents => "documents",
                    Sampling::Packed => "packed",
                }),
            ),
            ("batch", json!(self.batch)),
            ("seed", json!(self.seed)),
            ("unk_dropout", json!(self.unk_dropout)),
            ("eval_split", json!(self.eval_split)),
        ]
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// The inverse of [`Settings::to_json`]; the error names the missing or bad field.
    pub fn from_json(v: &Value) -> Result<Settings, String> {
        let f = |k: &str| v.get(k).ok_or_else(|| format!("settings.{k} missing"));
        let u = |k: &str| {
            f(k)?
                .as_u64()
                .ok_or_else(|| format!("settings.{k} is not an integer"))
        };
        let x = |k: &str| {
            f(k)?
                .as_f64()
                .ok_or_else(|| format!("settings.{k} is not a number"))
        };
        let s = |k: &str| {
            f(k)?
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("settings.{k} is not a string"))
        };
        let b = |k: &str| {
            f(k)?
                .as_bool()
                .ok_or_else(|| format!("settings.{k} is not a boolean"))
        };
        Ok(Settings {
            model: Config {
                vocab: u("vocab_size")? as usize,
                d_model: u("d_model")? as usize,
                n_layers: u("n_layers")? as usize,
                n_heads: u("n_heads")? as usize,
                d_ff: u("d_ff")? as usize,
                ctx: u("max_seq_len")? as usize,
                eps: x("layer_norm_eps")? as f32,
                gelu: Gelu::Tanh,
                final_norm: b("final_norm")?,
            },
            adam: AdamConfig {
                lr: x("lr")?,
                lr_min: x("lr_min")?,
                warmup: u("warmup")?,
                schedule: match s("schedule")?.as_str() {
                    "constant" => Schedule::Constant,
                    "cosine" => Schedule::Cosine,
                    o => return Err(format!("settings.schedule '{o}'")),
                },
                beta1: x("beta1")?,
                beta2: x("beta2")?,
                eps: x("adam_eps")?,
                clip: x("clip")?,
                weight_decay: x("weight_decay")?,
                decay_mode: match s("weight_decay_mode")?.as_str() {
                    "decoupled" => DecayMode::Decoupled,
                    "l2" => DecayMode::L2,
                    o => return Err(format!("settings.weight_decay_mode '{o}'")),
                },
            },
            sampling: match s("sampling")?.as_str() {
                "documents" => Sampling::Documents,
                "packed" => Sampling::Packed,
                o => return Err(format!("settings.sampling '{o}'")),
            },
            batch: u("batch")? as usize,
            seed: u("seed")?,
            unk_dropout: x("unk_dropout")?,
            eval_split: x("eval_split")?,
        })
    }
}

/// Keeps freed memory in the process instead of returning it to the kernel (glibc: no mmap for
/// large blocks, no trimming). A training step frees and reallocates the same large buffers
/// every step; without this each step pays fresh page faults and kernel zeroing for them
/// (14% of a 12M step in a profile).
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tuning parameters; called before the buffers
    // it concerns exist, and valid for any value.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
