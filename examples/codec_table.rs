//! Per-thread codec throughput of every type with a codec, ours vs ggml's C in the same run,
//! printed as a markdown table (the quick companion of `benches/codecs.rs`, which needs the
//! bench profile). `ggml` is `ggml_quantize_chunk` / `to_float` on one thread; `ours-1t` our
//! fast path on one thread; `ours-par` rayon over every core. Median of `REPS` runs over 4 MiB
//! of f32 (1 Mi elements). F32 decode is left out: ggml has no `to_float` for it.
//!
//! Run: `cargo build --release --workspace --examples && target/release/examples/codec_table [TYPE...]`

use jq::ggml;
use jq::quant::{self, GgmlType, Path};
use std::hint::black_box;
use std::time::Instant;

const N: usize = 1 << 20;
const REPS: usize = 5;

fn median_s(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..REPS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[REPS / 2]
}

fn main() {
    ggml::silence_logs();
    // Optional type names to time only those: `codec_table q4_1 q5_1`.
    let only: Vec<GgmlType> = std::env::args()
        .skip(1)
        .filter_map(|a| GgmlType::from_name(&a))
        .collect();
    let x = jq::synth::weights(7, N, 2.0);
    let gib = (N * 4) as f64 / (1u64 << 30) as f64;
    println!(
        "| op | type | ggml GiB/s | ours-1t GiB/s | ours-par GiB/s | 1t / ggml | par / ggml |"
    );
    println!("|---|---|---|---|---|---|---|");
    for op in ["quantize", "dequantize"] {
        for &ty in GgmlType::ALL {
            if !ty.can_decode()
                || (op == "quantize" && !ty.can_encode())
                || (op == "dequantize" && ty == GgmlType::F32)
                || (!only.is_empty() && !only.contains(&ty))
            {
                continue;
            }
            let q = if ty.can_encode() {
                ggml::quantize_chunk(ty, &x, 4096)
            } else {
                (0..ty.row_bytes(N as u64).unwrap())
                    .map(|i| ((i * 2_654_435_761) >> 13) as u8 & 0x3f)
                    .collect()
            };
            let mut out = vec![0u8; q.len()];
            let mut f = vec![0f32; N];
            let (g, one, par) = if op == "quantize" {
                (
                    median_s(|| ggml::quantize_chunk_into(ty, black_box(&x), 4096, &mut out)),
                    median_s(|| {
                        quant::quantize_with(Path::Fast, ty, black_box(&x), &mut out).unwrap()
                    }),
                    median_s(|| {
                        quant::quantize_with(Path::Parallel, ty, black_box(&x), &mut out).unwrap()
                    }),
                )
            } else {
                (
                    median_s(|| ggml::dequantize_into(ty, black_box(&q), &mut f)),
                    median_s(|| {
                        quant::dequantize_with(Path::Fast, ty, black_box(&q), &mut f).unwrap()
                    }),
                    median_s(|| {
                        quant::dequantize_with(Path::Parallel, ty, black_box(&q), &mut f).unwrap()
                    }),
                )
            };
            println!(
                "| {op} | {ty} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x |",
                gib / g,
                gib / one,
                gib / par,
                g / one,
                g / par
            );
        }
    }
}
