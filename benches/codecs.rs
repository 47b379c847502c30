//! Codec throughput, ours vs ggml's C (through FFI) in the same run: GB/s of f32 in (quantize)
//! or f32 out (dequantize). `ggml` is `ggml_quantize_chunk` / `type_traits.to_float`, single
//! threaded as llama.cpp calls them per chunk; `ours-1t` is our fast path on one thread (the fair
//! comparison); `ours-par` uses every core (what `jq-convert` does); `ours-ref` is the scalar
//! reference.
//!
//! Run: `cargo bench --bench codecs` (results in docs/BENCHMARKS.md). The `all/` groups cover
//! every other type with a codec (256 KiB, in cache, short runs):
//! `cargo bench --bench codecs -- all/`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jq::ggml;
use jq::quant::{self, GgmlType, Path};
use std::hint::black_box;

/// 256 KiB of f32 (fits in L2: measures the kernels) and 16 MiB (streams from memory).
const SIZES: [(&str, usize); 2] = [("256KiB", 1 << 16), ("16MiB", 1 << 22)];

fn data(n: usize) -> Vec<f32> {
    jq::synth::weights(7, n, 2.0)
}

fn bench_quantize(c: &mut Criterion) {
    for ((size, n), ty) in SIZES
        .iter()
        .flat_map(|s| [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16].map(|t| (*s, t)))
    {
        let x = data(n);
        let mut g = c.benchmark_group(format!("quantize/{ty}/{size}"));
        g.throughput(Throughput::Bytes((n * 4) as u64));
        g.sample_size(20);
        let bytes = ty.row_bytes(n as u64).unwrap() as usize;
        let mut out = vec![0u8; bytes];
        g.bench_function(BenchmarkId::from_parameter("ggml"), |b| {
            b.iter(|| ggml::quantize_chunk_into(ty, black_box(&x), 4096, &mut out))
        });
        for (name, path) in [
            ("ours-ref", Path::Reference),
            ("ours-1t", Path::Fast),
            ("ours-par", Path::Parallel),
        ] {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| quant::quantize_with(path, ty, black_box(&x), &mut out).unwrap())
            });
        }
        g.finish();
    }
}

fn bench_dequantize(c: &mut Criterion) {
    for ((size, n), ty) in SIZES.iter().flat_map(|s| {
        [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::F16,
            GgmlType::BF16,
        ]
        .map(|t| (*s, t))
    }) {
        let x = data(n);
        let mut g = c.benchmark_group(format!("dequantize/{ty}/{size}"));
        g.throughput(Throughput::Bytes((n * 4) as u64));
        g.sample_size(20);
        let q = quant::quantize_to_vec(ty, &x).unwrap();
        let mut out = vec![0f32; n];
        g.bench_function(BenchmarkId::from_parameter("ggml"), |b| {
            b.iter(|| ggml::dequantize_into(ty, black_box(&q), &mut out))
        });
        for (name, path) in [
            ("ours-ref", Path::Reference),
            ("ours-1t", Path::Fast),
            ("ours-par", Path::Parallel),
        ] {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| quant::dequantize_with(path, ty, black_box(&q), &mut out).unwrap())
            });
        }
        g.finish();
    }
}

/// Every other encodable / decodable type, one size, ggml vs our one-thread and all-core paths.
fn bench_all_types(c: &mut Criterion) {
    let n = 1 << 16;
    let x = data(n);
    for &ty in GgmlType::ALL {
        if !ty.can_decode()
            || matches!(
                ty,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q4_0 | GgmlType::Q8_0
            )
        {
            continue;
        }
        let q = if ty.can_encode() {
            ggml::quantize_chunk(ty, &x, 4096)
        } else {
            // Decode-only i-quants: random bytes are valid blocks (indices are masked).
            (0..ty.row_bytes(n as u64).unwrap())
                .map(|i| ((i * 2_654_435_761) >> 13) as u8 & 0x3f)
                .collect()
        };
        for op in ["quantize", "dequantize"] {
            if op == "quantize" && !ty.can_encode() {
                continue;
            }
            let mut g = c.benchmark_group(format!("all/{op}/{ty}"));
            g.throughput(Throughput::Bytes((n * 4) as u64));
            g.sample_size(10)
                .warm_up_time(std::time::Duration::from_millis(300))
                .measurement_time(std::time::Duration::from_secs(1));
            let mut out = vec![0u8; q.len()];
            let mut f = vec![0f32; n];
            if op == "quantize" {
                g.bench_function(BenchmarkId::from_parameter("ggml"), |b| {
                    b.iter(|| ggml::quantize_chunk_into(ty, black_box(&x), 4096, &mut out))
                });
            } else {
                g.bench_function(BenchmarkId::from_parameter("ggml"), |b| {
                    b.iter(|| ggml::dequantize_into(ty, black_box(&q), &mut f))
                });
            }
            for (name, path) in [("ours-1t", Path::Fast), ("ours-par", Path::Parallel)] {
                if op == "quantize" {
                    g.bench_function(BenchmarkId::from_parameter(name), |b| {
                        b.iter(|| quant::quantize_with(path, ty, black_box(&x), &mut out).unwrap())
                    });
                } else {
                    g.bench_function(BenchmarkId::from_parameter(name), |b| {
                        b.iter(|| quant::dequantize_with(path, ty, black_box(&q), &mut f).unwrap())
                    });
                }
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench_quantize, bench_dequantize, bench_all_types);
criterion_main!(benches);
