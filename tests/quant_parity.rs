//! Every type beyond Q4_0/Q8_0/F16: decode bit-identical to ggml's `to_float`
//! (`ggml_get_type_traits`) and, for the encodable ones, encode bit-identical to
//! `ggml_quantize_chunk` without an importance matrix, both called through llama-cpp-sys-2.
//!
//! Decoding is checked on random bytes (every bit pattern of scales, so NaN/inf/subnormal f16
//! and E8M0/UE4M3 scales and -0.0 included) and on what ggml's own encoder writes; encoding on
//! random data at several scales and on hand-made blocks (zeros, -0.0, constants, ties,
//! huge/tiny/subnormal values, NaN and inf). For NaN/inf input ggml writes whatever its integer
//! conversions give on x86 (no error); we write the same bytes.

use jq::ggml;
use jq::quant::{self, GgmlType, Path};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, StudentT, Uniform};

/// Every type with a decoder here, except those covered by tests/ggml_parity.rs.
const DECODE: &[GgmlType] = &[
    GgmlType::BF16,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ3_XXS,
    GgmlType::IQ1_S,
    GgmlType::IQ4_NL,
    GgmlType::IQ3_S,
    GgmlType::IQ2_S,
    GgmlType::IQ4_XS,
    GgmlType::IQ1_M,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
    GgmlType::Q1_0,
    GgmlType::Q2_0,
];

/// Every type with an encoder here beyond Q4_0/Q8_0/F16.
const ENCODE: &[GgmlType] = &[
    GgmlType::BF16,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
    GgmlType::Q1_0,
    GgmlType::Q2_0,
];

const N: usize = 1 << 15;
const ROW: usize = 2048;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn check_decode(ty: GgmlType, name: &str, bytes: &[u8]) {
    let n = (bytes.len() as u64 / ty.type_size() * ty.block_size()) as usize;
    let theirs = ggml::dequantize(ty, bytes, n);
    for path in [Path::Reference, Path::Fast, Path::Parallel] {
        let mut ours = vec![0f32; n];
        quant::dequantize_with(path, ty, bytes, &mut ours).unwrap();
        if bits(&ours) != bits(&theirs) {
            let bsz = ty.block_size() as usize;
            let first = (0..n)
                .find(|&i| ours[i].to_bits() != theirs[i].to_bits())
                .unwrap();
            let b = first / bsz;
            let ts = ty.type_size() as usize;
            panic!(
                "{ty} decode {name} {path:?}: element {first} differs (ours {} ggml {}); block #{b} {:02x?}",
                ours[first],
                theirs[first],
                &bytes[b * ts..(b + 1) * ts]
            );
        }
    }
}

fn check_encode(ty: GgmlType, name: &str, x: &[f32], row: usize) {
    let theirs = ggml::quantize_chunk(ty, x, row);
    for path in [Path::Reference, Path::Fast, Path::Parallel] {
        let mut ours = vec![0u8; theirs.len()];
        quant::quantize_with(path, ty, x, &mut ours).unwrap();
        if ours != theirs {
            let bs = ty.type_size() as usize;
            let pairs = || ours.chunks(bs).zip(theirs.chunks(bs));
            let first = pairs().position(|(a, b)| a != b).unwrap();
            let differing = pairs().filter(|(a, b)| a != b).count();
            let bsz = ty.block_size() as usize;
            panic!(
                "{ty} encode {name} {path:?}: {differing} blocks differ; first #{first}: input {:?}\n ours {:02x?}\n ggml {:02x?}",
                &x[first * bsz..(first + 1) * bsz],
                &ours[first * bs..(first + 1) * bs],
                &theirs[first * bs..(first + 1) * bs]
            );
        }
    }
    check_decode(ty, name, &theirs);
}

fn distributions() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x14);
    let mut gen = |f: &mut dyn FnMut(&mut rand::rngs::StdRng) -> f32| -> Vec<f32> {
        (0..N).map(|_| f(&mut rng)).collect()
    };
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let uniform = Uniform::new(-1.0f32, 1.0);
    let t = StudentT::new(2.0f32).unwrap();
    vec![
        ("normal", gen(&mut |r| normal.sample(r))),
        ("weights 0.02", gen(&mut |r| 0.02 * normal.sample(r))),
        ("uniform", gen(&mut |r| uniform.sample(r))),
        ("positive", gen(&mut |r| uniform.sample(r).abs() + 0.5)),
        ("small-scale 1e-3", gen(&mut |r| 1e-3 * normal.sample(r))),
        ("tiny-scale 1e-6", gen(&mut |r| 1e-6 * normal.sample(r))),
        ("large-scale 3e4", gen(&mut |r| 3e4 * uniform.sample(r))),
        ("heavy-tailed t(2)", gen(&mut |r| t.sample(r))),
        ("integers", gen(&mut |r| r.gen_range(-20i32..=20) as f32)),
        ("ternary", gen(&mut |r| r.gen_range(-1i32..=1) as f32 * 0.7)),
        (
            "sparse",
            gen(&mut |r| {
                if r.gen_bool(0.9) {
                    0.0
                } else {
                    normal.sample(r)
                }
            }),
        ),
    ]
}

/// Hand-made 256-element super-blocks (eight 32-element blocks each).
fn edge_blocks() -> Vec<(&'static str, Vec<f32>)> {
    let ramp = |i: usize| (i % 32) as f32 - 15.5;
    let with = |f: &dyn Fn(usize) -> f32| (0..256).map(f).collect::<Vec<f32>>();
    let mut out = vec![
        ("all zeros", vec![0.0; 256]),
        ("all -0.0", vec![-0.0; 256]),
        ("constant 0.75", vec![0.75; 256]),
        ("constant -3", vec![-3.0; 256]),
        ("ramp", with(&ramp)),
        ("ramp halves", with(&|i| ((i % 64) as f32 - 32.0) * 0.5)),
        (
            "one block non-zero",
            with(&|i| if i / 32 == 5 { ramp(i) } else { 0.0 }),
        ),
        ("huge 3e38", with(&|i| if i == 17 { 3.0e38 } else { 0.001 })),
        ("f16 overflow", with(&|i| 65504.0 + 8.0 * (i % 32) as f32)),
        ("scale overflows f16", with(&|i| ramp(i) * 1e5)),
        ("underflow 1e-38", with(&|i| 1e-38 * ramp(i))),
        (
            "subnormal inputs",
            with(&|i| f32::from_bits(i as u32 * 7919)),
        ),
        ("f16-subnormal scale", with(&|i| 1e-6 * ramp(i))),
        ("tiny 1e-20", with(&|i| 1e-20 * ramp(i))),
        (
            "one NaN",
            with(&|i| if i == 4 { f32::NAN } else { ramp(i) }),
        ),
        (
            "NaN last",
            with(&|i| if i == 255 { f32::NAN } else { ramp(i) }),
        ),
        ("all NaN", vec![f32::NAN; 256]),
        (
            "+inf",
            with(&|i| if i == 7 { f32::INFINITY } else { ramp(i) }),
        ),
        (
            "-inf",
            with(&|i| if i == 100 { f32::NEG_INFINITY } else { ramp(i) }),
        ),
        (
            "tie for largest |x|",
            with(&|i| match i % 32 {
                3 => -20.0,
                9 => 20.0,
                _ => ramp(i),
            }),
        ),
    ];
    let mut alt = vec![0.0f32; 256];
    alt[0] = -0.0;
    out.push(("-0.0 first then +0.0", alt));
    out
}

#[test]
fn decode_random_bytes_matches_ggml() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdec0de);
    for &ty in DECODE {
        let nblocks = 4096 / ty.block_size().min(256) as usize * 4;
        let mut bytes = vec![0u8; nblocks * ty.type_size() as usize];
        rng.fill(&mut bytes[..]);
        check_decode(ty, "random bytes", &bytes);
        // Zero blocks and blocks with only the scale bits set to special values.
        check_decode(ty, "zero bytes", &vec![0u8; bytes.len()]);
        check_decode(ty, "0xff bytes", &vec![0xffu8; bytes.len()]);
        check_decode(ty, "0x80 bytes (-0.0 scales)", &vec![0x80u8; bytes.len()]);
        check_decode(ty, "0x7c bytes (inf scales)", &vec![0x7cu8; bytes.len()]);
        check_decode(
            ty,
            "0x01 bytes (subnormal scales)",
            &vec![0x01u8; bytes.len()],
        );
    }
}

#[test]
fn encode_random_data_matches_ggml() {
    for (name, x) in distributions() {
        for &ty in ENCODE {
            check_encode(ty, name, &x, ROW);
        }
    }
}

#[test]
fn encode_edge_blocks_matches_ggml() {
    for (name, x) in edge_blocks() {
        for &ty in ENCODE {
            check_encode(ty, name, &x, 256);
        }
    }
    let row: Vec<f32> = edge_blocks().into_iter().flat_map(|(_, b)| b).collect();
    for &ty in ENCODE {
        check_encode(ty, "all edge blocks in one row", &row, row.len());
    }
}

#[test]
fn encode_portable_search_matches_ggml() {
    // The searches' portable forms (what a CPU without AVX2 runs), on this thread only.
    quant::kquants::portable_search_on_this_thread(true);
    let types = [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
        GgmlType::IQ4_NL,
    ];
    let edge: Vec<f32> = edge_blocks().into_iter().flat_map(|(_, b)| b).collect();
    let mut inputs = distributions();
    inputs.push(("all edge blocks", edge));
    for (name, x) in &inputs {
        let x = &x[..x.len().min(8192)];
        for ty in types {
            let theirs = ggml::quantize_chunk(ty, x, 256);
            let mut ours = vec![0u8; theirs.len()];
            quant::quantize_with(Path::Fast, ty, x, &mut ours).unwrap();
            assert_eq!(ours, theirs, "{ty} portable search, {name}");
        }
    }
    quant::kquants::portable_search_on_this_thread(false);
    // The imatrix searches too, on a one-thread pool whose only thread runs portable.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        quant::kquants::portable_search_on_this_thread(true);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9a7);
        let qw: Vec<f32> = (0..256)
            .map(|i| {
                if i == 5 {
                    0.0
                } else {
                    Uniform::new(0.0f32, 4.0).sample(&mut rng).powi(3)
                }
            })
            .collect();
        let mut types = types.to_vec();
        types.extend([
            GgmlType::Q4_1,
            GgmlType::Q5_1,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
        ]);
        for (name, x) in &inputs {
            let x = &x[..x.len().min(4096)];
            for &ty in &types {
                let theirs = ggml::quantize_chunk_imatrix(ty, x, 256, &qw);
                let mut ours = vec![0u8; theirs.len()];
                quant::imatrix::quantize_weighted(ty, x, 256, &qw, &mut ours).unwrap();
                assert_eq!(ours, theirs, "{ty} portable imatrix search, {name}");
            }
        }
        quant::kquants::portable_search_on_this_thread(false);
    });
}

#[test]
fn type_capabilities() {
    for &t in GgmlType::ALL {
        let enc = ENCODE.contains(&t)
            || matches!(
                t,
                GgmlType::F32 | GgmlType::F16 | GgmlType::Q4_0 | GgmlType::Q8_0
            );
        assert_eq!(t.can_encode(), enc, "{t}");
        let dec = enc || DECODE.contains(&t);
        assert_eq!(t.can_decode(), dec, "{t}");
    }
    let err = quant::quantize_to_vec(GgmlType::IQ2_XXS, &[0.0; 256]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "type IQ2_XXS cannot be encoded here: ggml needs an importance matrix for it, and its grid search is not ported (decode only)"
    );
}

#[test]
fn encode_with_imatrix_matches_ggml() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1a7);
    let uniform = Uniform::new(0.0f32, 4.0);
    for row in [256usize, 1024] {
        // Importance weights as llama.cpp's imatrix gives them: non-negative, some zero.
        let mut qw: Vec<f32> = (0..row).map(|_| uniform.sample(&mut rng).powi(3)).collect();
        qw[3] = 0.0;
        for (name, x) in distributions().into_iter().take(8) {
            let x = &x[..row * 8];
            for &ty in ENCODE {
                let theirs = ggml::quantize_chunk_imatrix(ty, x, row, &qw);
                let mut ours = vec![0u8; theirs.len()];
                quant::imatrix::quantize_weighted(ty, x, row, &qw, &mut ours).unwrap();
                if ours != theirs {
                    let bs = ty.type_size() as usize;
                    let first = ours
                        .chunks(bs)
                        .zip(theirs.chunks(bs))
                        .position(|(a, b)| a != b)
                        .unwrap();
                    panic!(
                        "{ty} imatrix {name} row {row}: block #{first} differs\n ours {:02x?}\n ggml {:02x?}",
                        &ours[first * bs..(first + 1) * bs],
                        &theirs[first * bs..(first + 1) * bs]
                    );
                }
            }
        }
        for (name, x) in edge_blocks() {
            let x: Vec<f32> = x.iter().cycle().take(row).copied().collect();
            for &ty in ENCODE {
                let theirs = ggml::quantize_chunk_imatrix(ty, &x, row, &qw);
                let mut ours = vec![0u8; theirs.len()];
                quant::imatrix::quantize_weighted(ty, &x, row, &qw, &mut ours).unwrap();
                assert_eq!(ours, theirs, "{ty} imatrix edge {name} row {row}");
            }
        }
    }
}
