//! The GPU check of `--stream-layers`: everything the first GPU machine should measure, in one
//! run, each table row printed as soon as it is measured (so a run cut short still reports).
//! Built portably by `scripts/gpu-bundle` and run there by its `run.sh`; rehearsed on any
//! machine without a GPU, where the CPU backend plays the device and the rows say so.
//!
//! 1. devices, and the pinned host-to-device copy bandwidth (the PCIe floor);
//! 2. llama.cpp on the GPU vs on the CPU, and `--stream-layers` (budgets that force most layers
//!    to stream) vs llama.cpp resident on the same device, on the committed converter fixture
//!    and on tiny synthetic Q8_0 / Q4_0 / Q4_K_M (llama.cpp's own mixture) files made here;
//! 3. the same on a Gemma 3 270M-shaped Q4_K_M mixture of random blocks made here (the real
//!    file is too big to carry);
//! 4. a Gemma-3-27B-shaped file (Q4_0, then Q4_K_M) under `--vram-budget` (default 6 GiB):
//!    decode s/token, 512-token prefill, the copy floor, vs the PCIe floor; llama.cpp's best
//!    `-ngl` split under the same budget and its op offload (weights in host memory,
//!    `GGML_OP_OFFLOAD_MIN_BATCH=1`, in a child process) as anchors.
//!
//! `gpu_check [--quick] [--dir DIR] [--budget 6GiB] [--no-q4km]`: `--quick` cuts the 27B shape
//! to 6 layers (a rehearsal); files go to DIR (default: a folder in the temporary directory).

use anyhow::{anyhow, bail, Context, Result};
use jq::engine::llama::Llama;
use jq::engine::plan::{fmt_size, parse_size, GpuLayers, ModelShape};
use jq::engine::stream::{plan_only, StreamOptions, Streamer};
use jq::gguf::GgufModel;
use jq::quant::GgmlType;
use jq::sample::SamplerConfig;
use jq::synth::{write_gemma3, Gemma3Dims};
use jq::synth_blocks::{write_gemma3_random, Mixture};
use llama_cpp_sys_2 as sys;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A step that failed is a row too: the next steps still run.
fn report(step: &str, r: Result<()>) {
    if let Err(e) = r {
        row(step, "FAILED", &format!("{e:#}").replace('\n', " "));
    }
}

/// One table row, printed at once.
fn row(step: &str, what: &str, result: &str) {
    println!("| {step} | {what} | {result} |");
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Host-to-device copy bandwidth (bytes/s) from the device's pinned host memory (plain memory
/// where it has none: the CPU), best of 3 rounds of 4 copies of `bytes`.
fn h2d_bandwidth(bytes: usize) -> Result<(f64, bool)> {
    // SAFETY: device discovery; every handle is checked for null, used while alive and freed
    // at the end; the tensor spans exactly the device buffer and the source holds `bytes`.
    unsafe {
        let mut dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_GPU);
        if dev.is_null() {
            dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        }
        if dev.is_null() {
            bail!("no ggml device");
        }
        let host = sys::ggml_backend_dev_host_buffer_type(dev);
        let pinned = !host.is_null();
        let mut plain = Vec::new();
        let (src_buf, src) = if pinned {
            let b = sys::ggml_backend_buft_alloc_buffer(host, bytes);
            if b.is_null() {
                bail!("could not pin {} of host memory", fmt_size(bytes as u64));
            }
            (b, sys::ggml_backend_buffer_get_base(b) as *mut u8)
        } else {
            plain = vec![1u8; bytes];
            (std::ptr::null_mut(), plain.as_mut_ptr())
        };
        std::ptr::write_bytes(src, 1, bytes);
        let dst =
            sys::ggml_backend_buft_alloc_buffer(sys::ggml_backend_dev_buffer_type(dev), bytes);
        if dst.is_null() {
            bail!(
                "could not allocate {} on the device",
                fmt_size(bytes as u64)
            );
        }
        let params = sys::ggml_init_params {
            mem_size: sys::ggml_tensor_overhead() * 2,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        let ctx = sys::ggml_init(params);
        let t = sys::ggml_new_tensor_1d(ctx, sys::GGML_TYPE_I8, bytes as i64);
        sys::ggml_backend_tensor_alloc(dst, t, sys::ggml_backend_buffer_get_base(dst));
        sys::ggml_backend_tensor_set(t, src.cast(), 0, bytes);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            for _ in 0..4 {
                sys::ggml_backend_tensor_set(t, src.cast(), 0, bytes);
            }
            best = best.min(t0.elapsed().as_secs_f64() / 4.0);
        }
        sys::ggml_free(ctx);
        sys::ggml_backend_buffer_free(dst);
        if !src_buf.is_null() {
            sys::ggml_backend_buffer_free(src_buf);
        }
        drop(plain);
        Ok((bytes as f64 / best, pinned))
    }
}

/// Prompt logits (every position) and `n_decode` greedy steps' logits.
struct Run {
    logits: Vec<f32>,
    ids: Vec<u32>,
}

fn argmax(l: &[f32]) -> u32 {
    jq::sample::argmax(l) as u32
}

fn llama_run(path: &Path, ngl: u32, prompt: &[u32], n_decode: usize, n_ctx: u32) -> Result<Run> {
    let l = Llama::load_with(path, ngl)?;
    let mut s = l.session(n_ctx, 512, threads() as i32, &SamplerConfig::greedy())?;
    let mut logits = s.eval(prompt, true)?;
    let v = l.n_vocab();
    let mut ids = Vec::new();
    for _ in 0..n_decode {
        let id = argmax(&logits[logits.len() - v..]);
        ids.push(id);
        logits.extend(s.eval(&[id], true)?);
    }
    Ok(Run { logits, ids })
}

fn stream_opts(budget: u64, cpu: bool, n_ctx: u32) -> StreamOptions {
    StreamOptions {
        budget: Some(budget),
        n_slots: 2,
        n_ctx,
        n_ubatch: 512.min(n_ctx),
        all_logits: true,
        cpu,
        threads: threads(),
        threads_batch: threads(),
        ..StreamOptions::default()
    }
}

/// A budget for the fixed part, 2 resident layers and 2 ring slots on the device.
fn forcing_budget(path: &Path, cpu: bool, n_ctx: u32) -> Result<u64> {
    Ok(plan_only(path, &stream_opts(u64::MAX / 2, cpu, n_ctx))?.budget_for(2, 2))
}

fn stream_run(
    path: &Path,
    o: &StreamOptions,
    prompt: &[u32],
    n_decode: usize,
) -> Result<(Run, String)> {
    let mut s = Streamer::open(path, o)?;
    let mut logits = s.eval(prompt, true)?;
    let v = s.hparams().n_vocab as usize;
    let mut ids = Vec::new();
    for _ in 0..n_decode {
        let id = argmax(&logits[logits.len() - v..]);
        ids.push(id);
        logits.extend(s.eval(&[id], true)?);
    }
    let p = s.plan();
    let note = format!(
        "{} on {} ({} streamed, {} resident, device {} of {})",
        s.upload_path(),
        s.device_name(),
        p.streamed.len(),
        p.resident.len(),
        fmt_size(s.device_bytes()),
        fmt_size(p.budget)
    );
    Ok((Run { logits, ids }, note))
}

fn diff(a: &Run, b: &Run) -> String {
    let bits = a
        .logits
        .iter()
        .zip(&b.logits)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    let m = b.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = a
        .logits
        .iter()
        .zip(&b.logits)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    format!(
        "{bits} of {} logits differ, max rel {:.2e}, greedy ids {}",
        a.logits.len(),
        d / m.max(f32::MIN_POSITIVE),
        if a.ids == b.ids { "equal" } else { "DIFFER" }
    )
}

/// Step 2/3 on one file: llama.cpp GPU vs CPU, stream on the device vs llama.cpp there, stream
/// on the CPU vs llama.cpp on the CPU.
fn parity(label: &str, path: &Path, gpu: bool, prompt: &[u32], n_decode: usize) -> Result<()> {
    let n_ctx = 1024;
    let cpu_ref = llama_run(path, 0, prompt, n_decode, n_ctx)?;
    if gpu {
        let gpu_ref = llama_run(path, 9999, prompt, n_decode, n_ctx)?;
        row(
            label,
            "llama.cpp all layers on the GPU vs on the CPU",
            &diff(&gpu_ref, &cpu_ref),
        );
        let b = forcing_budget(path, false, n_ctx)?;
        let (s, note) = stream_run(path, &stream_opts(b, false, n_ctx), prompt, n_decode)?;
        row(
            label,
            &format!("--stream-layers on the GPU vs llama.cpp GPU resident; {note}"),
            &diff(&s, &gpu_ref),
        );
    }
    let b = forcing_budget(path, true, n_ctx)?;
    let (s, note) = stream_run(path, &stream_opts(b, true, n_ctx), prompt, n_decode)?;
    row(
        label,
        &format!("--stream-layers on the CPU vs llama.cpp CPU; {note}"),
        &diff(&s, &cpu_ref),
    );
    Ok(())
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 2 + (i * 2654435761u32) % 261_000)
        .collect()
}

/// Step 4 on one big file.
fn big(label: &str, path: &Path, budget: u64, h2d: f64, gpu: bool) -> Result<()> {
    let n_ctx = 1024;
    let prompt = tokens(512);
    let o = StreamOptions {
        all_logits: false,
        // As jq-run without -b: the micro-batch shrinks when the budget needs it.
        n_ubatch_auto: true,
        threads: threads().saturating_sub(1).max(1),
        ..stream_opts(budget, false, n_ctx)
    };
    let t = Instant::now();
    let mut s = Streamer::open(path, &o)?;
    let open_s = t.elapsed().as_secs_f64();
    let per_token = s.plan().streamed_bytes_per_token;
    row(
        label,
        "plan",
        &format!(
            "{} (open {open_s:.1} s)",
            s.plan().to_string().replace('\n', "; ")
        ),
    );
    if per_token == 0 {
        row(
            label,
            "jq --stream-layers",
            "nothing streams under this budget (everything resident)",
        );
    }
    s.copy_floor(1)?;
    let t = Instant::now();
    s.eval(&prompt, false)?;
    let pre = t.elapsed().as_secs_f64();
    let mut dec = Vec::new();
    for k in 0..4u32 {
        let t = Instant::now();
        s.eval(&[300 + k], false)?;
        dec.push(t.elapsed().as_secs_f64());
    }
    let dec = dec[1..].iter().sum::<f64>() / 3.0;
    let (fb, fs) = s.copy_floor(2)?;
    let copy_floor = (fs / 2.0).max(f64::MIN_POSITIVE);
    let pcie = per_token as f64 / h2d;
    let dev = s.device_bytes();
    let peak = s.driver_peak();
    drop(s);
    row(
        label,
        "jq --stream-layers decode",
        &format!(
            "{dec:.3} s/token = {:.2}x the PCIe floor ({pcie:.3} s: {} at {:.1} GB/s), {:.2}x the copy floor ({copy_floor:.3} s, {:.1} GB/s); device {}{}",
            dec / pcie,
            fmt_size(per_token),
            h2d / 1e9,
            dec / copy_floor,
            (fb / 2) as f64 / copy_floor / 1e9,
            fmt_size(dev),
            peak.map(|p| format!(", driver peak {}", fmt_size(p))).unwrap_or_default()
        ),
    );
    row(
        label,
        "jq --stream-layers prefill (512 tokens)",
        &format!("{:.1} tok/s ({pre:.2} s)", 512.0 / pre),
    );
    // llama.cpp's best -ngl under the same budget (its own planner, as jq-run -ngl auto).
    let m = GgufModel::open(path)?;
    let shape = ModelShape::from_gguf(&m).map_err(|e| anyhow!(e))?;
    drop(m);
    let g = jq::engine::llama::gpus().into_iter().next();
    // Without a GPU the anchor is llama.cpp CPU-only with the weights in place (no budget:
    // on the CPU it would bound host memory, which streaming does not).
    let b = g.is_some().then_some(budget);
    let p =
        jq::engine::plan::plan(&shape, GpuLayers::Auto, b, g, n_ctx, 512).map_err(|e| anyhow!(e));
    match p {
        Ok(p) => {
            let l = Llama::load_with(path, p.n_gpu_layers)?;
            let (ps, ds, _) = l.greedy_decode(&prompt, 4, n_ctx, threads() as i32)?;
            row(
                label,
                &format!("llama.cpp -ngl {} (best under the budget)", p.n_gpu_layers),
                &format!(
                    "decode {:.3} s/token ({:.2}x jq), prefill {:.1} tok/s",
                    ds / 4.0,
                    ds / 4.0 / dec,
                    512.0 / ps
                ),
            );
        }
        Err(e) => row(
            label,
            "llama.cpp -ngl under the budget",
            &format!("not run: {e}"),
        ),
    }
    if gpu {
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(exe)
            .args(["--op-offload"])
            .arg(path)
            .env("GGML_OP_OFFLOAD_MIN_BATCH", "1")
            .output()?;
        let txt = String::from_utf8_lossy(&out.stdout);
        match txt.trim().parse::<f64>() {
            Ok(ps) => row(
                label,
                "llama.cpp op offload (weights in host memory, GGML_OP_OFFLOAD_MIN_BATCH=1) prefill",
                &format!("{:.1} tok/s ({ps:.2} s; jq is {:.2}x)", 512.0 / ps, ps / pre),
            ),
            Err(_) => row(label, "llama.cpp op offload", &format!("failed: {}", String::from_utf8_lossy(&out.stderr))),
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--op-offload") {
        // The anchor in a process of its own (the env var must not touch the other runs).
        let path = PathBuf::from(args.get(1).context("--op-offload FILE")?);
        let l = Llama::load_with(&path, 0)?;
        let (ps, _, _) = l.greedy_decode(&tokens(512), 1, 1024, threads() as i32)?;
        println!("{ps}");
        return Ok(());
    }
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = flag("--quick");
    let dir = value("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("jq-gpu-check"));
    std::fs::create_dir_all(&dir)?;
    let budget = parse_size(&value("--budget").unwrap_or("6GiB".into())).map_err(|e| anyhow!(e))?;
    jq::engine::llama::backend()?;
    println!("| step | what | result |\n|---|---|---|");
    let gpus = jq::engine::llama::gpus();
    let gpu = !gpus.is_empty();
    for d in llama_cpp_2::list_llama_ggml_backend_devices() {
        row(
            "devices",
            &format!("{} ({:?})", d.name, d.device_type),
            &format!(
                "{}: {} free of {}",
                d.description,
                fmt_size(d.memory_free as u64),
                fmt_size(d.memory_total as u64)
            ),
        );
    }
    if !gpu {
        row(
            "devices",
            "no GPU found",
            "rehearsal: the CPU backend plays the device, llama.cpp runs on the CPU",
        );
    }
    let (h2d, pinned) = h2d_bandwidth(256 << 20)?;
    row(
        "copy floor",
        if pinned {
            "pinned host -> device copy (PCIe)"
        } else {
            "host -> device copy (memcpy: no pinned memory)"
        },
        &format!("{:.2} GB/s", h2d / 1e9),
    );

    // 2. Fixtures.
    // The repository's root is the working directory on the GPU machine; the build's otherwise.
    let rel = Path::new("fixtures/gemma3/llama-cpp/tiny-causal-f32.gguf");
    let fx = if rel.exists() {
        rel.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    };
    let prompt = [2u32, 300, 301, 7, 350, 17, 302, 303, 120, 304, 33, 305];
    if fx.exists() {
        report(
            "fixture tiny-causal F32",
            parity("fixture tiny-causal F32", &fx, gpu, &prompt, 8),
        );
    }
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        let p = dir.join(format!("tiny-{}.gguf", ty.name()));
        write_gemma3(&p, Gemma3Dims::TINY, 384, ty)?;
        let label = format!("tiny synthetic {}", ty.upper_name());
        report(&label, parity(&label, &p, gpu, &prompt, 8));
    }
    let d = Gemma3Dims {
        n_embd: 320,
        n_ff: 512,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 64,
        ..Gemma3Dims::TINY
    };
    let f32p = dir.join("tiny-320-f32.gguf");
    write_gemma3(&f32p, d, 384, GgmlType::F32)?;
    let km = dir.join("tiny-320-q4_k_m.gguf");
    if jq::ggml::llama_quantize(&f32p, &km, 15, false, threads() as i32) != 0 {
        bail!("llama_model_quantize failed on {}", f32p.display());
    }
    let label = "tiny Q4_K_M (llama.cpp's mixture)";
    report(label, parity(label, &km, gpu, &prompt, 8));

    // 3. The 270M shape.
    let p270 = dir.join("gemma3-270m-shape-q4_k_m-random.gguf");
    if !p270.exists() {
        write_gemma3_random(&p270, Gemma3Dims::G270M, 262_144, Mixture::Q4KM, 270)?;
    }
    report(
        "270M-shaped Q4_K_M",
        parity("270M-shaped Q4_K_M", &p270, gpu, &tokens(30), 8),
    );

    // 4. The 27B shape.
    let mut d27 = Gemma3Dims::G27B;
    if quick {
        d27.n_layer = 6;
    }
    let mixes: &[(Mixture, &str)] = if flag("--no-q4km") {
        &[(Mixture::Q4_0, "q4_0")]
    } else {
        &[(Mixture::Q4_0, "q4_0"), (Mixture::Q4KM, "q4_k_m")]
    };
    for &(mix, name) in mixes {
        let p = dir.join(format!(
            "gemma3-27b-shape-{}-{name}-random.gguf",
            d27.n_layer
        ));
        if !p.exists() {
            let t = Instant::now();
            write_gemma3_random(&p, d27, 262_208, mix, 27)?;
            row(
                "27B shape",
                &format!("wrote {}", p.display()),
                &format!(
                    "{} in {:.1} s",
                    fmt_size(std::fs::metadata(&p)?.len()),
                    t.elapsed().as_secs_f64()
                ),
            );
        }
        let label = format!(
            "27B-shaped {} ({} layers), budget {}",
            name.to_uppercase(),
            d27.n_layer,
            fmt_size(budget)
        );
        report(&label, big(&label, &p, budget, h2d, gpu));
    }
    Ok(())
}
