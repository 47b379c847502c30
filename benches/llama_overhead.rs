//! `jq-run` through llama.cpp must cost nothing extra: decode tokens/s of the `jq-run` binary
//! vs a minimal decode loop written straight on the `llama-cpp-2` bindings (same process
//! layout: load, one prompt batch, then sample + decode one token at a time with the same
//! llama.cpp sampler chain), same model, same settings, same build, same run.
//!
//! The model is a synthetic Gemma-3 (d 1024, FFN 4096, 8 layers, vocabulary 32768; Q4_0 and
//! Q8_0) written at bench time into target/bench-data (not committed). jq-run's own decode
//! figure is read from its timing report (stderr); the loop times the same phase.
//!
//! Run: `cargo build --release --bin jq-run && cargo bench --bench llama_overhead`

use jq::engine::llama::{backend, sampler_chain};
use jq::quant::GgmlType;
use jq::sample::SamplerConfig;
use jq::synth::{write_gemma3, Gemma3Dims};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PROMPT: usize = 32;
const DECODE: usize = 128;
const RUNS: usize = 5;
const N_CTX: u32 = 512;

const DIMS: Gemma3Dims = Gemma3Dims {
    n_embd: 1024,
    n_ff: 4096,
    n_layer: 8,
    n_head: 8,
    n_head_kv: 4,
    head_dim: 128,
    n_ctx: 8192,
    sliding_window: 512,
    swa_pattern: 6,
    final_logit_softcapping: None,
};
const VOCAB: u64 = 32768;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as i32
}

fn sampling(greedy: bool) -> SamplerConfig {
    let base = if greedy {
        SamplerConfig::greedy()
    } else {
        SamplerConfig::default()
    };
    SamplerConfig {
        repeat_last_n: 64,
        seed: 1,
        ..base
    }
}

/// The minimal loop: decode tokens/s.
fn minimal(model: &LlamaModel, prompt: &[u32], s: &SamplerConfig) -> f64 {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(N_CTX))
        .with_n_batch(N_CTX)
        .with_n_ubatch(N_CTX)
        .with_n_threads(threads())
        .with_n_threads_batch(threads());
    let mut ctx = model.new_context(backend().unwrap(), params).unwrap();
    let mut sampler = sampler_chain(s, model.n_vocab() as usize);
    let mut batch = LlamaBatch::new(N_CTX as usize, 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch
            .add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    sampler.accept_many(prompt.iter().map(|&t| LlamaToken(t as i32)));
    let mut idx = prompt.len() as i32 - 1;
    let t0 = Instant::now();
    for k in 0..DECODE {
        let tok = sampler.sample(&ctx, idx);
        batch.clear();
        batch
            .add(tok, (prompt.len() + k) as i32, &[0], true)
            .unwrap();
        ctx.decode(&mut batch).unwrap();
        idx = 0;
    }
    DECODE as f64 / t0.elapsed().as_secs_f64()
}

/// The jq-run binary: decode tokens/s from its timing report.
fn jq_run(path: &Path, prompt: &[u32], s: &SamplerConfig) -> f64 {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/jq-run");
    let list = prompt
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let o = Command::new(&exe)
        .arg(path)
        .args(["--prompt-tokens", &list, "-n", &DECODE.to_string()])
        .args(["-c", &N_CTX.to_string(), "-b", &N_CTX.to_string()])
        .args(["-t", &threads().to_string(), "--seed", &s.seed.to_string()])
        .args(["--temp", &s.temperature.to_string()])
        .args([
            "--top-k",
            &s.top_k.to_string(),
            "--top-p",
            &s.top_p.to_string(),
        ])
        .args(["--repeat-penalty", &s.repeat_penalty.to_string()])
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (cargo build --release --bin jq-run)",
                exe.display()
            )
        });
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("decode"))
        .expect("decode line");
    let n: usize = line
        .split('/')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        n, DECODE,
        "jq-run decoded {n} tokens (stopped early?): {line}"
    );
    let tps = line
        .rsplit('(')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    tps.parse().unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    println!("| model | sampling | minimal loop tok/s | jq-run tok/s | jq-run / loop |");
    println!("|---|---|---|---|---|");
    for (ty, name) in [(GgmlType::Q4_0, "q4_0"), (GgmlType::Q8_0, "q8_0")] {
        let path: PathBuf = dir.join(format!("gemma3-bench-{name}.gguf"));
        if !path.exists() {
            write_gemma3(&path, DIMS, VOCAB, ty).unwrap();
        }
        let model =
            LlamaModel::load_from_file(backend().unwrap(), &path, &LlamaModelParams::default())
                .unwrap();
        let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 300 + i * 7).collect();
        for greedy in [true, false] {
            let s = sampling(greedy);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            // Interleaved so that drifts of the machine hit both alike.
            for _ in 0..RUNS {
                a.push(minimal(&model, &prompt, &s));
                b.push(jq_run(&path, &prompt, &s));
            }
            let (ma, mb) = (median(a), median(b));
            println!(
                "| {name} ({:.0} MB) | {} | {ma:.2} | {mb:.2} | {:.3} |",
                std::fs::metadata(&path).unwrap().len() as f64 / 1e6,
                if greedy {
                    "greedy"
                } else {
                    "temp 0.8, top-k 40, top-p 0.95, repeat 1.1"
                },
                mb / ma
            );
        }
    }
}
