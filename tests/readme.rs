//! The README's two commands, from a clean clone.
//!
//! 1. The README names exactly `bash scripts/demo` and `bash scripts/test`, and `.ci/run` runs
//!    the second (CI itself is that command on a fresh clone, so it is exercised every run).
//! 2. `bash scripts/demo` runs in a fresh `git clone` of this repository's HEAD with this
//!    build's binaries (`JQ_PREBUILT`; building llama.cpp a second time in a test would double
//!    CI time): every step succeeds, and the Modelfile it regenerates in the clone is the
//!    committed one byte for byte.
//!
//! Skipped with a visible failure, not silently: when this is not a git checkout the test fails
//! with a message saying so.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn readme_names_the_two_commands_and_ci_runs_the_test_one() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("## Two commands on a new machine")
        .expect("section");
    let block = &readme[start..];
    let code = &block[block.find("```sh").unwrap() + 5..];
    let code = &code[..code.find("```").unwrap()];
    let cmds: Vec<&str> = code
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(cmds, ["bash scripts/demo", "bash scripts/test"]);
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(last.trim(), "exec bash scripts/test");
    let test = std::fs::read_to_string(root().join("scripts/test")).unwrap();
    assert!(test.contains("cargo test --release --workspace"), "{test}");
}

#[test]
fn demo_runs_from_a_clean_clone() {
    assert!(
        root().join(".git").exists(),
        "{} is not a git checkout: this test clones it",
        root().display()
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_jq-run")).parent().unwrap();
    assert!(
        bin.join("jq-convert").exists(),
        "{} has no jq-convert: build the workspace (cargo test --release --workspace does)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("clone");
    let st = Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(root())
        .arg(&clone)
        .status()
        .unwrap();
    assert!(st.success(), "git clone failed");
    let o = Command::new("bash")
        .arg("scripts/demo")
        .current_dir(&clone)
        .env("JQ_PREBUILT", bin)
        .env("OUT_DIR", dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "scripts/demo failed:\n{err}\n{out}");
    for step in [
        "== Jarvis: npz -> GGUF",
        "== Jarvis for Ollama",
        "== GGUF core: re-quantize",
        "== Gemma-3 (tiny, random weights) through llama.cpp",
    ] {
        assert!(err.contains(step), "step {step:?} missing:\n{err}");
    }
    // The native run printed the metrics table and the timing report.
    assert!(err.contains("quantum metrics of the prompt pass"), "{err}");
    assert!(err.contains("decode "), "{err}");
    // The regenerated Modelfile is the committed one (the clone's is from git, the demo
    // rewrote it).
    let committed = std::fs::read(root().join("Modelfile")).unwrap();
    let regenerated = std::fs::read(clone.join("Modelfile")).unwrap();
    assert_eq!(
        regenerated, committed,
        "the demo's Modelfile differs from the committed one"
    );
    assert!(clone.join("jarvis-tiny-q8_0.gguf").exists());
    // inspect's summary of the Q4_0 re-quantization reached stdout (file type 2 = Q4_0).
    assert!(out.contains("GGUF v3"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("general.file_type") && l.trim_end().ends_with("= 2")),
        "{out}"
    );
}
