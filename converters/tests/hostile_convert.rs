//! Every `jq-convert` subcommand fed hostile input, generated from the committed fixtures:
//! every numeric key of the Jarvis and Gemma-3 `config.json` at 0, 1, -1, 2^40 and 1e9; every
//! npz array's shape +-1 and swapped; NaN weights; npy headers that lie; zip members that claim
//! more than they hold; every way an output can name an input (same path, `./`, `a/../`,
//! symlink, hard link; `-o`, `--modelfile` against every input and each other); truncations;
//! SIGINT/SIGTERM/SIGKILL mid-write; a full disk. Each case asserts: no panic or signal (except
//! the ones sent), exit 0 or 1, one `jq-convert: error:` line naming the culprit, peak RSS
//! (wait4) bounded by a valid run's, and nothing changed or left in the directory.

mod common;
#[path = "../../tests/harness/mod.rs"]
mod harness;

use harness::{
    assert_ok_or_refused, assert_refused, assert_sane, assert_unchanged, run, snapshot, Opts,
    Outcome,
};
use serde_json::Value as Json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_jq-convert"))
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jq-hostile-conv-")
        .tempdir()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn go(args: &[&str], o: &Opts) -> Outcome {
    run(bin(), args, o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One generous bound for every conversion of these few-hundred-KB fixtures: a valid run of
/// each stays under 40 MiB here; the hostile inputs that used to allocate took GBs.
fn bound() -> u64 {
    static B: OnceLock<u64> = OnceLock::new();
    *B.get_or_init(|| {
        let d = scratch();
        let jar = d.path().join("j");
        copy_dir(&common::root().join("fixtures/jarvis/tiny-norm"), &jar);
        let g = d.path().join("g");
        copy_dir(&common::root().join("fixtures/gemma3/tiny-causal"), &g);
        let a = go(
            &[
                "npz-to-gguf",
                s(&jar.join("model.npz")),
                "--type",
                "q8_0",
                "-o",
                s(&d.path().join("a.gguf")),
            ],
            &Opts::default(),
        );
        let b = go(
            &[
                "hf-to-gguf",
                s(&g),
                "--type",
                "q8_0",
                "-o",
                s(&d.path().join("b.gguf")),
            ],
            &Opts::default(),
        );
        assert_eq!(a.code, Some(0), "{}", a.describe());
        assert_eq!(b.code, Some(0), "{}", b.describe());
        2 * a.max_rss.max(b.max_rss) + (64 << 20)
    })
}

/// Runs `args` in `dir`; the directory must be unchanged afterwards unless `ok` runs may write
/// `allowed` (then only that file may be new).
fn case(dir: &Path, args: &[&str], allowed: Option<&Path>, check: impl FnOnce(&Outcome)) {
    let before = snapshot(dir);
    let o = go(args, &Opts::default());
    assert_sane(&o, bound());
    assert!(
        !o.stderr.contains("Caused by"),
        "several-line error: {}",
        o.describe()
    );
    check(&o);
    if o.code == Some(0) {
        if let Some(a) = allowed {
            let _ = std::fs::remove_file(a);
        }
    }
    assert_unchanged(dir, &before, &o);
}

// ------------------------------------------------------------------ npz-to-gguf

fn jarvis_dir(d: &Path) -> PathBuf {
    let j = d.join("jarvis");
    copy_dir(&common::root().join("fixtures/jarvis/tiny-norm"), &j);
    j
}

fn edit_json(p: &Path, f: impl FnOnce(&mut serde_json::Map<String, Json>)) {
    let mut j: Json = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(j.as_object_mut().unwrap());
    std::fs::write(p, serde_json::to_string_pretty(&j).unwrap()).unwrap();
}

fn hostile_numbers() -> Vec<Json> {
    vec![
        Json::from(0),
        Json::from(1),
        Json::from(-1),
        Json::from(1u64 << 40),
        Json::from(1_000_000_000),
        Json::from(0.5),
        Json::from("12"),
    ]
}

#[test]
fn npz_every_config_number() {
    let keys = [
        "vocab_size",
        "d_model",
        "n_layers",
        "n_heads",
        "d_ff",
        "max_seq_len",
        "layer_norm_eps",
    ];
    for key in keys {
        for v in hostile_numbers() {
            let d = scratch();
            let j = jarvis_dir(d.path());
            edit_json(&j.join("config.json"), |o| {
                o.insert(key.into(), v.clone());
            });
            let out = j.join("out.gguf");
            case(
                d.path(),
                &[
                    "npz-to-gguf",
                    s(&j.join("model.npz")),
                    "--type",
                    "f32",
                    "-o",
                    s(&out),
                ],
                Some(&out),
                |o| {
                    assert_ok_or_refused(
                        o,
                        bound(),
                        &[
                            key,
                            "config.json",
                            "n_heads",
                            "layer_",
                            "from the configuration",
                        ],
                    )
                },
            );
        }
    }
}

/// An npz of `members` (name, npy bytes), deflated.
fn write_npz(p: &Path, members: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(p).unwrap();
    let mut z = zip::ZipWriter::new(f);
    for (name, bytes) in members {
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file(format!("{name}.npy"), o).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn npy(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let mut v = Vec::new();
    jq::npy::write_f32(&mut v, shape, data).unwrap();
    v
}

fn fixture_arrays() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let a = jq::npz::read(&common::root().join("fixtures/jarvis/tiny-norm/model.npz")).unwrap();
    a.into_iter().map(|(k, v)| (k, v.shape, v.data)).collect()
}

#[test]
fn npz_every_array_shape() {
    let arrays = fixture_arrays();
    for (i, (key, shape, _)) in arrays.iter().enumerate() {
        let mut shapes: Vec<Vec<usize>> = Vec::new();
        for k in 0..shape.len() {
            for delta in [1i64, -1] {
                let mut s2 = shape.clone();
                s2[k] = (s2[k] as i64 + delta) as usize;
                shapes.push(s2);
            }
        }
        if shape.len() == 2 && shape[0] != shape[1] {
            shapes.push(vec![shape[1], shape[0]]);
        }
        for sh in shapes {
            eprintln!("case: '{key}' as {sh:?}");
            let d = scratch();
            let j = jarvis_dir(d.path());
            let members: Vec<(String, Vec<u8>)> = arrays
                .iter()
                .enumerate()
                .map(|(m, (k, s0, data))| {
                    if m == i {
                        let n: usize = sh.iter().product();
                        let mut v = data.clone();
                        v.resize(n, 0.1);
                        (k.clone(), npy(&sh, &v))
                    } else {
                        (k.clone(), npy(s0, data))
                    }
                })
                .collect();
            write_npz(&j.join("model.npz"), &members);
            let out = j.join("out.gguf");
            // The embedding's rows set the vocabulary, compared with the tokenizer; a layer
            // array's first dimension may be read as d_model.
            case(
                d.path(),
                &[
                    "npz-to-gguf",
                    s(&j.join("model.npz")),
                    "--type",
                    "f32",
                    "-o",
                    s(&out),
                ],
                None,
                |o| assert_refused(o, bound(), &[key.as_str(), "tokenizer.json", "embedding"]),
            );
        }
    }
}

#[test]
fn npz_lies_nan_and_bombs() {
    let arrays = fixture_arrays();
    let run_with = |members: Vec<(String, Vec<u8>)>, culprits: &[&str]| {
        let d = scratch();
        let j = jarvis_dir(d.path());
        write_npz(&j.join("model.npz"), &members);
        let out = j.join("out.gguf");
        case(
            d.path(),
            &[
                "npz-to-gguf",
                s(&j.join("model.npz")),
                "--type",
                "f32",
                "-o",
                s(&out),
            ],
            None,
            |o| assert_refused(o, bound(), culprits),
        );
    };
    let base = || -> Vec<(String, Vec<u8>)> {
        arrays
            .iter()
            .map(|(k, sh, d)| (k.clone(), npy(sh, d)))
            .collect()
    };
    // A NaN: named with its array and index.
    let mut m = base();
    let (k, sh, data) = &arrays[3];
    let mut bad = data.clone();
    bad[7] = f32::NAN;
    m[3] = (k.clone(), npy(sh, &bad));
    run_with(m, &[&format!("'{k}' holds NaN at flat index 7")]);
    // A header with 'descr' twice (numpy would use the last).
    let mut m = base();
    let (k, _, _) = &arrays[0];
    let h = "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (339, 64), }";
    let mut raw = b"\x93NUMPY\x01\x00".to_vec();
    raw.extend_from_slice(&(h.len() as u16).to_le_bytes());
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&vec![0u8; 339 * 64 * 4]);
    m[0] = (k.clone(), raw);
    run_with(m, &["'descr' twice"]);
    // A zip bomb under an unexpected name: 256 MiB of zeros deflate to ~256 KiB and must be
    // refused before it is decompressed (the RSS bound would catch it).
    let mut m = base();
    m.push(("bomb".into(), npy(&[64 << 20], &vec![0.0; 64 << 20])));
    run_with(m, &["bomb"]);
    // A header claiming far more than the member holds.
    let mut m = base();
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1073741824,), }";
    let mut raw = b"\x93NUMPY\x01\x00".to_vec();
    raw.extend_from_slice(&(h.len() as u16).to_le_bytes());
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[0u8; 64]);
    m[1] = (arrays[1].0.clone(), raw);
    run_with(m, &[&arrays[1].0]);
    // Truncated archives.
    let full = std::fs::read(common::root().join("fixtures/jarvis/tiny-norm/model.npz")).unwrap();
    for cut in [0, 10, 100, full.len() / 2, full.len() - 1] {
        let d = scratch();
        let j = jarvis_dir(d.path());
        std::fs::write(j.join("model.npz"), &full[..cut]).unwrap();
        let out = j.join("out.gguf");
        case(
            d.path(),
            &[
                "npz-to-gguf",
                s(&j.join("model.npz")),
                "--type",
                "f32",
                "-o",
                s(&out),
            ],
            None,
            |o| assert_refused(o, bound(), &["model.npz"]),
        );
    }
}

#[test]
fn npz_issue_examples() {
    // n_layers 1e9 built every expected key name (4 GB) before comparing.
    // max_seq_len 2^40 was written as context 0.
    for (key, v, culprit) in [
        ("n_layers", Json::from(1_000_000_000), "1000000000 layers"),
        ("max_seq_len", Json::from(1u64 << 40), "max_seq_len"),
    ] {
        let d = scratch();
        let j = jarvis_dir(d.path());
        edit_json(&j.join("config.json"), |o| {
            o.insert(key.into(), v);
        });
        let out = j.join("out.gguf");
        case(
            d.path(),
            &[
                "npz-to-gguf",
                s(&j.join("model.npz")),
                "--type",
                "f32",
                "-o",
                s(&out),
            ],
            None,
            |o| assert_refused(o, bound(), &[culprit]),
        );
    }
    for bad in [
        "[1, 2]",
        "{\"a\": 1, \"b\": 1}",
        "{\"a\": 0, \"b\": 5}",
        "{\"a\": -1}",
        "not json",
    ] {
        let d = scratch();
        let j = jarvis_dir(d.path());
        std::fs::write(j.join("tokenizer.json"), bad).unwrap();
        let out = j.join("out.gguf");
        case(
            d.path(),
            &[
                "npz-to-gguf",
                s(&j.join("model.npz")),
                "--type",
                "f32",
                "-o",
                s(&out),
            ],
            None,
            |o| assert_refused(o, bound(), &["tokenizer.json"]),
        );
    }
}

// ------------------------------------------------------------------ hf-to-gguf

fn gemma_dir(d: &Path) -> PathBuf {
    let g = d.join("gemma");
    copy_dir(&common::root().join("fixtures/gemma3/tiny-causal"), &g);
    g
}

#[test]
fn hf_every_config_number() {
    let keys = [
        "head_dim",
        "hidden_size",
        "intermediate_size",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "query_pre_attn_scalar",
        "rms_norm_eps",
        "sliding_window",
        "vocab_size",
        "final_logit_softcapping",
    ];
    for key in keys {
        for v in hostile_numbers() {
            let d = scratch();
            let g = gemma_dir(d.path());
            edit_json(&g.join("config.json"), |o| {
                o.insert(key.into(), v.clone());
            });
            let out = d.path().join("out.gguf");
            case(
                d.path(),
                &["hf-to-gguf", s(&g), "--type", "f32", "-o", s(&out)],
                Some(&out),
                |o| assert_ok_or_refused(o, bound(), &[key, "config.json", "layer_types"]),
            );
        }
    }
}

/// A safetensors file of F32 tensors (name, shape, values).
fn write_safetensors(p: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (n, sh, v) in tensors {
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": "F32", "shape": sh, "data_offsets": [off, off + v.len() * 4]}),
        );
        off += v.len() * 4;
    }
    let h = serde_json::to_vec(&Json::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, v) in tensors {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(p, out).unwrap();
}

#[test]
fn hf_issue_examples() {
    // rope_parameters that are not an object dropped the linear scaling silently.
    let d = scratch();
    let g = gemma_dir(d.path());
    edit_json(&g.join("config.json"), |o| {
        o.insert("rope_parameters".into(), Json::from("nope"));
    });
    let out = d.path().join("out.gguf");
    case(
        d.path(),
        &["hf-to-gguf", s(&g), "--type", "f32", "-o", s(&out)],
        None,
        |o| assert_refused(o, bound(), &["'rope_parameters' must be an object"]),
    );
    // The config file instead of the directory.
    let d = scratch();
    let g = gemma_dir(d.path());
    case(
        d.path(),
        &[
            "hf-to-gguf",
            s(&g.join("config.json")),
            "--type",
            "f32",
            "-o",
            s(&d.path().join("o.gguf")),
        ],
        None,
        |o| {
            assert_refused(
                o,
                bound(),
                &["is a file: hf-to-gguf takes the checkpoint directory"],
            )
        },
    );
    // NaN weights: named with the tensor and the first bad index. Shard 1 rewritten in F32.
    let d = scratch();
    let g = gemma_dir(d.path());
    let shard = g.join("model-00001-of-00004.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .iter()
        .map(|(n, v)| {
            let vals: Vec<f32> = match v.dtype() {
                safetensors::Dtype::BF16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                    .collect(),
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                other => panic!("{other:?}"),
            };
            (n.to_string(), v.shape().to_vec(), vals)
        })
        .collect();
    ts.sort_by(|a, b| a.0.cmp(&b.0));
    let victim = ts.iter().position(|t| t.1.len() == 2).unwrap();
    ts[victim].2[5] = f32::NAN;
    let name = ts[victim].0.clone();
    write_safetensors(&shard, &ts);
    let out = d.path().join("out.gguf");
    case(
        d.path(),
        &["hf-to-gguf", s(&g), "--type", "q8_0", "-o", s(&out)],
        None,
        |o| {
            assert_refused(
                o,
                bound(),
                &[&format!(
                    "tensor '{name}' holds a NaN or infinite value at flat index 5"
                )],
            )
        },
    );
    // A truncated shard, and an index naming a shard that is not there.
    for cut in [0usize, 7, 100, 5000] {
        let d = scratch();
        let g = gemma_dir(d.path());
        let shard = g.join("model-00002-of-00004.safetensors");
        let b = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &b[..cut.min(b.len())]).unwrap();
        let out = d.path().join("out.gguf");
        case(
            d.path(),
            &["hf-to-gguf", s(&g), "--type", "f32", "-o", s(&out)],
            None,
            |o| assert_refused(o, bound(), &["model-00002-of-00004.safetensors"]),
        );
    }
    let d = scratch();
    let g = gemma_dir(d.path());
    std::fs::remove_file(g.join("model-00003-of-00004.safetensors")).unwrap();
    let out = d.path().join("out.gguf");
    case(
        d.path(),
        &["hf-to-gguf", s(&g), "--type", "f32", "-o", s(&out)],
        None,
        |o| assert_refused(o, bound(), &["missing shard"]),
    );
}

// ------------------------------------------------------------------ outputs naming inputs

/// Every way to spell `target` from `dir`: the path, `./x` and `sub/../x` (run in `dir`), a
/// symlink and a hard link.
fn aliases(dir: &Path, target: &Path) -> Vec<(String, PathBuf)> {
    let name = target
        .strip_prefix(dir)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let link = dir.join(format!("link-{}", name.replace('/', "_")));
    let _ = std::os::unix::fs::symlink(target, &link);
    let hard = dir.join(format!("hard-{}", name.replace('/', "_")));
    let _ = std::fs::hard_link(target, &hard);
    vec![
        (s(target).to_string(), dir.to_path_buf()),
        (format!("./{name}"), dir.to_path_buf()),
        (format!("sub/../{name}"), dir.to_path_buf()),
        (s(&link).to_string(), dir.to_path_buf()),
        (s(&hard).to_string(), dir.to_path_buf()),
    ]
}

fn refused_in(dir: &Path, args: &[&str], culprits: &[&str]) {
    let before = snapshot(dir);
    let o = go(
        args,
        &Opts {
            cwd: Some(dir.to_path_buf()),
            ..Opts::default()
        },
    );
    assert_refused(&o, bound(), culprits);
    assert!(
        o.error_line().unwrap().contains("is the same file as"),
        "{}",
        o.describe()
    );
    assert_unchanged(dir, &before, &o);
}

#[test]
fn outputs_never_overwrite_inputs() {
    // quantize X X.
    let d = scratch();
    let gguf = d.path().join("m.gguf");
    common::write_tiny_gpt2(&gguf);
    for (alias, cwd) in aliases(d.path(), &gguf) {
        refused_in(
            &cwd,
            &["quantize", s(&gguf), &alias, "--type", "q8_0"],
            &["the output"],
        );
    }
    // npz-to-gguf: -o and --modelfile against the npz, config.json and tokenizer.json, and
    // against each other.
    let d = scratch();
    let j = jarvis_dir(d.path());
    let npz = j.join("model.npz");
    for input in ["model.npz", "config.json", "tokenizer.json"] {
        for (alias, cwd) in aliases(d.path(), &j.join(input)) {
            refused_in(
                &cwd,
                &["npz-to-gguf", s(&npz), "--type", "f32", "-o", &alias],
                &["-o"],
            );
            refused_in(
                &cwd,
                &[
                    "npz-to-gguf",
                    s(&npz),
                    "--type",
                    "f32",
                    "--target",
                    "ollama",
                    "-o",
                    s(&d.path().join("x.gguf")),
                    "--modelfile",
                    &alias,
                ],
                &["--modelfile"],
            );
        }
    }
    let same = s(&d.path().join("same")).to_string();
    refused_in(
        d.path(),
        &[
            "npz-to-gguf",
            s(&npz),
            "--type",
            "f32",
            "--target",
            "ollama",
            "-o",
            &same,
            "--modelfile",
            "./same",
        ],
        &["--modelfile"],
    );
    // hf-to-gguf: -o and --modelfile against config.json, a shard and the index.
    let d = scratch();
    let g = gemma_dir(d.path());
    for input in [
        "config.json",
        "model-00002-of-00004.safetensors",
        "model.safetensors.index.json",
        "tokenizer.model",
    ] {
        for (alias, cwd) in aliases(d.path(), &g.join(input)) {
            refused_in(
                &cwd,
                &["hf-to-gguf", s(&g), "--type", "f32", "-o", &alias],
                &["-o"],
            );
            refused_in(
                &cwd,
                &[
                    "hf-to-gguf",
                    s(&g),
                    "--type",
                    "f32",
                    "-o",
                    s(&d.path().join("x.gguf")),
                    "--modelfile",
                    &alias,
                ],
                &["--modelfile"],
            );
        }
    }
}

#[test]
fn modelfile_is_checked_before_anything_is_written() {
    let d = scratch();
    let j = jarvis_dir(d.path());
    let npz = j.join("model.npz");
    let out = d.path().join("x.gguf");
    let mf = d.path().join("Modelfile");
    // Values that used to fail as an "internal error" after the GGUF was written now round-trip.
    for system in ["ends with quote\"", "has \"\"\" inside", "\"leading quote"] {
        let o = go(
            &[
                "npz-to-gguf",
                s(&npz),
                "--type",
                "f32",
                "--target",
                "ollama",
                "-o",
                s(&out),
                "--modelfile",
                s(&mf),
                "--system",
                system,
            ],
            &Opts::default(),
        );
        assert_eq!(o.code, Some(0), "{}", o.describe());
        let text = std::fs::read_to_string(&mf).unwrap();
        let ins = jq_convert_modelfile_parse(&text);
        assert!(
            ins.iter().any(|(n, a)| n == "system" && a == system),
            "{system:?} in {text}"
        );
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&mf).unwrap();
    }
    // A value Ollama cannot read back: refused naming --system, and no GGUF written.
    case(
        d.path(),
        &[
            "npz-to-gguf",
            s(&npz),
            "--type",
            "f32",
            "--target",
            "ollama",
            "-o",
            s(&out),
            "--modelfile",
            s(&mf),
            "--system",
            "bell\u{7}",
        ],
        None,
        |o| assert_refused(o, bound(), &["--system"]),
    );
    // An unwritable Modelfile location: refused before converting (no GGUF left).
    let nowhere = d.path().join("no/such/dir/Modelfile");
    case(
        d.path(),
        &[
            "npz-to-gguf",
            s(&npz),
            "--type",
            "f32",
            "--target",
            "ollama",
            "-o",
            s(&out),
            "--modelfile",
            s(&nowhere),
        ],
        None,
        |o| assert_refused(o, bound(), &["no/such/dir"]),
    );
    let g = gemma_dir(d.path());
    case(
        d.path(),
        &[
            "hf-to-gguf",
            s(&g),
            "--type",
            "f32",
            "-o",
            s(&out),
            "--modelfile",
            s(&nowhere),
        ],
        None,
        |o| assert_refused(o, bound(), &["no/such/dir"]),
    );
}

/// Ollama's reading of a Modelfile, from the converter's parser (re-implemented there from
/// Ollama's state machine; the unit tests in `modelfile.rs` pin it). Here only the SYSTEM value
/// matters: the first line after `SYSTEM ` up to the closing quote form.
fn jq_convert_modelfile_parse(text: &str) -> Vec<(String, String)> {
    let at = text.find("SYSTEM ").expect("a SYSTEM line");
    let rest = &text[at + 7..];
    let v = if let Some(r) = rest.strip_prefix("\"\"\"") {
        // Closed by the """ that ends a line.
        let end = r.find("\"\"\"\n").unwrap();
        r[..end].to_string()
    } else if let Some(r) = rest.strip_prefix('"') {
        r[..r.find("\"\n").unwrap()].to_string()
    } else {
        rest[..rest.find('\n').unwrap()].to_string()
    };
    vec![("system".into(), v)]
}

// ------------------------------------------------------------------ inspect

#[test]
fn inspect_hostile_files_and_closed_stdout() {
    use std::process::{Command, Stdio};
    let d = scratch();
    let gguf = d.path().join("m.gguf");
    common::write_tiny_gpt2(&gguf);
    let full = std::fs::read(&gguf).unwrap();
    for cut in [0, 3, 8, 24, 200, full.len() / 2, full.len() - 1] {
        let p = d.path().join("cut.gguf");
        std::fs::write(&p, &full[..cut]).unwrap();
        case(d.path(), &["inspect", s(&p)], None, |o| {
            assert_refused(o, bound(), &["cut.gguf"])
        });
        std::fs::remove_file(&p).unwrap();
    }
    case(d.path(), &["inspect", s(d.path())], None, |o| {
        assert_refused(o, bound(), &["is a directory"])
    });
    // `inspect --json | head`: a closed stdout ends quietly with status 0.
    for args in [
        &["inspect", s(&gguf), "--json", "--full"][..],
        &["inspect", s(&gguf), "--full"][..],
    ] {
        let mut child = Command::new(bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

// ------------------------------------------------------------------ signals and full disks

/// A GPT-2 shaped GGUF big enough that quantizing it takes a while (~48 MB of F32).
fn big_gguf(p: &Path) {
    let d = jq::synth::Gpt2Dims {
        n_embd: 1024,
        n_ff: 4096,
        n_vocab: 2048,
        n_ctx: 64,
        n_layer: 2,
        n_head: 8,
    };
    jq::synth::write_gpt2(p, d, false).unwrap();
}

fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// Starts `quantize` and stops it (SIGSTOP) as soon as its temporary file exists, so the
/// signal under test lands mid-write whatever the machine's speed. Returns the child's pid.
fn quantize_stopped_mid_write(input: &Path, out: &Path) -> Option<std::process::Child> {
    use std::process::{Command, Stdio};
    let dir = out.parent().unwrap();
    let mut child = Command::new(bin())
        .args(["quantize", s(input), s(out), "--type", "q4_0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        out.file_name().unwrap().to_str().unwrap(),
        child.id()
    ));
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(30) {
        if tmp.exists() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
            return Some(child);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn signals_mid_write_leave_no_temporary_file() {
    let d = scratch();
    let input = d.path().join("big.gguf");
    big_gguf(&input);
    let out = d.path().join("out.gguf");
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let child =
            quantize_stopped_mid_write(&input, &out).expect("the temporary file never appeared");
        assert_eq!(temps(d.path()).len(), 1);
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, sig);
            libc::kill(child.id() as i32, libc::SIGCONT);
        }
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(temps(d.path()).is_empty(), "{:?}", temps(d.path()));
        assert!(!out.exists());
    }
    // SIGKILL cannot be handled: the temporary file stays, and the next run removes it.
    let child =
        quantize_stopped_mid_write(&input, &out).expect("the temporary file never appeared");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&o.status),
        Some(libc::SIGKILL)
    );
    assert_eq!(temps(d.path()).len(), 1);
    // A live writer's file (a name with our own pid, locked) must survive that cleanup.
    let live = d
        .path()
        .join(format!(".out.gguf.{}.tmp", std::process::id()));
    std::fs::write(&live, b"busy").unwrap();
    let o = go(
        &["quantize", s(&input), s(&out), "--type", "q8_0"],
        &Opts::default(),
    );
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert_eq!(
        temps(d.path()),
        vec![live.file_name().unwrap().to_str().unwrap().to_string()]
    );
    assert!(jq::gguf::GgufFile::open(&out).is_ok());
}

#[test]
fn full_disk_leaves_nothing() {
    let d = scratch();
    let input = d.path().join("m.gguf");
    common::write_tiny_gpt2(&input);
    let j = jarvis_dir(d.path());
    let g = gemma_dir(d.path());
    let out = d.path().join("out.gguf");
    for args in [
        vec!["quantize", s(&input), s(&out), "--type", "q8_0"],
        vec![
            "npz-to-gguf",
            s(&j.join("model.npz")),
            "--type",
            "f32",
            "-o",
            s(&out),
        ],
        vec!["hf-to-gguf", s(&g), "--type", "f32", "-o", s(&out)],
    ] {
        let before = snapshot(d.path());
        let o = go(
            &args,
            &Opts {
                fsize_limit: Some(64 << 10),
                ..Opts::default()
            },
        );
        assert_refused(&o, bound(), &["out.gguf"]);
        assert_unchanged(d.path(), &before, &o);
    }
}
