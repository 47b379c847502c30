//! Jarvis end to end on the committed fixtures (`fixtures/jarvis/`): the numpy reference
//! (written from the spec, independent of this code) against our converter + native engine,
//! and against llama.cpp running our `gpt2` export.

mod common;
use common::{agreement, argmax, reference_prompts, rel_err, root};

use jq::engine::llama::Llama;
use jq::gguf::{GgufFile, GgufModel};
use jq::models::jarvis::{Generator, LayerMetrics, Model, WordTokenizer};
use jq::sample::{Sampler, SamplerConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/jarvis").join(name)
}

fn convert(model: &str, ty: &str, target: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .args(["npz-to-gguf"])
        .arg(fixture(model).join("model.npz"))
        .args(["--type", ty, "--target", target, "-o"])
        .arg(out)
        .output()
        .unwrap()
}

fn convert_ok(model: &str, ty: &str, target: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{model}-{ty}-{target}.gguf"));
    let o = convert(model, ty, target, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// (name, ids, logits [n x vocab], greedy ids)
type Case = (String, Vec<u32>, Vec<f32>, Vec<u32>);

struct Reference {
    cases: Vec<Case>,
    long: (Vec<u32>, Vec<u32>),
    metrics: Value,
}

fn ids(a: &jq::npy::NpyArray) -> Vec<u32> {
    a.data.iter().map(|&x| x as u32).collect()
}

fn reference(model: &str) -> Reference {
    let arrays = jq::npz::read(&fixture(model).join("reference.npz")).unwrap();
    let cases: Vec<Case> = reference_prompts(&arrays)
        .into_iter()
        .map(|(k, i, logits)| {
            let greedy = ids(&arrays[&format!("greedy_{k}")]);
            (format!("prompt {k}"), i, logits, greedy)
        })
        .collect();
    assert!(cases.len() >= 3, "reference.npz has too few prompts");
    let long = (ids(&arrays["ids_long"]), ids(&arrays["greedy_long"]));
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(model).join("metrics.json")).unwrap(),
    )
    .unwrap();
    Reference {
        cases,
        long,
        metrics,
    }
}

/// The fixture prompts (`prompts.json`: `{"prompts": [...], "long_prompt": ...}`).
fn prompts() -> Vec<String> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("prompts.json")).unwrap()).unwrap();
    v["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn greedy(model: &Model, prompt: &[u32], n: usize, eos: Option<u32>) -> Vec<u32> {
    let mut g = Generator::new(model);
    g.prompt(prompt, false, false).unwrap();
    let mut s = Sampler::new(SamplerConfig {
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..Default::default()
    });
    g.generate(&mut s, n, eos, false, |_| {})
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect()
}

fn check_metrics(ours: &[LayerMetrics], theirs: &Value, what: &str) {
    let layers = theirs.as_array().unwrap();
    assert_eq!(ours.len(), layers.len());
    let close = |a: f64, b: &Value, name: &str| {
        let b = b.as_f64().unwrap();
        assert!(
            (a - b).abs() <= 1e-5,
            "{what} {name}: ours {a} reference {b}"
        );
    };
    for (l, (o, t)) in ours.iter().zip(layers).enumerate() {
        for (name, v) in [
            ("coherence", o.layer.coherence),
            ("entanglement", o.layer.entanglement),
            ("interference", o.layer.interference),
            ("fidelity", o.layer.fidelity),
        ] {
            close(v, &t[name], &format!("layer {l} {name}"));
        }
        for (h, (oh, th)) in o
            .heads
            .iter()
            .zip(t["heads"].as_array().unwrap())
            .enumerate()
        {
            for (name, v) in [
                ("coherence", oh.coherence),
                ("entanglement", oh.entanglement),
                ("interference", oh.interference),
            ] {
                close(v, &th[name], &format!("layer {l} head {h} {name}"));
            }
        }
    }
}

#[test]
fn numpy_reference_recomputes_from_committed_weights() {
    let o = Command::new("python3")
        .arg(root().join("fixtures/jarvis/check_reference.py"))
        .output()
        .expect("python3 is needed (run scripts/setup)");
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn native_f32_matches_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["tiny-norm", "tiny-nonorm"] {
        let path = convert_ok(model, "f32", "native", dir.path());
        let f = GgufModel::open(&path).unwrap();
        let m = Model::load(&f).unwrap();
        let tok = WordTokenizer::from_gguf(&f).unwrap();
        let r = reference(model);
        let prompts = prompts();
        for (k, (name, want_ids, logits, want_greedy)) in r.cases.iter().enumerate() {
            // Our tokenizer gives the reference tokenizer's ids.
            assert_eq!(
                &tok.encode(&prompts[k]).unwrap(),
                want_ids,
                "{model} {name}: token ids"
            );
            let mut g = Generator::new(&m);
            let (ours, metrics) = g.prompt(want_ids, true, true).unwrap();
            let err = rel_err(&ours, logits);
            eprintln!("{model} {name}: native F32 vs numpy {err:.3e}");
            assert!(err <= 1e-5, "{model} {name}: logits error {err:.3e} > 1e-5");
            check_metrics(
                &metrics.unwrap(),
                &r.metrics[k]["layers"],
                &format!("{model} {name}"),
            );
            assert_eq!(
                &greedy(&m, want_ids, want_greedy.len(), tok.eos),
                want_greedy,
                "{model} {name}: greedy ids"
            );
        }
        // A generation that crosses the context and exercises the shift policy.
        let (p, want) = &r.long;
        assert!(
            p.len() + want.len() > m.cfg.ctx,
            "the long case must cross the context"
        );
        assert_eq!(
            &greedy(&m, p, want.len(), tok.eos),
            want,
            "{model}: greedy ids across the context shift"
        );
    }
}

#[test]
fn quantized_types_stay_close() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("tiny-norm");
    let mut report = BTreeMap::new();
    for (ty, max_err, min_top1, max_kl) in [
        // Measured on the committed fixture (see the issue note): f16 4.2e-4 / 100% / 1.4e-7,
        // q8_0 1.5e-2 / 100% / 1.6e-4, q4_0 1.7e-1 / 90.4% / 2.4e-2. Bounds leave headroom.
        ("f16", 1e-3, 0.99, 1e-6),
        ("q8_0", 3e-2, 0.97, 5e-4),
        ("q4_0", 2.5e-1, 0.85, 5e-2),
    ] {
        let path = convert_ok("tiny-norm", ty, "native", dir.path());
        let f = GgufModel::open(&path).unwrap();
        let m = Model::load(&f).unwrap();
        let (mut ours_all, mut ref_all) = (Vec::new(), Vec::new());
        for (_, ids, logits, _) in &r.cases {
            let (ours, _) = Generator::new(&m).prompt(ids, true, false).unwrap();
            ours_all.extend(ours);
            ref_all.extend_from_slice(logits);
        }
        let err = rel_err(&ours_all, &ref_all);
        let (top1, kl) = agreement(&ours_all, &ref_all, m.cfg.vocab);
        report.insert(ty, (err, top1, kl));
        eprintln!(
            "{ty}: error {err:.3e}, top-1 agreement {:.1}%, mean KL {kl:.3e}",
            top1 * 100.0
        );
        assert!(
            err <= max_err && top1 >= min_top1 && kl <= max_kl,
            "{ty}: error {err:.3e}, top-1 {top1}, KL {kl:.3e}"
        );
    }
}

#[test]
fn gpt2_export_runs_in_llama_cpp_with_the_same_logits_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = convert_ok("tiny-norm", "f32", "ollama", dir.path());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "gpt2");
    let native = convert_ok("tiny-norm", "f32", "native", dir.path());
    let nf = GgufModel::open(&native).unwrap();
    let tok = WordTokenizer::from_gguf(&nf).unwrap();
    let l = Llama::load(&path).unwrap();
    let r = reference("tiny-norm");
    let prompts = prompts();
    for (k, (name, ids, logits, _)) in r.cases.iter().enumerate() {
        assert_eq!(
            &l.tokenize(&prompts[k]),
            ids,
            "{name}: llama.cpp's tokenizer differs"
        );
        assert_eq!(&tok.encode(&prompts[k]).unwrap(), ids);
        // The known difference (README, "Jarvis"): Ollama's runner tokenizes with
        // add_special = true, and llama.cpp's WPM tokenizer then adds its BOS (CLS) and SEP
        // whatever add_bos_token/add_sep_token say (llama-vocab.cpp, LLAMA_VOCAB_TYPE_WPM), so
        // through Ollama a prompt is <eos> + the native ids + <eos>.
        let eos = f.get_u32("tokenizer.ggml.eos_token_id").unwrap();
        let mut framed = vec![eos];
        framed.extend(ids);
        framed.push(eos);
        assert_eq!(
            l.tokenize_with(&prompts[k], true, true),
            framed,
            "{name}: llama.cpp's add_special WPM framing changed; update README's Ollama note"
        );
        let theirs = l.prompt_logits(ids, 64, 2).unwrap();
        let err = rel_err(&theirs, logits);
        eprintln!("{name}: llama.cpp gpt2 export vs numpy: {err:.3e}");
        assert!(err <= 5e-3, "{name}: error {err:.3e} > 5e-3");
        let v = l.n_vocab();
        for (p, (a, b)) in theirs.chunks(v).zip(logits.chunks(v)).enumerate() {
            assert_eq!(
                argmax(a),
                argmax(b),
                "{name}: top-1 differs at position {p}"
            );
        }
    }
}

#[test]
fn checkpoint_without_final_norm_is_refused_for_ollama() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let o = convert("tiny-nonorm", "q8_0", "ollama", &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no final LayerNorm"), "{err}");
    assert!(!out.exists());
}

#[test]
fn committed_modelfile_is_what_the_converter_writes() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("jarvis-tiny-q8_0.gguf");
    let mf = dir.path().join("Modelfile");
    let o = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .arg("npz-to-gguf")
        .arg(fixture("tiny-norm").join("model.npz"))
        .args(["--type", "q8_0", "--target", "ollama", "-o"])
        .arg(&gguf)
        .arg("--modelfile")
        .arg(&mf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = std::fs::read_to_string(&mf).unwrap();
    let committed = std::fs::read_to_string(root().join("Modelfile")).unwrap();
    assert_eq!(ours, committed, "regenerate with scripts/demo");
    assert!(ours.contains("FROM ./jarvis-tiny-q8_0.gguf\n"));
    assert!(ours.contains("PARAMETER stop \"<eos>\"\n"));
}

#[test]
fn bad_checkpoints_are_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = fixture("tiny-norm");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let py = |code: &str| {
        let o = Command::new("python3")
            .arg("-c")
            .arg(code)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let load = format!(
        "import numpy as np; w = dict(np.load({:?}))",
        src.join("model.npz").to_str().unwrap()
    );
    let cases = [
        ("missing", format!("{load}; del w['layer_1_k']; np.savez('m.npz', **w)"), "missing 'layer_1_k'"),
        ("extra", format!("{load}; w['bogus'] = np.zeros(3, np.float32); np.savez('m.npz', **w)"), "unexpected keys [\"bogus\"]"),
        ("shape", format!("{load}; w['layer_0_ffn1'] = w['layer_0_ffn1'][:, :8]; np.savez('m.npz', **w)"), "'layer_0_ffn1' has shape"),
        ("nan", format!("{load}; w['layer_0_q'][3, 4] = np.nan; np.savez('m.npz', **w)"), "'layer_0_q' holds NaN at flat index 196 (of 1 NaN"),
        ("dtype", format!("{load}; w['layer_0_b1'] = w['layer_0_b1'].astype(np.int32); np.savez('m.npz', **w)"), "'layer_0_b1' has element type <i4"),
        ("truncated", format!("import shutil; shutil.copy({:?}, 'm.npz'); f = open('m.npz', 'r+b'); f.truncate(300); f.close()", src.join("model.npz").to_str().unwrap()), "not a readable .npz"),
    ];
    for (name, code, needle) in cases {
        py(&code);
        let out = d.join(format!("{name}.gguf"));
        let o = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
            .arg("npz-to-gguf")
            .arg(d.join("m.npz"))
            .args(["--type", "f32", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{name}: {err}");
        assert!(!out.exists(), "{name}: no output on failure");
    }
}

fn jq_run() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_jq-convert")).with_file_name("jq-run");
    assert!(
        p.exists(),
        "{} is missing: build the workspace (cargo test --release --workspace)",
        p.display()
    );
    p
}

#[test]
fn jq_run_cli_dump_logits_seeds_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = convert_ok("tiny-norm", "f32", "native", dir.path());
    let r = reference("tiny-norm");
    let (_, ids, logits, greedy_ids) = &r.cases[0];
    let npy = dir.path().join("l.npy");
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let o = Command::new(jq_run())
        .arg(&path)
        .args(["--prompt-tokens", &list, "-n", "0", "--dump-logits"])
        .arg(&npy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = jq::npy::parse(&std::fs::read(&npy).unwrap()).unwrap();
    assert_eq!(a.shape, vec![ids.len(), logits.len() / ids.len()]);
    assert!(rel_err(&a.data, logits) <= 1e-5);

    // Greedy through the CLI is the reference's greedy continuation.
    let o = Command::new(jq_run())
        .arg(&path)
        .args([
            "--prompt-tokens",
            &list,
            "-n",
            &greedy_ids.len().to_string(),
            "--temp",
            "0",
            "--repeat-penalty",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<u32> = v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&got, greedy_ids);

    // Seeded sampling is reproducible; a different seed gives a different text.
    let sample = |seed: &str| {
        let o = Command::new(jq_run())
            .arg(&path)
            .args([
                "--prompt", "the", "-n", "30", "--temp", "1.5", "--top-k", "0", "--top-p", "1",
                "--seed", seed,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(sample("7"), sample("7"));
    assert_ne!(sample("7"), sample("8"));

    // A prompt longer than the context is refused with the reason.
    let long = vec!["the"; 65].join(" ");
    let o = Command::new(jq_run())
        .arg(&path)
        .args(["--prompt", &long])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("65 tokens but the model's context is 64"),
        "{err}"
    );
}

#[test]
fn npz_variants_convert_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = fixture("tiny-norm");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let reference_gguf = convert_ok("tiny-norm", "f32", "native", d);
    let load = format!(
        "import numpy as np; w = dict(np.load({:?}))",
        src.join("model.npz").to_str().unwrap()
    );
    // float64 members (converted exactly back to f32) and Fortran-ordered members (reordered,
    // not reinterpreted) give byte-identical GGUFs; stored and deflated zips both read.
    for (name, code) in [
        ("f64", format!("{load}; np.savez('m.npz', **{{k: v.astype(np.float64) for k, v in w.items()}})")),
        ("fortran", format!("{load}; np.savez_compressed('m.npz', **{{k: np.asfortranarray(v) for k, v in w.items()}})")),
    ] {
        let o = Command::new("python3").arg("-c").arg(&code).current_dir(d).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = d.join(format!("{name}.gguf"));
        let o = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
            .arg("npz-to-gguf")
            .arg(d.join("m.npz"))
            .args(["--type", "f32", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        // The name comes from the npz's folder; compare everything after the metadata.
        let (a, b) = (GgufFile::open(&out).unwrap(), GgufFile::open(&reference_gguf).unwrap());
        for (x, y) in a.tensors().zip(b.tensors()) {
            assert!(x.data == y.data, "{name}: tensor {} differs", x.name());
        }
        assert_eq!(a.tensor_infos().len(), b.tensor_infos().len());
    }

    // Without config.json the sizes come from the shapes, but the head count must be given.
    std::fs::remove_file(d.join("config.json")).unwrap();
    let out = d.join("noconf.gguf");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_jq-convert"))
            .arg("npz-to-gguf")
            .arg(d.join("m.npz"))
            .args(["--type", "f32", "-o"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("head count cannot be inferred"));
    let o = run(&["--heads", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: no config.json"));
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_u32("jarvis.attention.head_count").unwrap(), 4);
    assert_eq!(f.get_u32("jarvis.context_length").unwrap(), 512);
}

/// Through jq-run's text path (`--prompt`, not `--prompt-tokens`): llama.cpp's tokenizer on the
/// gpt2 export gives exactly the native engine's ids for every fixture prompt. The export's
/// WPM vocabulary says add_bos_token = false; jq-run adds special tokens only when the model
/// asks (llama.cpp's tools call its tokenizer with add_special = add_bos), so no CLS/SEP appear.
#[test]
fn export_text_path_tokenizes_like_the_native_engine() {
    let dir = tempfile::tempdir().unwrap();
    let native = convert_ok("tiny-norm", "f32", "native", dir.path());
    let export = convert_ok("tiny-norm", "f32", "ollama", dir.path());
    let ids = |model: &Path, prompt: &str| -> Vec<u64> {
        let o = Command::new(jq_run())
            .arg(model)
            .args(["--prompt", prompt, "-n", "0", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let all = prompts();
    assert!(all.len() >= 3);
    for p in &all {
        let n = ids(&native, p);
        assert!(!n.is_empty());
        assert_eq!(ids(&export, p), n, "prompt {p:?}");
    }
}
