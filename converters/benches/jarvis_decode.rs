//! Full-size Jarvis (12M: vocabulary 15000, d 256, 6 layers, 8 heads, FFN 1024, ctx 512):
//! prompt and decode tokens/s of the native engine vs llama.cpp running the `gpt2` export of
//! the same weights (a minimal greedy loop straight on the bindings), for each type, plus the
//! numpy reference's generation loop. Same run, same machine, same CPU flags
//! (`target-cpu=native` for both: see .cargo/config.toml).
//!
//! Then, whole processes: `jq-run` on each native file vs the numpy loop's script, wall clock
//! from spawn to exit (loading included), for the same prompt and number of greedy tokens.
//!
//! Run: `cargo build --release --workspace && cargo bench --workspace --bench jarvis_decode`
//! (`JQ_BENCH_PROMPT=200 JQ_BENCH_DECODE=64` for the 200-token prompt + 64 tokens;
//! defaults 32 and 128; `JQ_BENCH_THREADS=N` for both engines, default all cores).

use jq::engine::llama::Llama;
use jq::engine::native::{Jarvis, RunOptions};
use jq::gguf::GgufModel;
use jq::sample::SamplerConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

const RUNS: usize = 3;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn convert(dir: &Path, ty: &str, target: &str) -> PathBuf {
    let out = dir.join(format!("jarvis-{ty}-{target}.gguf"));
    let st = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .arg("npz-to-gguf")
        .arg(dir.join("model.npz"))
        .args(["--type", ty, "--target", target, "-o"])
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run jq-convert");
    assert!(st.success());
    out
}

/// Peak RSS of `jq-run` on this file (a separate process, so nothing else is counted).
fn jq_run_peak_rss(model: &Path, prompt: &str, decode: usize) -> Option<f64> {
    let o = jq_run(model, prompt, decode).output().ok()?;
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err.lines().find(|l| l.starts_with("peak RSS"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `jq-run MODEL --prompt-tokens PROMPT -n DECODE`, greedy.
fn jq_run(model: &Path, prompt: &str, decode: usize) -> Command {
    let exe = Path::new(env!("CARGO_BIN_EXE_jq-convert")).with_file_name("jq-run");
    let mut c = Command::new(exe);
    c.arg(model)
        .args([
            "--prompt-tokens",
            prompt,
            "-n",
            &decode.to_string(),
            "--temp",
            "0",
            "--repeat-penalty",
            "1",
        ])
        .stdout(std::process::Stdio::null());
    c
}

/// Median wall seconds of `RUNS` runs of a whole process (after one warm-up run).
fn process_secs(mut cmd: impl FnMut() -> Command) -> f64 {
    let mut v = Vec::new();
    for _ in 0..=RUNS {
        let t = std::time::Instant::now();
        let o = cmd().output().expect("spawn");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        v.push(t.elapsed().as_secs_f64());
    }
    v.remove(0);
    median(v)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let st = Command::new("python3")
        .arg(root().join("fixtures/jarvis/make_jarvis.py"))
        .arg("--full-size")
        .arg(dir.path())
        .status()
        .expect("python3");
    assert!(st.success(), "make_jarvis.py --full-size failed");
    let (prompt_n, decode) = (
        env_or("JQ_BENCH_PROMPT", 32),
        env_or("JQ_BENCH_DECODE", 128),
    );
    // The numpy script's prompt ids (bench_numpy.py), so the whole-process rows do the same work.
    let prompt: Vec<u32> = (0..prompt_n as u32)
        .map(|i| 3 + (i * 37) % (15000 - 3))
        .collect();
    let prompt_list = prompt
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let threads = env_or(
        "JQ_BENCH_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    // The native engine's team has rayon's thread count.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    println!("Jarvis 12M, prompt {prompt_n} tokens, {decode} greedy tokens, {threads} threads, median of {RUNS}");
    println!("| type | file MiB | native prompt tok/s | native decode tok/s | llama.cpp prompt tok/s | llama.cpp decode tok/s | prompt ratio | decode ratio | jq-run peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let files: Vec<(&str, PathBuf, PathBuf)> = ["f32", "f16", "q8_0", "q4_0"]
        .into_iter()
        .map(|ty| {
            let native = convert(dir.path(), ty, "native");
            let gpt2 = convert(dir.path(), ty, "ollama");
            (ty, native, gpt2)
        })
        .collect();
    // Whole processes first, spawn to exit, before this process has started any engine of
    // its own (whose idle threads would share the cores with the children): the numpy script
    // loads the npz checkpoint and runs its loop; jq-run loads the GGUF, prefills and decodes.
    let numpy = process_secs(|| {
        let mut c = Command::new("python3");
        c.arg(root().join("fixtures/jarvis/bench_numpy.py"))
            .arg(dir.path())
            .args([prompt_n.to_string(), decode.to_string()]);
        c
    });
    let processes: Vec<(&str, f64)> = files
        .iter()
        .map(|(ty, native, _)| {
            let s = process_secs(|| {
                let mut c = jq_run(native, &prompt_list, decode);
                c.args(["-t", &threads.to_string()]);
                c
            });
            (*ty, s)
        })
        .collect();
    for (ty, native, gpt2) in &files {
        let (ty, native, gpt2) = (*ty, native.clone(), gpt2.clone());
        let f = GgufModel::open(&native).unwrap();
        let j = Jarvis::load(&f).unwrap();
        let opts = RunOptions {
            prompt_ids: prompt.clone(),
            n_predict: decode,
            sampler: SamplerConfig {
                temperature: 0.0,
                repeat_penalty: 1.0,
                ..Default::default()
            },
            metrics: false,
            dump_logits: false,
        };
        let (mut np, mut nd) = (Vec::new(), Vec::new());
        let mut native_ids = Vec::new();
        for _ in 0..=RUNS {
            let r = j.run(&opts, &mut std::io::sink()).unwrap();
            np.push(prompt_n as f64 / r.prompt_time.as_secs_f64());
            nd.push(r.decode_steps as f64 / r.decode_time.as_secs_f64());
            native_ids = r.generated;
        }
        np.remove(0);
        nd.remove(0);
        let l = Llama::load(&gpt2).unwrap();
        let (mut lp, mut ld) = (Vec::new(), Vec::new());
        let mut llama_ids = Vec::new();
        for _ in 0..=RUNS {
            let (p, d, ids) = l
                .greedy_decode(&prompt, decode, 512, threads as i32)
                .unwrap();
            lp.push(prompt_n as f64 / p);
            ld.push(decode as f64 / d);
            llama_ids = ids;
        }
        lp.remove(0);
        ld.remove(0);
        let same = native_ids
            .iter()
            .zip(&llama_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let (np, nd, lp, ld) = (median(np), median(nd), median(lp), median(ld));
        let mib = std::fs::metadata(&native).unwrap().len() as f64 / 1048576.0;
        let rss = jq_run_peak_rss(&native, &prompt_list, decode)
            .map_or("n/a".to_string(), |r| format!("{r:.1}"));
        println!(
            "| {ty} | {mib:.1} | {np:.0} | {nd:.0} | {lp:.0} | {ld:.0} | {:.2}x | {:.2}x | {rss} |",
            np / lp,
            nd / ld
        );
        eprintln!("  {ty}: native and llama.cpp greedy ids agree on the first {same} of {decode}");
    }
    let o = Command::new("python3")
        .arg(root().join("fixtures/jarvis/bench_numpy.py"))
        .arg(dir.path())
        .args([prompt_n.to_string(), decode.to_string()])
        .output()
        .expect("python3");
    println!(
        "numpy reference generation loop: {}",
        String::from_utf8_lossy(&o.stdout).trim()
    );
    println!(
        "\nWhole process, {prompt_n}-token prompt + {decode} greedy tokens (median of {RUNS}):"
    );
    println!("| run | wall s | vs numpy |");
    println!("|---|---|---|");
    println!("| numpy loop (bench_numpy.py, float64, BLAS threads 1) | {numpy:.3} | 1.0x |");
    for (ty, s) in processes {
        println!("| jq-run native {ty} | {s:.3} | {:.0}x |", numpy / s);
    }
}
