//! Training throughput of the 12M Jarvis configuration (vocab 15000, d 256, 6 layers, 8 heads,
//! d_ff 1024, final norm) at batch 16 x 128 tokens: jq-train's step (forward, backward, Adam
//! with clipping and decay) at 1 and 2 threads, against the seed-style numpy trainer of
//! make_jarvis.py and PyTorch CPU autograd doing the same step in the same run
//! (fixtures/jarvis/bench_train.py). Median seconds per step (wall, and CPU of the whole
//! process: all its threads, the figure a machine loaded by other work disturbs least);
//! tokens/s; ratios to numpy's.
//!
//!   cargo bench --bench train_step            # JQ_BENCH_STEPS=3 by default
//!   PYTHONPATH=/path/with/torch cargo bench --bench train_step

use jq::models::jarvis::{Config, Gelu};
use jq::train::backprop::{loss_and_grads, Batch};
use jq::train::optim::{AdamConfig, AdamState, DecayMode, Schedule};
use jq::train::params::Params;
use std::process::Command;
use std::time::Instant;

const B: usize = 16;
const T: usize = 128;

/// Median (wall, CPU) seconds per step.
fn ours(threads: usize, steps: usize) -> (f64, f64) {
    let cfg = Config {
        vocab: 15000,
        d_model: 256,
        n_layers: 6,
        n_heads: 8,
        d_ff: 1024,
        ctx: T,
        eps: 1e-5,
        gelu: Gelu::Tanh,
        final_norm: true,
    };
    let adam = AdamConfig {
        lr: 1e-3,
        lr_min: 0.0,
        warmup: 0,
        schedule: Schedule::Constant,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        clip: 1.0,
        weight_decay: 0.01,
        decay_mode: DecayMode::Decoupled,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    pool.install(|| {
        let mut p = Params::init(&cfg, 0);
        let mut g = Params::zeros(&cfg);
        let mut st = AdamState::new(&p);
        let ids = |k: usize| -> Vec<u32> {
            (0..B * T)
                .map(|i| ((i * 7919 + k) % 15000) as u32)
                .collect()
        };
        let batch = Batch {
            b: B,
            t: T,
            inputs: ids(0),
            targets: ids(1),
            mask: vec![true; B * T],
        };
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..=steps {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let _ = loss_and_grads(&p, &cfg, &batch, &mut g);
            st.update(&mut p, &g, &adam, 1e-3);
            wall.push(t0.elapsed().as_secs_f64());
            cpu.push(cpu_seconds() - c0);
        }
        (median(&mut wall[1..]), median(&mut cpu[1..]))
    })
}

fn median(x: &mut [f64]) -> f64 {
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

/// User + system CPU seconds of this process (all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given; RUSAGE_SELF is valid.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Median (wall, CPU) seconds per step of the Python implementation `imp`.
fn python(imp: &str, threads: usize, steps: usize) -> Result<(f64, f64), String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/jarvis/bench_train.py"
    );
    let o = Command::new("python3")
        .args([script, imp, &threads.to_string(), &steps.to_string()])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let field = |i: usize| out.split_whitespace().nth(i).and_then(|s| s.parse().ok());
    match (field(2), field(4)) {
        (Some(w), Some(c)) => Ok((w, c)),
        _ => Err(format!("unexpected output {out:?}")),
    }
}

fn main() {
    let steps: usize = std::env::var("JQ_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // As jq-train does.
    jq::train::keep_freed_memory();
    let tokens = (B * T) as f64;
    let numpy = python("numpy", 1, steps).expect("numpy anchor (run scripts/setup)");
    println!("Jarvis 12M training step, batch {B} x {T} tokens, median of {steps} steps");
    println!(
        "| implementation | threads | s/step | tokens/s | vs numpy (1 thread) | CPU s/step | CPU vs numpy |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, th: usize, (s, c): (f64, f64)| {
        println!(
            "| {name} | {th} | {s:.3} | {:.0} | {:.2}x | {c:.3} | {:.2}x |",
            tokens / s,
            numpy.0 / s,
            numpy.1 / c
        );
    };
    row("numpy (make_jarvis.py)", 1, numpy);
    for th in [1, 2] {
        row("jq-train", th, ours(th, steps));
    }
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into());
    println!("(jq-train peak RSS of this process: {hwm} kB)");
    for th in [1, 2] {
        match python("torch", th, steps) {
            Ok(s) => row("PyTorch CPU (float32)", th, s),
            Err(e) => println!("| PyTorch CPU | {th} | not run: {e} | | |"),
        }
    }
}
