//! Timing and argument helpers shared by the bench binaries.
#![allow(dead_code, unused_macros)]

use std::time::Instant;

/// Runs `f` once to warm up (kernel compilation, autotune), then `iters` times; returns the
/// median wall time in seconds. `f` must synchronise the device itself.
pub fn time<F: FnMut()>(iters: usize, f: F) -> f64 {
    time_with_warmup(1, iters, f).0
}

/// Runs `f` `warmup` times, then `iters` times; returns the median of the timed runs and the
/// seconds the warm-up took. On a GPU the first calls compile and autotune kernels (tens of
/// seconds on CUDA), so each warm-up call's progress goes to stderr: a run cut off by a time
/// limit still says how far it got.
pub fn time_with_warmup<F: FnMut()>(warmup: usize, iters: usize, mut f: F) -> (f64, f64) {
    let t0 = Instant::now();
    for i in 0..warmup {
        f();
        eprintln!("warm-up {i}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    let first = t0.elapsed().as_secs_f64();
    let mut v: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], first)
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

/// Options every bench binary takes.
pub struct Opts {
    /// Include the full-size published config.
    pub full: bool,
    /// Batch size.
    pub batch: usize,
    /// Timed iterations (median reported).
    pub iters: usize,
    /// Backend name (`ndarray`, `wgpu`, `cuda`).
    pub backend: String,
    /// Skip the forward+backward cases (a full-size backward needs more memory than a small
    /// CPU machine has).
    pub fwd_only: bool,
}

impl Opts {
    /// `--full`, `--batch N`, `--iters N`, `--backend NAME` from the command line.
    pub fn from_args() -> Self {
        Opts {
            full: flag("--full"),
            batch: arg("--batch").and_then(|v| v.parse().ok()).unwrap_or(1),
            iters: arg("--iters").and_then(|v| v.parse().ok()).unwrap_or(5),
            backend: arg("--backend").unwrap_or_else(|| "ndarray".into()),
            fwd_only: flag("--fwd-only"),
        }
    }
}

/// Times each `(label, case)` forward-only and forward+backward; prints the median and the
/// ratio to the first case of the same mode. `case(backward)` must synchronise the device.
pub fn compare<F: FnMut(&str, bool)>(
    name: &str,
    labels: &[(&str, &str)],
    opts: &Opts,
    mut case: F,
) {
    let modes: &[bool] = if opts.fwd_only {
        &[false]
    } else {
        &[false, true]
    };
    for &backward in modes {
        let mode = if backward { "fwd+bwd" } else { "fwd" };
        let mut base = 0.0;
        for (i, (key, label)) in labels.iter().enumerate() {
            let t = time(opts.iters, || case(key, backward));
            if i == 0 {
                base = t;
            }
            println!(
                "{name:>6} {mode:>8} {label:<16} {:>10.1} ms  {:.2}x",
                t * 1e3,
                t / base
            );
        }
    }
}

/// Calls `$run::<Autodiff<Backend>>(&opts, &device)` for `opts.backend` through the library's
/// [`launch_autodiff`](ctcal::launch::launch_autodiff), which names a missing cargo feature.
macro_rules! dispatch {
    ($opts:expr, $run:ident) => {{
        struct Run<'a>(&'a Opts);
        impl ctcal::launch::OnAutodiffBackend for Run<'_> {
            type Output = ();
            fn run<B: ctcal::attention::AutodiffAttentionBackend>(self, device: &B::Device) {
                $run::<B>(self.0, device)
            }
        }
        let launched = $opts
            .backend
            .parse()
            .and_then(|kind| ctcal::launch::launch_autodiff(kind, false, Run(&$opts)));
        if let Err(e) = launched {
            eprintln!("{e}");
        }
    }};
}
