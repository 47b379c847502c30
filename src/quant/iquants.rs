//! Decoders for the grid i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S):
//! ggml's `dequantize_row_iq*` ported operation for operation, over the lookup tables that
//! `scripts/gen-quant-grids` copies from `ggml-common.h` into `grids.rs`.
//!
//! These types stay decode-only: ggml's encoders need an importance matrix (IQ1_S, IQ2_XXS,
//! IQ2_XS) or are searches over the grids that this crate does not port (IQ1_M, IQ2_S, IQ3_*).

// The loops index like ggml's C, element for element, so that a port can be checked against
// the source line by line.
#![allow(clippy::needless_range_loop)]

use super::blocks::{
    BlockIq1M, BlockIq1S, BlockIq2S, BlockIq2Xs, BlockIq2Xxs, BlockIq3S, BlockIq3Xxs,
};
use super::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KMASK_IQ2XS,
    KSIGNS_IQ2XS,
};
use super::legacy::h2f;
use half::f16;

const IQ1S_DELTA: f32 = 0.125;

#[inline]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -1.0
    } else {
        1.0
    }
}

pub fn dequantize_iq2_xxs(b: &BlockIq2Xxs, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for ib32 in 0..8 {
        let q = &b.qs[4 * ib32..4 * ib32 + 4];
        let aux0 = u32::from(q[0]) | (u32::from(q[1]) << 16);
        let aux1 = u32::from(q[2]) | (u32::from(q[3]) << 16);
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        let aux8 = aux0.to_le_bytes();
        for l in 0..4 {
            let grid = IQ2XXS_GRID[usize::from(aux8[l])].to_le_bytes();
            let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            for j in 0..8 {
                y[o + j] = db * f32::from(grid[j]) * sign(signs, j);
            }
            o += 8;
        }
    }
}

pub fn dequantize_iq2_xs(b: &BlockIq2Xs, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for ib32 in 0..8 {
        let db = [
            d * (0.5 + f32::from(b.scales[ib32] & 0xf)) * 0.25,
            d * (0.5 + f32::from(b.scales[ib32] >> 4)) * 0.25,
        ];
        for l in 0..4 {
            let q = b.qs[4 * ib32 + l];
            let grid = IQ2XS_GRID[usize::from(q & 511)].to_le_bytes();
            let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
            for j in 0..8 {
                y[o + j] = db[l / 2] * f32::from(grid[j]) * sign(signs, j);
            }
            o += 8;
        }
    }
}

pub fn dequantize_iq2_s(b: &BlockIq2S, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for ib32 in 0..8 {
        let db = [
            d * (0.5 + f32::from(b.scales[ib32] & 0xf)) * 0.25,
            d * (0.5 + f32::from(b.scales[ib32] >> 4)) * 0.25,
        ];
        let qs = &b.qs[4 * ib32..4 * ib32 + 4];
        let signs = &b.qs[32 + 4 * ib32..32 + 4 * ib32 + 4];
        for l in 0..4 {
            let dl = db[l / 2];
            let idx = usize::from(qs[l]) | ((usize::from(b.qh[ib32]) << (8 - 2 * l)) & 0x300);
            let grid = IQ2S_GRID[idx].to_le_bytes();
            for j in 0..8 {
                y[o + j] = dl * f32::from(grid[j]) * sign(signs[l], j);
            }
            o += 8;
        }
    }
}

pub fn dequantize_iq3_xxs(b: &BlockIq3Xxs, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for ib32 in 0..8 {
        let qs = &b.qs[8 * ib32..8 * ib32 + 8];
        let ss = &b.qs[64 + 4 * ib32..64 + 4 * ib32 + 4];
        let aux32 = u32::from_le_bytes([ss[0], ss[1], ss[2], ss[3]]);
        let db = d * (0.5 + (aux32 >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux32 >> (7 * l)) & 127) as usize];
            let g1 = IQ3XXS_GRID[usize::from(qs[2 * l])].to_le_bytes();
            let g2 = IQ3XXS_GRID[usize::from(qs[2 * l + 1])].to_le_bytes();
            for j in 0..4 {
                y[o + j] = db * f32::from(g1[j]) * sign(signs, j);
                y[o + j + 4] = db * f32::from(g2[j]) * sign(signs, j + 4);
            }
            o += 8;
        }
    }
}

pub fn dequantize_iq3_s(b: &BlockIq3S, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for pair in 0..4 {
        let sc = b.scales[pair];
        let dbs = [
            d * (1 + 2 * i32::from(sc & 0xf)) as f32,
            d * (1 + 2 * i32::from(sc >> 4)) as f32,
        ];
        for (half, db) in dbs.into_iter().enumerate() {
            let ib32 = 2 * pair + half;
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            let qh = usize::from(b.qh[ib32]);
            let signs = &b.signs[4 * ib32..4 * ib32 + 4];
            for l in 0..4 {
                let g1 =
                    IQ3S_GRID[usize::from(qs[2 * l]) | ((qh << (8 - 2 * l)) & 256)].to_le_bytes();
                let g2 = IQ3S_GRID[usize::from(qs[2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)]
                    .to_le_bytes();
                for j in 0..4 {
                    y[o + j] = db * f32::from(g1[j]) * sign(signs[l], j);
                    y[o + j + 4] = db * f32::from(g2[j]) * sign(signs[l], j + 4);
                }
                o += 8;
            }
        }
    }
}

pub fn dequantize_iq1_s(b: &BlockIq1S, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let d = h2f(b.d);
    let mut o = 0;
    for ib in 0..8 {
        let qh = b.qh[ib];
        let dl = d * (2 * i32::from((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 {
            -IQ1S_DELTA
        } else {
            IQ1S_DELTA
        };
        for l in 0..4 {
            let idx = usize::from(b.qs[4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
            let grid = IQ1S_GRID[idx].to_le_bytes();
            for j in 0..8 {
                y[o + j] = dl * (f32::from(grid[j] as i8) + delta);
            }
            o += 8;
        }
    }
}

pub fn dequantize_iq1_m(b: &BlockIq1M, y: &mut [f32]) {
    let y: &mut [f32; 256] = y.try_into().expect("a 256-element block");
    let sc: [u16; 4] =
        std::array::from_fn(|k| u16::from_le_bytes([b.scales[2 * k], b.scales[2 * k + 1]]));
    let scale =
        (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    let d = h2f(f16::from_bits(scale));
    let mut o = 0;
    for ib in 0..8 {
        let s = sc[ib / 2];
        let dl1 = d * (2 * i32::from((s >> (6 * (ib % 2))) & 7) + 1) as f32;
        let dl2 = d * (2 * i32::from((s >> (6 * (ib % 2) + 3)) & 7) + 1) as f32;
        let qs = &b.qs[4 * ib..4 * ib + 4];
        let qh = &b.qh[2 * ib..2 * ib + 2];
        let idx = [
            usize::from(qs[0]) | ((usize::from(qh[0]) << 8) & 0x700),
            usize::from(qs[1]) | ((usize::from(qh[0]) << 4) & 0x700),
            usize::from(qs[2]) | ((usize::from(qh[1]) << 8) & 0x700),
            usize::from(qs[3]) | ((usize::from(qh[1]) << 4) & 0x700),
        ];
        let delta = [
            if qh[0] & 0x08 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            },
            if qh[0] & 0x80 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            },
            if qh[1] & 0x08 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            },
            if qh[1] & 0x80 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            },
        ];
        for l in 0..4 {
            let dl = if l < 2 { dl1 } else { dl2 };
            let grid = IQ1S_GRID[idx[l]].to_le_bytes();
            for j in 0..8 {
                y[o + j] = dl * (f32::from(grid[j] as i8) + delta[l]);
            }
            o += 8;
        }
    }
}
