//! llama.cpp's own `llama_model_quantize` (mixture rules, not pure), the anchor of
//! scripts/perplexity-table and a way to check `jq-convert quantize` by hand:
//!   cargo run --release --example llama_quantize -- IN.gguf OUT.gguf FTYPE [THREADS]
//! FTYPE is llama.cpp's number (15 = Q4_K_M, 7 = Q8_0, ...).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        eprintln!("usage: llama_quantize IN.gguf OUT.gguf FTYPE [THREADS]");
        return ExitCode::FAILURE;
    }
    let (Ok(ftype), Ok(threads)) = (
        a[2].parse::<u32>(),
        a.get(3).map_or(Ok(0), |t| t.parse::<i32>()),
    ) else {
        eprintln!("llama_quantize: FTYPE and THREADS are numbers");
        return ExitCode::FAILURE;
    };
    jq::ggml::silence_logs();
    match jq::ggml::llama_quantize(Path::new(&a[0]), Path::new(&a[1]), ftype, false, threads) {
        0 => ExitCode::SUCCESS,
        rc => {
            eprintln!("llama_quantize: llama_model_quantize returned {rc}");
            ExitCode::FAILURE
        }
    }
}
