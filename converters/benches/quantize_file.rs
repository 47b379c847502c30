//! Whole-file re-quantization: `jq-convert quantize` vs llama.cpp's `llama_model_quantize`
//! (pure mode, through FFI) on the same synthetic GPT-2 shaped F32 file, same run, same
//! machine. Prints a table of medians; both outputs are checked to hold the same tensor bytes.
//! Both are timed until their output is synced to disk (jq-convert fsyncs before its atomic
//! rename; llama.cpp's file is fsynced right after `llama_model_quantize` returns).
//!
//! Run: `cargo bench -p jq-convert --bench quantize_file`

use jq::ggml;
use jq::gguf::GgufFile;
use jq::synth::{write_gpt2, Gpt2Dims};
use std::process::Command;
use std::time::Instant;

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dims = Gpt2Dims {
        n_embd: 1024,
        n_ff: 4096,
        n_vocab: 8192,
        n_ctx: 1024,
        n_layer: 4,
        n_head: 16,
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("synthetic-f32.gguf");
    write_gpt2(&input, dims, false).expect("write synthetic model");
    let mb = std::fs::metadata(&input).expect("stat").len() as f64 / 1e6;
    ggml::silence_logs();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "input: {mb:.0} MB F32 GPT-2 shaped ({} layers, d={}), {cores} cores",
        dims.n_layer, dims.n_embd
    );
    println!("| type | threads | llama_model_quantize s | jq-convert quantize s | speed-up |");
    println!("|---|---|---|---|---|");
    for (ty, ftype) in [("q4_0", 2u32), ("q8_0", 7), ("f16", 1)] {
        for threads in [1usize, cores] {
            let ours = dir.path().join(format!("ours-{ty}.gguf"));
            let theirs = dir.path().join(format!("llama-{ty}.gguf"));
            let mut t_ours = Vec::new();
            let mut t_llama = Vec::new();
            for _ in 0..RUNS {
                let t = Instant::now();
                assert_eq!(
                    ggml::llama_quantize_pure(&input, &theirs, ftype, threads as i32),
                    0
                );
                t_llama.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                let st = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
                    .args([
                        "quantize",
                        input.to_str().unwrap(),
                        ours.to_str().unwrap(),
                        "--type",
                        ty,
                        // The anchor is llama.cpp's pure mode; ours defaults to the mixture.
                        "--pure",
                    ])
                    .env("RAYON_NUM_THREADS", threads.to_string())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("run jq-convert");
                t_ours.push(t.elapsed().as_secs_f64());
                assert!(st.success());
            }
            let a = GgufFile::open(&ours).unwrap();
            let b = GgufFile::open(&theirs).unwrap();
            for t in a.tensors() {
                assert!(
                    t.data == b.tensor(t.name()).unwrap().data,
                    "{ty}: {} differs",
                    t.name()
                );
            }
            let (l, o) = (median(t_llama), median(t_ours));
            println!("| {ty} | {threads} | {l:.3} | {o:.3} | {:.2}x |", l / o);
        }
    }
}
