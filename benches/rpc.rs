//! ggml RPC on loopback: a 1B-shaped and a 4B-shaped synthetic Q4_0 llama (random blocks,
//! written at bench time, not committed) split across two `jq-run rpc-server` processes, against
//! the same model run locally in the same process and run. Prints prefill and decode tokens/s,
//! the bytes that crossed the sockets per token (TCP_INFO of the client's connections), and the
//! predicted decode rate over 1 GbE and 10 GbE links from those.
//!
//! `cargo bench --bench rpc` (JQ_BENCH_RPC=1b or 4b for one model).

use jq::engine::llama::{Llama, Placement};
use jq::engine::rpc;
use jq::sample::SamplerConfig;
use jq::synth::LlamaDims;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROMPT: usize = 64;
const DECODE: usize = 16;
const CTX: u32 = 256;

/// Bytes sent and received so far on this process's TCP sockets to `ports`.
fn socket_bytes(ports: &[u16]) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a valid out-buffer of `len` bytes; fails harmlessly on non-sockets.
        let r = unsafe {
            libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len)
        };
        if r != 0
            || addr.sin_family != libc::AF_INET as u16
            || !ports.contains(&u16::from_be(addr.sin_port))
        {
            continue;
        }
        // struct tcp_info: tcpi_bytes_acked at 120, tcpi_bytes_received at 128 (linux uapi).
        let mut info = [0u8; 256];
        let mut ilen = info.len() as libc::socklen_t;
        // SAFETY: a valid out-buffer of `ilen` bytes.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut ilen,
            )
        };
        if r == 0 && ilen >= 136 {
            let at = |o: usize| u64::from_le_bytes(info[o..o + 8].try_into().unwrap());
            total += at(120) + at(128);
        }
    }
    total
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(exe: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = Command::new(exe)
        .args(["rpc-server", "--port", &port.to_string(), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ep: rpc::Endpoint = format!("127.0.0.1:{port}").parse().unwrap();
    let t0 = Instant::now();
    while rpc::hello(&ep, Duration::from_secs(1)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(c, port)
}

struct Run {
    prefill_tps: f64,
    decode_tps: f64,
    prefill_bytes: f64,
    decode_bytes: f64,
}

fn run(l: &Llama, threads: i32, ports: &[u16]) -> Run {
    let mut s = l
        .session(CTX, PROMPT as u32, threads, &SamplerConfig::greedy())
        .unwrap();
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 1 + (i * 37) % 30000).collect();
    // warm-up: one token (graph allocation), then clear
    s.eval(&prompt[..1], false).unwrap();
    s.clear();
    let b0 = socket_bytes(ports);
    let t0 = Instant::now();
    s.eval(&prompt, false).unwrap();
    let prefill = t0.elapsed().as_secs_f64();
    let b1 = socket_bytes(ports);
    let t1 = Instant::now();
    s.generate(DECODE, |_, _| Ok(true)).unwrap();
    let decode = t1.elapsed().as_secs_f64();
    let b2 = socket_bytes(ports);
    Run {
        prefill_tps: PROMPT as f64 / prefill,
        decode_tps: DECODE as f64 / decode,
        prefill_bytes: (b1 - b0) as f64 / PROMPT as f64,
        decode_bytes: (b2 - b1) as f64 / DECODE as f64,
    }
}

fn main() {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/jq-run");
    assert!(
        exe.exists(),
        "build first: cargo build --release --workspace"
    );
    let only = std::env::var("JQ_BENCH_RPC").ok();
    let shapes = [
        (
            "1B-shaped (16 x 2048, FFN 8192, 32/8 heads of 64)",
            LlamaDims {
                n_embd: 2048,
                n_ff: 8192,
                n_layer: 16,
                n_head: 32,
                n_head_kv: 8,
                head_dim: 64,
                n_ctx: 4096,
                rope_base: 500_000.0,
            },
        ),
        (
            "4B-shaped (36 x 2560, FFN 9728, 20/4 heads of 128)",
            LlamaDims {
                n_embd: 2560,
                n_ff: 9728,
                n_layer: 36,
                n_head: 20,
                n_head_kv: 4,
                head_dim: 128,
                n_ctx: 4096,
                rope_base: 1_000_000.0,
            },
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let a = server(&exe);
    let b = server(&exe);
    rpc::AbortHook::install();
    let eps: Vec<rpc::Endpoint> = [a.1, b.1]
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let remote = rpc::connect(&eps).unwrap();
    println!("machine: AMD EPYC (AVX2), 2 cores shared with other agents' work (loaded); loopback");
    println!("local: 2 threads, repacked CPU weights; RPC: 2 servers x 1 thread, every layer on them (split 1:1)");
    println!(
        "prompt {PROMPT} tokens, decode {DECODE} tokens, vocabulary 32000, Q4_0 random blocks\n"
    );
    println!(
        "{:<52} {:>10} {:>10} {:>12} {:>12} {:>11} {:>11}",
        "model / run",
        "prefill/s",
        "decode/s",
        "B/tok pref",
        "B/tok dec",
        "1GbE dec/s",
        "10GbE dec/s"
    );
    for (i, (name, d)) in shapes.iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != ["1b", "4b"][i]) {
            continue;
        }
        let p = dir.path().join(format!("m{i}.gguf"));
        jq::synth_blocks::write_llama_random(&p, *d, 32000, jq::synth_blocks::Mixture::Q4_0, 7)
            .unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        let local = {
            let l = Llama::load(&p).unwrap();
            run(&l, 2, &[])
        };
        let n = d.n_layer as u32 + 1;
        let rpc_run = {
            let l = Llama::load_placed(
                &p,
                &Placement {
                    n_gpu_layers: n,
                    devices: remote.iter().map(|r| r.dev).collect(),
                    split: vec![1.0, 1.0],
                    extra_bufts: true,
                },
            )
            .unwrap();
            run(&l, 2, &[a.1, b.1])
        };
        println!("{name} ({:.2} GiB)", size as f64 / (1u64 << 30) as f64);
        println!(
            "{:<52} {:>10.2} {:>10.2} {:>12} {:>12} {:>11} {:>11}",
            "  local", local.prefill_tps, local.decode_tps, "-", "-", "-", "-"
        );
        // Predicted: the loopback step plus the bytes at the link rate plus 3 round trips
        // per token (one synchronising reply per server and the logits), at 0.2 ms (1 GbE)
        // and 0.05 ms (10 GbE) each.
        let step = 1.0 / rpc_run.decode_tps;
        let pred = |gbit: f64, rtt: f64| {
            1.0 / (step + rpc_run.decode_bytes * 8.0 / (gbit * 1e9) + 3.0 * rtt)
        };
        println!(
            "{:<52} {:>10.2} {:>10.2} {:>12.0} {:>12.0} {:>11.2} {:>11.2}",
            "  2 RPC servers (loopback)",
            rpc_run.prefill_tps,
            rpc_run.decode_tps,
            rpc_run.prefill_bytes,
            rpc_run.decode_bytes,
            pred(1.0, 0.2e-3),
            pred(10.0, 0.05e-3)
        );
        println!(
            "  ratio RPC/local: prefill {:.2}x, decode {:.2}x",
            rpc_run.prefill_tps / local.prefill_tps,
            rpc_run.decode_tps / local.decode_tps
        );
    }
}
