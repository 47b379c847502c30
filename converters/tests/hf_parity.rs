//! `hf-to-gguf` where real checkpoints used to differ from llama.cpp's converter (issue 14,
//! item 6), on a copy of the committed tiny Gemma-3 with:
//! - a model card (fixtures/model_card/README.md): the `general.*` keys must equal what gguf-py's
//!   own metadata code writes for it (fixtures/model_card/expected.json, made by
//!   fixtures/model_card/make_reference.py with gguf-py);
//! - a -0.0 weight: kept as -0.0 in f32 and f16 outputs (numpy's astype, which the converter
//!   uses, keeps the sign);
//! - non-special added tokens `<unused0>` and full-width `<｜tool｜>`: CONTROL (3), as
//!   gguf-py's `does_token_look_special` makes them.

mod common;

use jq::gguf::{GgufFile, MetaValue, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Sets the first element of a BF16 tensor in a safetensors shard to -0.0.
fn negative_zero(shard: &Path, tensor: &str) {
    let mut b = std::fs::read(shard).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Json = serde_json::from_slice(&b[8..8 + n]).unwrap();
    assert_eq!(h[tensor]["dtype"], "BF16");
    let at = 8 + n + h[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    b[at..at + 2].copy_from_slice(&0x8000u16.to_le_bytes());
    std::fs::write(shard, b).unwrap();
}

fn checkpoint(dir: &Path) -> PathBuf {
    let ck = dir.join("gemma-ck");
    copy_dir(&common::root().join("fixtures/gemma3/tiny-causal"), &ck);
    std::fs::copy(
        common::root().join("fixtures/model_card/README.md"),
        ck.join("README.md"),
    )
    .unwrap();
    negative_zero(
        &ck.join("model-00001-of-00004.safetensors"),
        "model.layers.0.mlp.up_proj.weight",
    );
    let p = ck.join("tokenizer_config.json");
    let mut c: Json = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let dec = c["added_tokens_decoder"].as_object_mut().unwrap();
    for (id, content) in [
        ("7", "<unused0>"),
        ("8", "<\u{ff5c}tool\u{ff5c}>"),
        ("9", "<plain>"),
    ] {
        dec.insert(
            id.into(),
            serde_json::json!({"content": content, "special": false}),
        );
    }
    std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
    ck
}

fn convert(ck: &Path, ty: &str, out: &Path) -> GgufFile {
    let o = Command::new(env!("CARGO_BIN_EXE_jq-convert"))
        .arg("hf-to-gguf")
        .arg(ck)
        .args(["--type", ty, "-o"])
        .arg(out)
        .output()
        .unwrap();
    common::stdout_ok_as(&o, "jq-convert hf-to-gguf");
    GgufFile::open(out).unwrap()
}

fn as_json(v: Value<'_>) -> Json {
    match v.to_owned_value() {
        MetaValue::String(s) => Json::String(String::from_utf8(s).unwrap()),
        MetaValue::U32(x) => Json::from(x),
        MetaValue::Array { items, .. } => Json::Array(
            items
                .into_iter()
                .map(|i| match i {
                    MetaValue::String(s) => Json::String(String::from_utf8(s).unwrap()),
                    other => panic!("unexpected array item {other:?}"),
                })
                .collect(),
        ),
        other => panic!("unexpected value {other:?}"),
    }
}

#[test]
fn model_card_negative_zero_and_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint(dir.path());
    let want: serde_json::Map<String, Json> = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("fixtures/model_card/expected.json")).unwrap(),
    )
    .unwrap();
    assert!(want.len() > 15);
    let f32_file = convert(&ck, "f32", &dir.path().join("o-f32.gguf"));
    for (k, v) in &want {
        let got = f32_file
            .get(k)
            .unwrap_or_else(|| panic!("metadata '{k}' missing"));
        assert_eq!(&as_json(got), v, "metadata '{k}'");
    }
    // Nothing from the card that gguf-py would not write.
    let prefixes = [
        "general.license",
        "general.tags",
        "general.languages",
        "general.base_model.",
        "general.dataset.",
        "general.author",
        "general.description",
        "general.source.",
    ];
    for (k, _) in f32_file.metadata() {
        if prefixes.iter().any(|p| k.starts_with(p)) {
            assert!(want.contains_key(k), "extra metadata '{k}'");
        }
    }
    // -0.0 survives the f32 and f16 outputs.
    let t = f32_file.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(t.data[..4], 0x8000_0000u32.to_le_bytes());
    let f16_file = convert(&ck, "f16", &dir.path().join("o-f16.gguf"));
    let t = f16_file.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(t.data[..2], 0x8000u16.to_le_bytes());
    // Token types: the two look-special patterns are CONTROL, a plain added token USER_DEFINED.
    let types = f32_file.get_array("tokenizer.ggml.token_type").unwrap();
    let tokens = f32_file.get_array("tokenizer.ggml.tokens").unwrap();
    for (id, text, ty) in [
        (7u64, "<unused0>", 3u64),
        (8, "<\u{ff5c}tool\u{ff5c}>", 3),
        (9, "<plain>", 4),
    ] {
        assert_eq!(types.get(id).unwrap().as_u64(), Some(ty), "type of {text}");
        assert_eq!(tokens.get(id).unwrap().as_str(), Some(text));
    }
}

/// The name keys of a checkpoint without a card, from its directory name and config.json's
/// `_name_or_path`, against gguf-py itself (installed by scripts/setup): `Metadata.load` on the
/// same directory, then convert_hf_to_gguf.py's two fallbacks (the directory name for a missing
/// name, `gguf.size_label` of the parameter count for a missing size label), the keys taken
/// from a GGUFWriter after `set_gguf_meta_model`.
#[test]
fn name_keys_from_directory_and_name_or_path_as_gguf_py() {
    const KEYS: [&str; 6] = [
        "general.name",
        "general.organization",
        "general.basename",
        "general.finetune",
        "general.version",
        "general.size_label",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, Option<&str>); 6] = [
        ("gemma-3-270m-it", None),
        ("Qwen2.5-7B-Instruct-v0.3", None),
        ("ck", Some("google/gemma-3-1b-pt")),
        ("ck2", Some("/home/someone/models/gemma-3-4b-it")),
        ("tiny-causal-q4_k", Some("meta-llama/Llama-3.1-8B-Instruct")),
        ("model", Some("Some Model Name")),
    ];
    for (i, (dir_name, name_or_path)) in cases.into_iter().enumerate() {
        let ck = tmp.path().join(format!("{i}")).join(dir_name);
        copy_dir(&common::root().join("fixtures/gemma3/tiny-causal"), &ck);
        if let Some(id) = name_or_path {
            let p = ck.join("config.json");
            let mut c: Json = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            c["_name_or_path"] = Json::String(id.into());
            std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
        }
        let ours = convert(&ck, "f32", &tmp.path().join(format!("{i}.gguf")));
        let params: u64 = ours
            .tensors()
            .map(|t| t.info.ne.iter().product::<u64>())
            .sum();
        let code = format!(
            "import json, gguf\n\
             from pathlib import Path\n\
             from gguf.metadata import Metadata\n\
             d = Path({dir:?}); p = {params}\n\
             m = Metadata.load(None, d, None, p)\n\
             if m.name is None: m.name = d.name\n\
             if m.size_label is None and p > 0: m.size_label = gguf.size_label(p, p, 0, 0)\n\
             w = gguf.GGUFWriter(None, arch='gemma3')\n\
             m.set_gguf_meta_model(w)\n\
             keys = {keys:?}\n\
             print(json.dumps({{k: v.value for k, v in w.kv_data[0].items() if k in keys}}))\n",
            dir = ck.to_str().unwrap(),
            keys = KEYS,
        );
        let py = Command::new("python3")
            .args(["-c", &code])
            .output()
            .unwrap();
        let want: serde_json::Map<String, Json> =
            serde_json::from_slice(&common::stdout_ok_as(&py, "python3")).unwrap();
        assert!(want.contains_key("general.name"), "{dir_name}: {want:?}");
        for k in KEYS {
            let got = ours.get(k).map(as_json);
            assert_eq!(
                got.as_ref(),
                want.get(k),
                "{dir_name} / {name_or_path:?}: {k}"
            );
        }
    }
}
