//! `jq-convert`: turn checkpoints into GGUF, inspect GGUF files, re-quantize them.

mod gemma3;
mod imatrix;
mod inspect;
mod jarvis;
mod model_card;
mod modelfile;
mod progress;
mod quantize;
mod sentencepiece;
mod shards;
mod tokenizer_json;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use jq::gguf::GgufModel;
use jq::output::{refuse_aliases, AtomicFile};
use jq::quant::GgmlType;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "jq-convert",
    version,
    about = "Convert checkpoints to GGUF, inspect GGUF files, re-quantize them",
    after_help = "Examples:\n  jq-convert hf-to-gguf gemma-3-1b-it --type q8_0 -o gemma3.gguf --modelfile Modelfile\n  jq-convert npz-to-gguf fixtures/jarvis/tiny-norm/model.npz --type q8_0 -o jarvis.gguf\n  jq-convert npz-to-gguf model.npz --type q4_0 --target ollama -o jarvis.gguf --modelfile Modelfile\n  jq-convert inspect model.gguf\n  jq-convert inspect model.gguf --json --full > model.json\n  jq-convert quantize model-f32.gguf model-q4_0.gguf --type q4_0\n\nOutputs: an output that is the same file as an input (or as another output) is refused. Each output is written as .NAME.<pid>.tmp beside it, locked (flock) while written, and renamed into place only when complete; an error, Ctrl-C or SIGTERM removes it, and a leftover of a killed run (SIGKILL) is removed by the next run writing the same name once its lock is free. Errors are one line (jq-convert: error: ...), exit status 1."
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

/// `hf-to-gguf --type`: one of the converter's own types, or a llama-quantize file type.
#[derive(Clone, Copy, Debug)]
enum HfTarget {
    Plain(HfType),
    Mixture(quantize::FileType),
}

fn parse_hf_type(s: &str) -> std::result::Result<HfTarget, String> {
    if let Ok(t) = <HfType as ValueEnum>::from_str(s, true) {
        return Ok(HfTarget::Plain(t));
    }
    quantize::parse_file_type(s).map(HfTarget::Mixture)
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
        after_help = "Examples:\n  jq-convert hf-to-gguf gemma-3-1b-it --type q8_0 -o gemma3-1b-q8_0.gguf\n  jq-convert hf-to-gguf gemma-3-27b-it --type q4_0 -o gemma3-27b.gguf --modelfile Modelfile --threads 16\n  jq-convert hf-to-gguf gemma-3-270m-it --type q4_k_m -o gemma3-270m-q4_k_m.gguf\n  ollama create gemma3 -f Modelfile"
    )]
    HfToGguf {
        /// The checkpoint directory.
        model_dir: PathBuf,
        /// Type of the 2-D weights: f32, f16, bf16, q8_0 or q4_0 (as llama.cpp's converter
        /// writes them; q4_0 keeps the tied embedding at Q8_0), or any file type of `quantize`
        /// (q4_k_m, q5_k_m, q6_k, iq4_xs, ...: llama-quantize's mixture, in one pass, the same
        /// bytes as the converter in the checkpoint's bf16/f16 followed by llama-quantize).
        #[arg(long = "type", value_parser = parse_hf_type)]
        ty: HfTarget,
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
    /// Re-encode a GGUF's weights like llama.cpp's `llama-quantize`, any architecture.
    ///
    /// 2-D (and 3-D) `*weight` tensors are re-encoded; norms, position embeddings and 1-D
    /// tensors are copied. Each tensor's type follows llama.cpp's mixture for the file type
    /// (`llama_tensor_get_type`: Q4_K_M keeps the output in Q6_K and gives some attn_v and
    /// ffn_down layers Q6_K, ...); `--pure` gives every eligible tensor the file type's own
    /// type. Rows that are not a whole number of blocks fall back to a smaller block (Q4_K ->
    /// Q5_0, Q6_K -> Q8_0, ...) or F16, with a warning. The input may hold any type that
    /// decodes (F32, F16, BF16, every K-quant, legacy and i-quant type); decoding to F16/BF16/F32
    /// needs no flag, re-quantizing a quantized tensor needs --allow-requantize. The output
    /// appears only when the whole file was written.
    #[command(
        after_help = "Types (case-insensitive): f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs tq1_0 tq2_0 mxfp4_moe q1_0 q2_0; aliases q3_k = q3_k_m, q4_k = q4_k_m, q5_k = q5_k_m. q2_k_s needs --imatrix; nvfp4 (no mixture in the pinned llama.cpp) is refused.\n\nExamples:\n  jq-convert quantize model-f16.gguf model-q4_k_m.gguf --type q4_k_m\n  jq-convert quantize model-f32.gguf model-q4_0.gguf --type q4_0 --pure\n  jq-convert quantize model-q4_k_m.gguf model-f16.gguf --type f16\n  jq-convert quantize model-q8_0.gguf model-q4_k_m.gguf --type Q4_K --allow-requantize\n  jq-convert quantize in.gguf out.gguf --type q5_k_m --output-tensor-type q8_0 --tensor-type 'attn_v=q8_0'\n  jq-convert quantize model-f16.gguf model-q2_k_s.gguf --type q2_k_s --imatrix imatrix.gguf"
    )]
    Quantize {
        /// Input GGUF (any decodable tensor types).
        input: PathBuf,
        /// Output GGUF.
        output: PathBuf,
        /// File type (llama-quantize's names, any case).
        #[arg(long = "type")]
        ty: String,
        /// Re-encode weights that are already quantized instead of refusing.
        #[arg(long)]
        allow_requantize: bool,
        /// Every eligible tensor gets the file type's own type (no mixture), as llama-quantize --pure.
        #[arg(long)]
        pure: bool,
        /// Type of output.weight (llama-quantize --output-tensor-type).
        #[arg(long)]
        output_tensor_type: Option<String>,
        /// Type of token_embd.weight (llama-quantize --token-embedding-type).
        #[arg(long)]
        token_embedding_type: Option<String>,
        /// PATTERN=TYPE: tensors whose name matches the regex PATTERN get TYPE (first match wins;
        /// repeatable), as llama-quantize --tensor-type.
        #[arg(long = "tensor-type")]
        tensor_type: Vec<String>,
        /// Importance matrix (llama-imatrix's GGUF, or its legacy .dat) weighting the encoders'
        /// error, as llama-quantize --imatrix; needed by q2_k_s.
        #[arg(long, value_name = "FILE")]
        imatrix: Option<PathBuf>,
    },
}

/// Parses `--tensor-type PATTERN=TYPE`.
fn parse_tensor_override(s: &str) -> std::result::Result<(String, GgmlType), String> {
    let (p, t) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("'{s}' is not PATTERN=TYPE"))?;
    Ok((p.to_string(), quantize::parse_tensor_type(t)?))
}

/// Renders `m` and checks it against Ollama's grammar: done before any conversion, so a value
/// Ollama could not read back (`--system` with a control character, say) is refused before
/// anything is written.
fn render_modelfile(m: &modelfile::Modelfile) -> Result<String> {
    let text = m.render()?;
    modelfile::validate(&text)
        .map_err(|e| anyhow::anyhow!("internal error: generated Modelfile is invalid: {e}"))?;
    Ok(text)
}

/// The Modelfile's text written under its temporary name (so an unwritable location fails
/// before the conversion starts); renamed into place after the GGUF.
fn stage_modelfile(mf: &Path, text: &str) -> Result<AtomicFile> {
    use std::io::Write;
    let f = AtomicFile::create(mf).with_context(|| format!("--modelfile {}", mf.display()))?;
    f.file()
        .write_all(text.as_bytes())
        .with_context(|| format!("writing {}", mf.display()))?;
    Ok(f)
}

/// What the Modelfile at `mf` writes after FROM for `gguf` (which need not exist yet): the bare
/// file name when both are in the same directory, else the GGUF's absolute path.
fn modelfile_from(mf: &Path, gguf: &Path) -> Result<String> {
    let dir_of = |p: &Path| {
        let d = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        d.canonicalize()
            .with_context(|| format!("{}: the directory of {}", d.display(), p.display()))
    };
    let name = gguf
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    Ok(if dir_of(mf)? == dir_of(gguf)? {
        name
    } else {
        dir_of(gguf)?.join(name).to_string_lossy().into_owned()
    })
}

/// Refuses a directory where a file is expected, with a message that says so (the OS says
/// "Is a directory" or, for a memory map, "No such device").
fn input_file(role: &str, p: &Path) -> Result<()> {
    if p.is_dir() {
        bail!("{role} {} is a directory, not a file", p.display());
    }
    if !p.exists() {
        bail!("{role} {}: no such file", p.display());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
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
                bail!("--modelfile needs --target ollama: Ollama cannot run the native jarvis architecture");
            }
            if system.is_some() && modelfile.is_none() {
                bail!("--system goes into the Modelfile: it needs --modelfile");
            }
            input_file("the checkpoint", &npz)?;
            let dir = match npz.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let config_in = config.clone().unwrap_or_else(|| dir.join("config.json"));
            let tokenizer_in = tokenizer
                .clone()
                .unwrap_or_else(|| dir.join("tokenizer.json"));
            let ty = GgmlType::from(ty);
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
            let mut outputs: Vec<(&str, &Path)> = vec![("-o", &output)];
            if let Some(mf) = &modelfile {
                outputs.push(("--modelfile", mf));
            }
            refuse_aliases(
                &outputs,
                &[
                    ("the checkpoint", &npz),
                    ("config", &config_in),
                    ("tokenizer", &tokenizer_in),
                ],
            )?;
            let ck = jarvis::load(&npz, config.as_deref(), tokenizer.as_deref(), heads)
                .with_context(|| format!("loading {}", npz.display()))?;
            let staged = match &modelfile {
                Some(mf) => {
                    let from = modelfile_from(mf, &output)?;
                    let text = render_modelfile(&modelfile::for_jarvis(&from, ck.cfg.ctx, system))?;
                    Some((mf, stage_modelfile(mf, &text)?))
                }
                None => None,
            };
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
            let (_, gguf) = jarvis::write(&ck, &output, &opts)?;
            let size = gguf.file().metadata().map(|m| m.len()).unwrap_or(0);
            gguf.commit()?;
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
            if let Some((mf, f)) = staged {
                f.commit()?;
                eprintln!(
                    "{}: Modelfile (ollama create NAME -f {})",
                    mf.display(),
                    mf.display()
                );
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
            let (ty, mixture) = match ty {
                HfTarget::Plain(t) => (GgmlType::from(t), None),
                HfTarget::Mixture(f) => (GgmlType::F16, Some(f)),
            };
            let type_name = mixture.map_or_else(|| ty.name().to_string(), |f| f.name.to_string());
            let ck = gemma3::Checkpoint::open(&model_dir)
                .with_context(|| format!("reading {}", model_dir.display()))?;
            let output = output.unwrap_or_else(|| {
                let stem = model_dir
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into());
                model_dir.join(format!("{stem}-{type_name}.gguf"))
            });
            let mut outputs: Vec<(&str, &Path)> = vec![("-o", &output)];
            if let Some(mf) = &modelfile {
                outputs.push(("--modelfile", mf));
            }
            let inputs = ck.input_files();
            let inputs: Vec<(&str, &Path)> = inputs
                .iter()
                .map(|p| ("the checkpoint's", p.as_path()))
                .collect();
            refuse_aliases(&outputs, &inputs)?;
            let staged = match &modelfile {
                Some(mf) => {
                    let from = modelfile_from(mf, &output)?;
                    let ctx = num_ctx.unwrap_or(ck.cfg.max_positions.min(8192));
                    let text = render_modelfile(&gemma3::modelfile(&from, ctx))?;
                    Some((mf, stage_modelfile(mf, &text)?))
                }
                None => None,
            };
            let mut pool = rayon::ThreadPoolBuilder::new();
            if let Some(n) = threads {
                pool = pool.num_threads(n.max(1));
            }
            let pool = pool.build().context("starting the worker threads")?;
            let t = std::time::Instant::now();
            let opts = gemma3::Options {
                ty,
                mixture,
                progress: std::io::stderr().is_terminal(),
            };
            let (s, gguf) = pool.install(|| gemma3::write(&ck, &output, &opts))?;
            gguf.commit()?;
            eprintln!(
                "{}: gemma3, {} layers, hidden {}, vocabulary {}, {} tensors from {} shard(s), {} ({:.2} MiB) in {:.2}s",
                output.display(),
                ck.cfg.n_layers,
                ck.cfg.hidden,
                ck.embedding_rows,
                s.tensors,
                ck.weights.n_shards(),
                type_name.to_ascii_uppercase(),
                s.bytes as f64 / 1048576.0,
                t.elapsed().as_secs_f64()
            );
            if let Some((mf, f)) = staged {
                f.commit()?;
                eprintln!(
                    "{}: Modelfile (ollama create NAME -f {})",
                    mf.display(),
                    mf.display()
                );
            }
        }
        Cmd::Inspect { file, json, full } => {
            use std::io::Write;
            input_file("the GGUF", &file)?;
            let f =
                GgufModel::open(&file).with_context(|| format!("reading {}", file.display()))?;
            let text = if json {
                serde_json::to_string_pretty(&inspect::to_json(&f, full))? + "\n"
            } else {
                inspect::to_text(&f, full)
            };
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("writing to stdout")?;
        }
        Cmd::Quantize {
            input,
            output,
            ty,
            allow_requantize,
            pure,
            output_tensor_type,
            token_embedding_type,
            tensor_type,
            imatrix,
        } => {
            input_file("the input", &input)?;
            refuse_aliases(&[("the output", &output)], &[("the input", &input)])?;
            if let Some(m) = &imatrix {
                refuse_aliases(&[("the output", &output)], &[("--imatrix", m)])?;
            }
            let ty = quantize::parse_file_type(&ty).map_err(|e| anyhow!("--type: {e}"))?;
            let tensor_flag = |flag: &str, v: Option<String>| {
                v.map(|v| quantize::parse_tensor_type(&v).map_err(|e| anyhow!("{flag}: {e}")))
                    .transpose()
            };
            let output_tensor_type = tensor_flag("--output-tensor-type", output_tensor_type)?;
            let token_embedding_type = tensor_flag("--token-embedding-type", token_embedding_type)?;
            let tensor_types = tensor_type
                .iter()
                .map(|s| parse_tensor_override(s).map_err(|e| anyhow!("--tensor-type: {e}")))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .map(|(p, t)| {
                    regex::Regex::new(&p)
                        .map(|re| (re, t))
                        .with_context(|| format!("--tensor-type: bad pattern '{p}'"))
                })
                .collect::<Result<Vec<_>>>()?;
            let opts = quantize::Options {
                file_type: ty,
                allow_requantize,
                pure,
                output_tensor_type,
                token_embedding_type,
                tensor_types,
                imatrix: match &imatrix {
                    Some(p) => Some((imatrix::Imatrix::load(p)?, p.to_string_lossy().into_owned())),
                    None => None,
                },
                progress: std::io::stderr().is_terminal(),
            };
            let t = std::time::Instant::now();
            let s = quantize::run(&input, &output, &opts)?;
            eprintln!(
                "{}: {} tensors re-encoded ({}), {} copied, {} fell back to another type; {:.2} MiB -> {:.2} MiB in {:.2}s",
                output.display(),
                s.converted,
                ty.name.to_ascii_uppercase(),
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

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| jq::term::exit_on_clap_error(e));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`inspect ... | head`) ends the program quietly, as cat does.
        Err(e) if jq::errors::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jq-convert: error: {}", jq::errors::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
