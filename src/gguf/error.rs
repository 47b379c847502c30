//! The reader's and writer's error type: every variant names the key, tensor or field, and
//! where in the file it was met.

use crate::quant::CodecError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: it starts with \"{}\", not \"GGUF\"", .found.escape_ascii())]
    BadMagic { found: Vec<u8> },
    #[error("GGUF version {version} is not supported: {reason}")]
    UnsupportedVersion { version: u32, reason: &'static str },
    #[error(
        "file ends while reading {what} at byte {offset}: needs {needed} bytes, {available} left"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{what} at byte {offset} is {count}, more than {limit}")]
    TooLarge {
        what: String,
        offset: u64,
        count: u64,
        limit: u64,
    },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("key #{index} at byte {offset} is empty")]
    EmptyKey { index: u64, offset: u64 },
    #[error("duplicate key '{key}' at byte {offset}")]
    DuplicateKey { key: String, offset: u64 },
    #[error("key '{key}' at byte {offset} has invalid value type {type_id}")]
    InvalidValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    #[error("key '{key}' must be of type {expected} but is {found}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },
    #[error("key '{key}' not found")]
    MissingKey { key: String },
    #[error("general.alignment = {value} is not a power of 2")]
    BadAlignment { value: u64 },
    #[error("tensor name at byte {offset} is {len} bytes, ggml allows at most 63")]
    TensorNameTooLong { len: u64, offset: u64 },
    #[error("duplicate tensor name '{name}' at byte {offset}")]
    DuplicateTensor { name: String, offset: u64 },
    #[error("tensor '{name}' at byte {offset} has {n_dims} dimensions, at most 4 are allowed")]
    TooManyDims {
        name: String,
        n_dims: u32,
        offset: u64,
    },
    #[error("tensor '{name}' at byte {offset}: {reason} (shape {ne:?})")]
    BadShape {
        name: String,
        offset: u64,
        ne: Vec<u64>,
        reason: String,
    },
    #[error("tensor '{name}' at byte {offset} has unknown ggml type id {type_id}")]
    UnknownTensorType {
        name: String,
        type_id: u32,
        offset: u64,
    },
    #[error("tensor '{name}' has data offset {found}, expected {expected} (offsets must follow each other, padded to the alignment {alignment})")]
    BadTensorOffset {
        name: String,
        found: u64,
        expected: u64,
        alignment: u64,
    },
    #[error(
        "tensor '{name}' data [{start}, {end}) runs past the end of the file ({file_len} bytes)"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensor '{name}' not found")]
    MissingTensor { name: String },
    #[error("{path}: {msg}")]
    Split { path: PathBuf, msg: String },
    #[error("tensor '{name}': {source}")]
    Codec {
        name: String,
        #[source]
        source: CodecError,
    },
    #[error("writer: {0}")]
    Plan(String),
    #[error("tensor '{name}': data source wrote {written} bytes, expected {expected}")]
    DataSize {
        name: String,
        written: u64,
        expected: u64,
    },
}

impl GgufError {
    /// An I/O error on `path`. Data sources passed to `GgufWriter::write_file` may use the path
    /// `<output>`, which the writer replaces with the real output path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;
