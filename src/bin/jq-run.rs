//! `jq-run`: run a GGUF model. It dispatches on `general.architecture`: `jarvis` runs on the
//! native engine, every architecture llama.cpp knows runs through llama.cpp (`llama-cpp-2`),
//! anything else is refused with the list of what is supported. Both engines take the same
//! flags. stdout carries only the generated text (or, with `--json`, one JSON object); plans,
//! logs, metrics and timings go to stderr. Errors are one line on stderr and exit status 1.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use jq::engine::llama::{Llama, Session, Stop};
use jq::engine::native::{Jarvis, RunOptions, RunReport};
use jq::engine::plan::{self, fmt_size, GpuLayers, ModelShape};
use jq::engine::{peak_rss, LLAMA_ARCHS};
use jq::gguf::GgufModel;
use jq::models::jarvis::LayerMetrics;
use jq::sample::SamplerConfig;
use jq::term::{err as paint, STATUS};
use serde_json::json;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "Examples:
  jq-run jarvis.gguf --prompt \"the cat\" -n 20
  jq-run jarvis.gguf --prompt \"the cat\" --temp 0 --metrics
  jq-run gemma3.gguf --prompt \"Write a haiku\" -n 64 --seed 1 -c 4096
  jq-run gemma3.gguf --chat --system \"You are terse.\"
  echo \"hello\" | jq-run gemma3.gguf --chat          # scripted chat: one turn per line
  jq-run gemma3.gguf --prompt \"hi\" --n-gpu-layers auto --vram-budget 6GiB
  jq-run model.gguf --prompt-tokens 2,651,6 -n 0 --dump-logits logits.npy
  jq-run gemma3-27b-q4_0.gguf --stream-layers --vram-budget 6GiB --plan-only
  jq-run gemma3-27b-q4_0.gguf --stream-layers --vram-budget 6GiB --prompt \"Hello\" -n 4 --profile
  jq-run gemma3-27b-q4_0.gguf --stream-layers --vram-budget 6GiB --host-layers auto --prompt \"Hi\" -n 4
  jq-run gemma3-27b-q4_0.gguf --stream-layers --vram-budget 6GiB --direct-io --prompt \"Hi\" -n 4
  jq-run jarvis.gguf          # interactive when stdin is a terminal
  jq-run model.gguf --prompt hi -v   # also print llama.cpp's and ggml's own log

Bad input is a one-line error naming the file, key, tensor or flag, with exit status 1: every
GGUF is checked (metadata and tensor shapes against its architecture) before an engine is built,
flags that do not apply to the chosen engine are refused, --dump-logits may not name the model,
and the .npy is written as .NAME.<pid>.tmp (locked) and renamed into place when complete
(Ctrl-C or SIGTERM removes it; a leftover from a killed run is removed by the next write).";

/// The flags every subcommand shares: the model, its placement and context, the sampler's
/// defaults and the chat template.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
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
    /// The model, whichever way it was given (set after parsing).
    #[arg(skip)]
    pub model: PathBuf,
    /// Sampling temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for tokens among the last --repeat-last-n (1 = off, llama.cpp's default).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Subtracted from the logit of every token already among the last --repeat-last-n.
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence among the last --repeat-last-n.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// RNG seed (default: from the clock, printed on stderr unless decoding is greedy).
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Context size in tokens (default: the model's trained context, at most 4096; 0: the
    /// trained context; larger than the trained context is refused). With serve: per sequence.
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<u32>,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Prompt batch size (tokens per graph; default 512). With --stream-layers an unset -b is
    /// reduced to fit the budget (the plan says so); a set one is kept or refused.
    #[arg(short = 'b', long = "batch-size")]
    pub batch_size: Option<u32>,
    /// Layers to offload to the GPU: a number, or `auto` (the most that fit --vram-budget, or
    /// the device's free memory). Without a GPU everything runs on the CPU. Also -ngl.
    #[arg(long = "n-gpu-layers", short = 'g', visible_alias = "gpu-layers", value_parser = clap::value_parser!(GpuLayers))]
    pub n_gpu_layers: Option<GpuLayers>,
    /// Device memory the run may use, e.g. 6GiB, 512MiB. Without a GPU it bounds the host
    /// memory of the CPU path (weights + KV cache + compute buffers). With --rpc, one budget
    /// per device: local=SIZE (this machine's CPU), HOST:PORT=SIZE (each device of that
    /// server), CUDA0=SIZE; the plan is refused before loading when a device's layers exceed
    /// its budget.
    #[arg(long = "vram-budget", value_name = "SIZE|KEY=SIZE,...", value_parser = clap::value_parser!(jq::engine::placement::Budgets))]
    pub vram_budget: Option<jq::engine::placement::Budgets>,
    /// Remote devices from ggml RPC servers (`jq-run rpc-server` or llama.cpp's rpc-server on
    /// each machine): layers are split across the local CPU, these servers' devices and local
    /// GPUs; only activations cross the network per token. Each server is checked (connect
    /// and HELLO) before loading. ggml RPC has no authentication or encryption: use it on a
    /// network you trust. llama.cpp engine only.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub rpc: Option<String>,
    /// --rpc: shares of the offloaded layers per device (remote devices in --rpc order, then
    /// local GPUs), e.g. 1,1 or 3,1; default: in proportion to each device's budget (or free
    /// memory). --n-gpu-layers says how many layers leave the local CPU.
    #[arg(long, value_delimiter = ',', requires = "rpc")]
    pub tensor_split: Option<Vec<f32>>,
    /// --rpc: seconds to wait for a server's HELLO at start and for a reply during a decode
    /// step before the run ends with an error naming the server.
    #[arg(long, default_value_t = 60.0, requires = "rpc")]
    pub rpc_timeout: f64,
    /// llama.cpp engine: keep weights in the plain CPU buffers (no repacked or AMX layouts),
    /// as RPC servers hold them: local and remote runs then compute the same numbers.
    #[arg(long)]
    pub no_repack: bool,
    /// Run layer by layer (gemma3, llama, qwen2, qwen3), streaming the layers that do not fit
    /// --vram-budget through a ring of device buffers (see --prefetch, --direct-io, --profile,
    /// --plan-only). The device is the GPU in a `cuda` build on a machine with one (`-g 0`:
    /// the CPU), else the CPU backend plays the device.
    #[arg(long)]
    pub stream_layers: bool,
    /// --stream-layers: ring slots (layers read ahead of the compute).
    #[arg(long, default_value_t = 2, requires = "stream_layers")]
    pub prefetch: usize,
    /// --stream-layers: read streamed layers with O_DIRECT (bounded host memory, no page cache).
    #[arg(long, requires = "stream_layers")]
    pub direct_io: bool,
    /// --stream-layers: compute the last N streamed layers on the CPU, weights in place from
    /// the memory map, instead of streaming them to the device; `auto` times one layer's
    /// fill, device compute and CPU compute at load and picks the N whose simulated step is fastest.
    #[arg(long = "host-layers", requires = "stream_layers", value_parser = clap::value_parser!(jq::engine::stream::HostLayers))]
    pub host_layers: Option<jq::engine::stream::HostLayers>,
    /// Chat template: a name among llama.cpp's built-in ones (chatml, llama3, gemma, ...) or a
    /// Jinja file. Default: the GGUF's tokenizer.chat_template.
    #[arg(long, value_name = "NAME|FILE")]
    pub chat_template: Option<String>,
    /// Print llama.cpp's and ggml's own log lines on stderr (also: JQ_LLAMA_LOG=1). Without it
    /// they are kept quiet and only the error line of a failed load is shown.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Colour the chat's prompt, status lines and errors: auto (only on a terminal, and not
    /// with NO_COLOR set), always or never.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub color: jq::term::ColorWhen,
}

/// `jq-run MODEL [flags]`: generate text (or chat) once.
#[derive(Args, Debug)]
struct Cli {
    #[command(flatten)]
    m: ModelArgs,
    /// Prompt text (without it: interactive on a terminal, else the whole of stdin).
    #[arg(short, long, allow_hyphen_values = true)]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = ["prompt", "prompt_tokens"])]
    prompt_file: Option<PathBuf>,
    /// Prompt as token ids, used exactly as given: no BOS added (e.g. 1,2,3).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_tokens: Option<Vec<u32>>,
    /// Tokens to generate (0 = evaluate the prompt only, -1 = until the end of generation or
    /// a full context); in --chat, per reply.
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    n_predict_flag: i64,
    /// `-n` resolved: -1 becomes unbounded (each engine stops at its context).
    #[arg(skip)]
    n_predict: usize,
    /// Write the prompt's logits, f32 [n_prompt_tokens, vocab], to this .npy file.
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    /// Print one JSON object on stdout (ids, text, prompt_ms, decode_ms, prompt_tokens,
    /// generated_tokens, stop: eos|length|stop_string) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Jarvis: print the per-layer and per-head quantum metrics (stderr; with --json, in the JSON).
    #[arg(long)]
    metrics: bool,
    /// Multi-turn chat with the model's chat template (or --chat-template); turns are read
    /// from stdin line by line (terminal or not); `/exit` or end of input ends it. Also -cnv.
    #[arg(long, conflicts_with_all = ["prompt", "prompt_tokens", "prompt_file", "dump_logits", "json"])]
    chat: bool,
    /// System message for --chat. Also -sys.
    #[arg(long, requires = "chat", allow_hyphen_values = true)]
    system: Option<String>,
    /// --stream-layers: per-step bytes streamed, GB/s, compute and wait times, per-layer times,
    /// peak RSS (stderr; with --json, in the JSON).
    #[arg(long, requires = "stream_layers")]
    profile: bool,
    /// --stream-layers: print the plan (resident and streamed layers, bytes per token,
    /// predicted floor) and exit.
    #[arg(long, requires = "stream_layers")]
    plan_only: bool,
}

impl std::ops::Deref for Cli {
    type Target = ModelArgs;
    fn deref(&self) -> &ModelArgs {
        &self.m
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "jq-run",
    version,
    about = "Run a GGUF model: Jarvis on the native engine, every other architecture llama.cpp supports through llama.cpp; `jq-run serve` answers OpenAI and Ollama clients",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Top {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: Cli,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// An OpenAI- and Ollama-compatible HTTP server on the model.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeCli),
    /// Perplexity of a text as llama-perplexity computes it; --kl-base compares with a base model.
    #[command(after_help = jq::perplexity::EXAMPLES)]
    Perplexity(jq::perplexity::Cli),
    /// Serve this machine's ggml devices to `jq-run MODEL --rpc HOST:PORT` clients (ggml's RPC
    /// protocol, also spoken by llama.cpp's tools). No authentication, no encryption.
    #[command(name = "rpc-server", after_help = RPC_EXAMPLES)]
    RpcServer(RpcServerCli),
}

const RPC_EXAMPLES: &str = "Examples:
  jq-run rpc-server                              # the CPU on 127.0.0.1:50052
  jq-run rpc-server --port 50053 --threads 8
  jq-run rpc-server --host 192.168.1.20 --device CUDA0 --cache ~/.cache/jq/rpc
  jq-run model.gguf --rpc 192.168.1.20:50052,192.168.1.21:50052 -ngl 99 --prompt hi

SECURITY: ggml RPC has no authentication and no encryption. Anyone who can reach the port can
run computations on this machine's devices and read or write their memory. The server binds
loopback by default; bind another address only on a network you trust (a warning says so).

The server takes no memory limit: clients budget each server with --vram-budget HOST:PORT=SIZE.
ggml's serving loop runs in a child process that is restarted when it dies (ggml asserts on some
malformed requests), so one bad client does not take the server down for the next.";

/// `jq-run rpc-server [flags]`.
#[derive(Args, Debug)]
struct RpcServerCli {
    /// Address to listen on (anything but loopback prints a warning: no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = jq::engine::rpc::DEFAULT_PORT)]
    port: u16,
    /// CPU threads of the CPU device (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Devices to serve, by ggml name (CPU, CUDA0, ...; comma-separated). Default: every GPU,
    /// else the CPU.
    #[arg(long, value_delimiter = ',')]
    device: Vec<String>,
    /// Folder where the server keeps large tensors by hash, so a client loading the same
    /// model again sends hashes instead of the bytes.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Print ggml's own log lines (and its per-connection lines).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// The supervised serving process itself (internal).
    #[arg(long, hide = true)]
    serve_child: bool,
}

const SERVE_EXAMPLES: &str = "Examples:
  jq-run serve gemma3.gguf                       # http://127.0.0.1:8080, OpenAI /v1 and Ollama /api
  jq-run serve -m gemma3.gguf --parallel 4 -c 4096 --alias gemma
  jq-run serve gemma3.gguf --host 0.0.0.0 --api-key \"$KEY\"
  jq-run serve gemma3-27b-q4_0.gguf --stream-layers --vram-budget 6GiB
  curl http://127.0.0.1:8080/v1/chat/completions -d '{\"model\":\"gemma3\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'

Endpoints: POST /v1/chat/completions, /v1/completions, GET /v1/models (OpenAI);
POST /api/generate, /api/chat, /api/show, GET /api/tags, /api/version (Ollama); GET /health.
The sampling flags are the defaults of requests that do not set their own.";

/// `jq-run serve MODEL [flags]`.
#[derive(Args, Debug)]
struct ServeCli {
    #[command(flatten)]
    m: ModelArgs,
    /// Address to listen on (anything but loopback without --api-key prints a warning).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoded together (llama.cpp engine: one context holding N sequences, a new
    /// request joins at the next step; --stream-layers: N sequences whose next tokens go
    /// through one sweep of the streamed weights per step). Also -np.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// llama.cpp engine: a full-size cache on sliding-window layers, as llama-server's
    /// --swa-full. By default (as llama-server) they keep only the window, which takes less
    /// memory; a conversation continued past the window is then evaluated again from its
    /// start instead of from the held positions.
    #[arg(long)]
    swa_full: bool,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The model's name in /v1/models and /api/tags (default: the file stem).
    #[arg(long, value_name = "NAME")]
    alias: Option<String>,
    /// Tokens a request may generate when it sets no max_tokens (-1: until the end of
    /// generation or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
}

impl ModelArgs {
    /// The model from the positional or -m/--model (clap makes one of them present).
    fn resolve_model(&mut self) {
        if let Some(p) = self.model_opt.take().or_else(|| self.model_pos.take()) {
            self.model = p;
        }
    }

    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            let s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                & 0xFFFF_FFFF;
            // Under greedy decoding the seed changes nothing: not worth a line.
            if !self.greedy() {
                eprintln!("{}", paint(STATUS, &format!("seed {s}")));
            }
            s
        })
    }

    /// The sampling flags, shared by every engine.
    fn sampler(&self, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed,
        }
    }

    fn n_ctx(&self, trained: u32) -> Result<u32> {
        if trained == 0 {
            bail!(
                "{}: the model's trained context is 0 tokens",
                self.model.display()
            );
        }
        match self.ctx_size {
            Some(0) => Ok(trained),
            Some(c) if c > trained => bail!(
                "-c/--ctx-size {c} is larger than the model's trained context of {trained} tokens"
            ),
            Some(c) => Ok(c),
            None => Ok(trained.min(4096)),
        }
    }
}

impl ModelArgs {
    /// `--vram-budget` as one size (per-device budgets need --rpc).
    fn budget(&self) -> Result<Option<u64>> {
        match &self.vram_budget {
            None => Ok(None),
            Some(b) => b.single().map_err(|e| anyhow!("{e}")),
        }
    }
}

/// Plans and loads a llama.cpp model: on this machine's devices ([`plan::plan`]) or, with
/// --rpc, across the local CPU, the servers' devices and local GPUs under per-device budgets
/// ([`jq::engine::placement::plan_multi`]). Prints the plan; returns the model and its
/// offloaded layer count. `n_ctx` is every sequence's positions together.
fn load_llama(
    m: &ModelArgs,
    file: &GgufModel,
    arch: &str,
    shape: &ModelShape,
    n_ctx: u32,
    n_batch: u32,
) -> Result<(Llama, u32)> {
    use jq::engine::llama::Placement;
    use jq::engine::{placement, rpc};
    let path = &m.model;
    let want = m.n_gpu_layers.unwrap_or(GpuLayers::Auto);
    let Some(list) = &m.rpc else {
        let gpu = jq::engine::llama::gpus().into_iter().next();
        let plan = plan::plan(shape, want, m.budget()?, gpu, n_ctx, n_batch)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        eprintln!("{arch}: {plan}");
        let llama = if m.no_repack {
            Llama::load_placed(
                file.path(),
                &Placement {
                    n_gpu_layers: plan.n_gpu_layers,
                    ..Placement::default()
                },
            )?
        } else {
            Llama::load_with(file.path(), plan.n_gpu_layers)?
        };
        return Ok((llama, plan.n_gpu_layers));
    };
    let endpoints = rpc::parse_endpoints(list).map_err(|e| anyhow!("--rpc: {e}"))?;
    if !(m.rpc_timeout.is_finite() && m.rpc_timeout > 0.0) {
        bail!(
            "--rpc-timeout {}: give a number of seconds above 0",
            m.rpc_timeout
        );
    }
    let timeout = Duration::from_secs_f64(m.rpc_timeout);
    for e in &endpoints {
        rpc::check_server(e, timeout).map_err(|e| anyhow!("--rpc: {e}"))?;
    }
    rpc::AbortHook::install();
    let remote = rpc::connect(&endpoints).map_err(|e| anyhow!("--rpc: {e}"))?;
    rpc::Watchdog::start(timeout);
    let mut devices: Vec<placement::Device> = Vec::new();
    let mut handles = Vec::new();
    for r in &remote {
        devices.push(placement::Device {
            name: r.name.clone(),
            endpoint: Some(r.endpoint.to_string()),
            free: r.free,
        });
        handles.push(r.dev);
    }
    for (d, h) in jq::engine::llama::gpu_devices() {
        devices.push(d);
        handles.push(h);
    }
    let budgets = m.vram_budget.clone().unwrap_or_default();
    let p = placement::plan_multi(
        shape,
        want,
        m.tensor_split.as_deref(),
        &devices,
        &budgets,
        n_ctx,
        n_batch,
    )
    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    eprintln!("{arch}: {p}");
    let llama = Llama::load_placed(
        file.path(),
        &Placement {
            n_gpu_layers: p.n_gpu_layers,
            devices: handles,
            split: p.split.clone(),
            extra_bufts: !m.no_repack,
        },
    )?;
    Ok((llama, p.n_gpu_layers))
}

/// `-n`: -1 is unbounded, below that is refused.
fn n_predict(n: i64) -> Result<usize> {
    match n {
        -1 => Ok(usize::MAX),
        n if n < -1 => bail!("-n/--n-predict {n}: give -1 (until the end of generation or a full context) or a count of at least 0"),
        n => Ok(n as usize),
    }
}

/// llama.cpp's multi-letter short flags, which clap cannot declare, rewritten to their long
/// names before parsing. A word right after a flag that takes text (`-p -ngl`) is left alone.
fn rewrite_llama_flags(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const MAP: [(&str, &str); 4] = [
        ("-ngl", "--n-gpu-layers"),
        ("-np", "--parallel"),
        ("-sys", "--system"),
        ("-cnv", "--chat"),
    ];
    const TAKES_TEXT: [&str; 6] = ["-p", "--prompt", "--system", "-sys", "--api-key", "--alias"];
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut done = false;
    for a in args {
        let prev_takes_text = out
            .last()
            .and_then(|p| p.to_str())
            .is_some_and(|p| TAKES_TEXT.contains(&p));
        let word = a.to_str().unwrap_or("");
        if word == "--" {
            done = true;
        }
        let new = if done || prev_takes_text {
            None
        } else {
            MAP.iter().find_map(|(short, long)| {
                if word == *short {
                    Some(long.to_string())
                } else {
                    word.strip_prefix(short)
                        .and_then(|rest| rest.strip_prefix('='))
                        .map(|v| format!("{long}={v}"))
                }
            })
        };
        out.push(new.map_or(a, Into::into));
    }
    out
}

/// The end-of-run report, like llama.cpp's: load, prompt and decode rates, peak RSS.
fn timing_report(
    load: Duration,
    prompt: (Duration, usize),
    decode: (Duration, usize),
    extra: &str,
) {
    let tps = |n: usize, d: Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    eprintln!();
    eprintln!("load      {:10.2} ms", load.as_secs_f64() * 1e3);
    eprintln!(
        "prompt    {:10.2} ms / {:5} tokens ({:8.1} tok/s)",
        prompt.0.as_secs_f64() * 1e3,
        prompt.1,
        tps(prompt.1, prompt.0)
    );
    eprintln!(
        "decode    {:10.2} ms / {:5} tokens ({:8.1} tok/s){extra}",
        decode.0.as_secs_f64() * 1e3,
        decode.1,
        tps(decode.1, decode.0)
    );
    if let Some(p) = peak_rss() {
        eprintln!("peak RSS  {:10.2} MiB", p as f64 / 1048576.0);
    }
}

/// `--dump-logits`, atomically: a full disk or a signal leaves nothing under the name.
fn write_npy(path: &std::path::Path, shape: &[usize], data: &[f32]) -> Result<()> {
    jq::npy::write_f32_file(path, shape, data)
        .with_context(|| format!("--dump-logits {}", path.display()))
}

fn metrics_json(m: &[LayerMetrics]) -> serde_json::Value {
    let one = |x: &jq::models::jarvis::Metrics| json!({"coherence": x.coherence, "entanglement": x.entanglement, "interference": x.interference, "fidelity": x.fidelity});
    serde_json::Value::Array(
        m.iter()
            .map(|l| {
                let mut v = one(&l.layer);
                v["heads"] = serde_json::Value::Array(l.heads.iter().map(one).collect());
                v
            })
            .collect(),
    )
}

fn print_metrics(title: &str, m: &[LayerMetrics]) {
    eprintln!("{title}");
    eprintln!(
        "  {:<9} {:>10} {:>12} {:>12} {:>10}",
        "layer", "coherence", "entanglement", "interference", "fidelity"
    );
    for (i, l) in m.iter().enumerate() {
        let x = &l.layer;
        eprintln!(
            "  {:<9} {:>10.6} {:>12.6} {:>12.6} {:>10.6}",
            i, x.coherence, x.entanglement, x.interference, x.fidelity
        );
        for (h, x) in l.heads.iter().enumerate() {
            eprintln!(
                "    head {:<3} {:>10.6} {:>12.6} {:>12.6}",
                h, x.coherence, x.entanglement, x.interference
            );
        }
    }
}

// ---------------------------------------------------------------- native engine (Jarvis)

fn run_native_once(
    cli: &Cli,
    jarvis: &Jarvis,
    ids: Vec<u32>,
    seed: u64,
    load: Duration,
) -> Result<()> {
    // -n -1: until end of generation or a full context (no context shifts).
    let n_predict = if cli.n_predict == usize::MAX {
        jarvis.model.cfg.ctx.saturating_sub(ids.len())
    } else {
        cli.n_predict
    };
    let opts = RunOptions {
        prompt_ids: ids.clone(),
        n_predict,
        sampler: cli.sampler(seed),
        metrics: cli.metrics,
        dump_logits: cli.dump_logits.is_some(),
    };
    let mut sink: Box<dyn Write> = if cli.json {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout())
    };
    let rep: RunReport = jarvis.run(&opts, &mut sink)?;
    drop(sink);
    if let Some(path) = &cli.dump_logits {
        write_npy(
            path,
            &[ids.len(), jarvis.model.cfg.vocab],
            &rep.prompt_logits,
        )?;
    }
    if cli.json {
        let eos = rep
            .generated
            .last()
            .is_some_and(|&t| Some(t) == jarvis.tokenizer.eos);
        let v = json!({
            "prompt_ids": ids,
            "generated_ids": rep.generated,
            "text": rep.text,
            "seed": seed,
            "stop": if eos { "eos" } else { "length" },
            "prompt_ms": rep.prompt_time.as_secs_f64() * 1e3,
            "decode_ms": rep.decode_time.as_secs_f64() * 1e3,
            "prompt_tokens": ids.len(),
            "generated_tokens": rep.decode_steps,
            "decode_steps": rep.decode_steps,
            "context_shifts": rep.context_shifts,
            "metrics": rep.prompt_metrics.as_ref().map(|p| json!({
                "prompt": metrics_json(p),
                "steps": rep.step_metrics.iter().map(|s| metrics_json(s)).collect::<Vec<_>>(),
            })),
        });
        writeln!(std::io::stdout(), "{v}").context("writing to stdout")?;
    } else {
        if cli.n_predict > 0 {
            writeln!(std::io::stdout()).context("writing to stdout")?;
        }
        if let Some(p) = &rep.prompt_metrics {
            print_metrics("quantum metrics of the prompt pass:", p);
            if let Some(last) = rep.step_metrics.last() {
                print_metrics("quantum metrics of the last generated position:", last);
            }
        }
    }
    let shifts = if rep.context_shifts > 0 {
        format!(", {} context shifts", rep.context_shifts)
    } else {
        String::new()
    };
    timing_report(
        load,
        (rep.prompt_time, ids.len()),
        (rep.decode_time, rep.decode_steps),
        &shifts,
    );
    Ok(())
}

fn run_native(cli: &Cli, file: &GgufModel, t0: Instant) -> Result<()> {
    if cli.chat {
        bail!(
            "{}: --chat needs a tokenizer.chat_template and Jarvis models have none (run without --chat for the interactive prompt)",
            cli.model.display()
        );
    }
    let trained = file
        .get_u32(jq::models::jarvis::keys::CONTEXT_LENGTH)
        .map_err(|e| anyhow!("{}: {e}", cli.model.display()))?;
    let n_ctx = cli.n_ctx(trained)?;
    if n_ctx < 2 {
        bail!("-c/--ctx-size {n_ctx}: the native Jarvis engine needs at least 2 (its context shift keeps the last half)");
    }
    // Loaded for the context actually used: the position table and the KV cache follow -c,
    // not the trained context.
    let jarvis = Jarvis::load_with_ctx(file, n_ctx as usize)?;
    {
        let c = &jarvis.model.cfg;
        let kv = 2 * (c.n_layers as u64) * u64::from(n_ctx) * (c.d_model as u64) * 4;
        if jq::engine::mem_available().is_some_and(|avail| kv > avail) {
            bail!(
                "-c/--ctx-size {n_ctx}: the KV cache would take {}, more than the {} of memory available (lower -c)",
                fmt_size(kv),
                fmt_size(jq::engine::mem_available().unwrap_or(0))
            );
        }
    }
    if let Some(b) = cli.budget()? {
        let c = &jarvis.model.cfg;
        let kv = (2 * c.n_layers * n_ctx as usize * c.d_model * 4) as u64;
        let need = file.total_bytes() + kv;
        if need > b {
            bail!(
                "--vram-budget {} is too small for even the CPU path: the native engine needs {} (weights {}, KV cache {})",
                fmt_size(b),
                fmt_size(need),
                fmt_size(file.total_bytes()),
                fmt_size(kv)
            );
        }
        eprintln!(
            "plan: native engine on the CPU: {} (weights {}, KV cache {}) of a {} budget",
            fmt_size(need),
            fmt_size(file.total_bytes()),
            fmt_size(kv),
            fmt_size(b)
        );
    }
    let load = t0.elapsed();
    let seed = cli.seed();
    let tok = &jarvis.tokenizer;
    if let Some(ids) = &cli.prompt_tokens {
        return run_native_once(cli, &jarvis, ids.clone(), seed, load);
    }
    if let Some(p) = &cli.prompt {
        let ids = tok.encode(p).context("tokenizing the prompt")?;
        return run_native_once(cli, &jarvis, ids, seed, load);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "Jarvis ({} layers, d {}, vocabulary {}). Type a prompt; empty line or Ctrl-D to quit.",
            jarvis.model.cfg.n_layers, jarvis.model.cfg.d_model, jarvis.model.cfg.vocab
        );
        let mut n = 0u64;
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                return Ok(());
            }
            let ids = tok.encode(line.trim()).context("tokenizing the prompt")?;
            run_native_once(cli, &jarvis, ids, seed.wrapping_add(n), load)?;
            n += 1;
        }
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text)?;
    let ids = tok.encode(text.trim()).context("tokenizing the prompt")?;
    run_native_once(cli, &jarvis, ids, seed, load)
}

// ---------------------------------------------------------------- llama.cpp engine

fn run_llama(cli: &Cli, file: &GgufModel, arch: &str, t0: Instant) -> Result<()> {
    let path = &cli.model;
    let shape = ModelShape::from_gguf(file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let n_ctx = cli.n_ctx(shape.n_ctx_train)?;
    if let Some(bad) = cli
        .prompt_tokens
        .iter()
        .flatten()
        .find(|&&t| u64::from(t) >= shape.n_vocab)
    {
        bail!(
            "--prompt-tokens: id {bad} is outside the vocabulary of {} tokens",
            shape.n_vocab
        );
    }
    let n_batch = cli.batch_size.unwrap_or(512).clamp(1, n_ctx);
    let (llama, n_gpu_layers) = load_llama(cli, file, arch, &shape, n_ctx, n_batch)?;
    let threads = cli.threads() as i32;
    let seed = cli.seed();
    let mut sess = llama.session(n_ctx, n_batch, threads, &cli.sampler(seed))?;
    let load = t0.elapsed();
    if cli.chat {
        chat(cli, file, &llama, &mut sess)?;
    } else {
        let ids: Vec<u32> = if let Some(ids) = &cli.prompt_tokens {
            ids.clone()
        } else {
            let limit = guard::prompt_byte_limit(file, n_ctx);
            let text = match &cli.prompt {
                Some(p) => p.clone(),
                None => {
                    let stdin = std::io::stdin();
                    if stdin.is_terminal() {
                        bail!("give a prompt with --prompt or --prompt-tokens, or use --chat");
                    }
                    guard::read_stdin_prompt(stdin.lock(), limit)?
                }
            };
            guard::check_prompt_length(text.len(), limit, n_ctx)?;
            // BOS (and, for the vocabularies that add them, CLS/SEP) only when the model asks
            // for it, as llama.cpp's own tools call its tokenizer (`add_special = add_bos`).
            llama.tokenize_with(&text, llama.model.vocab().should_add_bos(), true)
        };
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        let logits = sess.eval(&ids, cli.dump_logits.is_some())?;
        if let Some(p) = &cli.dump_logits {
            write_npy(p, &[ids.len(), llama.n_vocab()], &logits)?;
        }
        let mut text = Vec::new();
        let mut out = std::io::stdout().lock();
        let json = cli.json;
        let (generated, stop) = sess.generate(cli.n_predict, |_, piece| {
            text.extend_from_slice(piece);
            if !json {
                out.write_all(piece)?;
                out.flush()?;
            }
            Ok(true)
        })?;
        if json {
            let v = json!({
                "prompt_ids": ids,
                "generated_ids": generated,
                "text": String::from_utf8_lossy(&text),
                "seed": seed,
                "stop": stop.report_name(),
                "prompt_ms": sess.prompt_time.as_secs_f64() * 1e3,
                "decode_ms": sess.decode_time.as_secs_f64() * 1e3,
                "prompt_tokens": ids.len(),
                "generated_tokens": generated.len(),
                "n_gpu_layers": n_gpu_layers,
            });
            writeln!(out, "{v}")?;
        } else if cli.n_predict > 0 {
            writeln!(out)?;
        }
        if stop == Stop::ContextFull {
            eprintln!("stopped: the context of {n_ctx} tokens is full (raise -c/--ctx-size)");
        }
    }
    timing_report(
        load,
        (sess.prompt_time, sess.prompt_tokens),
        (sess.decode_time, sess.decode_tokens),
        "",
    );
    Ok(())
}

/// Multi-turn chat. The KV cache keeps the conversation; each turn evaluates only the text the
/// template adds after what is cached. When a turn would not fit, the oldest exchanges are
/// dropped (the system message stays) and the rest is evaluated again.
fn chat(cli: &Cli, file: &GgufModel, llama: &Llama, sess: &mut Session) -> Result<()> {
    let Some(template) = llama.template(cli.chat_template.as_deref())? else {
        bail!(
            "{}: --chat needs a tokenizer.chat_template and this GGUF has none (give one with --chat-template NAME|FILE)",
            cli.model.display()
        );
    };
    let mut turns: Vec<(String, String)> = Vec::new();
    if let Some(s) = &cli.system {
        turns.push(("system".into(), s.clone()));
    }
    let n_fixed = turns.len();
    let limit = guard::prompt_byte_limit(file, sess.n_ctx());
    // The formatted text whose tokens are in the cache.
    let mut cached = String::new();
    let stdin = std::io::stdin();
    let term = stdin.is_terminal();
    // On a terminal: line editing and history, and Ctrl-C stops the reply (at the prompt it
    // ends the chat). Piped input is read line by line, bounded, as before.
    let mut editor = if term {
        eprintln!("{}", paint(STATUS, "chat: type a message; /exit, Ctrl-D or Ctrl-C at the prompt ends; Ctrl-C stops a reply."));
        interrupt::install();
        Some(rustyline::DefaultEditor::new().context("setting up line editing on the terminal")?)
    } else {
        None
    };
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    let mut line_no = 0u64;
    let prompt = jq::term::paint(jq::term::Stream::Stdout, jq::term::PROMPT, "> ");
    loop {
        line_no += 1;
        let read = match editor.as_mut() {
            Some(ed) => match ed.readline(&prompt) {
                Ok(l) if l.len() > limit => guard::Line::TooLong(limit),
                Ok(l) => {
                    let _ = ed.add_history_entry(l.as_str());
                    guard::Line::Text(l)
                }
                Err(
                    rustyline::error::ReadlineError::Interrupted
                    | rustyline::error::ReadlineError::Eof,
                ) => {
                    // The shell gets the terminal back on a fresh line.
                    eprintln!();
                    break;
                }
                Err(e) => return Err(e).context("reading the terminal"),
            },
            None => guard::read_line(&mut input, limit).context("reading stdin")?,
        };
        let line = match read {
            guard::Line::Eof => break,
            guard::Line::Text(t) => t,
            // Both are reported and the chat goes on with the next line.
            guard::Line::TooLong(n) => {
                eprintln!(
                    "line {line_no}: skipped: more than {n} bytes cannot fit the context of {} tokens",
                    sess.n_ctx()
                );
                continue;
            }
            guard::Line::NotUtf8(at) => {
                eprintln!("line {line_no}: skipped: not valid UTF-8 (at byte {at})");
                continue;
            }
        };
        let msg = line.trim_end_matches(['\n', '\r']);
        if msg.trim() == "/exit" {
            break;
        }
        if msg.trim().is_empty() {
            continue;
        }
        turns.push(("user".into(), msg.to_string()));
        let reserve = cli.n_predict.min(sess.n_ctx() as usize / 2) as u32;
        let mut text = template.apply(&turns, true)?;
        let mut tokens = match text.strip_prefix(cached.as_str()) {
            Some(rest) if !cached.is_empty() => llama.tokenize_with(rest, false, true),
            _ => {
                sess.clear();
                llama.tokenize_chat(&text)
            }
        };
        while sess.n_past() + tokens.len() as u32 + reserve > sess.n_ctx() {
            // Drop the oldest exchange and start over from the (shorter) history.
            if turns.len() <= n_fixed + 1 {
                bail!(
                    "the message ({} tokens) and a reply of {reserve} do not fit the context of {} (raise -c/--ctx-size or lower -n)",
                    tokens.len(),
                    sess.n_ctx()
                );
            }
            let drop_to = turns[n_fixed + 1..]
                .iter()
                .position(|(r, _)| r == "user")
                .map_or(turns.len() - 1, |p| p + n_fixed + 1);
            turns.drain(n_fixed..drop_to);
            eprintln!(
                "{}",
                paint(STATUS, "(context full: dropped the oldest exchange)")
            );
            sess.clear();
            text = template.apply(&turns, true)?;
            tokens = llama.tokenize_chat(&text);
        }
        interrupt::clear();
        sess.eval(&tokens, false)?;
        let mut reply = Vec::new();
        let (_, stop) = sess.generate(cli.n_predict, |_, piece| {
            reply.extend_from_slice(piece);
            out.write_all(piece)?;
            out.flush()?;
            Ok(!interrupt::raised())
        })?;
        writeln!(out)?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        cached = text + &reply;
        turns.push(("assistant".into(), reply));
        if stop == Stop::ContextFull {
            eprintln!("{}", paint(STATUS, "(context full)"));
            cached.clear();
        }
        if stop == Stop::Caller {
            eprintln!("{}", paint(STATUS, "(stopped)"));
        }
    }
    Ok(())
}

/// Ctrl-C during a --chat reply on a terminal: noted by the handler, read by the generation
/// loop (which then stops after the current token).
mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static RAISED: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_sigint(_: libc::c_int) {
        // Only an atomic store: async-signal-safe.
        RAISED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        let handler: extern "C" fn(libc::c_int) = on_sigint;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    }

    pub fn clear() {
        RAISED.store(false, Ordering::SeqCst);
    }

    pub fn raised() -> bool {
        RAISED.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- dispatch

fn run(cli: &mut Cli) -> Result<()> {
    if let Some(t) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
            .context("setting up threads")?;
    }
    let t0 = Instant::now();
    let path = &cli.m.model.clone();
    guard::model_file(path)?;
    if let Some(d) = &cli.dump_logits {
        jq::output::refuse_aliases(&[("--dump-logits", d)], &[("the model", path)])?;
    }
    // A split set is one model: any part may be named; llama.cpp is given the first.
    let file = GgufModel::open(path)
        .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    if let Some(d) = &cli.dump_logits {
        let parts: Vec<(&str, &std::path::Path)> = file
            .parts()
            .iter()
            .map(|p| ("the model", p.path()))
            .collect();
        jq::output::refuse_aliases(&[("--dump-logits", d)], &parts)?;
    }
    let arch = file
        .get_str("general.architecture")
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .to_string();
    if let Some(f) = &cli.prompt_file {
        // Bounded by what the largest context could hold; the engine checks its own -c.
        let limit = guard::prompt_byte_limit(&file, 1 << 20);
        let text = guard::read_prompt_file(f, limit)?;
        cli.prompt = Some(text);
    }
    let cli: &Cli = cli;
    let engine = if arch == "jarvis" {
        guard::Engine::Native
    } else if cli.stream_layers {
        guard::Engine::Stream
    } else {
        guard::Engine::Llama
    };
    guard::refuse_inapplicable(cli, engine, &arch)?;
    if engine == guard::Engine::Llama && !LLAMA_ARCHS.contains(&arch.as_str()) {
        bail!(
            "{}: architecture '{arch}' is not supported: jq-run runs jarvis natively and, through llama.cpp, {}",
            path.display(),
            LLAMA_ARCHS.join(", ")
        );
    }
    // Metadata and tensor shapes against the architecture, before any engine builds on them.
    jq::validate::check(&file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    match engine {
        guard::Engine::Native => run_native(cli, &file, t0),
        guard::Engine::Stream => {
            drop(file);
            run_stream(cli)
        }
        guard::Engine::Llama => run_llama(cli, &file, &arch, t0),
    }
}

fn run_stream(cli: &Cli) -> Result<()> {
    use jq::engine::stream::{self, RunArgs, StreamOptions};
    stream::run(&RunArgs {
        model: cli.model.clone(),
        prompt: cli.prompt.clone(),
        prompt_tokens: cli.prompt_tokens.clone(),
        n_predict: cli.n_predict,
        ctx_size: cli.ctx_size,
        batch_size: cli.batch_size,
        sampler: cli.sampler(if cli.plan_only { 0 } else { cli.seed() }),
        dump_logits: cli.dump_logits.clone(),
        json: cli.json,
        profile: cli.profile,
        plan_only: cli.plan_only,
        opts: StreamOptions {
            budget: cli.budget()?,
            n_slots: cli.prefetch,
            direct_io: cli.direct_io,
            cpu: matches!(cli.n_gpu_layers, Some(GpuLayers::N(0))),
            host_layers: cli.host_layers.unwrap_or_default(),
            // One core is left to the reader thread by default: on 2 cores, 2 compute
            // threads + the reader ran decode 2.3x slower than 1 + the reader (BENCHMARKS).
            threads: cli
                .threads
                .unwrap_or_else(|| cli.threads().saturating_sub(1).max(1)),
            // Prompt batches are compute-bound and the reader mostly waits: every core.
            threads_batch: cli.threads(),
            ..StreamOptions::default()
        },
    })
}

/// clap's own colouring (help, usage, its errors) as `--color` asks: the flag is read from
/// the words before clap parses them (the last one wins, as clap's would); an invalid value
/// leaves clap's auto, and clap then refuses it by name. A word that is the value of another
/// flag (`-p --color`: the prompt is "--color") is skipped, as clap takes it.
fn clap_color(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    /// The flags (every command's, with aliases) that take a value.
    fn valued(cmd: &clap::Command, out: &mut std::collections::HashSet<String>) {
        for a in cmd.get_arguments().filter(|a| !a.is_positional()) {
            if !a.get_action().takes_values() {
                continue;
            }
            let longs = a
                .get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default());
            out.extend(longs.map(|l| format!("--{l}")));
            let shorts = a
                .get_short()
                .into_iter()
                .chain(a.get_all_short_aliases().unwrap_or_default());
            out.extend(shorts.map(|c| format!("-{c}")));
        }
        for sub in cmd.get_subcommands() {
            valued(sub, out);
        }
    }
    let mut takes_value = std::collections::HashSet::new();
    valued(&<Top as clap::CommandFactory>::command(), &mut takes_value);
    takes_value.remove("--color");
    let mut choice = clap::ColorChoice::Auto;
    let mut words = args.iter().map(|a| a.to_str().unwrap_or(""));
    while let Some(w) = words.next() {
        if w == "--" {
            break;
        }
        if takes_value.contains(w) {
            words.next();
            continue;
        }
        let v = match w.strip_prefix("--color") {
            Some("") => words.next().unwrap_or(""),
            Some(rest) => match rest.strip_prefix('=') {
                Some(v) => v,
                None => continue,
            },
            None => continue,
        };
        choice = match v {
            "always" => clap::ColorChoice::Always,
            "never" => clap::ColorChoice::Never,
            _ => clap::ColorChoice::Auto,
        };
    }
    choice
}

fn main() -> ExitCode {
    let args = rewrite_llama_flags(std::env::args_os());
    let matches = <Top as clap::CommandFactory>::command()
        .color(clap_color(&args))
        .try_get_matches_from(args)
        .unwrap_or_else(|e| jq::term::exit_on_clap_error(e));
    let top = match <Top as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(t) => t,
        Err(e) => jq::term::exit_on_clap_error(e),
    };
    let res = match top.cmd {
        Some(Cmd::RpcServer(s)) => {
            if s.verbose {
                jq::engine::logs::set_verbose(true);
            }
            rpc_server(&s)
        }
        Some(Cmd::Serve(mut s)) => {
            jq::term::set(s.m.color);
            s.m.resolve_model();
            if s.m.verbose {
                jq::engine::logs::set_verbose(true);
            }
            serve(&s)
        }
        Some(Cmd::Perplexity(p)) => jq::perplexity::main(&p),
        None => {
            let mut cli = top.run;
            jq::term::set(cli.m.color);
            cli.m.resolve_model();
            if cli.verbose {
                jq::engine::logs::set_verbose(true);
            }
            n_predict(cli.n_predict_flag).and_then(|n| {
                cli.n_predict = n;
                run(&mut cli)
            })
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`jq-run ... | head`) ends the program quietly, as cat does.
        Err(e) if jq::errors::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "jq-run: {} {}",
                paint(jq::term::ERROR, "error:"),
                jq::errors::one_line(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Checks on the input that are about the command line rather than an engine: kept apart so
/// the CLI itself can change shape around them.
mod guard {
    use super::{Cli, GpuLayers};
    use anyhow::{bail, Result};
    use jq::gguf::GgufModel;
    use std::io::{BufRead, Read};
    use std::path::Path;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Engine {
        Native,
        Llama,
        Stream,
    }

    /// The model must be an existing file (a directory would fail in mmap with "No such
    /// device").
    pub fn model_file(p: &Path) -> Result<()> {
        if p.is_dir() {
            bail!("{} is a directory, not a GGUF file", p.display());
        }
        if !p.exists() {
            bail!("{}: no such file", p.display());
        }
        Ok(())
    }

    /// Flags that the chosen engine does not implement are refused, not ignored.
    pub fn refuse_inapplicable(cli: &Cli, engine: Engine, arch: &str) -> Result<()> {
        let m = cli.model.display();
        if cli.chat_template.is_some() && !cli.chat {
            bail!("--chat-template formats --chat turns (and jq-run serve's chat requests); without --chat the prompt is used as given");
        }
        match engine {
            Engine::Native => {
                if cli.stream_layers {
                    bail!("{m}: --stream-layers runs gemma3, llama, qwen2 and qwen3 models; this one is '{arch}' (the native Jarvis engine runs it whole)");
                }
                if matches!(cli.n_gpu_layers, Some(GpuLayers::N(n)) if n > 0) {
                    bail!("{m}: --n-gpu-layers: the native Jarvis engine runs on the CPU only");
                }
                if cli.rpc.is_some() || cli.no_repack {
                    bail!("{m}: --rpc and --no-repack apply to the llama.cpp engine; the native Jarvis engine runs on this machine's CPU");
                }
            }
            Engine::Llama => {
                if cli.metrics {
                    bail!("{m}: --metrics is computed by the native Jarvis engine only; this '{arch}' model runs on llama.cpp");
                }
            }
            Engine::Stream => {
                if jq::arch::Family::from_arch(arch).is_none() {
                    bail!("{m}: --stream-layers runs gemma3, llama (Llama, Mistral), qwen2 and qwen3 models; this one is '{arch}'");
                }
                if cli.metrics {
                    bail!("{m}: --metrics is computed by the native Jarvis engine only, not with --stream-layers");
                }
                if cli.chat {
                    bail!("{m}: --chat is not implemented with --stream-layers");
                }
                if cli.rpc.is_some() {
                    bail!("{m}: --rpc is not implemented with --stream-layers (remote devices hold whole layers on the llama.cpp engine; run without --stream-layers)");
                }
                if cli.no_repack {
                    bail!("{m}: --no-repack applies to the llama.cpp engine, not --stream-layers");
                }
                if matches!(cli.n_gpu_layers, Some(GpuLayers::N(n)) if n > 0) {
                    bail!("{m}: --n-gpu-layers places llama.cpp layers; with --stream-layers the budget (--vram-budget) decides, and only -g 0 (CPU) applies");
                }
            }
        }
        Ok(())
    }

    /// The longest text that could fit `n_ctx` tokens: no token covers more input bytes than
    /// its own text (byte-fallback and SentencePiece pieces are at least as long as what they
    /// stand for), so more than `n_ctx` times the longest token is refused before tokenizing.
    pub fn prompt_byte_limit(file: &GgufModel, n_ctx: u32) -> usize {
        let longest = file
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(usize::MAX, |a| {
                a.strings().map(<[u8]>::len).max().unwrap_or(1).max(1)
            });
        longest.saturating_mul(n_ctx as usize).saturating_add(64)
    }

    pub fn check_prompt_length(bytes: usize, limit: usize, n_ctx: u32) -> Result<()> {
        if bytes > limit {
            bail!("the prompt ({bytes} bytes) cannot fit the context of {n_ctx} tokens (raise -c/--ctx-size); it was not tokenized");
        }
        Ok(())
    }

    /// The whole of stdin as the prompt, read no further than `limit` bytes.
    pub fn read_stdin_prompt(r: impl std::io::Read, limit: usize) -> Result<String> {
        let mut buf = Vec::new();
        r.take(limit as u64 + 1).read_to_end(&mut buf)?;
        if buf.len() > limit {
            bail!("the prompt on stdin (more than {limit} bytes) cannot fit the context; it was not tokenized");
        }
        String::from_utf8(buf).map_err(|e| {
            anyhow::anyhow!(
                "the prompt on stdin is not valid UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            )
        })
    }

    /// `-f FILE`: the prompt, read no further than `limit` bytes, UTF-8.
    pub fn read_prompt_file(p: &Path, limit: usize) -> Result<String> {
        if p.is_dir() {
            bail!("-f/--file {}: is a directory", p.display());
        }
        let f = std::fs::File::open(p)
            .map_err(|e| anyhow::anyhow!("-f/--file {}: {e}", p.display()))?;
        read_stdin_prompt(f, limit).map_err(|e| {
            anyhow::anyhow!(
                "-f/--file {}: {}",
                p.display(),
                e.to_string().replace("the prompt on stdin", "the prompt")
            )
        })
    }

    /// One line of chat input.
    #[derive(Debug)]
    pub enum Line {
        Eof,
        Text(String),
        /// Longer than the limit (the rest of the line was read and dropped).
        TooLong(usize),
        /// Not UTF-8: the offset of the first bad byte.
        NotUtf8(usize),
    }

    /// Reads one line keeping at most `limit` bytes of it in memory.
    pub fn read_line(r: &mut dyn BufRead, limit: usize) -> std::io::Result<Line> {
        let mut buf = Vec::new();
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if buf.len() + take > limit {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(&chunk[..take]);
                }
            }
            r.consume(take);
            if done {
                break;
            }
        }
        Ok(if !any {
            Line::Eof
        } else if too_long {
            Line::TooLong(limit)
        } else {
            match String::from_utf8(buf) {
                Ok(s) => Line::Text(s),
                Err(e) => Line::NotUtf8(e.utf8_error().valid_up_to()),
            }
        })
    }
}

// ---------------------------------------------------------------- serve

/// A `--stream-layers` executor seen as one sequence.
struct StreamSeq(jq::engine::stream::Streamer, usize);

impl jq::serve::worker::OneSeq for StreamSeq {
    fn n_ctx(&self) -> usize {
        self.1
    }
    fn keep(&mut self, n: usize) -> usize {
        self.0.keep_seq(0, n)
    }
    fn start(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.0.eval(tokens, false)
    }
    fn push(&mut self, id: u32) -> Result<Vec<f32>> {
        self.0.eval(&[id], false)
    }
}

/// The native Jarvis engine seen as one sequence (a fresh generator per request).
struct NativeSeq<'m, 'a> {
    model: &'m jq::models::jarvis::Model<'a>,
    gen: Option<jq::models::jarvis::Generator<'m, 'a>>,
}

impl jq::serve::worker::OneSeq for NativeSeq<'_, '_> {
    fn n_ctx(&self) -> usize {
        self.model.cfg.ctx
    }
    fn start(&mut self, prompt: &[u32]) -> Result<Vec<f32>> {
        let mut g = jq::models::jarvis::Generator::new(self.model);
        g.prompt(prompt, false, false)?;
        let l = g.logits().to_vec();
        self.gen = Some(g);
        Ok(l)
    }
    fn push(&mut self, id: u32) -> Result<Vec<f32>> {
        let g = self.gen.as_mut().context("no prompt evaluated")?;
        g.push(id, false)?;
        Ok(g.logits().to_vec())
    }
}

/// `general.file_type` as llama.cpp names it (the common ones).
fn file_type_name(file: &GgufModel) -> String {
    let names = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (12, "Q3_K_M"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (32, "BF16"),
    ];
    file.get_u32("general.file_type")
        .ok()
        .and_then(|t| names.iter().find(|(n, _)| *n == t))
        .map_or_else(String::new, |(_, s)| (*s).to_string())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn serve(s: &ServeCli) -> Result<()> {
    use jq::serve::{worker, ModelInfo, Server, Vocab};
    use std::sync::Arc;
    let m = &s.m;
    let path = &m.model;
    guard::model_file(path)?;
    if s.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let file = GgufModel::open(path)
        .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    let arch = file
        .get_str("general.architecture")
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .to_string();
    jq::validate::check(&file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if m.rpc.is_some() && (arch == "jarvis" || m.stream_layers) {
        bail!("{}: --rpc places layers on the llama.cpp engine; not with --stream-layers or the native Jarvis engine", path.display());
    }
    let default_max_tokens = n_predict(s.n_predict)?;
    let name = s.alias.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| "model".into(), |f| f.to_string_lossy().into_owned())
    });
    let threads = m.threads();
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<worker::Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
    let first = file.path().to_path_buf();
    let engine_name;
    let (vocab, template, template_text, n_ctx) = if arch == "jarvis" {
        if m.stream_layers {
            bail!("{}: --stream-layers runs gemma3, llama, qwen2 and qwen3 models; this one is 'jarvis'", path.display());
        }
        engine_name = "native";
        let trained = file
            .get_u32(jq::models::jarvis::keys::CONTEXT_LENGTH)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let n_ctx = m.n_ctx(trained)?;
        let tok = Arc::new(
            jq::models::jarvis::WordTokenizer::from_gguf(&file)
                .with_context(|| format!("reading the vocabulary of {}", path.display()))?,
        );
        let piece = |t: Option<u32>| {
            t.and_then(|t| tok.tokens().get(t as usize).cloned())
                .unwrap_or_default()
        };
        let template = match &m.chat_template {
            Some(f) => {
                jq::chat::ChatTemplate::resolve(Some(f), None, &piece(tok.bos), &piece(tok.eos))?
            }
            None => None,
        };
        let (p, tk) = (first.clone(), tok.clone());
        std::thread::spawn(move || {
            let f = match GgufModel::open(&p) {
                Ok(f) => f,
                Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
            };
            let j = match Jarvis::load_with_ctx(&f, n_ctx as usize) {
                Ok(j) => j,
                Err(e) => return drop(ready_tx.send(Err(format!("{e:#}")))),
            };
            let _ = ready_tx.send(Ok(()));
            let mut seq = NativeSeq {
                model: &j.model,
                gen: None,
            };
            worker::run_one(&mut seq, &*tk, &worker::jq_sampler, jobs_rx);
        });
        (
            Vocab::Jarvis(tok),
            template,
            m.chat_template.clone().unwrap_or_default(),
            n_ctx,
        )
    } else if m.stream_layers {
        if jq::arch::Family::from_arch(&arch).is_none() {
            bail!("{}: --stream-layers runs gemma3, llama (Llama, Mistral), qwen2 and qwen3 models; this one is '{arch}'", path.display());
        }
        engine_name = "stream";
        let hp = jq::arch::Hparams::from_gguf(&file).with_context(|| path.display().to_string())?;
        let n_ctx = m.n_ctx(hp.n_ctx_train)?;
        let voc = Arc::new(Llama::load_vocab(&first)?);
        let template = voc.template(m.chat_template.as_deref())?;
        let opts = jq::engine::stream::StreamOptions {
            budget: m.budget()?,
            n_slots: m.prefetch,
            direct_io: m.direct_io,
            cpu: matches!(m.n_gpu_layers, Some(GpuLayers::N(0))),
            host_layers: m.host_layers.unwrap_or_default(),
            threads: m
                .threads
                .unwrap_or_else(|| threads.saturating_sub(1).max(1)),
            threads_batch: threads,
            n_ctx,
            n_ubatch: m.batch_size.unwrap_or(512).clamp(1, n_ctx),
            n_ubatch_auto: m.batch_size.is_none(),
            // --parallel N: N sequences whose next tokens share one sweep of the weights.
            n_seq: s.parallel,
            ..jq::engine::stream::StreamOptions::default()
        };
        let (p, v) = (path.clone(), voc.clone());
        let parallel = s.parallel;
        std::thread::spawn(move || {
            let mut st = match jq::engine::stream::Streamer::open(&p, &opts) {
                Ok(st) => st,
                Err(e) => return drop(ready_tx.send(Err(format!("{}: {e:#}", p.display())))),
            };
            eprintln!("{}", st.plan());
            let _ = ready_tx.send(Ok(()));
            // llama.cpp's sampler chain, as the llama.cpp engine samples.
            let chain = worker::llama_chain(v.n_vocab());
            if parallel > 1 {
                worker::run_stream(&mut st, &*v, n_ctx as usize, &chain, jobs_rx);
            } else {
                worker::run_one(&mut StreamSeq(st, n_ctx as usize), &*v, &chain, jobs_rx);
            }
        });
        let tt = m
            .chat_template
            .clone()
            .or_else(|| voc.chat_template())
            .unwrap_or_default();
        (Vocab::Llama(voc), template, tt, n_ctx)
    } else {
        if !LLAMA_ARCHS.contains(&arch.as_str()) {
            bail!(
                "{}: architecture '{arch}' is not supported: jq-run runs jarvis natively and, through llama.cpp, {}",
                path.display(),
                LLAMA_ARCHS.join(", ")
            );
        }
        engine_name = "llama.cpp";
        let shape = ModelShape::from_gguf(&file).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let n_ctx = m.n_ctx(shape.n_ctx_train)?;
        let n_batch = m.batch_size.unwrap_or(512).clamp(1, n_ctx);
        // The KV cache holds every sequence: it is planned as one context of N x -c.
        let total = n_ctx
            .checked_mul(s.parallel as u32)
            .context("--parallel x -c overflows")?;
        let llama = Arc::new(load_llama(m, &file, &arch, &shape, total, n_batch)?.0);
        let template = llama.template(m.chat_template.as_deref())?;
        let (l, n_seq, swa_full) = (llama.clone(), s.parallel, s.swa_full);
        std::thread::spawn(move || {
            let shape = worker::LlamaShape {
                n_seq,
                n_ctx_seq: n_ctx,
                n_batch,
                threads: threads as i32,
                swa_full,
            };
            worker::run_llama(&l, shape, jobs_rx, ready_tx);
        });
        let tt = m
            .chat_template
            .clone()
            .or_else(|| llama.chat_template())
            .unwrap_or_default();
        (Vocab::Llama(llama), template, tt, n_ctx)
    };
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => bail!("the engine thread ended while loading"),
    }
    if engine_name == "native" && s.parallel > 1 {
        eprintln!("serve: the {engine_name} engine serves one request at a time; --parallel {} requests wait in its queue", s.parallel);
    }
    let info = ModelInfo {
        name,
        path: path.clone(),
        arch,
        size_bytes: file.total_bytes(),
        n_params: file.tensors().map(|t| t.info.n_elements()).sum(),
        quant: file_type_name(&file),
        engine: engine_name,
    };
    drop(file);
    if s.api_key.is_none() && !is_loopback(&s.host) {
        eprintln!("serve: {} listening on {} without --api-key: anyone who can reach it can use the model", paint(jq::term::WARNING, "warning:"), s.host);
    }
    let app = Arc::new(Server {
        info,
        vocab,
        template,
        template_text,
        n_ctx: n_ctx as usize,
        defaults: m.sampler(0),
        default_max_tokens,
        api_key: s.api_key.clone(),
        jobs: jobs_tx,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind((s.host.as_str(), s.port))
            .await
            .with_context(|| format!("--host {} --port {}: cannot listen", s.host, s.port))?;
        let addr = l.local_addr().context("the listening address")?;
        eprintln!(
            "serve: listening on http://{addr} (model '{}', {} engine, {} x {} positions)",
            app.info.name,
            app.info.engine,
            if app.info.engine != "native" {
                s.parallel
            } else {
                1
            },
            app.n_ctx
        );
        jq::serve::http::serve(l, app).await.context("serving")
    })
}

// ---------------------------------------------------------------- rpc-server

/// `jq-run rpc-server`: a supervisor that runs ggml's serving loop in a child process (this
/// program again, with the hidden --serve-child) and starts a new one whenever it dies.
fn rpc_server(s: &RpcServerCli) -> Result<()> {
    use jq::engine::rpc;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    if s.port == 0 {
        bail!("--port 0: give a fixed port (clients name it in --rpc HOST:PORT)");
    }
    let ep = rpc::Endpoint {
        host: s.host.clone(),
        port: s.port,
    };
    let threads = s
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if s.serve_child {
        let e = rpc::serve(&ep, &s.device, threads, s.cache.as_deref()).unwrap_err();
        eprintln!("jq-run rpc-server: error: {e}");
        std::process::exit(2);
    }
    if let Some(c) = &s.cache {
        std::fs::create_dir_all(c).with_context(|| format!("--cache {}", c.display()))?;
    }
    let names = rpc::local_device_names();
    for d in &s.device {
        if !names.contains(d) {
            bail!(
                "--device {d}: no such device here (devices: {})",
                names.join(", ")
            );
        }
    }
    if !is_loopback(&s.host) {
        eprintln!(
            "rpc-server: warning: listening on {}: ggml RPC has no authentication or encryption; anyone who can reach this port can use this machine's devices and read or write their memory",
            s.host
        );
    }
    // One clear line now rather than a child that cannot bind.
    drop(
        std::net::TcpListener::bind((s.host.as_str(), s.port))
            .with_context(|| format!("--host {} --port {}: cannot listen", s.host, s.port))?,
    );
    let exe = std::env::current_exe().context("finding this program to start the server")?;
    let served = if s.device.is_empty() {
        let gpus: Vec<String> = jq::engine::llama::gpus()
            .into_iter()
            .map(|g| g.name)
            .collect();
        if gpus.is_empty() {
            "CPU".to_string()
        } else {
            gpus.join(", ")
        }
    } else {
        s.device.join(", ")
    };
    let mut restarts = 0u64;
    loop {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("rpc-server")
            .args(["--host", &s.host, "--port", &s.port.to_string()])
            .args(["--threads", &threads.to_string(), "--serve-child"]);
        if !s.device.is_empty() {
            cmd.args(["--device", &s.device.join(",")]);
        }
        if let Some(c) = &s.cache {
            cmd.arg("--cache").arg(c);
        }
        if s.verbose {
            cmd.arg("-v");
        } else {
            cmd.stdout(std::process::Stdio::null());
        }
        // SAFETY: prctl is async-signal-safe; the child dies with this process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the serving process")?;
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                bail!("{ep}: the serving process ended while starting ({st})");
            }
            if rpc::hello(&ep, Duration::from_secs(2)).is_ok() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!("{ep}: the serving process did not answer HELLO within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (a, b, c) = rpc::PROTO_VERSION;
        if restarts == 0 {
            eprintln!(
                "rpc-server: serving {served} on {ep} (ggml RPC protocol {a}.{b}.{c}, {threads} threads, pid {})",
                child.id()
            );
        } else {
            eprintln!(
                "rpc-server: serving again on {ep} (restart {restarts}, pid {})",
                child.id()
            );
        }
        let st = child.wait().context("waiting for the serving process")?;
        if st.signal().is_none() {
            bail!("{ep}: the serving process ended ({st})");
        }
        restarts += 1;
        eprintln!("rpc-server: the serving process died ({st}), most likely on a malformed request; restarting");
    }
}
