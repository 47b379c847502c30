//! Snapshot tests of `jq-convert inspect` (text and JSON) on a deterministic tiny model.

mod common;

use std::process::Command;

fn inspect(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("tiny.gguf");
    common::write_tiny_gpt2(&f32_path);
    let q4 = dir.path().join("tiny-q4_0.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .args([
            "quantize",
            f32_path.to_str().unwrap(),
            q4.to_str().unwrap(),
            "--type",
            "q4_0",
            "--pure",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let p = q4.to_str().unwrap();
    insta::assert_snapshot!("inspect_text", inspect(&[p]));
    insta::assert_snapshot!("inspect_json", inspect(&[p, "--json"]));

    let full = inspect(&[p, "--full"]);
    assert!(full.contains("\"t99\"]"), "--full prints every token");
    let summary = inspect(&[p]);
    assert!(summary.contains("... (100 items)"));

    let json: serde_json::Value = serde_json::from_str(&inspect(&[p, "--json", "--full"])).unwrap();
    assert_eq!(
        json["metadata"]["tokenizer.ggml.tokens"]["value"]
            .as_array()
            .unwrap()
            .len(),
        100
    );
    assert_eq!(json["tensors"][2]["type"], "F32");
    assert_eq!(json["tensors"][4]["shape"], serde_json::json!([64, 192]));
}
