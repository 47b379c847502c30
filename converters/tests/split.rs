//! Split GGUFs in the converter's tools and in the native engine: a split copy (written by
//! gguf-py's `GGUFWriter` with `split_max_tensors`, as llama.cpp's converter writes split files)
//! behaves exactly like the single file: `inspect` describes the same model, `quantize` writes
//! the same bytes, the native Jarvis engine computes the same logits.

mod common;
use common::root;
use jq::gguf::GgufModel;
use jq::models::jarvis::{Generator, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn jq_convert(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: std::process::Output) -> Vec<u8> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// The parts of `src` split by gguf-py, `max` tensors a part.
fn split(src: &Path, dir: &Path, max: usize) -> Vec<PathBuf> {
    let o = Command::new("python3")
        .arg(root().join("scripts/gguf_variants.py"))
        .arg("split")
        .arg(src)
        .arg(dir.join("part"))
        .args(["--max-tensors", &max.to_string()])
        .output()
        .unwrap();
    String::from_utf8(ok(o))
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn inspect_and_quantize_see_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("tiny.gguf");
    common::write_tiny_gpt2(&single);
    let parts = split(&single, dir.path(), 9);
    assert!(parts.len() >= 3, "{parts:?}");
    // inspect --json: the same metadata, and the same tensors in the same order.
    let j = |p: &Path| -> Value {
        serde_json::from_slice(&ok(jq_convert(&[
            os("inspect"),
            p.as_os_str(),
            os("--json"),
            os("--full"),
        ])))
        .unwrap()
    };
    let (a, b) = (j(&single), j(&parts[1]));
    assert_eq!(a["metadata"], b["metadata"]);
    let names = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].clone(), t["type"].clone(), t["shape"].clone()))
            .collect()
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(b["parts"].as_array().unwrap().len(), parts.len());
    // quantize: byte-identical outputs.
    for ty in ["q8_0", "f16"] {
        let (oa, ob) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        for (i, o) in [(&single, &oa), (&parts[0], &ob)] {
            ok(jq_convert(&[
                os("quantize"),
                i.as_os_str(),
                o.as_os_str(),
                os("--type"),
                os(ty),
            ]));
        }
        assert_eq!(
            std::fs::read(&oa).unwrap(),
            std::fs::read(&ob).unwrap(),
            "{ty}"
        );
    }
}

#[test]
fn the_native_engine_runs_a_split_jarvis() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("jarvis.gguf");
    ok(jq_convert(&[
        os("npz-to-gguf"),
        root()
            .join("fixtures/jarvis/tiny-norm/model.npz")
            .as_os_str(),
        os("--type"),
        os("q8_0"),
        os("-o"),
        single.as_os_str(),
    ]));
    let parts = split(&single, dir.path(), 7);
    assert!(parts.len() >= 2, "{parts:?}");
    let ids = [3u32, 22, 138, 8, 3];
    let logits = |p: &Path| {
        let f = GgufModel::open(p).unwrap();
        let m = Model::load(&f).unwrap();
        let mut g = Generator::new(&m);
        g.prompt(&ids, true, false).unwrap().0
    };
    let (a, b) = (logits(&single), logits(&parts[parts.len() - 1]));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
}
