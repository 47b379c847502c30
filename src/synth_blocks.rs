//! Large synthetic GGUFs written block by block: random Q4_0 blocks with sane f16 scales
//! instead of quantizing billions of random floats (a 27B-shaped file in about a minute, bounded
//! memory). Same names, shapes and metadata as [`crate::synth::write_gemma3`]; nothing here is
//! a trained model. For benchmarks; never committed.

use crate::gguf::{GgufError, Result};
use crate::quant::GgmlType;
use crate::synth::{gemma3_header, Gemma3Dims};
use half::f16;
use std::path::Path;

/// xorshift64*: fast, deterministic bytes.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fills `out` (a whole number of 18-byte Q4_0 blocks) with random nibbles and the scale `d`
/// (so weights span about +-8d).
fn q4_0_blocks(rng: &mut Bytes, d: f32, out: &mut [u8]) {
    let scale = f16::from_f32(d).to_le_bytes();
    for b in out.chunks_exact_mut(18) {
        b[..2].copy_from_slice(&scale);
        b[2..10].copy_from_slice(&rng.next().to_le_bytes());
        b[10..18].copy_from_slice(&rng.next().to_le_bytes());
    }
}

/// Writes a Gemma-3 shaped GGUF with every 2-D weight (the tied embedding included) as random
/// Q4_0 blocks; norms are F32 near 1. `dims.n_embd` and `dims.n_ff` must be multiples of 32.
pub fn write_gemma3_q4_0_random(path: &Path, d: Gemma3Dims, n_vocab: u64, seed: u64) -> Result<()> {
    let w = gemma3_header(
        "synthetic gemma3 (random q4_0 blocks)",
        d,
        n_vocab,
        GgmlType::Q4_0,
        Some(8.0),
    )?;
    let mut rng = Bytes(seed | 1);
    let mut buf = vec![0u8; 18 << 20];
    w.write_file(path, |_, t, out| {
        let n: u64 = t.ne.iter().product();
        let io = |e| GgufError::io("<output>", e);
        if t.ty == GgmlType::F32 {
            let v: Vec<u8> = (0..n)
                .flat_map(|_| {
                    let x = 1.0 + ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2;
                    x.to_le_bytes()
                })
                .collect();
            return out.write_all(&v).map_err(io);
        }
        let mut left = (n / 32) * 18;
        let d = 0.35 / (t.ne[0] as f32).sqrt();
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            q4_0_blocks(&mut rng, d, &mut buf[..k]);
            out.write_all(&buf[..k]).map_err(io)?;
            left -= k as u64;
        }
        Ok(())
    })
}
