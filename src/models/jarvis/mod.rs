//! Jarvis: the 12M-parameter word-level transformer of the seed (defined in
//! `shared/spec/jarvis.md`): configuration, word tokenizer, forward pass with a KV cache and the
//! quantum metrics, and generation with the spec's context policy.

mod config;
mod generate;
mod model;
mod tokenizer;

pub use config::{keys, Config, Gelu};
pub use generate::{Generator, Token};
pub use model::{sinusoidal_table, LayerMetrics, Metrics, MetricsAcc, Model, State, StepError};
pub use tokenizer::{attaches_left, pre_tokenize, TokenizeError, WordTokenizer};
