//! Writes a synthetic GPT-2 shaped GGUF (random weights; llama.cpp's loader accepts it).
//! The bundled `fixtures/tiny/tiny-gpt2-f32.gguf` is made with:
//!   cargo run --release --example synth_gpt2 -- fixtures/tiny/tiny-gpt2-f32.gguf

use jq::synth::{write_gpt2, Gpt2Dims};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tiny-gpt2-f32.gguf".to_string());
    write_gpt2(path.as_ref(), Gpt2Dims::TINY, true)?;
    println!("wrote {path}");
    Ok(())
}
