//! Greedy decode through llama.cpp's bindings on any GGUF it loads, timed (the anchor of the
//! native engine's benchmark).
//!   cargo run --release --example llama_decode -- model.gguf 32 128

use anyhow::Context;
use jq::engine::llama::Llama;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let path = a
        .get(1)
        .context("usage: llama_decode MODEL.gguf [PROMPT_TOKENS] [DECODE_TOKENS]")?;
    let np: usize = a.get(2).map_or(Ok(32), |s| s.parse())?;
    let nd: usize = a.get(3).map_or(Ok(128), |s| s.parse())?;
    let l = Llama::load(path.as_ref())?;
    let prompt: Vec<u32> = (0..np as u32)
        .map(|i| 3 + (i * 37) % (l.n_vocab() as u32 - 3))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    for _ in 0..3 {
        let (p, d, _) = l.greedy_decode(&prompt, nd, 512, threads)?;
        println!(
            "prompt {:.1} tok/s, decode {:.1} tok/s",
            np as f64 / p,
            nd as f64 / d
        );
    }
    Ok(())
}
