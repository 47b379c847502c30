//! `jq-convert`: turn checkpoints into GGUF, inspect GGUF files, re-quantize them.

mod gemma3;
mod inspect;
mod jarvis;
mod modelfile;
mod progress;
mod quantize;
mod sentencepiece;
mod shards;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use jq::gguf::GgufModel;
use jq::quant::GgmlType;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "jq-convert",
    version,
    about = "Convert checkpoints to GGUF, inspect GGUF files, re-quantize them",
    after_help = "Examples:\n  jq-convert hf-to-gguf gemma-3-1b-it --type q8_0 -o gemma3.gguf --modelfile Modelfile\n  jq-convert npz-to-gguf fixtures/jarvis/tiny-norm/model.npz --type q8_0 -o jarvis.gguf\n  jq-convert npz-to-gguf model.npz --type q4_0 --target ollama -o jarvis.gguf --modelfile Modelfile\n  jq-convert inspect model.gguf\n  jq-convert inspect model.gguf --json --full > model.json\n  jq-convert quantize model-f32.gguf model-q4_0.gguf --type q4_0"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TargetType {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
}

impl From<TargetType> for GgmlType {
    fn from(t: TargetType) -> GgmlType {
        match t {
            TargetType::F32 => GgmlType::F32,
            TargetType::F16 => GgmlType::F16,
            TargetType::Q8_0 => GgmlType::Q8_0,
            TargetType::Q4_0 => GgmlType::Q4_0,
        }
    }
}

/// Output types of `hf-to-gguf` (2-D weights; norms stay F32).
#[derive(ValueEnum, Clone, Copy, Debug)]
enum HfType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    /// Q4_0 weights; the tied token embedding (also the output projection) stays Q8_0.
    #[value(name = "q4_0")]
    Q4_0,
}

impl From<HfType> for GgmlType {
    fn from(t: HfType) -> GgmlType {
        match t {
            HfType::F32 => GgmlType::F32,
            HfType::F16 => GgmlType::F16,
            HfType::Bf16 => GgmlType::BF16,
            HfType::Q8_0 => GgmlType::Q8_0,
            HfType::Q4_0 => GgmlType::Q4_0,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExportTarget {
    /// `general.architecture = "jarvis"`, run by jq-run's native engine.
    Native,
    /// The exact `gpt2` mapping that llama.cpp and Ollama run (needs a final LayerNorm).
    Ollama,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Convert a Jarvis numpy checkpoint (.npz + config.json + tokenizer.json) to GGUF.
    ///
    /// Every array's shape is checked against the configuration; a missing, extra or
    /// mis-shaped key, a non-float array or a NaN weight is an error naming it. Nothing is
    /// written under the output name unless the whole conversion succeeds.
    #[command(
        after_help = "Examples:\n  jq-convert npz-to-gguf fixtures/jarvis/tiny-norm/model.npz --type f32 -o jarvis-f32.gguf\n  jq-convert npz-to-gguf fixtures/jarvis/tiny-norm/model.npz --type q8_0 --target ollama -o jarvis.gguf --modelfile Modelfile\n  ollama create jarvis -f Modelfile"
    )]
    NpzToGguf {
        /// The checkpoint (.npz; stored or deflated members, npy v1-v3, <f4/<f8/<f2).
        npz: PathBuf,
        /// Type of the 2-D weights (1-D tensors stay F32).
        #[arg(long = "type", value_enum)]
        ty: TargetType,
        /// config.json (default: beside the npz).
        #[arg(long)]
        config: Option<PathBuf>,
        /// tokenizer.json (default: beside the npz).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Head count, when config.json lacks it or is missing (it cannot be inferred).
        #[arg(long)]
        heads: Option<usize>,
        /// Output flavour.
        #[arg(long, value_enum, default_value = "native")]
        target: ExportTarget,
        /// Output GGUF (default: beside the npz, named after it and the type).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Also write an Ollama Modelfile here (needs --target ollama).
        #[arg(long)]
        modelfile: Option<PathBuf>,
        /// SYSTEM text for the Modelfile.
        #[arg(long)]
        system: Option<String>,
        /// Export a checkpoint without a final norm for Ollama anyway (refused: no exact
        /// mapping exists and the approximation is not implemented).
        #[arg(long)]
        approximate: bool,
    },
    /// Convert a Hugging Face Gemma-3 checkpoint directory to GGUF `gemma3` (llama.cpp, Ollama).
    ///
    /// Reads config.json (Gemma3ForCausalLM, or the text part of
    /// Gemma3ForConditionalGeneration), model.safetensors or the shards of
    /// model.safetensors.index.json (bf16/f16/f32), tokenizer.model, tokenizer_config.json,
    /// tokenizer.json, chat_template.jinja/.json and generation_config.json. Streams one tensor
    /// at a time; nothing is written under the output name unless the whole conversion succeeds.
    #[command(
        after_help = "Examples:\n  jq-convert hf-to-gguf gemma-3-1b-it --type q8_0 -o gemma3-1b-q8_0.gguf\n  jq-convert hf-to-gguf gemma-3-27b-it --type q4_0 -o gemma3-27b.gguf --modelfile Modelfile --threads 16\n  ollama create gemma3 -f Modelfile"
    )]
    HfToGguf {
        /// The checkpoint directory.
        model_dir: PathBuf,
        /// Type of the 2-D weights.
        #[arg(long = "type", value_enum)]
        ty: HfType,
        /// Output GGUF (default: MODEL_DIR/<dir name>-<type>.gguf).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Also write an Ollama Modelfile here.
        #[arg(long)]
        modelfile: Option<PathBuf>,
        /// Context length for the Modelfile's num_ctx (default: min(8192, the model's)).
        #[arg(long)]
        num_ctx: Option<usize>,
        /// Worker threads for the codecs (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Show a GGUF file's version, alignment, metadata and tensors.
    #[command(
        after_help = "Examples:\n  jq-convert inspect model.gguf\n  jq-convert inspect model.gguf --json | python3 -m json.tool"
    )]
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print one JSON object instead of text (tensor shapes in ggml `ne` order).
        #[arg(long)]
        json: bool,
        /// Print long arrays in full (text: more than 8 items, JSON: more than 64).
        #[arg(long)]
        full: bool,
    },
    /// Re-encode a GGUF's weights like llama.cpp's `llama-quantize --pure`, any architecture.
    ///
    /// 2-D (and 3-D) `*weight` tensors are re-encoded; norms, position embeddings and 1-D
    /// tensors are copied. Rows that are not a whole number of blocks fall back to F16 with a
    /// warning. The output appears only when the whole file was written.
    #[command(
        after_help = "Examples:\n  jq-convert quantize model-f32.gguf model-q4_0.gguf --type q4_0\n  jq-convert quantize model-q8_0.gguf model-q4_0.gguf --type q4_0 --allow-requantize"
    )]
    Quantize {
        /// Input GGUF (weights in F32, F16 or BF16).
        input: PathBuf,
        /// Output GGUF.
        output: PathBuf,
        /// Target type of the re-encoded weights.
        #[arg(long = "type", value_enum)]
        ty: TargetType,
        /// Re-encode weights that are already quantized (Q8_0/Q4_0) instead of refusing.
        #[arg(long)]
        allow_requantize: bool,
    },
}

/// What the Modelfile at `mf` writes after FROM for `gguf`: the bare file name when both are in
/// the same directory, else the GGUF's absolute path.
/// Renders `m`, checks it against Ollama's grammar and writes it to `mf`.
fn write_modelfile(mf: &std::path::Path, m: &modelfile::Modelfile) -> Result<()> {
    let text = m.render();
    modelfile::validate(&text)
        .map_err(|e| anyhow::anyhow!("internal error: generated Modelfile is invalid: {e}"))?;
    std::fs::write(mf, text).with_context(|| format!("writing {}", mf.display()))?;
    eprintln!(
        "{}: Modelfile (ollama create NAME -f {})",
        mf.display(),
        mf.display()
    );
    Ok(())
}

fn modelfile_from(mf: &std::path::Path, gguf: &std::path::Path) -> Result<String> {
    let same_dir = |p: &std::path::Path| {
        p.parent()
            .map(|d| {
                if d.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    d
                }
            })
            .and_then(|d| d.canonicalize().ok())
    };
    Ok(if same_dir(mf) == same_dir(gguf) {
        gguf.file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned())
    } else {
        gguf.canonicalize()?.to_string_lossy().into_owned()
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::NpzToGguf {
            npz,
            ty,
            config,
            tokenizer,
            heads,
            target,
            output,
            modelfile,
            system,
            approximate,
        } => {
            if modelfile.is_some() && target != ExportTarget::Ollama {
                anyhow::bail!("--modelfile needs --target ollama: Ollama cannot run the native jarvis architecture");
            }
            let ty = GgmlType::from(ty);
            let ck = jarvis::load(&npz, config.as_deref(), tokenizer.as_deref(), heads)
                .with_context(|| format!("loading {}", npz.display()))?;
            let output = output.unwrap_or_else(|| {
                let stem = npz
                    .file_stem()
                    .map_or("model".into(), |s| s.to_string_lossy().into_owned());
                let suffix = if target == ExportTarget::Ollama {
                    "-ollama"
                } else {
                    ""
                };
                npz.with_file_name(format!("{stem}-{}{suffix}.gguf", ty.name()))
            });
            let opts = jarvis::Options {
                ty,
                target: match target {
                    ExportTarget::Native => jarvis::Target::Native,
                    ExportTarget::Ollama => jarvis::Target::Ollama,
                },
                approximate,
                progress: std::io::stderr().is_terminal(),
            };
            let t = std::time::Instant::now();
            jarvis::write(&ck, &output, &opts)?;
            let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "{}: {} layers, d_model {}, vocabulary {}, {} ({:.2} MiB) in {:.2}s",
                output.display(),
                ck.cfg.n_layers,
                ck.cfg.d_model,
                ck.cfg.vocab,
                ty,
                size as f64 / 1048576.0,
                t.elapsed().as_secs_f64()
            );
            if let Some(mf) = modelfile {
                let from = modelfile_from(&mf, &output)?;
                write_modelfile(&mf, &modelfile::for_jarvis(&from, ck.cfg.ctx, system))?;
            }
        }
        Cmd::HfToGguf {
            model_dir,
            ty,
            output,
            modelfile,
            num_ctx,
            threads,
        } => {
            let ty = GgmlType::from(ty);
            let output = output.unwrap_or_else(|| {
                let stem = model_dir
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into());
                model_dir.join(format!("{stem}-{}.gguf", ty.name()))
            });
            let mut pool = rayon::ThreadPoolBuilder::new();
            if let Some(n) = threads {
                pool = pool.num_threads(n.max(1));
            }
            let pool = pool.build().context("starting the worker threads")?;
            let t = std::time::Instant::now();
            let ck = gemma3::Checkpoint::open(&model_dir)
                .with_context(|| format!("reading {}", model_dir.display()))?;
            let opts = gemma3::Options {
                ty,
                progress: std::io::stderr().is_terminal(),
            };
            let s = pool.install(|| gemma3::write(&ck, &output, &opts))?;
            eprintln!(
                "{}: gemma3, {} layers, hidden {}, vocabulary {}, {} tensors from {} shard(s), {} ({:.2} MiB) in {:.2}s",
                output.display(),
                ck.cfg.n_layers,
                ck.cfg.hidden,
                ck.embedding_rows,
                s.tensors,
                ck.weights.n_shards(),
                ty,
                s.bytes as f64 / 1048576.0,
                t.elapsed().as_secs_f64()
            );
            if let Some(mf) = modelfile {
                let from = modelfile_from(&mf, &output)?;
                let ctx = num_ctx.unwrap_or(ck.cfg.max_positions.min(8192));
                write_modelfile(&mf, &gemma3::modelfile(&from, ctx))?;
            }
        }
        Cmd::Inspect { file, json, full } => {
            let f =
                GgufModel::open(&file).with_context(|| format!("reading {}", file.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&inspect::to_json(&f, full))?
                );
            } else {
                print!("{}", inspect::to_text(&f, full));
            }
        }
        Cmd::Quantize {
            input,
            output,
            ty,
            allow_requantize,
        } => {
            let opts = quantize::Options {
                target: ty.into(),
                allow_requantize,
                progress: std::io::stderr().is_terminal(),
            };
            let t = std::time::Instant::now();
            let s = quantize::run(&input, &output, &opts)?;
            eprintln!(
                "{}: {} tensors re-encoded as {}, {} copied, {} fell back to F16; {:.2} MiB -> {:.2} MiB in {:.2}s",
                output.display(),
                s.converted,
                GgmlType::from(ty),
                s.copied,
                s.fallbacks.len(),
                s.bytes_in as f64 / 1048576.0,
                s.bytes_out as f64 / 1048576.0,
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
