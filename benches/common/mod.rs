//! Timing and argument helpers shared by the bench binaries.

use std::time::Instant;

/// Runs `f` once to warm up (kernel compilation, autotune), then `iters` times; returns the
/// median wall time in seconds. `f` must synchronise the device itself.
pub fn time<F: FnMut()>(iters: usize, mut f: F) -> f64 {
    f();
    let mut v: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The value after `flag` on the command line.
pub fn arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether `flag` is on the command line.
pub fn flag(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}
