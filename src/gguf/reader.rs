//! The GGUF reader: validates the whole header against ggml's `gguf.cpp` rules before any
//! tensor byte is trusted, then hands out borrowed views into the memory map.
//!
//! Differences from ggml, on purpose:
//! - arrays of arrays are read (ggml rejects the file);
//! - keys and tensor names must be valid UTF-8 (ggml does not check);
//! - every tensor's data must lie inside the file when it is opened (ggml's metadata-only
//!   reader leaves that to llama.cpp's model loader).
//!
//! Version 2 files are read (their layout is version 3's; ggml reads them too); version 1 is
//! refused, as ggml refuses it.

use super::error::{GgufError, Result};
use super::value::{decode_value, ArrayRef, Value, ValueType};
use crate::quant::{dequantize, GgmlType};
use memmap2::{Mmap, UncheckedAdvice};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// `GGUF_DEFAULT_ALIGNMENT`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `GGUF_MAX_STRING_LENGTH` and `GGUF_MAX_ARRAY_ELEMENTS` (both 1 GiB).
pub const MAX_STRING_LENGTH: u64 = 1 << 30;
pub const MAX_ARRAY_ELEMENTS: u64 = 1 << 30;
/// `GGML_MAX_NAME`: names are at most 63 bytes.
pub const MAX_NAME: u64 = 64;
/// `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// How deep arrays of arrays may nest before the file is refused (a stack guard).
pub const MAX_ARRAY_DEPTH: u32 = 16;

/// Smallest encodings, used to bound counts by the bytes left before allocating.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Most entries reserved before any is read: a count is only bounded by the file size, and
/// reserving for it up front would take several times a large file's size (an abort when that
/// cannot be allocated); past this the vectors grow as entries are actually read.
const MAX_PREALLOC: u64 = 1024;

/// One metadata entry: where its value lies in the file.
#[derive(Debug, Clone)]
pub struct KvInfo {
    pub key: String,
    /// Byte offset of the key in the file.
    pub offset: u64,
    pub ty: ValueType,
    /// Byte range of the value (after its type id) in the file.
    start: usize,
    end: usize,
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// Dimensions in ggml order (`ne[0]` varies fastest); as many as the file declares (0..=4).
    pub ne: Vec<u64>,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// The shape in numpy / PyTorch order (`ne` reversed).
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// `ne` padded to four dimensions with ones, as ggml keeps it.
    pub fn ne4(&self) -> [u64; 4] {
        let mut out = [1u64; 4];
        out[..self.ne.len()].copy_from_slice(&self.ne);
        out
    }
}

/// Everything parsed from a GGUF header. Holds no borrow of the bytes.
#[derive(Debug, Clone)]
pub struct GgufIndex {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub kvs: Vec<KvInfo>,
    pub tensors: Vec<TensorInfo>,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.left(),
            });
        }
        let n = n as usize;
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `gguf_string`: u64 length, then bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let at = self.pos as u64;
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > MAX_STRING_LENGTH {
            return Err(GgufError::TooLarge {
                what: format!("length of {}", what()),
                offset: at,
                count: len,
                limit: MAX_STRING_LENGTH,
            });
        }
        self.take(len, what)
    }

    /// Skips one value of type `ty`, validating it; `depth` counts array nesting.
    fn skip_value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<()> {
        match ty {
            ValueType::String => {
                self.string(&|| format!("string value of key '{key}'"))?;
            }
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooLarge {
                        what: format!("array nesting depth of key '{key}'"),
                        offset: self.pos as u64,
                        count: u64::from(depth) + 1,
                        limit: u64::from(MAX_ARRAY_DEPTH),
                    });
                }
                let at = self.pos as u64;
                let elem_id = self.u32(&|| format!("array type of key '{key}'"))?;
                let elem = ValueType::from_id(elem_id).ok_or(GgufError::InvalidValueType {
                    key: key.to_string(),
                    type_id: elem_id,
                    offset: at,
                })?;
                let count_at = self.pos as u64;
                let n = self.u64(&|| format!("array length of key '{key}'"))?;
                if n > MAX_ARRAY_ELEMENTS {
                    return Err(GgufError::TooLarge {
                        what: format!("array length of key '{key}'"),
                        offset: count_at,
                        count: n,
                        limit: MAX_ARRAY_ELEMENTS,
                    });
                }
                // Each element takes at least this many bytes: refuse counts the file cannot
                // hold before walking them (as ggml does).
                let min = match elem {
                    ValueType::String => 8,
                    ValueType::Array => 12,
                    t => t.fixed_size().unwrap_or(1) as u64,
                };
                if n.saturating_mul(min) > self.left() {
                    return Err(GgufError::Truncated {
                        what: format!("{n} elements of array '{key}'"),
                        offset: self.pos as u64,
                        needed: n.saturating_mul(min),
                        available: self.left(),
                    });
                }
                match elem.fixed_size() {
                    Some(sz) => {
                        self.take(n * sz as u64, &|| format!("elements of array '{key}'"))?;
                    }
                    None => {
                        for _ in 0..n {
                            self.skip_value(elem, key, depth + 1)?;
                        }
                    }
                }
            }
            t => {
                let sz = t.fixed_size().unwrap_or(0) as u64;
                self.take(sz, &|| format!("value of key '{key}'"))?;
            }
        }
        Ok(())
    }
}

fn utf8(b: &[u8], what: impl Fn() -> String, offset: u64) -> Result<String> {
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| GgufError::InvalidUtf8 {
            what: what(),
            offset,
        })
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufIndex {
    /// Parses and validates a whole GGUF header from `bytes` (the entire file).
    pub fn parse(bytes: &[u8]) -> Result<GgufIndex> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let magic = c.take(4, &|| "magic".into())?;
        if magic != b"GGUF" {
            return Err(GgufError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = c.u32(&|| "version".into())?;
        let reason = match version {
            0 => Some("version 0 is invalid"),
            v if v & 0xFFFF == 0 => {
                Some("the version looks byte-swapped: is this a big-endian file?")
            }
            1 => Some(
                "GGUF v1 is no longer supported (llama.cpp refuses it too); re-convert the model",
            ),
            v if v > 3 => Some("this file is newer than GGUF v3"),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(GgufError::UnsupportedVersion { version, reason });
        }
        let count = |c: &mut Cursor, what: &str, min: u64| -> Result<u64> {
            let at = c.pos as u64;
            let n = c.u64(&|| what.to_string())?;
            // ggml reads these as int64 and refuses negatives; a count whose minimal encoding
            // does not fit in what is left of the file cannot be valid either.
            let limit = (c.left() / min).min(i64::MAX as u64);
            if n > limit {
                return Err(GgufError::TooLarge {
                    what: what.to_string(),
                    offset: at,
                    count: n,
                    limit,
                });
            }
            Ok(n)
        };
        let n_tensors = count(&mut c, "tensor count", MIN_TENSOR_INFO_BYTES)?;
        let n_kv = count(&mut c, "metadata key count", MIN_KV_BYTES)?;

        let cap = n_kv.min(MAX_PREALLOC) as usize;
        let mut kvs = Vec::with_capacity(cap);
        let mut key_index = HashMap::with_capacity(cap);
        for i in 0..n_kv {
            let key_at = c.pos as u64;
            let raw = c.string(&|| format!("key #{i}"))?;
            if raw.is_empty() {
                return Err(GgufError::EmptyKey {
                    index: i,
                    offset: key_at,
                });
            }
            let key = utf8(raw, || format!("key #{i}"), key_at)?;
            if key_index.contains_key(&key) {
                return Err(GgufError::DuplicateKey {
                    key,
                    offset: key_at,
                });
            }
            let type_at = c.pos as u64;
            let type_id = c.u32(&|| format!("type of key '{key}'"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::InvalidValueType {
                key: key.clone(),
                type_id,
                offset: type_at,
            })?;
            let start = c.pos;
            c.skip_value(ty, &key, 0)?;
            key_index.insert(key.clone(), kvs.len());
            kvs.push(KvInfo {
                key,
                offset: key_at,
                ty,
                start,
                end: c.pos,
            });
        }

        let mut alignment = DEFAULT_ALIGNMENT;
        if let Some(&i) = key_index.get("general.alignment") {
            let kv = &kvs[i];
            if kv.ty != ValueType::U32 {
                return Err(GgufError::WrongType {
                    key: kv.key.clone(),
                    expected: "u32".into(),
                    found: kv.ty.name().into(),
                });
            }
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[kv.start..kv.start + 4]);
            let a = u64::from(u32::from_le_bytes(b));
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment { value: a });
            }
            alignment = a;
        }

        let cap = n_tensors.min(MAX_PREALLOC) as usize;
        let mut tensors = Vec::with_capacity(cap);
        let mut tensor_index = HashMap::with_capacity(cap);
        for i in 0..n_tensors {
            let at = c.pos as u64;
            let raw = c.string(&|| format!("name of tensor #{i}"))?;
            if raw.len() as u64 >= MAX_NAME {
                return Err(GgufError::TensorNameTooLong {
                    len: raw.len() as u64,
                    offset: at,
                });
            }
            let name = utf8(raw, || format!("name of tensor #{i}"), at)?;
            if tensor_index.contains_key(&name) {
                return Err(GgufError::DuplicateTensor { name, offset: at });
            }
            let n_dims = c.u32(&|| format!("n_dims of tensor '{name}'"))?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    name,
                    n_dims,
                    offset: at,
                });
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for j in 0..n_dims {
                ne.push(c.u64(&|| format!("dimension {j} of tensor '{name}'"))?);
            }
            let bad = |reason: String| GgufError::BadShape {
                name: name.clone(),
                offset: at,
                ne: ne.clone(),
                reason,
            };
            if let Some(j) = ne.iter().position(|&n| n > i64::MAX as u64) {
                return Err(bad(format!("dimension {j} is negative as int64")));
            }
            // ggml: the element count must be representable as int64.
            let mut nel: u64 = 1;
            for &n in &ne {
                nel = nel
                    .checked_mul(n)
                    .filter(|&v| v <= i64::MAX as u64)
                    .ok_or_else(|| bad("element count overflows int64".into()))?;
            }
            let type_at = c.pos as u64;
            let type_id = c.u32(&|| format!("type of tensor '{name}'"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                name: name.clone(),
                type_id,
                offset: type_at,
            })?;
            let ne0 = ne.first().copied().unwrap_or(1);
            if ne0 % ty.block_size() != 0 {
                return Err(bad(format!(
                    "{ne0} elements per row is not a multiple of the {ty} block size {}",
                    ty.block_size()
                )));
            }
            let size = ty
                .tensor_bytes(&ne)
                .ok_or_else(|| bad("size in bytes overflows".into()))?;
            let offset = c.u64(&|| format!("data offset of tensor '{name}'"))?;
            tensor_index.insert(name.clone(), tensors.len());
            tensors.push(TensorInfo {
                name,
                ty,
                ne,
                offset,
                size,
            });
        }

        let file_len = bytes.len() as u64;
        let data_offset = if n_tensors > 0 {
            align_up(c.pos as u64, alignment).ok_or_else(|| GgufError::Truncated {
                what: "padding before tensor data".into(),
                offset: c.pos as u64,
                needed: alignment,
                available: c.left(),
            })?
        } else {
            c.pos as u64
        };
        if data_offset > file_len {
            return Err(GgufError::Truncated {
                what: "padding before tensor data".into(),
                offset: c.pos as u64,
                needed: data_offset - c.pos as u64,
                available: c.left(),
            });
        }
        let mut expected = 0u64;
        for t in &tensors {
            if t.offset != expected {
                return Err(GgufError::BadTensorOffset {
                    name: t.name.clone(),
                    found: t.offset,
                    expected,
                    alignment,
                });
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        name: t.name.clone(),
                        start: data_offset.saturating_add(t.offset),
                        end: data_offset.saturating_add(t.offset).saturating_add(t.size),
                        file_len,
                    })
                }
            }
            expected = align_up(t.size, alignment)
                .and_then(|p| expected.checked_add(p))
                .ok_or_else(|| GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    start: t.offset,
                    end: u64::MAX,
                    file_len,
                })?;
        }

        Ok(GgufIndex {
            version,
            alignment,
            data_offset,
            kvs,
            tensors,
            key_index,
            tensor_index,
        })
    }
}

enum Storage {
    Map(Mmap),
    Owned(Vec<u8>),
}

/// An open GGUF file: the memory map and its validated index. Tensor data and metadata strings
/// are borrowed from the map, so no view outlives the file.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    index: GgufIndex,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.index.version)
            .field("kvs", &self.index.kvs.len())
            .field("tensors", &self.index.tensors.len())
            .finish()
    }
}

/// A tensor's description with its bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    pub fn ty(&self) -> GgmlType {
        self.info.ty
    }

    /// The data as blocks of `B`, without copying; `None` if the size or the alignment in
    /// memory does not allow the cast (a file with `general.alignment` below the block's).
    pub fn blocks<B: bytemuck::Pod>(&self) -> Option<&'a [B]> {
        bytemuck::try_cast_slice(self.data).ok()
    }

    /// The data decoded to f32 (a copy).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = usize::try_from(self.info.n_elements()).map_err(|_| GgufError::BadShape {
            name: self.info.name.clone(),
            offset: 0,
            ne: self.info.ne.clone(),
            reason: "too many elements for this machine".into(),
        })?;
        let mut out = vec![0f32; n];
        dequantize(self.info.ty, self.data, &mut out).map_err(|source| GgufError::Codec {
            name: self.info.name.clone(),
            source,
        })?;
        Ok(out)
    }
}

impl GgufFile {
    /// Opens and validates a file, memory-mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, e))?.len();
        let storage = if len == 0 {
            // mmap of an empty file fails; an empty buffer gives the proper "truncated" error.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. Another process truncating or rewriting the file
            // while it is mapped would change the bytes under us (the usual mmap caveat, shared
            // with llama.cpp); every offset into it was checked against the length at open.
            Storage::Map(unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?)
        };
        Self::with_storage(path.to_path_buf(), storage)
    }

    /// Validates a file already in memory (tests, fuzzing, network buffers).
    pub fn from_vec(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::with_storage(PathBuf::from("<memory>"), Storage::Owned(bytes))
    }

    fn with_storage(path: PathBuf, storage: Storage) -> Result<GgufFile> {
        let bytes: &[u8] = match &storage {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        };
        let index = GgufIndex::parse(bytes)?;
        Ok(GgufFile {
            path,
            storage,
            index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        }
    }

    /// Drops this process's resident copy of the whole pages of the map that lie inside
    /// `bytes` (a slice of this file, e.g. a tensor's data already consumed), so a pass over a
    /// large file does not keep it all resident. The map is read-only and file-backed: a later
    /// read faults the same bytes back in. A slice that is not in the map, or a file held in
    /// memory, is left alone.
    pub fn release(&self, bytes: &[u8]) {
        let Storage::Map(map) = &self.storage else {
            return;
        };
        let base = map.as_ptr() as usize;
        let (lo, hi) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        if lo < base || hi > base + map.len() {
            return;
        }
        let page = page_size();
        // Only whole pages inside the slice: a neighbour's pages stay.
        let start = (lo - base).div_ceil(page) * page;
        let end = (hi - base) / page * page;
        if end > start {
            // SAFETY: MADV_DONTNEED on a read-only file mapping only discards the cached copy
            // of the pages; the bytes are unchanged (re-read from the file on the next access),
            // so outstanding borrows of the map stay valid.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }

    pub fn index(&self) -> &GgufIndex {
        &self.index
    }

    pub fn version(&self) -> u32 {
        self.index.version
    }

    pub fn alignment(&self) -> u64 {
        self.index.alignment
    }

    pub fn data_offset(&self) -> u64 {
        self.index.data_offset
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> + '_ {
        self.index
            .kvs
            .iter()
            .filter_map(move |kv| Some((kv.key.as_str(), self.value_of(kv)?)))
    }

    fn value_of(&self, kv: &KvInfo) -> Option<Value<'_>> {
        decode_value(kv.ty, self.bytes().get(kv.start..kv.end)?).map(|(v, _)| v)
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        let &i = self.index.key_index.get(key)?;
        self.value_of(&self.index.kvs[i])
    }

    /// The value of `key`, or an error naming it.
    pub fn require(&self, key: &str) -> Result<Value<'_>> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &str, v: &Value<'_>) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected: expected.to_string(),
            found: v.type_name(),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<ArrayRef<'_>> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "arr", &v))
    }

    /// A UTF-8 string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => std::str::from_utf8(s).map_err(|_| GgufError::InvalidUtf8 {
                what: format!("value of key '{key}'"),
                offset: self
                    .index
                    .key_index
                    .get(key)
                    .map_or(0, |&i| self.index.kvs[i].offset),
            }),
            v => Err(Self::wrong(key, "str", &v)),
        }
    }

    /// Names the tensors in file order.
    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.index.tensors
    }

    /// A tensor and its bytes.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &i = self
            .index
            .tensor_index
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })?;
        Ok(self.tensor_at(i))
    }

    /// The `i`-th tensor (file order). Panics if `i` is out of range.
    pub fn tensor_at(&self, i: usize) -> TensorView<'_> {
        let info = &self.index.tensors[i];
        // Bounds were checked at open: data_offset + offset + size <= file length.
        let start = (self.index.data_offset + info.offset) as usize;
        TensorView {
            info,
            data: &self.bytes()[start..start + info.size as usize],
        }
    }

    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        (0..self.index.tensors.len()).map(move |i| self.tensor_at(i))
    }
}

macro_rules! typed_getters {
    ($($fn:ident => $variant:ident : $t:ty, $name:literal;)*) => {
        impl GgufFile {
            $(
                #[doc = concat!("The `", $name, "` value of `key`; an error names the key if it is missing or of another type.")]
                pub fn $fn(&self, key: &str) -> Result<$t> {
                    match self.require(key)? {
                        Value::$variant(v) => Ok(v),
                        v => Err(Self::wrong(key, $name, &v)),
                    }
                }
            )*
        }
    };
}

typed_getters! {
    get_u8 => U8: u8, "u8";
    get_i8 => I8: i8, "i8";
    get_u16 => U16: u16, "u16";
    get_i16 => I16: i16, "i16";
    get_u32 => U32: u32, "u32";
    get_i32 => I32: i32, "i32";
    get_f32 => F32: f32, "f32";
    get_bool => Bool: bool, "bool";
    get_u64 => U64: u64, "u64";
    get_i64 => I64: i64, "i64";
    get_f64 => F64: f64, "f64";
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}
