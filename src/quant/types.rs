//! The ggml tensor type table: every type id ggml knows, with its block geometry.
//!
//! The reader needs the whole table; every weight type decodes here (`can_decode`), most also
//! encode (`can_encode`). The sizes are checked against ggml's own
//! `ggml_type_size`/`ggml_blck_size` in `tests/ggml_parity.rs`.

use std::fmt;

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        /// A ggml tensor type (`enum ggml_type`). Ids 4, 5 and 31..=33, 36..=38 were removed from
        /// ggml and are rejected like ggml rejects them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        pub enum GgmlType {
            $( $variant, )*
        }

        impl GgmlType {
            /// Every type, in id order.
            pub const ALL: &'static [GgmlType] = &[$( GgmlType::$variant, )*];

            /// The on-disk id.
            pub const fn id(self) -> u32 {
                match self { $( GgmlType::$variant => $id, )* }
            }

            /// The type for an on-disk id, if ggml still supports it.
            pub const fn from_id(id: u32) -> Option<GgmlType> {
                match id { $( $id => Some(GgmlType::$variant), )* _ => None }
            }

            /// ggml's name for the type (`ggml_type_name`).
            pub const fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => $name, )* }
            }

            /// Elements per block (`ggml_blck_size`).
            pub const fn block_size(self) -> u64 {
                match self { $( GgmlType::$variant => $block, )* }
            }

            /// Bytes per block (`ggml_type_size`).
            pub const fn type_size(self) -> u64 {
                match self { $( GgmlType::$variant => $bytes, )* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "f32", 1, 4;
    F16 = 1, "f16", 1, 2;
    Q4_0 = 2, "q4_0", 32, 18;
    Q4_1 = 3, "q4_1", 32, 20;
    Q5_0 = 6, "q5_0", 32, 22;
    Q5_1 = 7, "q5_1", 32, 24;
    Q8_0 = 8, "q8_0", 32, 34;
    Q8_1 = 9, "q8_1", 32, 36;
    Q2_K = 10, "q2_K", 256, 84;
    Q3_K = 11, "q3_K", 256, 110;
    Q4_K = 12, "q4_K", 256, 144;
    Q5_K = 13, "q5_K", 256, 176;
    Q6_K = 14, "q6_K", 256, 210;
    Q8_K = 15, "q8_K", 256, 292;
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    IQ2_XS = 17, "iq2_xs", 256, 74;
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    IQ1_S = 19, "iq1_s", 256, 50;
    IQ4_NL = 20, "iq4_nl", 32, 18;
    IQ3_S = 21, "iq3_s", 256, 110;
    IQ2_S = 22, "iq2_s", 256, 82;
    IQ4_XS = 23, "iq4_xs", 256, 136;
    I8 = 24, "i8", 1, 1;
    I16 = 25, "i16", 1, 2;
    I32 = 26, "i32", 1, 4;
    I64 = 27, "i64", 1, 8;
    F64 = 28, "f64", 1, 8;
    IQ1_M = 29, "iq1_m", 256, 56;
    BF16 = 30, "bf16", 1, 2;
    TQ1_0 = 34, "tq1_0", 256, 54;
    TQ2_0 = 35, "tq2_0", 256, 66;
    MXFP4 = 39, "mxfp4", 32, 17;
    NVFP4 = 40, "nvfp4", 64, 36;
    Q1_0 = 41, "q1_0", 128, 18;
    Q2_0 = 42, "q2_0", 64, 18;
}

/// One past the largest id ggml knows (`GGML_TYPE_COUNT`).
pub const GGML_TYPE_COUNT: u32 = 43;

impl GgmlType {
    /// Bytes of one row of `ne0` elements, or `None` when `ne0` is not a whole number of blocks
    /// or the size overflows.
    pub fn row_bytes(self, ne0: u64) -> Option<u64> {
        if !ne0.is_multiple_of(self.block_size()) {
            return None;
        }
        (ne0 / self.block_size()).checked_mul(self.type_size())
    }

    /// Bytes of a tensor with dimensions `ne` (ggml order), or `None` on a partial block or
    /// overflow.
    pub fn tensor_bytes(self, ne: &[u64]) -> Option<u64> {
        let first = ne.first().copied().unwrap_or(1);
        ne.iter()
            .skip(1)
            .try_fold(self.row_bytes(first)?, |acc, &n| acc.checked_mul(n))
    }

    /// Whether this crate can encode and decode the type.
    pub const fn has_codec(self) -> bool {
        self.can_encode()
    }

    /// Whether this crate decodes the type (every type with a ggml `to_float`: all but the
    /// activation types Q8_1/Q8_K and the integer/f64 types).
    pub const fn can_decode(self) -> bool {
        !matches!(
            self,
            GgmlType::Q8_1
                | GgmlType::Q8_K
                | GgmlType::I8
                | GgmlType::I16
                | GgmlType::I32
                | GgmlType::I64
                | GgmlType::F64
        )
    }

    /// Whether this crate encodes the type, bit-identical to `ggml_quantize_chunk` without an
    /// importance matrix (every decodable type but the grid i-quants).
    pub const fn can_encode(self) -> bool {
        self.can_decode()
            && !matches!(
                self,
                GgmlType::IQ1_S
                    | GgmlType::IQ1_M
                    | GgmlType::IQ2_XXS
                    | GgmlType::IQ2_XS
                    | GgmlType::IQ2_S
                    | GgmlType::IQ3_XXS
                    | GgmlType::IQ3_S
            )
    }

    /// The upper-case spelling llama.cpp prints (`Q4_0`, `F16`, `BF16`).
    pub fn upper_name(self) -> String {
        self.name().to_ascii_uppercase()
    }

    /// Parses a name in either case (`q4_0`, `Q4_0`, `f16`).
    pub fn from_name(s: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.upper_name())
    }
}

/// `llama_ftype` values written to `general.file_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    AllF32 = 0,
    MostlyF16 = 1,
    MostlyQ4_0 = 2,
    MostlyQ8_0 = 7,
    MostlyBf16 = 32,
}

impl FileType {
    /// The file type for a model whose 2-D weights are stored as `ty`.
    pub fn for_type(ty: GgmlType) -> Option<FileType> {
        Some(match ty {
            GgmlType::F32 => FileType::AllF32,
            GgmlType::F16 => FileType::MostlyF16,
            GgmlType::Q4_0 => FileType::MostlyQ4_0,
            GgmlType::Q8_0 => FileType::MostlyQ8_0,
            GgmlType::BF16 => FileType::MostlyBf16,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert!(t.id() < GGML_TYPE_COUNT);
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(GgmlType::Q4_0.tensor_bytes(&[64, 3]), Some(2 * 18 * 3));
        assert_eq!(GgmlType::Q4_0.tensor_bytes(&[33]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[]), Some(4));
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
    }
}
