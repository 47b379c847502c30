//! `jq-run`'s llama.cpp habits: `-m`, `-f`, `-s`, `-ngl` (rewritten before parsing), `-n -1`,
//! `-c 0`, `--chat-template NAME|FILE`, no seed line under greedy decoding, and one `--json`
//! report on every engine. References: llama.cpp through the bindings (tokenizer, greedy
//! decoding) and Python's jinja2 for a Jinja template file.

mod common;
use common::{stdout_ok, stdout_ok_as};
use jq::engine::llama::Llama;
use jq::quant::GgmlType;
use jq::synth::{write_gemma3, Gemma3Dims};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn dir() -> &'static Path {
    common::scratch_dir()
}

fn tiny() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = dir().join("tiny-gemma3.gguf");
        write_gemma3(&p, Gemma3Dims::TINY, 384, GgmlType::F32).unwrap();
        p
    })
}

/// A llama-architecture fixture with no chat template.
fn untemplated() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/families/llama3/llama3-f32.gguf")
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jq-run"));
    c.args(args)
        .args(["-t", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            // A child that is done before reading all of its input (an error, a refused
            // flag) closes the pipe: its status and output are what the test checks.
            match si.write_all(s.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => r.unwrap(),
            }
        }
    }
    child.wait_with_output().unwrap()
}

fn fails(o: &Output, says: &str) {
    assert!(!o.status.success(), "jq-run succeeded");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains(says), "{e:?} does not say {says:?}");
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_slice(&stdout_ok(&run(&a, None))).unwrap()
}

fn ids(v: &Value, k: &str) -> Vec<u64> {
    v[k].as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn model_flag_seed_flag_and_ngl_are_the_long_names() {
    let t = tiny().to_str().unwrap();
    let base = ["-p", "the cat", "-n", "8", "--temp", "1", "--seed", "3"];
    let positional = json(&[&[t][..], &base].concat());
    let flag = json(&[&["-m", t][..], &base].concat());
    assert_eq!(
        ids(&positional, "generated_ids"),
        ids(&flag, "generated_ids")
    );
    let short_seed = json(&[t, "-p", "the cat", "-n", "8", "--temp", "1", "-s", "3"]);
    assert_eq!(
        ids(&positional, "generated_ids"),
        ids(&short_seed, "generated_ids")
    );
    // -ngl (and -ngl=N) is --n-gpu-layers: with a number of layers the plan says so.
    for ngl in [&["-ngl", "0"][..], &["-ngl=0"][..]] {
        let o = run(&[&[t, "-p", "hi", "-n", "1"][..], ngl].concat(), None);
        stdout_ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("CPU"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // A prompt that reads like the flag stays the prompt.
    let v = json(&[t, "-p", "-ngl", "-n", "0"]);
    let l = Llama::load(tiny()).unwrap();
    let mut want = vec![2u64];
    want.extend(l.tokenize("-ngl").iter().map(|&x| u64::from(x)));
    assert_eq!(ids(&v, "prompt_ids"), want);
    // Without any model: an error that names both ways of giving one.
    fails(&run(&["-p", "hi"], None), "MODEL");
}

#[test]
fn n_minus_one_fills_the_context_and_c_zero_is_the_trained_context() {
    let t = tiny().to_str().unwrap();
    // The tiny model's trained context is 256: -c 0 -n -1 runs until it is full (or EOS);
    // the last token is sampled from the last position's logits, so one more than the
    // context is produced.
    let v = json(&[t, "-p", "the cat", "-c", "0", "-n", "-1", "--temp", "0"]);
    let (p, g) = (ids(&v, "prompt_ids").len(), ids(&v, "generated_ids").len());
    assert_eq!(v["prompt_tokens"], p);
    assert_eq!(v["generated_tokens"], g);
    if v["stop"] == "length" {
        assert_eq!(p + g, 257, "{v}");
    } else {
        assert_eq!(v["stop"], "eos", "{v}");
    }
    let v = json(&[t, "-p", "the cat", "-c", "32", "-n", "-1", "--temp", "0"]);
    if v["stop"] == "length" {
        assert_eq!(
            ids(&v, "prompt_ids").len() + ids(&v, "generated_ids").len(),
            33,
            "{v}"
        );
    }
    fails(&run(&[t, "-p", "x", "-n", "-2"], None), "-n/--n-predict -2");
}

#[test]
fn prompt_file_is_the_prompt() {
    let t = tiny().to_str().unwrap();
    let f = dir().join("prompt.txt");
    std::fs::write(&f, "the cat sat on the mat").unwrap();
    let a = json(&[t, "-f", f.to_str().unwrap(), "-n", "4", "--temp", "0"]);
    let b = json(&[t, "-p", "the cat sat on the mat", "-n", "4", "--temp", "0"]);
    assert_eq!(ids(&a, "prompt_ids"), ids(&b, "prompt_ids"));
    assert_eq!(ids(&a, "generated_ids"), ids(&b, "generated_ids"));
    fails(
        &run(&[t, "-f", "/no/such/prompt.txt"], None),
        "-f/--file /no/such/prompt.txt",
    );
    fails(
        &run(&[t, "-f", dir().to_str().unwrap()], None),
        "is a directory",
    );
}

#[test]
fn no_seed_line_under_greedy_decoding() {
    let t = tiny().to_str().unwrap();
    let o = run(&[t, "-p", "hi", "-n", "2", "--temp", "0"], None);
    stdout_ok(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!e.lines().any(|l| l.starts_with("seed ")), "{e}");
    let o = run(&[t, "-p", "hi", "-n", "2", "--temp", "1"], None);
    stdout_ok(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.lines().any(|l| l.starts_with("seed ")), "{e}");
}

#[test]
fn one_json_report_on_llama_cpp_and_stream_layers() {
    let t = tiny().to_str().unwrap();
    let mut seen = Vec::new();
    for extra in [&[][..], &["--stream-layers"][..]] {
        let v = json(&[&[t, "-p", "the cat", "-n", "5", "--temp", "0"][..], extra].concat());
        for k in ["prompt_ms", "decode_ms"] {
            assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {v}");
        }
        assert_eq!(v["prompt_tokens"], ids(&v, "prompt_ids").len());
        assert_eq!(v["generated_tokens"], ids(&v, "generated_ids").len());
        let stop = v["stop"].as_str().unwrap();
        assert!(
            stop == "length" && ids(&v, "generated_ids").len() == 5 || stop == "eos",
            "{v}"
        );
        seen.push(ids(&v, "generated_ids"));
    }
    // The same greedy tokens on both engines.
    assert_eq!(seen[0], seen[1]);
}

/// llama.cpp's greedy reply (10 tokens, cut at end of generation) to `text`.
fn greedy_reply(model: &Path, text: &str) -> Vec<u8> {
    let l = Llama::load(model).unwrap();
    let prompt = l.tokenize_with(text, l.model.vocab().should_add_bos(), true);
    let (_, _, g) = l.greedy_decode(&prompt, 10, 256, 1).unwrap();
    let end = g.iter().position(|&t| l.is_eog(t)).unwrap_or(g.len());
    g[..end].iter().flat_map(|&t| l.piece(t)).collect()
}

fn chat_reply(model: &Path, template: &str) -> Vec<u8> {
    let m = model.to_str().unwrap();
    let mut out = stdout_ok(&run(
        &[
            m,
            "--chat",
            "--chat-template",
            template,
            "--temp",
            "0",
            "-n",
            "10",
            "-c",
            "256",
        ],
        Some("hello there\n"),
    ));
    assert_eq!(out.pop(), Some(b'\n'));
    out
}

#[test]
fn chat_template_by_name_and_by_jinja_file_on_a_model_without_one() {
    let m = untemplated();
    fails(
        &run(&[m.to_str().unwrap(), "--chat"], Some("hi\n")),
        "--chat-template NAME|FILE",
    );
    // chatml as its authors define it (written out here, not produced by llama.cpp).
    let chatml = "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(chat_reply(&m, "chatml"), greedy_reply(&m, chatml));
    // A Jinja file, rendered for the reference by Python's jinja2.
    let tf = dir().join("turns.jinja");
    std::fs::write(
        &tf,
        "{% for m in messages %}### {{ m['role'] | upper }}: {{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}### ASSISTANT:{% endif %}",
    )
    .unwrap();
    let py = Command::new("python3")
        .args([
            "-c",
            "import jinja2,sys; t=jinja2.Template(open(sys.argv[1]).read()); sys.stdout.write(t.render(messages=[{'role':'user','content':'hello there'}], add_generation_prompt=True, bos_token='<s>', eos_token='</s>'))",
            tf.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let rendered = String::from_utf8(stdout_ok_as(&py, "python3")).unwrap();
    assert_eq!(rendered, "### USER: hello there\n### ASSISTANT:");
    assert_eq!(
        chat_reply(&m, tf.to_str().unwrap()),
        greedy_reply(&m, &rendered)
    );
    fails(
        &run(
            &[m.to_str().unwrap(), "--chat", "--chat-template", "nonesuch"],
            Some("hi\n"),
        ),
        "chatml",
    );
    fails(
        &run(
            &[
                tiny().to_str().unwrap(),
                "-p",
                "x",
                "--chat-template",
                "chatml",
            ],
            None,
        ),
        "--chat-template formats --chat turns",
    );
}

#[test]
fn serve_is_a_subcommand_with_its_own_help() {
    let o = Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for f in [
        "--parallel",
        "--api-key",
        "--alias",
        "--host",
        "--port",
        "/v1/chat/completions",
        "/api/chat",
    ] {
        assert!(h.contains(f), "serve --help lacks {f}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("serve"));
    // -np is --parallel for serve, and no flag of the one-shot run.
    let o = Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .args([tiny().to_str().unwrap(), "-np", "2", "-p", "x"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--parallel"));
}

/// The real Gemma 3 270M (no chat template in the file: `--chat-template gemma`).
fn real() -> PathBuf {
    let dir = std::env::var_os("JQ_MODELS").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/jq/models"),
        PathBuf::from,
    );
    let p = dir.join("gemma-3-270m-q4_k_m.gguf");
    assert!(p.exists(), "{} is missing: run scripts/setup", p.display());
    p
}

/// Under a pseudo-terminal (Python's `pty`): Ctrl-C during a reply stops it and the prompt
/// comes back; Ctrl-C at the prompt ends the chat with status 0 on a fresh line.
#[test]
fn ctrl_c_stops_the_reply_then_ends_the_chat() {
    let script = r#"
import json, os, pty, select, sys, time
exe, model = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.execv(exe, [exe, model, "--chat", "--chat-template", "gemma", "-n", "4000", "-c", "4096",
                   "-t", "1", "--temp", "0"])
buf = b""
def until(pred, timeout):
    global buf
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            buf += chunk
            if pred(buf):
                return True
    return False
ok = {}
ok["prompt"] = until(lambda b: b"> " in b, 120)
mark = len(buf)
os.write(fd, b"Write a very long story about a cat and a dog.\r")
ok["reply"] = until(lambda b: len(b) > mark + 300, 120)
os.write(fd, b"\x03")
mark = len(buf)
ok["back"] = until(lambda b: b"> " in b[mark:], 60)
ok["stopped"] = b"(stopped)" in buf[mark:]
ok["alive"] = os.waitpid(pid, os.WNOHANG) == (0, 0)
os.write(fd, b"\x03")
until(lambda b: False, 10)
_, status = os.waitpid(pid, 0)
ok["status"] = os.waitstatus_to_exitcode(status)
ok["fresh_line"] = buf.endswith(b"\n")
ok["tail"] = buf[-300:].decode(errors="replace")
print(json.dumps(ok))
"#;
    let o = Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_jq-run")])
        .arg(real())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&stdout_ok_as(&o, "python3")).unwrap();
    for k in ["prompt", "reply", "back", "stopped", "alive", "fresh_line"] {
        assert_eq!(v[k], true, "{k}: {v}");
    }
    assert_eq!(v["status"], 0, "{v}");
}

/// `jq-run ARGS` under a pseudo-terminal (Python's `pty`, stdout and stderr both on it) with
/// `env` added: everything it wrote.
fn on_a_tty(args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
"#;
    let mut c = Command::new("python3");
    c.args(["-c", script, env!("CARGO_BIN_EXE_jq-run")])
        .args(args)
        .env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    stdout_ok_as(&c.output().unwrap(), "python3 (pty)")
}

/// `--color auto|always|never`: auto colours only a terminal (and not with NO_COLOR set);
/// the error prefix is ECMA-48 bold red (`ESC[1m ESC[31m ... ESC[0m`).
#[test]
fn colour_only_on_a_terminal_unless_asked() {
    let red = "\x1b[31m";
    let missing = dir().join("missing.gguf");
    let m = missing.to_str().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // Piped: no colour by default or with never; always colours.
    for (args, coloured) in [
        (vec![m], false),
        (vec![m, "--color", "never"], false),
        (vec![m, "--color", "auto"], false),
        (vec![m, "--color", "always"], true),
    ] {
        let o = run(&args, None);
        fails(&o, "error:");
        let e = text(&o.stderr);
        assert_eq!(e.contains(red), coloured, "{args:?}: {e:?}");
        assert_eq!(e.contains('\x1b'), coloured, "{args:?}: {e:?}");
        if coloured {
            assert!(e.contains("\x1b[1m\x1b[31merror:\x1b[0m"), "{e:?}");
        }
    }
    // On a terminal: auto colours, unless NO_COLOR is set; never does not.
    let e = text(&on_a_tty(&[m], &[]));
    assert!(e.contains("\x1b[1m\x1b[31merror:\x1b[0m"), "{e:?}");
    let e = text(&on_a_tty(&[m], &[("NO_COLOR", "1")]));
    assert!(e.contains("error:") && !e.contains('\x1b'), "{e:?}");
    let e = text(&on_a_tty(&[m, "--color", "never"], &[]));
    assert!(e.contains("error:") && !e.contains('\x1b'), "{e:?}");
    // The sampler's seed line is a dimmed status line on a terminal.
    let e = text(&on_a_tty(
        &[
            tiny().to_str().unwrap(),
            "-p",
            "the cat",
            "-n",
            "2",
            "--temp",
            "1",
            "-t",
            "1",
        ],
        &[],
    ));
    assert!(e.contains("\x1b[2mseed "), "{e:?}");
    fails(&run(&[m, "--color", "sometimes"], None), "--color");
}

/// clap's own help and usage errors follow `--color` too: piped they are plain unless
/// `always`; on a terminal clap colours them unless `never`.
#[test]
fn clap_help_and_usage_errors_follow_color() {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (args, coloured) in [
        (vec!["--help"], false),
        (vec!["--help", "--color", "never"], false),
        (vec!["--help", "--color", "always"], true),
        (vec!["--color=always", "--help"], true),
        (vec!["serve", "--help", "--color", "always"], true),
        (vec!["serve", "--color", "never", "--help"], false),
    ] {
        let o = run(&args, None);
        let out = text(&stdout_ok(&o));
        assert!(out.contains("Usage:"), "{args:?}: {out:?}");
        assert_eq!(out.contains('\x1b'), coloured, "{args:?}: {out:?}");
    }
    // A usage error (clap's, on stderr).
    let o = run(&["--no-such-flag", "--color", "always"], None);
    fails(&o, "--no-such-flag");
    assert!(text(&o.stderr).contains('\x1b'), "{:?}", text(&o.stderr));
    let o = run(&["--no-such-flag"], None);
    fails(&o, "--no-such-flag");
    assert!(!text(&o.stderr).contains('\x1b'));
    // `--color` as another flag's value is that value (the prompt here), not a colour choice:
    // clap's error about the stray word stays plain when piped.
    let o = run(&["-p", "--color", "always"], None);
    fails(&o, "always");
    assert!(!text(&o.stderr).contains('\x1b'), "{:?}", text(&o.stderr));
    // On a terminal: clap's auto colours; never does not.
    let t = text(&on_a_tty(&["--help"], &[]));
    assert!(t.contains("Usage:") && t.contains('\x1b'), "{t:?}");
    let t = text(&on_a_tty(&["--help", "--color", "never"], &[]));
    assert!(t.contains("Usage:") && !t.contains('\x1b'), "{t:?}");
    let t = text(&on_a_tty(&["--help"], &[("NO_COLOR", "1")]));
    assert!(t.contains("Usage:") && !t.contains('\x1b'), "{t:?}");
}

/// A command line clap refuses exits 1 with clap's message on stderr and nothing on stdout, as
/// every other error of the tools does (clap's default is 2); `--help` exits 0 on stdout.
#[test]
fn usage_errors_exit_one_and_help_exits_zero_in_every_binary() {
    let jq_run = Path::new(env!("CARGO_BIN_EXE_jq-run"));
    for exe in [
        jq_run.to_path_buf(),
        jq_run.with_file_name("jq-train"),
        jq_run.with_file_name("jq-convert"),
    ] {
        let o = Command::new(&exe).arg("--no-such-flag").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: {err}", exe.display());
        assert!(err.contains("--no-such-flag"), "{}: {err}", exe.display());
        assert!(o.stdout.is_empty());
        let o = Command::new(&exe).arg("--help").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", exe.display());
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage"));
    }
}
