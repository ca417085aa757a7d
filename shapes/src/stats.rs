//! Paired statistics for comparing the benchmark's arms on the same prompts, seeds and noise:
//! a percentile bootstrap confidence interval of a mean paired difference, and McNemar's exact
//! test for paired right/wrong outcomes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A mean paired difference with its 95% percentile-bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDiff {
    /// Mean of the differences.
    pub mean: f64,
    /// 2.5th percentile of the bootstrap means.
    pub low: f64,
    /// 97.5th percentile of the bootstrap means.
    pub high: f64,
    /// Number of pairs.
    pub pairs: usize,
}

/// The mean of `diffs` and its 95% interval from `resamples` bootstrap resamples of the pairs
/// (seeded, so a report is reproducible). `None` without pairs.
pub fn paired_bootstrap(diffs: &[f64], resamples: usize, seed: u64) -> Option<PairedDiff> {
    let n = diffs.len();
    if n == 0 {
        return None;
    }
    let mean = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some(PairedDiff {
        mean,
        low: at(0.025),
        high: at(0.975),
        pairs: n,
    })
}

/// McNemar's exact test of paired outcomes `a[i]`, `b[i]` (true: right).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Pairs right under `a` only.
    pub a_only: usize,
    /// Pairs right under `b` only.
    pub b_only: usize,
    /// Two-sided p-value: `min(1, 2 P(X <= min(a_only, b_only)))`, X ~ Binomial(a_only +
    /// b_only, 1/2); 1 when no pair disagrees.
    pub p_value: f64,
}

/// McNemar's exact test on the discordant pairs of `a` and `b` (equal lengths).
pub fn mcnemar(a: &[bool], b: &[bool]) -> McNemar {
    let a_only = a.iter().zip(b).filter(|(x, y)| **x && !**y).count();
    let b_only = a.iter().zip(b).filter(|(x, y)| !**x && **y).count();
    let n = a_only + b_only;
    let k = a_only.min(b_only);
    // P(X <= k) for X ~ Binomial(n, 1/2), summed in log space for large n.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    McNemar {
        a_only,
        b_only,
        p_value: if n == 0 { 1.0 } else { (2.0 * tail).min(1.0) },
    }
}
