//! `jq-run perplexity` end to end against fixtures/perplexity/reference.json, which
//! fixtures/perplexity/make_reference.py computes with numpy over logits llama.cpp produced
//! through jq-run's plain run path (`--dump-logits`, every position of each chunk), with its own
//! chunking and scoring written from llama.cpp's method. Figures must agree within 1e-4
//! relative; the top-1 agreement count exactly.

mod common;
use common::{stdout_ok, stdout_ok_as};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn jq_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jq-run"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn reference() -> Value {
    let p = root().join("fixtures/perplexity/reference.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

#[track_caller]
fn close(what: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    let rel = (g - w).abs() / w.abs().max(1e-12);
    assert!(
        rel <= 1e-4,
        "{what}: ours {g}, numpy {w} (relative {rel:.2e})"
    );
}

fn check_case(case: &Value, extra: &[&str]) {
    let name = case["name"].as_str().unwrap();
    let n_ctx = case["n_ctx"].to_string();
    let mut args = vec![
        "perplexity",
        case["model"].as_str().unwrap(),
        "-f",
        "fixtures/perplexity/text.txt",
        "-c",
        &n_ctx,
        "--kl-base",
        case["base"].as_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let got: Value = serde_json::from_slice(&stdout_ok_as(&jq_run(&args), name)).unwrap();
    for k in ["n_tokens", "n_chunk", "scored"] {
        assert_eq!(got[k], case[k], "{name}: {k}");
    }
    for k in ["ppl", "ppl_err"] {
        close(&format!("{name} {k}"), &got[k], &case[k]);
    }
    let kl = &got["kl"];
    for k in ["kld", "kld_max", "logit_rms", "logit_max", "ppl_base"] {
        close(&format!("{name} {k}"), &kl[k], &case[k]);
    }
    let scored = case["scored"].as_f64().unwrap();
    assert_eq!(
        (kl["same_top"].as_f64().unwrap() * scored).round(),
        (case["same_top"].as_f64().unwrap() * scored).round(),
        "{name}: top-1 agreement"
    );
    let (gc, wc) = (
        got["chunks"].as_array().unwrap(),
        case["chunks"].as_array().unwrap(),
    );
    assert_eq!(gc.len(), wc.len());
    for (g, w) in gc.iter().zip(wc) {
        let c = w["chunk"].as_u64().unwrap();
        close(&format!("{name} chunk {c} ppl"), &g["ppl"], &w["ppl"]);
        close(
            &format!("{name} chunk {c} chunk_ppl"),
            &g["chunk_ppl"],
            &w["chunk_ppl"],
        );
        close(&format!("{name} chunk {c} kld"), &g["kl"]["kld"], &w["kld"]);
    }
}

#[test]
fn matches_numpy_over_llama_cpp_logits() {
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for c in cases {
        check_case(c, &[]);
    }
    // Several graphs per chunk (the first scored position inside the second batch). On the
    // llama fixture: llama.cpp's own gemma3 logits depend on how a chunk is batched (sliding
    // window cache; 6e-3 in PPL on the tiny q8_0 between -b 64 and -b 24), llama's do not.
    check_case(&cases[2], &["-b", "24"]);
}

#[test]
fn text_report_prints_each_chunk_and_the_final_estimate() {
    let r = reference();
    let c = &r["cases"][2];
    let n_ctx = c["n_ctx"].to_string();
    let out = jq_run(&[
        "perplexity",
        c["model"].as_str().unwrap(),
        "-f",
        "fixtures/perplexity/text.txt",
        "-c",
        &n_ctx,
    ]);
    let text = String::from_utf8(stdout_ok(&out)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let n = c["n_chunk"].as_u64().unwrap() as usize;
    for (i, w) in c["chunks"].as_array().unwrap().iter().enumerate() {
        let want = format!("[{}] ppl {:.4} ", i + 1, w["ppl"].as_f64().unwrap());
        assert!(lines[i].starts_with(&want), "{} vs {want}", lines[i]);
    }
    let last = format!(
        "Final estimate: PPL = {:.4} +/- ",
        c["ppl"].as_f64().unwrap()
    );
    assert!(lines[n].starts_with(&last), "{}", lines[n]);
}

#[track_caller]
fn refused(args: &[&str], needle: &str) {
    let out = jq_run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim_end();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{err} lacks {needle}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_is_one_line() {
    let m = "fixtures/gemma3/llama-cpp/tiny-causal-q8_0.gguf";
    let t = "fixtures/perplexity/text.txt";
    refused(
        &["perplexity", m, "-f", t, "-c", "256"],
        "needs at least 512",
    );
    refused(
        &[
            "perplexity",
            m,
            "-f",
            t,
            "-c",
            "64",
            "--kl-base",
            "fixtures/families/llama3/llama3-f32.gguf",
        ],
        "vocabulary",
    );
    refused(&["perplexity", m, "-f", "nope.txt"], "nope.txt");
    refused(&["perplexity", "nope.gguf", "-f", t], "nope.gguf");
    refused(&["perplexity", m, "-f", t, "-c", "1024"], "trained context");
    assert!(Path::new(&root().join(t)).is_file());
}

/// The native engine's path: a Jarvis model scored against numpy. The reference tokenizes with
/// fixtures/jarvis/jarvis_ref.py (the spec's word tokenizer, written independently), computes
/// every chunk's logits with its float64 forward pass from the committed weights, and does its
/// own chunking and scoring by llama-perplexity's method (no BOS: the model has none).
#[test]
fn jarvis_on_the_native_engine_matches_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("jarvis.gguf");
    let convert = Path::new(env!("CARGO_BIN_EXE_jq-run")).with_file_name("jq-convert");
    let o = Command::new(convert)
        .arg("npz-to-gguf")
        .arg(root().join("fixtures/jarvis/tiny-norm/model.npz"))
        .args(["--type", "f32", "-o"])
        .arg(&model)
        .output()
        .unwrap();
    stdout_ok_as(&o, "jq-convert");
    let (text, n_ctx) = ("fixtures/jarvis/corpus.txt", 32);
    let code = format!(
        "import sys, json, numpy as np\n\
         sys.path.insert(0, 'fixtures/jarvis')\n\
         import jarvis_ref as r\n\
         W, c, t = r.load_model('fixtures/jarvis/tiny-norm')\n\
         s = open({text:?}, encoding='utf-8').read()\n\
         s = s[:-1] if s.endswith('\\n') else s\n\
         ids = t.encode(s)\n\
         n = {n_ctx}; first = n // 2\n\
         nll = []; chunks = []\n\
         for k in range(len(ids) // n):\n\
         \x20   x = ids[k * n:(k + 1) * n]\n\
         \x20   L, _ = r.forward(W, c, x, with_metrics=False)\n\
         \x20   for j in range(first, n - 1):\n\
         \x20       z = L[j]; m = z.max()\n\
         \x20       nll.append(m + np.log(np.exp(z - m).sum()) - z[x[j + 1]])\n\
         \x20   chunks.append(float(np.exp(np.mean(nll))))\n\
         a = np.array(nll); ppl = float(np.exp(a.mean()))\n\
         err = ppl * float(np.sqrt(a.var() / (len(a) - 1)))\n\
         print(json.dumps({{'n_tokens': len(ids), 'scored': len(a), 'ppl': ppl, 'ppl_err': err, 'chunks': chunks}}))\n"
    );
    let py = Command::new("python3")
        .current_dir(root())
        .args(["-c", &code])
        .output()
        .unwrap();
    let want: Value = serde_json::from_slice(&stdout_ok_as(&py, "python3")).unwrap();
    let model_arg = model.to_str().unwrap();
    let n_ctx_arg = n_ctx.to_string();
    let ppl_json = |extra: &[&str]| -> Value {
        let mut args = vec![
            "perplexity",
            model_arg,
            "-f",
            text,
            "-c",
            &n_ctx_arg,
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_slice(&stdout_ok(&jq_run(&args))).unwrap()
    };
    let got = ppl_json(&[]);
    assert_eq!(got["n_tokens"], want["n_tokens"]);
    assert_eq!(got["scored"], want["scored"]);
    close("jarvis ppl", &got["ppl"], &want["ppl"]);
    close("jarvis ppl_err", &got["ppl_err"], &want["ppl_err"]);
    let (gc, wc) = (
        got["chunks"].as_array().unwrap(),
        want["chunks"].as_array().unwrap(),
    );
    assert_eq!(gc.len(), wc.len());
    assert!(gc.len() >= 10);
    for (g, w) in gc.iter().zip(wc) {
        close("jarvis running ppl", &g["ppl"], w);
    }
    // Against itself as the base: zero divergence, full top-1 agreement; a llama.cpp model as
    // the base is refused by name.
    let got = ppl_json(&["--kl-base", model_arg]);
    assert_eq!(got["kl"]["kld"].as_f64(), Some(0.0));
    assert_eq!(got["kl"]["same_top"].as_f64(), Some(1.0));
    refused(
        &[
            "perplexity",
            model.to_str().unwrap(),
            "-f",
            text,
            "-c",
            "32",
            "--kl-base",
            "fixtures/families/llama3/llama3-f32.gguf",
        ],
        "not a Jarvis model",
    );
}
