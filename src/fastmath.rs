//! Elementwise float functions without libm, branch-free so loops over slices vectorise; shared
//! by the native Jarvis engine (softmax, GELU) and the trainer.

/// `e^x` in f32 without libm, branch-free so loops over slices vectorise: Cephes' `expf`
/// (x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6 polynomial for e^r, times 2^n), max relative
/// error ~2 ulp over the clamped range. Arguments are clamped to [-87, 88] (results below
/// e^-87 ~ 1.6e-38 are returned as that, above e^88 as ~1.65e38): the callers (softmax over
/// scores minus their maximum, GELU's logistic) never need more.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * (r * r) + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64 libm: e^x within 3e-7 relative over the range softmax and GELU use.
    #[test]
    fn exp_matches_f64() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * f64::from(i) / 200_000.0;
            let got = f64::from(exp_f32(x as f32));
            let want = (x as f32 as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "exp: worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
    }
}
