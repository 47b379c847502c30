//! Codec throughput, ours vs ggml's C (through FFI) in the same run: GB/s of f32 in (quantize)
//! or f32 out (dequantize). `ggml` is `ggml_quantize_chunk` / `type_traits.to_float`, single
//! threaded as llama.cpp calls them per chunk; `ours-1t` is our fast path on one thread (the fair
//! comparison); `ours-par` uses every core (what `jq-convert` does); `ours-ref` is the scalar
//! reference.
//!
//! Run: `cargo bench --bench codecs` (results in docs/BENCHMARKS.md).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jq::ggml;
use jq::quant::{self, GgmlType, Path};
use std::hint::black_box;

const N: usize = 1 << 22; // 16 MiB of f32

fn data() -> Vec<f32> {
    jq::synth::weights(7, N, 2.0)
}

fn bench_quantize(c: &mut Criterion) {
    let x = data();
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
        let mut g = c.benchmark_group(format!("quantize/{ty}"));
        g.throughput(Throughput::Bytes((N * 4) as u64));
        g.sample_size(20);
        let bytes = ty.row_bytes(N as u64).unwrap() as usize;
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
    let x = data();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::BF16,
    ] {
        let mut g = c.benchmark_group(format!("dequantize/{ty}"));
        g.throughput(Throughput::Bytes((N * 4) as u64));
        g.sample_size(20);
        let q = quant::quantize_to_vec(ty, &x).unwrap();
        let mut out = vec![0f32; N];
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

criterion_group!(benches, bench_quantize, bench_dequantize);
criterion_main!(benches);
