//! Which layers use a sliding window, read as llama.cpp reads it (`load_swa_pattern` in
//! `src/llama-model.cpp`, `set_swa_pattern` in `src/llama-hparams.cpp`): the per-layer bool
//! array `<arch>.attention.sliding_window_pattern` when the file has one, else that key as a
//! period `n` (default: the architecture's own), layer `il` sliding iff `il % n < n - 1`
//! (`dense_first`: iff `il % n != 0`; `n == 0`: every layer). One reader for the planners,
//! the stream executor's hyper-parameters and the converter.

use crate::gguf::{ArrayRef, GgufModel, Value};
use anyhow::{anyhow, bail, Result};

/// An architecture's default sliding-window period, as its `load_arch_hparams` passes it to
/// `load_swa_pattern` (`src/models/*.cpp` of the pinned llama.cpp): (period, dense_first).
/// Architectures absent here read only the bool array (or have no sliding layers).
pub const SWA_DEFAULTS: &[(&str, u32, bool)] = &[
    ("gemma2", 2, false),
    ("gemma3", 6, false),
    ("gemma3n", 5, false),
    ("gemma-embedding", 6, false),
    ("cohere2", 4, false),
    ("cohere2moe", 4, true),
    ("exaone4", 4, false),
    ("exaone-moe", 4, false),
    ("olmo2", 4, false),
    ("llama4", 4, false),
    ("gpt-oss", 2, false),
    ("smallthinker", 4, true),
    ("afmoe", 4, false),
    ("plamo3", 8, false),
    ("modern-bert", 3, true),
];

/// The per-layer flags of an array value as llama.cpp's `get_arr` reads them into
/// `is_swa_impl` (`std::array<uint32_t>`): BOOL, UINT32 or INT32 elements, non-zero meaning
/// sliding; None for any other element type (llama.cpp throws on those).
pub fn flags(a: &ArrayRef<'_>) -> Option<Vec<bool>> {
    a.iter()
        .map(|v| match v {
            Value::Bool(b) => Some(b),
            Value::U32(x) => Some(x != 0),
            Value::I32(x) => Some(x != 0),
            _ => None,
        })
        .collect()
}

/// The default period of `arch`, if llama.cpp gives it one.
pub fn swa_default(arch: &str) -> Option<(u32, bool)> {
    SWA_DEFAULTS
        .iter()
        .find(|(a, _, _)| *a == arch)
        .map(|&(_, n, d)| (n, d))
}

/// Layer `il`'s flag for a period `n` (llama.cpp's `set_swa_pattern`).
pub fn swa_of_period(n_layer: usize, n: u32, dense_first: bool) -> Vec<bool> {
    let n = n as usize;
    (0..n_layer)
        .map(|il| {
            n == 0
                || if dense_first {
                    il % n != 0
                } else {
                    il % n < n - 1
                }
        })
        .collect()
}

/// The sliding layers of a file of `arch` with `n_layer` layers and a sliding window (callers
/// check `<arch>.attention.sliding_window` > 0 first): the bool array, else the integer
/// period, else `default` (None: no default, so no sliding layer).
pub fn swa_layers(
    f: &GgufModel,
    arch: &str,
    n_layer: usize,
    default: Option<(u32, bool)>,
) -> Result<Vec<bool>> {
    let key = super::keys::of(arch, super::keys::SLIDING_WINDOW_PATTERN);
    let dense_first = default.is_some_and(|d| d.1);
    match f.get(&key) {
        Some(v) if v.as_array().is_some() => {
            let v = v.as_array().and_then(|a| flags(&a)).ok_or_else(|| {
                anyhow!("metadata key '{key}' is not an array of bools (or uint32/int32)")
            })?;
            if v.len() != n_layer {
                bail!(
                    "metadata key '{key}' has {} entries for {n_layer} layers",
                    v.len()
                );
            }
            Ok(v)
        }
        Some(v) => {
            let n = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| anyhow!("metadata key '{key}' is not an integer or a bool array"))?;
            Ok(swa_of_period(n_layer, n, dense_first))
        }
        None => Ok(match default {
            Some((n, d)) => swa_of_period(n_layer, n, d),
            None => vec![false; n_layer],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_set_swa_pattern() {
        // llama.cpp: il % n < n - 1 slides; dense_first: il % n != 0; n == 0: all.
        assert_eq!(
            swa_of_period(7, 3, false),
            [true, true, false, true, true, false, true]
        );
        assert_eq!(swa_of_period(5, 4, true), [false, true, true, true, false]);
        assert_eq!(swa_of_period(3, 0, false), [true, true, true]);
        assert_eq!(swa_of_period(3, 1, false), [false, false, false]);
    }

    #[test]
    fn gemma3_default_is_the_executors() {
        assert_eq!(
            swa_default("gemma3"),
            Some((super::super::gemma3::SWA_PERIOD_DEFAULT as u32, false))
        );
        assert_eq!(swa_default("llama"), None);
    }
}
