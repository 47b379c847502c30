//! jq: a native GGML/GGUF runtime.
//!
//! Data flows one way: bytes on disk -> [`gguf`] (validated views) -> [`quant`] (codecs) ->
//! engines -> tokens. The FFI to ggml used as the independent reference lives in [`ggml`].

pub mod arch;
pub mod chat;
pub mod engine;
pub mod errors;
pub mod fastmath;
pub mod ggml;
pub mod gguf;
pub mod models;
pub mod npy;
pub mod npz;
pub mod output;
pub mod perplexity;
pub mod quant;
pub mod sample;
pub mod serve;
pub mod synth;
pub mod synth_blocks;
pub mod term;
pub mod train;
pub mod validate;
