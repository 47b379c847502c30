//! Split GGUFs (`NAME-00001-of-0000N.gguf`, written here by gguf-py's `GGUFWriter` with
//! `split_max_tensors` as llama.cpp's converter writes them; the C++ `gguf-split` tool is not in
//! the vendored source): a split copy behaves exactly like the single file in `jq-run` on
//! llama.cpp, in `--stream-layers` (plan and logits) and in the reader, whichever part is named;
//! a missing or mismatched part is a one-line error naming it.

mod common;
use common::{bit_differences, npy_f32, run_jq, stdout_ok};
use jq::gguf::{GgufFile, GgufModel};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gemma3/llama-cpp/tiny-causal-f32.gguf")
}

/// Splits `src` with gguf-py into `dir/PREFIX-0000i-of-0000n.gguf`; returns the parts in order.
pub fn split(
    src: &Path,
    dir: &Path,
    prefix: &str,
    max_tensors: usize,
    small_first: bool,
) -> Vec<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gguf_variants.py");
    let mut c = Command::new("python3");
    c.arg(&script)
        .arg("split")
        .arg(src)
        .arg(dir.join(prefix))
        .args(["--max-tensors", &max_tensors.to_string()]);
    if small_first {
        c.arg("--small-first-shard");
    }
    let o = c.output().expect("python3");
    assert!(
        o.status.success(),
        "gguf_variants.py split failed (run scripts/setup for gguf-py): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

const PROMPT: &str = "2,300,301,7,350,17,302,303";

fn dump(model: &Path, extra: &[&str], out: &Path) -> Vec<f32> {
    let mut a = vec![
        model.to_str().unwrap(),
        "--prompt-tokens",
        PROMPT,
        "-n",
        "0",
        "-t",
        "2",
        "-c",
        "64",
        "--dump-logits",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    stdout_ok(&run_jq(&a));
    npy_f32(out)
}

fn plan_json(model: &Path, budget: &str) -> Value {
    let out = stdout_ok(&run_jq(&[
        model.to_str().unwrap(),
        "--stream-layers",
        "-c",
        "64",
        "--plan-only",
        "--json",
        "--vram-budget",
        budget,
    ]));
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn a_split_fixture_runs_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let single = fixture();
    for (max, small_first) in [(30, true), (50, false)] {
        let parts = split(&single, dir.path(), &format!("fx{max}"), max, small_first);
        assert!(parts.len() >= 3, "{parts:?}");
        // The reader: one model, the same tensors and metadata (split keys aside).
        let m = GgufModel::open(&parts[1]).unwrap();
        let f = GgufFile::open(&single).unwrap();
        assert_eq!(m.parts().len(), parts.len());
        assert_eq!(m.path(), parts[0]);
        assert_eq!(m.n_tensors(), f.tensor_infos().len());
        if small_first {
            assert!(m.parts()[0].tensor_infos().is_empty());
        }
        for t in f.tensors() {
            let s = m.tensor(t.name()).unwrap();
            assert_eq!(
                (s.info.ty, &s.info.ne, s.data),
                (t.info.ty, &t.info.ne, t.data)
            );
        }
        let meta = |it: Vec<(String, String)>| it;
        assert_eq!(
            meta(
                m.metadata()
                    .map(|(k, v)| (k.to_string(), format!("{v:?}")))
                    .collect()
            ),
            meta(
                f.metadata()
                    .map(|(k, v)| (k.to_string(), format!("{v:?}")))
                    .collect()
            )
        );
        // jq-run through llama.cpp, naming the first part and a later one.
        let want = dump(&single, &[], &dir.path().join("single.npy"));
        for p in [&parts[0], &parts[2]] {
            let got = dump(p, &[], &dir.path().join("split.npy"));
            assert_eq!(bit_differences(&got, &want), 0, "{}", p.display());
        }
        // --stream-layers: the same plan, the same logits.
        let big = plan_json(&single, "1TiB");
        let layer = big["resident_bytes"].as_u64().unwrap() / 8;
        let budget = (big["device_bytes"].as_u64().unwrap()
            - big["resident_bytes"].as_u64().unwrap()
            + 3 * layer)
            .to_string();
        let (a, b) = (plan_json(&single, &budget), plan_json(&parts[1], &budget));
        for k in [
            "resident_layers",
            "streamed_layers",
            "device_bytes",
            "slot_bytes",
        ] {
            assert_eq!(a[k], b[k], "{k}");
        }
        assert!(!a["streamed_layers"].as_array().unwrap().is_empty(), "{a}");
        let stream = ["--stream-layers", "--vram-budget", &budget];
        let want_s = dump(&single, &stream, &dir.path().join("s1.npy"));
        let got_s = dump(&parts[0], &stream, &dir.path().join("s2.npy"));
        assert_eq!(bit_differences(&got_s, &want_s), 0);
        assert_eq!(bit_differences(&want_s, &want), 0, "streamed == llama.cpp");
        for p in &parts {
            std::fs::remove_file(p).unwrap();
        }
    }
}

fn one_line_error(args: &[&str], needles: &[&str]) {
    let o = run_jq(args);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    for n in needles {
        assert!(e.contains(n), "{e:?} lacks {n:?}");
    }
}

#[test]
fn a_missing_or_mismatched_part_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let parts = split(&fixture(), dir.path(), "fx", 40, false);
    assert_eq!(parts.len(), 3);
    let first = parts[0].to_str().unwrap();
    let third = parts[2].to_str().unwrap();
    // Part 2 swapped for part 3: its split.no says 2, not 1.
    let second = parts[1].with_extension("keep");
    std::fs::rename(&parts[1], &second).unwrap();
    std::fs::copy(&parts[2], &parts[1]).unwrap();
    let mid = parts[1].to_str().unwrap();
    for args in [
        vec![first, "--prompt-tokens", PROMPT, "-n", "0"],
        vec![first, "--stream-layers", "--plan-only"],
    ] {
        one_line_error(&args, &[mid, "split.no is 2, expected 1"]);
    }
    // Part 2 missing.
    std::fs::remove_file(&parts[1]).unwrap();
    for args in [
        vec![third, "--prompt-tokens", PROMPT, "-n", "0"],
        vec![first, "--stream-layers", "--plan-only"],
    ] {
        one_line_error(&args, &[mid, "part 2 of 3", "missing"]);
    }
    // A part renamed out of the pattern: it cannot say where the others are.
    std::fs::rename(&second, &parts[1]).unwrap();
    let odd = dir.path().join("renamed.gguf");
    std::fs::rename(&parts[0], &odd).unwrap();
    one_line_error(
        &[odd.to_str().unwrap(), "--prompt-tokens", PROMPT, "-n", "0"],
        &["renamed.gguf", "PREFIX-00001-of-00003.gguf"],
    );
}
