//! Writes a synthetic Gemma-3 GGUF (random weights, real names, metadata, vocabulary and chat
//! template) that llama.cpp loads: `cargo run --release --example synth_gemma3 -- OUT.gguf
//! [tiny|2b|27b] [f32|f16|q8_0|q4_0]`. The 27B shape at q4_0 is about 15 GB; `2b` (hidden
//! 2048, FFN 8192, 17 layers, 32000-token vocabulary) is about 2.2 GB at f16, the input of
//! scripts/bench-quantize-file.

use jq::quant::GgmlType;
use jq::synth::{write_gemma3, Gemma3Dims};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().map_or("gemma3-tiny.gguf", |s| s.as_str());
    let (dims, vocab) = match args.get(1).map(|s| s.as_str()) {
        Some("27b") => (Gemma3Dims::G27B, 262_208),
        Some("2b") => (
            Gemma3Dims {
                n_embd: 2048,
                n_ff: 8192,
                n_layer: 17,
                n_head: 8,
                n_head_kv: 1,
                head_dim: 256,
                ..Gemma3Dims::G270M
            },
            32_000,
        ),
        _ => (Gemma3Dims::TINY, 384),
    };
    let ty = match args.get(2).map(|s| s.as_str()) {
        Some("f16") => GgmlType::F16,
        Some("q8_0") => GgmlType::Q8_0,
        Some("q4_0") => GgmlType::Q4_0,
        _ => GgmlType::F32,
    };
    write_gemma3(out.as_ref(), dims, vocab, ty)?;
    println!("wrote {out}");
    Ok(())
}
