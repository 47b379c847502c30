//! NumPy `.npz` archives: a zip (stored or deflated members) of `.npy` arrays.

use crate::npy::{self, NpyArray, NpyError};
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
}

/// Reads every `.npy` member of an archive, keyed by name without the `.npy` suffix.
pub fn read(path: &Path) -> Result<BTreeMap<String, NpyArray>, NpzError> {
    let file = std::fs::File::open(path).map_err(|source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let zip_err = |e: zip::result::ZipError| NpzError::Zip {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(zip_err)?;
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(zip_err)?;
        let name = member.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::with_capacity(member.size().min(1 << 30) as usize);
        member.read_to_end(&mut bytes).map_err(|e| NpzError::Zip {
            path: path.to_path_buf(),
            reason: format!("member '{name}': {e}"),
        })?;
        let arr = npy::parse(&bytes).map_err(|source| NpzError::Member {
            path: path.to_path_buf(),
            member: key.clone(),
            source,
        })?;
        out.insert(key, arr);
    }
    Ok(out)
}
