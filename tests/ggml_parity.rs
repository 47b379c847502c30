//! Bit-identity of our codecs with ggml itself (called through llama-cpp-sys-2).
//!
//! Non-finite input: the C reference converts NaN/inf (and the inf that an underflowing scale
//! produces) to int8 with undefined behaviour. On x86 ggml stores 0x00 codes for those elements
//! (cvttss2si's 0x80000000, truncated); our reference emulates exactly that
//! (`reference::x86_f32_to_i8`) and these tests pin it. The build here uses `target-cpu=native`
//! (GGML_NATIVE=ON, AVX-512 + FMA available to the C compiler): ggml's `x*id + 8.5f` in
//! `quantize_row_q4_0_ref` was not contracted into an FMA in a way that changes any result on
//! the data below (every block matches), and the same holds for the baseline build per the spec.

use jq::ggml;
use jq::quant::{self, reference, GgmlType, Path, GGML_TYPE_COUNT};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, StudentT, Uniform};

const N: usize = 1 << 20;
const ROW: usize = 4096;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn distributions() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut gen = |f: &mut dyn FnMut(&mut rand::rngs::StdRng) -> f32| -> Vec<f32> {
        (0..N).map(|_| f(&mut rng)).collect()
    };
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let uniform = Uniform::new(-1.0f32, 1.0);
    let t = StudentT::new(2.0f32).unwrap();
    vec![
        ("normal", gen(&mut |r| normal.sample(r))),
        ("uniform", gen(&mut |r| uniform.sample(r))),
        ("small-scale 1e-3", gen(&mut |r| 1e-3 * normal.sample(r))),
        ("tiny-scale 1e-6", gen(&mut |r| 1e-6 * normal.sample(r))),
        ("large-scale 3e4", gen(&mut |r| 3e4 * uniform.sample(r))),
        ("heavy-tailed t(2)", gen(&mut |r| t.sample(r))),
        ("integers", gen(&mut |r| r.gen_range(-20i32..=20) as f32)),
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

/// Hand-made blocks where the rules matter.
fn edge_blocks() -> Vec<(&'static str, [f32; 32])> {
    let mut out: Vec<(&'static str, [f32; 32])> = Vec::new();
    let ramp: [f32; 32] = std::array::from_fn(|i| i as f32 - 15.5);
    out.push(("all zeros", [0.0; 32]));
    out.push(("all -0.0", [-0.0; 32]));
    let mut mixed_zero = [0.0f32; 32];
    mixed_zero[0] = -0.0;
    out.push(("-0.0 first then +0.0", mixed_zero));
    let mut tie = ramp;
    tie[3] = -20.0;
    tie[9] = 20.0;
    out.push(("tie for largest |x|, negative first", tie));
    let mut tie2 = ramp;
    tie2[3] = 20.0;
    tie2[9] = -20.0;
    out.push(("tie for largest |x|, positive first", tie2));
    let mut huge = [0.001f32; 32];
    huge[17] = 3.0e38;
    out.push(("one huge value", huge));
    let mut f16max = ramp;
    f16max[0] = 65504.0 * 8.0;
    out.push(("scale at f16 max (q4: d=-65504)", f16max));
    let mut f16over = ramp;
    f16over[5] = 65520.0 * 127.0;
    out.push(("q8 scale overflows f16", f16over));
    let mut f16over4 = ramp;
    f16over4[5] = -65520.0 * 8.0;
    out.push(("q4 scale overflows f16", f16over4));
    out.push((
        "f16 overflow values",
        std::array::from_fn(|i| 65504.0 + 8.0 * i as f32),
    ));
    out.push((
        "underflowing scale 1e-38",
        std::array::from_fn(|i| 1e-38 * (i as f32 - 16.0)),
    ));
    out.push((
        "subnormal inputs",
        std::array::from_fn(|i| f32::from_bits(i as u32 * 7919)),
    ));
    out.push((
        "scale subnormal in f16",
        std::array::from_fn(|i| 1e-6 * (i as f32 - 16.0)),
    ));
    let mut nan = ramp;
    nan[4] = f32::NAN;
    out.push(("one NaN", nan));
    let mut nan_last = ramp;
    nan_last[31] = f32::NAN;
    out.push(("NaN last (q8 amax becomes NaN)", nan_last));
    let mut neg_nan = ramp;
    neg_nan[0] = -f32::NAN;
    out.push(("negative NaN first", neg_nan));
    let mut inf = ramp;
    inf[7] = f32::INFINITY;
    out.push(("+inf", inf));
    let mut ninf = ramp;
    ninf[20] = f32::NEG_INFINITY;
    out.push(("-inf", ninf));
    out.push(("all NaN", [f32::NAN; 32]));
    let mut halves = [0.0f32; 32];
    for (i, h) in halves.iter_mut().enumerate() {
        *h = (i as f32 - 16.0) + 0.5;
    }
    halves[0] = 127.0;
    out.push(("exact .5 ties for roundf", halves));
    out
}

fn check_type(ty: GgmlType, name: &str, x: &[f32], row: usize) {
    let theirs = ggml::quantize_chunk(ty, x, row);
    for path in [Path::Reference, Path::Fast, Path::Parallel] {
        let mut ours = vec![0u8; theirs.len()];
        quant::quantize_with(path, ty, x, &mut ours).unwrap();
        if ours != theirs {
            let bs = ty.type_size() as usize;
            let first = ours
                .chunks(bs)
                .zip(theirs.chunks(bs))
                .position(|(a, b)| a != b)
                .unwrap();
            let differing = ours
                .chunks(bs)
                .zip(theirs.chunks(bs))
                .filter(|(a, b)| a != b)
                .count();
            let bsz = ty.block_size() as usize;
            panic!(
                "{ty} {name} {path:?}: {differing} blocks differ; first #{first}: input {:?}\n ours   {:02x?}\n ggml   {:02x?}",
                &x[first * bsz..(first + 1) * bsz],
                &ours[first * bs..(first + 1) * bs],
                &theirs[first * bs..(first + 1) * bs]
            );
        }
        let mut back = vec![0f32; x.len()];
        quant::dequantize_with(path, ty, &theirs, &mut back).unwrap();
        assert_eq!(
            bits(&back),
            bits(&ggml::dequantize(ty, &theirs, x.len())),
            "{ty} {name} {path:?}: dequantized floats differ"
        );
    }
}

#[test]
fn type_table_matches_ggml() {
    for id in 0..GGML_TYPE_COUNT {
        let (size, block) = ggml::type_geometry(id);
        match GgmlType::from_id(id) {
            Some(t) => assert_eq!((t.type_size(), t.block_size()), (size, block), "{t}"),
            None => assert_eq!(block, 0, "id {id} is unknown to us but ggml has it"),
        }
    }
}

#[test]
fn random_data_is_bit_identical() {
    for (name, x) in distributions() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
            check_type(ty, name, &x, ROW);
        }
    }
}

#[test]
fn edge_blocks_are_bit_identical() {
    for (name, block) in edge_blocks() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
            check_type(ty, name, &block, 32);
        }
    }
    // Also every edge block side by side in one row, so the fast paths see them mid-stream.
    let row: Vec<f32> = edge_blocks().iter().flat_map(|(_, b)| *b).collect();
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
        check_type(ty, "all edge blocks in one row", &row, row.len());
    }
}

#[test]
fn x86_conversion_of_non_finite_is_zero_code() {
    // Pins the emulation described at the top of this file, on ggml's own output.
    let mut nan = [1.0f32; 32];
    nan[2] = f32::NAN;
    let q8 = ggml::quantize_chunk(GgmlType::Q8_0, &nan, 32);
    assert_eq!(q8[2 + 2], 0x00, "NaN element of Q8_0 codes to 0x00 on x86");
    let tiny: [f32; 32] = std::array::from_fn(|i| 1e-38 * (i as f32 + 1.0));
    let q4 = ggml::quantize_chunk(GgmlType::Q4_0, &tiny, 32);
    assert_eq!(q4, quant::quantize_to_vec(GgmlType::Q4_0, &tiny).unwrap());
    assert_eq!(reference::x86_f32_to_i8(f32::INFINITY), 0);
}

#[test]
fn f16_every_bit_pattern_sample() {
    // Every f16 decodes like ggml; a strided sweep of f32 bit patterns (NaNs, subnormals, ties)
    // encodes like ggml.
    let all_h: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    let theirs = ggml::dequantize(GgmlType::F16, &all_h, 1 << 16);
    let mut ours = vec![0f32; 1 << 16];
    quant::dequantize(GgmlType::F16, &all_h, &mut ours).unwrap();
    assert_eq!(bits(&ours), bits(&theirs));

    let sweep: Vec<f32> = (0..(1u64 << 32))
        .step_by(1021)
        .map(|u| f32::from_bits(u as u32))
        .collect();
    let theirs = ggml::fp32_to_fp16_row(&sweep);
    let ours = quant::quantize_to_vec(GgmlType::F16, &sweep).unwrap();
    let ours: Vec<u16> = ours
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn bf16_every_bit_pattern() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let theirs = ggml::bf16_to_fp32_row(&all);
    let bytes: Vec<u8> = all.iter().flat_map(|h| h.to_le_bytes()).collect();
    let mut ours = vec![0f32; all.len()];
    quant::dequantize(GgmlType::BF16, &bytes, &mut ours).unwrap();
    assert_eq!(bits(&ours), bits(&theirs));
}
