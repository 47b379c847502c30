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

/// Elements per K-quant / i-quant super-block (`QK_K`).
pub const QK_K: usize = 256;

macro_rules! blocks {
    ($( $(#[$m:meta])* $name:ident { $( $f:ident : $t:ty ),* $(,)? } = $size:literal; )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
            pub struct $name { $( pub $f: $t, )* }
            const _: () = assert!(std::mem::size_of::<$name>() == $size);
        )*
    };
}

blocks! {
    /// `block_q4_1`: scale, min and 32 four-bit codes (layout of Q4_0).
    BlockQ4_1 { d: f16, m: f16, qs: [u8; 16] } = 20;
    /// `block_q5_0`: scale, the fifth bits of 32 codes, their low nibbles.
    BlockQ5_0 { d: f16, qh: [u8; 4], qs: [u8; 16] } = 22;
    /// `block_q5_1`: scale, min, fifth bits, low nibbles.
    BlockQ5_1 { d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] } = 24;
    /// `block_q1_0`: scale and the signs of 128 elements.
    BlockQ1_0 { d: f16, qs: [u8; 16] } = 18;
    /// `block_q2_0`: scale and 64 two-bit codes (-1, 0, 1, 2).
    BlockQ2_0 { d: f16, qs: [u8; 16] } = 18;
    /// `block_mxfp4`: an E8M0 exponent and 32 E2M1 codes.
    BlockMxfp4 { e: u8, qs: [u8; 16] } = 17;
    /// `block_nvfp4`: four UE4M3 sub-block scales and 64 E2M1 codes.
    BlockNvfp4 { d: [u8; 4], qs: [u8; 32] } = 36;
    /// `block_iq4_nl`: scale and 32 indices into `kvalues_iq4nl`.
    BlockIq4Nl { d: f16, qs: [u8; 16] } = 18;
    /// `block_q2_K`.
    BlockQ2K { scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 } = 84;
    /// `block_q3_K`.
    BlockQ3K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 } = 110;
    /// `block_q4_K`.
    BlockQ4K { d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] } = 144;
    /// `block_q5_K`.
    BlockQ5K { d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] } = 176;
    /// `block_q6_K`.
    BlockQ6K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 } = 210;
    /// `block_tq1_0`.
    BlockTq1_0 { qs: [u8; 48], qh: [u8; 4], d: f16 } = 54;
    /// `block_tq2_0`.
    BlockTq2_0 { qs: [u8; 64], d: f16 } = 66;
    /// `block_iq4_xs`.
    BlockIq4Xs { d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128] } = 136;
    /// `block_iq2_xxs`.
    BlockIq2Xxs { d: f16, qs: [u16; 32] } = 66;
    /// `block_iq2_xs`.
    BlockIq2Xs { d: f16, qs: [u16; 32], scales: [u8; 8] } = 74;
    /// `block_iq2_s`.
    BlockIq2S { d: f16, qs: [u8; 64], qh: [u8; 8], scales: [u8; 8] } = 82;
    /// `block_iq3_xxs`.
    BlockIq3Xxs { d: f16, qs: [u8; 96] } = 98;
    /// `block_iq3_s`.
    BlockIq3S { d: f16, qs: [u8; 64], qh: [u8; 8], signs: [u8; 32], scales: [u8; 4] } = 110;
    /// `block_iq1_s`.
    BlockIq1S { d: f16, qs: [u8; 32], qh: [u16; 8] } = 50;
    /// `block_iq1_m` (no f16 field: the scale is spread over `scales`).
    BlockIq1M { qs: [u8; 32], qh: [u8; 16], scales: [u8; 8] } = 56;
}
