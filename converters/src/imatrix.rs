//! `--imatrix FILE`: llama.cpp's importance matrices, turned into the per-column weights that
//! `llama_model_quantize` hands to `ggml_quantize_chunk`.
//!
//! Two formats, read as `common/imatrix-loader.cpp` reads them:
//! - **GGUF** (what `llama-imatrix` writes today): per weight `W`, the F32 tensors `W.in_sum2`
//!   (`ne0 x n_mat`) and `W.counts` (`n_mat`), optionally `W.in_sum`; the keys
//!   `imatrix.datasets`, `imatrix.chunk_count` and `imatrix.chunk_size` must all be present.
//!   Counts are rounded to integers (`lround`); the weights of matrix `j` are
//!   `in_sum2[j] / count[j]`, or all 1 for a matrix that never saw input (count 0).
//! - **legacy `.dat`**: `i32 n_entries`, then per entry `i32 len, name, i32 ncall, i32 nval,
//!   nval x f32`, then optionally `i32 chunk_count, i32 len, dataset`; the weights are the
//!   values divided by `ncall` (kept as they are when it is 0).
//!
//! `llama-quantize` then records `quantize.imatrix.file`, `.dataset` (the first one),
//! `.entries_count` and `.chunks_count` (when above 0) in the output's metadata.

use anyhow::{anyhow, bail, Context, Result};
use jq::gguf::{GgufFile, Value};
use jq::quant::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

/// Weights per tensor name, and what the file says about how it was made.
#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    pub weights: BTreeMap<String, Vec<f32>>,
    pub datasets: Vec<String>,
    pub chunk_count: i32,
}

impl Imatrix {
    /// Reads either format: a file that starts with the GGUF magic is GGUF, anything else the
    /// legacy layout.
    pub fn load(path: &Path) -> Result<Imatrix> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("--imatrix {}: cannot read it", path.display()))?;
        let m = if bytes.starts_with(b"GGUF") {
            from_gguf(GgufFile::from_vec(bytes).map_err(|e| anyhow!("{e}"))?)
        } else {
            from_legacy(&bytes)
        }
        .with_context(|| format!("--imatrix {}", path.display()))?;
        if let Some((name, _)) = m
            .weights
            .iter()
            .find(|(_, w)| w.iter().any(|v| !v.is_finite()))
        {
            bail!(
                "--imatrix {}: the weights of '{name}' hold a non-finite value (llama.cpp refuses such a matrix)",
                path.display()
            );
        }
        if m.weights.is_empty() {
            bail!(
                "--imatrix {}: no importance data in the file",
                path.display()
            );
        }
        Ok(m)
    }
}

fn u32_key(f: &GgufFile, key: &str) -> Result<Option<u32>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::U32(v)) => Ok(Some(v)),
        Some(v) => bail!("key '{key}' is {}, not u32", v.type_name()),
    }
}

fn from_gguf(f: GgufFile) -> Result<Imatrix> {
    if f.tensor_infos().is_empty() {
        bail!("no data in the file");
    }
    let mut m = Imatrix::default();
    let has_datasets = match f.get("imatrix.datasets") {
        Some(Value::Array(a)) => {
            if a.elem_type() == jq::gguf::ValueType::String {
                m.datasets = a
                    .strings()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
            }
            true
        }
        Some(_) => true,
        None => false,
    };
    let chunk_count = u32_key(&f, "imatrix.chunk_count")?;
    let chunk_size = u32_key(&f, "imatrix.chunk_size")?;
    if !(has_datasets && chunk_count.is_some() && chunk_size.is_some()) {
        bail!("missing imatrix metadata (imatrix.datasets, imatrix.chunk_count and imatrix.chunk_size are all needed)");
    }
    m.chunk_count = chunk_count.unwrap_or(0) as i32;

    #[derive(Default)]
    struct Parts {
        in_sum: Option<usize>,
        in_sum2: Option<usize>,
        counts: Option<usize>,
    }
    let mut parts: BTreeMap<&str, Parts> = BTreeMap::new();
    for (i, t) in f.tensor_infos().iter().enumerate() {
        let n = t.name.as_str();
        if let Some(w) = n.strip_suffix(".in_sum") {
            parts.entry(w).or_default().in_sum = Some(i);
        } else if let Some(w) = n.strip_suffix(".in_sum2") {
            parts.entry(w).or_default().in_sum2 = Some(i);
        } else if let Some(w) = n.strip_suffix(".counts") {
            parts.entry(w).or_default().counts = Some(i);
        }
    }
    for (name, p) in parts {
        let (Some(s2), Some(c)) = (p.in_sum2, p.counts) else {
            bail!("mismatched sums and counts for '{name}'");
        };
        let (s2, c) = (f.tensor_at(s2), f.tensor_at(c));
        if let Some(s) = p.in_sum {
            if f.tensor_at(s).info.n_elements() != s2.info.n_elements() {
                bail!("mismatched sums and counts for '{name}'");
            }
        }
        if s2.ty() != GgmlType::F32 || c.ty() != GgmlType::F32 {
            bail!("sums and counts for '{name}' must be F32");
        }
        let sums: Vec<f32> = s2.to_f32().map_err(|e| anyhow!("{name}: {e}"))?;
        let counts: Vec<i64> = c
            .to_f32()
            .map_err(|e| anyhow!("{name}: {e}"))?
            .iter()
            .map(|&x| lround(x))
            .collect();
        if counts.is_empty() {
            eprintln!("warning: --imatrix: no counts for entry '{name}', skipping");
            continue;
        }
        if sums.is_empty() {
            continue;
        }
        let ne0 = sums.len() / counts.len();
        let mut w = vec![0f32; sums.len()];
        for (j, &n) in counts.iter().enumerate() {
            let count = n as f32;
            for i in 0..ne0 {
                w[j * ne0 + i] = if count > 0.0 {
                    sums[j * ne0 + i] / count
                } else {
                    1.0
                };
            }
        }
        m.weights.insert(name.to_string(), w);
    }
    Ok(m)
}

/// C's `lround`: halfway cases away from zero (what `f32::round` does).
fn lround(x: f32) -> i64 {
    x.round() as i64
}

/// A little-endian cursor that names what it was reading when the file ends.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                anyhow!(
                    "the file ends at byte {} while reading {what}",
                    self.b.len()
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let s = self.take(4, what)?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

fn from_legacy(b: &[u8]) -> Result<Imatrix> {
    let mut c = Cursor { b, at: 0 };
    let n_entries = c
        .i32("the entry count")
        .map_err(|_| anyhow!("no data in the file (neither GGUF nor a legacy imatrix)"))?;
    if n_entries < 1 {
        bail!("no data in the file (entry count {n_entries})");
    }
    let mut m = Imatrix::default();
    for i in 0..n_entries {
        let len = c.i32(&format!("the name length of entry {}", i + 1))?;
        let len = usize::try_from(len)
            .map_err(|_| anyhow!("entry {}: negative name length {len}", i + 1))?;
        let raw = c.take(len, &format!("the name of entry {}", i + 1))?;
        // The loader reads the name as a C string.
        let raw = raw.split(|&x| x == 0).next().unwrap_or(raw);
        let name = String::from_utf8_lossy(raw).into_owned();
        let ncall = c.i32(&format!("the call count of '{name}'"))?;
        let nval = c.i32(&format!("the value count of '{name}'"))?;
        if nval < 1 {
            bail!("'{name}': {nval} values");
        }
        let vals = c.take(nval as usize * 4, &format!("the values of '{name}'"))?;
        let sums: Vec<f32> = vals
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        let w = if ncall > 0 {
            let n = ncall as f32;
            sums.iter().map(|&s| s / n).collect()
        } else {
            sums
        };
        m.weights.insert(name, w);
    }
    // The trailing chunk count and dataset name are optional.
    if c.at < b.len() {
        if let Ok(n) = c.i32("the chunk count") {
            m.chunk_count = n;
            if let Ok(len) = c.i32("the dataset name length") {
                if len > 0 {
                    if let Ok(d) = c.take(len as usize, "the dataset name") {
                        let d = d.split(|&x| x == 0).next().unwrap_or(d);
                        m.datasets.push(String::from_utf8_lossy(d).into_owned());
                    }
                }
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(entries: &[(&str, i32, &[f32])], tail: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((entries.len() as i32).to_le_bytes());
        for (n, ncall, v) in entries {
            b.extend((n.len() as i32).to_le_bytes());
            b.extend(n.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((v.len() as i32).to_le_bytes());
            for x in *v {
                b.extend(x.to_le_bytes());
            }
        }
        if let Some((n, d)) = tail {
            b.extend(n.to_le_bytes());
            b.extend((d.len() as i32).to_le_bytes());
            b.extend(d.as_bytes());
        }
        b
    }

    #[test]
    fn legacy_divides_by_ncall() {
        let b = legacy(
            &[("a", 4, &[2.0, 6.0]), ("b", 0, &[3.0])],
            Some((7, "wiki")),
        );
        let m = from_legacy(&b).unwrap();
        assert_eq!(m.weights["a"], vec![0.5, 1.5]);
        assert_eq!(m.weights["b"], vec![3.0]);
        assert_eq!(
            (m.chunk_count, m.datasets.as_slice()),
            (7, &["wiki".to_string()][..])
        );
        let m = from_legacy(&legacy(&[("a", 1, &[1.0])], None)).unwrap();
        assert_eq!((m.chunk_count, m.datasets.len()), (0, 0));
        let cut = &b[..b.len() - 12 - 2];
        let e = from_legacy(cut).unwrap_err().to_string();
        assert!(e.contains("the values of 'b'"), "{e}");
    }

    #[test]
    fn lround_is_half_away_from_zero() {
        assert_eq!((lround(2.5), lround(-2.5), lround(2.4)), (3, -3, 2));
    }
}
