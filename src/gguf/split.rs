//! A model in one GGUF file or in a `gguf-split` set, seen as one.
//!
//! llama.cpp's splits (written by `gguf-split` or by gguf-py's `GGUFWriter` with
//! `split_max_tensors` / `split_max_size`) are named `PREFIX-%05d-of-%05d.gguf` with the number
//! counted from 1 (`llama_split_path` in llama.cpp's `src/llama.cpp`), while the `split.no` key
//! inside each part counts from 0. Every part carries `split.no`; gguf-py writes `split.count`
//! and `split.tensors.count` into every part, but only the first holds the model's metadata, and
//! a part may hold no tensors at all (the first often holds only metadata). The checks are
//! llama.cpp's (`llama_model_loader`'s constructor): each part's `split.no` is its position, no
//! tensor name appears twice across parts, and the tensors found add up to `split.tensors.count`.
//! Unlike llama.cpp, any part may be named: the set is found from it (tools that hand the model
//! to llama.cpp give it [`GgufModel::path`], the first part).

use super::error::{GgufError, Result};
use super::reader::{GgufFile, TensorInfo, TensorView};
use super::value::{ArrayRef, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `split.no`: this part's index, from 0 (u16).
pub const KEY_SPLIT_NO: &str = "split.no";
/// `split.count`: how many parts the set has (u16).
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// `split.tensors.count`: tensors in all parts together (i32).
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// Where a tensor's bytes are: which part, and the absolute offset in that part's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorLocation {
    pub part: usize,
    pub offset: u64,
    pub size: u64,
}

/// One GGUF file or a whole split set: metadata from the first part, tensors from all of them.
pub struct GgufModel {
    parts: Vec<GgufFile>,
    /// Every tensor in part order, then file order: (part, index in that part).
    order: Vec<(usize, usize)>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel")
            .field(
                "parts",
                &self.parts.iter().map(|p| p.path()).collect::<Vec<_>>(),
            )
            .field("tensors", &self.order.len())
            .finish()
    }
}

/// The file name of part `no` (0-based) of `n` for `prefix` (`llama_split_path`).
pub fn split_path(prefix: &Path, no: usize, n: usize) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!("-{:05}-of-{:05}.gguf", no + 1, n));
    PathBuf::from(s)
}

/// The prefix of `path` if it is named as part `no` (0-based) of `n` (`llama_split_prefix`).
pub fn split_prefix(path: &Path, no: usize, n: usize) -> Option<PathBuf> {
    let s = path.to_str()?;
    let post = format!("-{:05}-of-{:05}.gguf", no + 1, n);
    let p = s.strip_suffix(&post)?;
    (!p.is_empty()).then(|| PathBuf::from(p))
}

fn split_err(path: &Path, msg: impl std::fmt::Display) -> GgufError {
    GgufError::Split {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// A split key as an integer, if present; an error if present with a non-integer value.
fn split_key(f: &GgufFile, key: &str) -> Result<Option<u64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| GgufError::WrongType {
            key: key.to_string(),
            expected: "an integer".into(),
            found: v.type_name(),
        }),
    }
}

impl GgufModel {
    /// Opens a single GGUF, or the split set `path` belongs to (any of its parts may be named).
    pub fn open(path: impl AsRef<Path>) -> Result<GgufModel> {
        let path = path.as_ref();
        let first = GgufFile::open(path)?;
        let count = split_key(&first, KEY_SPLIT_COUNT)?.unwrap_or(1);
        if count <= 1 {
            return Self::from_parts(vec![first]);
        }
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c <= usize::from(u16::MAX))
            .ok_or_else(|| split_err(path, format!("{KEY_SPLIT_COUNT} = {count} is too large")))?;
        let no = split_key(&first, KEY_SPLIT_NO)?.ok_or_else(|| {
            split_err(
                path,
                format!("split.count is {count} but {KEY_SPLIT_NO} is missing"),
            )
        })? as usize;
        if no >= count {
            return Err(split_err(
                path,
                format!("{KEY_SPLIT_NO} = {no} is not below {KEY_SPLIT_COUNT} = {count}"),
            ));
        }
        let prefix = split_prefix(path, no, count).ok_or_else(|| {
            split_err(
                path,
                format!(
                    "part {} of a {count}-part split must be named PREFIX-{:05}-of-{count:05}.gguf",
                    no + 1,
                    no + 1
                ),
            )
        })?;
        let mut given = Some(first);
        let mut parts = Vec::with_capacity(count);
        for i in 0..count {
            let p = if i == no {
                given
                    .take()
                    .ok_or_else(|| split_err(path, "part opened twice"))?
            } else {
                let pp = split_path(&prefix, i, count);
                if !pp.exists() {
                    return Err(split_err(
                        &pp,
                        format!("part {} of {count} of the split set is missing", i + 1),
                    ));
                }
                GgufFile::open(&pp)?
            };
            let pno = split_key(&p, KEY_SPLIT_NO)?;
            if pno != Some(i as u64) {
                return Err(split_err(
                    p.path(),
                    format!(
                        "{KEY_SPLIT_NO} is {}, expected {i} for part {} of {count}",
                        pno.map_or("missing".into(), |x| x.to_string()),
                        i + 1
                    ),
                ));
            }
            if let Some(c) = split_key(&p, KEY_SPLIT_COUNT)? {
                if c != count as u64 {
                    return Err(split_err(
                        p.path(),
                        format!("{KEY_SPLIT_COUNT} is {c}, the first part says {count}"),
                    ));
                }
            }
            parts.push(p);
        }
        Self::from_parts(parts)
    }

    fn from_parts(parts: Vec<GgufFile>) -> Result<GgufModel> {
        let mut order = Vec::new();
        let mut by_name = HashMap::new();
        for (pi, p) in parts.iter().enumerate() {
            for (ti, t) in p.tensor_infos().iter().enumerate() {
                if by_name.insert(t.name.clone(), order.len()).is_some() {
                    return Err(split_err(
                        p.path(),
                        format!("tensor '{}' is also in an earlier part", t.name),
                    ));
                }
                order.push((pi, ti));
            }
        }
        if parts.len() > 1 {
            let first = &parts[0];
            let want = split_key(first, KEY_SPLIT_TENSORS_COUNT)?.ok_or_else(|| {
                split_err(
                    first.path(),
                    format!("{KEY_SPLIT_TENSORS_COUNT} is missing"),
                )
            })?;
            if want != order.len() as u64 {
                return Err(split_err(
                    first.path(),
                    format!(
                        "{KEY_SPLIT_TENSORS_COUNT} is {want} but the {} parts hold {} tensors",
                        parts.len(),
                        order.len()
                    ),
                ));
            }
        }
        Ok(GgufModel {
            parts,
            order,
            by_name,
        })
    }

    /// The first part: the file llama.cpp must be given, and where the metadata is.
    pub fn path(&self) -> &Path {
        self.parts[0].path()
    }

    /// The files, in part order (one for a plain GGUF).
    pub fn parts(&self) -> &[GgufFile] {
        &self.parts
    }

    pub fn is_split(&self) -> bool {
        self.parts.len() > 1
    }

    /// The first part, which holds the model's metadata. Its own `tensor*` methods see only
    /// that part's tensors: use this model's.
    pub fn meta(&self) -> &GgufFile {
        &self.parts[0]
    }

    /// Bytes of every part together.
    pub fn total_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes().len() as u64).sum()
    }

    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.parts[0].get(key)
    }

    pub fn require(&self, key: &str) -> Result<Value<'_>> {
        self.parts[0].require(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.parts[0].get_str(key)
    }

    pub fn get_array(&self, key: &str) -> Result<ArrayRef<'_>> {
        self.parts[0].get_array(key)
    }

    /// Metadata of the first part in file order, without the `split.*` keys (they describe
    /// the files, not the model).
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> + '_ {
        self.parts[0]
            .metadata()
            .filter(|(k, _)| !k.starts_with("split."))
    }

    pub fn n_tensors(&self) -> usize {
        self.order.len()
    }

    /// Every tensor's description, in part order then file order.
    pub fn tensor_infos(&self) -> impl Iterator<Item = &TensorInfo> + '_ {
        self.order
            .iter()
            .map(move |&(p, t)| &self.parts[p].tensor_infos()[t])
    }

    /// Every tensor with its bytes, in part order then file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.order
            .iter()
            .map(move |&(p, t)| self.parts[p].tensor_at(t))
    }

    /// The `i`-th tensor in part order then file order. Panics if `i` is out of range.
    pub fn tensor_at(&self, i: usize) -> TensorView<'_> {
        let (p, t) = self.order[i];
        self.parts[p].tensor_at(t)
    }

    /// A tensor and its bytes, from whichever part holds it.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &i = self
            .by_name
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })?;
        let (p, t) = self.order[i];
        Ok(self.parts[p].tensor_at(t))
    }

    /// Drops the resident pages of `bytes` (a slice of one of the parts, e.g. a consumed
    /// tensor's data): see [`GgufFile::release`].
    pub fn release(&self, bytes: &[u8]) {
        for p in &self.parts {
            p.release(bytes);
        }
    }

    /// Which part holds `name` and where its bytes start in that file.
    pub fn location(&self, name: &str) -> Result<TensorLocation> {
        let &i = self
            .by_name
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })?;
        let (p, t) = self.order[i];
        let f = &self.parts[p];
        let info = &f.tensor_infos()[t];
        Ok(TensorLocation {
            part: p,
            offset: f.data_offset() + info.offset,
            size: info.size,
        })
    }
}

macro_rules! typed_getters {
    ($($fn:ident : $t:ty;)*) => {
        impl GgufModel {
            $(
                #[doc = concat!("[`GgufFile::", stringify!($fn), "`] on the first part.")]
                pub fn $fn(&self, key: &str) -> Result<$t> {
                    self.parts[0].$fn(key)
                }
            )*
        }
    };
}

typed_getters! {
    get_u8: u8; get_i8: i8; get_u16: u16; get_i16: i16; get_u32: u32; get_i32: i32;
    get_f32: f32; get_bool: bool; get_u64: u64; get_i64: i64; get_f64: f64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_split_path() {
        let p = split_path(Path::new("/m/model"), 0, 3);
        assert_eq!(p, Path::new("/m/model-00001-of-00003.gguf"));
        assert_eq!(
            split_prefix(&p, 0, 3).as_deref(),
            Some(Path::new("/m/model"))
        );
        assert_eq!(split_prefix(&p, 1, 3), None);
        assert_eq!(split_prefix(Path::new("-00001-of-00003.gguf"), 0, 3), None);
    }
}
