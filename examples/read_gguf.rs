//! Opens a GGUF, prints a few typed metadata values and decodes one tensor.
//!   cargo run --release --example read_gguf -- fixtures/tiny/tiny-gpt2-f32.gguf

use anyhow::Context;
use jq::gguf::GgufFile;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: read_gguf FILE.gguf")?;
    let f = GgufFile::open(&path).with_context(|| format!("reading {path}"))?;
    let arch = f.get_str("general.architecture")?;
    println!("{path}: GGUF v{}, architecture {arch}", f.version());
    if let Ok(n) = f.get_u32(&format!("{arch}.block_count")) {
        println!("  {n} blocks");
    }
    if let Ok(tokens) = f.get_array("tokenizer.ggml.tokens") {
        println!("  vocabulary of {} tokens", tokens.len());
    }
    let t = f.tensors().next().context("no tensors")?;
    let values = t.to_f32()?;
    println!(
        "  first tensor {} ({}, ne {:?}): first values {:?}",
        t.name(),
        t.ty(),
        t.info.ne,
        &values[..values.len().min(4)]
    );
    Ok(())
}
