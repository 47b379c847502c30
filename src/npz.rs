//! NumPy `.npz` archives: a zip (stored or deflated members) of `.npy` arrays.
//!
//! Opening an archive reads the zip directory and only the `.npy` header of each member, so a
//! caller can check names and shapes before any array is decompressed. Every size is checked
//! against what the archive holds before memory is reserved for it: a member's declared size
//! must equal its header plus the data its shape needs, and that data cannot exceed what its
//! compressed bytes can expand to (deflate's ratio is at most 1032:1; a stored member holds
//! exactly its bytes). Reading an array decompresses exactly that many bytes.

use crate::npy::{self, NpyArray, NpyError, NpyHeader};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable .npz (zip) archive: {reason}")]
    Zip { path: PathBuf, reason: String },
    #[error("{path}: member '{member}': {source}")]
    Member {
        path: PathBuf,
        member: String,
        #[source]
        source: NpyError,
    },
    #[error("{path}: member '{member}': {reason}")]
    Size {
        path: PathBuf,
        member: String,
        reason: String,
    },
    #[error("{path}: no member '{member}'")]
    Missing { path: PathBuf, member: String },
}

/// Deflate cannot expand data more than this (RFC 1951: a 258-byte match per ~2 bits).
const DEFLATE_MAX_RATIO: u64 = 1032;

/// One array in the archive: its name without `.npy`, and its header.
#[derive(Debug, Clone)]
pub struct Member {
    pub key: String,
    pub header: NpyHeader,
    index: usize,
}

/// An opened archive: the members' headers, data not yet read.
#[derive(Debug)]
pub struct NpzArchive<R: Read + std::io::Seek> {
    path: PathBuf,
    zip: zip::ZipArchive<R>,
    members: Vec<Member>,
}

impl NpzArchive<std::io::BufReader<std::fs::File>> {
    pub fn open(path: &Path) -> Result<Self, NpzError> {
        let file = std::fs::File::open(path).map_err(|source| NpzError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(path, std::io::BufReader::new(file))
    }
}

impl<R: Read + std::io::Seek> NpzArchive<R> {
    /// Reads the directory and every member's header from `reader` (`path` names it in errors).
    pub fn new(path: &Path, reader: R) -> Result<Self, NpzError> {
        let zip_err = |e: zip::result::ZipError| NpzError::Zip {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut zip = zip::ZipArchive::new(reader).map_err(zip_err)?;
        let mut members = Vec::with_capacity(zip.len().min(1 << 16));
        let mut seen = std::collections::HashSet::new();
        for index in 0..zip.len() {
            let mut m = zip.by_index(index).map_err(zip_err)?;
            let name = m.name().to_string();
            let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
            let size_err = |reason: String| NpzError::Size {
                path: path.to_path_buf(),
                member: key.clone(),
                reason,
            };
            if !seen.insert(key.clone()) {
                return Err(size_err("appears twice in the archive".into()));
            }
            let declared = m.size();
            let packed = m.compressed_size();
            let can_hold = match m.compression() {
                zip::CompressionMethod::Stored => packed,
                _ => packed
                    .saturating_mul(DEFLATE_MAX_RATIO)
                    .saturating_add(1024),
            };
            if declared > can_hold {
                return Err(size_err(format!(
                    "claims {declared} bytes, more than its {packed} compressed bytes can hold"
                )));
            }
            // The header: the fixed part, then as much as its length field says (bounded).
            let mut head = vec![0u8; 12];
            let got = read_up_to(&mut m, &mut head).map_err(|e| size_err(e.to_string()))?;
            head.truncate(got);
            let hlen = match head.get(6) {
                Some(1) if got >= 10 => usize::from(u16::from_le_bytes([head[8], head[9]])) + 10,
                Some(2 | 3) if got >= 12 => {
                    u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize + 12
                }
                _ => got,
            };
            if hlen > got && hlen <= npy::MAX_HEADER + 12 {
                let mut rest = vec![0u8; hlen - got];
                let n = read_up_to(&mut m, &mut rest).map_err(|e| size_err(e.to_string()))?;
                head.extend_from_slice(&rest[..n]);
            }
            let header = npy::parse_header(&head).map_err(|source| NpzError::Member {
                path: path.to_path_buf(),
                member: key.clone(),
                source,
            })?;
            let need = (header.data_start as u64).saturating_add(header.data_bytes as u64);
            if need != declared {
                return Err(size_err(format!(
                    "shape {:?} of {} needs {need} bytes with its header, the archive says {declared}",
                    header.shape, header.descr
                )));
            }
            members.push(Member { key, header, index });
        }
        Ok(NpzArchive {
            path: path.to_path_buf(),
            zip,
            members,
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, key: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.key == key)
    }

    /// Decompresses and decodes one array.
    pub fn read(&mut self, key: &str) -> Result<NpyArray, NpzError> {
        let m = self.member(key).cloned().ok_or_else(|| NpzError::Missing {
            path: self.path.clone(),
            member: key.to_string(),
        })?;
        let path = self.path.clone();
        let mut z = self.zip.by_index(m.index).map_err(|e| NpzError::Zip {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut skip = vec![0u8; m.header.data_start];
        z.read_exact(&mut skip).map_err(|e| NpzError::Zip {
            path: path.clone(),
            reason: format!("member '{key}': {e}"),
        })?;
        npy::read_body(&m.header, &mut z).map_err(|source| NpzError::Member {
            path,
            member: key.to_string(),
            source,
        })
    }
}

/// Fills `buf` as far as the reader goes; returns how much was read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads every `.npy` member of an archive, keyed by name without the `.npy` suffix.
pub fn read(path: &Path) -> Result<BTreeMap<String, NpyArray>, NpzError> {
    let mut a = NpzArchive::open(path)?;
    let keys: Vec<String> = a.members().iter().map(|m| m.key.clone()).collect();
    keys.into_iter()
        .map(|k| a.read(&k).map(|arr| (k, arr)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn npy_bytes(shape: &str, data: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        let dims: Vec<usize> = if shape.is_empty() {
            vec![]
        } else {
            shape.split(',').map(|s| s.parse().unwrap()).collect()
        };
        npy::write_f32(&mut out, &dims, data).unwrap();
        out
    }

    fn zip_of(members: &[(&str, Vec<u8>, bool)]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            for (name, bytes, deflate) in members {
                let o = zip::write::SimpleFileOptions::default().compression_method(if *deflate {
                    zip::CompressionMethod::Deflated
                } else {
                    zip::CompressionMethod::Stored
                });
                z.start_file(*name, o).unwrap();
                z.write_all(bytes).unwrap();
            }
            z.finish().unwrap();
        }
        buf.into_inner()
    }

    #[test]
    fn headers_first_then_data() {
        let bytes = zip_of(&[
            ("a.npy", npy_bytes("2,2", &[1.0, 2.0, 3.0, 4.0]), true),
            ("b.npy", npy_bytes("3", &[5.0, 6.0, 7.0]), false),
        ]);
        let mut a = NpzArchive::new(Path::new("x.npz"), Cursor::new(bytes)).unwrap();
        let shapes: Vec<_> = a
            .members()
            .iter()
            .map(|m| (m.key.clone(), m.header.shape.clone()))
            .collect();
        assert_eq!(
            shapes,
            [("a".to_string(), vec![2, 2]), ("b".to_string(), vec![3])]
        );
        assert_eq!(a.read("b").unwrap().data, vec![5.0, 6.0, 7.0]);
        assert_eq!(a.read("a").unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(a.read("c"), Err(NpzError::Missing { .. })));
    }

    #[test]
    fn a_header_that_claims_more_than_the_member_is_refused_before_reading() {
        // The header says 2^28 floats, the member holds 4.
        let mut m = npy_bytes("4", &[0.0; 4]);
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (268435456,), }";
        let mut fake = b"\x93NUMPY\x01\x00".to_vec();
        fake.extend_from_slice(&(h.len() as u16).to_le_bytes());
        fake.extend_from_slice(h.as_bytes());
        fake.extend_from_slice(&m.split_off(m.len() - 16));
        let bytes = zip_of(&[("big.npy", fake, true)]);
        let e = NpzArchive::new(Path::new("x.npz"), Cursor::new(bytes)).unwrap_err();
        assert!(
            e.to_string().contains("member 'big': shape [268435456]"),
            "{e}"
        );
    }
}
