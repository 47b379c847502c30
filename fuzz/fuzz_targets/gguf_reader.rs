//! Fuzzes the GGUF reader: any input either fails with an error or opens into a file whose
//! every metadata value decodes (arrays all the way down) and whose every tensor view lies
//! inside the input, with the declared size, and decodes when it has a codec.

#![no_main]

use jq::gguf::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;
use std::hint::black_box;

/// Touches every element of a value; returns how many values it saw.
fn walk(v: &Value<'_>) -> u64 {
    match v {
        Value::Array(a) => {
            let (mut count, mut n) = (0u64, 0u64);
            for e in a.iter() {
                assert_eq!(e.value_type(), a.elem_type());
                n += walk(&e);
                count += 1;
            }
            // Every element the reader validated decodes.
            assert_eq!(count, a.len());
            if let Some(last) = a.len().checked_sub(1) {
                assert!(a.get(last).is_some());
            }
            black_box(a.to_u64_vec());
            black_box(a.strings().count());
            n + 1
        }
        Value::String(s) => {
            black_box(v.as_str());
            black_box(s.len());
            1
        }
        v => {
            black_box((v.as_u64(), v.as_f64()));
            1
        }
    }
}

/// Equality with floats compared by their bits (`NaN != NaN` otherwise).
fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        // Arrays compare their element type, count and raw bytes.
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_vec(data.to_vec()) else {
        return;
    };
    let mut n_kv = 0;
    for (key, v) in f.metadata() {
        black_box((walk(&v), v.type_name()));
        assert!(same(&f.get(key).expect("a listed key is found"), &v));
        black_box(v.to_owned_value());
        n_kv += 1;
    }
    assert_eq!(n_kv, f.index().kvs.len(), "a validated value did not decode");

    let file = f.bytes().as_ptr_range();
    for t in f.tensors() {
        let d = t.data.as_ptr_range();
        assert!(file.start <= d.start && d.end <= file.end);
        assert_eq!(t.data.len() as u64, t.info.size);
        assert!(std::ptr::eq(f.tensor(t.name()).unwrap().info, t.info));
        if t.ty().has_codec() && t.info.n_elements() < 1 << 20 {
            let x = t.to_f32().expect("a validated tensor decodes");
            assert_eq!(x.len() as u64, t.info.n_elements());
        }
    }
});
