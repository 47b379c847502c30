//! Matrix-vector products straight from stored blocks: a weight matrix stays in its GGUF type
//! (F32, F16, BF16, Q8_0, Q4_0) and each row's dot product decodes one block at a time in
//! registers. Nothing is dequantized into a second copy.

use super::blocks::{BlockQ4_0, BlockQ8_0, QK};
use super::{CodecError, GgmlType};
use half::{bf16, f16};
use rayon::prelude::*;

/// A row-major matrix of `rows` rows of `cols` elements, borrowed in its stored type.
/// (A GGUF weight with `ne = [cols, rows]`.)
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: &'a [u8],
    row_bytes: usize,
}

/// Work below this many weights per product runs on the calling thread.
const PAR_MIN_WEIGHTS: usize = 1 << 16;

#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the compiler can vectorise without reassociating.
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[inline]
fn dot_q8_0(blocks: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut s = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0f32; QK];
        for k in 0..QK {
            acc[k] = f32::from(b.qs[k]) * xs[k];
        }
        s += acc.iter().sum::<f32>() * b.d.to_f32();
    }
    s
}

#[inline]
fn dot_q4_0(blocks: &[BlockQ4_0], x: &[f32]) -> f32 {
    let mut s = 0f32;
    for (b, xs) in blocks.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0f32; QK / 2];
        for k in 0..QK / 2 {
            let lo = f32::from(b.qs[k] & 0x0F) - 8.0;
            let hi = f32::from(b.qs[k] >> 4) - 8.0;
            acc[k] = lo * xs[k] + hi * xs[k + QK / 2];
        }
        s += acc.iter().sum::<f32>() * b.d.to_f32();
    }
    s
}

#[inline]
fn dot_f16(row: &[f16], x: &[f32]) -> f32 {
    let mut buf = [0f32; 64];
    let mut s = 0f32;
    for (h, xs) in row.chunks(64).zip(x.chunks(64)) {
        let b = &mut buf[..h.len()];
        super::fast::f16_to_f32(h, b);
        s += dot_f32(b, xs);
    }
    s
}

#[inline]
fn dot_bf16(row: &[bf16], x: &[f32]) -> f32 {
    let mut buf = [0f32; 64];
    let mut s = 0f32;
    for (h, xs) in row.chunks(64).zip(x.chunks(64)) {
        for (o, v) in buf.iter_mut().zip(h) {
            *o = v.to_f32();
        }
        s += dot_f32(&buf[..h.len()], xs);
    }
    s
}

impl<'a> Matrix<'a> {
    /// Wraps stored bytes. The buffer must hold exactly `rows` rows and be aligned for the
    /// type's blocks (GGUF data is, at any alignment >= 4).
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, CodecError> {
        let row_bytes = ty.row_bytes(cols as u64).ok_or(CodecError::PartialBlock {
            ty,
            n: cols,
            block: ty.block_size(),
        })? as usize;
        if !ty.has_codec() {
            return Err(CodecError::Unsupported(ty));
        }
        if row_bytes.checked_mul(rows) != Some(data.len()) {
            return Err(CodecError::SizeMismatch {
                ty,
                n: rows * cols,
                expected: row_bytes * rows,
                actual: data.len(),
            });
        }
        let align = if ty == GgmlType::F32 { 4 } else { 2 };
        if data.as_ptr().align_offset(align) != 0 {
            return Err(CodecError::SizeMismatch {
                ty,
                n: rows * cols,
                expected: row_bytes * rows,
                actual: data.len(),
            });
        }
        Ok(Matrix {
            ty,
            rows,
            cols,
            data,
            row_bytes,
        })
    }

    pub fn row_bytes(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dot product of row `r` with `x` (`x.len() == cols`).
    #[inline]
    pub fn row_dot(&self, r: usize, x: &[f32]) -> f32 {
        let b = self.row_bytes(r);
        match self.ty {
            GgmlType::F32 => dot_f32(bytemuck::cast_slice(b), x),
            GgmlType::F16 => dot_f16(bytemuck::cast_slice(b), x),
            GgmlType::BF16 => dot_bf16(bytemuck::cast_slice(b), x),
            GgmlType::Q8_0 => dot_q8_0(bytemuck::cast_slice(b), x),
            GgmlType::Q4_0 => dot_q4_0(bytemuck::cast_slice(b), x),
            _ => unreachable!("checked in Matrix::new"),
        }
    }

    /// Row `r` decoded into `out` (`out.len() == cols`).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        super::dequantize_with(super::Path::Fast, self.ty, self.row_bytes(r), out)
            .expect("sizes checked in Matrix::new");
    }

    /// `y = M x`: one dot product per row, across threads when the matrix is large.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols);
        assert_eq!(y.len(), self.rows);
        if self.rows * self.cols < PAR_MIN_WEIGHTS {
            for (r, o) in y.iter_mut().enumerate() {
                *o = self.row_dot(r, x);
            }
        } else {
            let chunk = (PAR_MIN_WEIGHTS / self.cols).max(1);
            y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
                for (i, o) in ys.iter_mut().enumerate() {
                    *o = self.row_dot(c * chunk + i, x);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_matches_dequantized_product() {
        let (rows, cols) = (70, 96);
        let w = crate::synth::weights(3, rows * cols, 1.0);
        let x = crate::synth::weights(4, cols, 1.0);
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
        ] {
            let q = super::super::quantize_to_vec(ty, &w).unwrap();
            let deq = super::super::dequantize_to_vec(ty, &q, w.len()).unwrap();
            let m = Matrix::new(ty, rows, cols, &q).unwrap();
            let mut y = vec![0f32; rows];
            m.matvec(&x, &mut y);
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| f64::from(deq[r * cols + c]) * f64::from(x[c]))
                    .sum();
                assert!(
                    (f64::from(y[r]) - want).abs() < 1e-4,
                    "{ty} row {r}: {} vs {want}",
                    y[r]
                );
            }
            let mut row = vec![0f32; cols];
            m.row_to_f32(5, &mut row);
            assert_eq!(&row[..], &deq[5 * cols..6 * cols]);
        }
    }
}
