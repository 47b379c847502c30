//! The llama.cpp engine (through `llama-cpp-2`): every architecture llama.cpp loads.
//!
//! [`Llama`] is a loaded model (placed by [`super::plan`]); [`Session`] is a context with its
//! KV cache, a sampler chain built from the same flags as the native engine (llama.cpp's own
//! samplers: repetition penalty, top-k, top-p, temperature, seeded draw), prompt evaluation in
//! batches (optionally keeping every position's logits), and token-by-token generation that
//! hands each piece to the caller as soon as it is sampled. Chat formatting uses the GGUF's
//! `tokenizer.chat_template` through llama.cpp's template engine.
//!
//! The per-token path is deliberately thin (decode one token, sample with llama.cpp's chain,
//! copy the piece): `cargo bench --bench llama_overhead` holds it against a minimal loop
//! written straight on the bindings.

use crate::sample::SamplerConfig;
use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// llama.cpp's backend may be initialised once per process. Its logs go through
/// [`super::logs`]: captured (the error lines explain a failed load), printed only with
/// `-v/--verbose` or `JQ_LLAMA_LOG=1`.
pub fn backend() -> Result<&'static LlamaBackend> {
    // Initialised under the OnceLock's own lock: two threads asking at once must not both
    // call llama_backend_init (the second would fail).
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            #[cfg(feature = "dynamic-backends")]
            load_backend_modules();
            super::logs::install();
            LlamaBackend::init().map_err(|e| format!("initialising llama.cpp: {e}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// llama.cpp's own reason for the failure just reported as `e` (its last error log line), or
/// `e` itself.
pub fn llama_error(e: impl std::fmt::Display) -> String {
    match super::logs::last_error() {
        Some(line) => line,
        None => e.to_string(),
    }
}

/// Loads ggml's backend modules (the best CPU variant for this machine, CUDA where its module
/// is there) from `$JQ_BACKENDS_DIR`, else from the executable's own folder.
#[cfg(feature = "dynamic-backends")]
fn load_backend_modules() {
    let dir = std::env::var_os("JQ_BACKENDS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(|p| p.to_path_buf())
        });
    if let Some(d) = dir {
        llama_cpp_2::llama_backend::load_backends_from_path(&d);
    }
}

/// GPUs llama.cpp can offload to (CUDA and the like; empty in a CPU build or without a driver).
pub fn gpus() -> Vec<super::plan::Gpu> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    if backend().is_err() {
        return Vec::new();
    }
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, T::Gpu | T::IntegratedGpu))
        .map(|d| super::plan::Gpu {
            name: d.name,
            description: d.description,
            free: d.memory_free as u64,
            total: d.memory_total as u64,
        })
        .collect()
}

/// An explicit device placement for [`Llama::load_placed`].
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub n_gpu_layers: u32,
    pub devices: Vec<llama_cpp_sys_2::ggml_backend_dev_t>,
    pub split: Vec<f32>,
    pub extra_bufts: bool,
}

/// Local GPUs as devices of an explicit placement, in llama.cpp's order.
pub fn gpu_devices() -> Vec<(
    super::placement::Device,
    llama_cpp_sys_2::ggml_backend_dev_t,
)> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    if backend().is_err() {
        return Vec::new();
    }
    llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, T::Gpu | T::IntegratedGpu))
        .map(|d| {
            (
                super::placement::Device {
                    name: d.name,
                    endpoint: None,
                    free: d.memory_free as u64,
                },
                // SAFETY: the index comes from ggml's own device list.
                unsafe { llama_cpp_sys_2::ggml_backend_dev_get(d.index) },
            )
        })
        .collect()
}

/// A model loaded by llama.cpp.
#[derive(Debug)]
pub struct Llama {
    pub model: LlamaModel,
}

/// llama.cpp's sampler chain for these settings, in llama.cpp's own order: penalties, top-k,
/// top-p, min-p, temperature, then a seeded draw (or the argmax when greedy). The seed is reduced to
/// the 32 bits llama.cpp takes.
pub fn sampler_chain(s: &SamplerConfig, n_vocab: usize) -> LlamaSampler {
    let mut chain = Vec::new();
    if s.repeat_penalty != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab as i32,
            s.repeat_last_n as i32,
            s.repeat_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k as i32));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed as u32));
    }
    LlamaSampler::chain_simple(chain)
}

/// Whether [`sampler_chain`] for `s` is llama.cpp's greedy sampler alone (no penalties):
/// then the pick is the first largest logit, which callers may take without the chain (it
/// keeps no state) and without building its 12-bytes-per-token candidates array.
pub fn plain_greedy(s: &SamplerConfig) -> bool {
    s.temperature <= 0.0
        && s.repeat_penalty == 1.0
        && s.frequency_penalty == 0.0
        && s.presence_penalty == 0.0
}

/// llama.cpp's sampler chain ([`sampler_chain`]) over logits that jq computed (the
/// `--stream-layers` executor): the candidates array `llama_sampler_sample` builds from a
/// context's logits (every id in order, unsorted), the same chain applied to it and the chosen
/// token accepted, so the same flags and seed pick the same tokens as the llama.cpp engine.
pub struct ChainSampler {
    chain: LlamaSampler,
    cur: Vec<LlamaTokenData>,
    greedy: bool,
}

impl std::fmt::Debug for ChainSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSampler").finish_non_exhaustive()
    }
}

impl ChainSampler {
    /// The chain for `s`, with `history` (the prompt) accepted as [`Session::eval`] does.
    pub fn new(s: &SamplerConfig, n_vocab: usize, history: &[u32]) -> ChainSampler {
        let mut chain = sampler_chain(s, n_vocab);
        chain.accept_many(history.iter().map(|&t| LlamaToken(t as i32)));
        ChainSampler {
            chain,
            cur: Vec::new(),
            greedy: plain_greedy(s),
        }
    }

    /// Picks (and accepts) the next token from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.greedy {
            return crate::sample::argmax(logits) as u32;
        }
        let mut cur = std::mem::take(&mut self.cur);
        cur.clear();
        cur.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)),
        );
        let mut arr = LlamaTokenDataArray::new(cur, false);
        arr.apply_sampler(&mut self.chain);
        let tok = arr
            .selected_token()
            .or_else(|| arr.data.first().map(LlamaTokenData::id))
            .unwrap_or(LlamaToken(0));
        self.chain.accept(tok);
        self.cur = arr.data;
        tok.0 as u32
    }
}

impl Llama {
    /// Loads on the CPU.
    pub fn load(path: &Path) -> Result<Llama> {
        Self::load_with(path, 0)
    }

    /// Loads with the last `n_gpu_layers` layers on the GPU (ignored without one).
    pub fn load_with(path: &Path, n_gpu_layers: u32) -> Result<Llama> {
        let params = LlamaModelParams::default().with_n_gpu_layers(n_gpu_layers);
        let backend = backend()?;
        super::logs::take_errors();
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| {
            anyhow!(
                "llama.cpp could not load {}: {}",
                path.display(),
                llama_error(e)
            )
        })?;
        Ok(Llama { model })
    }

    /// Loads with an explicit placement: `devices` (llama.cpp's list; the CPU is implicit),
    /// the last `n_gpu_layers` layers on them in `split` shares, and the CPU's extra buffer
    /// types (repacked weights, AMX) only with `extra_bufts`. llama-cpp-2 exposes neither the
    /// split nor the extra buffer types, so the raw parameters are filled here.
    pub fn load_placed(path: &Path, p: &Placement) -> Result<Llama> {
        use llama_cpp_sys_2 as sys;
        backend()?;
        if p.devices.len() >= 16 || p.split.len() > 16 {
            bail!("more than 15 devices");
        }
        let mut devs = p.devices.clone();
        devs.push(std::ptr::null_mut());
        let devices = if p.devices.is_empty() {
            // llama.cpp's own choice of devices
            std::ptr::null_mut()
        } else {
            devs.as_mut_ptr()
        };
        // llama.cpp reads llama_max_devices() shares.
        // SAFETY: a plain query.
        let mut split = vec![0f32; unsafe { sys::llama_max_devices() }.max(p.split.len())];
        split[..p.split.len()].copy_from_slice(&p.split);
        // SAFETY: returns a plain struct of defaults.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = i32::try_from(p.n_gpu_layers).unwrap_or(i32::MAX);
        params.devices = devices;
        params.tensor_split = if p.split.is_empty() {
            std::ptr::null()
        } else {
            split.as_ptr()
        };
        params.use_extra_bufts = p.extra_bufts;
        let c = std::ffi::CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| anyhow!("{}: the path holds a NUL byte", path.display()))?;
        super::logs::take_errors();
        // SAFETY: `params` points at `devs` and `split`, which outlive the call (llama.cpp
        // copies both); the path is a valid C string.
        let raw = unsafe { sys::llama_model_load_from_file(c.as_ptr(), params) };
        let Some(raw) = std::ptr::NonNull::new(raw) else {
            bail!(
                "llama.cpp could not load {}: {}",
                path.display(),
                llama_error("null result")
            );
        };
        // llama-cpp-2 has no constructor from a raw model; `LlamaModel` (pinned =0.1.160) is
        // one non-null pointer to it, owned (freed on drop).
        const _: () = assert!(
            std::mem::size_of::<LlamaModel>() == std::mem::size_of::<*mut sys::llama_model>()
        );
        // SAFETY: the sizes match (asserted) and the single field of `LlamaModel` is a
        // `#[repr(transparent)]` NonNull<llama_model>, so the bit patterns agree; the model is
        // handed over and freed once, by LlamaModel's Drop.
        let model: LlamaModel = unsafe { std::mem::transmute(raw) };
        Ok(Llama { model })
    }

    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab() as usize
    }

    pub fn n_ctx_train(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// llama.cpp's own tokenizer, adding no special tokens.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.tokenize_with(text, false, false)
    }

    /// llama.cpp's tokenizer: `add_special` adds BOS (and EOS) as the model asks,
    /// `parse_special` turns control-token text such as `<start_of_turn>` into its id.
    pub fn tokenize_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_special, parse_special)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect()
    }

    /// The bytes of one token (control tokens render as nothing).
    pub fn piece(&self, id: u32) -> Vec<u8> {
        self.model
            .vocab()
            .token_to_piece(LlamaToken(id as i32), false, None)
    }

    /// End of generation (EOS, end of turn, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.model.vocab().is_eog(LlamaToken(id as i32))
    }

    /// The GGUF's `tokenizer.chat_template`, if any.
    pub fn chat_template(&self) -> Option<String> {
        self.model
            .chat_template(None)
            .ok()
            .and_then(|t| t.to_string().ok())
    }

    /// The text of a special token (`<bos>`, `</s>`), as a Jinja template names it.
    pub fn special_text(&self, t: LlamaToken) -> String {
        String::from_utf8_lossy(&self.model.vocab().token_to_piece(t, true, None)).into_owned()
    }

    /// The chat template for `--chat-template` (a built-in name or a Jinja file) or else the
    /// GGUF's own; `None` when there is neither.
    pub fn template(&self, flag: Option<&str>) -> Result<Option<crate::chat::ChatTemplate>> {
        let v = self.model.vocab();
        crate::chat::ChatTemplate::resolve(
            flag,
            self.chat_template().as_deref(),
            &self.special_text(v.bos()),
            &self.special_text(v.eos()),
        )
    }

    /// Formats a conversation of `(role, content)` turns with the model's chat template
    /// (llama.cpp's template engine). `add_assistant` opens the model's turn at the end.
    pub fn format_chat(&self, turns: &[(String, String)], add_assistant: bool) -> Result<String> {
        let tmpl = self
            .model
            .chat_template(None)
            .map_err(|_| anyhow!("the model has no tokenizer.chat_template: --chat needs one"))?;
        let msgs = turns
            .iter()
            .map(|(r, c)| LlamaChatMessage::new(r.clone(), c.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("a chat message holds a NUL byte: {e}"))?;
        self.model
            .apply_chat_template(&tmpl, &msgs, add_assistant)
            .map_err(|e| anyhow!("llama.cpp cannot apply this model's chat template: {e}"))
    }

    /// A bare llama.cpp context: `n_ctx` positions, batches (and ubatches) of `n_batch`.
    fn context(&self, n_ctx: u32, n_batch: u32, threads: i32) -> Result<LlamaContext<'_>> {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        self.model
            .new_context(backend()?, params)
            .map_err(|e| anyhow!("creating a llama.cpp context of {n_ctx} positions: {e}"))
    }

    /// A context holding `n_seq` sequences of `n_ctx_seq` positions each (separate KV
    /// streams, so one sequence's length never limits another's), batches of `n_batch`;
    /// sliding-window layers' cache at full size with `swa_full`, else window-sized as
    /// llama-server's default (`common_params::swa_full = false`).
    pub fn multi_context(
        &self,
        n_ctx_seq: u32,
        n_seq: u32,
        n_batch: u32,
        threads: i32,
        swa_full: bool,
    ) -> Result<LlamaContext<'_>> {
        let total = n_ctx_seq
            .checked_mul(n_seq)
            .ok_or_else(|| anyhow!("--parallel {n_seq} x -c {n_ctx_seq} positions overflow"))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(total))
            .with_n_seq_max(n_seq)
            .with_kv_unified(false)
            .with_swa_full(swa_full)
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        super::logs::take_errors();
        let mut ctx = self.model.new_context(backend()?, params).map_err(|e| {
            anyhow!(
                "creating a llama.cpp context of {n_seq} x {n_ctx_seq} positions: {}",
                llama_error(e)
            )
        })?;
        // As llama-server's start-up: one decode before the first request, so the weights'
        // pages are mapped and the graph's buffers allocated then, not in its first token.
        let mut batch = LlamaBatch::new(1, 1);
        let bos = self.model.vocab().bos();
        let tok = if bos.0 >= 0 { bos } else { LlamaToken(0) };
        batch.add(tok, 0, &[0], true)?;
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode (warm-up): {e}"))?;
        ctx.clear_kv_cache();
        Ok(ctx)
    }

    /// llama.cpp's tokenizer without the weights (a vocab-only load reads no tensor data).
    pub fn load_vocab(path: &Path) -> Result<Llama> {
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend()?, path, &params).map_err(|e| {
            anyhow!(
                "llama.cpp could not read the vocabulary of {}: {}",
                path.display(),
                llama_error(e)
            )
        })?;
        Ok(Llama { model })
    }

    /// A formatted chat as tokens: BOS as the model asks unless the template wrote it.
    pub fn tokenize_chat(&self, text: &str) -> Vec<u32> {
        let v = self.model.vocab();
        let bos = self.special_text(v.bos());
        let add = v.should_add_bos() && (bos.is_empty() || !text.starts_with(&bos));
        self.tokenize_with(text, add, true)
    }

    /// A context of `n_ctx` positions, batches of up to `n_batch` tokens.
    pub fn session(
        &self,
        n_ctx: u32,
        n_batch: u32,
        threads: i32,
        s: &SamplerConfig,
    ) -> Result<Session<'_>> {
        let n_batch = n_batch.clamp(1, n_ctx.max(1));
        let ctx = self.context(n_ctx, n_batch, threads)?;
        Ok(Session {
            llama: self,
            ctx,
            batch: LlamaBatch::new(n_batch as usize, 1),
            sampler: sampler_chain(s, self.n_vocab()),
            n_past: 0,
            n_ctx,
            n_batch,
            last_logits_index: -1,
            prompt_time: Duration::ZERO,
            decode_time: Duration::ZERO,
            prompt_tokens: 0,
            decode_tokens: 0,
        })
    }

    /// Evaluates `tokens` from position 0 and returns `n x vocab` logits (the parity tests'
    /// and benchmarks' entry point).
    pub fn prompt_logits(&self, tokens: &[u32], n_ctx: u32, threads: i32) -> Result<Vec<f32>> {
        let n = tokens.len() as u32;
        let mut sess = self.session(n_ctx.max(n), n.max(1), threads, &SamplerConfig::greedy())?;
        sess.eval(tokens, true)
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
        // llama.cpp aborts on a batch over n_batch (= n_ctx here): refuse it first.
        if prompt.is_empty() || prompt.len() + n > n_ctx as usize {
            bail!(
                "a prompt of {} tokens and {n} more do not fit a context of {n_ctx}",
                prompt.len()
            );
        }
        let mut ctx = self.context(n_ctx, n_ctx, threads)?;
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
        let t0 = Instant::now();
        for (i, &t) in prompt.iter().enumerate() {
            batch.add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        let mut next = argmax(ctx.get_logits_ith(prompt.len() as i32 - 1));
        let prompt_s = t0.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(n);
        let t1 = Instant::now();
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

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `n` tokens were generated.
    Length,
    /// An end-of-generation token was sampled (not printed, not evaluated).
    Eog,
    /// The context is full.
    ContextFull,
    /// The caller asked to stop.
    Caller,
}

impl Stop {
    /// The `stop` field of every engine's `--json` report: `eos`, `length` (a full context
    /// counts as length, as OpenAI's `finish_reason` does) or `stop_string`.
    pub fn report_name(self) -> &'static str {
        match self {
            Stop::Eog => "eos",
            Stop::Length | Stop::ContextFull => "length",
            Stop::Caller => "stop_string",
        }
    }
}

/// A llama.cpp context: KV cache, batch, sampler, position and timings.
pub struct Session<'m> {
    pub llama: &'m Llama,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    sampler: LlamaSampler,
    n_past: u32,
    n_ctx: u32,
    n_batch: u32,
    /// Index in the last batch whose logits the sampler reads.
    last_logits_index: i32,
    pub prompt_time: Duration,
    pub decode_time: Duration,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("n_past", &self.n_past)
            .field("n_ctx", &self.n_ctx)
            .finish_non_exhaustive()
    }
}

impl Session<'_> {
    pub fn n_past(&self) -> u32 {
        self.n_past
    }

    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Forgets everything evaluated (KV cache and sampler history).
    pub fn clear(&mut self) {
        self.ctx.clear_kv_cache();
        self.sampler.reset();
        self.n_past = 0;
        self.last_logits_index = -1;
    }

    /// Evaluates `tokens` after what is already in the cache, in batches of `n_batch`. With
    /// `all_logits`, returns every position's logits (`tokens.len() x vocab`); otherwise only
    /// the last position's are computed (for the next sample) and an empty vector is returned.
    /// The tokens enter the sampler's history (for the repetition penalty).
    pub fn eval(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let need = self.n_past as usize + tokens.len();
        if need > self.n_ctx as usize {
            bail!(
                "{} tokens do not fit the context: {} of {} positions are in use (raise -c/--ctx-size)",
                tokens.len(),
                self.n_past,
                self.n_ctx
            );
        }
        let t0 = Instant::now();
        let v = self.llama.n_vocab();
        let mut out = Vec::with_capacity(if all_logits { tokens.len() * v } else { 0 });
        for chunk in tokens.chunks(self.n_batch as usize) {
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let last = i + 1 == chunk.len();
                self.batch
                    .add(
                        LlamaToken(t as i32),
                        (self.n_past + i as u32) as i32,
                        &[0],
                        all_logits || last,
                    )
                    .context("filling the batch")?;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| anyhow!("llama.cpp decode failed at position {}: {e}", self.n_past))?;
            if all_logits {
                for i in 0..chunk.len() {
                    out.extend_from_slice(&self.ctx.get_logits_ith(i as i32)[..v]);
                }
            }
            self.n_past += chunk.len() as u32;
            self.last_logits_index = chunk.len() as i32 - 1;
        }
        self.sampler
            .accept_many(tokens.iter().map(|&t| LlamaToken(t as i32)));
        self.prompt_time += t0.elapsed();
        self.prompt_tokens += tokens.len();
        Ok(out)
    }

    /// Generates up to `n` tokens after the evaluated prompt. `on_token(id, piece)` sees each
    /// token as soon as it is sampled and returns `false` to stop. The end-of-generation token
    /// is not passed on and not evaluated.
    pub fn generate(
        &mut self,
        n: usize,
        mut on_token: impl FnMut(u32, &[u8]) -> Result<bool>,
    ) -> Result<(Vec<u32>, Stop)> {
        if self.last_logits_index < 0 {
            bail!("nothing evaluated yet: evaluate a prompt before generating");
        }
        let mut out = Vec::new();
        let mut piece = Vec::with_capacity(32);
        let t0 = Instant::now();
        let stop = loop {
            if out.len() >= n {
                break Stop::Length;
            }
            // `sample` applies the chain to the logits of that batch index and accepts the token.
            let tok = self.sampler.sample(&self.ctx, self.last_logits_index);
            let id = tok.0 as u32;
            if self.llama.is_eog(id) {
                break Stop::Eog;
            }
            out.push(id);
            piece.clear();
            self.llama
                .model
                .vocab()
                .token_to_piece_into(tok, &mut piece, false, None);
            let go_on = on_token(id, &piece)?;
            if self.n_past >= self.n_ctx {
                break Stop::ContextFull;
            }
            // Every emitted token is evaluated, so the cache always holds the whole text.
            self.batch.clear();
            self.batch
                .add(tok, self.n_past as i32, &[0], true)
                .context("filling the batch")?;
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| anyhow!("llama.cpp decode failed at position {}: {e}", self.n_past))?;
            self.n_past += 1;
            self.last_logits_index = 0;
            self.decode_tokens += 1;
            if !go_on {
                break Stop::Caller;
            }
        };
        self.decode_time += t0.elapsed();
        Ok((out, stop))
    }
}
