//! Quantizes a vector to Q4_0 and Q8_0 and reports the round-trip error.
//!   cargo run --release --example quantize_tensor

use jq::quant::{dequantize_to_vec, quantize_to_vec, GgmlType};

fn main() -> anyhow::Result<()> {
    let x: Vec<f32> = (0..4096).map(|i| ((i as f32) * 0.01).sin()).collect();
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
        let q = quantize_to_vec(ty, &x)?;
        let y = dequantize_to_vec(ty, &q, x.len())?;
        let rms =
            (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / x.len() as f32).sqrt();
        println!(
            "{ty}: {} bytes ({:.2} bits/weight), rms error {rms:.2e}",
            q.len(),
            q.len() as f64 * 8.0 / x.len() as f64
        );
    }
    Ok(())
}
