//! Token sampling shared by the engines that sample in Rust: repetition penalty, top-k,
//! temperature, top-p (nucleus), seeded. Temperature 0 is greedy (argmax after the penalty).

/// SplitMix64: tiny, fast, and the same sequence on every platform and crate version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no top-k cut.
    pub top_k: usize,
    /// 1.0 = no nucleus cut.
    pub top_p: f32,
    /// 1.0 = none. Logits of recently seen tokens are divided (if positive) or multiplied (if
    /// negative) by it, as llama.cpp does.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// 0.0 = none. Subtracted from the logit of every token seen among the last
    /// `repeat_last_n` (llama.cpp's and OpenAI's presence penalty).
    pub presence_penalty: f32,
    /// 0.0 = none. Subtracted once per occurrence among the last `repeat_last_n`.
    pub frequency_penalty: f32,
    /// 0.0 = off. Tokens whose probability is below `min_p` times the most likely one's are
    /// dropped (computed before the temperature, as llama.cpp's chain does).
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 42,
        }
    }
}

impl SamplerConfig {
    /// Plain argmax: no penalty, no cuts (what reference comparisons use).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: Rng,
}

/// The index of the largest value (the first of equal ones; NaNs after the first value are
/// passed over): greedy decoding. Sixteen lanes each keep their own first maximum, in
/// branch-free selects the compiler turns into vector blends (a 262k-entry vocabulary per
/// sequence per step in `jq-run serve`), then the lanes' largest value with the smallest
/// index wins; the same answer as the plain scan ([`argmax_scan`], tested).
pub fn argmax(x: &[f32]) -> usize {
    const L: usize = 16;
    match x.first() {
        None => return 0,
        Some(v) if v.is_nan() => return 0,
        _ => {}
    }
    let mut val = [f32::NEG_INFINITY; L];
    let mut idx = [u32::MAX; L];
    let chunks = x.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, ch) in chunks.enumerate() {
        let base = (c * L) as u32;
        for j in 0..L {
            let gt = ch[j] > val[j];
            val[j] = if gt { ch[j] } else { val[j] };
            idx[j] = if gt { base + j as u32 } else { idx[j] };
        }
    }
    let mut best = (f32::NEG_INFINITY, usize::MAX);
    for j in 0..L {
        if idx[j] != u32::MAX
            && (val[j] > best.0 || (val[j] == best.0 && (idx[j] as usize) < best.1))
        {
            best = (val[j], idx[j] as usize);
        }
    }
    let start = x.len() - tail.len();
    for (k, &v) in tail.iter().enumerate() {
        if v > best.0 {
            best = (v, start + k);
        }
    }
    // Nothing above -inf: every value is -inf (or NaN), and the first is the answer.
    if best.1 == usize::MAX {
        0
    } else {
        best.1
    }
}

/// The plain scan [`argmax`] must agree with.
pub fn argmax_scan(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng }
    }

    /// Picks the next token from `logits` (modified in place by the penalty), given the tokens
    /// generated or read so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.cfg;
        let penalised =
            c.repeat_penalty != 1.0 || c.presence_penalty != 0.0 || c.frequency_penalty != 0.0;
        if penalised && c.repeat_last_n > 0 {
            let start = history.len().saturating_sub(c.repeat_last_n);
            let mut seen: Vec<u32> = history[start..].to_vec();
            seen.sort_unstable();
            // (token, occurrences) as llama.cpp's penalties sampler counts them.
            let mut counts: Vec<(u32, f32)> = Vec::new();
            for t in seen {
                match counts.last_mut() {
                    Some((last, n)) if *last == t => *n += 1.0,
                    _ => counts.push((t, 1.0)),
                }
            }
            for (t, n) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / c.repeat_penalty
                    } else {
                        *l * c.repeat_penalty
                    };
                    *l -= n * c.frequency_penalty + c.presence_penalty;
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        // Highest first; ties by lower id, so the order is total and reproducible.
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if c.top_k > 0 && c.top_k < cand.len() {
            cand.truncate(c.top_k);
        }
        let max = cand[0].1;
        if c.min_p > 0.0 && c.min_p <= 1.0 {
            // p_i / p_max = exp(l_i - l_max) >= min_p, on the untempered logits.
            let floor = max + c.min_p.ln();
            let keep = cand.iter().take_while(|&&(_, l)| l >= floor).count();
            cand.truncate(keep.max(1));
        }
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| (f64::from(l - max) / f64::from(c.temperature)).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= f64::from(c.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let r = self.rng.next_f64();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane-wise argmax against the plain scan: ties (first wins), -inf, NaN, every
    /// length around the lane width, and a vocabulary-sized vector.
    #[test]
    fn argmax_equals_the_scan() {
        let mut rng = Rng::new(7);
        for n in (0..70).chain([262_144, 262_145 + 7]) {
            for case in 0..6 {
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        let r = rng.next_f64() as f32;
                        match case {
                            0 => r,
                            1 => (r * 4.0).floor(),
                            2 => f32::NEG_INFINITY,
                            3 if i % 5 == 1 => f32::NAN,
                            4 if i == n / 2 => f32::INFINITY,
                            5 if i == 0 => f32::NAN,
                            _ => (r * 3.0).floor() - 10.0,
                        }
                    })
                    .collect();
                assert_eq!(argmax(&x), argmax_scan(&x), "n {n}, case {case}");
            }
        }
    }

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9], &[]), 1);
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 2.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9], &[1]), 2);
    }

    #[test]
    fn seeded_is_reproducible_and_top_k_1_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                temperature: 1.0,
                ..Default::default()
            });
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            temperature: 1.0,
            repeat_penalty: 1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut logits.clone(), &[]) as usize, argmax(&logits));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // One token has almost all the mass: top_p 0.5 must always pick it.
        let mut s = Sampler::new(SamplerConfig {
            top_p: 0.5,
            top_k: 0,
            temperature: 1.0,
            repeat_penalty: 1.0,
            seed: 1,
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.0, 10.0, 0.0, 0.0], &[]), 1);
        }
    }
}
