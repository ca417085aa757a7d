//! One self-attention under autodiff: burn's `attention` (which falls back to the plain
//! `softmax(q k^T) v` and keeps the probabilities for the backward) against the crate's
//! memory-efficient op (keeps q, k, v, the output and the row log-sum-exp; recomputes the
//! probabilities per query chunk in the backward).
//!
//! ```text
//! cargo bench --bench attention -- --n 4096 --d 64 --heads 2 --iters 3
//! cargo bench --bench attention -- --n 4096 --only plain      # one case per process, so the
//! cargo bench --bench attention -- --n 4096 --only efficient  # peak RSS is that case's
//! ```
//! Prints the median forward+backward time of each case, its ratio to the plain case, the
//! analytic size of the largest buffer each path holds and the process's peak resident memory
//! (`VmHWM`) above what it held before the case ran.

#[macro_use]
mod common;

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor};
use common::{Opts, arg, time};
use ctcal::attention::{AutodiffAttentionBackend, chunked::default_chunk, efficient_attention};

/// `VmRSS` and `VmHWM` of this process in MiB (Linux), or zeros.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn run<B: AutodiffAttentionBackend>(opts: &Opts, device: &B::Device) {
    let parse =
        |flag: &str, default: usize| arg(flag).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (n, d, heads, b) = (
        parse("--n", 4096),
        parse("--d", 64),
        parse("--heads", 1),
        opts.batch,
    );
    let chunk = parse("--chunk", 256);
    let only = arg("--only");
    let scale = (d as f64).powf(-0.5);
    let normal = Distribution::Normal(0.0, 1.0);
    let inner = |shape: [usize; 4]| Tensor::<B::InnerBackend, 4>::random(shape, normal, device);
    let (q0, k0, v0) = (
        inner([b, heads, n, d]),
        inner([b, heads, n, d]),
        inner([b, heads, n, d]),
    );
    let mib = |elems: usize| (elems * 4) as f64 / (1 << 20) as f64;
    println!(
        "backend {}, batch {b}, heads {heads}, n {n}, d {d}, f32; median of {} after one \
         warm-up; default chunk here would be {} rows",
        opts.backend,
        opts.iters,
        default_chunk(b, heads, n)
    );
    let step = |efficient: bool| {
        let q = Tensor::<B, 4>::from_inner(q0.clone()).require_grad();
        let k = Tensor::<B, 4>::from_inner(k0.clone()).require_grad();
        let v = Tensor::<B, 4>::from_inner(v0.clone()).require_grad();
        let out = if efficient {
            efficient_attention(q.clone(), k.clone(), v.clone(), scale, Some(chunk))
        } else {
            let options = AttentionModuleOptions {
                scale: Some(scale),
                ..Default::default()
            };
            burn::tensor::module::attention(q.clone(), k.clone(), v.clone(), None, None, options)
        };
        let grads = out.sum().backward();
        // Synchronise: read one gradient back.
        let _ = q.grad(&grads).map(|g| g.sum().into_data());
    };
    let cases = [
        ("plain", false, b * heads * n * n),
        ("efficient", true, b * heads * chunk.min(n) * n),
    ];
    let mut base = None;
    for (name, efficient, largest) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let (rss_before, _) = memory_mib();
        let t = time(opts.iters, || step(efficient));
        let (_, hwm) = memory_mib();
        // The high-water mark is per process: only a one-case run (--only) isolates a case.
        let peak = match only {
            Some(_) => format!("{:>7.1} MiB", hwm - rss_before),
            None => "n/a (run with --only)".to_string(),
        };
        let base_t = *base.get_or_insert(t);
        let label = if efficient {
            format!("{name} (chunk {chunk})")
        } else {
            name.to_string()
        };
        println!(
            "{label:<22} fwd+bwd {:>9.1} ms  {:.2}x   largest buffer {:>7.1} MiB   \
             peak RSS above start {peak}",
            t * 1e3,
            t / base_t,
            mib(largest),
        );
    }
}

fn main() {
    let opts = Opts::from_args();
    dispatch!(opts, run);
}
