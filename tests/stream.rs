//! `--stream-layers` on the CPU backend (playing the device): logits equal llama.cpp fully
//! resident, the device budget holds, impossible budgets are refused, reads overlap compute.

mod common;
use common::bit_differences;
use jq::engine::llama::Llama;
use jq::engine::stream::plan::host_split;
use jq::engine::stream::profile::EvKind;
use jq::engine::stream::{plan_only, HostLayers, SeqChunk, StreamOptions, Streamer};
use jq::quant::GgmlType;
use jq::sample::SamplerConfig;
use jq::synth::{write_gemma3, Gemma3Dims};
use std::path::{Path, PathBuf};
use std::time::Duration;

const N_CTX: u32 = 64;
const PROMPT: [u32; 12] = [2, 300, 301, 7, 350, 17, 302, 303, 120, 304, 33, 305];
const N_DECODE: usize = 20;

fn tiny(dir: &Path, ty: GgmlType) -> PathBuf {
    let p = dir.join(format!("tiny-gemma3-{}.gguf", ty.name()));
    write_gemma3(&p, Gemma3Dims::TINY, 384, ty).unwrap();
    p
}

fn opts(budget: Option<u64>, slots: usize) -> StreamOptions {
    StreamOptions {
        budget,
        n_slots: slots,
        all_logits: true,
        n_ctx: N_CTX,
        n_ubatch: N_CTX,
        threads: 2,
        ..StreamOptions::default()
    }
}

/// A budget with room for the fixed part, `resident` layers (spread as the planner spreads
/// them) and a ring of `slots` sized for the others.
fn budget_for(path: &Path, resident: usize, slots: usize) -> u64 {
    plan_only(path, &opts(Some(u64::MAX / 2), slots))
        .unwrap()
        .budget_for(resident, slots)
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(0f64, |m, &x| m.max(f64::from(x.abs())));
    let d = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max(f64::from((x - y).abs())));
    d / m
}

fn argmax(l: &[f32]) -> u32 {
    jq::sample::argmax(l) as u32
}

/// llama.cpp fully resident: the prompt's logits, then N_DECODE greedy tokens one at a time
/// with their logits.
fn llama_reference(path: &Path) -> (Vec<f32>, Vec<u32>, Vec<Vec<f32>>) {
    let llama = Llama::load(path).unwrap();
    let mut sess = llama
        .session(N_CTX, N_CTX, 2, &SamplerConfig::greedy())
        .unwrap();
    let prompt = sess.eval(&PROMPT, true).unwrap();
    let v = llama.n_vocab();
    let mut next = argmax(&prompt[prompt.len() - v..]);
    let (mut ids, mut logits) = (Vec::new(), Vec::new());
    for _ in 0..N_DECODE {
        ids.push(next);
        let l = sess.eval(&[next], true).unwrap();
        next = argmax(&l);
        logits.push(l);
    }
    (prompt, ids, logits)
}

/// Streams the same prompt and greedy decode; returns the worst error over the prompt and the
/// decoded steps, and checks the ids.
fn check_parity(path: &Path, budget: u64, slots: usize) -> (f64, Vec<f64>, Streamer) {
    check_parity_with(path, &opts(Some(budget), slots))
}

fn check_parity_with(path: &Path, o: &StreamOptions) -> (f64, Vec<f64>, Streamer) {
    let (ref_prompt, ref_ids, ref_logits) = llama_reference(path);
    let mut s = Streamer::open(path, o).unwrap();
    let prompt = s.eval(&PROMPT, true).unwrap();
    let v = s.hparams().n_vocab as usize;
    let e_prompt = rel_err(&prompt, &ref_prompt);
    // Every position, one by one, against its own maximum.
    let mut e_pos = 0f64;
    for i in 0..PROMPT.len() {
        e_pos = e_pos.max(rel_err(
            &prompt[i * v..(i + 1) * v],
            &ref_prompt[i * v..(i + 1) * v],
        ));
    }
    let mut next = argmax(&prompt[prompt.len() - v..]);
    let mut e_dec = Vec::new();
    for (k, (&want, ref_l)) in ref_ids.iter().zip(&ref_logits).enumerate() {
        assert_eq!(
            next, want,
            "decoded token {k} differs from llama.cpp's greedy decode"
        );
        let l = s.eval(&[next], true).unwrap();
        e_dec.push(rel_err(&l, ref_l));
        next = argmax(&l);
    }
    (e_prompt.max(e_pos), e_dec, s)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

/// `decode_outliers`: decode steps allowed above 1e-4 (see the Q4_0 test).
fn parity(ty: GgmlType, decode_outliers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), ty);
    let budget = budget_for(&path, 1, 2);
    let (ep, ed, s) = check_parity(&path, budget, 2);
    let plan = s.plan();
    eprintln!("{ty:?}: {plan}\nprompt error {ep:.3e}, decode errors {ed:?}");
    assert_eq!(plan.resident, vec![0]);
    assert_eq!(plan.streamed, vec![1, 2, 3, 4, 5]);
    assert!(ep <= 1e-4, "prompt error {ep}");
    assert_eq!(ed.len(), N_DECODE);
    let over = ed.iter().filter(|&&e| e > 1e-4).count();
    assert!(over <= decode_outliers, "decode errors {ed:?}");
    assert!(
        max(&ed) <= if decode_outliers > 0 { 1e-2 } else { 1e-4 },
        "decode errors {ed:?}"
    );
    assert!(s.device_bytes() <= budget);
    // Every step streamed every streamed layer once.
    let per_token: u64 = plan.streamed_bytes_per_token;
    assert!(per_token > 0);
    for st in s.steps() {
        assert!(st.bytes_streamed > 0 && st.bytes_streamed <= per_token);
        assert_eq!(st.layers.iter().filter(|l| l.streamed).count(), 5);
    }
}

#[test]
fn streamed_f32_equals_llama_cpp_resident() {
    parity(GgmlType::F32, 0);
}

#[test]
fn streamed_q8_0_equals_llama_cpp_resident() {
    parity(GgmlType::Q8_0, 0);
}

/// llama.cpp repacks Q4_0 weights for its AVX-512 kernels (CPU_REPACK, on by default); so do
/// the executor's resident layers and ring slots by default, so the same kernels run. (With
/// the file's layout in the slots one decode step differed by 6.0e-3.)
#[test]
fn streamed_q4_0_equals_llama_cpp_resident() {
    parity(GgmlType::Q4_0, 0);
}

/// The committed llama.cpp-converted fixture (fixtures/gemma3/make_gemma3.py).
#[test]
fn llama_cpp_converted_fixture() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gemma3/llama-cpp/tiny-causal-f32.gguf");
    assert!(p.exists(), "{} is missing", p.display());
    let budget = budget_for(&p, 1, 2);
    let (ep, ed, _) = check_parity(&p, budget, 2);
    eprintln!("converter fixture: prompt error {ep:.3e}, decode errors {ed:?}");
    assert!(ep <= 1e-4 && max(&ed) <= 1e-4, "{ep} {ed:?}");
}

#[test]
fn device_peak_never_exceeds_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::Q8_0);
    let min = budget_for(&path, 0, 2);
    let all = budget_for(&path, 6, 0);
    let mut seen_resident = Vec::new();
    for k in 0..=12u64 {
        let budget = min + (all - min) * k / 12;
        let mut s = Streamer::open(&path, &opts(Some(budget), 2)).unwrap();
        s.eval(&PROMPT, false).unwrap();
        for &t in &PROMPT[..3] {
            s.eval(&[t], false).unwrap();
        }
        let plan = s.plan();
        assert!(
            s.device_bytes() <= budget,
            "budget {budget}: measured {} bytes",
            s.device_bytes()
        );
        assert_eq!(
            s.device_bytes(),
            plan.device_bytes(),
            "plan and measurement agree"
        );
        assert_eq!(plan.resident.len() + plan.streamed.len(), 6);
        seen_resident.push(plan.resident.len());
    }
    // The range covers all-streamed through all-resident.
    assert_eq!(seen_resident.first(), Some(&0));
    assert_eq!(seen_resident.last(), Some(&6));
    assert!(seen_resident.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn impossible_budget_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::F32);
    let min = budget_for(&path, 0, 2);
    let e = Streamer::open(&path, &opts(Some(min - 1), 2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit a ring of 2 slot(s)"), "{e}");
    assert!(e.contains("largest layer"), "{e}");
    let e = plan_only(&path, &opts(Some(10_000), 2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit the fixed part"), "{e}");
    assert!(e.contains("KV cache"), "{e}");
}

/// With a reader slowed to 30 ms a layer and each layer's compute held for 30 ms, the read of
/// each streamed layer i+1 starts before the compute of layer i ends (two slots), and steps
/// still give llama.cpp's logits. (Without the compute hold the tiny layers compute in
/// microseconds and the order would depend on thread scheduling.)
#[test]
fn reads_overlap_compute() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::F32);
    let budget = budget_for(&path, 0, 2);
    let mut o = opts(Some(budget), 2);
    o.read_delay = Duration::from_millis(30);
    o.compute_delay = Duration::from_millis(30);
    let mut s = Streamer::open(&path, &o).unwrap();
    assert_eq!(s.plan().streamed, (0..6).collect::<Vec<_>>());
    let l1 = s.eval(&PROMPT, true).unwrap();
    s.eval(&[5], false).unwrap();
    let ev = s.events();
    let find = |kind: EvKind, layer: usize, nth: usize| {
        ev.iter()
            .filter(|e| e.kind == kind && e.layer == layer)
            .nth(nth)
            .map(|e| e.t)
            .unwrap_or_else(|| panic!("no {kind:?} #{nth} for layer {layer}"))
    };
    for step in 0..2 {
        for i in 0..5 {
            let read_next = find(EvKind::ReadStart, i + 1, step);
            let compute_end = find(EvKind::ComputeEnd, i, step);
            assert!(
                read_next < compute_end,
                "step {step}: read of layer {} started at {read_next}, compute of layer {i} ended at {compute_end}",
                i + 1
            );
        }
    }
    // And some read ran entirely while a layer computed or waited: the reader works during
    // compute (with one slot it could not).
    let mut o1 = opts(Some(budget_for(&path, 0, 1)), 1);
    o1.read_delay = Duration::from_millis(30);
    let mut s1 = Streamer::open(&path, &o1).unwrap();
    let l2 = s1.eval(&PROMPT, true).unwrap();
    assert_eq!(l1, l2, "slot count does not change the logits");
    let ev1 = s1.events();
    let f1 = |kind: EvKind, layer: usize| {
        ev1.iter()
            .find(|e| e.kind == kind && e.layer == layer)
            .unwrap()
            .t
    };
    for i in 0..5 {
        assert!(
            f1(EvKind::ReadStart, i + 1) >= f1(EvKind::ComputeEnd, i),
            "one slot: read {} after compute {i}",
            i + 1
        );
    }
}

/// The bench generator's random-block files load in llama.cpp and stream to the same prompt
/// logits.
#[test]
fn random_q4_0_blocks_file_streams_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random-q4_0.gguf");
    jq::synth_blocks::write_gemma3_random(
        &path,
        Gemma3Dims::TINY,
        384,
        jq::synth_blocks::Mixture::Q4_0,
        7,
    )
    .unwrap();
    let llama = Llama::load(&path).unwrap();
    let want = llama.prompt_logits(&PROMPT, N_CTX, 2).unwrap();
    let budget = budget_for(&path, 1, 2);
    let mut s = Streamer::open(&path, &opts(Some(budget), 2)).unwrap();
    let got = s.eval(&PROMPT, true).unwrap();
    let e = rel_err(&got, &want);
    eprintln!("random q4_0 blocks: prompt error {e:.3e}");
    assert!(e <= 1e-4, "{e}");
}

/// Prompt logits and 5 greedy decode steps' logits, concatenated.
fn run_streamed(path: &Path, o: &StreamOptions) -> (Vec<f32>, String) {
    let mut s = Streamer::open(path, o).unwrap();
    let mut all = s.eval(&PROMPT, true).unwrap();
    let v = s.hparams().n_vocab as usize;
    let mut next = argmax(&all[all.len() - v..]);
    for _ in 0..5 {
        let l = s.eval(&[next], true).unwrap();
        next = argmax(&l);
        all.extend_from_slice(&l);
    }
    (all, s.upload_path().to_string())
}

/// The other ways bytes reach the slots put the same bytes there: `O_DIRECT` reads, and the
/// staged upload path a GPU uses (staging chunks uploaded by a second backend instance,
/// ordered by events where the device has them), here on the CPU backend with tiny odd-sized
/// chunks so every tensor is split and the 4-chunk staging ring wraps many times per layer.
/// Same backend, same bytes: the logits must be bit-identical to the memory-mapped path, with
/// the slots in ggml's CPU_REPACK layout (the default: the reader repacks each tensor) and in
/// the file's layout.
#[test]
fn direct_io_and_staged_uploads_match_the_mmap_path() {
    // O_DIRECT needs a real file system (not tmpfs): the target directory's.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = tiny(dir.path(), GgmlType::Q4_0);
    let budget = budget_for(&path, 1, 2);
    let base = opts(Some(budget), 2);
    // Repacked slots: memory map vs O_DIRECT.
    let (want, how) = run_streamed(&path, &base);
    assert!(how.starts_with("repacked into"), "{how}");
    let o = StreamOptions {
        direct_io: true,
        ..base.clone()
    };
    let (got, how) = run_streamed(&path, &o);
    assert!(how.starts_with("repacked into"), "{how}");
    assert_eq!(bit_differences(&got, &want), 0, "repacked, O_DIRECT");
    // File layout.
    let plain = StreamOptions {
        repack: false,
        ..base.clone()
    };
    let (want_plain, how) = run_streamed(&path, &plain);
    assert_eq!(how, "direct into host-visible slots");
    let cases = [
        (true, false, 1 << 20),
        (false, true, 4096 + 13),
        (true, true, 4096 + 13),
        (true, true, 1000),
    ];
    for (direct_io, staged, chunk) in cases {
        let o = StreamOptions {
            direct_io,
            staged,
            staging_chunk: chunk,
            ..plain.clone()
        };
        let (got, how) = run_streamed(&path, &o);
        if staged {
            // The CPU device has neither pinned memory nor events.
            assert_eq!(how, "staged: chunks, synchronous");
        }
        let differ = bit_differences(&got, &want_plain);
        assert_eq!(
            differ,
            0,
            "direct_io {direct_io}, staged {staged}, chunk {chunk}: {differ} of {} logits differ",
            want.len()
        );
    }
    // The two layouts run different kernels (the repacked one quantizes activations on its
    // own path): close, not identical.
    let e = rel_err(&want_plain, &want);
    eprintln!("repacked vs file layout: {e:.3e}");
    assert!(e <= 1e-2, "{e}");
}

/// The compute-floor hook streams nothing.
#[test]
fn skip_reads_hook_streams_no_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::Q8_0);
    let budget = budget_for(&path, 1, 2);
    let o = StreamOptions {
        skip_reads: true,
        ..opts(Some(budget), 2)
    };
    let mut s = Streamer::open(&path, &o).unwrap();
    s.eval(&PROMPT, false).unwrap();
    s.eval(&[5], false).unwrap();
    assert_eq!(s.upload_path(), "skipped (benchmark hook)");
    assert_eq!(s.steps().len(), 2);
    for st in s.steps() {
        assert_eq!(st.bytes_streamed, 0);
        assert_eq!(st.layers.iter().filter(|l| l.streamed).count(), 5);
    }
}

/// `--host-layers N`: the last N streamed layers compute on the CPU backend with their weights
/// in place in the memory map and their KV cache in host memory, the activations crossing
/// over and back each step; the logits still equal llama.cpp's fully resident run, and device
/// memory holds only the resident layers, the ring and the fixed part.
#[test]
fn host_layers_equal_llama_cpp_resident() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [GgmlType::F32, GgmlType::Q8_0] {
        let path = tiny(dir.path(), ty);
        let budget = budget_for(&path, 1, 2);
        for (n, host, streamed) in [
            (2, vec![4, 5], vec![1, 2, 3]),
            (5, vec![1, 2, 3, 4, 5], vec![]),
        ] {
            let o = StreamOptions {
                host_layers: HostLayers::N(n),
                ..opts(Some(budget), 2)
            };
            let (ep, ed, s) = check_parity_with(&path, &o);
            let plan = s.plan();
            eprintln!("{ty:?} host {n}: {plan}\nprompt error {ep:.3e}, decode errors {ed:?}");
            assert_eq!(plan.resident, vec![0]);
            assert_eq!(plan.host, host);
            assert_eq!(plan.streamed, streamed);
            assert!(
                ep <= 1e-4 && max(&ed) <= 1e-4,
                "{ty:?} host {n}: {ep} {ed:?}"
            );
            assert!(s.host_bytes() > 0);
            let ring = if streamed.is_empty() {
                0
            } else {
                2 * plan.slot_bytes()
            };
            assert_eq!(
                s.device_bytes(),
                plan.fixed_bytes() + plan.resident_bytes() + ring
            );
            for st in s.steps() {
                let hosted: Vec<usize> = st
                    .layers
                    .iter()
                    .filter(|l| l.host)
                    .map(|l| l.layer)
                    .collect();
                assert_eq!(hosted, host);
                let per_token: u64 = streamed
                    .iter()
                    .map(|&l| plan.sizes.layer_file_bytes[l])
                    .sum();
                assert!(st.bytes_streamed <= per_token);
            }
        }
    }
}

/// `--host-layers auto` measures one layer's fill, device and CPU times and moves
/// the `host_split` of those times (a simulated step); with the reader slowed by 100 ms a layer (the test hook), filling
/// dominates and every streamed layer moves to the CPU. Logits stay llama.cpp's either way.
#[test]
fn host_layers_auto_follows_the_measured_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::F32);
    let budget = budget_for(&path, 1, 2);
    for delay_ms in [0u64, 100] {
        let o = StreamOptions {
            host_layers: HostLayers::Auto,
            read_delay: Duration::from_millis(delay_ms),
            ..opts(Some(budget), 2)
        };
        let (ep, ed, s) = check_parity_with(&path, &o);
        let plan = s.plan();
        let c = plan.calibration.expect("auto measured");
        eprintln!("delay {delay_ms} ms: {plan}\nprompt error {ep:.3e}, decode errors {ed:?}");
        assert!(
            c.fill_s > 0.0 && c.device_s > 0.0 && c.host_s > 0.0,
            "{c:?}"
        );
        let mut before = plan.clone();
        before.streamed.extend(&plan.host);
        before.streamed.sort_unstable();
        before.host.clear();
        assert_eq!(
            c.chosen,
            host_split(&before, c.fill_s, c.device_s, c.host_s)
        );
        assert_eq!(plan.host.len(), c.chosen);
        assert_eq!(plan.streamed.len() + plan.host.len(), 5);
        assert_eq!(s.device_bytes(), plan.device_bytes());
        if delay_ms > 0 {
            assert!(c.fill_s >= 0.1, "{c:?}");
            assert_eq!(c.chosen, 5, "{c:?}");
        }
        assert!(ep <= 1e-4 && max(&ed) <= 1e-4, "{ep} {ed:?}");
    }
}

/// A tiny Gemma-3 in llama.cpp's Q4_K_M mixture: written in F32 (`synth`), then quantized by
/// `llama_model_quantize` itself (llama.cpp's per-tensor rules, not ours). `n_embd` 256 gives
/// K-quant rows (Q4_K next to Q6_K: `attn_v`/`ffn_down` get more bits in some layers); 320,
/// like the real 270M's 640, is not a multiple of 256, so those rows fall back to Q5_0 / Q8_0
/// while `attn_output` and `ffn_down` keep Q4_K / Q6_K.
fn tiny_q4_k_m(dir: &Path, n_embd: u64) -> PathBuf {
    let d = Gemma3Dims {
        n_embd,
        n_ff: 512,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        ..Gemma3Dims::TINY
    };
    let f32_path = dir.join(format!("tiny-gemma3-{n_embd}-f32.gguf"));
    write_gemma3(&f32_path, d, 384, GgmlType::F32).unwrap();
    let out = dir.join(format!("tiny-gemma3-{n_embd}-q4_k_m.gguf"));
    const LLAMA_FTYPE_MOSTLY_Q4_K_M: u32 = 15;
    let st = jq::ggml::llama_quantize(&f32_path, &out, LLAMA_FTYPE_MOSTLY_Q4_K_M, false, 2);
    assert_eq!(st, 0, "llama_model_quantize failed");
    out
}

/// The types of each layer's matrices, in file order.
fn layer_types(path: &Path) -> Vec<Vec<GgmlType>> {
    let f = jq::gguf::GgufModel::open(path).unwrap();
    let n = f.get_u32("gemma3.block_count").unwrap() as usize;
    (0..n)
        .map(|l| {
            f.tensor_infos()
                .filter(|t| t.name.starts_with(&format!("blk.{l}.")) && t.ne.len() == 2)
                .map(|t| t.ty)
                .collect()
        })
        .collect()
}

/// Layers of different types (a K-quant mixture) stream through one ring (slots sized for the
/// largest streamed layer in each buffer type) and give llama.cpp's logits bit for bit.
#[test]
fn mixed_k_quant_layers_stream_like_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for (n_embd, want) in [
        (256, vec![GgmlType::Q4_K, GgmlType::Q6_K]),
        (
            320,
            vec![
                GgmlType::Q5_0,
                GgmlType::Q8_0,
                GgmlType::Q4_K,
                GgmlType::Q6_K,
            ],
        ),
    ] {
        let path = tiny_q4_k_m(dir.path(), n_embd);
        let types = layer_types(&path);
        for ty in &want {
            assert!(
                types.iter().flatten().any(|t| t == ty),
                "n_embd {n_embd}: no {ty:?} in {types:?}"
            );
        }
        assert!(
            types.windows(2).any(|w| w[0] != w[1]),
            "n_embd {n_embd}: the layers are alike: {types:?}"
        );
        for slots in [2, 3] {
            let budget = budget_for(&path, 1, slots);
            let (ref_prompt, ref_ids, ref_logits) = llama_reference(&path);
            let mut s = Streamer::open(&path, &opts(Some(budget), slots)).unwrap();
            assert_eq!(s.plan().streamed, vec![1, 2, 3, 4, 5]);
            let prompt = s.eval(&PROMPT, true).unwrap();
            assert_eq!(
                bit_differences(&prompt, &ref_prompt),
                0,
                "n_embd {n_embd}, {slots} slots: prompt logits"
            );
            for (k, (&id, want)) in ref_ids.iter().zip(&ref_logits).enumerate() {
                let l = s.eval(&[id], true).unwrap();
                assert_eq!(
                    bit_differences(&l, want),
                    0,
                    "n_embd {n_embd}, {slots} slots: decode step {k}"
                );
            }
            assert!(s.device_bytes() <= budget);
            assert_eq!(s.device_bytes(), s.plan().device_bytes());
        }
    }
}

/// `--plan-only` and the run make the same decisions: over a sweep of budgets from below the
/// smallest workable one to above everything-resident, a plan is printed exactly when the run
/// opens, and the run then allocates what the plan said.
#[test]
fn plan_and_run_agree_on_every_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_q4_k_m(dir.path(), 320);
    let min = budget_for(&path, 0, 2);
    let all = budget_for(&path, 6, 0);
    let (lo, hi) = (min - min / 8, all + all / 8);
    let (mut ok, mut refused) = (0, 0);
    for k in 0..=24u64 {
        let budget = lo + (hi - lo) * k / 24;
        let o = opts(Some(budget), 2);
        let plan = plan_only(&path, &o);
        let run = Streamer::open(&path, &o);
        match (&plan, &run) {
            (Ok(p), Ok(s)) => {
                ok += 1;
                assert_eq!(s.plan().resident, p.resident, "budget {budget}");
                assert_eq!(s.plan().streamed, p.streamed, "budget {budget}");
                assert_eq!(s.device_bytes(), p.device_bytes(), "budget {budget}");
                assert!(s.device_bytes() <= budget);
            }
            (Err(a), Err(b)) => {
                refused += 1;
                assert_eq!(a.to_string(), b.to_string(), "budget {budget}");
            }
            _ => panic!(
                "budget {budget}: plan {:?} but run {:?}",
                plan.as_ref().map(|p| p.streamed.clone()),
                run.as_ref().map(|s| s.plan().streamed.clone())
            ),
        }
    }
    assert!(ok > 10 && refused > 0, "ok {ok}, refused {refused}");
}

/// The output buffer holds the logits asked for: one row unless every position's are wanted
/// (then the whole micro-batch's); asking a last-row executor for every row is refused.
#[test]
fn output_buffer_is_sized_for_the_logits_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    // A vocabulary large enough that the logits dominate the compute buffer (as Gemma's 262k do).
    let path = dir.path().join("tiny-gemma3-vocab8192.gguf");
    write_gemma3(&path, Gemma3Dims::TINY, 8192, GgmlType::Q8_0).unwrap();
    let big = Some(u64::MAX / 2);
    let all = plan_only(&path, &opts(big, 2)).unwrap();
    let last = plan_only(
        &path,
        &StreamOptions {
            all_logits: false,
            ..opts(big, 2)
        },
    )
    .unwrap();
    assert_eq!((all.n_outputs, last.n_outputs), (N_CTX, 1));
    // 64 rows of 8192 logits are 2 MiB of f32: the all-rows buffer holds them, the last-row
    // one is a small fraction of that (its largest graph is a layer's).
    let rows = 64 * 8192 * 4;
    assert!(
        all.sizes.compute >= rows && last.sizes.compute < rows / 8,
        "{} vs {}",
        all.sizes.compute,
        last.sizes.compute
    );
    let mut s = Streamer::open(
        &path,
        &StreamOptions {
            all_logits: false,
            ..opts(big, 2)
        },
    )
    .unwrap();
    let e = s.eval(&PROMPT, true).unwrap_err().to_string();
    assert!(e.contains("sized for the last one"), "{e}");
    // The last row alone is what an all-rows run gives for that row.
    let mut s = Streamer::open(
        &path,
        &StreamOptions {
            all_logits: false,
            ..opts(big, 2)
        },
    )
    .unwrap();
    let one = s.eval(&PROMPT, false).unwrap();
    let mut s2 = Streamer::open(&path, &opts(big, 2)).unwrap();
    let every = s2.eval(&PROMPT, true).unwrap();
    let v = s.hparams().n_vocab as usize;
    assert_eq!(one.len(), v);
    let e = rel_err(&one, &every[every.len() - v..]);
    assert!(e <= 1e-5, "{e}");
}

/// A budget the default micro-batch's compute buffer does not fit: with `n_ubatch_auto` the
/// micro-batch is halved until the plan fits (and the plan says so), the device never exceeds
/// the budget, and the logits equal llama.cpp's run with that same micro-batch bit for bit;
/// without it the refusal names `-b`.
#[test]
fn micro_batch_shrinks_to_fit_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::Q8_0);
    let full = plan_only(&path, &opts(Some(u64::MAX / 2), 2)).unwrap();
    // Room for the smallest plan (everything streamed) but half its compute buffer: the
    // micro-batch must shrink.
    let budget = budget_for(&path, 0, 2) - full.sizes.compute / 2;
    let fixed = StreamOptions {
        n_ubatch_auto: false,
        ..opts(Some(budget), 2)
    };
    let e = plan_only(&path, &fixed).unwrap_err().to_string();
    assert!(e.contains("-b"), "{e}");
    let o = StreamOptions {
        n_ubatch_auto: true,
        ..opts(Some(budget), 2)
    };
    let plan = plan_only(&path, &o).unwrap();
    assert!(plan.n_ubatch < N_CTX, "{plan}");
    assert_eq!(plan.n_ubatch_requested, N_CTX);
    assert!(plan.to_string().contains("reduced from 64"), "{plan}");
    let mut s = Streamer::open(&path, &o).unwrap();
    let got = s.eval(&PROMPT, true).unwrap();
    assert!(s.device_bytes() <= budget);
    let llama = Llama::load(&path).unwrap();
    let mut sess = llama
        .session(N_CTX, plan.n_ubatch, 2, &SamplerConfig::greedy())
        .unwrap();
    let want = sess.eval(&PROMPT, true).unwrap();
    assert_eq!(
        bit_differences(&got, &want),
        0,
        "micro-batch {}",
        plan.n_ubatch
    );
}

/// The bench generator's Q4_K_M mixture gives every tensor the type `llama_model_quantize`
/// gives it on the same shapes (both the K-quant rows and the fallbacks), and the random-block
/// file streams to llama.cpp's logits bit for bit.
#[test]
fn random_q4_k_m_blocks_follow_llama_cpps_types_and_stream_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for n_embd in [256u64, 320] {
        let theirs = tiny_q4_k_m(dir.path(), n_embd);
        let d = Gemma3Dims {
            n_embd,
            n_ff: 512,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            ..Gemma3Dims::TINY
        };
        let ours = dir.path().join(format!("random-q4_k_m-{n_embd}.gguf"));
        jq::synth_blocks::write_gemma3_random(&ours, d, 384, jq::synth_blocks::Mixture::Q4KM, 3)
            .unwrap();
        let types = |p: &Path| -> Vec<(String, GgmlType)> {
            let f = jq::gguf::GgufModel::open(p).unwrap();
            let mut v: Vec<_> = f.tensor_infos().map(|t| (t.name.clone(), t.ty)).collect();
            v.sort();
            v
        };
        assert_eq!(types(&ours), types(&theirs), "n_embd {n_embd}");
        let llama = Llama::load(&ours).unwrap();
        let want = llama.prompt_logits(&PROMPT, N_CTX, 2).unwrap();
        let budget = budget_for(&ours, 1, 2);
        let mut s = Streamer::open(&ours, &opts(Some(budget), 2)).unwrap();
        let got = s.eval(&PROMPT, true).unwrap();
        assert_eq!(bit_differences(&got, &want), 0, "n_embd {n_embd}");
        assert!(got.iter().all(|x| x.is_finite()));
    }
}

/// `src` copied with metadata `key` set to `value` (replaced or added) and `extra` tensors
/// (name, F32 shape, values) appended.
fn edited_copy(
    src: &Path,
    dst: &Path,
    key: &str,
    value: jq::gguf::MetaValue,
    extra: &[(&str, Vec<u64>, Vec<f32>)],
) {
    let f = jq::gguf::GgufModel::open(src).unwrap();
    let mut w = jq::gguf::GgufWriter::new();
    for (k, v) in f.metadata() {
        if k != key && !k.starts_with("GGUF.") {
            w.add(k, v.to_owned_value()).unwrap();
        }
    }
    w.add(key, value).unwrap();
    let mut data: Vec<Vec<u8>> = Vec::new();
    for t in f.tensors() {
        w.add_tensor(t.name(), t.ty(), &t.info.ne).unwrap();
        data.push(t.data.to_vec());
    }
    for (name, ne, vals) in extra {
        w.add_tensor(name, GgmlType::F32, ne).unwrap();
        data.push(vals.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    w.write_file(dst, |i, _, out| {
        out.write_all(&data[i])
            .map_err(|e| jq::gguf::GgufError::io("<output>", e))
    })
    .unwrap();
}

fn with_swa_key(src: &Path, dst: &Path, value: jq::gguf::MetaValue) {
    edited_copy(
        src,
        dst,
        "gemma3.attention.sliding_window_pattern",
        value,
        &[],
    );
}

/// The bool-array form of the sliding-window pattern (what our converter writes for layer
/// types no period describes) is read like llama.cpp reads it, in the planners and the
/// executor: the same sliding layers as the integer form of the same pattern, the same KV
/// plan, and streamed logits equal to llama.cpp's on the bool-array file.
#[test]
fn bool_array_sliding_pattern_plans_and_streams_like_the_period() {
    use jq::engine::plan::ModelShape;
    use jq::gguf::{MetaValue, ValueType};
    let dir = tempfile::tempdir().unwrap();
    let d = Gemma3Dims {
        n_layer: 8,
        swa_pattern: 4,
        ..Gemma3Dims::TINY
    };
    let int = dir.path().join("period4.gguf");
    write_gemma3(&int, d, 384, GgmlType::F32).unwrap();
    // llama.cpp's rule for a period of 4 (set_swa_pattern): il % 4 < 3 slides.
    let want: Vec<bool> = (0..8).map(|il| il % 4 < 3).collect();
    let arr = dir.path().join("bool-array.gguf");
    with_swa_key(
        &int,
        &arr,
        MetaValue::array(ValueType::Bool, want.iter().copied()),
    );
    // A file whose array says something else must read differently (the test can fail).
    let other: Vec<bool> = (0..8).map(|il| il % 2 == 0).collect();
    let arr2 = dir.path().join("bool-array-other.gguf");
    with_swa_key(
        &int,
        &arr2,
        MetaValue::array(ValueType::Bool, other.iter().copied()),
    );

    let hp =
        |p: &Path| jq::arch::Hparams::from_gguf(&jq::gguf::GgufModel::open(p).unwrap()).unwrap();
    assert_eq!(hp(&int).swa, want);
    assert_eq!(hp(&arr).swa, want);
    assert_eq!(hp(&arr2).swa, other);

    let kv = |p: &Path| {
        let m = ModelShape::from_gguf(&jq::gguf::GgufModel::open(p).unwrap()).unwrap();
        (0..8)
            .map(|il| m.kv_bytes(il, 1024, 32))
            .collect::<Vec<u64>>()
    };
    assert_eq!(kv(&arr), kv(&int));
    assert_ne!(kv(&arr2), kv(&int));
    // Sliding layers hold 256 cells (8 + 32 rounded up), global ones the context.
    let cell = 2 * 16 * 2 * 2;
    let expect: Vec<u64> = want
        .iter()
        .map(|&s| if s { 256 * cell } else { 1024 * cell })
        .collect();
    assert_eq!(kv(&arr), expect);

    let sizes = |p: &Path| {
        format!(
            "{:?}",
            plan_only(p, &opts(Some(u64::MAX / 2), 2)).unwrap().sizes
        )
    };
    assert_eq!(sizes(&arr), sizes(&int));
    // Streamed on the bool-array file, past the window of 8: llama.cpp's logits.
    let budget = budget_for(&arr, 1, 2);
    let (ep, ed, _) = check_parity(&arr, budget, 2);
    assert!(
        ep <= 1e-4 && max(&ed) <= 1e-4,
        "prompt {ep:.3e}, decode {ed:?}"
    );
}

/// A Gemma-3 file with an untied `output.weight` (llama.cpp's gemma3 loader takes one when
/// present) streams with that head, not the embedding: logits equal llama.cpp's.
#[test]
fn gemma3_untied_output_head_streams_like_llama_cpp() {
    use jq::gguf::MetaValue;
    let dir = tempfile::tempdir().unwrap();
    let tied = tiny(dir.path(), GgmlType::F32);
    let untied = dir.path().join("untied.gguf");
    let (e, v) = (Gemma3Dims::TINY.n_embd, 384u64);
    let head = jq::synth::weights(77, (e * v) as usize, 0.05);
    edited_copy(
        &tied,
        &untied,
        "general.name",
        MetaValue::from("untied"),
        &[("output.weight", vec![e, v], head)],
    );
    let budget = budget_for(&untied, 1, 2);
    let (ep, ed, s) = check_parity(&untied, budget, 2);
    assert!(
        ep <= 1e-4 && max(&ed) <= 1e-4,
        "prompt {ep:.3e}, decode {ed:?}"
    );
    assert!(s.placement().iter().any(|(n, _)| n == "output.weight"));
    // The head matters: the tied file's logits differ.
    let mut t = Streamer::open(&tied, &opts(Some(budget_for(&tied, 1, 2)), 2)).unwrap();
    let mut u = Streamer::open(&untied, &opts(Some(budget), 2)).unwrap();
    assert_ne!(
        t.eval(&PROMPT, false).unwrap(),
        u.eval(&PROMPT, false).unwrap()
    );
}

/// A tensor the family's graph would not use (here an `output.bias`, which llama.cpp's qwen2
/// loader takes) is refused by name, not silently left out of the computation.
#[test]
fn unused_tensors_are_refused_by_name() {
    use jq::gguf::MetaValue;
    let dir = tempfile::tempdir().unwrap();
    let src = tiny(dir.path(), GgmlType::F32);
    let bad = dir.path().join("extra.gguf");
    edited_copy(
        &src,
        &bad,
        "general.name",
        MetaValue::from("extra"),
        &[("output.bias", vec![384], vec![0.5; 384])],
    );
    let e = Streamer::open(&bad, &opts(None, 2))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'output.bias'") && e.contains("gemma3"), "{e}");
    Streamer::open(&src, &opts(None, 2)).unwrap();
}

/// Prompts of three lengths (12, 5, 17 tokens) for the several-sequence tests.
fn three_prompts() -> [Vec<u32>; 3] {
    [
        PROMPT.to_vec(),
        vec![2, 40, 41, 42, 43],
        vec![
            2, 99, 98, 97, 96, 95, 94, 93, 92, 91, 90, 89, 88, 87, 86, 85, 84,
        ],
    ]
}

/// Each prompt alone in a single-sequence executor opened with `o`: its logits, then those of
/// `steps` greedy tokens one at a time.
fn each_alone(
    path: &Path,
    o: &StreamOptions,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<Vec<f32>>> {
    prompts
        .iter()
        .map(|p| {
            let mut s = Streamer::open(path, o).unwrap();
            let mut l = vec![s.eval(p, false).unwrap()];
            for _ in 0..steps {
                let next = argmax(l.last().unwrap());
                l.push(s.eval(&[next], false).unwrap());
            }
            l
        })
        .collect()
}

/// Several sequences decoded together (`StreamOptions::n_seq`): each one's prompt through
/// `eval_seq` gives a lone executor's logits bit for bit (same graph, its own cells); decode
/// steps of all of them at once stay within rounding of each one decoded alone, with the same
/// greedy tokens, while each step sweeps the streamed layers once for every sequence.
#[test]
fn several_sequences_share_one_weight_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::Q8_0);
    let prompts = three_prompts();
    let multi = |n_seq: usize| StreamOptions {
        n_seq,
        all_logits: false,
        ..opts(None, 2)
    };
    let budget = plan_only(&path, &multi(3)).unwrap().budget_for(1, 2);
    let mut m = Streamer::open(
        &path,
        &StreamOptions {
            budget: Some(budget),
            ..multi(3)
        },
    )
    .unwrap();
    assert_eq!(m.plan().streamed.len(), 5, "{}", m.plan());
    assert!(m.device_bytes() <= budget);
    let v = m.hparams().n_vocab as usize;
    const STEPS: usize = 10;
    let alone = each_alone(&path, &multi(1), &prompts, STEPS);
    let mut last = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let l = m.eval_seq(i, p, false).unwrap();
        assert_eq!(
            bit_differences(&l, &alone[i][0]),
            0,
            "sequence {i}'s prompt"
        );
        last.push(l);
    }
    let per_token = m.plan().streamed_bytes_per_token;
    let mut worst = 0f64;
    for k in 1..=STEPS {
        // Sequence 1 sits out every third step: steps of 2 and of 3 sequences.
        let items: Vec<(usize, u32)> = (0..3)
            .filter(|&i| i != 1 || k % 3 != 0)
            .map(|i| (i, argmax(&last[i])))
            .collect();
        let n_before = m.steps().len();
        let got = m.decode(&items).unwrap();
        let st = &m.steps()[n_before];
        assert_eq!(st.n_tokens, items.len());
        assert_eq!(
            st.bytes_streamed, per_token,
            "one sweep serves the whole step"
        );
        for ((i, _), l) in items.iter().zip(got) {
            assert_eq!(l.len(), v);
            let want = &alone[*i][m.n_past_of(*i) - prompts[*i].len()];
            assert_eq!(
                argmax(&l),
                argmax(want),
                "sequence {i}, step {k}: greedy token"
            );
            worst = worst.max(rel_err(&l, want));
            last[*i] = l;
        }
        if k % 3 == 0 {
            // Sequence 1 caught up alone, as the lone run did.
            let l = m.decode(&[(1, argmax(&last[1]))]).unwrap().remove(0);
            assert_eq!(
                argmax(&l),
                argmax(&alone[1][m.n_past_of(1) - prompts[1].len()])
            );
            last[1] = l;
        }
    }
    eprintln!("several sequences: worst rel error vs alone {worst:.3e}");
    assert!(worst <= 1e-3, "{worst}");
    // Refusals, before anything runs: a sequence twice in a step, one that does not exist.
    let e = m.decode(&[(0, 5), (0, 6)]).unwrap_err().to_string();
    assert!(e.contains("sequence 0 appears twice"), "{e}");
    let e = m.decode(&[(0, 5), (3, 6)]).unwrap_err().to_string();
    assert!(e.contains("sequence 3 does not exist"), "{e}");
    m.decode(&[(0, 5), (2, 6)]).unwrap();
}

/// Prompts of several sequences in one `eval_batch`, with another sequence's decode token
/// riding along: one sweep of the streamed layers per micro-batch (the rows that do not fit
/// one go on in the next, a prompt split across them), each sequence's logits within
/// rounding of it alone with the same greedy tokens; a chunk that asks for no logits gets
/// none; refusals name the sequence.
#[test]
fn prompts_of_several_sequences_share_their_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny(dir.path(), GgmlType::Q8_0);
    let prompts = three_prompts();
    const N_UB: u32 = 16;
    let multi = |n_seq: usize| StreamOptions {
        n_seq,
        all_logits: false,
        n_ubatch: N_UB,
        ..opts(None, 2)
    };
    let budget = plan_only(&path, &multi(4)).unwrap().budget_for(1, 2);
    let mut m = Streamer::open(
        &path,
        &StreamOptions {
            budget: Some(budget),
            ..multi(4)
        },
    )
    .unwrap();
    assert!(m.plan().streamed.len() >= 4, "{}", m.plan());
    assert_eq!(m.n_ubatch(), N_UB as usize);
    let per_token = m.plan().streamed_bytes_per_token;
    let alone = each_alone(&path, &multi(1), &prompts, 3);
    // Sequence 0's prompt first, alone: then its next token rides with the others' prompts.
    let l0 = m.eval_seq(0, &prompts[0], false).unwrap();
    assert_eq!(bit_differences(&l0, &alone[0][0]), 0);
    let t0 = [argmax(&l0)];
    let chunks = [
        SeqChunk {
            seq: 0,
            tokens: &t0,
            logits: true,
        },
        SeqChunk {
            seq: 1,
            tokens: &prompts[1],
            logits: true,
        },
        SeqChunk {
            seq: 2,
            tokens: &prompts[2],
            logits: true,
        },
    ];
    let n_before = m.steps().len();
    let got = m.eval_batch(&chunks).unwrap();
    // 1 + 5 + 17 = 23 rows: two micro-batches of up to 16, two sweeps, one step.
    assert_eq!(m.steps().len(), n_before + 1);
    let st = &m.steps()[n_before];
    assert_eq!(st.n_tokens, 23);
    assert_eq!(
        st.bytes_streamed,
        2 * per_token,
        "one sweep per micro-batch"
    );
    assert_eq!(got.len(), 3);
    let want = [&alone[0][1], &alone[1][0], &alone[2][0]];
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(argmax(g), argmax(w), "sequence {i}: greedy token");
        worst = worst.max(rel_err(g, w));
    }
    assert_eq!(
        (m.n_past_of(0), m.n_past_of(1), m.n_past_of(2)),
        (13, 5, 17)
    );
    // The next tokens of all three in one micro-batch: one sweep; sequence 3 adds a prompt
    // chunk that asks for no logits.
    let next: Vec<[u32; 1]> = got.iter().map(|l| [argmax(l)]).collect();
    let mut chunks: Vec<SeqChunk<'_>> = next
        .iter()
        .enumerate()
        .map(|(i, t)| SeqChunk {
            seq: i,
            tokens: t,
            logits: true,
        })
        .collect();
    chunks.push(SeqChunk {
        seq: 3,
        tokens: &prompts[1][..3],
        logits: false,
    });
    let n_before = m.steps().len();
    let got = m.eval_batch(&chunks).unwrap();
    assert_eq!(m.steps()[n_before].bytes_streamed, per_token);
    assert_eq!(got.len(), 3, "no logits for the chunk that asked none");
    let want = [&alone[0][2], &alone[1][1], &alone[2][1]];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            argmax(g),
            argmax(w),
            "sequence {i}, second step: greedy token"
        );
        worst = worst.max(rel_err(g, w));
    }
    assert_eq!(m.n_past_of(3), 3);
    eprintln!("prompts together: worst rel error vs alone {worst:.3e}");
    assert!(worst <= 1e-3, "{worst}");
    // Refusals, before anything runs (the executor stays usable).
    let e = m
        .eval_batch(&[SeqChunk {
            seq: 1,
            tokens: &[],
            logits: true,
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sequence 1: nothing to evaluate"), "{e}");
    let long = vec![5u32; N_CTX as usize];
    let e = m
        .eval_batch(&[SeqChunk {
            seq: 2,
            tokens: &long,
            logits: true,
        }])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sequence 2: the context of 64 positions is full"),
        "{e}"
    );
    assert!(m.failure().is_none());
    assert_eq!(m.decode(&[(1, 5)]).unwrap().len(), 1);
}
