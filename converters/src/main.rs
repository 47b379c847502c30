//! `jq-convert`: turn checkpoints into GGUF, inspect GGUF files, re-quantize them.

mod inspect;
mod quantize;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use jq::gguf::GgufFile;
use jq::quant::GgmlType;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "jq-convert",
    version,
    about = "Convert checkpoints to GGUF, inspect GGUF files, re-quantize them",
    after_help = "Examples:\n  jq-convert inspect model.gguf\n  jq-convert inspect model.gguf --json --full > model.json\n  jq-convert quantize model-f32.gguf model-q4_0.gguf --type q4_0"
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

#[derive(Subcommand, Debug)]
enum Cmd {
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Inspect { file, json, full } => {
            let f = GgufFile::open(&file).with_context(|| format!("reading {}", file.display()))?;
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
