//! Gemma-3-27B-shaped Q4_0 or Q4_K_M (random blocks, ~15 GB, under target/bench-data, never
//! committed)
//! streamed under a 6 GiB budget on the CPU backend: plan, 128-token prompt, a few decode
//! tokens, the copy floor (the same streamed bytes through the same ring with no compute, same
//! run), the compute floor (the same plan with the reader handing slots over unread, same
//! run), `--host-layers auto` and every streamed layer on the host (weights in place from the
//! memory map), and llama.cpp CPU-only on the same file through the bindings.
//!
//! `cargo bench --bench stream_27b` (env: `JQ_BENCH_MIX` q4_0 (default) or q4_k_m;
//! `JQ_BENCH_MODEL` gemma3-27b (default) or llama8b (a Llama-3-8B-shaped Q4_0 file of
//! ~4.7 GB from the `jq::arch` llama table, default budget 1.5 GiB);
//! `JQ_BENCH_DECODE` tokens, default 3; `JQ_BENCH_PARALLEL=1,4,16` adds several sequences
//! decoded together per step (aggregate tokens/s);
//! `JQ_BENCH_BUDGET`, default 6GiB; `JQ_BENCH_THREADS` compute threads, default cores - 1 as
//! `jq-run`; `JQ_BENCH_NO_LLAMA=1` skips the anchor; `JQ_BENCH_NO_EXTRA=1` skips the compute
//! floor and host-layer runs; `JQ_BENCH_DIRECT_IO=1` (or `JQ_BENCH_DIRECT=1`) reads with
//! O_DIRECT, no page cache: the case of a model larger than memory; `JQ_BENCH_NO_REPACK=1`
//! keeps the weights in the file's layout instead of ggml's CPU_REPACK one;
//! `JQ_BENCH_ROUNDS` repeats the `JQ_BENCH_PARALLEL` levels interleaved, default 1;
//! `JQ_BENCH_PARALLEL_ONLY=1` runs only those).

use jq::engine::llama::Llama;
use jq::engine::plan::{fmt_size, parse_size};
use jq::engine::stream::profile::{EvKind, Event};
use jq::engine::stream::{HostLayers, SeqChunk, StreamOptions, Streamer};
use jq::synth::Gemma3Dims;
use std::path::PathBuf;
use std::time::Instant;

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir)?;
    // JQ_BENCH_MIX=q4_k_m: llama.cpp's Q4_K_M mixture (Q4_K, Q6_K in the more-bits layers and
    // the tied head) instead of every matrix Q4_0.
    let (mix, name) = match env("JQ_BENCH_MIX").as_deref() {
        None | Some("q4_0") => (jq::synth_blocks::Mixture::Q4_0, "q4_0"),
        Some("q4_k_m") => (jq::synth_blocks::Mixture::Q4KM, "q4_k_m"),
        Some(other) => anyhow::bail!("JQ_BENCH_MIX={other}: q4_0 or q4_k_m"),
    };
    // JQ_BENCH_MODEL=llama8b: a Llama-3-8B-shaped file (~4.7 GB in Q4_0) under 1.5 GiB
    // instead of the Gemma-3-27B shape under 6 GiB.
    let llama8b = match env("JQ_BENCH_MODEL").as_deref() {
        None | Some("gemma3-27b") => false,
        Some("llama8b") if mix == jq::synth_blocks::Mixture::Q4_0 => true,
        Some(other) => anyhow::bail!("JQ_BENCH_MODEL={other}: gemma3-27b, or llama8b (q4_0 only)"),
    };
    let (path, n_vocab, default_budget) = if llama8b {
        (
            dir.join("llama-8b-shape-q4_0-random.gguf"),
            128_256u32,
            "1536MiB",
        )
    } else {
        (
            dir.join(format!("gemma3-27b-shape-{name}-random.gguf")),
            262_208,
            "6GiB",
        )
    };
    if !path.exists() {
        let t = Instant::now();
        eprintln!("writing {} ...", path.display());
        if llama8b {
            jq::synth_blocks::write_llama_random(
                &path,
                jq::synth::LlamaDims::L8B,
                n_vocab.into(),
                mix,
                8,
            )?;
        } else {
            jq::synth_blocks::write_gemma3_random(
                &path,
                Gemma3Dims::G27B,
                n_vocab.into(),
                mix,
                27,
            )?;
        }
        eprintln!("written in {:.1} s", t.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&path)?.len();
    let n_decode: usize = env("JQ_BENCH_DECODE").map_or(3, |v| v.parse().unwrap_or(3));
    let budget = parse_size(&env("JQ_BENCH_BUDGET").unwrap_or(default_budget.into()))
        .map_err(anyhow::Error::msg)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Compute threads of the streamed runs (default as jq-run: one core left to the reader).
    let dflt = threads.saturating_sub(1).max(1);
    let st_threads: usize = env("JQ_BENCH_THREADS").map_or(dflt, |v| v.parse().unwrap_or(dflt));
    let n_prompt = 128usize;
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| 2 + (i * 2654435761u32) % (n_vocab - 300))
        .collect();
    let opts = StreamOptions {
        budget: Some(budget),
        n_slots: 2,
        direct_io: env("JQ_BENCH_DIRECT_IO").is_some() || env("JQ_BENCH_DIRECT").is_some(),
        n_ctx: 256,
        n_ubatch: 128,
        threads: st_threads,
        threads_batch: threads,
        repack: env("JQ_BENCH_NO_REPACK").is_none(),
        ..StreamOptions::default()
    };
    if env("JQ_BENCH_PARALLEL_ONLY").is_some() {
        let rows = parallel_levels(&path, &opts, n_decode, &prompt)?;
        print_parallel(&rows, opts.direct_io);
        return Ok(());
    }
    let t = Instant::now();
    let mut s = Streamer::open(&path, &opts)?;
    let open_s = t.elapsed().as_secs_f64();
    println!(
        "file {} ({}), {} threads, budget {}",
        path.display(),
        fmt_size(size),
        threads,
        fmt_size(budget)
    );
    println!("{}", s.plan());
    println!(
        "open (allocate + upload resident): {open_s:.1} s; device memory {}",
        fmt_size(s.device_bytes())
    );
    let per_token = s.plan().streamed_bytes_per_token;
    let upload_path = s.upload_path().to_string();
    // Warm the page cache state the steps will see: one copy-floor cycle first.
    let (_, warm_s) = s.copy_floor(1)?;
    println!("warm-up copy cycle: {warm_s:.2} s");
    let t = Instant::now();
    s.eval(&prompt, false)?;
    let prompt_s = t.elapsed().as_secs_f64();
    let mut dec = Vec::new();
    for k in 0..n_decode {
        let t = Instant::now();
        s.eval(&[(k as u32) + 300], false)?;
        dec.push(t.elapsed().as_secs_f64());
    }
    let (fb, floor_s) = s.copy_floor(2)?;
    let floor = floor_s / 2.0;
    let steps = s.steps().to_vec();
    let device = s.device_bytes();
    drop(s);
    for (i, st) in steps.iter().enumerate() {
        println!(
            "step {i}: {} tok, {:.2} s, compute {:.2} s, wait {:.2} s, streamed {} (reader {:.2} GB/s, effective {:.2} GB/s), peak RSS {}",
            st.n_tokens, st.total_s, st.compute_s, st.wait_s, fmt_size(st.bytes_streamed), st.read_gbps(), st.effective_gbps(),
            st.peak_rss.map_or("?".into(), fmt_size)
        );
    }
    let dec_mean = dec.iter().sum::<f64>() / dec.len().max(1) as f64;
    println!(
        "copy floor: {} in {:.2} s per token ({:.2} GB/s)",
        fmt_size(fb / 2),
        floor,
        (fb / 2) as f64 / floor / 1e9
    );
    let mut rows = vec![format!(
        "| jq --stream-layers ({} budget, 2 slots, {st_threads} compute thread(s), {}) | {:.2} | {:.2} | {:.2}x | {:.2} | {} |",
        fmt_size(budget),
        upload_path,
        dec_mean,
        1.0 / dec_mean,
        dec_mean / floor,
        n_prompt as f64 / prompt_s,
        fmt_size(device)
    )];
    rows.push(format!(
        "| copy floor (same ring, no compute) | {floor:.2} | {:.2} | 1.00x | - | - |",
        1.0 / floor
    ));
    if env("JQ_BENCH_NO_EXTRA").is_none() {
        // Decode only (a one-token prompt first), same options otherwise.
        let decode_only = |o: &StreamOptions| -> anyhow::Result<(f64, String, u64)> {
            let mut s = Streamer::open(&path, o)?;
            s.eval(&[2], false)?;
            let mut d = Vec::new();
            for k in 0..n_decode {
                let t = Instant::now();
                s.eval(&[(k as u32) + 300], false)?;
                d.push(t.elapsed().as_secs_f64());
            }
            let plan = s.plan();
            let note = format!(
                "{} streamed, {} host{}",
                plan.streamed.len(),
                plan.host.len(),
                plan.calibration.map_or(String::new(), |c| format!(
                    " (auto: fill {:.1} ms, device {:.1} ms, host {:.1} ms per layer)",
                    c.fill_s * 1e3,
                    c.device_s * 1e3,
                    c.host_s * 1e3
                ))
            );
            Ok((
                d.iter().sum::<f64>() / d.len().max(1) as f64,
                note,
                s.device_bytes(),
            ))
        };
        let (cf, _, _) = decode_only(&StreamOptions {
            skip_reads: true,
            ..opts.clone()
        })?;
        println!("compute floor (reader hands slots over unread): {cf:.2} s/token");
        // On the CPU device the copy and the compute share the memory bus, so their floors
        // add up; on a GPU they overlap (PCIe vs device memory) and the larger one is the floor.
        println!(
            "decode {dec_mean:.2} s/token = {:.2}x max(copy, compute floor), {:.2}x their sum",
            dec_mean / cf.max(floor),
            dec_mean / (cf + floor)
        );
        rows.push(format!(
            "| compute floor (same plan, slots handed over unread) | {cf:.2} | {:.2} | {:.2}x | - | - |",
            1.0 / cf,
            cf / floor
        ));
        for (label, hl) in [
            ("--host-layers auto", HostLayers::Auto),
            (
                "--host-layers all streamed (weights in place)",
                HostLayers::N(usize::MAX),
            ),
        ] {
            let (d, note, dev) = decode_only(&StreamOptions {
                host_layers: hl,
                ..opts.clone()
            })?;
            println!("{label}: {d:.2} s/token; {note}");
            rows.push(format!(
                "| jq {label}: {note} | {d:.2} | {:.2} | {:.2}x | - | {} |",
                1.0 / d,
                d / floor,
                fmt_size(dev)
            ));
        }
    }
    let par_rows = parallel_levels(&path, &opts, n_decode, &prompt)?;
    if env("JQ_BENCH_NO_LLAMA").is_none() {
        let t = Instant::now();
        let llama = Llama::load(&path)?;
        let load_s = t.elapsed().as_secs_f64();
        let (ps, ds, _) = llama.greedy_decode(&prompt, n_decode, 256, threads as i32)?;
        println!(
            "llama.cpp CPU: load {load_s:.1} s, prompt {ps:.2} s, decode {ds:.2} s / {n_decode}"
        );
        rows.push(format!(
            "| llama.cpp CPU-only, weights in place (mmap + repack) | {:.2} | {:.2} | {:.2}x | {:.2} | all in host RAM |",
            ds / n_decode as f64,
            n_decode as f64 / ds,
            ds / n_decode as f64 / floor,
            n_prompt as f64 / ps
        ));
    }
    println!(
        "\nstreamed per token: {}\n\n| run | s/token (decode) | tok/s | vs copy floor | prompt tok/s (128) | device memory |\n|---|---|---|---|---|---|",
        fmt_size(per_token)
    );
    for r in rows {
        println!("{r}");
    }
    print_parallel(&par_rows, opts.direct_io);
    Ok(())
}

/// `JQ_BENCH_PARALLEL` levels, `JQ_BENCH_ROUNDS` times interleaved: one table row per level.
fn parallel_levels(
    path: &std::path::Path,
    opts: &StreamOptions,
    n_decode: usize,
    prompt: &[u32],
) -> anyhow::Result<Vec<String>> {
    // JQ_BENCH_PARALLEL=1,4,16: several sequences decoded together (one sweep of the streamed
    // layers per step for all of them): aggregate tokens/s vs one sequence, same plan rules.
    let mut par_rows = Vec::new();
    if let Some(list) = env("JQ_BENCH_PARALLEL") {
        let levels: Vec<usize> = list
            .split(',')
            .filter_map(|x| x.trim().parse::<usize>().ok())
            .collect();
        let rounds: usize = env("JQ_BENCH_ROUNDS").map_or(1, |v| v.parse().unwrap_or(1).max(1));
        let mut runs: Vec<Vec<Par>> = vec![Vec::new(); levels.len()];
        for round in 0..rounds {
            for (li, &n) in levels.iter().enumerate() {
                let r = parallel_run(path, opts, n, n_decode, prompt)?;
                println!(
                    "round {round}, {n} sequence(s): prompts {:.2} s ({:.2} sweeps), {:.2} s/step, compute {:.2} s, wait {:.2} s, {} streamed per step ({:.2} sweeps), reader {:.2} GB/s, busy {:.0}% of the step, {:.0}% of its reading during compute, load {}",
                    r.prompt_s, r.prompt_sweeps, r.step_s, r.compute_s, r.wait_s, fmt_size(r.bytes_per_step), r.sweeps, r.read_gbps, 100.0 * r.read_busy, 100.0 * r.overlap, loadavg()
                );
                runs[li].push(r);
            }
        }
        // The median (of an even count: the mean of the middle two).
        let med = |v: &mut Vec<f64>| -> f64 {
            v.sort_by(f64::total_cmp);
            let k = v.len();
            (v[(k - 1) / 2] + v[k / 2]) / 2.0
        };
        let mut base = None;
        for (li, &n) in levels.iter().enumerate() {
            let rs = &runs[li];
            let mut agg: Vec<f64> = rs.iter().map(|r| n as f64 / r.step_s).collect();
            let (lo, hi) = (
                agg.iter().copied().fold(f64::MAX, f64::min),
                agg.iter().copied().fold(0.0, f64::max),
            );
            let a = med(&mut agg);
            let b = *base.get_or_insert(a);
            let mut step: Vec<f64> = rs.iter().map(|r| r.step_s).collect();
            let mut comp: Vec<f64> = rs.iter().map(|r| r.compute_s).collect();
            let mut wait: Vec<f64> = rs.iter().map(|r| r.wait_s).collect();
            let mut ov: Vec<f64> = rs.iter().map(|r| r.overlap).collect();
            let mut busy: Vec<f64> = rs.iter().map(|r| r.read_busy).collect();
            let mut pr: Vec<f64> = rs.iter().map(|r| r.prompt_s).collect();
            let r0 = &rs[0];
            let (step, comp, wait) = (med(&mut step), med(&mut comp), med(&mut wait));
            par_rows.push(format!(
                "| {n} | {} / {} | {:.1} s, {:.0} | {step:.2} | {comp:.2} | {wait:.2} | {} | {:.3} | {:.2} | {a:.2} ({lo:.2}-{hi:.2}) | {:.2}x | {:.0}% | {:.0}% | {} |",
                r0.streamed,
                r0.resident,
                med(&mut pr),
                r0.prompt_sweeps,
                fmt_size(r0.bytes_per_step),
                r0.bytes_per_step as f64 / n as f64 / 1e9,
                r0.sweeps,
                a / b,
                100.0 * med(&mut busy),
                100.0 * med(&mut ov),
                if wait > 0.1 * step { "I/O" } else { "compute" },
            ));
        }
    }
    Ok(par_rows)
}

fn print_parallel(rows: &[String], direct_io: bool) {
    if !rows.is_empty() {
        println!(
            "\nseveral sequences per step ({}; median of rounds, aggregate range in brackets):\n\n| sequences | streamed / resident layers | prompts (8 tokens each, one call): time, sweeps | s/step | compute s | wait s | streamed per step | GB read per token | sweeps per step | aggregate tok/s | vs one sequence | reader busy (share of the step) | reading during compute (share of the reads) | bound |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            if direct_io { "O_DIRECT, no page cache" } else { "through the memory map" }
        );
        for r in rows {
            println!("{r}");
        }
    }
}

/// One `JQ_BENCH_PARALLEL` level's measurement.
#[derive(Clone)]
struct Par {
    step_s: f64,
    compute_s: f64,
    wait_s: f64,
    bytes_per_step: u64,
    /// Streamed bytes per decode step over the plan's bytes per sweep (1.00: one sweep).
    sweeps: f64,
    read_gbps: f64,
    /// Share of the reader's busy time (over the decode steps) during which a layer computed.
    overlap: f64,
    /// The reader's busy time over the decode steps' wall time (1.0: it never idled).
    read_busy: f64,
    streamed: usize,
    resident: usize,
    /// The prompts' step (every sequence's 8 tokens in one `eval_batch`): seconds, sweeps.
    prompt_s: f64,
    prompt_sweeps: f64,
}

/// `n` sequences, each with a short prompt of its own, then `n_decode` steps of one token each
/// for all of them (one `decode` call per step).
fn parallel_run(
    path: &std::path::Path,
    opts: &StreamOptions,
    n: usize,
    n_decode: usize,
    prompt: &[u32],
) -> anyhow::Result<Par> {
    let o = StreamOptions {
        n_seq: n,
        ..opts.clone()
    };
    let mut s = Streamer::open(path, &o)?;
    // Every sequence's 8-token prompt in one call, as `jq-run serve` admits requests that
    // arrive together: one sweep per micro-batch of the prompts, not one per sequence.
    let chunks: Vec<SeqChunk<'_>> = (0..n)
        .map(|q| SeqChunk {
            seq: q,
            tokens: &prompt[q % 8..q % 8 + 8],
            logits: true,
        })
        .collect();
    let tp = Instant::now();
    s.eval_batch(&chunks)?;
    let prompt_s = tp.elapsed().as_secs_f64();
    let prompt_sweeps = s.steps().last().map_or(0, |x| x.bytes_streamed) as f64
        / s.plan().streamed_bytes_per_token.max(1) as f64;
    let first = s.steps().len();
    let t0 = s.events().last().map_or(0.0, |e| e.t);
    let t = Instant::now();
    for k in 0..n_decode {
        let items: Vec<(usize, u32)> = (0..n).map(|q| (q, 300 + (k * n + q) as u32)).collect();
        let l = s.decode(&items)?;
        anyhow::ensure!(l.len() == n, "{} logit rows for {n} sequences", l.len());
    }
    let dt = t.elapsed().as_secs_f64();
    let steps = &s.steps()[first..];
    anyhow::ensure!(steps.len() == n_decode, "one step per decode call");
    let per = |f: fn(&jq::engine::stream::profile::StepStats) -> f64| {
        steps.iter().map(f).sum::<f64>() / steps.len() as f64
    };
    let bytes: u64 = steps.iter().map(|x| x.bytes_streamed).sum::<u64>() / steps.len() as u64;
    let plan_bytes = s.plan().streamed_bytes_per_token;
    let read_s: f64 = steps.iter().map(|x| x.read_s).sum();
    Ok(Par {
        step_s: dt / n_decode as f64,
        compute_s: per(|x| x.compute_s),
        wait_s: per(|x| x.wait_s),
        bytes_per_step: bytes,
        sweeps: bytes as f64 / plan_bytes.max(1) as f64,
        read_gbps: if read_s > 0.0 {
            steps.iter().map(|x| x.bytes_streamed).sum::<u64>() as f64 / read_s / 1e9
        } else {
            0.0
        },
        overlap: read_overlap(&s.events(), t0),
        read_busy: read_s / dt,
        streamed: s.plan().streamed.len(),
        resident: s.plan().resident.len(),
        prompt_s,
        prompt_sweeps,
    })
}

/// Of the reader's intervals (ReadStart..ReadEnd) after `t0`, the share of their time during
/// which the executor was computing a layer (ComputeStart..ComputeEnd).
fn read_overlap(ev: &[Event], t0: f64) -> f64 {
    let mut reads = Vec::new();
    let mut comps = Vec::new();
    let mut open_r = None;
    let mut open_c = None;
    for e in ev.iter().filter(|e| e.t >= t0) {
        match e.kind {
            EvKind::ReadStart => open_r = Some(e.t),
            EvKind::ReadEnd => {
                if let Some(a) = open_r.take() {
                    reads.push((a, e.t));
                }
            }
            EvKind::ComputeStart => open_c = Some(e.t),
            EvKind::ComputeEnd => {
                if let Some(a) = open_c.take() {
                    comps.push((a, e.t));
                }
            }
            _ => {}
        }
    }
    let total: f64 = reads.iter().map(|(a, b)| b - a).sum();
    if total <= 0.0 {
        return 0.0;
    }
    // Both lists are in time order and the computes do not overlap one another.
    let mut both = 0.0;
    let mut j = 0;
    for &(a, b) in &reads {
        while j < comps.len() && comps[j].1 <= a {
            j += 1;
        }
        let mut k = j;
        while k < comps.len() && comps[k].0 < b {
            both += b.min(comps[k].1) - a.max(comps[k].0);
            k += 1;
        }
    }
    both / total
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
