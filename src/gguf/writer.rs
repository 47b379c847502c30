//! The GGUF writer: plan everything first (metadata, names, types, offsets), then stream the
//! tensor data in order. Same plan and data -> the same bytes. `write_file` writes to a
//! temporary file beside the target and renames it into place only when everything succeeded.

use super::error::{GgufError, Result};
use super::reader::{DEFAULT_ALIGNMENT, MAX_DIMS, MAX_NAME};
use super::value::{MetaValue, ValueType};
use crate::output::AtomicFile;
use crate::quant::GgmlType;
use std::collections::HashSet;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// A planned tensor: its place in the data section is fixed when it is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order (`ne[0]` fastest).
    pub ne: Vec<u64>,
    /// Offset relative to the data section.
    pub offset: u64,
    pub size: u64,
}

/// Builds a GGUF v3 file.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    alignment: u64,
    kvs: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<TensorPlan>,
    names: HashSet<String>,
    data_size: u64,
    allow_nested_arrays: bool,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn plan_err(msg: impl Into<String>) -> GgufError {
    GgufError::Plan(msg.into())
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            data_size: 0,
            allow_nested_arrays: false,
        }
    }

    /// Allows arrays of arrays. gguf-py writes them, but llama.cpp refuses any file that holds
    /// one, so they are off by default.
    pub fn allow_nested_arrays(mut self, yes: bool) -> Self {
        self.allow_nested_arrays = yes;
        self
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Adds a metadata entry. Keys are written in the order they are added. Setting
    /// `general.alignment` (a u32 power of two) changes the data alignment; it must come before
    /// any tensor is added.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        if key.is_empty() {
            return Err(plan_err("empty metadata key"));
        }
        if self.keys.contains(&key) {
            return Err(plan_err(format!("duplicate metadata key '{key}'")));
        }
        check_value(&key, &value, self.allow_nested_arrays)?;
        if key == "general.alignment" {
            let MetaValue::U32(a) = value else {
                return Err(plan_err(format!(
                    "general.alignment must be u32, not {}",
                    value.value_type()
                )));
            };
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment { value: a.into() });
            }
            if !self.tensors.is_empty() {
                return Err(plan_err(
                    "general.alignment must be set before adding tensors",
                ));
            }
            self.alignment = a.into();
        }
        self.keys.insert(key.clone());
        self.kvs.push((key, value));
        Ok(())
    }

    /// Adds a tensor of type `ty` and ggml dimensions `ne`; returns its plan.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, ne: &[u64]) -> Result<&TensorPlan> {
        if name.len() as u64 >= MAX_NAME {
            return Err(plan_err(format!(
                "tensor name '{name}' is {} bytes, ggml allows at most 63",
                name.len()
            )));
        }
        if self.names.contains(name) {
            return Err(plan_err(format!("duplicate tensor name '{name}'")));
        }
        if ne.len() > MAX_DIMS as usize {
            return Err(plan_err(format!(
                "tensor '{name}' has {} dimensions, at most 4",
                ne.len()
            )));
        }
        let size = ty.tensor_bytes(ne).ok_or_else(|| {
            plan_err(format!(
                "tensor '{name}': shape {ne:?} is not a whole number of {ty} blocks of {} or overflows",
                ty.block_size()
            ))
        })?;
        if ne
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n))
            .is_none_or(|n| n > i64::MAX as u64)
        {
            return Err(plan_err(format!(
                "tensor '{name}': element count overflows"
            )));
        }
        let offset = self.data_size;
        self.data_size = offset
            .checked_add(align_up(size, self.alignment))
            .ok_or_else(|| plan_err("data section size overflows"))?;
        self.names.insert(name.to_string());
        self.tensors.push(TensorPlan {
            name: name.to_string(),
            ty,
            ne: ne.to_vec(),
            offset,
            size,
        });
        Ok(self.tensors.last().expect("just pushed"))
    }

    pub fn tensors(&self) -> &[TensorPlan] {
        &self.tensors
    }

    /// Header, metadata, tensor infos and the padding up to the data section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            v.encode(&mut out);
        }
        for t in &self.tensors {
            out.extend_from_slice(&(t.name.len() as u64).to_le_bytes());
            out.extend_from_slice(t.name.as_bytes());
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for &n in &t.ne {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        // ggml's and gguf-py's writers pad even when no tensor follows; so do we, so that
        // metadata-only files are byte-identical to theirs.
        let padded = align_up(out.len() as u64, self.alignment) as usize;
        out.resize(padded, 0);
        out
    }

    /// Total bytes the file will have.
    pub fn file_size(&self) -> u64 {
        self.header_bytes().len() as u64 + self.data_size
    }

    /// Streams the file into `w`. `data` is called once per tensor, in order, and must write
    /// exactly that tensor's `size` bytes.
    pub fn write_to<W: Write>(
        &self,
        w: &mut W,
        mut data: impl FnMut(usize, &TensorPlan, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let io = |e| GgufError::io("<output>", e);
        w.write_all(&self.header_bytes()).map_err(io)?;
        let zeros = vec![0u8; self.alignment as usize];
        for (i, t) in self.tensors.iter().enumerate() {
            let mut counting = CountingWriter {
                inner: &mut *w,
                n: 0,
            };
            data(i, t, &mut counting)?;
            if counting.n != t.size {
                return Err(GgufError::DataSize {
                    name: t.name.clone(),
                    written: counting.n,
                    expected: t.size,
                });
            }
            let pad = align_up(t.size, self.alignment) - t.size;
            w.write_all(&zeros[..pad as usize]).map_err(io)?;
        }
        w.flush().map_err(io)
    }

    /// Writes the file to `path` atomically: a temporary `.NAME.<pid>.tmp` in the same
    /// directory (see [`crate::output::AtomicFile`]), synced, then renamed over `path`. Every
    /// 64 MiB the kernel is asked to start writing what was written (without waiting), so disk
    /// writes overlap the producer instead of piling up for the final sync. On any error, a
    /// panic or SIGINT/SIGTERM nothing appears under `path` and the temporary file is removed;
    /// after a SIGKILL the next write of the same name removes it.
    pub fn write_file(
        &self,
        path: impl AsRef<Path>,
        data: impl FnMut(usize, &TensorPlan, &mut dyn Write) -> Result<()>,
    ) -> Result<()> {
        let path = path.as_ref();
        self.write_pending(path, data)?
            .commit()
            .map_err(|e| output_err(path, e))
    }

    /// Writes the whole file under its temporary name and returns it uncommitted: the caller
    /// renames it into place with [`AtomicFile::commit`] once its other outputs are ready too
    /// (dropping it removes the file).
    pub fn write_pending(
        &self,
        path: impl AsRef<Path>,
        data: impl FnMut(usize, &TensorPlan, &mut dyn Write) -> Result<()>,
    ) -> Result<AtomicFile> {
        let path = path.as_ref();
        let tmp = AtomicFile::create(path).map_err(|e| output_err(path, e))?;
        let with_path = |e: GgufError| match e {
            GgufError::Io { path: p, source } if p.as_os_str() == "<output>" => {
                GgufError::io(path, source)
            }
            other => other,
        };
        {
            let mut w = Writeback {
                inner: BufWriter::with_capacity(1 << 20, tmp.file()),
                written: 0,
                requested: 0,
            };
            self.write_to(&mut w, data).map_err(with_path)?;
        }
        Ok(tmp)
    }
}

fn output_err(path: &Path, e: crate::output::OutputError) -> GgufError {
    match e {
        crate::output::OutputError::Io { path, source } => GgufError::io(path, source),
        other => GgufError::io(path, std::io::Error::other(other.to_string())),
    }
}

fn check_value(key: &str, v: &MetaValue, allow_nested: bool) -> Result<()> {
    if let MetaValue::Array { elem, items } = v {
        if *elem == ValueType::Array && !allow_nested {
            return Err(plan_err(format!(
                "key '{key}' is an array of arrays, which llama.cpp cannot load (use allow_nested_arrays)"
            )));
        }
        if let Some(bad) = items.iter().find(|it| it.value_type() != *elem) {
            return Err(plan_err(format!(
                "key '{key}': array of {elem} holds a {}",
                bad.value_type()
            )));
        }
        for it in items {
            check_value(key, it, allow_nested)?;
        }
    }
    Ok(())
}

/// Bytes between two write-back requests.
const WRITEBACK_EVERY: u64 = 64 << 20;

/// A buffered file writer that starts write-back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`,
/// which does not wait) every [`WRITEBACK_EVERY`] bytes. Without it the dirty pages of a
/// multi-GB output accumulate and the final fsync writes them all after the work is done.
struct Writeback<'f> {
    inner: BufWriter<&'f std::fs::File>,
    written: u64,
    requested: u64,
}

impl Write for Writeback<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written - self.requested >= WRITEBACK_EVERY {
            self.inner.flush()?;
            start_writeback(
                self.inner.get_ref(),
                self.requested,
                self.written - self.requested,
            );
            self.requested = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a byte range of it; the call only schedules I/O.
    // Failure is harmless (the final fsync writes whatever is left), so it is ignored.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &std::fs::File, _: u64, _: u64) {}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
