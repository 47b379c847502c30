//! `jq-run perplexity`: the perplexity of a text under a model, computed the way llama.cpp's
//! `llama-perplexity` computes it, and (with `--kl-base`) how far the model's next-token
//! distributions are from a base model's over the same chunks.
//!
//! The method (llama.cpp `tools/perplexity`): the whole text is tokenized once with the
//! model's special tokens (BOS when the vocabulary asks for it) and cut into
//! `n_chunk = n_tokens / n_ctx` chunks of `n_ctx` tokens (the tail is dropped; fewer than
//! `2 * n_ctx` tokens is refused). Each chunk is evaluated from an empty KV cache with its first
//! token replaced by BOS, and only its second half is scored: the logits at positions
//! `first = n_ctx / 2 .. n_ctx - 2` predict tokens `first + 1 .. n_ctx - 1`, so a chunk adds
//! `n_ctx - first - 1` terms. A term is `-log softmax(logits)[next]`, computed as llama.cpp
//! does (the maximum subtracted, `expf` summed in f64). After each chunk the running
//! perplexity `exp(sum / count)` is reported; the final estimate carries the uncertainty
//! llama.cpp prints, `ppl * sqrt(var(nll) / (count - 1))`.
//!
//! `--kl-base BASE.gguf` is our own flag (llama.cpp's `--kl-divergence-base` names a file of
//! saved base log-probabilities, rounded to 16 bits): the base model is evaluated on the same
//! chunk tokens alongside, and at every scored position we take the exact
//! `KL(base || model) = sum_i p_base(i) (log p_base(i) - log p_model(i))` (f64, no cut-off), whether
//! both models put the same token on top (llama.cpp's "same top p"), and the error of the raw
//! logits against the base's (root mean square and largest absolute difference over the whole
//! vocabulary).

use crate::engine::llama::{backend, llama_error, Llama};
use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use serde_json::json;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

/// llama-perplexity's default chunk size.
pub const DEFAULT_CTX: u32 = 512;

/// How a token stream is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Tokens per chunk (`-c`).
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunk: usize,
    /// The first position whose logits are scored.
    pub first: usize,
}

impl Chunking {
    /// llama-perplexity's chunking of `n_tokens` tokens, at most `max_chunks` chunks.
    pub fn new(n_tokens: usize, n_ctx: usize, max_chunks: Option<usize>) -> Result<Chunking> {
        if n_ctx < 4 {
            bail!("-c/--ctx-size {n_ctx}: a chunk needs at least 4 tokens");
        }
        if n_tokens < 2 * n_ctx {
            bail!(
                "the text tokenizes to {n_tokens} tokens; a context of {n_ctx} needs at least {} (lower -c/--ctx-size or give a longer text)",
                2 * n_ctx
            );
        }
        let all = n_tokens / n_ctx;
        let n_chunk = max_chunks.map_or(all, |m| m.min(all));
        if n_chunk == 0 {
            bail!("--chunks 0: nothing to evaluate");
        }
        Ok(Chunking {
            n_ctx,
            n_chunk,
            first: n_ctx / 2,
        })
    }

    /// Terms each chunk adds.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - self.first - 1
    }

    /// The tokens chunk `i` is evaluated on: its slice of the stream, the first one replaced
    /// by `bos` when the model adds one.
    pub fn chunk_input(&self, tokens: &[u32], i: usize, bos: Option<u32>) -> Vec<u32> {
        let start = i * self.n_ctx;
        let mut t = tokens[start..start + self.n_ctx].to_vec();
        if let Some(b) = bos {
            t[0] = b;
        }
        t
    }
}

/// `-log softmax(logits)[tok]` as llama.cpp's `log_softmax`: the maximum in f32, `expf` of
/// each logit minus the maximum summed in f64, `max + ln(sum) - logits[tok]`.
pub fn nll(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(logits[0], f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from((x - max).exp())).sum();
    f64::from(max) + sum.ln() - f64::from(logits[tok])
}

/// Running sums of the scored terms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllSums {
    pub sum: f64,
    pub sum2: f64,
    pub count: usize,
}

impl NllSums {
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    pub fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama.cpp's uncertainty of the final estimate (0 when it cannot be estimated).
    pub fn ppl_err(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// Running sums of the comparison with the base model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KlSums {
    pub kld: f64,
    pub kld2: f64,
    pub max_kld: f64,
    pub same_top: usize,
    pub count: usize,
    /// The base model's own -log p of the next token.
    pub base_nll: NllSums,
    /// Sum of squared logit differences, over every vocabulary entry.
    pub logit_sq: f64,
    pub logit_max: f64,
    pub n_logits: usize,
}

impl KlSums {
    /// One scored position: the model's and the base's logits.
    pub fn add(&mut self, logits: &[f32], base: &[f32], next: usize) {
        let lse = |l: &[f32]| {
            let max = l.iter().copied().fold(l[0], f32::max);
            let s: f64 = l
                .iter()
                .map(|&x| (f64::from(x) - f64::from(max)).exp())
                .sum();
            f64::from(max) + s.ln()
        };
        let (lse_m, lse_b) = (lse(logits), lse(base));
        let mut kl = 0.0;
        for (&m, &b) in logits.iter().zip(base) {
            let lb = f64::from(b) - lse_b;
            let lm = f64::from(m) - lse_m;
            kl += lb.exp() * (lb - lm);
            let d = f64::from(m) - f64::from(b);
            self.logit_sq += d * d;
            self.logit_max = self.logit_max.max(d.abs());
        }
        self.n_logits += logits.len();
        self.kld += kl;
        self.kld2 += kl * kl;
        self.max_kld = self.max_kld.max(kl);
        if argmax(logits) == argmax(base) {
            self.same_top += 1;
        }
        self.count += 1;
        self.base_nll.add(nll(base, next));
    }

    pub fn mean_kld(&self) -> f64 {
        self.kld / self.count as f64
    }

    /// Uncertainty of the mean KL divergence (llama.cpp's Gaussian estimate).
    pub fn kld_err(&self) -> f64 {
        let n = self.count as f64;
        let m = self.mean_kld();
        let var = self.kld2 / n - m * m;
        if var > 0.0 && self.count > 10 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        }
    }

    pub fn same_top(&self) -> f64 {
        self.same_top as f64 / self.count as f64
    }

    pub fn logit_rms(&self) -> f64 {
        (self.logit_sq / self.n_logits as f64).sqrt()
    }
}

/// The first index of the largest value (llama.cpp's strict `>` scan).
pub fn argmax(l: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best
}

/// A llama.cpp context that evaluates one chunk at a time from an empty cache, computing
/// logits only for the scored positions.
pub struct ChunkEval<'m> {
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_vocab: usize,
}

impl std::fmt::Debug for ChunkEval<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEval")
            .field("n_batch", &self.n_batch)
            .finish_non_exhaustive()
    }
}

impl<'m> ChunkEval<'m> {
    pub fn new(llama: &'m Llama, n_ctx: u32, n_batch: u32, threads: i32) -> Result<Self> {
        let n_batch = n_batch.clamp(1, n_ctx);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        crate::engine::logs::take_errors();
        let ctx = llama.model.new_context(backend()?, params).map_err(|e| {
            anyhow!(
                "creating a llama.cpp context of {n_ctx} positions: {}",
                llama_error(e)
            )
        })?;
        Ok(ChunkEval {
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_vocab: llama.n_vocab(),
        })
    }

    /// Evaluates `tokens` at positions 0.. and returns the logits of positions `first..`
    /// (`(tokens.len() - first) x n_vocab`).
    pub fn logits_from(&mut self, tokens: &[u32], first: usize) -> Result<Vec<f32>> {
        self.ctx.clear_kv_cache();
        let v = self.n_vocab;
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(first) * v);
        for (b, chunk) in tokens.chunks(self.n_batch).enumerate() {
            let base = b * self.n_batch;
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                self.batch
                    .add(
                        LlamaToken(t as i32),
                        (base + i) as i32,
                        &[0],
                        base + i >= first,
                    )
                    .context("filling the batch")?;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| anyhow!("llama.cpp decode failed at position {base}: {e}"))?;
            for i in 0..chunk.len() {
                if base + i >= first {
                    out.extend_from_slice(&self.ctx.get_logits_ith(i as i32)[..v]);
                }
            }
        }
        Ok(out)
    }
}

/// What scores a chunk: the logits of positions `first..` of `tokens` evaluated from an empty
/// cache, `(tokens.len() - first) x n_vocab`.
pub trait Scorer {
    fn logits_from(&mut self, tokens: &[u32], first: usize) -> Result<Vec<f32>>;
}

impl Scorer for ChunkEval<'_> {
    fn logits_from(&mut self, tokens: &[u32], first: usize) -> Result<Vec<f32>> {
        ChunkEval::logits_from(self, tokens, first)
    }
}

/// A Jarvis model on the native engine: each chunk is one prefill from an empty state with
/// every position's logits kept.
#[derive(Debug)]
pub struct JarvisScorer<'a>(pub &'a crate::engine::native::Jarvis<'a>);

impl Scorer for JarvisScorer<'_> {
    fn logits_from(&mut self, tokens: &[u32], first: usize) -> Result<Vec<f32>> {
        let m = &self.0.model;
        let mut st = m.new_state();
        let mut all = Vec::with_capacity(tokens.len() * m.cfg.vocab);
        m.prefill(&mut st, tokens, None, Some(&mut all))
            .map_err(|e| anyhow!("the native engine: {e}"))?;
        Ok(all.split_off(first * m.cfg.vocab))
    }
}

/// One chunk's figures, running over every chunk so far (as llama-perplexity prints them).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkReport {
    /// 1-based.
    pub chunk: usize,
    pub ppl: f64,
    /// This chunk's own perplexity.
    pub chunk_ppl: f64,
    pub kl: Option<KlSums>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub n_tokens: usize,
    pub chunking: Chunking,
    pub nll: NllSums,
    pub chunks: Vec<ChunkReport>,
    pub kl: Option<KlSums>,
}

/// Scores `tokens` (the whole text, tokenized as llama-perplexity does) under `model`, and
/// against `base` when given. `on_chunk` sees each chunk's report as it is done.
pub fn evaluate(
    model: &Llama,
    base: Option<&Llama>,
    tokens: &[u32],
    chunking: Chunking,
    n_batch: u32,
    threads: i32,
    on_chunk: impl FnMut(&ChunkReport) -> Result<()>,
) -> Result<Report> {
    let n_ctx = chunking.n_ctx as u32;
    let vocab = model.model.vocab();
    let bos = vocab.should_add_bos().then(|| vocab.bos().0 as u32);
    let mut eval = ChunkEval::new(model, n_ctx, n_batch, threads)?;
    let mut base_eval = match base {
        Some(b) => Some(ChunkEval::new(b, n_ctx, n_batch, threads)?),
        None => None,
    };
    evaluate_with(
        &mut eval,
        base_eval.as_mut().map(|e| e as &mut dyn Scorer),
        model.n_vocab(),
        bos,
        tokens,
        chunking,
        on_chunk,
    )
}

/// [`evaluate`] with any scorers of `v`-token vocabularies; `bos` replaces the first token of
/// every chunk when given.
pub fn evaluate_with(
    eval: &mut dyn Scorer,
    mut base_eval: Option<&mut dyn Scorer>,
    v: usize,
    bos: Option<u32>,
    tokens: &[u32],
    chunking: Chunking,
    mut on_chunk: impl FnMut(&ChunkReport) -> Result<()>,
) -> Result<Report> {
    let first = chunking.first;
    let mut sums = NllSums::default();
    let mut kl = base_eval.as_ref().map(|_| KlSums::default());
    let mut chunks = Vec::with_capacity(chunking.n_chunk);
    for i in 0..chunking.n_chunk {
        let input = chunking.chunk_input(tokens, i, bos);
        let logits = eval.logits_from(&input, first)?;
        let base_logits = match base_eval.as_mut() {
            Some(e) => Some(
                e.logits_from(&input, first)
                    .context("evaluating the --kl-base model")?,
            ),
            None => None,
        };
        let mut own = NllSums::default();
        for j in 0..chunking.scored_per_chunk() {
            let row = &logits[j * v..(j + 1) * v];
            let next = input[first + j + 1] as usize;
            let x = nll(row, next);
            sums.add(x);
            own.add(x);
            if let (Some(k), Some(b)) = (kl.as_mut(), &base_logits) {
                k.add(row, &b[j * v..(j + 1) * v], next);
            }
        }
        let r = ChunkReport {
            chunk: i + 1,
            ppl: sums.ppl(),
            chunk_ppl: own.ppl(),
            kl,
        };
        on_chunk(&r)?;
        chunks.push(r);
    }
    Ok(Report {
        n_tokens: tokens.len(),
        chunking,
        nll: sums,
        chunks,
        kl,
    })
}

/// `jq-run perplexity MODEL -f TEXT [flags]`.
#[derive(clap::Args, Debug)]
pub struct Cli {
    /// The GGUF model (or -m/--model).
    #[arg(value_name = "MODEL", required_unless_present = "model_opt")]
    model_pos: Option<PathBuf>,
    /// The GGUF model, as llama.cpp's tools name it.
    #[arg(
        short = 'm',
        long = "model",
        value_name = "MODEL",
        conflicts_with = "model_pos"
    )]
    model_opt: Option<PathBuf>,
    /// The text to score (read whole; one trailing newline is dropped, as llama.cpp's -f does).
    #[arg(short = 'f', long = "file", value_name = "TEXT")]
    pub file: PathBuf,
    /// Tokens per chunk (llama-perplexity's default 512); the second half of each is scored.
    #[arg(short = 'c', long = "ctx-size", default_value_t = DEFAULT_CTX)]
    pub ctx_size: u32,
    /// Evaluate at most this many chunks (default: every whole chunk of the text).
    #[arg(long = "chunks", value_name = "N")]
    pub chunks: Option<usize>,
    /// A base model (same vocabulary) to compare against: KL divergence, top-1 agreement and
    /// logit error over the same chunks.
    #[arg(long = "kl-base", value_name = "BASE.gguf")]
    pub kl_base: Option<PathBuf>,
    /// Tokens per graph (default: the whole chunk, at most 2048).
    #[arg(short = 'b', long = "batch-size")]
    pub batch_size: Option<u32>,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Layers to offload to a GPU (default 0: the CPU; ignored without one).
    #[arg(long = "n-gpu-layers", short = 'g', default_value_t = 0)]
    pub n_gpu_layers: u32,
    /// One JSON object on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Print llama.cpp's and ggml's own log lines on stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

pub const EXAMPLES: &str = "Examples:
  jq-run perplexity gemma3-q4_k_m.gguf -f wiki.test.raw
  jq-run perplexity gemma3-q4_k_m.gguf -f wiki.test.raw -c 256 --chunks 20
  jq-run perplexity gemma3-q4_k_m.gguf -f wiki.test.raw --kl-base gemma3-f16.gguf
  jq-run perplexity -m model.gguf -f text.txt --json
  jq-run perplexity jarvis.gguf -f corpus.txt -c 64        # Jarvis: the native engine

stdout: one line per chunk ([chunk] running PPL, the chunk's own PPL, and with --kl-base the
running mean KL divergence, top-1 agreement and logit RMS error), then the final estimate;
with --json one object instead. The text must hold at least 2 x -c tokens.";

impl Cli {
    pub fn model(&self) -> &Path {
        self.model_opt
            .as_deref()
            .or(self.model_pos.as_deref())
            .unwrap_or(Path::new(""))
    }
}

/// Opens and checks a GGUF file as jq-run does before any engine sees it; `what` names it in
/// errors ("the model", "--kl-base").
fn open_gguf(path: &Path, what: &str) -> Result<crate::gguf::GgufModel> {
    if !path.is_file() {
        bail!("{what} {}: no such file", path.display());
    }
    let file = crate::gguf::GgufModel::open(path)
        .map_err(|e| anyhow!("{what} {}: not a readable GGUF file: {e}", path.display()))?;
    crate::validate::check(&file).map_err(|e| anyhow!("{what} {}: {e}", path.display()))?;
    Ok(file)
}

fn arch(file: &crate::gguf::GgufModel, what: &str) -> Result<String> {
    file.get_str("general.architecture")
        .map(str::to_string)
        .map_err(|e| anyhow!("{what} {}: {e}", file.path().display()))
}

/// Loads an opened file into llama.cpp, refusing an architecture it does not run.
fn llama_from(file: crate::gguf::GgufModel, what: &str, n_gpu_layers: u32) -> Result<Llama> {
    let arch = arch(&file, what)?;
    if !crate::engine::LLAMA_ARCHS.contains(&arch.as_str()) {
        bail!(
            "{what} {}: architecture '{arch}' is not supported by perplexity (llama.cpp runs {}; the native engine runs jarvis)",
            file.path().display(),
            crate::engine::LLAMA_ARCHS.join(", ")
        );
    }
    let first = file.path().to_path_buf();
    drop(file);
    Llama::load_with(&first, n_gpu_layers)
}

/// Runs the subcommand.
pub fn main(cli: &Cli) -> Result<()> {
    if cli.verbose {
        crate::engine::logs::set_verbose(true);
    }
    let path = cli.model();
    let mut text = std::fs::read(&cli.file)
        .with_context(|| format!("-f {}: cannot read the text", cli.file.display()))?;
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    let text = String::from_utf8(text)
        .map_err(|e| anyhow!("-f {}: not UTF-8 text: {e}", cli.file.display()))?;
    let file = open_gguf(path, "the model")?;
    if arch(&file, "the model")? == crate::models::jarvis::keys::ARCH {
        return main_jarvis(cli, &text, file);
    }
    let model = llama_from(file, "the model", cli.n_gpu_layers)?;
    let trained = model.n_ctx_train();
    if trained > 0 && cli.ctx_size > trained {
        bail!(
            "-c/--ctx-size {} is larger than the model's trained context of {trained} tokens",
            cli.ctx_size
        );
    }
    let base = match &cli.kl_base {
        Some(b) => {
            let l = llama_from(open_gguf(b, "--kl-base")?, "--kl-base", cli.n_gpu_layers)?;
            if l.n_vocab() != model.n_vocab() {
                bail!(
                    "--kl-base {}: its vocabulary has {} tokens, the model's {}",
                    b.display(),
                    l.n_vocab(),
                    model.n_vocab()
                );
            }
            Some(l)
        }
        None => None,
    };
    // llama-perplexity: common_tokenize(text, add_special = true, parse_special = false).
    let tokens = model.tokenize_with(&text, true, false);
    let chunking = Chunking::new(tokens.len(), cli.ctx_size as usize, cli.chunks)?;
    let n_batch = cli.batch_size.unwrap_or(2048).min(cli.ctx_size);
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        as i32;
    announce(&tokens, &chunking);
    let mut out = std::io::stdout().lock();
    let json = cli.json;
    let report = evaluate(
        &model,
        base.as_ref(),
        &tokens,
        chunking,
        n_batch,
        threads,
        |r| print_chunk(&mut out, json, r),
    )?;
    print_report(&mut out, json, &report)
}

fn announce(tokens: &[u32], chunking: &Chunking) {
    eprintln!(
        "perplexity: {} tokens, {} chunks of {}, scoring positions {}..{} of each",
        tokens.len(),
        chunking.n_chunk,
        chunking.n_ctx,
        chunking.first + 1,
        chunking.n_ctx - 1
    );
}

/// Refuses a Jarvis file whose trained context is shorter than the chunks.
fn check_jarvis_ctx(file: &crate::gguf::GgufModel, what: &str, n_ctx: usize) -> Result<()> {
    let trained = file
        .get_u32(crate::models::jarvis::keys::CONTEXT_LENGTH)
        .map_err(|e| anyhow!("{what} {}: {e}", file.path().display()))? as usize;
    if n_ctx > trained {
        bail!(
            "-c/--ctx-size {n_ctx} is larger than the model's trained context of {trained} tokens"
        );
    }
    Ok(())
}

/// The native engine's path: Jarvis's word tokenizer (no BOS: the model has none), every chunk
/// one prefill.
fn main_jarvis(cli: &Cli, text: &str, file: crate::gguf::GgufModel) -> Result<()> {
    use crate::engine::native::Jarvis;
    let n_ctx = cli.ctx_size as usize;
    check_jarvis_ctx(&file, "the model", n_ctx)?;
    let model = Jarvis::load_with_ctx(&file, n_ctx)?;
    let base_file = match &cli.kl_base {
        Some(b) => {
            let f = open_gguf(b, "--kl-base")?;
            if arch(&f, "--kl-base")? != crate::models::jarvis::keys::ARCH {
                bail!(
                    "--kl-base {}: not a Jarvis model (the model is one; both must be)",
                    b.display()
                );
            }
            check_jarvis_ctx(&f, "--kl-base", n_ctx)?;
            Some(f)
        }
        None => None,
    };
    let base = match &base_file {
        Some(f) => {
            let j = Jarvis::load_with_ctx(f, n_ctx)?;
            if j.tokenizer.tokens() != model.tokenizer.tokens() {
                bail!(
                    "--kl-base {}: its vocabulary differs from the model's",
                    f.path().display()
                );
            }
            Some(j)
        }
        None => None,
    };
    if let Some(t) = cli.threads {
        // The native engine's team has rayon's thread count; an error means a pool exists.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    let tokens = model
        .tokenizer
        .encode(text)
        .map_err(|e| anyhow!("-f {}: {e}", cli.file.display()))?;
    let chunking = Chunking::new(tokens.len(), n_ctx, cli.chunks)?;
    announce(&tokens, &chunking);
    let mut out = std::io::stdout().lock();
    let json = cli.json;
    let mut eval = JarvisScorer(&model);
    let mut base_eval = base.as_ref().map(JarvisScorer);
    let report = evaluate_with(
        &mut eval,
        base_eval.as_mut().map(|e| e as &mut dyn Scorer),
        model.model.cfg.vocab,
        None,
        &tokens,
        chunking,
        |r| print_chunk(&mut out, json, r),
    )?;
    print_report(&mut out, json, &report)
}

fn print_chunk(out: &mut impl Write, json: bool, r: &ChunkReport) -> Result<()> {
    if json {
        return Ok(());
    }
    write!(
        out,
        "[{}] ppl {:.4} (chunk {:.4})",
        r.chunk, r.ppl, r.chunk_ppl
    )?;
    if let Some(k) = &r.kl {
        write!(
            out,
            "  kld {:.6}  same-top {:.3}%  logit-rms {:.5}",
            k.mean_kld(),
            100.0 * k.same_top(),
            k.logit_rms()
        )?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn print_report(out: &mut impl Write, json: bool, report: &Report) -> Result<()> {
    if json {
        writeln!(out, "{}", report_json(report))?;
        return Ok(());
    }
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}",
        report.nll.ppl(),
        report.nll.ppl_err()
    )?;
    if let Some(k) = &report.kl {
        writeln!(
                out,
                "PPL(base) = {:.4}  ln(PPL/PPL(base)) = {:.6}\nMean KLD = {:.6} +/- {:.6}  max {:.6}\nSame top = {:.3}%\nLogit error: RMS {:.6}, max {:.6}",
                k.base_nll.ppl(),
                (report.nll.sum - k.base_nll.sum) / k.count as f64,
                k.mean_kld(),
                k.kld_err(),
                k.max_kld,
                100.0 * k.same_top(),
                k.logit_rms(),
                k.logit_max
            )?;
    }
    Ok(())
}

/// The `--json` object.
pub fn report_json(r: &Report) -> serde_json::Value {
    let kl = |k: &KlSums| {
        json!({
            "kld": k.mean_kld(),
            "kld_err": k.kld_err(),
            "kld_max": k.max_kld,
            "same_top": k.same_top(),
            "logit_rms": k.logit_rms(),
            "logit_max": k.logit_max,
            "ppl_base": k.base_nll.ppl(),
        })
    };
    json!({
        "n_tokens": r.n_tokens,
        "n_ctx": r.chunking.n_ctx,
        "n_chunk": r.chunking.n_chunk,
        "scored": r.nll.count,
        "ppl": r.nll.ppl(),
        "ppl_err": r.nll.ppl_err(),
        "chunks": r.chunks.iter().map(|c| {
            let mut o = json!({"chunk": c.chunk, "ppl": c.ppl, "chunk_ppl": c.chunk_ppl});
            if let Some(k) = &c.kl {
                o["kl"] = kl(k);
            }
            o
        }).collect::<Vec<_>>(),
        "kl": r.kl.as_ref().map(kl),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_as_llama_perplexity() {
        assert!(Chunking::new(1023, 512, None).is_err());
        let c = Chunking::new(1600, 512, None).unwrap();
        assert_eq!((c.n_chunk, c.first, c.scored_per_chunk()), (3, 256, 255));
        assert_eq!(Chunking::new(1600, 512, Some(2)).unwrap().n_chunk, 2);
        let toks: Vec<u32> = (10..30).collect();
        let c = Chunking::new(20, 8, None).unwrap();
        assert_eq!(
            c.chunk_input(&toks, 1, Some(2)),
            vec![2, 19, 20, 21, 22, 23, 24, 25]
        );
        assert_eq!(c.chunk_input(&toks, 1, None)[0], 18);
    }

    #[test]
    fn nll_is_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((nll(&l, 0) - (z.ln() - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn kl_of_identical_is_zero() {
        let l = [0.5f32, -1.0, 2.0, 0.0];
        let mut k = KlSums::default();
        k.add(&l, &l, 2);
        assert!(k.mean_kld().abs() < 1e-12);
        assert_eq!((k.same_top, k.logit_max), (1, 0.0));
        let m = [2.5f32, -1.0, 2.0, 0.0];
        k.add(&m, &l, 2);
        assert_eq!(k.same_top, 1);
        assert_eq!(k.logit_max, 2.0);
    }
}
