//! `--stream-layers` on every family it runs besides Gemma-3: Llama (llama3 RoPE factors, GQA,
//! untied head), Mistral (GGUF `llama`), Qwen2 (Q/K/V biases, tied head) and Qwen3 (Q/K norms),
//! tiny random checkpoints made with transformers and converted by llama.cpp's own converter
//! (`fixtures/families/make_families.py`), in F32, Q8_0 and a Q4_K_M mixture quantized here by
//! `llama_model_quantize`. Under budgets that force most layers to stream, with and without
//! `--host-layers`, the logits equal llama.cpp's fully resident run of the same file for every
//! prompt position and 20 greedy steps, and the budget holds. The hyper-parameters and tensor
//! table jq reads match what llama.cpp reports for the same file.

mod common;
use common::bit_differences;
use jq::arch::{Family, Hparams};
use jq::engine::llama::Llama;
use jq::engine::stream::{plan_only, HostLayers, StreamOptions, Streamer};
use jq::gguf::GgufModel;
use jq::sample::SamplerConfig;
use std::path::{Path, PathBuf};

const N_CTX: u32 = 128;
const N_DECODE: usize = 20;
const FAMILIES: [&str; 4] = ["llama3", "mistral", "qwen2", "qwen3"];

fn fixture(model: &str, ty: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/families")
        .join(model)
        .join(format!("{model}-{ty}.gguf"));
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// The reference prompts' token ids (with BOS), from `reference.npz`.
fn prompt(model: &str) -> Vec<u32> {
    let a = jq::npz::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/families")
            .join(model)
            .join("reference.npz"),
    )
    .unwrap();
    a["ids_1"].data.iter().map(|&x| x as u32).collect()
}

fn argmax(l: &[f32]) -> u32 {
    jq::sample::argmax(l) as u32
}

fn opts(budget: u64, host: HostLayers) -> StreamOptions {
    StreamOptions {
        budget: Some(budget),
        n_slots: 2,
        n_ctx: N_CTX,
        n_ubatch: N_CTX,
        all_logits: true,
        host_layers: host,
        threads: 2,
        threads_batch: 2,
        ..StreamOptions::default()
    }
}

/// Prompt logits then `N_DECODE` greedy steps through `eval`.
fn greedy(mut eval: impl FnMut(&[u32]) -> Vec<f32>, v: usize, p: &[u32]) -> Vec<Vec<f32>> {
    let mut out = vec![eval(p)];
    for _ in 0..N_DECODE {
        let last = out.last().unwrap();
        let next = argmax(&last[last.len() - v..]);
        out.push(eval(&[next]));
    }
    out
}

fn q4_k_m(src: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(format!(
        "{}-q4_k_m.gguf",
        src.file_stem().unwrap().to_str().unwrap()
    ));
    const LLAMA_FTYPE_MOSTLY_Q4_K_M: u32 = 15;
    let st = jq::ggml::llama_quantize(src, &out, LLAMA_FTYPE_MOSTLY_Q4_K_M, false, 2);
    assert_eq!(st, 0, "llama_model_quantize failed on {}", src.display());
    out
}

/// llama.cpp loads one at a time in this test binary: the hyper-parameter test reads the log
/// lines of its own load.
static LOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn parity(path: &Path, p: &[u32]) {
    let llama = {
        let _one = LOADS.lock().unwrap();
        Llama::load(path).unwrap()
    };
    let v = llama.n_vocab();
    let mut sess = llama
        .session(N_CTX, N_CTX, 2, &SamplerConfig::greedy())
        .unwrap();
    let want = greedy(|t| sess.eval(t, true).unwrap(), v, p);
    let plan = plan_only(path, &opts(u64::MAX / 2, HostLayers::Off)).unwrap();
    let n = plan.sizes.layers.len();
    let budget = plan.budget_for(1, 2);
    for host in [HostLayers::Off, HostLayers::N(2)] {
        let mut s = Streamer::open(path, &opts(budget, host)).unwrap();
        assert!(
            s.plan().streamed.len() + s.plan().host.len() == n - 1,
            "{}: {}",
            path.display(),
            s.plan()
        );
        let got = greedy(|t| s.eval(t, true).unwrap(), v, p);
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            let differ = bit_differences(a, b);
            assert_eq!(
                differ,
                0,
                "{} host {host:?}: {} {k}: {differ} of {} logits differ",
                path.display(),
                if k == 0 { "prompt" } else { "decode step" },
                a.len()
            );
        }
        assert!(s.device_bytes() <= budget);
        assert_eq!(s.device_bytes(), s.plan().device_bytes());
    }
}

#[test]
fn every_family_streams_bit_identical_to_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    for m in FAMILIES {
        let p = prompt(m);
        for ty in ["f32", "q8_0"] {
            parity(&fixture(m, ty), &p);
        }
        parity(&q4_k_m(&fixture(m, "f32"), dir.path()), &p);
    }
}

/// The hyper-parameters jq reads equal llama.cpp's for the same file, through the C API's
/// getters, and the family tables find every tensor the file has (none left over).
#[test]
fn hparams_and_tensor_tables_match_llama_cpp() {
    for m in FAMILIES {
        let path = fixture(m, "f32");
        let f = GgufModel::open(&path).unwrap();
        let hp = Hparams::from_gguf(&f).unwrap();
        let (llama, lines) = {
            let _one = LOADS.lock().unwrap();
            jq::engine::llama::backend().unwrap();
            jq::engine::logs::record(true);
            let l = Llama::load(&path).unwrap();
            jq::engine::logs::record(false);
            (l, jq::engine::logs::take_recorded())
        };
        let lm = &llama.model;
        assert_eq!(hp.n_layer as u32, lm.n_layer(), "{m}: n_layer");
        assert_eq!(hp.n_embd as i32, lm.n_embd(), "{m}: n_embd");
        assert_eq!(hp.n_head as u32, lm.n_head(), "{m}: n_head");
        assert_eq!(hp.n_head_kv as u32, lm.n_head_kv(), "{m}: n_head_kv");
        assert_eq!(hp.n_ctx_train, lm.n_ctx_train(), "{m}: n_ctx_train");
        assert_eq!(hp.n_vocab as usize, llama.n_vocab(), "{m}: n_vocab");
        let rope = match lm.rope_type() {
            Some(llama_cpp_2::model::RopeType::Norm) => jq::arch::ROPE_TYPE_NORM,
            Some(llama_cpp_2::model::RopeType::NeoX) => jq::arch::ROPE_TYPE_NEOX,
            other => panic!("{m}: rope type {other:?}"),
        };
        assert_eq!(hp.rope.kind, rope, "{m}: rope type");
        // What the C API has no getter for, from llama.cpp's own model-info lines.
        let info = |key: &str| -> f64 {
            lines
                .iter()
                .find_map(|l| {
                    let rest = l.strip_prefix("print_info: ")?.strip_prefix(key)?;
                    let v = rest.trim_start().strip_prefix('=')?.trim();
                    v.split_whitespace().next()?.parse().ok()
                })
                .unwrap_or_else(|| panic!("{m}: no '{key}' line in llama.cpp's model info"))
        };
        assert_eq!(hp.head_dim as f64, info("n_embd_head_k "), "{m}: head size");
        assert_eq!(hp.rope.n_rot as f64, info("n_rot "), "{m}: n_rot");
        assert_eq!(hp.n_ff as f64, info("n_ff "), "{m}: n_ff");
        assert_eq!(
            f64::from(hp.rope.base),
            info("freq_base_train "),
            "{m}: rope base"
        );
        assert_eq!(
            f64::from(hp.rope.scale),
            info("freq_scale_train "),
            "{m}: rope scale"
        );
        assert_eq!(
            f64::from(hp.eps) as f32,
            info("f_norm_rms_eps ") as f32,
            "{m}: eps"
        );
        let fam = Family::from_arch(f.get_str("general.architecture").unwrap()).unwrap();
        assert_eq!(fam, hp.family);
        // Every tensor of the file is one of the table's (layers and globals).
        let mut known: Vec<String> = (0..hp.n_layer)
            .flat_map(|il| fam.layer_tensors().iter().map(move |s| s.name_in(Some(il))))
            .collect();
        known.push(jq::arch::TOKEN_EMBD.name.into());
        known.extend(fam.global_tensors().iter().map(|s| s.name.to_string()));
        for t in f.tensor_infos() {
            assert!(
                known.contains(&t.name),
                "{m}: tensor '{}' is not in the table",
                t.name
            );
        }
        match m {
            "llama3" => assert!(hp.rope_freqs && !hp.tied, "{m}: {hp:?}"),
            "qwen2" => assert!(hp.tied, "{m}: {hp:?}"),
            _ => {}
        }
    }
}
