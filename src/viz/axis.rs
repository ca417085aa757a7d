//! Axes of the line plots: a log10 axis with ticks at 1, 2 and 5 times powers of ten (plotters'
//! own log axis starts its ticks at the first power of ten, leaving the decade below it
//! unlabelled), and tick labels with as many digits as the ticks' spacing needs.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;

/// At most this many labelled ticks per axis.
pub(crate) const MAX_TICKS: usize = 10;

/// A log10 axis over `lo..hi` (both positive).
#[derive(Debug, Clone)]
pub(crate) struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// The axis over `lo..hi`, padded by 5% of the decades spanned each side (half a decade
    /// around a single value).
    pub fn padded(lo: f64, hi: f64) -> Self {
        let pad = if hi > lo {
            (hi / lo).powf(0.05)
        } else {
            10f64.sqrt()
        };
        Self {
            lo: lo / pad,
            hi: hi * pad,
        }
    }
}

impl Ranged for LogAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.lo.log10(), self.hi.log10());
        let t = (value.max(f64::MIN_POSITIVE).log10() - lo) / (hi - lo);
        (limit.0 as f64 + t * (limit.1 - limit.0) as f64).round() as i32
    }

    /// Labelled ticks: [`log_ticks`]; grid lines: every digit times a power of ten, when
    /// there are few enough.
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let max = hint.max_num_points();
        if hint.weight().allow_light_points() {
            let digits = powers(self.lo, self.hi, &[1, 2, 3, 4, 5, 6, 7, 8, 9], 1);
            if digits.len() <= max {
                return digits;
            }
        }
        log_ticks(self.lo, self.hi, max)
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for LogAxis {
    fn format_ext(&self, value: &f64) -> String {
        log_tick(value)
    }
}

/// `m * 10^e` for each multiplier `m` and every `every`-th exponent `e`, within `lo..=hi`.
fn powers(lo: f64, hi: f64, multipliers: &[u32], every: i32) -> Vec<f64> {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let first = e0.div_euclid(every) * every;
    (first..=e1)
        .step_by(every.max(1) as usize)
        .flat_map(|e| multipliers.iter().map(move |&m| m as f64 * 10f64.powi(e)))
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

/// Ticks of a log axis over `lo..hi`, at most `max` of them: the densest of every digit,
/// 1-2-5, or 1 times a power of ten (then every second, third, ... power) that fits.
pub(crate) fn log_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    for multipliers in [&[1, 2, 3, 4, 5, 6, 7, 8, 9][..], &[1, 2, 5], &[1]] {
        let ticks = powers(lo, hi, multipliers, 1);
        if ticks.len() <= max {
            return ticks;
        }
    }
    (2..)
        .map(|every| powers(lo, hi, &[1], every))
        .find(|t| t.len() <= max.max(1))
        .unwrap_or_default()
}

/// Decimals of the tick labels plotters puts on the linear axis `range`: those of the
/// spacing of its ticks (1, 2 or 5 times a power of ten).
pub(crate) fn tick_decimals(range: Range<f64>) -> usize {
    let ticks = RangedCoordf64::from(range).key_points(MAX_TICKS);
    let step = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(f64::INFINITY, f64::min);
    if step.is_finite() && step > 0.0 {
        // The spacing is m * 10^k with m in {1, 2, 5}: -k decimals (small slack for rounding).
        (-(step.log10() + 1e-9).floor()).clamp(0.0, 12.0) as usize
    } else {
        3
    }
}

/// A linear axis's tick label with `decimals` decimals (no "-0").
pub(crate) fn linear_tick(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// A log axis's tick label: up to three significant digits, scientific below 1e-3 and from
/// 1e5 on.
pub(crate) fn log_tick(v: &f64) -> String {
    let v = *v;
    if v <= 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let e = v.log10().floor();
    if !(-3.0..5.0).contains(&e) {
        let s = format!("{v:.2e}");
        let (m, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{exp}");
    }
    let decimals = (2.0 - e).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs())
    }

    #[test]
    fn log_ticks_take_the_densest_set_that_fits() {
        // Within one decade: every digit.
        let t = log_ticks(0.1, 1.0, 10);
        assert!(
            close(&t, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
            "{t:?}"
        );
        // 0.028..0.78 has 14 digit ticks: 1-2-5, including the decade below 0.1.
        let t = log_ticks(0.028, 0.78, 10);
        assert!(close(&t, &[0.05, 0.1, 0.2, 0.5]), "{t:?}");
        // Twelve decades: every second power of ten.
        let t = log_ticks(1e-6, 1e6, 10);
        assert!(close(&t, &[1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6]), "{t:?}");
    }

    /// The axis maps powers of ten evenly and its ends to the pixel range's ends.
    #[test]
    fn log_axis_maps_decades_evenly() {
        let axis = LogAxis { lo: 0.01, hi: 10.0 };
        assert_eq!(axis.map(&0.01, (0, 300)), 0);
        assert_eq!(axis.map(&0.1, (0, 300)), 100);
        assert_eq!(axis.map(&1.0, (0, 300)), 200);
        assert_eq!(axis.map(&10.0, (0, 300)), 300);
        // Screen y grows downwards: plotters passes (bottom, top).
        assert_eq!(axis.map(&1.0, (400, 100)), 200);
        let padded = LogAxis::padded(0.1, 10.0);
        assert!((padded.lo - 0.1 / 10f64.powf(0.1)).abs() < 1e-12);
    }

    #[test]
    fn tick_labels() {
        // plotters' ticks on 0..1 are 0.1 apart, on 0..1000 100 apart, on 0.012..0.0135 0.0002.
        assert_eq!(tick_decimals(0.0..1.0), 1);
        assert_eq!(tick_decimals(0.0..1000.0), 0);
        assert_eq!(tick_decimals(0.012..0.0135), 4);
        assert_eq!(linear_tick(-0.00001, 2), "0.00");
        assert_eq!(linear_tick(0.30000000000000004, 1), "0.3");
        assert_eq!(log_tick(&0.030000000000000002), "0.03");
        assert_eq!(log_tick(&2.0), "2");
        assert_eq!(log_tick(&0.125), "0.125");
        assert_eq!(log_tick(&0.0002), "2e-4");
        assert_eq!(log_tick(&300000.0), "3e5");
    }
}
