//! The native Jarvis engine behind `jq-run`: tokenize, run the prompt, sample, stream text,
//! collect metrics and timings.

use crate::gguf::GgufModel;
use crate::models::jarvis::{Generator, LayerMetrics, Model, WordTokenizer};
use crate::sample::{Sampler, SamplerConfig};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub prompt_ids: Vec<u32>,
    pub n_predict: usize,
    pub sampler: SamplerConfig,
    pub metrics: bool,
    pub dump_logits: bool,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub generated: Vec<u32>,
    pub text: String,
    /// `n_prompt x vocab`, when asked for.
    pub prompt_logits: Vec<f32>,
    pub prompt_metrics: Option<Vec<LayerMetrics>>,
    pub step_metrics: Vec<Vec<LayerMetrics>>,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    /// Forward passes run while decoding (a stop token is not run).
    pub decode_steps: usize,
    pub context_shifts: usize,
}

/// A loaded Jarvis model and its tokenizer.
#[derive(Debug)]
pub struct Jarvis<'a> {
    pub model: Model<'a>,
    pub tokenizer: WordTokenizer,
}

impl<'a> Jarvis<'a> {
    pub fn load(f: &'a GgufModel) -> Result<Jarvis<'a>> {
        Self::load_with_ctx(f, usize::MAX)
    }

    /// Loads for a context of at most `ctx` positions (see [`Model::load_with_ctx`]).
    pub fn load_with_ctx(f: &'a GgufModel, ctx: usize) -> Result<Jarvis<'a>> {
        let model = Model::load_with_ctx(f, ctx)
            .with_context(|| format!("loading Jarvis weights from {}", f.path().display()))?;
        let tokenizer = WordTokenizer::from_gguf(f)
            .with_context(|| format!("reading the vocabulary of {}", f.path().display()))?;
        if tokenizer.vocab_size() != model.cfg.vocab {
            bail!(
                "{}: {} tokens in the vocabulary but token_embd has {} rows",
                f.path().display(),
                tokenizer.vocab_size(),
                model.cfg.vocab
            );
        }
        Ok(Jarvis { model, tokenizer })
    }

    /// Runs the prompt and generates, writing text to `out` as it is produced.
    pub fn run(&self, opts: &RunOptions, out: &mut dyn Write) -> Result<RunReport> {
        let ctx = self.model.cfg.ctx;
        if opts.prompt_ids.is_empty() {
            bail!("the prompt is empty: give text with --prompt or ids with --prompt-tokens");
        }
        if opts.prompt_ids.len() > ctx {
            bail!(
                "the prompt has {} tokens but the model's context is {ctx}",
                opts.prompt_ids.len()
            );
        }
        let mut g = Generator::new(&self.model);
        let t0 = Instant::now();
        let (prompt_logits, prompt_metrics) =
            g.prompt(&opts.prompt_ids, opts.dump_logits, opts.metrics)?;
        let prompt_time = t0.elapsed();
        let mut sampler = Sampler::new(opts.sampler.clone());
        let mut text = String::new();
        let mut step_metrics = Vec::new();
        let mut io_err = None;
        let t1 = Instant::now();
        let toks = g.generate(
            &mut sampler,
            opts.n_predict,
            self.tokenizer.eos,
            opts.metrics,
            |t| {
                if let Ok(piece) = self.tokenizer.piece(t.id, false) {
                    text.push_str(&piece);
                    if io_err.is_none() {
                        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                            io_err = Some(e);
                        }
                    }
                }
                if let Some(m) = &t.metrics {
                    step_metrics.push(m.clone());
                }
            },
        )?;
        let decode_time = t1.elapsed();
        if let Some(e) = io_err {
            return Err(e).context("writing the generated text");
        }
        let generated: Vec<u32> = toks.iter().map(|t| t.id).collect();
        let decode_steps = generated
            .iter()
            .filter(|&&id| Some(id) != self.tokenizer.eos)
            .count();
        Ok(RunReport {
            generated,
            text: text.trim_start().to_string(),
            prompt_logits,
            prompt_metrics,
            step_metrics,
            prompt_time,
            decode_time,
            decode_steps,
            context_shifts: g.shifts,
        })
    }
}
