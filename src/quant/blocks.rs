//! Block layouts, byte for byte as in ggml's `ggml-common.h`.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per Q4_0 / Q8_0 block (`QK4_0`, `QK8_0`).
pub const QK: usize = 32;

/// `block_q4_0`: a scale and 32 four-bit codes; element j in the low nibble of `qs[j]`,
/// element j + 16 in the high nibble.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// `block_q8_0`: a scale and 32 signed eight-bit codes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::align_of::<BlockQ4_0>() == 2);
