//! The tiny model the converter tests share.

use jq::synth::{write_gpt2, Gpt2Dims};
use std::path::Path;

/// The tiny GPT-2 shaped GGUF with F32, F16 and BF16 source tensors.
pub fn write_tiny_gpt2(path: &Path) {
    write_gpt2(path, Gpt2Dims::TINY, true).unwrap();
}
