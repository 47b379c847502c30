//! `jq-run`: run a GGUF model. Jarvis GGUFs (`general.architecture = "jarvis"`) run on the
//! native engine; the llama.cpp engine for every other architecture comes with its issue.
//! stdout carries only the generated text (or, with `--json`, one JSON object); logs, metrics
//! and timings go to stderr.

use anyhow::{bail, Context, Result};
use clap::Parser;
use jq::engine::native::{Jarvis, RunOptions, RunReport};
use jq::engine::peak_rss;
use jq::gguf::GgufFile;
use jq::models::jarvis::LayerMetrics;
use jq::sample::SamplerConfig;
use serde_json::json;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "jq-run",
    version,
    about = "Run a GGUF model (Jarvis natively; other architectures through llama.cpp: not yet)",
    after_help = "Examples:\n  jq-run jarvis.gguf --prompt \"the cat\" -n 20\n  jq-run jarvis.gguf --prompt \"the cat\" --temp 0 --metrics\n  jq-run jarvis.gguf --prompt-tokens 5,17,3 -n 0 --dump-logits logits.npy\n  jq-run jarvis.gguf          # interactive when stdin is a terminal"
)]
struct Cli {
    /// The GGUF model.
    model: PathBuf,
    /// Prompt text (without it: interactive on a terminal, else the whole of stdin).
    #[arg(short, long)]
    prompt: Option<String>,
    /// Prompt as token ids, used exactly as given (e.g. 1,2,3).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_tokens: Option<Vec<u32>>,
    /// Tokens to generate (0 = evaluate the prompt only).
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n_predict: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Penalty for tokens among the last 64 (1 = off).
    #[arg(long, default_value_t = 1.1)]
    repeat_penalty: f32,
    /// RNG seed (default: from the clock, printed on stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the per-layer and per-head quantum metrics (stderr; with --json, in the JSON).
    #[arg(long)]
    metrics: bool,
    /// Print one JSON object on stdout (ids, text, timings, metrics) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the prompt's logits, f32 [n_prompt_tokens, vocab], to this .npy file.
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    /// Threads for the matrix products (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

fn metrics_json(m: &[LayerMetrics]) -> serde_json::Value {
    let one = |x: &jq::models::jarvis::Metrics| json!({"coherence": x.coherence, "entanglement": x.entanglement, "interference": x.interference, "fidelity": x.fidelity});
    serde_json::Value::Array(
        m.iter()
            .map(|l| {
                let mut v = one(&l.layer);
                v["heads"] = serde_json::Value::Array(l.heads.iter().map(one).collect());
                v
            })
            .collect(),
    )
}

fn print_metrics(title: &str, m: &[LayerMetrics]) {
    eprintln!("{title}");
    eprintln!(
        "  {:<9} {:>10} {:>12} {:>12} {:>10}",
        "layer", "coherence", "entanglement", "interference", "fidelity"
    );
    for (i, l) in m.iter().enumerate() {
        let x = &l.layer;
        eprintln!(
            "  {:<9} {:>10.6} {:>12.6} {:>12.6} {:>10.6}",
            i, x.coherence, x.entanglement, x.interference, x.fidelity
        );
        for (h, x) in l.heads.iter().enumerate() {
            eprintln!(
                "    head {:<3} {:>10.6} {:>12.6} {:>12.6}",
                h, x.coherence, x.entanglement, x.interference
            );
        }
    }
}

fn report(cli: &Cli, rep: &RunReport, n_prompt: usize, load_s: f64) {
    let tps = |n: usize, d: std::time::Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    eprintln!();
    eprintln!("load      {:8.2} ms", load_s * 1e3);
    eprintln!(
        "prompt    {:8.2} ms / {n_prompt} tokens ({:.1} tok/s)",
        rep.prompt_time.as_secs_f64() * 1e3,
        tps(n_prompt, rep.prompt_time)
    );
    eprintln!(
        "decode    {:8.2} ms / {} runs ({:.1} tok/s){}",
        rep.decode_time.as_secs_f64() * 1e3,
        rep.decode_steps,
        tps(rep.decode_steps, rep.decode_time),
        if rep.context_shifts > 0 {
            format!(", {} context shifts", rep.context_shifts)
        } else {
            String::new()
        }
    );
    if let Some(p) = peak_rss() {
        eprintln!("peak RSS  {:8.2} MiB", p as f64 / 1048576.0);
    }
    let _ = cli;
}

fn run_once(cli: &Cli, jarvis: &Jarvis, ids: Vec<u32>, seed: u64, load_s: f64) -> Result<()> {
    let opts = RunOptions {
        prompt_ids: ids.clone(),
        n_predict: cli.n_predict,
        sampler: SamplerConfig {
            temperature: cli.temperature,
            top_k: cli.top_k,
            top_p: cli.top_p,
            repeat_penalty: cli.repeat_penalty,
            repeat_last_n: 64,
            seed,
        },
        metrics: cli.metrics,
        dump_logits: cli.dump_logits.is_some(),
    };
    let mut sink: Box<dyn Write> = if cli.json {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout())
    };
    let rep = jarvis.run(&opts, &mut sink)?;
    drop(sink);
    if let Some(path) = &cli.dump_logits {
        let vocab = jarvis.model.cfg.vocab;
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        jq::npy::write_f32(&mut f, &[ids.len(), vocab], &rep.prompt_logits)
            .with_context(|| format!("writing {}", path.display()))?;
        f.flush()?;
    }
    if cli.json {
        let v = json!({
            "prompt_ids": ids,
            "generated_ids": rep.generated,
            "text": rep.text,
            "seed": seed,
            "prompt_ms": rep.prompt_time.as_secs_f64() * 1e3,
            "decode_ms": rep.decode_time.as_secs_f64() * 1e3,
            "decode_steps": rep.decode_steps,
            "context_shifts": rep.context_shifts,
            "metrics": rep.prompt_metrics.as_ref().map(|p| json!({
                "prompt": metrics_json(p),
                "steps": rep.step_metrics.iter().map(|s| metrics_json(s)).collect::<Vec<_>>(),
            })),
        });
        println!("{v}");
    } else {
        println!();
        if let Some(p) = &rep.prompt_metrics {
            print_metrics("quantum metrics of the prompt pass:", p);
            if let Some(last) = rep.step_metrics.last() {
                print_metrics("quantum metrics of the last generated position:", last);
            }
        }
    }
    report(cli, &rep, ids.len(), load_s);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
            .context("setting up threads")?;
    }
    let t0 = Instant::now();
    let file =
        GgufFile::open(&cli.model).with_context(|| format!("reading {}", cli.model.display()))?;
    let arch = file
        .get_str("general.architecture")
        .with_context(|| format!("{}", cli.model.display()))?
        .to_string();
    if arch != "jarvis" {
        bail!(
            "{}: architecture '{arch}' needs the llama.cpp engine, which is not implemented yet (issue #6); supported now: jarvis",
            cli.model.display()
        );
    }
    let jarvis = Jarvis::load(&file)?;
    let load_s = t0.elapsed().as_secs_f64();
    let seed = cli.seed.unwrap_or_else(|| {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        eprintln!("seed {s}");
        s
    });
    let tok = &jarvis.tokenizer;
    if let Some(ids) = &cli.prompt_tokens {
        return run_once(&cli, &jarvis, ids.clone(), seed, load_s);
    }
    if let Some(p) = &cli.prompt {
        let ids = tok.encode(p).context("tokenizing the prompt")?;
        return run_once(&cli, &jarvis, ids, seed, load_s);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "Jarvis ({} layers, d {}, vocabulary {}). Type a prompt; empty line or Ctrl-D to quit.",
            jarvis.model.cfg.n_layers, jarvis.model.cfg.d_model, jarvis.model.cfg.vocab
        );
        let mut n = 0u64;
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                return Ok(());
            }
            let ids = tok.encode(line.trim()).context("tokenizing the prompt")?;
            run_once(&cli, &jarvis, ids, seed.wrapping_add(n), load_s)?;
            n += 1;
        }
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text)?;
    let ids = tok.encode(text.trim()).context("tokenizing the prompt")?;
    run_once(&cli, &jarvis, ids, seed, load_s)
}
