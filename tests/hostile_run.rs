//! `jq-run` fed hostile models and flags, on every engine: native (Jarvis), llama.cpp (gemma3,
//! gpt2) and `--stream-layers` (gemma3). The cases are generated from valid tiny models:
//! every numeric metadata key of the architecture at 0, 1, max and 1e9; every tensor
//! dimension +-1 and swapped; every F32 tensor re-typed; truncations of the file; every way
//! `--dump-logits` can name the model; plus the examples of issue 13. Each case asserts: no
//! panic and no signal, exit 0 or 1, a one-line `jq-run: error:` naming the key, tensor, flag
//! or file, peak RSS (wait4) under twice a valid run's, and the directory unchanged (inputs
//! hashed, nothing left under an output or temporary name).

#[path = "harness/mod.rs"]
mod harness;

use harness::{
    assert_ok_or_refused, assert_refused, assert_sane, assert_unchanged, rss_bound, run, snapshot,
    Opts, Outcome,
};
use jq::gguf::{GgufFile, GgufWriter, MetaValue, Value, ValueType};
use jq::quant::{quantize_to_vec, GgmlType};
use jq::synth::{write_gemma3, write_gpt2, Gemma3Dims, Gpt2Dims};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jq-run"))
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jq-hostile-")
        .tempdir()
        .unwrap()
}

// ------------------------------------------------------------------ the valid models

const GEMMA3: Gemma3Dims = Gemma3Dims {
    n_layer: 2,
    swa_pattern: 2,
    ..Gemma3Dims::TINY
};

/// A tiny Jarvis GGUF: 2 layers, d 8, 2 heads, FFN 16, context 16, 12 words.
fn write_jarvis(path: &Path) {
    let words = [
        "<pad>", "<unk>", "<eos>", "the", "cat", "dog", "runs", "sat", "on", "mat", ".", ",",
    ];
    let (d, ff, v, layers) = (8u64, 16u64, words.len() as u64, 2u64);
    let mut w = GgufWriter::new();
    w.add("general.architecture", "jarvis").unwrap();
    w.add("jarvis.context_length", 16u32).unwrap();
    w.add("jarvis.embedding_length", d as u32).unwrap();
    w.add("jarvis.feed_forward_length", ff as u32).unwrap();
    w.add("jarvis.block_count", layers as u32).unwrap();
    w.add("jarvis.attention.head_count", 2u32).unwrap();
    w.add("jarvis.attention.layer_norm_epsilon", 1e-5f32)
        .unwrap();
    w.add("jarvis.gelu", "tanh").unwrap();
    w.add("jarvis.positional_encoding", "sinusoidal").unwrap();
    w.add("jarvis.context_shift", "keep-last-half").unwrap();
    w.add("tokenizer.ggml.model", "jarvis-word").unwrap();
    w.add("tokenizer.ggml.tokens", MetaValue::strings(words))
        .unwrap();
    w.add("tokenizer.ggml.eos_token_id", 2u32).unwrap();
    w.add("tokenizer.ggml.unknown_token_id", 1u32).unwrap();
    let mut t: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![d, v])];
    for l in 0..layers {
        for (n, ne) in [
            ("attn_norm.weight", vec![d]),
            ("attn_norm.bias", vec![d]),
            ("attn_q.weight", vec![d, d]),
            ("attn_k.weight", vec![d, d]),
            ("attn_v.weight", vec![d, d]),
            ("ffn_norm.weight", vec![d]),
            ("ffn_norm.bias", vec![d]),
            ("ffn_up.weight", vec![d, ff]),
            ("ffn_down.weight", vec![ff, d]),
        ] {
            t.push((format!("blk.{l}.{n}"), ne));
        }
    }
    t.push(("output_norm.weight".into(), vec![d]));
    t.push(("output_norm.bias".into(), vec![d]));
    t.push(("output.weight".into(), vec![d, v]));
    for (n, ne) in &t {
        w.add_tensor(n, GgmlType::F32, ne).unwrap();
    }
    w.write_file(path, |i, t, o| {
        let n = t.ne.iter().product::<u64>() as usize;
        let vals = jq::synth::weights(i as u64, n, 0.3);
        o.write_all(&quantize_to_vec(GgmlType::F32, &vals).unwrap())
            .map_err(|e| jq::gguf::GgufError::io("<output>", e))
    })
    .unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Native,
    Gemma3Llama,
    Gpt2Llama,
    Gemma3Stream,
}

impl Surface {
    fn arch(self) -> &'static str {
        match self {
            Surface::Native => "jarvis",
            Surface::Gemma3Llama | Surface::Gemma3Stream => "gemma3",
            Surface::Gpt2Llama => "gpt2",
        }
    }

    /// The valid model's bytes (written once per test process).
    fn model(self) -> &'static [u8] {
        static M: [OnceLock<Vec<u8>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let (i, write): (usize, fn(&Path)) = match self {
            Surface::Native => (0, write_jarvis),
            Surface::Gemma3Llama | Surface::Gemma3Stream => {
                (1, |p| write_gemma3(p, GEMMA3, 384, GgmlType::F32).unwrap())
            }
            Surface::Gpt2Llama => (2, |p| write_gpt2(p, Gpt2Dims::TINY, false).unwrap()),
        };
        M[i].get_or_init(|| {
            let d = scratch();
            let p = d.path().join("m.gguf");
            write(&p);
            std::fs::read(&p).unwrap()
        })
    }

    /// A short greedy run of `model`.
    fn args(self, model: &str) -> Vec<String> {
        let mut a: Vec<String> = vec![model.into()];
        let rest: &[&str] = match self {
            Surface::Native => &["--prompt-tokens", "3,4,5", "-n", "2", "--temp", "0"],
            Surface::Gemma3Llama | Surface::Gpt2Llama => &[
                "--prompt-tokens",
                "5,6,7",
                "-n",
                "2",
                "--temp",
                "0",
                "-t",
                "1",
            ],
            Surface::Gemma3Stream => &[
                "--stream-layers",
                "--prompt-tokens",
                "5,6,7",
                "-n",
                "2",
                "--temp",
                "0",
                "-t",
                "1",
            ],
        };
        a.extend(rest.iter().map(|s| s.to_string()));
        a
    }

    /// Peak RSS bound from a valid run.
    fn bound(self) -> u64 {
        static B: [OnceLock<u64>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        *B[self as usize].get_or_init(|| {
            let d = scratch();
            let p = d.path().join("m.gguf");
            std::fs::write(&p, self.model()).unwrap();
            let o = go(&self.args(p.to_str().unwrap()), &Opts::default());
            assert_eq!(o.code, Some(0), "the valid model fails: {}", o.describe());
            rss_bound(&o)
        })
    }
}

fn go(args: &[String], o: &Opts) -> Outcome {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(bin(), &a, o)
}

/// Runs `surface` on `bytes` in a fresh directory; checks sanity, the bound and that the
/// directory is unchanged; hands the outcome to `check`.
fn case(s: Surface, bytes: &[u8], extra: &[&str], check: impl FnOnce(&Outcome, u64)) {
    let d = scratch();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    let before = snapshot(d.path());
    let mut args = s.args(p.to_str().unwrap());
    args.extend(extra.iter().map(|x| x.to_string()));
    let o = go(&args, &Opts::default());
    let bound = s.bound();
    assert_sane(&o, bound);
    check(&o, bound);
    assert_unchanged(d.path(), &before, &o);
}

// ------------------------------------------------------------------ rewriting a GGUF

struct Tensor {
    name: String,
    ty: GgmlType,
    ne: Vec<u64>,
    values: Vec<f32>,
}

/// Rebuilds a GGUF with its metadata and tensors edited; tensor data follow the new shape
/// and type (values kept where they still fit, zeros elsewhere).
fn rebuild(
    bytes: &[u8],
    kv: impl FnOnce(&mut Vec<(String, MetaValue)>),
    tensors: impl FnOnce(&mut Vec<Tensor>),
) -> Vec<u8> {
    let f = GgufFile::from_vec(bytes.to_vec()).unwrap();
    let mut kvs: Vec<(String, MetaValue)> = f
        .metadata()
        .map(|(k, v)| (k.to_string(), v.to_owned_value()))
        .collect();
    let mut ts: Vec<Tensor> = f
        .tensors()
        .map(|t| Tensor {
            name: t.name().to_string(),
            ty: t.ty(),
            ne: t.info.ne.clone(),
            values: t.to_f32().unwrap(),
        })
        .collect();
    kv(&mut kvs);
    tensors(&mut ts);
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w.add(k, v).unwrap();
    }
    for t in &ts {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
    }
    let mut out = Vec::new();
    w.write_to(&mut out, |i, p, o| {
        let n = p.ne.iter().product::<u64>() as usize;
        let mut v = ts[i].values.clone();
        v.resize(n, 0.0);
        o.write_all(&quantize_to_vec(p.ty, &v).unwrap())
            .map_err(|e| jq::gguf::GgufError::io("<output>", e))
    })
    .unwrap();
    out
}

fn set_key(bytes: &[u8], key: &str, v: MetaValue) -> Vec<u8> {
    rebuild(
        bytes,
        |kvs| match kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => kvs.push((key.to_string(), v)),
        },
        |_| {},
    )
}

/// Numeric keys of the architecture (and the tokenizer's ids), with their value type.
fn numeric_keys(bytes: &[u8], arch: &str) -> Vec<(String, ValueType)> {
    let f = GgufFile::from_vec(bytes.to_vec()).unwrap();
    f.metadata()
        .filter(|(k, _)| k.starts_with(&format!("{arch}.")) || k.ends_with("_token_id"))
        .filter_map(|(k, v)| match v {
            Value::U32(_) | Value::I32(_) | Value::U64(_) | Value::F32(_) => {
                Some((k.to_string(), v.value_type()))
            }
            _ => None,
        })
        .collect()
}

fn values_for(ty: ValueType) -> Vec<MetaValue> {
    match ty {
        ValueType::F32 => [0.0f32, 1.0, -1.0, f32::MAX, f32::NAN]
            .into_iter()
            .map(MetaValue::F32)
            .collect(),
        ValueType::I32 => [0i32, 1, -1, i32::MAX]
            .into_iter()
            .map(MetaValue::I32)
            .collect(),
        ValueType::U64 => [0u64, 1, u64::MAX, 1_000_000_000]
            .into_iter()
            .map(MetaValue::U64)
            .collect(),
        _ => [0u32, 1, u32::MAX, 1_000_000_000]
            .into_iter()
            .map(MetaValue::U32)
            .collect(),
    }
}

/// What an error about `key` may name: the key, or its name inside the architecture, or the
/// context (a context too short for the prompt is about the prompt, not the file).
fn key_culprits(key: &str) -> Vec<String> {
    let mut v = vec![key.to_string()];
    if let Some((_, rest)) = key.split_once('.') {
        v.push(rest.to_string());
        v.push(rest.rsplit('.').next().unwrap().to_string());
    }
    v.push("context".into());
    v
}

fn every_numeric_key(s: Surface) {
    let base = s.model();
    for (key, ty) in numeric_keys(base, s.arch()) {
        for v in values_for(ty) {
            let bytes = set_key(base, &key, v.clone());
            let c = key_culprits(&key);
            let c: Vec<&str> = c.iter().map(String::as_str).collect();
            case(s, &bytes, &[], |o, b| assert_ok_or_refused(o, b, &c));
        }
    }
}

/// Every tensor: each dimension +1 and -1, the two dimensions swapped, and re-typed.
fn every_tensor(s: Surface) {
    let base = s.model();
    let f = GgufFile::from_vec(base.to_vec()).unwrap();
    let infos = f.tensor_infos().to_vec();
    for t in &infos {
        let mut shapes: Vec<Vec<u64>> = Vec::new();
        for i in 0..t.ne.len() {
            for delta in [1i64, -1] {
                let mut ne = t.ne.clone();
                ne[i] = (ne[i] as i64 + delta) as u64;
                shapes.push(ne);
            }
        }
        if t.ne.len() == 2 && t.ne[0] != t.ne[1] {
            shapes.push(vec![t.ne[1], t.ne[0]]);
        }
        let mut edits: Vec<(Vec<u64>, GgmlType)> =
            shapes.into_iter().map(|ne| (ne, t.ty)).collect();
        edits.push((t.ne.clone(), GgmlType::F16));
        if t.ne[0] % 32 == 0 {
            edits.push((t.ne.clone(), GgmlType::Q8_0));
        }
        for (ne, ty) in edits {
            let bytes = rebuild(
                base,
                |_| {},
                |ts| {
                    let x = ts.iter_mut().find(|x| x.name == t.name).unwrap();
                    x.ne = ne.clone();
                    x.ty = ty;
                },
            );
            case(s, &bytes, &[], |o, b| {
                assert_ok_or_refused(o, b, &[&t.name])
            });
        }
    }
}

fn truncations(s: Surface) {
    let base = s.model();
    let n = base.len();
    for cut in [0, 3, 4, 8, 24, 100, n / 4, n / 2, n - 1] {
        case(s, &base[..cut], &[], |o, b| {
            assert_refused(o, b, &["m.gguf"])
        });
    }
}

#[test]
fn native_every_numeric_key() {
    every_numeric_key(Surface::Native);
}

#[test]
fn native_every_tensor() {
    every_tensor(Surface::Native);
}

#[test]
fn gemma3_llama_every_numeric_key() {
    every_numeric_key(Surface::Gemma3Llama);
}

#[test]
fn gemma3_llama_every_tensor() {
    every_tensor(Surface::Gemma3Llama);
}

#[test]
fn gpt2_llama_every_numeric_key() {
    every_numeric_key(Surface::Gpt2Llama);
}

#[test]
fn gpt2_llama_every_tensor() {
    every_tensor(Surface::Gpt2Llama);
}

#[test]
fn stream_every_numeric_key() {
    every_numeric_key(Surface::Gemma3Stream);
}

#[test]
fn stream_every_tensor() {
    every_tensor(Surface::Gemma3Stream);
}

#[test]
fn truncated_models() {
    for s in [
        Surface::Native,
        Surface::Gemma3Llama,
        Surface::Gpt2Llama,
        Surface::Gemma3Stream,
    ] {
        truncations(s);
    }
}

// ------------------------------------------------------------------ the examples of the issue

/// The refusals issue 13 lists, each naming its culprit exactly.
#[test]
fn issue_examples_name_their_culprit() {
    use Surface::*;
    let cases: Vec<(Surface, Vec<u8>, &str)> = vec![
        // Class 1: a context of 0 panicked in the -b clamp (llama.cpp path and stream).
        (
            Gemma3Llama,
            set_key(
                Gemma3Llama.model(),
                "gemma3.context_length",
                MetaValue::U32(0),
            ),
            "gemma3.context_length",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.context_length",
                MetaValue::U32(0),
            ),
            "gemma3.context_length",
        ),
        // Class 2: block counts that asked for hundreds of GB.
        (
            Native,
            set_key(
                Native.model(),
                "jarvis.block_count",
                MetaValue::U32(1_000_000_000),
            ),
            "jarvis.block_count",
        ),
        (
            Gemma3Llama,
            set_key(
                Gemma3Llama.model(),
                "gemma3.block_count",
                MetaValue::U32(1_000_000_000),
            ),
            "gemma3.block_count",
        ),
        (
            Gpt2Llama,
            set_key(
                Gpt2Llama.model(),
                "gpt2.block_count",
                MetaValue::U32(1_000_000_000),
            ),
            "gpt2.block_count",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.block_count",
                MetaValue::U32(1_000_000_000),
            ),
            "gemma3.block_count",
        ),
        // Class 3: what llama.cpp or ggml abort on.
        (
            Gemma3Llama,
            set_key(Gemma3Llama.model(), "gemma3.block_count", MetaValue::U32(0)),
            "gemma3.block_count",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.embedding_length",
                MetaValue::U32(0),
            ),
            "gemma3.embedding_length",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.attention.head_count",
                MetaValue::U32(0),
            ),
            "gemma3.attention.head_count",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.attention.head_count_kv",
                MetaValue::U32(0),
            ),
            "gemma3.attention.head_count_kv",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.attention.head_count_kv",
                MetaValue::U32(u32::MAX),
            ),
            "gemma3.attention.head_count_kv",
        ),
        (
            Gemma3Stream,
            set_key(
                Gemma3Stream.model(),
                "gemma3.feed_forward_length",
                MetaValue::U32(127),
            ),
            "blk.0.ffn_gate.weight",
        ),
        (
            Gemma3Llama,
            set_key(
                Gemma3Llama.model(),
                "gemma3.rope.scaling.type",
                MetaValue::from("nope"),
            ),
            "gemma3.rope.scaling.type",
        ),
    ];
    for (s, bytes, culprit) in cases {
        case(s, &bytes, &[], |o, b| assert_refused(o, b, &[culprit]));
    }
}

fn with_tokens(bytes: &[u8], edit: impl FnOnce(&mut Vec<String>)) -> Vec<u8> {
    let f = GgufFile::from_vec(bytes.to_vec()).unwrap();
    let mut toks: Vec<String> = f
        .get_array("tokenizer.ggml.tokens")
        .unwrap()
        .strings()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    edit(&mut toks);
    set_key(bytes, "tokenizer.ggml.tokens", MetaValue::strings(toks))
}

#[test]
fn duplicate_and_missing_tokens() {
    use Surface::*;
    for s in [Native, Gemma3Llama, Gpt2Llama, Gemma3Stream] {
        let dup = with_tokens(s.model(), |t| {
            let last = t.len() - 1;
            t[last] = t[last - 1].clone();
        });
        case(s, &dup, &[], |o, b| {
            assert_refused(o, b, &["tokenizer.ggml.tokens"])
        });
        // Fewer tokens than embedding rows: a C++ exception crossed the FFI on the stream path.
        let short = with_tokens(s.model(), |t| {
            t.pop();
        });
        case(s, &short, &[], |o, b| {
            assert_refused(o, b, &["token_embd.weight", "tokenizer.ggml.tokens"])
        });
    }
}

/// A failure only llama.cpp detects (an extra tensor): its own message is in the error line.
#[test]
fn llama_cpp_load_error_text_is_shown() {
    let bytes = rebuild(
        Surface::Gemma3Llama.model(),
        |_| {},
        |ts| {
            ts.push(Tensor {
                name: "blk.0.stray.weight".into(),
                ty: GgmlType::F32,
                ne: vec![4],
                values: vec![0.0; 4],
            })
        },
    );
    case(Surface::Gemma3Llama, &bytes, &[], |o, b| {
        assert_refused(o, b, &["wrong number of tensors"]);
        assert!(!o.stderr.contains("null result"), "{}", o.describe());
    });
}

// ------------------------------------------------------------------ flags and paths

#[test]
fn flags_that_do_not_apply_are_refused() {
    use Surface::*;
    case(
        Native,
        Native.model(),
        &["--stream-layers", "--plan-only"],
        |o, b| assert_refused(o, b, &["--stream-layers"]),
    );
    case(Native, Native.model(), &["-g", "4"], |o, b| {
        assert_refused(o, b, &["--n-gpu-layers"])
    });
    case(Gemma3Llama, Gemma3Llama.model(), &["--metrics"], |o, b| {
        assert_refused(o, b, &["--metrics"])
    });
    case(
        Gpt2Llama,
        Gpt2Llama.model(),
        &["--stream-layers"],
        |o, b| assert_refused(o, b, &["--stream-layers"]),
    );
    case(
        Gemma3Stream,
        Gemma3Stream.model(),
        &["--metrics"],
        |o, b| assert_refused(o, b, &["--metrics"]),
    );
}

/// `--dump-logits` naming the model in every way a path can: it overwrote the model (native)
/// or died of SIGBUS (llama.cpp, stream).
#[test]
fn dump_logits_never_overwrites_the_model() {
    use Surface::*;
    for s in [Native, Gemma3Llama, Gemma3Stream] {
        let d = scratch();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, s.model()).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(&p, d.path().join("link.npy")).unwrap();
        std::fs::hard_link(&p, d.path().join("hard.npy")).unwrap();
        let model = p.to_str().unwrap().to_string();
        let rel = "m.gguf".to_string();
        for (dump, cwd) in [
            (model.clone(), None),
            ("./m.gguf".to_string(), Some(d.path())),
            ("sub/../m.gguf".to_string(), Some(d.path())),
            (
                d.path().join("link.npy").to_str().unwrap().to_string(),
                None,
            ),
            (
                d.path().join("hard.npy").to_str().unwrap().to_string(),
                None,
            ),
        ] {
            let before = snapshot(d.path());
            let m = if cwd.is_some() {
                rel.clone()
            } else {
                model.clone()
            };
            let mut args = s.args(&m);
            args.extend(["--dump-logits".to_string(), dump.clone()]);
            let o = go(
                &args,
                &Opts {
                    cwd: cwd.map(Path::to_path_buf),
                    ..Opts::default()
                },
            );
            assert_refused(&o, s.bound(), &["--dump-logits"]);
            assert!(
                o.error_line().unwrap().contains("the model"),
                "{}",
                o.describe()
            );
            assert_unchanged(d.path(), &before, &o);
        }
    }
}

/// A full disk (RLIMIT_FSIZE) while writing the logits: an error naming the file, and neither
/// a truncated .npy nor a temporary file left.
#[test]
fn dump_logits_on_a_full_disk_leaves_nothing() {
    use Surface::*;
    for s in [Native, Gemma3Llama, Gemma3Stream] {
        let d = scratch();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, s.model()).unwrap();
        let before = snapshot(d.path());
        let npy = d.path().join("out.npy");
        let mut args = s.args(p.to_str().unwrap());
        args.extend([
            "--dump-logits".to_string(),
            npy.to_str().unwrap().to_string(),
        ]);
        let o = go(
            &args,
            &Opts {
                fsize_limit: Some(100),
                ..Opts::default()
            },
        );
        assert_refused(&o, s.bound(), &["out.npy"]);
        assert_unchanged(d.path(), &before, &o);
        // Without the limit the same run writes it.
        let o = go(&args, &Opts::default());
        assert_eq!(o.code, Some(0), "{}", o.describe());
        let a = jq::npy::parse(&std::fs::read(&npy).unwrap()).unwrap();
        assert_eq!(a.shape[0], 3);
    }
}

#[test]
fn a_directory_or_a_missing_file_as_the_model() {
    let d = scratch();
    let o = run(
        bin(),
        &[d.path().to_str().unwrap(), "--prompt", "hi"],
        &Opts::default(),
    );
    assert_refused(&o, 256 << 20, &["is a directory"]);
    let missing = d.path().join("nope.gguf");
    let o = run(
        bin(),
        &[missing.to_str().unwrap(), "--prompt", "hi"],
        &Opts::default(),
    );
    assert_refused(&o, 256 << 20, &["no such file"]);
    let junk = d.path().join("junk.gguf");
    std::fs::write(&junk, b"PK\x03\x04 not a gguf").unwrap();
    let o = run(
        bin(),
        &[junk.to_str().unwrap(), "--prompt", "hi"],
        &Opts::default(),
    );
    assert_refused(&o, 256 << 20, &["starts with \"PK\\x03\\x04\""]);
}

/// stdout closed early (`| head`): the run ends quietly, no panic.
#[test]
fn closed_stdout_ends_quietly() {
    use std::process::{Command, Stdio};
    let d = scratch();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, Surface::Native.model()).unwrap();
    for extra in [&[][..], &["--json"][..]] {
        let mut c = Command::new(bin());
        c.args([
            p.to_str().unwrap(),
            "--prompt-tokens",
            "3,4",
            "-n",
            "8",
            "--temp",
            "0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
    }
}

/// Chat input: a 10 MB line is refused without tokenizing it, an invalid UTF-8 line is
/// reported by number, and the chat goes on with the next line.
#[test]
fn chat_survives_huge_and_invalid_lines() {
    let d = scratch();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, Surface::Gemma3Llama.model()).unwrap();
    let mut input = vec![b'a'; 10 << 20];
    input.push(b'\n');
    input.extend_from_slice(b"bad \xff\xfe utf8\n");
    input.extend_from_slice(b"hello\n");
    let t = std::time::Instant::now();
    let o = run(
        bin(),
        &[
            p.to_str().unwrap(),
            "--chat",
            "-n",
            "2",
            "--temp",
            "0",
            "-c",
            "64",
            "-t",
            "1",
        ],
        &Opts {
            stdin: Some(input),
            ..Opts::default()
        },
    );
    assert_sane(&o, Surface::Gemma3Llama.bound() + (32 << 20));
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        o.stderr.contains("line 1: skipped: more than"),
        "{}",
        o.describe()
    );
    assert!(
        o.stderr
            .contains("line 2: skipped: not valid UTF-8 (at byte 4)"),
        "{}",
        o.describe()
    );
    // One reply: to "hello".
    assert_eq!(
        o.stdout.iter().filter(|&&b| b == b'\n').count(),
        1,
        "{}",
        o.describe()
    );
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
}

/// A prompt that cannot fit the context is refused before llama.cpp tokenizes it.
#[test]
fn huge_prompt_is_refused_before_tokenizing() {
    let d = scratch();
    let p = d.path().join("m.gguf");
    std::fs::write(&p, Surface::Gemma3Llama.model()).unwrap();
    let o = run(
        bin(),
        &[p.to_str().unwrap(), "-n", "1", "-c", "64"],
        &Opts {
            stdin: Some(vec![b'a'; 10 << 20]),
            ..Opts::default()
        },
    );
    assert_refused(
        &o,
        Surface::Gemma3Llama.bound() + (32 << 20),
        &["cannot fit the context"],
    );
}

/// The gpt2 export's tokenizer through llama.cpp's text path gives the native ids (no added
/// CLS/SEP when the vocabulary says add_bos_token = false).
#[test]
fn text_prompt_adds_special_tokens_only_when_the_model_asks() {
    // gpt2 synth: add_bos_token absent = llama.cpp's default for BPE (false).
    let d = scratch();
    let p = d.path().join("m.gguf");
    let bytes = set_key(
        Surface::Gemma3Llama.model(),
        "tokenizer.ggml.add_bos_token",
        MetaValue::Bool(false),
    );
    std::fs::write(&p, &bytes).unwrap();
    let ids = |p: &Path| -> Vec<u64> {
        let o = run(
            bin(),
            &[
                p.to_str().unwrap(),
                "--prompt",
                "hello",
                "-n",
                "0",
                "--json",
            ],
            &Opts::default(),
        );
        assert_eq!(o.code, Some(0), "{}", o.describe());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let without = ids(&p);
    std::fs::write(&p, Surface::Gemma3Llama.model()).unwrap();
    let with = ids(&p);
    // BOS (id 2) exactly when asked for.
    assert_eq!(with[0], 2);
    assert_eq!(&with[1..], &without[..]);
    assert_ne!(without.first(), Some(&2));
}

#[allow(dead_code)]
fn unused(_: PathBuf) {}
