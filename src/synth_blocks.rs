//! Large synthetic GGUFs written block by block: random quantized blocks with sane f16 scales
//! instead of quantizing billions of random floats (a 27B-shaped file in about a minute, bounded
//! memory). Same names, shapes and metadata as [`crate::synth::write_gemma3`]; nothing here is
//! a trained model. For benchmarks and the GPU check; never committed.
//!
//! Two mixtures: every 2-D weight Q4_0, or llama.cpp's Q4_K_M (`llama_tensor_get_type` in
//! `src/llama-quant.cpp` for a dense model without experts, as [`q4_k_m_type`] spells out).

use crate::gguf::GgufWriter;
use crate::gguf::{GgufError, Result};
use crate::quant::GgmlType;
use crate::synth::{gemma3_header_with, llama_header_with, Gemma3Dims, LlamaDims, WeightSlot};
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

    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
        }
    }
}

/// Which weights get which type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixture {
    /// Every 2-D weight Q4_0 (`LLAMA_FTYPE_MOSTLY_Q4_0`, pure).
    Q4_0,
    /// llama-quantize's Q4_K_M rules.
    Q4KM,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// between get more bits.
fn use_more_bits(i: u64, n: u64) -> bool {
    // (i - n/8) is only reached when i >= n/8: no underflow.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type `llama_model_quantize` gives a Gemma-3 weight for Q4_K_M: the tied embedding
/// (which is the output) Q6_K, `attn_v` and `ffn_down` Q6_K in the [`use_more_bits`] layers,
/// every other matrix Q4_K; rows that are not a multiple of the K-quant block (256) fall back
/// as llama.cpp falls back (`tensor_type_fallback`: Q4_K to Q5_0, Q6_K to Q8_0; the output to
/// Q8_0).
pub fn q4_k_m_type(w: WeightSlot<'_>) -> GgmlType {
    let fits = w.ne0.is_multiple_of(256);
    let more = |l: Option<u64>| l.is_some_and(|l| use_more_bits(l, w.n_layer));
    let want = match w.kind {
        "token_embd" => return if fits { GgmlType::Q6_K } else { GgmlType::Q8_0 },
        "attn_v" | "ffn_down" if more(w.layer) => GgmlType::Q6_K,
        _ => GgmlType::Q4_K,
    };
    match (want, fits) {
        (t, true) => t,
        (GgmlType::Q6_K, false) => GgmlType::Q8_0,
        (_, false) => GgmlType::Q5_0,
    }
}

/// Fills `out` (whole blocks of `ty`) with random quants and scales chosen so the weights span
/// about +-`amp`.
fn random_blocks(rng: &mut Bytes, ty: GgmlType, amp: f32, out: &mut [u8]) {
    let h = |x: f32| f16::from_f32(x).to_le_bytes();
    match ty {
        GgmlType::Q4_0 => {
            for b in out.chunks_exact_mut(18) {
                b[..2].copy_from_slice(&h(amp / 8.0));
                rng.fill(&mut b[2..]);
            }
        }
        GgmlType::Q8_0 => {
            for b in out.chunks_exact_mut(34) {
                b[..2].copy_from_slice(&h(amp / 127.0));
                rng.fill(&mut b[2..]);
            }
        }
        GgmlType::Q5_0 => {
            for b in out.chunks_exact_mut(22) {
                b[..2].copy_from_slice(&h(amp / 16.0));
                rng.fill(&mut b[2..]);
            }
        }
        // d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles: w = d*sc*q - dmin*m
        // with sc, m < 64 and q < 16.
        GgmlType::Q4_K => {
            for b in out.chunks_exact_mut(144) {
                b[..2].copy_from_slice(&h(2.0 * amp / (63.0 * 15.0)));
                b[2..4].copy_from_slice(&h(amp / 63.0));
                rng.fill(&mut b[4..]);
            }
        }
        // 128 low nibbles, 64 bytes of high bits, 16 signed scales, then d: w = d*sc*(q-32).
        GgmlType::Q6_K => {
            for b in out.chunks_exact_mut(210) {
                rng.fill(&mut b[..208]);
                b[208..].copy_from_slice(&h(amp / (127.0 * 32.0)));
            }
        }
        other => unreachable!("no random blocks for {other:?}"),
    }
}

/// Writes a Gemma-3 shaped GGUF with every 2-D weight (the tied embedding included) as random
/// blocks of the mixture's types; norms are F32 near 1. `dims.n_embd` and `dims.n_ff` must be
/// multiples of 32.
pub fn write_gemma3_random(
    path: &Path,
    d: Gemma3Dims,
    n_vocab: u64,
    mix: Mixture,
    seed: u64,
) -> Result<()> {
    let (name, file_type) = match mix {
        Mixture::Q4_0 => ("synthetic gemma3 (random q4_0 blocks)", 2),
        Mixture::Q4KM => ("synthetic gemma3 (random q4_k_m blocks)", 15),
    };
    let w = gemma3_header_with(name, d, n_vocab, file_type, Some(8.0), |s| match mix {
        Mixture::Q4_0 => GgmlType::Q4_0,
        Mixture::Q4KM => q4_k_m_type(s),
    })?;
    write_random(&w, path, seed)
}

/// Writes a Llama-shaped GGUF ([`llama_header_with`]: the `jq::arch` llama table) with random
/// blocks of the mixture's types (for Q4_K_M the untied `output` takes the embedding's rule:
/// Q6_K); norms F32 near 1.
pub fn write_llama_random(
    path: &Path,
    d: LlamaDims,
    n_vocab: u64,
    mix: Mixture,
    seed: u64,
) -> Result<()> {
    let (name, file_type) = match mix {
        Mixture::Q4_0 => ("synthetic llama (random q4_0 blocks)", 2),
        Mixture::Q4KM => ("synthetic llama (random q4_k_m blocks)", 15),
    };
    let w = llama_header_with(name, d, n_vocab, file_type, |s| match mix {
        Mixture::Q4_0 => GgmlType::Q4_0,
        Mixture::Q4KM if s.kind == "output" => q4_k_m_type(WeightSlot {
            kind: "token_embd",
            ..s
        }),
        Mixture::Q4KM if s.kind == "token_embd" => GgmlType::Q4_K,
        Mixture::Q4KM => q4_k_m_type(s),
    })?;
    write_random(&w, path, seed)
}

/// The tensors of `w` written as random blocks (F32 ones near 1).
fn write_random(w: &GgufWriter, path: &Path, seed: u64) -> Result<()> {
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
        let block = t.ty.block_size();
        let bytes = t.ty.type_size();
        let mut left = n / block * bytes;
        // Whole blocks per chunk.
        let chunk = (buf.len() as u64 / bytes) * bytes;
        let amp = 2.8 / (t.ne[0] as f32).sqrt();
        while left > 0 {
            let k = left.min(chunk) as usize;
            random_blocks(&mut rng, t.ty, amp, &mut buf[..k]);
            out.write_all(&buf[..k]).map_err(io)?;
            left -= k as u64;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_are_llama_cpps() {
        // The real Gemma 3 270M Q4_K_M (18 layers) has Q6_K ffn_down in exactly these.
        let got: Vec<u64> = (0..18).filter(|&i| use_more_bits(i, 18)).collect();
        assert_eq!(got, vec![0, 1, 4, 7, 10, 13, 15, 16, 17]);
    }
}
