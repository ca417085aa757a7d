//! Where DDIM's inference timesteps fall: diffusers' three `timestep_spacing`s, with numpy's
//! float arithmetic and rounding reproduced so the integer timesteps are identical.

use serde::{Deserialize, Serialize};

/// How `set_timesteps` spreads the inference steps over the training timesteps (diffusers
/// `timestep_spacing`; Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimestepSpacing {
    /// `"leading"`: `[0, r, 2r, ...] + steps_offset` with `r = T / n` (SD 2.1's).
    #[serde(rename = "leading")]
    Leading,
    /// `"trailing"`: `round(T, T - r, ..., r) - 1` with `r = T / n` (ends at `T - 1`).
    #[serde(rename = "trailing")]
    Trailing,
    /// `"linspace"`: `round(linspace(0, T - 1, n))`.
    #[serde(rename = "linspace")]
    Linspace,
}

/// numpy's `np.arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values
/// `start + i * ((start + step) - start)`.
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `n` timesteps out of `t` training timesteps, largest first (diffusers `set_timesteps`).
/// Callers check `1 <= n <= t`.
pub(super) fn spread(
    spacing: TimestepSpacing,
    t: usize,
    n: usize,
    steps_offset: usize,
) -> Vec<usize> {
    match spacing {
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n).rev().map(|i| i * ratio + steps_offset).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / n as f64;
            np_arange(t as f64, 0.0, -ratio)
                .iter()
                .map(|v| (v.round_ties_even() as usize).saturating_sub(1))
                .collect()
        }
        TimestepSpacing::Linspace => {
            let step = (t - 1) as f64 / (n.max(2) - 1) as f64;
            (0..n)
                .rev()
                .map(|i| {
                    if i + 1 == n && n > 1 {
                        t - 1 // numpy sets the endpoint exactly
                    } else {
                        (i as f64 * step).round_ties_even() as usize
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed forms, including numpy's round-half-to-even (499.5 -> 500, 1.5 -> 2).
    #[test]
    fn closed_forms() {
        assert_eq!(spread(TimestepSpacing::Linspace, 1000, 3, 0), [999, 500, 0]);
        assert_eq!(spread(TimestepSpacing::Linspace, 4, 3, 0), [3, 2, 0]);
        assert_eq!(
            spread(TimestepSpacing::Leading, 1000, 4, 1),
            [751, 501, 251, 1]
        );
        assert_eq!(
            spread(TimestepSpacing::Trailing, 1000, 4, 1),
            [999, 749, 499, 249]
        );
        assert_eq!(spread(TimestepSpacing::Trailing, 10, 3, 0), [9, 6, 2]);
    }
}
