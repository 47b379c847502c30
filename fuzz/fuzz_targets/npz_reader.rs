//! Fuzzes the `.npy` parser and the `.npz` reader: any input either fails with an error or
//! gives arrays whose data length is their shape's element count. The zip directory and every
//! member's header are read first; no allocation may be sized by a claim the bytes cannot back
//! (`-malloc_limit_mb` catches one).

#![no_main]

use jq::npz::NpzArchive;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = jq::npy::parse(data) {
        assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
    }
    if let Ok(mut z) = NpzArchive::new(Path::new("fuzz.npz"), Cursor::new(data)) {
        let keys: Vec<String> = z.members().iter().map(|m| m.key.clone()).collect();
        for k in keys {
            if let Ok(a) = z.read(&k) {
                assert_eq!(a.data.len(), a.shape.iter().product::<usize>());
            }
        }
    }
});
