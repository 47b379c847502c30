//! Round trips through the writer and the reader, determinism and atomicity.

use super::*;
use crate::quant::{quantize_to_vec, GgmlType};
use proptest::prelude::*;

fn sample_writer(alignment: Option<u32>) -> (GgufWriter, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.add("general.alignment", a).unwrap();
    }
    w.add("general.architecture", "test").unwrap();
    w.add("a.u8", 7u8).unwrap();
    w.add("a.i8", -7i8).unwrap();
    w.add("a.u16", 700u16).unwrap();
    w.add("a.i16", -700i16).unwrap();
    w.add("a.u32", 70000u32).unwrap();
    w.add("a.i32", -70000i32).unwrap();
    w.add("a.f32", 0.25f32).unwrap();
    w.add("a.bool", true).unwrap();
    w.add("a.u64", u64::MAX).unwrap();
    w.add("a.i64", i64::MIN).unwrap();
    w.add("a.f64", -1.5e300f64).unwrap();
    w.add("a.str", "héllo ✓").unwrap();
    w.add("a.bytes", MetaValue::String(vec![0xff, 0x00, 0x80]))
        .unwrap();
    w.add(
        "a.arr",
        MetaValue::array(ValueType::F32, [1.0f32, 2.0, 3.5]),
    )
    .unwrap();
    w.add("a.strs", MetaValue::strings(["x", "", "zz"]))
        .unwrap();
    w.add(
        "a.empty",
        MetaValue::array(ValueType::U64, Vec::<u64>::new()),
    )
    .unwrap();
    let specs: [(&str, GgmlType, &[u64]); 4] = [
        ("t.f32", GgmlType::F32, &[5, 3]),
        ("t.q4", GgmlType::Q4_0, &[64, 2]),
        ("t.f16", GgmlType::F16, &[7]),
        ("t.q8", GgmlType::Q8_0, &[32, 1, 2]),
    ];
    let mut data = Vec::new();
    for (i, (name, ty, ne)) in specs.iter().enumerate() {
        w.add_tensor(name, *ty, ne).unwrap();
        let n: u64 = ne.iter().product();
        data.push(quantize_to_vec(*ty, &crate::synth::weights(i as u64, n as usize, 3.0)).unwrap());
    }
    (w, data)
}

fn write_bytes(w: &GgufWriter, data: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    w.write_to(&mut out, |i, _, o| {
        o.write_all(&data[i])
            .map_err(|e| GgufError::io("<test>", e))
    })
    .unwrap();
    out
}

#[test]
fn round_trip_every_value_type() {
    for align in [None, Some(1), Some(64)] {
        let (w, data) = sample_writer(align);
        let bytes = write_bytes(&w, &data);
        assert_eq!(bytes.len() as u64, w.file_size());
        let f = GgufFile::from_vec(bytes).unwrap();
        assert_eq!(f.alignment(), align.map_or(32, u64::from));
        assert_eq!(f.data_offset() % f.alignment(), 0);
        assert_eq!(f.get_u8("a.u8").unwrap(), 7);
        assert_eq!(f.get_i8("a.i8").unwrap(), -7);
        assert_eq!(f.get_u16("a.u16").unwrap(), 700);
        assert_eq!(f.get_i16("a.i16").unwrap(), -700);
        assert_eq!(f.get_u32("a.u32").unwrap(), 70000);
        assert_eq!(f.get_i32("a.i32").unwrap(), -70000);
        assert_eq!(f.get_f32("a.f32").unwrap(), 0.25);
        assert!(f.get_bool("a.bool").unwrap());
        assert_eq!(f.get_u64("a.u64").unwrap(), u64::MAX);
        assert_eq!(f.get_i64("a.i64").unwrap(), i64::MIN);
        assert_eq!(f.get_f64("a.f64").unwrap(), -1.5e300);
        assert_eq!(f.get_str("a.str").unwrap(), "héllo ✓");
        assert_eq!(f.get("a.bytes"), Some(Value::String(&[0xff, 0x00, 0x80])));
        let arr = f.get_array("a.arr").unwrap();
        assert_eq!(arr.to_f64_vec().unwrap(), vec![1.0, 2.0, 3.5]);
        assert_eq!(arr.get(2), Some(Value::F32(3.5)));
        let strs: Vec<&[u8]> = f.get_array("a.strs").unwrap().strings().collect();
        assert_eq!(strs, vec![&b"x"[..], b"", b"zz"]);
        assert_eq!(
            f.get_array("a.strs").unwrap().get(2),
            Some(Value::String(b"zz"))
        );
        assert!(f.get_array("a.empty").unwrap().is_empty());
        // Keys come back in the order they were written, values equal.
        let keys: Vec<&str> = f.metadata().map(|(k, _)| k).collect();
        assert_eq!(
            keys.first(),
            Some(&if align.is_some() {
                "general.alignment"
            } else {
                "general.architecture"
            })
        );
        for (i, t) in f.tensors().enumerate() {
            assert_eq!(t.data, &data[i][..], "{}", t.name());
            assert_eq!((f.data_offset() + t.info.offset) % f.alignment(), 0);
        }
        assert_eq!(f.tensor("t.q4").unwrap().info.shape(), vec![2, 64]);
    }
}

#[test]
fn typed_getters_name_the_key() {
    let (w, data) = sample_writer(None);
    let f = GgufFile::from_vec(write_bytes(&w, &data)).unwrap();
    let e = f.get_u32("a.u64").unwrap_err().to_string();
    assert_eq!(e, "key 'a.u64' must be of type u32 but is u64");
    let e = f.get_u32("nope").unwrap_err().to_string();
    assert_eq!(e, "key 'nope' not found");
    let e = f.tensor("t.nope").unwrap_err().to_string();
    assert_eq!(e, "tensor 't.nope' not found");
    assert!(matches!(
        f.get_str("a.bytes"),
        Err(GgufError::InvalidUtf8 { .. })
    ));
}

#[test]
fn deterministic_bytes() {
    let (w1, d1) = sample_writer(Some(64));
    let (w2, d2) = sample_writer(Some(64));
    assert_eq!(write_bytes(&w1, &d1), write_bytes(&w2, &d2));
}

#[test]
fn writer_rejects_bad_plans() {
    let mut w = GgufWriter::new();
    w.add("k", 1u32).unwrap();
    assert!(w.add("k", 2u32).is_err(), "duplicate key");
    assert!(w.add("", 2u32).is_err(), "empty key");
    assert!(w.add("general.alignment", 48u32).is_err());
    assert!(w.add("general.alignment", 64u64).is_err());
    let nested = MetaValue::Array {
        elem: ValueType::Array,
        items: vec![MetaValue::array(ValueType::U8, [1u8])],
    };
    assert!(
        w.add("n", nested.clone()).is_err(),
        "nested arrays need opting in"
    );
    let mixed = MetaValue::Array {
        elem: ValueType::U8,
        items: vec![MetaValue::U8(1), MetaValue::U16(2)],
    };
    assert!(w.add("m", mixed).is_err(), "heterogeneous array");
    assert!(
        w.add_tensor("x", GgmlType::Q4_0, &[33]).is_err(),
        "partial block"
    );
    assert!(
        w.add_tensor(&"n".repeat(64), GgmlType::F32, &[1]).is_err(),
        "long name"
    );
    assert!(
        w.add_tensor("x", GgmlType::F32, &[1, 1, 1, 1, 1]).is_err(),
        "5 dims"
    );
    w.add_tensor("x", GgmlType::F32, &[4]).unwrap();
    assert!(
        w.add_tensor("x", GgmlType::F32, &[4]).is_err(),
        "duplicate name"
    );
    assert!(
        w.add("general.alignment", 64u32).is_err(),
        "alignment after tensors"
    );
    let mut w = GgufWriter::new().allow_nested_arrays(true);
    w.add("n", nested).unwrap();
    let f = GgufFile::from_vec(write_bytes(&w, &[])).unwrap();
    let outer = f.get_array("n").unwrap();
    let inner = outer.get(0).unwrap().as_array().unwrap();
    assert_eq!(inner.to_u64_vec(), Some(vec![1]));
}

#[test]
fn failed_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (w, data) = sample_writer(None);
    let path = dir.path().join("out.gguf");
    // A data source that fails half way, one that writes the wrong size, one that panics.
    let err = w
        .write_file(&path, |i, _, o| {
            if i == 2 {
                return Err(GgufError::Plan("source failed".into()));
            }
            o.write_all(&data[i]).map_err(|e| GgufError::io("<t>", e))
        })
        .unwrap_err();
    assert!(err.to_string().contains("source failed"));
    let err = w
        .write_file(&path, |_, _, o| {
            o.write_all(b"xx").map_err(|e| GgufError::io("<t>", e))
        })
        .unwrap_err();
    assert!(
        matches!(err, GgufError::DataSize { written: 2, .. }),
        "{err}"
    );
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = w.write_file(&path, |_, _, _| panic!("boom"));
    }));
    assert!(panicked.is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
    // And a good run produces the file, readable, 0644.
    w.write_file(&path, |i, _, o| {
        o.write_all(&data[i]).map_err(|e| GgufError::io("<t>", e))
    })
    .unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_infos().len(), 4);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn any_meta(depth: u32) -> BoxedStrategy<MetaValue> {
    let leaf = prop_oneof![
        any::<u8>().prop_map(MetaValue::U8),
        any::<i8>().prop_map(MetaValue::I8),
        any::<u16>().prop_map(MetaValue::U16),
        any::<i16>().prop_map(MetaValue::I16),
        any::<u32>().prop_map(MetaValue::U32),
        any::<i32>().prop_map(MetaValue::I32),
        any::<u64>().prop_map(MetaValue::U64),
        any::<i64>().prop_map(MetaValue::I64),
        any::<bool>().prop_map(MetaValue::Bool),
        any::<u32>().prop_map(|b| MetaValue::F32(f32::from_bits(b))),
        any::<u64>().prop_map(|b| MetaValue::F64(f64::from_bits(b))),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(MetaValue::String),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let arrays = (any_meta(depth - 1), 0usize..6).prop_map(|(proto, n)| {
        let elem = proto.value_type();
        MetaValue::Array {
            elem,
            items: vec![proto; n],
        }
    });
    prop_oneof![3 => leaf, 1 => arrays].boxed()
}

fn bit_eq(a: &MetaValue, b: &MetaValue) -> bool {
    match (a, b) {
        (MetaValue::F32(x), MetaValue::F32(y)) => x.to_bits() == y.to_bits(),
        (MetaValue::F64(x), MetaValue::F64(y)) => x.to_bits() == y.to_bits(),
        (
            MetaValue::Array {
                elem: e1,
                items: i1,
            },
            MetaValue::Array {
                elem: e2,
                items: i2,
            },
        ) => e1 == e2 && i1.len() == i2.len() && i1.iter().zip(i2).all(|(x, y)| bit_eq(x, y)),
        _ => a == b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn metadata_round_trips(values in prop::collection::vec(any_meta(2), 0..12),
                            align_pow in 0u32..8,
                            rows in 1u64..4) {
        let mut w = GgufWriter::new().allow_nested_arrays(true);
        w.add("general.alignment", 1u32 << align_pow).unwrap();
        for (i, v) in values.iter().enumerate() {
            w.add(format!("k{i}"), v.clone()).unwrap();
        }
        w.add_tensor("w", GgmlType::Q8_0, &[32, rows]).unwrap();
        let data = quantize_to_vec(GgmlType::Q8_0, &crate::synth::weights(1, 32 * rows as usize, 1.0)).unwrap();
        let f = GgufFile::from_vec(write_bytes(&w, std::slice::from_ref(&data))).unwrap();
        for (i, v) in values.iter().enumerate() {
            let got = f.get(&format!("k{i}")).unwrap().to_owned_value();
            prop_assert!(bit_eq(&got, v), "k{}: {:?} != {:?}", i, got, v);
        }
        prop_assert_eq!(f.tensor("w").unwrap().data, &data[..]);
    }
}

#[test]
fn release_keeps_the_bytes() {
    // A tensor spanning many pages, released piece by piece (unaligned pieces, so partial
    // pages at both ends), then read again: the same bytes, from a map and from memory.
    let mut w = GgufWriter::new();
    w.add("general.architecture", "test").unwrap();
    w.add_tensor("big", GgmlType::F32, &[4096, 9]).unwrap();
    w.add_tensor("small", GgmlType::F32, &[3]).unwrap();
    let big: Vec<u8> = (0..4096 * 9 * 4).map(|i| (i * 7 % 251) as u8).collect();
    let data = vec![big.clone(), vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]];
    let bytes = write_bytes(&w, &data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let mapped = GgufFile::open(&path).unwrap();
    let owned = GgufFile::from_vec(bytes).unwrap();
    for f in [&mapped, &owned] {
        let t = f.tensor("big").unwrap();
        for piece in t.data.chunks(10_007) {
            f.release(piece);
        }
        // A slice from elsewhere is ignored.
        f.release(&big);
        assert_eq!(f.tensor("big").unwrap().data, &big[..]);
        assert_eq!(f.tensor("small").unwrap().data, &data[1][..]);
        f.release(f.bytes());
        assert_eq!(f.tensor("big").unwrap().data, &big[..]);
    }
    let model = GgufModel::open(&path).unwrap();
    model.release(model.tensor("big").unwrap().data);
    assert_eq!(model.tensor("big").unwrap().data, &big[..]);
}
