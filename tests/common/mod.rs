//! What the root integration tests share.

/// How many of `got` differ from `want` in their bits (lengths must match).
pub fn bit_differences(got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}
