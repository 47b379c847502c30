//! A Hugging Face checkpoint's weights: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists. Each shard is memory-mapped once and its header
//! validated completely by the `safetensors` crate before any tensor is read; tensors are
//! borrowed views into the maps. `release` hands a tensor's pages back to the kernel after use,
//! so converting a 55 GB checkpoint does not leave 55 GB of mapped pages resident.

use memmap2::{Advice, Mmap, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const INDEX: &str = "model.safetensors.index.json";
pub const SINGLE: &str = "model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: neither {SINGLE} nor {INDEX} is here", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("{}: {msg}", path.display())]
    BadIndex { path: PathBuf, msg: String },
    #[error("missing shard {}: {INDEX} maps {count} tensors to it (e.g. '{tensor}')", path.display())]
    MissingShard {
        path: PathBuf,
        tensor: String,
        count: usize,
    },
    #[error("{}: not a valid safetensors file: {source}", path.display())]
    Format {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    #[error("tensor '{tensor}' is missing from its shard {}: {INDEX} lists it there", path.display())]
    NotInShard { path: PathBuf, tensor: String },
}

/// Where one tensor's bytes lie in its shard.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: Dtype,
    /// PyTorch order (slowest first).
    pub shape: Vec<usize>,
    shard: usize,
    /// Offset of the first byte in the shard's file.
    start: usize,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Every weight of a checkpoint directory, by its name in the checkpoint.
#[derive(Debug)]
pub struct Weights {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorEntry>,
}

fn map_shard(path: &Path) -> Result<Mmap, ShardError> {
    let io = |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private; the checkpoint must not be truncated while we
    // convert it (as with every mmap-based reader: safetensors, llama.cpp, PyTorch).
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    // Tensors are read front to back: let the kernel read ahead.
    let _ = map.advise(Advice::Sequential);
    Ok(map)
}

/// The tensors of shard number `shard`. The safetensors crate checks the header (JSON, dtypes,
/// offsets in bounds, no overlaps, sizes match shapes) without touching the data pages.
fn read_header(
    path: &Path,
    map: &Mmap,
    shard: usize,
) -> Result<Vec<(String, TensorEntry)>, ShardError> {
    let st = SafeTensors::deserialize(map).map_err(|source| ShardError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let base = map.as_ptr() as usize;
    Ok(st
        .iter()
        .map(|(name, v)| {
            let entry = TensorEntry {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                shard,
                start: v.data().as_ptr() as usize - base,
            };
            (name.to_string(), entry)
        })
        .collect())
}

impl Weights {
    /// Opens `dir`'s weights: the index and its shards, or the single file.
    pub fn open(dir: &Path) -> Result<Weights, ShardError> {
        let index = dir.join(INDEX);
        if index.is_file() {
            return Self::open_index(dir, &index);
        }
        let single = dir.join(SINGLE);
        if !single.is_file() {
            return Err(ShardError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        let map = map_shard(&single)?;
        let tensors = read_header(&single, &map, 0)?.into_iter().collect();
        Ok(Weights {
            shards: vec![Shard { path: single, map }],
            tensors,
        })
    }

    fn open_index(dir: &Path, index: &Path) -> Result<Weights, ShardError> {
        let bad = |msg: String| ShardError::BadIndex {
            path: index.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(index).map_err(|source| ShardError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let j: Json = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = j
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        // shard file -> tensor names, in the order the files are first named.
        let mut files: Vec<(String, Vec<String>)> = Vec::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("the shard of '{name}' is not a string")))?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(bad(format!("shard name '{file}' is not a plain file name")));
            }
            match files.iter_mut().find(|(f, _)| f == file) {
                Some((_, names)) => names.push(name.clone()),
                None => files.push((file.to_string(), vec![name.clone()])),
            }
        }
        files.sort();
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = BTreeMap::new();
        for (i, (file, names)) in files.into_iter().enumerate() {
            let path = dir.join(&file);
            if !path.is_file() {
                return Err(ShardError::MissingShard {
                    path,
                    tensor: names[0].clone(),
                    count: names.len(),
                });
            }
            let mmap = map_shard(&path)?;
            let mut found: HashMap<String, TensorEntry> =
                read_header(&path, &mmap, i)?.into_iter().collect();
            for name in names {
                let entry = found.remove(&name).ok_or_else(|| ShardError::NotInShard {
                    path: path.clone(),
                    tensor: name.clone(),
                })?;
                tensors.insert(name, entry);
            }
            shards.push(Shard { path, map: mmap });
        }
        Ok(Weights { shards, tensors })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn shard_path(&self, t: &TensorEntry) -> &Path {
        &self.shards[t.shard].path
    }

    pub fn shard_paths(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    pub fn n_shards(&self) -> usize {
        self.shards.len()
    }

    /// The bytes of `t[range]` (a byte range within the tensor).
    pub fn bytes(&self, t: &TensorEntry, range: std::ops::Range<usize>) -> &[u8] {
        &self.shards[t.shard].map[t.start + range.start..t.start + range.end]
    }

    /// Drops the resident pages of `t[range]` from this process. The map is read-only and
    /// backed by the file, so a later read faults the data back in unchanged.
    pub fn release(&self, t: &TensorEntry, range: std::ops::Range<usize>) {
        let map = &self.shards[t.shard].map;
        let page = page_size();
        // Only whole pages inside the range: a neighbour's pages stay mapped.
        let start = (t.start + range.start).div_ceil(page) * page;
        let end = ((t.start + range.end) / page * page).min(map.len());
        if end > start {
            // SAFETY: MADV_DONTNEED on a read-only private file mapping only discards the
            // cached copy of the pages; no data is changed or lost (it is re-read from the file).
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}
