//! GGUF v3: reader (memory-mapped, validated, zero-copy views), writer (planned, streamed,
//! atomic) and the metadata value types. Knows nothing about models.

mod error;
mod reader;
mod split;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use reader::{
    GgufFile, GgufIndex, KvInfo, TensorInfo, TensorView, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH,
    MAX_ARRAY_ELEMENTS, MAX_DIMS, MAX_NAME, MAX_STRING_LENGTH,
};
pub use split::{
    split_path, split_prefix, GgufModel, TensorLocation, KEY_SPLIT_COUNT, KEY_SPLIT_NO,
    KEY_SPLIT_TENSORS_COUNT,
};
pub use value::{scalar_from_le, ArrayIter, ArrayRef, MetaValue, Value, ValueType};
pub use writer::{GgufWriter, TensorPlan};

#[cfg(test)]
mod tests;
