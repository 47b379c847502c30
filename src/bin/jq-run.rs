//! `jq-run`: will run Jarvis GGUFs on the native engine and every other architecture through
//! llama.cpp. Until those land it validates the file and says which engine will run it.

use anyhow::{Context, Result};
use clap::Parser;
use jq::gguf::GgufFile;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "jq-run",
    version,
    about = "Run a GGUF model (not implemented yet: validates the file and names the engine)",
    after_help = "Example:\n  jq-run model.gguf"
)]
struct Cli {
    /// The GGUF model.
    model: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let f =
        GgufFile::open(&cli.model).with_context(|| format!("reading {}", cli.model.display()))?;
    let arch = f
        .get_str("general.architecture")
        .with_context(|| format!("{}", cli.model.display()))?;
    let engine = if arch == "jarvis" {
        "the native Jarvis engine"
    } else {
        "llama.cpp"
    };
    eprintln!(
        "{}: valid GGUF v{}, architecture '{arch}', {} tensors; it will run on {engine}.",
        cli.model.display(),
        f.version(),
        f.tensor_infos().len()
    );
    eprintln!("jq-run: running models is not implemented yet (see issues #4 and #6)");
    std::process::exit(2)
}
