//! The crate's memory-efficient attention (chunked forward, own backward) against the plain
//! `softmax(q k^T * scale) v` path under autodiff, in f32 on ndarray and wgpu: the output and
//! dQ, dK, dV within 1e-4 relative across shapes (odd lengths, one head, n_q != n_k,
//! d != d_v, chunks not dividing n_q, chunk 1, chunk >= n_q). The f64 unit tests in
//! `src/attention/efficient_tests.rs` hold it to 1e-10 and to finite differences.

use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Tensor};
use ctcal::attention::{AttentionBackend, efficient_attention};

use crate::common::{rel_err, values};

/// `[out, dq, dk, dv]` of `sum(f(q, k, v) * w)`.
fn run<B: AttentionBackend>(
    inputs: &[Tensor<B, 4>; 4],
    f: impl Fn(
        Tensor<Autodiff<B>, 4>,
        Tensor<Autodiff<B>, 4>,
        Tensor<Autodiff<B>, 4>,
    ) -> Tensor<Autodiff<B>, 4>,
) -> [Vec<f32>; 4] {
    let [q, k, v, w] = inputs.clone();
    let q = Tensor::<Autodiff<B>, 4>::from_inner(q).require_grad();
    let k = Tensor::<Autodiff<B>, 4>::from_inner(k).require_grad();
    let v = Tensor::<Autodiff<B>, 4>::from_inner(v).require_grad();
    let out = f(q.clone(), k.clone(), v.clone());
    let grads = (out.clone() * Tensor::from_inner(w)).sum().backward();
    let g = |t: &Tensor<Autodiff<B>, 4>| values(t.grad(&grads).unwrap());
    [values(out.inner()), g(&q), g(&k), g(&v)]
}

/// (batch, heads, n_q, n_k, d, d_v, chunk)
type Case = (usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 4] = [
    (2, 2, 37, 19, 8, 12, 10),
    (1, 1, 33, 33, 16, 16, 1),
    (2, 3, 21, 21, 8, 8, 64),
    (1, 2, 64, 77, 16, 16, 7),
];

fn check<B: AttentionBackend>(cases: &[Case], device: &B::Device) {
    for &(b, h, nq, nk, d, dv, chunk) in cases {
        let n = |shape: [usize; 4]| {
            Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device)
        };
        let inputs = [
            n([b, h, nq, d]),
            n([b, h, nk, d]),
            n([b, h, nk, dv]),
            n([b, h, nq, dv]),
        ];
        let scale = (d as f64).powf(-0.5);
        let want = run(&inputs, |q, k, v| {
            softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3).matmul(v)
        });
        let got = run(&inputs, |q, k, v| {
            efficient_attention(q, k, v, scale, Some(chunk))
        });
        for (name, (g, w)) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            let err = rel_err(g, w);
            assert!(
                err <= 1e-4,
                "{:?} {name}: rel err {err}",
                (b, h, nq, nk, d, dv, chunk)
            );
        }
    }
}

#[test]
fn efficient_attention_gradients_match_plain_path() {
    check::<crate::common::Cpu>(&CASES, &Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn efficient_attention_gradients_match_plain_path_wgpu() {
    // Two cases: every new shape costs kernel compilation and matmul autotuning on lavapipe
    // (all four took 100 s).
    check::<crate::common::Gpu>(&[CASES[0], CASES[2]], &Default::default());
}
