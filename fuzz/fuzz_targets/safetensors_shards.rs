//! Fuzzes the Hugging Face weights reader (`converters/src/shards.rs`): the first input byte
//! picks the single-file layout (`model.safetensors` = the rest) or the sharded one (the rest
//! split at the first NUL into `model.safetensors.index.json` and one shard it may name,
//! `s.safetensors`). Any input either fails with an error or opens into tensors whose every
//! byte range lies inside its shard.

#![no_main]

#[allow(dead_code)]
#[path = "../../converters/src/shards.rs"]
mod shards;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    if mode & 1 == 0 {
        std::fs::write(dir.path().join(shards::SINGLE), rest).unwrap();
    } else {
        let at = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::fs::write(dir.path().join(shards::INDEX), &rest[..at]).unwrap();
        std::fs::write(
            dir.path().join("s.safetensors"),
            rest.get(at + 1..).unwrap_or(&[]),
        )
        .unwrap();
    }
    let Ok(w) = shards::Weights::open(dir.path()) else {
        return;
    };
    let names: Vec<String> = w.names().map(str::to_string).collect();
    for n in names {
        let t = w.get(&n).unwrap();
        let len = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        let b = w.bytes(t, 0..len);
        assert_eq!(b.len(), len);
        w.release(t, 0..len);
    }
});
