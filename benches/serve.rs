//! `jq-run serve` throughput against an anchor on the same model and flags: a batched
//! multi-sequence decode loop written straight on the bindings (what llama-server does per
//! step, without HTTP). Prints a table: requests/s, generated tokens/s and mean time to the
//! first token at 1, 4 and 16 concurrent clients (`--parallel` = clients), and CPU time per
//! generated token (the anchor's process, the server's process: with `-t 1` a figure that the
//! machine's other load changes far less than the wall clock). Each side runs
//! `JQ_BENCH_REPEAT` times, interleaved, the side that goes first alternating (anchor, server,
//! server, anchor, ...); the table gives the
//! median and the range of each figure, the ratio of the medians and the median of the
//! per-pair ratios, with the load average seen.
//!
//! cargo bench --bench serve  [JQ_BENCH_THREADS=1, JQ_BENCH_TOKENS=32, JQ_BENCH_ROUNDS=2,
//! JQ_BENCH_REPEAT=5, JQ_BENCH_CLIENTS=1,4,16, JQ_BENCH_SIDE=both|anchor|serve (one side
//! only, for profiling), JQ_BENCH_SERVER_WRAP="perf record -e cpu-clock -g -o F --" (a command
//! the server runs under)]

use jq::engine::llama::Llama;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Water boils at",
    "The largest planet in the solar system is",
    "Once upon a time",
    "The first president of the United States was",
    "To make bread you need",
    "The speed of light is",
    "In 1492, Columbus",
];
const N_CTX: u32 = 256;

fn env(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Figures {
    requests: usize,
    tokens: usize,
    wall: Duration,
    first: Duration,
    /// CPU time of the process doing the work over the run.
    cpu: Duration,
}

/// This process's CPU time.
fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Another process's CPU time (user + system, /proc clock ticks).
fn pid_cpu(pid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<u64> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(f.iter().sum::<u64>() * 1000 / hz)
}

/// `clients` sequences decoded together, `rounds` times: prompts in one batch, then one
/// batch per step with every sequence's next (greedy) token.
fn anchor(l: &Llama, clients: usize, rounds: usize, n: usize, threads: i32) -> Figures {
    let backend = jq::engine::llama::backend().unwrap();
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(N_CTX * clients as u32))
        .with_n_seq_max(clients as u32)
        .with_kv_unified(false)
        // As llama-server (and `jq-run serve` without --swa-full): window-sized sliding layers.
        .with_swa_full(false)
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = l.model.new_context(backend, params).unwrap();
    let v = l.n_vocab();
    let mut batch = LlamaBatch::new(512, 1);
    // One decode before timing, as the server's start-up does (weights' pages mapped, the
    // graph's buffers allocated).
    batch.add(l.model.vocab().bos(), 0, &[0], true).unwrap();
    ctx.decode(&mut batch).unwrap();
    let (mut tokens, mut first) = (0, Duration::ZERO);
    let c0 = process_cpu();
    let t0 = Instant::now();
    for _ in 0..rounds {
        ctx.clear_kv_cache();
        let start = Instant::now();
        batch.clear();
        let mut pos = vec![0i32; clients];
        let mut at = vec![0i32; clients];
        for (s, p) in pos.iter_mut().enumerate() {
            let ids = l.tokenize_with(PROMPTS[s % PROMPTS.len()], true, true);
            for (i, &t) in ids.iter().enumerate() {
                batch
                    .add(
                        LlamaToken(t as i32),
                        i as i32,
                        &[s as i32],
                        i + 1 == ids.len(),
                    )
                    .unwrap();
            }
            *p = ids.len() as i32;
            at[s] = batch.n_tokens() - 1;
        }
        ctx.decode(&mut batch).unwrap();
        first += start.elapsed() * clients as u32;
        for _ in 0..n {
            let next: Vec<i32> = at
                .iter()
                .map(|&i| {
                    let l = &ctx.get_logits_ith(i)[..v];
                    (0..v).fold(0, |b, j| if l[j] > l[b] { j } else { b }) as i32
                })
                .collect();
            batch.clear();
            for s in 0..clients {
                batch
                    .add(LlamaToken(next[s]), pos[s], &[s as i32], true)
                    .unwrap();
                pos[s] += 1;
                at[s] = s as i32;
            }
            ctx.decode(&mut batch).unwrap();
            tokens += clients;
        }
    }
    Figures {
        requests: clients * rounds,
        tokens,
        wall: t0.elapsed(),
        first: first / (clients * rounds) as u32,
        cpu: process_cpu() - c0,
    }
}

/// One streamed completion: (generated tokens, time to the first byte of the body).
fn request(addr: &str, prompt: &str, n: usize) -> (usize, Duration) {
    let body = serde_json::json!({"prompt": prompt, "max_tokens": n, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true}})
    .to_string();
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut first = None;
    let mut rest = String::new();
    while r.read_line(&mut line).unwrap() > 0 {
        if line.starts_with("data: ") && first.is_none() {
            first = Some(t0.elapsed());
        }
        rest.push_str(&line);
        line.clear();
    }
    r.read_to_string(&mut rest).unwrap();
    let used = rest
        .split("\"completion_tokens\":")
        .nth(1)
        .and_then(|x| x.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0);
    (used, first.unwrap_or_default())
}

fn server(model: &PathBuf, clients: usize, rounds: usize, n: usize, threads: usize) -> Figures {
    let wrap: Vec<String> = std::env::var("JQ_BENCH_SERVER_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| w.replace("{n}", &clients.to_string()))
        .collect();
    let mut cmd = match wrap.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(env!("CARGO_BIN_EXE_jq-run"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_jq-run")),
    };
    let mut child = cmd
        .arg("serve")
        .arg(model)
        .args(["--port", "0", "-c", &N_CTX.to_string()])
        .args([
            "--parallel",
            &clients.to_string(),
            "-t",
            &threads.to_string(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the server did not start"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in err.lines() {});
    let c0 = pid_cpu(child.id());
    let t0 = Instant::now();
    let per: Vec<(usize, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|c| {
                let addr = addr.clone();
                s.spawn(move || {
                    (0..rounds)
                        .map(|_| request(&addr, PROMPTS[c % PROMPTS.len()], n))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t0.elapsed();
    let cpu = pid_cpu(child.id()) - c0;
    if wrap.is_empty() {
        let _ = child.kill();
    } else {
        // SAFETY: a signal to our own child; the wrapper (perf) ends the server and writes.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let _ = child.wait();
    Figures {
        requests: per.len(),
        tokens: per.iter().map(|p| p.0).sum(),
        wall,
        first: per.iter().map(|p| p.1).sum::<Duration>() / per.len() as u32,
        cpu,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::var_os("JQ_MODELS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/jq/models"),
        PathBuf::from,
    );
    let path = dir.join("gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{}: run scripts/setup", path.display());
    let (threads, n, rounds) = (
        env("JQ_BENCH_THREADS", 1),
        env("JQ_BENCH_TOKENS", 32),
        env("JQ_BENCH_ROUNDS", 2),
    );
    let repeat = env("JQ_BENCH_REPEAT", 5).max(1);
    let side = std::env::var("JQ_BENCH_SIDE").unwrap_or_else(|_| "both".into());
    let levels: Vec<usize> = std::env::var("JQ_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,4,16".into())
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let model = Llama::load(&path).unwrap();
    println!(
        "gemma-3-270m-q4_k_m, {n} tokens per request, {rounds} requests per client, -t {threads}, -c {N_CTX} per sequence, {repeat} interleaved runs per side; median [min-max]"
    );
    let rate = |f: &Figures| f.tokens as f64 / f.wall.as_secs_f64();
    let per = |f: &Figures| f.cpu.as_secs_f64() * 1e3 / f.tokens.max(1) as f64;
    let ttft = |f: &Figures| f.first.as_secs_f64() * 1e3;
    let reqs = |f: &Figures| f.requests as f64 / f.wall.as_secs_f64();
    let mut table = Vec::new();
    for clients in levels {
        let (mut av, mut sv, mut load) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..repeat {
            load.push(loadavg());
            // Alternate which side goes first (ABBA): a machine whose speed drifts between
            // the two runs of a pair favours neither side.
            let server_first = r % 2 == 1;
            if server_first && side != "anchor" {
                sv.push(server(&path, clients, rounds, n, threads));
            }
            if side != "serve" {
                av.push(anchor(&model, clients, rounds, n, threads as i32));
            }
            if !server_first && side != "anchor" {
                sv.push(server(&path, clients, rounds, n, threads));
            }
        }
        load.push(loadavg());
        let stat = |v: &[Figures], f: &dyn Fn(&Figures) -> f64| -> (f64, f64, f64) {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            if x.is_empty() {
                return (f64::NAN, f64::NAN, f64::NAN);
            }
            (x[x.len() / 2], x[0], x[x.len() - 1])
        };
        let show = |(m, lo, hi): (f64, f64, f64), d: usize| format!("{m:.d$} [{lo:.d$}-{hi:.d$}]");
        let (at, st) = (stat(&av, &rate), stat(&sv, &rate));
        let mut pair: Vec<f64> = av.iter().zip(&sv).map(|(a, s)| rate(s) / rate(a)).collect();
        pair.sort_by(f64::total_cmp);
        let pm = pair.get(pair.len() / 2).copied().unwrap_or(f64::NAN);
        let (afirst, sfirst) = (stat(&av, &ttft), stat(&sv, &ttft));
        load.sort_by(f64::total_cmp);
        let row = format!(
            "| {clients} | {:.2} / {:.2} | {} | {} | {:.2} | {pm:.2} [{:.2}-{:.2}] | {} | {} | {:.2} | {} | {} | {:.1}-{:.1} |",
            stat(&av, &reqs).0,
            stat(&sv, &reqs).0,
            show(at, 1),
            show(st, 1),
            st.0 / at.0,
            pair.first().copied().unwrap_or(f64::NAN),
            pair.last().copied().unwrap_or(f64::NAN),
            show(afirst, 0),
            show(sfirst, 0),
            sfirst.0 / afirst.0,
            show(stat(&av, &per), 2),
            show(stat(&sv, &per), 2),
            load[0],
            load[load.len() - 1],
        );
        println!("{row}");
        table.push(row);
    }
    println!("\n| clients | req/s anchor / serve | anchor tok/s | serve tok/s | ratio of medians | per-pair ratio | anchor TTFT ms | serve TTFT ms | TTFT ratio | anchor CPU ms/token | serve CPU ms/token | load average |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in table {
        println!("{r}");
    }
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
