//! Compares the native Jarvis engine with llama.cpp running the `gpt2` export of the same
//! checkpoint: same prompt, every position's logits.
//!   cargo run --release --example llama_parity -- native.gguf gpt2.gguf "the cat sat"

use anyhow::{Context, Result};
use jq::engine::llama::Llama;
use jq::engine::native::Jarvis;
use jq::gguf::GgufModel;
use jq::models::jarvis::Generator;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (native, gpt2, text) = match &args[1..] {
        [a, b, c] => (a, b, c),
        _ => anyhow::bail!("usage: llama_parity NATIVE.gguf GPT2.gguf PROMPT"),
    };
    let f = GgufModel::open(native).with_context(|| native.clone())?;
    let j = Jarvis::load(&f)?;
    let ids = j.tokenizer.encode(text)?;
    let mut g = Generator::new(&j.model);
    let (ours, _) = g.prompt(&ids, true, false)?;
    let l = Llama::load(gpt2.as_ref())?;
    let theirs = l.prompt_logits(&ids, j.model.cfg.ctx as u32, 2)?;
    let max_ref = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let llama_ids = l.tokenize(text);
    println!("tokens ours {ids:?}\ntokens llama.cpp {llama_ids:?}");
    println!("max |diff| / max |ref| = {:.3e}", max_diff / max_ref);
    Ok(())
}
