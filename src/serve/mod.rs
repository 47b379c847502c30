//! `jq-run serve`: an OpenAI- and Ollama-compatible HTTP server on one model.
//!
//! - [`worker`]: the thread that owns the engine (llama.cpp with N sequences batched
//!   together; `--stream-layers` and the native Jarvis engine one request at a time).
//! - [`api`]: request fields read and checked (errors name the field), OpenAI and Ollama.
//! - [`http`]: the routes on axum/tokio, authentication, body bound, logs, SSE and NDJSON.

pub mod api;
pub mod http;
pub mod worker;

use crate::chat::ChatTemplate;
use crate::sample::SamplerConfig;
use anyhow::Result;
use std::sync::Arc;

/// The largest request body accepted (bytes).
pub const MAX_BODY: usize = 8 << 20;

/// The tokenizer the HTTP side formats and counts with.
#[derive(Debug, Clone)]
pub enum Vocab {
    Llama(Arc<crate::engine::llama::Llama>),
    Jarvis(Arc<crate::models::jarvis::WordTokenizer>),
}

impl Vocab {
    /// Prompt text as the CLI tokenizes it (BOS as the model asks, control tokens parsed).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Vocab::Llama(l) => Ok(l.tokenize_with(text, l.model.vocab().should_add_bos(), true)),
            Vocab::Jarvis(t) => Ok(t.encode(text)?),
        }
    }

    /// Text that continues tokens already given (Ollama's `context`): no BOS.
    pub fn tokenize_more(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Vocab::Llama(l) => Ok(l.tokenize_with(text, false, true)),
            Vocab::Jarvis(t) => Ok(t.encode(text)?),
        }
    }

    pub fn n_vocab(&self) -> usize {
        match self {
            Vocab::Llama(l) => l.n_vocab(),
            Vocab::Jarvis(t) => t.vocab_size(),
        }
    }

    /// A formatted chat as tokens.
    pub fn tokenize_chat(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Vocab::Llama(l) => Ok(l.tokenize_chat(text)),
            Vocab::Jarvis(t) => Ok(t.encode(text)?),
        }
    }
}

impl worker::Pieces for crate::models::jarvis::WordTokenizer {
    fn piece(&self, id: u32) -> Vec<u8> {
        crate::models::jarvis::WordTokenizer::piece(self, id, false)
            .map(String::into_bytes)
            .unwrap_or_default()
    }
    fn is_eog(&self, id: u32) -> bool {
        Some(id) == self.eos
    }
}

/// What /v1/models, /api/tags and /api/show report.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `--alias` or the file stem.
    pub name: String,
    pub path: std::path::PathBuf,
    pub arch: String,
    pub size_bytes: u64,
    pub n_params: u64,
    /// e.g. `Q4_K_M` (from general.file_type), empty when unknown.
    pub quant: String,
    pub engine: &'static str,
}

/// Everything the HTTP side needs.
#[derive(Debug)]
pub struct Server {
    pub info: ModelInfo,
    pub vocab: Vocab,
    pub template: Option<ChatTemplate>,
    /// The template's text for /api/show.
    pub template_text: String,
    /// Positions per sequence.
    pub n_ctx: usize,
    pub defaults: SamplerConfig,
    /// Tokens a request generates when it sets no limit (`usize::MAX`: until the context ends).
    pub default_max_tokens: usize,
    pub api_key: Option<String>,
    pub jobs: std::sync::mpsc::Sender<worker::Job>,
}
