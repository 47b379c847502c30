//! The llama.cpp engine (through `llama-cpp-2`). So far: load a GGUF, tokenize, and evaluate a
//! prompt returning every position's logits, which the parity tests and benchmarks use. The
//! full `jq-run` engine (sampling, chat, device placement) comes with its issue.

use anyhow::{anyhow, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;

/// llama.cpp's backend may be initialised once per process.
pub fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let mut b = LlamaBackend::init().map_err(|e| anyhow!("initialising llama.cpp: {e}"))?;
    b.void_logs();
    Ok(BACKEND.get_or_init(|| b))
}

/// A model loaded by llama.cpp (CPU).
#[derive(Debug)]
pub struct Llama {
    pub model: LlamaModel,
}

impl Llama {
    pub fn load(path: &Path) -> Result<Llama> {
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default())
            .map_err(|e| anyhow!("llama.cpp could not load {}: {e}", path.display()))?;
        Ok(Llama { model })
    }

    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab() as usize
    }

    /// llama.cpp's own tokenizer, adding no special tokens.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// A context of `n_ctx` positions whose batches may hold the whole context.
    fn context(&self, n_ctx: u32, threads: i32) -> Result<llama_cpp_2::context::LlamaContext<'_>> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_ubatch(n_ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        self.model
            .new_context(backend()?, params)
            .map_err(|e| anyhow!("creating a llama.cpp context: {e}"))
    }

    /// Evaluates `tokens` in one batch from position 0; returns `n x vocab` logits.
    pub fn prompt_logits(&self, tokens: &[u32], n_ctx: u32, threads: i32) -> Result<Vec<f32>> {
        let n = tokens.len();
        let mut ctx = self.context(n_ctx.max(n as u32), threads)?;
        let mut batch = LlamaBatch::new(n.max(1), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), i as i32, &[0], true)
                .context("filling the batch")?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        let v = self.n_vocab();
        let mut out = Vec::with_capacity(n * v);
        for i in 0..n {
            out.extend_from_slice(&ctx.get_logits_ith(i as i32)[..v]);
        }
        Ok(out)
    }

    /// A minimal greedy decode loop straight on the bindings (the anchor the native engine is
    /// measured against): evaluate the prompt in one batch, then one token per call. Returns
    /// (prompt seconds, decode seconds, generated ids).
    pub fn greedy_decode(
        &self,
        prompt: &[u32],
        n: usize,
        n_ctx: u32,
        threads: i32,
    ) -> Result<(f64, f64, Vec<u32>)> {
        let mut ctx = self.context(n_ctx, threads)?;
        let v = self.n_vocab();
        let argmax = |l: &[f32]| {
            let mut b = 0;
            for (i, &x) in l[..v].iter().enumerate() {
                if x > l[b] {
                    b = i;
                }
            }
            b as u32
        };
        let mut batch = LlamaBatch::new(prompt.len().max(1), 1);
        let t0 = std::time::Instant::now();
        for (i, &t) in prompt.iter().enumerate() {
            batch.add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        let mut next = argmax(ctx.get_logits_ith(prompt.len() as i32 - 1));
        let prompt_s = t0.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(n);
        let t1 = std::time::Instant::now();
        for k in 0..n {
            out.push(next);
            batch.clear();
            batch.add(
                LlamaToken(next as i32),
                (prompt.len() + k) as i32,
                &[0],
                true,
            )?;
            ctx.decode(&mut batch)
                .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
            next = argmax(ctx.get_logits_ith(0));
        }
        Ok((prompt_s, t1.elapsed().as_secs_f64(), out))
    }
}
