//! `jq-run` on llama.cpp, end to end through the binary, on a tiny Gemma-3 GGUF written by
//! `jq::synth::write_gemma3` (random weights; real tensor names, metadata, SentencePiece-style
//! vocabulary and chat template, loaded by llama.cpp's own `gemma3` code).
//!
//! The references are llama.cpp itself, driven straight through `llama-cpp-2` in this test
//! (not through `jq::engine::llama`, which the binary uses): logits of the prompt, and the
//! greedy reply of a chat turn.

mod common;
use common::bit_differences;
use jq::engine::llama::Llama;
use jq::engine::LLAMA_ARCHS;
use jq::gguf::GgufWriter;
use jq::quant::GgmlType;
use jq::synth::{write_gemma3, Gemma3Dims};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use serde_json::Value;
use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const VOCAB: u64 = 384;

fn tiny() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = common::scratch_dir().join("gemma3-tiny-f32.gguf");
        write_gemma3(&p, Gemma3Dims::TINY, VOCAB, GgmlType::F32).unwrap();
        p
    })
}

fn tmp(name: &str) -> PathBuf {
    tiny().parent().unwrap().join(name)
}

fn jq_run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jq-run"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawning jq-run");
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// stdout of a successful run (bytes: a random model's text need not be UTF-8).
fn ok(o: &Output) -> Vec<u8> {
    assert!(
        o.status.success(),
        "jq-run failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout.clone()
}

fn json_run(args: &[&str]) -> Value {
    let mut a = vec![tiny().to_str().unwrap()];
    a.extend_from_slice(args);
    a.push("--json");
    serde_json::from_slice(&ok(&jq_run(&a, None))).unwrap()
}

fn ids(v: &Value, key: &str) -> Vec<u64> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// llama.cpp's backend, initialised once for this test process.
fn backend() -> &'static LlamaBackend {
    jq::engine::llama::backend().unwrap()
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let args = [
        "--prompt",
        "hello world",
        "-n",
        "24",
        "--temp",
        "1.0",
        "--top-k",
        "0",
    ];
    let a = json_run(&[&args[..], &["--seed", "7"]].concat());
    let b = json_run(&[&args[..], &["--seed", "7"]].concat());
    let c = json_run(&[&args[..], &["--seed", "8"]].concat());
    let (ga, gb, gc) = (
        ids(&a, "generated_ids"),
        ids(&b, "generated_ids"),
        ids(&c, "generated_ids"),
    );
    // 24 tokens unless an end-of-generation token was drawn first (which one is drawn depends
    // on the CPU's kernels: this tiny random model's logits differ in their last bits between
    // AVX-512 and AVX2 machines).
    assert!(
        ga.len() == 24 || (a["stop"] == "eos" && !ga.is_empty()),
        "{a}"
    );
    assert_eq!(ga, gb, "same seed, different tokens");
    assert_ne!(ga, gc, "seeds 7 and 8 drew the same 24 tokens");
    // The prompt went through llama.cpp's tokenizer with BOS added.
    let l = Llama::load(tiny()).unwrap();
    let mut want = vec![2u64];
    want.extend(l.tokenize("hello world").iter().map(|&t| u64::from(t)));
    assert_eq!(ids(&a, "prompt_ids"), want);
}

#[test]
fn stdout_carries_only_the_generated_text() {
    let v = json_run(&["--prompt", "the cat", "-n", "12", "--temp", "0"]);
    let l = Llama::load(tiny()).unwrap();
    let mut want: Vec<u8> = ids(&v, "generated_ids")
        .iter()
        .flat_map(|&t| l.piece(t as u32))
        .collect();
    want.push(b'\n');
    let out = ok(&jq_run(
        &[
            tiny().to_str().unwrap(),
            "--prompt",
            "the cat",
            "-n",
            "12",
            "--temp",
            "0",
        ],
        None,
    ));
    assert_eq!(out, want);
    let out = ok(&jq_run(
        &[tiny().to_str().unwrap(), "--prompt", "the cat", "-n", "0"],
        None,
    ));
    assert!(out.is_empty(), "-n 0 must print nothing");
}

/// The Gemma-3 GGUF llama.cpp's own converter wrote for the transformers fixture (real
/// SentencePiece vocabulary and chat template; see fixtures/gemma3/README.md).
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gemma3/llama-cpp/tiny-causal-f32.gguf")
}

#[test]
fn dump_logits_equal_llama_cpp_through_the_bindings() {
    let prompt: Vec<u32> = vec![
        7, 300, 301, 40, 41, 302, 10, 303, 304, 305, 306, 307, 11, 12,
    ];
    dump_logits_match(tiny(), &prompt, "dump-synth.npy");
    dump_logits_match(&fixture(), &prompt, "dump-fixture.npy");
}

fn dump_logits_match(model_path: &Path, prompt: &[u32], out: &str) {
    let list = prompt
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let npy = tmp(out);
    let o = jq_run(
        &[
            model_path.to_str().unwrap(),
            "--prompt-tokens",
            &list,
            "-n",
            "0",
            "-t",
            "2",
            "--dump-logits",
            npy.to_str().unwrap(),
        ],
        None,
    );
    ok(&o);
    // The reference: the bindings, no jq code in between.
    let model =
        LlamaModel::load_from_file(backend(), model_path, &LlamaModelParams::default()).unwrap();
    let v = model.n_vocab() as usize;
    let arr = jq::npy::parse(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(arr.shape, vec![prompt.len(), v]);
    let got = arr.data;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(256))
        .with_n_batch(256)
        .with_n_ubatch(256)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend(), params).unwrap();
    let mut batch = LlamaBatch::new(prompt.len(), 1);
    for (i, &t) in prompt.iter().enumerate() {
        batch
            .add(LlamaToken(t as i32), i as i32, &[0], true)
            .unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut max_ref = 0f32;
    let mut max_diff = 0f32;
    for i in 0..prompt.len() {
        let r = &ctx.get_logits_ith(i as i32)[..v];
        for (a, b) in r.iter().zip(&got[i * v..(i + 1) * v]) {
            max_ref = max_ref.max(a.abs());
            max_diff = max_diff.max((a - b).abs());
        }
    }
    assert!(max_ref > 0.1, "degenerate logits");
    // Same library, same graph, same threads: bit-identical.
    assert_eq!(
        max_diff, 0.0,
        "jq-run's logits differ from llama.cpp's by {max_diff}"
    );
}

#[test]
fn chat_template_output_is_stable() {
    let l = Llama::load(tiny()).unwrap();
    let turns: Vec<(String, String)> = [
        ("system", "You answer in one word."),
        ("user", "Hello there!"),
        ("assistant", "Hi."),
        ("user", "What is the cat on?"),
    ]
    .iter()
    .map(|(r, c)| (r.to_string(), c.to_string()))
    .collect();
    let text = l.format_chat(&turns, true).unwrap();
    insta::assert_snapshot!("gemma3_chat_template", text);
    // The template llama.cpp's converter copied from the checkpoint formats the same way.
    let f = Llama::load(&fixture()).unwrap();
    assert!(f.chat_template().unwrap().contains("<start_of_turn>"));
    assert_eq!(f.format_chat(&turns, true).unwrap(), text);
}

/// A greedy, penalty-free `--chat` on the tiny model, 10 tokens a reply (what
/// [`greedy_reply`] computes through the bindings).
fn greedy_chat_args() -> [&'static str; 10] {
    [
        tiny().to_str().unwrap(),
        "--chat",
        "--temp",
        "0",
        "--repeat-penalty",
        "1",
        "-n",
        "10",
        "-t",
        "2",
    ]
}

/// llama.cpp's greedy continuation of `prompt` (10 tokens), cut at the first end-of-generation
/// token.
fn greedy_reply(l: &Llama, prompt: &[u32]) -> Vec<u32> {
    let (_, _, g) = l.greedy_decode(prompt, 10, 256, 2).unwrap();
    let end = g.iter().position(|&t| l.is_eog(t)).unwrap_or(g.len());
    g[..end].to_vec()
}

#[test]
fn chat_reply_is_llama_cpps_greedy_continuation_and_input_ends_cleanly() {
    let l = Llama::load(tiny()).unwrap();
    // Reference: the formatted first turn, greedily continued through the bindings.
    let turns = vec![("user".to_string(), "hello world".to_string())];
    let prompt = l.tokenize_with(&l.format_chat(&turns, true).unwrap(), true, true);
    assert_eq!(prompt[0], 2, "BOS first");
    assert!(
        prompt.contains(&4),
        "<start_of_turn> parsed as a special token"
    );
    let want: Vec<u8> = greedy_reply(&l, &prompt)
        .iter()
        .flat_map(|&t| l.piece(t))
        .collect();

    let args = greedy_chat_args();
    // Two turns then end of input (no /exit): status 0, the first reply then a newline.
    let mut first = want.clone();
    first.push(b'\n');
    let out = ok(&jq_run(&args, Some("hello world\nwhat is your name?\n")));
    assert!(out.starts_with(&first), "{out:?} vs {first:?}");
    assert!(out.len() > first.len(), "no second reply");
    // /exit ends it too, and nothing after it is read.
    let out2 = ok(&jq_run(&args, Some("hello world\n/exit\nignored\n")));
    assert_eq!(out2, first);
}

/// The second turn continues the conversation held in the KV cache: its reply is llama.cpp's
/// greedy continuation of [turn 1 prompt, reply 1, the template's text for turn 2], evaluated
/// from scratch through the bindings.
#[test]
fn chat_second_turn_continues_the_cached_conversation() {
    let l = Llama::load(tiny()).unwrap();
    let greedy = |prompt: &[u32]| greedy_reply(&l, prompt);
    let pieces = |ids: &[u32]| -> Vec<u8> { ids.iter().flat_map(|&t| l.piece(t)).collect() };
    let (u1, u2) = ("the cat sat on the mat", "and the dog?");
    let mut turns = vec![("user".to_string(), u1.to_string())];
    let text1 = l.format_chat(&turns, true).unwrap();
    let p1 = l.tokenize_with(&text1, true, true);
    let g1 = greedy(&p1);
    let reply1 = String::from_utf8_lossy(&pieces(&g1)).into_owned();
    turns.push(("assistant".into(), reply1.clone()));
    turns.push(("user".into(), u2.to_string()));
    let text2 = l.format_chat(&turns, true).unwrap();
    let cached = format!("{text1}{reply1}");
    let p2: Vec<u32> = match text2.strip_prefix(cached.as_str()) {
        Some(rest) => [&p1[..], &g1[..], &l.tokenize_with(rest, false, true)[..]].concat(),
        None => l.tokenize_with(&text2, true, true),
    };
    let g2 = greedy(&p2);
    let mut want = pieces(&g1);
    want.push(b'\n');
    want.extend(pieces(&g2));
    want.push(b'\n');
    let args = greedy_chat_args();
    let out = ok(&jq_run(&args, Some(&format!("{u1}\n{u2}\n"))));
    assert_eq!(out, want);
}

#[test]
fn chat_history_is_used_and_kept_within_the_context() {
    // With a tiny context the conversation must drop old turns instead of failing.
    let args = [
        tiny().to_str().unwrap(),
        "--chat",
        "--temp",
        "0",
        "-n",
        "8",
        "-c",
        "48",
    ];
    let input = "the cat sat on the mat\nthe dog ran to the park\nhow are you\nwhat is your name\n";
    let o = jq_run(&args, Some(input));
    let out = ok(&o);
    assert!(out.len() >= 4, "{out:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("dropped the oldest exchange"), "{err}");
}

fn expect_error(args: &[&str], needle: &str) {
    let o = jq_run(args, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", o.stdout);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got {err:?}");
    assert!(lines[0].starts_with("jq-run: error: "), "{err}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {err:?} lacks {needle:?}"
    );
}

#[test]
fn bad_input_is_one_line_naming_the_cause() {
    let t = tiny().to_str().unwrap();
    expect_error(
        &["/nonexistent/model.gguf", "--prompt", "x"],
        "/nonexistent/model.gguf: no such file",
    );
    let junk = tmp("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all, just text").unwrap();
    expect_error(
        &[junk.to_str().unwrap(), "--prompt", "x"],
        "not a readable GGUF file",
    );
    let foo = tmp("foo.gguf");
    let mut w = GgufWriter::new();
    w.add("general.architecture", "foo-net").unwrap();
    w.write_file(&foo, |_, _, _| Ok(())).unwrap();
    expect_error(
        &[foo.to_str().unwrap(), "--prompt", "x"],
        "architecture 'foo-net' is not supported: jq-run runs jarvis natively and, through llama.cpp, llama, llama4",
    );
    expect_error(
        &[t, "--prompt", "x", "-c", "100000"],
        "-c/--ctx-size 100000 is larger than the model's trained context of 256 tokens",
    );
    expect_error(
        &[t, "--prompt", "x", "--vram-budget", "1KiB"],
        "--vram-budget 1.0 KiB is too small for even the CPU path",
    );
    expect_error(
        &[t, "--prompt-tokens", "1,99999", "-n", "0"],
        "id 99999 is outside the vocabulary",
    );
}

#[test]
fn budget_that_fits_the_cpu_path_runs_and_prints_the_plan() {
    let o = jq_run(
        &[
            tiny().to_str().unwrap(),
            "--prompt",
            "hi",
            "-n",
            "2",
            "--vram-budget",
            "64MiB",
            "--n-gpu-layers",
            "auto",
        ],
        None,
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("plan: CPU only (no GPU device), all 6 layers in host memory"),
        "{err}"
    );
    assert!(err.contains("of a 64.0 MiB budget"), "{err}");
    for k in ["load ", "prompt ", "decode ", "peak RSS "] {
        assert!(err.contains(k), "timing report lacks {k:?}: {err}");
    }
}

/// The list of architectures jq-run hands to llama.cpp is the linked llama.cpp's own list.
#[test]
fn llama_arch_list_matches_the_linked_llama_cpp() {
    let meta = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(meta.status.success());
    let v: Value = serde_json::from_slice(&meta.stdout).unwrap();
    let manifest = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "llama-cpp-sys-2")
        .unwrap()["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    let src = Path::new(&manifest)
        .parent()
        .unwrap()
        .join("llama.cpp/src/llama-arch.cpp");
    let text = std::fs::read_to_string(&src).unwrap();
    let start = text.find("LLM_ARCH_NAMES = {").unwrap();
    let end = start + text[start..].find("};").unwrap();
    let names: Vec<&str> = text[start..end]
        .lines()
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| *n != "clip" && *n != "(unknown)")
        .collect();
    assert_eq!(names, LLAMA_ARCHS, "run scripts/gen-llama-archs");
    assert!(LLAMA_ARCHS.contains(&"gemma3"));
}

fn read_logits(p: &Path) -> Vec<f32> {
    jq::npy::parse(&std::fs::read(p).unwrap()).unwrap().data
}

/// `--stream-layers` end to end through the binary, on the converter fixture: with most layers
/// streamed through 2 slots (and again with 3 of them on the host), the prompt logits equal the
/// same binary's llama.cpp path bit for bit (same ggml kernels); the plan comes out as JSON;
/// an impossible budget is one line naming what did not fit.
#[test]
fn stream_layers_through_the_binary() {
    let f = fixture();
    let f = f.to_str().unwrap();
    let list = "2,300,301,7,350,17,302,303";
    let plan: Value = serde_json::from_slice(&ok(&jq_run(
        &[
            f,
            "--stream-layers",
            "-c",
            "64",
            "--plan-only",
            "--json",
            "--vram-budget",
            "1TiB",
            // Planned for the runs below, which dump every position's logits (the output
            // buffer is sized for them).
            "--dump-logits",
            "unused.npy",
        ],
        None,
    )))
    .unwrap();
    let n_layers = plan["resident_layers"].as_array().unwrap().len() as u64;
    assert_eq!(n_layers, 8, "{plan}");
    let layer = plan["resident_bytes"].as_u64().unwrap() / n_layers;
    let budget = (plan["device_bytes"].as_u64().unwrap()
        - plan["resident_bytes"].as_u64().unwrap()
        + 3 * layer)
        .to_string();
    let reference = tmp("stream-ref.npy");
    ok(&jq_run(
        &[
            f,
            "--prompt-tokens",
            list,
            "-n",
            "0",
            "-t",
            "2",
            "-c",
            "64",
            "--dump-logits",
            reference.to_str().unwrap(),
        ],
        None,
    ));
    let want = read_logits(&reference);
    for (host, want_host) in [("0", vec![]), ("3", vec![5u64, 6, 7])] {
        let npy = tmp(&format!("stream-{host}.npy"));
        let out = ok(&jq_run(
            &[
                f,
                "--stream-layers",
                "-c",
                "64",
                "--vram-budget",
                &budget,
                "--host-layers",
                host,
                "--prompt-tokens",
                list,
                "-n",
                "0",
                "-t",
                "2",
                "--json",
                "--dump-logits",
                npy.to_str().unwrap(),
            ],
            None,
        ));
        let j: Value = serde_json::from_slice(&out).unwrap();
        let p = &j["plan"];
        assert_eq!(ids(p, "resident_layers"), vec![0], "{p}");
        assert_eq!(ids(p, "host_layers"), want_host, "{p}");
        assert_eq!(ids(p, "streamed_layers").len() + want_host.len(), 7, "{p}");
        assert!(j["device_bytes"].as_u64().unwrap() <= budget.parse::<u64>().unwrap());
        let differ = bit_differences(&read_logits(&npy), &want);
        assert_eq!(differ, 0, "--host-layers {host}: {differ} logits differ");
    }
    expect_error(
        &[
            f,
            "--stream-layers",
            "-c",
            "64",
            "--vram-budget",
            "100KiB",
            "--prompt-tokens",
            list,
            "--seed",
            "1",
        ],
        "does not fit the fixed part",
    );
}
