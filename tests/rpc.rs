//! ggml RPC on loopback: `jq-run rpc-server` processes started and stopped here, `jq-run
//! MODEL --rpc` against them.
//!
//! References are independent of our code: the pinned `ggml-rpc.h` / `ggml-rpc.cpp` for the
//! declarations and the protocol, llama.cpp itself (a local run through the bindings with the
//! same plain CPU buffer types) for logits and tokens, and llama.cpp's own log lines for which
//! device holds each layer and how large each device's buffers are.

use jq::engine::llama::{Llama, Placement};
use jq::engine::rpc;
use jq::sample::SamplerConfig;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const N_GEN: usize = 20;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn jq_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jq-run"))
}

fn gemma3() -> PathBuf {
    root().join("fixtures/gemma3/llama-cpp/tiny-causal-q8_0.gguf")
}

fn llama3() -> PathBuf {
    root().join("fixtures/families/llama3/llama3-q8_0.gguf")
}

/// The pinned llama.cpp source (vendored in llama-cpp-sys-2).
fn llama_cpp_src() -> PathBuf {
    let meta = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(meta.status.success());
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let manifest = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "llama-cpp-sys-2")
        .unwrap()["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    Path::new(&manifest).parent().unwrap().join("llama.cpp")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `jq-run rpc-server` on a free loopback port; its stderr lines are collected.
struct Server {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let port = free_port();
        let mut child = jq_run()
            .args(["rpc-server", "--port", &port.to_string(), "--threads", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (l, err) = (lines.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let s = Server { child, port, lines };
        s.wait_for("rpc-server: serving", 1);
        s
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (at most 60 s) until `n` stderr lines contain `needle`.
    fn wait_for(&self, needle: &str, n: usize) {
        let t0 = Instant::now();
        while self.count(needle) < n {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "rpc-server never printed {needle:?} {n} times: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the serving process (the supervisor's child) from its last "pid N" line.
    fn serving_pid(&self) -> i32 {
        let l = self.lines.lock().unwrap();
        let line = l.iter().rev().find(|l| l.contains("pid ")).unwrap();
        let tail = &line[line.rfind("pid ").unwrap() + 4..];
        tail.trim_end_matches(')').parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The serving process dies with its supervisor (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn argmax(l: &[f32]) -> u32 {
    jq::sample::argmax(l) as u32
}

/// llama.cpp on the local CPU without extra buffer types (the buffers RPC servers use):
/// every prompt position's logits, then N_GEN greedy tokens and the logits after each.
fn reference(model: &Path, prompt: &[u32]) -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let l = Llama::load_placed(
        model,
        &Placement {
            n_gpu_layers: 0,
            ..Placement::default()
        },
    )
    .unwrap();
    let v = l.n_vocab();
    let mut s = l.session(128, 64, 2, &SamplerConfig::greedy()).unwrap();
    let prompt_logits = s.eval(prompt, true).unwrap();
    let mut last = prompt_logits[prompt_logits.len() - v..].to_vec();
    let (mut ids, mut gen_logits) = (Vec::new(), Vec::new());
    for _ in 0..N_GEN {
        let t = argmax(&last);
        ids.push(t);
        last = s.eval(&[t], true).unwrap();
        gen_logits.extend_from_slice(&last);
    }
    (prompt_logits, ids, gen_logits)
}

fn run(args: &[&str]) -> Output {
    jq_run().args(args).stdin(Stdio::null()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_npy(p: &Path) -> Vec<f32> {
    jq::npy::parse(&std::fs::read(p).unwrap()).unwrap().data
}

/// llama.cpp's "layer N assigned to device X" lines: the device of layers 0..=n_layer.
fn llama_cpp_assignment(err: &str) -> Vec<String> {
    err.lines()
        .filter_map(|l| l.split_once("assigned to device "))
        .map(|(_, r)| r.split(',').next().unwrap().to_string())
        .collect()
}

/// Bytes llama.cpp allocated on the server at `endpoint` (model, KV cache, compute buffers),
/// from its own log lines.
fn llama_cpp_bytes_on(err: &str, endpoint: &str) -> f64 {
    err.lines()
        .filter(|l| l.contains(&format!("[{endpoint}]")) && l.contains("buffer size ="))
        .filter(|l| !l.starts_with('~'))
        .map(|l| {
            let mib: f64 = l
                .rsplit('=')
                .next()
                .unwrap()
                .trim()
                .trim_end_matches("MiB")
                .trim()
                .parse()
                .unwrap();
            mib * 1048576.0
        })
        .sum()
}

fn ids_csv(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The plan's line for `who` ("local CPU" or an endpoint): the layer range it prints.
fn plan_layers(err: &str, who: &str) -> Vec<u32> {
    let line = err
        .lines()
        .find(|l| l.trim_start().starts_with(who) || l.contains(&format!("RPC server {who} ")))
        .unwrap_or_else(|| panic!("no plan line for {who}: {err}"));
    let r = line.split(": ").nth(1).unwrap();
    let r = r.split(" + ").next().unwrap();
    if let Some(x) = r.strip_prefix("layers ") {
        let (a, b) = x.split_once('-').unwrap();
        (a.parse().unwrap()..=b.parse().unwrap()).collect()
    } else if let Some(x) = r.strip_prefix("layer ") {
        vec![x.parse().unwrap()]
    } else {
        Vec::new()
    }
}

/// A model split over the local CPU and two servers equals the local run: every prompt
/// position's logits and 20 greedy tokens (and the logits after each); the plan says which
/// layers each server holds, as llama.cpp's own log does; each server's buffers stay within
/// its budget.
fn split_three_ways(model: &Path, prompt: &[u32], placement: &[&str], a: &Server, b: &Server) {
    let dir = tempfile::tempdir().unwrap();
    let (ref_prompt, ref_ids, ref_gen) = reference(model, prompt);
    let servers = format!("{},{}", a.endpoint(), b.endpoint());
    let dump = dir.path().join("prompt.npy");
    let m = model.to_str().unwrap();
    let pt = ids_csv(prompt);
    let mut args = vec![
        m,
        "--prompt-tokens",
        &pt,
        "-n",
        "20",
        "--temp",
        "0",
        "-c",
        "128",
    ];
    args.extend_from_slice(&["--rpc", &servers, "--no-repack", "--json", "-v"]);
    let d = dump.to_str().unwrap();
    args.extend_from_slice(&["--dump-logits", d]);
    args.extend_from_slice(placement);
    let o = run(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value =
        serde_json::from_slice(o.stdout.split(|&c| c == b'\n').next().unwrap()).unwrap();
    let got: Vec<u32> = v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        got, ref_ids,
        "greedy tokens over RPC differ from the local run"
    );
    assert_eq!(read_npy(&dump), ref_prompt, "prompt logits over RPC differ");
    // The logits after each generated token: the prompt and the tokens evaluated again.
    let mut all = prompt.to_vec();
    all.extend_from_slice(&ref_ids);
    let all_csv = ids_csv(&all);
    let mut args2 = vec![m, "--prompt-tokens", &all_csv, "-n", "0", "-c", "128"];
    args2.extend_from_slice(&["--rpc", &servers, "--no-repack", "--dump-logits", d]);
    args2.extend_from_slice(placement);
    let o2 = run(&args2);
    assert!(o2.status.success(), "{}", stderr(&o2));
    let logits = read_npy(&dump);
    let vocab = ref_prompt.len() / prompt.len();
    // position p+k's logits follow generated token k: the reference's logits after token k
    assert_eq!(
        &logits[prompt.len() * vocab..],
        &ref_gen[..N_GEN * vocab],
        "logits of the generated positions over RPC differ"
    );

    // Which layers live where: our plan against llama.cpp's own assignment.
    let dev = llama_cpp_assignment(&err);
    assert!(!dev.is_empty(), "no assignment lines: {err}");
    let n_layer = dev.len() - 1;
    for (who, name) in [
        ("local CPU", "CPU"),
        (&a.endpoint()[..], "RPC0"),
        (&b.endpoint()[..], "RPC1"),
    ] {
        let ours = plan_layers(&err, who);
        let theirs: Vec<u32> = (0..n_layer as u32)
            .filter(|&il| dev[il as usize] == name)
            .collect();
        assert_eq!(ours, theirs, "layers of {who}");
        assert!(
            !theirs.is_empty(),
            "{who} holds no layer: three ways means each holds some"
        );
    }
    // Budgets given as HOST:PORT=SIZE bound what llama.cpp allocated there.
    if let Some(i) = placement.iter().position(|x| *x == "--vram-budget") {
        for kv in placement[i + 1].split(',') {
            let (k, size) = kv.split_once('=').unwrap();
            if k == "local" {
                continue;
            }
            let budget = jq::engine::plan::parse_size(size).unwrap() as f64;
            let used = llama_cpp_bytes_on(&err, k);
            assert!(used > 0.0, "nothing allocated on {k}: {err}");
            assert!(
                used <= budget,
                "{k}: {used} bytes allocated, budget {budget}"
            );
        }
    }
}

#[test]
fn declarations_and_protocol_match_the_pinned_ggml_rpc() {
    let src = llama_cpp_src();
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let header = std::fs::read_to_string(src.join("ggml/include/ggml-rpc.h")).unwrap();
    let h = norm(&header).replace(" (", "(");
    for decl in rpc::DECLARED {
        let want = format!("GGML_BACKEND_API {}", norm(decl).replace(" (", "("));
        assert!(h.contains(&want), "ggml-rpc.h no longer declares: {decl}");
    }
    let macro_value = |name: &str| -> u8 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name}")))
            .unwrap_or_else(|| panic!("{name} missing"))
            .trim()
            .parse()
            .unwrap()
    };
    let v = (
        macro_value("RPC_PROTO_MAJOR_VERSION"),
        macro_value("RPC_PROTO_MINOR_VERSION"),
        macro_value("RPC_PROTO_PATCH_VERSION"),
    );
    assert_eq!(v, rpc::PROTO_VERSION);
    assert_eq!(
        macro_value("GGML_RPC_MAX_SERVERS") as usize,
        rpc::MAX_SERVERS
    );
    // RPC_CMD_HELLO's place in the command enum, and the HELLO messages' layout.
    let cpp = std::fs::read_to_string(src.join("ggml/src/ggml-rpc/ggml-rpc.cpp")).unwrap();
    let e = &cpp[cpp.find("enum rpc_cmd {").unwrap()..];
    let e = &e[..e.find("};").unwrap()];
    let pos = e
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with("RPC_CMD_"))
        .position(|l| l.starts_with("RPC_CMD_HELLO"))
        .unwrap();
    assert_eq!(pos, rpc::CMD_HELLO as usize);
    let rsp = &cpp[cpp.find("struct rpc_msg_hello_rsp {").unwrap()..];
    let rsp = norm(&rsp[..rsp.find("};").unwrap()]);
    assert!(
        rsp.contains("uint8_t major; uint8_t minor; uint8_t patch; uint8_t padding; uint8_t conn_caps[RPC_CONN_CAPS_SIZE];"),
        "{rsp}"
    );
    let transport = std::fs::read_to_string(src.join("ggml/src/ggml-rpc/transport.h")).unwrap();
    assert!(transport.contains(&format!("RPC_CONN_CAPS_SIZE = {};", rpc::CONN_CAPS_SIZE)));
}

#[test]
fn rpc_end_to_end() {
    let a = Server::start();
    let b = Server::start();
    // Interoperability: the version our server announces is the pinned header's.
    let header = std::fs::read_to_string(llama_cpp_src().join("ggml/include/ggml-rpc.h")).unwrap();
    let announced = rpc::hello(&a.endpoint().parse().unwrap(), Duration::from_secs(10)).unwrap();
    assert!(header.contains(&format!("RPC_PROTO_MAJOR_VERSION    {}", announced.0)));
    assert!(header.contains(&format!("RPC_PROTO_MINOR_VERSION    {}", announced.1)));
    assert!(header.contains(&format!("RPC_PROTO_PATCH_VERSION    {}", announced.2)));

    // Gemma-3 (8 layers): 2 on the CPU, the other 6 + output 1:2 over the servers.
    split_three_ways(
        &gemma3(),
        &[2, 10, 20, 30, 40, 50, 60],
        &["-ngl", "7", "--tensor-split", "1,2"],
        &a,
        &b,
    );
    // Llama (6 layers): placed by per-server budgets (shares follow them), as many layers as
    // fit.
    let budgets = format!("{}=7MiB,{}=7MiB,local=64MiB", a.endpoint(), b.endpoint());
    split_three_ways(
        &llama3(),
        &[1, 5, 9, 13, 17, 21],
        &["-ngl", "5", "--vram-budget", &budgets],
        &a,
        &b,
    );

    failures(&a, &b);
    garbage(&a);
}

/// Kill, stall, silence, budget: each a one-line error naming the server, exit status 1.
fn failures(a: &Server, b: &Server) {
    let m = llama3();
    let m = m.to_str().unwrap();
    let servers = format!("{},{}", a.endpoint(), b.endpoint());
    let one_line = |o: &Output| -> String {
        let err = stderr(o);
        let last = err.lines().last().unwrap_or_default().to_string();
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(last.starts_with("jq-run: error: "), "{err}");
        last
    };

    // A budget too small for the layers given to a server: refused before loading.
    let tight = format!("{}=1MiB", b.endpoint());
    let o = run(&[
        m,
        "--prompt-tokens",
        "1,2",
        "-n",
        "1",
        "-v",
        "--rpc",
        &servers,
        "-ngl",
        "7",
        "--tensor-split",
        "1,1",
        "--vram-budget",
        &tight,
    ]);
    let last = one_line(&o);
    assert!(
        last.contains(&b.endpoint()) && last.contains("budget"),
        "{last}"
    );
    assert!(
        !stderr(&o).contains("load_tensors"),
        "llama.cpp loaded: {}",
        stderr(&o)
    );

    // --stream-layers with --rpc is refused by name.
    let o = run(&[
        m,
        "--prompt-tokens",
        "1",
        "--stream-layers",
        "--rpc",
        &servers,
    ]);
    assert!(one_line(&o).contains("--rpc is not implemented with --stream-layers"));
    // The server's help says what ggml RPC lacks.
    let h = run(&["rpc-server", "--help"]);
    let h = String::from_utf8_lossy(&h.stdout);
    assert!(h.contains("no authentication and no encryption"), "{h}");

    // A closed port, and a port that accepts but never answers HELLO.
    let closed = format!("127.0.0.1:{}", free_port());
    let o = run(&[m, "--prompt-tokens", "1", "--rpc", &closed]);
    assert!(one_line(&o).contains(&format!("RPC server {closed}: cannot connect")));
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let s_ep = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
    let t0 = Instant::now();
    let o = run(&[
        m,
        "--prompt-tokens",
        "1",
        "--rpc",
        &s_ep,
        "--rpc-timeout",
        "1",
    ]);
    assert!(one_line(&o).contains(&format!("RPC server {s_ep}: no HELLO reply within 1.0 s")));
    assert!(t0.elapsed() < Duration::from_secs(30));
    drop(silent);

    // A server stopped mid-generation (SIGSTOP: it keeps the connection and never answers).
    let mid_run = |act: &dyn Fn(), timeout: &str| -> (Output, Duration) {
        let mut c = jq_run()
            .args([
                m,
                "--prompt-tokens",
                "1,2",
                "-n",
                "-1",
                "-c",
                "512",
                "--temp",
                "0",
            ])
            .args(["--rpc", &servers, "-ngl", "5", "--tensor-split", "1,1"])
            .args(["--rpc-timeout", timeout])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = c.stdout.take().unwrap();
        let mut buf = [0u8; 1];
        // The first generated byte: generation is under way.
        out.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        act();
        let t0 = Instant::now();
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        let o = c.wait_with_output().unwrap();
        (o, t0.elapsed())
    };
    let pid = b.serving_pid();
    // SAFETY: signals to a process this test started (the server's serving process).
    let (o, took) = mid_run(
        &|| unsafe { assert_eq!(libc::kill(pid, libc::SIGSTOP), 0) },
        "2",
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let last = one_line(&o);
    assert!(
        last.contains(&format!("RPC server {}: no reply within 2 s", b.endpoint())),
        "{last}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // A server killed mid-generation: the error names it, well within the time-out.
    let (o, took) = mid_run(
        &|| {
            // SAFETY: as above.
            unsafe { assert_eq!(libc::kill(a.serving_pid(), libc::SIGKILL), 0) }
        },
        "30",
    );
    let last = one_line(&o);
    // The killed server is named (the other may be named with it when both of the client's
    // connections look closed by the time the abort is handled).
    assert!(
        last.starts_with("jq-run: error: RPC server ") && last.contains(&a.endpoint()),
        "{last}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // ... and its supervisor starts a new serving process.
    a.wait_for("serving again", 1);
}

/// Random bytes (a bounded, seeded loop) and a request ggml asserts on: the server keeps
/// serving the next client, correctly.
fn garbage(s: &Server) {
    let ep: rpc::Endpoint = s.endpoint().parse().unwrap();
    let hello = {
        let mut h = vec![rpc::CMD_HELLO];
        h.extend_from_slice(&(rpc::CONN_CAPS_SIZE as u64).to_le_bytes());
        h.extend_from_slice(&[0u8; rpc::CONN_CAPS_SIZE]);
        h
    };
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..40 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut bytes = if i % 2 == 0 {
            hello.clone()
        } else {
            Vec::new()
        };
        let n = (next() % 600) as usize;
        bytes.extend((0..n).map(|_| next() as u8));
        let _ = c.write_all(&bytes);
        let mut sink = [0u8; 64];
        let _ = c.read(&mut sink);
    }
    // A buffer, then a tensor write far outside it: ggml's server asserts and its process
    // dies; the supervisor starts another.
    let restarts = s.count("serving again");
    {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut call = |cmd: u8, payload: &[u8], reply: usize| -> Vec<u8> {
            let mut m = vec![cmd];
            m.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            m.extend_from_slice(payload);
            c.write_all(&m).unwrap();
            let mut r = vec![0u8; if reply > 0 { 8 + reply } else { 0 }];
            c.read_exact(&mut r).unwrap();
            r.split_off(r.len().min(8))
        };
        call(
            rpc::CMD_HELLO,
            &[0u8; rpc::CONN_CAPS_SIZE],
            4 + rpc::CONN_CAPS_SIZE,
        );
        // RPC_CMD_ALLOC_BUFFER (0): device 0, 1024 bytes -> remote_ptr, remote_size
        let mut req = 0u32.to_le_bytes().to_vec();
        req.extend_from_slice(&1024u64.to_le_bytes());
        let r = call(0, &req, 16);
        let remote = u64::from_le_bytes(r[..8].try_into().unwrap());
        assert_ne!(remote, 0, "the server allocated no buffer");
        // RPC_CMD_BUFFER_GET_BASE (3) -> base
        let base = u64::from_le_bytes(call(3, &remote.to_le_bytes(), 8)[..8].try_into().unwrap());
        // RPC_CMD_SET_TENSOR (6): an rpc_tensor (296 bytes) in that buffer, data 1 MiB past it.
        let mut t = vec![0u8; 296];
        t[12..20].copy_from_slice(&remote.to_le_bytes());
        for k in 0..4 {
            t[20 + 4 * k..24 + 4 * k].copy_from_slice(&1u32.to_le_bytes());
            t[36 + 4 * k..40 + 4 * k].copy_from_slice(&4u32.to_le_bytes());
        }
        t[220..228].copy_from_slice(&(base + (1 << 20)).to_le_bytes());
        t.push(0);
        t.extend_from_slice(&0u64.to_le_bytes());
        t.extend_from_slice(&[0u8; 4]);
        call(6, &t, 0);
    }
    s.wait_for("serving again", restarts + 1);
    assert_eq!(
        rpc::hello(&ep, Duration::from_secs(10)).unwrap(),
        rpc::PROTO_VERSION
    );
    // The next client is served correctly: a whole model on that server, against the local run.
    let m = llama3();
    let prompt = [1u32, 5, 9];
    let (_, ref_ids, _) = reference(&m, &prompt);
    let o = run(&[
        m.to_str().unwrap(),
        "--prompt-tokens",
        &ids_csv(&prompt),
        "-n",
        "20",
        "--temp",
        "0",
        "--json",
        "--rpc",
        &s.endpoint(),
        "-ngl",
        "7",
        "--no-repack",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_slice(o.stdout.split(|&c| c == b'\n').next().unwrap()).unwrap();
    let got: Vec<u32> = v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, ref_ids);
}
