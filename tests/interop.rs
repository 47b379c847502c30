//! Interoperability with the two other GGUF implementations that matter:
//!
//! 1. files written by `jq::gguf::GgufWriter` are read identically by ggml's own reader
//!    (`gguf_init_from_file`, through `jq::ggml::read_gguf`) and by gguf-py's `GGUFReader`
//!    (through `fixtures/interop/dump_gguf.py`);
//! 2. the file gguf-py's `GGUFWriter` wrote (`fixtures/interop/gguf_py_unusual.gguf`, made by
//!    `fixtures/interop/make_gguf_py.py`) is read by us exactly as the values that went in
//!    (`gguf_py_unusual.json`) and as gguf-py reads it back; its Q8_0/Q4_0/F16/BF16 tensors
//!    are gguf-py's encodings of its F32 tensor, which are compared with ggml's and ours.
//!
//! "Identically" is bit-exact: floats are compared by their bits (NaN payloads, -0.0), strings
//! by their raw bytes, tensors by the sha256 of their bytes. Both sides are turned into the
//! same JSON description (the format is documented in `dump_gguf.py`) and compared entry by
//! entry, so a failure names the key or tensor that differs.
//!
//! Needs `python3` with `numpy` and `gguf`: without them these tests fail (run scripts/setup).
//!
//! Known differences, asserted below so that a change is noticed:
//! - ggml refuses any file holding an array of arrays; gguf-py writes and reads them, and so
//!   do we (reading always, writing with `allow_nested_arrays`).
//! - `read_gguf` gets strings from ggml as C strings, so it cannot see past an embedded NUL;
//!   the ggml comparison cuts our strings at the first NUL (the bytes after it are checked
//!   against gguf-py).
//! - With no tensors there is no data section: ggml and we put its offset at the end of the
//!   header, gguf-py (0.19) pads it to the alignment anyway.
//! - Q4_0 of a block whose largest magnitude is 0 (all zeros): ggml (and we) store the scale
//!   -0.0 (0x8000) whatever the signs of the zeros; gguf-py stores the sign opposite to its
//!   first element's, so +0.0 (0x0000) when the block starts with -0.0. Decoded values are
//!   the same (all zeros).

use jq::ggml;
use jq::gguf::{GgufError, GgufFile, GgufWriter, MetaValue, ValueType};
use jq::quant::{self, GgmlType};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/interop")
}

// ---------------------------------------------------------------------------------------------
// Python

/// Fails (never skips) when python3, numpy or gguf-py is missing.
fn check_python() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let res = CHECKED.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import numpy, gguf"])
            .output()
            .map_err(|e| format!("cannot run python3 ({e})"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "python3 cannot import numpy and gguf:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = res {
        panic!(
            "{e}\nThe interop tests need python3 with the numpy and gguf (gguf-py) packages: \
             run scripts/setup (or `python3 -m pip install numpy gguf`)."
        );
    }
}

/// gguf-py's view of `path`, from `fixtures/interop/dump_gguf.py`.
fn dump_with_gguf_py(path: &Path) -> Json {
    check_python();
    let script = fixtures().join("dump_gguf.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{} {} failed:\n{}",
        script.display(),
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dump_gguf.py prints JSON")
}

// ---------------------------------------------------------------------------------------------
// The shared description

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// A value as `dump_gguf.py` describes it.
fn value_json(v: &MetaValue) -> Json {
    let t = v.value_type().name();
    match v {
        MetaValue::U8(x) => json!({"type": t, "value": x}),
        MetaValue::I8(x) => json!({"type": t, "value": x}),
        MetaValue::U16(x) => json!({"type": t, "value": x}),
        MetaValue::I16(x) => json!({"type": t, "value": x}),
        MetaValue::U32(x) => json!({"type": t, "value": x}),
        MetaValue::I32(x) => json!({"type": t, "value": x}),
        MetaValue::U64(x) => json!({"type": t, "value": x}),
        MetaValue::I64(x) => json!({"type": t, "value": x}),
        MetaValue::F32(x) => json!({"type": t, "value": format!("0x{:08x}", x.to_bits())}),
        MetaValue::F64(x) => json!({"type": t, "value": format!("0x{:016x}", x.to_bits())}),
        MetaValue::Bool(x) => json!({"type": t, "value": x}),
        MetaValue::String(s) => json!({"type": t, "value": hex(s)}),
        MetaValue::Array { elem, items } => json!({
            "type": t,
            "elem": elem.name(),
            "items": items.iter().map(value_json).collect::<Vec<_>>(),
        }),
    }
}

/// The type list gguf-py keeps for a field: the value's type, then (for an array that has
/// elements) its first element's list.
fn gguf_py_types(v: &MetaValue) -> Vec<&'static str> {
    let mut out = vec![v.value_type().name()];
    if let MetaValue::Array { items, .. } = v {
        if let Some(first) = items.first() {
            out.extend(gguf_py_types(first));
        }
    }
    out
}

/// Our reader's description of a file, in `dump_gguf.py`'s format.
fn describe(f: &GgufFile) -> Json {
    let idx = f.index();
    let values: Vec<_> = f.metadata().collect();
    assert_eq!(values.len(), idx.kvs.len(), "every value decodes");
    let fields: Vec<Json> = idx
        .kvs
        .iter()
        .zip(&values)
        .map(|(kv, (key, v))| {
            assert_eq!(kv.key, *key);
            let v = v.to_owned_value();
            json!({
                "key": key,
                "offset": kv.offset,
                "types": gguf_py_types(&v),
                "value": value_json(&v),
            })
        })
        .collect();
    let tensors: Vec<Json> = f
        .tensors()
        .map(|t| {
            json!({
                "name": t.name(),
                "type": t.ty().id(),
                "ne": t.info.ne,
                "offset": t.info.offset,
                "data_offset": f.data_offset() + t.info.offset,
                "n_elements": t.info.n_elements(),
                "n_bytes": t.info.size,
                "sha256": sha256(t.data),
            })
        })
        .collect();
    json!({
        "version": f.version(),
        "tensor_count": idx.tensors.len(),
        "kv_count": idx.kvs.len(),
        "alignment": f.alignment(),
        "data_offset": f.data_offset(),
        "fields": fields,
        "tensors": tensors,
    })
}

fn pretty(j: &Json) -> String {
    serde_json::to_string_pretty(j).unwrap()
}

/// Compares two lists entry by entry, naming the first entry that differs.
fn assert_same_list(what: &str, ours: &[Json], theirs: &[Json], other: &str) {
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            a == b,
            "{what} #{i} differs\n--- ours:\n{}\n--- {other}:\n{}",
            pretty(a),
            pretty(b)
        );
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: we have {} entries, {other} has {}",
        ours.len(),
        theirs.len()
    );
}

fn list<'a>(j: &'a Json, key: &str) -> &'a [Json] {
    j[key]
        .as_array()
        .unwrap_or_else(|| panic!("'{key}' is not a list in {}", pretty(j)))
}

/// Compares our description of `path` with gguf-py's; `header` names the top-level entries to
/// compare (all but `data_offset` in the no-tensor case).
fn assert_same_as_gguf_py(ours: &Json, py: &Json, header: &[&str]) {
    for k in header {
        assert_eq!(ours[*k], py[*k], "'{k}': ours vs gguf-py");
    }
    assert_same_list("field", list(ours, "fields"), list(py, "fields"), "gguf-py");
    assert_same_list(
        "tensor",
        list(ours, "tensors"),
        list(py, "tensors"),
        "gguf-py",
    );
}

const HEADER: &[&str] = &[
    "version",
    "tensor_count",
    "kv_count",
    "alignment",
    "data_offset",
];

// ---------------------------------------------------------------------------------------------
// ggml

/// Our values cut at the first NUL in every string (what ggml's C-string getters can show).
fn cut_at_nul(v: &MetaValue) -> MetaValue {
    match v {
        MetaValue::String(s) => {
            MetaValue::String(s.iter().copied().take_while(|&b| b != 0).collect())
        }
        MetaValue::Array { elem, items } => MetaValue::Array {
            elem: *elem,
            items: items.iter().map(cut_at_nul).collect(),
        },
        v => v.clone(),
    }
}

/// Header, metadata and tensor infos as ggml reports them vs as we do.
fn assert_same_as_ggml(path: &Path, f: &GgufFile) {
    ggml::silence_logs();
    let g = ggml::read_gguf(path).unwrap_or_else(|| panic!("ggml refused {}", path.display()));
    assert_eq!(g.version, f.version(), "version");
    assert_eq!(g.alignment, f.alignment(), "alignment");
    assert_eq!(g.data_offset, f.data_offset(), "data offset");
    let theirs: Vec<Json> = g
        .kvs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": value_json(v)}))
        .collect();
    let ours: Vec<Json> = f
        .metadata()
        .map(|(k, v)| json!({"key": k, "value": value_json(&cut_at_nul(&v.to_owned_value()))}))
        .collect();
    assert_same_list("key/value", &ours, &theirs, "ggml");
    let theirs: Vec<Json> = g
        .tensors
        .iter()
        .map(|(name, ty, ne, off, size)| json!([name, ty, ne, off, size]))
        .collect();
    let ours: Vec<Json> = f
        .tensor_infos()
        .iter()
        .map(|t| json!([t.name, t.ty.id(), t.ne4(), t.offset, t.size]))
        .collect();
    assert_same_list("tensor", &ours, &theirs, "ggml");
}

// ---------------------------------------------------------------------------------------------
// Files we write

fn s(x: &str) -> MetaValue {
    MetaValue::from(x)
}

fn bytes(b: &[u8]) -> MetaValue {
    MetaValue::String(b.to_vec())
}

/// Metadata of every type, in a fixed order; nested arrays only when asked.
fn our_metadata(nested: bool) -> Vec<(&'static str, MetaValue)> {
    use MetaValue as M;
    let mut kvs = vec![
        ("general.architecture", s("interop")),
        ("general.name", s("jq interop — Grüße 日本語 🦙")),
        ("interop.u8", M::U8(u8::MAX)),
        ("interop.i8", M::I8(i8::MIN)),
        ("interop.u16", M::U16(u16::MAX)),
        ("interop.i16", M::I16(i16::MIN)),
        ("interop.u32", M::U32(u32::MAX)),
        ("interop.i32", M::I32(i32::MIN)),
        ("interop.u64", M::U64(u64::MAX)),
        ("interop.i64", M::I64(i64::MIN)),
        ("interop.i64.max", M::I64(i64::MAX)),
        ("interop.f32", M::F32(std::f32::consts::PI)),
        ("interop.f32.neg_zero", M::F32(-0.0)),
        ("interop.f32.neg_inf", M::F32(f32::NEG_INFINITY)),
        // A signalling NaN with a payload: its bits must survive every reader.
        ("interop.f32.snan", M::F32(f32::from_bits(0x7f80_0001))),
        ("interop.f32.subnormal", M::F32(f32::from_bits(1))),
        ("interop.f64", M::F64(std::f64::consts::E)),
        (
            "interop.f64.nan_payload",
            M::F64(f64::from_bits(0xfff8_0000_dead_beef)),
        ),
        ("interop.f64.max", M::F64(f64::MAX)),
        ("interop.bool.true", M::Bool(true)),
        ("interop.bool.false", M::Bool(false)),
        ("interop.str.empty", s("")),
        ("interop.str.latin", s("Grüße, naïve café — ½ €")),
        ("interop.str.cjk", s("日本語のテキスト / 中文 / 한국어")),
        ("interop.str.emoji", s("🦙🚀 👩\u{200d}💻 🇫🇷")),
        (
            "interop.str.not_utf8",
            bytes(b"\xff\xfe\x80 byte token \xc3"),
        ),
        ("interop.str.embedded_nul", s("before\0after")),
        ("interop.ключ.日本語", s("a non-ASCII key")),
        (
            "interop.arr.u8",
            M::array(ValueType::U8, [0u8, 1, 127, 128, 255]),
        ),
        (
            "interop.arr.i8",
            M::array(ValueType::I8, [i8::MIN, -1, 0, i8::MAX]),
        ),
        (
            "interop.arr.u16",
            M::array(ValueType::U16, [0u16, u16::MAX]),
        ),
        (
            "interop.arr.i16",
            M::array(ValueType::I16, [i16::MIN, i16::MAX]),
        ),
        (
            "interop.arr.u32",
            M::array(ValueType::U32, [u32::MAX, 0, 7]),
        ),
        (
            "interop.arr.i32",
            M::array(ValueType::I32, [i32::MIN, -1, 0, i32::MAX]),
        ),
        (
            "interop.arr.u64",
            M::array(ValueType::U64, [u64::MAX, 1 << 63, 0]),
        ),
        (
            "interop.arr.i64",
            M::array(ValueType::I64, [i64::MIN, i64::MAX]),
        ),
        (
            "interop.arr.f32",
            M::array(
                ValueType::F32,
                [1.5f32, -0.0, f32::NAN, f32::INFINITY, f32::from_bits(1)],
            ),
        ),
        (
            "interop.arr.f64",
            M::array(ValueType::F64, [0.1f64, -0.0, f64::NAN, f64::MIN_POSITIVE]),
        ),
        (
            "interop.arr.bool",
            M::array(ValueType::Bool, [true, false, true]),
        ),
        (
            "interop.arr.str",
            M::strings([
                "a".as_bytes(),
                b"",
                "日本".as_bytes(),
                "🦙".as_bytes(),
                b"\xff\xfe",
            ]),
        ),
        ("interop.arr.str.nul", M::strings(["x\0y", "\0"])),
        (
            "interop.arr.empty_i32",
            M::array(ValueType::I32, Vec::<i32>::new()),
        ),
        ("interop.arr.empty_str", M::strings(Vec::<&str>::new())),
        (
            "interop.arr.empty_f64",
            M::array(ValueType::F64, Vec::<f64>::new()),
        ),
    ];
    if nested {
        let ints = |v: &[i32]| M::array(ValueType::I32, v.iter().copied());
        kvs.extend([
            (
                "interop.nested.ints",
                M::Array {
                    elem: ValueType::Array,
                    items: vec![ints(&[1, 2, 3]), ints(&[]), ints(&[-4])],
                },
            ),
            (
                "interop.nested.strings",
                M::Array {
                    elem: ValueType::Array,
                    items: vec![M::strings(["日本", ""]), M::strings(["🦙"])],
                },
            ),
            (
                "interop.nested.first_empty",
                M::Array {
                    elem: ValueType::Array,
                    items: vec![
                        M::array(ValueType::U64, Vec::<u64>::new()),
                        M::array(ValueType::U64, [u64::MAX]),
                    ],
                },
            ),
            (
                "interop.nested.three_deep",
                M::Array {
                    elem: ValueType::Array,
                    items: vec![M::Array {
                        elem: ValueType::Array,
                        items: vec![ints(&[7]), ints(&[8, 9])],
                    }],
                },
            ),
            (
                "interop.nested.empty",
                M::Array {
                    elem: ValueType::Array,
                    items: vec![],
                },
            ),
        ]);
    }
    kvs
}

/// Tensors: every codec type in 1, 2 and 3 dimensions, plus 0-D, 4-D and odd sizes.
fn our_tensors() -> Vec<(String, GgmlType, Vec<u64>)> {
    let mut out = Vec::new();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::BF16,
    ] {
        let n = ty.name();
        out.push((format!("{n}.1d"), ty, vec![96]));
        out.push((format!("{n}.2d"), ty, vec![64, 3]));
        out.push((format!("{n}.3d"), ty, vec![32, 3, 2]));
    }
    out.push(("f32.0d".into(), GgmlType::F32, vec![]));
    out.push(("f32.4d".into(), GgmlType::F32, vec![2, 3, 1, 2]));
    out.push(("f16.odd".into(), GgmlType::F16, vec![7]));
    out.push(("bf16.odd".into(), GgmlType::BF16, vec![5, 3]));
    out.push(("ténsor.日本.q8_0".into(), GgmlType::Q8_0, vec![32]));
    out
}

/// Writes a file with `our_metadata` and `our_tensors` (real data, encoded by our codecs);
/// returns the bytes of each tensor. `alignment` is set last, after the other keys.
fn write_ours(path: &Path, alignment: Option<u32>, nested: bool, tensors: bool) -> Vec<Vec<u8>> {
    let mut w = GgufWriter::new().allow_nested_arrays(nested);
    for (k, v) in our_metadata(nested) {
        w.add(k, v).unwrap();
    }
    if let Some(a) = alignment {
        w.add("general.alignment", MetaValue::U32(a)).unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x001e_7e0b);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let mut data = Vec::new();
    for (name, ty, ne) in if tensors { our_tensors() } else { vec![] } {
        let n: u64 = ne.iter().product();
        let scale = 10f32.powi(rng.gen_range(-3..3));
        let mut x: Vec<f32> = (0..n).map(|_| scale * normal.sample(&mut rng)).collect();
        if x.len() >= 32 {
            x[..8].fill(-0.0); // part of a block of zeros
        }
        w.add_tensor(&name, ty, &ne).unwrap();
        data.push(quant::quantize_to_vec(ty, &x).unwrap());
    }
    w.write_file(path, |i, _, out| {
        out.write_all(&data[i]).map_err(|source| GgufError::Io {
            path: "<output>".into(),
            source,
        })
    })
    .unwrap();
    data
}

/// Our reader gives back exactly what we wrote.
fn assert_reads_back(f: &GgufFile, alignment: u64, nested: bool, data: &[Vec<u8>]) {
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), alignment);
    let mut want: Vec<(String, Json)> = our_metadata(nested)
        .into_iter()
        .map(|(k, v)| (k.to_string(), value_json(&v)))
        .collect();
    if alignment != 32 {
        want.push((
            "general.alignment".into(),
            value_json(&MetaValue::U32(alignment as u32)),
        ));
    }
    let got: Vec<(String, Json)> = f
        .metadata()
        .map(|(k, v)| (k.to_string(), value_json(&v.to_owned_value())))
        .collect();
    assert_eq!(got, want);
    let plan = if data.is_empty() {
        vec![]
    } else {
        our_tensors()
    };
    assert_eq!(f.tensor_infos().len(), plan.len());
    for ((t, (name, ty, ne)), bytes) in f.tensors().zip(plan).zip(data) {
        assert_eq!((t.name(), t.ty(), &t.info.ne), (name.as_str(), ty, &ne));
        assert_eq!(t.data, &bytes[..], "bytes of {name}");
        assert_eq!(
            (f.data_offset() + t.info.offset) % alignment,
            0,
            "{name} is aligned"
        );
    }
}

#[test]
fn our_files_read_identically_by_ggml_and_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    for alignment in [None, Some(64)] {
        let path = dir
            .path()
            .join(format!("ours-{}.gguf", alignment.unwrap_or(32)));
        let data = write_ours(&path, alignment, false, true);
        let f = GgufFile::open(&path).unwrap();
        assert_reads_back(&f, alignment.unwrap_or(32).into(), false, &data);
        assert_same_as_ggml(&path, &f);
        let ours = describe(&f);
        assert_same_as_gguf_py(&ours, &dump_with_gguf_py(&path), HEADER);
    }
}

#[test]
fn our_nested_arrays_read_by_gguf_py_refused_by_ggml() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.gguf");
    let data = write_ours(&path, None, true, true);
    let f = GgufFile::open(&path).unwrap();
    assert_reads_back(&f, 32, true, &data);
    assert_same_as_gguf_py(&describe(&f), &dump_with_gguf_py(&path), HEADER);
    ggml::silence_logs();
    assert!(
        ggml::read_gguf(&path).is_none(),
        "ggml is expected to refuse arrays of arrays"
    );
}

#[test]
fn our_metadata_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.gguf");
    write_ours(&path, Some(64), false, false);
    let f = GgufFile::open(&path).unwrap();
    assert_reads_back(&f, 64, false, &[]);
    // The writer pads the header to the alignment even without tensors, as ggml's and
    // gguf-py's writers do; readers (ours and ggml's) put the data offset at the header's end.
    assert_eq!(
        f.bytes().len() as u64,
        f.data_offset().div_ceil(64) * 64,
        "header padded to the alignment"
    );
    assert_same_as_ggml(&path, &f);
    let ours = describe(&f);
    let py = dump_with_gguf_py(&path);
    assert_same_as_gguf_py(
        &ours,
        &py,
        &["version", "tensor_count", "kv_count", "alignment"],
    );
    // gguf-py pads to the alignment even when there is no data section.
    let padded = f.data_offset().div_ceil(64) * 64;
    let py_off = py["data_offset"].as_u64().unwrap();
    assert!(
        py_off == f.data_offset() || py_off == padded,
        "gguf-py's data offset {py_off}, ours {}",
        f.data_offset()
    );
}

// ---------------------------------------------------------------------------------------------
// The file gguf-py wrote

const PY_FILE: &str = "gguf_py_unusual.gguf";

fn py_expected() -> Json {
    let p = fixtures().join("gguf_py_unusual.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).expect("valid JSON")
}

#[test]
fn gguf_py_file_read_as_written() {
    let path = fixtures().join(PY_FILE);
    let f = GgufFile::open(&path).unwrap();
    let exp = py_expected();
    assert_eq!(json!(f.version()), exp["version"]);
    assert_eq!(json!(f.alignment()), exp["alignment"]);
    let ours = describe(&f);
    let fields: Vec<Json> = list(&ours, "fields")
        .iter()
        .map(|j| json!({"key": j["key"], "value": j["value"]}))
        .collect();
    assert_same_list(
        "field",
        &fields,
        list(&exp, "fields"),
        "the generator's input",
    );
    let tensors: Vec<Json> = list(&ours, "tensors")
        .iter()
        .map(|j| {
            json!({"name": j["name"], "type": j["type"], "ne": j["ne"], "n_bytes": j["n_bytes"],
                   "sha256": j["sha256"]})
        })
        .collect();
    assert_same_list(
        "tensor",
        &tensors,
        list(&exp, "tensors"),
        "the generator's input",
    );
    assert!(
        list(&ours, "fields").iter().any(|j| j["types"][1] == "arr"),
        "has nested arrays"
    );
}

#[test]
fn gguf_py_file_read_as_gguf_py_reads_it() {
    let path = fixtures().join(PY_FILE);
    let f = GgufFile::open(&path).unwrap();
    assert_same_as_gguf_py(&describe(&f), &dump_with_gguf_py(&path), HEADER);
    ggml::silence_logs();
    assert!(
        ggml::read_gguf(&path).is_none(),
        "ggml is expected to refuse arrays of arrays"
    );
}

/// gguf-py's encodings of `src.f32` against ggml's and ours.
#[test]
fn gguf_py_encodings_vs_ggml() {
    let f = GgufFile::open(fixtures().join(PY_FILE)).unwrap();
    let src = f.tensor("src.f32").unwrap();
    let x: Vec<f32> = src
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let row = src.info.ne[0] as usize;
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
    ] {
        let py = f.tensor(&format!("src.{}", ty.name())).unwrap().data;
        let reference = ggml::quantize_chunk(ty, &x, row);
        let ours = quant::quantize_to_vec(ty, &x).unwrap();
        assert!(ours == reference, "{ty}: our encoding differs from ggml's");
        if ty != GgmlType::Q4_0 {
            assert!(
                py == &reference[..],
                "{ty}: gguf-py's encoding differs from ggml's"
            );
            continue;
        }
        // Blocks of 18 bytes: f16 scale, then 16 bytes of nibbles. The generator puts all -0.0
        // in block 4, all +0.0 in block 5, and -0.0 followed by +0.0 in block 6.
        let differing: Vec<usize> = (0..py.len() / 18)
            .filter(|&b| py[b * 18..][..18] != reference[b * 18..][..18])
            .collect();
        assert_eq!(
            differing,
            [4, 6],
            "Q4_0 blocks where gguf-py and ggml differ"
        );
        for b in [4, 5, 6] {
            let (p, r) = (&py[b * 18..][..18], &reference[b * 18..][..18]);
            assert_eq!(r[..2], [0x00, 0x80], "block {b}: ggml's scale is -0.0");
            assert_eq!(p[2..], r[2..], "block {b}: the nibbles agree");
            assert!(
                p[2..].iter().all(|&q| q == 0x88),
                "block {b}: every code is 8 (zero)"
            );
        }
        assert_eq!(
            py[4 * 18..][..2],
            [0x00, 0x00],
            "gguf-py's scale for all -0.0 is +0.0"
        );
        assert_eq!(
            py[6 * 18..][..2],
            [0x00, 0x00],
            "gguf-py's scale for -0.0, +0.0... is +0.0"
        );
        assert_eq!(
            py[5 * 18..][..2],
            [0x00, 0x80],
            "gguf-py's scale for all +0.0 is -0.0"
        );
        // Both decode to zeros.
        let n = x.len();
        let dec_py = quant::dequantize_to_vec(ty, py, n).unwrap();
        let dec_ref = quant::dequantize_to_vec(ty, &reference, n).unwrap();
        assert!(
            dec_py.iter().zip(&dec_ref).all(|(a, b)| a == b),
            "same values decoded"
        );
    }
}
